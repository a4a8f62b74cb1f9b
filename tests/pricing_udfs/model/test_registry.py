"""The model registry: immutable versions, an atomic ``latest``, and what crashes leave behind."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pricing_udfs.model.registry as registry_module
from pricing.jars import PROJECT_ROOT
from pricing_udfs.model.registry import Manifest, Registry, RegistryError, TrainingWindow, TrustRegion, content_hash

T0 = dt.datetime(2026, 11, 29, 7, 15, 0, 250_000, tzinfo=dt.timezone.utc)
METRICS = {"log_loss": 0.41, "auc": 0.72, "base_rate_log_loss": 0.52, "calibration_error": 0.013}


def make_model(path: Path, weights: bytes = b"\x00\x01weights", *, pb: bytes = b"saved-model-proto") -> Path:
    """A stand-in SavedModel folder: the registry treats the files as opaque."""
    (path / "variables").mkdir(parents=True)
    (path / "assets").mkdir()
    (path / "saved_model.pb").write_bytes(pb)
    (path / "variables" / "variables.index").write_bytes(b"index")
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(weights)
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Clock:
    """A settable clock, so that version ids are predictable."""

    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def publish(reg: Registry, model: Path, **kw: object) -> Manifest:
    args: dict = {"feature_spec_version": "features/1", "training_window": (1_000, 2_000), "metrics": METRICS}
    args.update(kw)
    return reg.publish(model, **args)


# -- publish, resolve, manifest --------------------------------------------------------------
def test_publish_then_resolve_and_manifest_round_trip(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    reg = Registry(tmp_path / "reg", clock=Clock())
    m = publish(reg, model, training_window={"start_ms": 1_000, "end_ms": 2_000}, extra={"seed": 7, "notes": "first"})

    digest = content_hash(model)
    assert m.version == f"v20261129T071500Z-{digest[:8]}"
    assert (m.created, m.feature_spec_version, m.parent, m.content_hash) == (
        "2026-11-29T07:15:00Z", "features/1", None, digest,
    )
    assert m.training_window == TrainingWindow(1_000, 2_000)
    assert dict(m.metrics) == METRICS and dict(m.extra) == {"seed": 7, "notes": "first"}

    folder = reg.resolve(m.version)
    assert folder == tmp_path / "reg" / "versions" / m.version
    assert reg.model_dir(m.version) == folder / "model"
    assert files_of(folder / "model") == files_of(model)
    assert (folder / "model" / "assets").is_dir()  # empty folders are kept
    assert reg.manifest(m.version) == m
    assert Manifest.from_dict(json.loads((folder / "manifest.json").read_text())) == m
    assert reg.versions() == [m.version]
    assert reg.latest_version() is None  # publishing alone does not promote
    assert reg.verify(m.version) == m


REGION = TrustRegion(feature_spec_version="features/1", rows=1_000, quantiles=(0.005, 0.995),
                     features={"views_1h": (0.0, 152.0), "user_price_ratio": (0.9, 1.04), "is_new_product": (0, 0)},
                     traffic_levels=(0.01, 0.5, 0.99), traffic={"views_24h": (5.0, 132.0, 2_132.0)})  # fmt: skip


def test_the_trust_region_round_trips_through_the_manifest(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", clock=Clock())
    m = publish(reg, make_model(tmp_path / "model"), trust_region=REGION.to_dict())  # the dict form is accepted
    assert m.manifest_version == 2 and m.trust_region == REGION
    stored = json.loads((reg.resolve(m.version) / "manifest.json").read_text())
    assert stored["manifest_version"] == 2
    assert stored["trust_region"]["features"]["views_1h"] == [0.0, 152.0]
    assert stored["trust_region"]["traffic"] == {"views_24h": [5.0, 132.0, 2_132.0]}
    assert reg.manifest(m.version) == m and reg.manifest(m.version).trust_region.features["is_new_product"] == (0, 0)
    assert Manifest.from_dict(json.loads(m.to_json())) == m
    plain = publish(reg, make_model(tmp_path / "other", b"other"))
    assert plain.trust_region is None and reg.manifest(plain.version).trust_region is None


def test_an_old_manifest_without_a_trust_region_still_loads(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", clock=Clock())
    m = publish(reg, make_model(tmp_path / "model"))
    path = reg.resolve(m.version) / "manifest.json"
    old = json.loads(path.read_text())
    del old["trust_region"]
    old["manifest_version"] = 1  # as the version-1 writer wrote it
    path.chmod(0o644)
    path.write_text(json.dumps(old))
    read = reg.manifest(m.version)
    assert read.trust_region is None and read.manifest_version == 1 and read.metrics == m.metrics


@pytest.mark.parametrize(
    "change, message",
    [
        ({"features": {"x": (2.0, 1.0)}}, "low <= high"),
        ({"features": {"x": (0.0, float("nan"))}}, "finite"),
        ({"features": {}}, "feature names"),
        ({"quantiles": (0.9, 0.1)}, "quantiles"),
        ({"traffic": {"views_24h": (1.0, 2.0)}}, "one non-decreasing value per level"),
        ({"traffic": {"views_24h": (3.0, 2.0, 1.0)}}, "non-decreasing"),
        ({"rows": 0}, "positive integer"),
    ],
)
def test_a_malformed_trust_region_is_refused(tmp_path: Path, change: dict, message: str) -> None:
    bad = {**REGION.to_dict(), **change}
    reg = Registry(tmp_path / "reg", clock=Clock())
    with pytest.raises(RegistryError, match=message):
        publish(reg, make_model(tmp_path / "m"), trust_region=bad)
    assert reg.versions() == []
    m = publish(reg, make_model(tmp_path / "good"))
    data = json.loads(m.to_json())
    data["trust_region"] = bad
    with pytest.raises(RegistryError, match=message):
        Manifest.from_dict(data)


def test_publish_with_promote_sets_latest_and_parent(tmp_path: Path) -> None:
    clock = Clock()
    reg = Registry(tmp_path / "reg", clock=clock)
    a = publish(reg, make_model(tmp_path / "a"), promote=True)
    clock.now += dt.timedelta(hours=1)
    b = publish(reg, make_model(tmp_path / "b", b"other"))
    assert reg.latest_version() == a.version
    assert reg.resolve("latest") == reg.resolve(a.version)
    assert b.parent == a.version  # the version that was latest when b was published


def test_content_hash_is_stable_and_changes_with_any_file(tmp_path: Path) -> None:
    base = content_hash(make_model(tmp_path / "a"))
    # the same tree, written in another order, later, with other permissions: same hash
    other = tmp_path / "b"
    (other / "assets").mkdir(parents=True)
    (other / "variables").mkdir()
    (other / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00\x01weights")
    (other / "variables" / "variables.index").write_bytes(b"index")
    (other / "saved_model.pb").write_bytes(b"saved-model-proto")
    os.chmod(other / "saved_model.pb", 0o600)
    os.utime(other / "saved_model.pb", (0, 0))
    assert content_hash(other) == base

    assert content_hash(make_model(tmp_path / "c", b"\x00\x02weights")) != base  # one byte
    assert content_hash(make_model(tmp_path / "d", pb=b"saved-model-protoX")) != base
    renamed = make_model(tmp_path / "e")
    (renamed / "saved_model.pb").rename(renamed / "saved_model2.pb")
    assert content_hash(renamed) != base  # a path
    extra_dir = make_model(tmp_path / "f")
    (extra_dir / "empty").mkdir()
    assert content_hash(extra_dir) != base  # a folder
    # bytes moved from one file to the next: the length prefix tells them apart
    moved = make_model(tmp_path / "g")
    (moved / "variables" / "variables.data-00000-of-00001").write_bytes(b"x\x00\x01weights")
    (moved / "variables" / "variables.index").write_bytes(b"inde")
    shifted = make_model(tmp_path / "h")
    (shifted / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00\x01weights")
    (shifted / "variables" / "variables.index").write_bytes(b"indexx")
    assert content_hash(moved) != content_hash(shifted)


def test_content_hash_follows_the_documented_scheme(tmp_path: Path) -> None:
    """Stored manifests carry hashes, so the scheme is frozen: recomputed here independently."""
    import hashlib

    model = make_model(tmp_path / "m")
    entries = sorted(p.relative_to(model).as_posix() for p in model.rglob("*"))
    h = hashlib.sha256()
    for rel in entries:
        path, name = model / rel, rel.encode()
        size = 0 if path.is_dir() else path.stat().st_size
        h.update((b"D" if path.is_dir() else b"F") + len(name).to_bytes(8, "big") + name + size.to_bytes(8, "big"))
        if path.is_file():
            h.update(path.read_bytes())
    assert content_hash(model) == h.hexdigest()


def test_versions_sort_by_creation_and_are_unique(tmp_path: Path) -> None:
    clock = Clock()
    reg = Registry(tmp_path / "reg", clock=clock)
    published = []
    # hashes chosen freely; the same second twice, then a clock that went back
    for i, shift in enumerate([0, 0, -3600, 7200]):
        clock.now = T0 + dt.timedelta(seconds=shift)
        published.append(publish(reg, make_model(tmp_path / f"m{i}", bytes([255 - i]) * 10)).version)
    assert reg.versions() == published  # newest last, in publish order
    assert len(set(published)) == 4
    assert published[1].startswith("v20261129T071501Z-")  # the next free second
    assert published[2].startswith("v20261129T071502Z-")  # never before the newest
    assert published[3].startswith("v20261129T091500Z-")
    # identical content twice is two versions with the same hash
    again = publish(reg, make_model(tmp_path / "m0-again", bytes([255]) * 10))
    assert again.content_hash == reg.manifest(published[0]).content_hash and again.version != published[0]


def test_versions_ignores_foreign_and_incomplete_folders(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", clock=Clock())
    v = publish(reg, make_model(tmp_path / "m")).version
    (reg.versions_dir / "notes").mkdir()
    (reg.versions_dir / "v20990101T000000Z-deadbeef").mkdir()  # no manifest: not a version
    (reg.root / ".incoming" / "publish-leftover").mkdir()
    assert reg.versions() == [v]


def test_verify_detects_changed_files(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", clock=Clock())
    m = publish(reg, make_model(tmp_path / "m"))
    stored = reg.model_dir(m.version) / "variables" / "variables.index"
    assert not os.stat(stored).st_mode & 0o222  # published files are read-only
    os.chmod(stored, 0o644)
    stored.write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="changed after publishing"):
        reg.verify(m.version)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": {"auc": float("nan")}}, "finite"),
        ({"metrics": {"auc": "high"}}, "must be a number"),
        ({"training_window": (2_000, 1_000)}, "starts after it ends"),
        ({"training_window": (1.5, 2)}, "integer"),
        ({"feature_spec_version": ""}, "non-empty"),
        ({"extra": {"when": dt.date(2026, 1, 1)}}, "JSON values"),
    ],
)
def test_publish_rejects_bad_input_and_leaves_nothing(tmp_path: Path, kwargs: dict, message: str) -> None:
    reg = Registry(tmp_path / "reg", clock=Clock())
    with pytest.raises(RegistryError, match=message):
        publish(reg, make_model(tmp_path / "m"), **kwargs)
    assert reg.versions() == []


def test_publish_rejects_missing_empty_or_linked_model_folders(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", clock=Clock())
    with pytest.raises(RegistryError, match="does not exist"):
        publish(reg, tmp_path / "nothing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(RegistryError, match="holds no files"):
        publish(reg, tmp_path / "empty")
    linked = make_model(tmp_path / "linked")
    (linked / "link.pb").symlink_to(linked / "saved_model.pb")
    with pytest.raises(RegistryError, match="symbolic link"):
        publish(reg, linked)
    assert reg.versions() == [] and list((reg.root / ".incoming").iterdir()) == []


# -- promote, rollback ----------------------------------------------------------------------
def _three_versions(tmp_path: Path) -> tuple[Registry, list[str]]:
    clock = Clock()
    reg = Registry(tmp_path / "reg", clock=clock)
    versions = []
    for i in range(3):
        clock.now = T0 + dt.timedelta(minutes=i)
        versions.append(publish(reg, make_model(tmp_path / f"m{i}", bytes([i]) * 8)).version)
    return reg, versions


def test_promote_and_rollback_change_what_latest_resolves_to(tmp_path: Path) -> None:
    reg, (a, b, c) = _three_versions(tmp_path)
    change = reg.promote(a)
    assert (change.previous, change.latest) == (None, a)
    assert reg.resolve("latest") == reg.resolve(a) and reg.manifest("latest").version == a
    reg.promote(c)
    reg.promote(b)
    assert reg.latest_version() == b and reg.resolve("latest").name == b
    assert (tmp_path / "reg" / "latest").read_text() == b + "\n"

    change = reg.rollback()
    assert (change.previous, change.latest) == (b, c)
    assert reg.resolve("latest").name == c
    assert reg.rollback().latest == a
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    assert reg.latest_version() == a

    # promoting again starts a new path back; promoting the current one changes nothing
    reg.promote(b)
    assert reg.promote(b).previous == b
    assert reg.rollback().latest == a
    assert [e["action"] for e in reg.history()] == ["promote"] * 3 + ["rollback"] * 2 + ["promote", "rollback"]


def test_rollback_goes_back_through_a_version_promoted_twice(tmp_path: Path) -> None:
    reg, (a, b, _) = _three_versions(tmp_path)
    for v in (a, b, a):
        reg.promote(v)
    assert reg.rollback().latest == b
    assert reg.rollback().latest == a


def test_rollback_without_history_is_a_clear_error(tmp_path: Path) -> None:
    reg, (a, _, _) = _three_versions(tmp_path)
    with pytest.raises(RegistryError, match="no version was promoted yet"):
        reg.rollback()
    reg.promote(a)
    with pytest.raises(RegistryError, match=r"nothing to roll back to.*pricing models promote"):
        reg.rollback()
    assert reg.latest_version() == a


def test_unknown_versions_and_an_empty_registry_are_clear_errors(tmp_path: Path) -> None:
    empty = Registry(tmp_path / "nowhere")
    assert empty.versions() == [] and empty.latest_version() is None
    with pytest.raises(RegistryError, match="no model versions in .*pricing train"):
        empty.resolve("latest")
    with pytest.raises(RegistryError, match="no model versions"):
        empty.promote("v20261129T071500Z-1a2b3c4d")
    with pytest.raises(RegistryError, match="no model versions"):
        empty.rollback()
    assert not (tmp_path / "nowhere").exists()  # reading or failing creates nothing

    reg, _ = _three_versions(tmp_path)
    with pytest.raises(RegistryError, match="no version of .* is promoted yet"):
        reg.resolve("latest")
    with pytest.raises(RegistryError, match="unknown version v20990101T000000Z-00000000.*pricing models list"):
        reg.manifest("v20990101T000000Z-00000000")
    with pytest.raises(RegistryError, match="unknown version"):
        reg.promote("v20990101T000000Z-00000000")
    for bad in ("../versions", "v1", "", "latest/../x"):
        with pytest.raises(RegistryError, match="not a version id"):
            reg.resolve(bad)
    assert reg.latest_version() is None


def test_a_corrupt_latest_pointer_is_a_clear_error(tmp_path: Path) -> None:
    reg, (a, _, _) = _three_versions(tmp_path)
    reg.latest_file.write_text("garbage\n")
    with pytest.raises(RegistryError, match=r"latest is corrupt \('garbage'\).*promote"):
        reg.resolve("latest")
    reg.latest_file.write_text("v20990101T000000Z-00000000\n")
    with pytest.raises(RegistryError, match="not in"):
        reg.resolve("latest")
    reg.promote(a)  # the way out
    assert reg.resolve("latest").name == a


# -- crashes ---------------------------------------------------------------------------------
def test_an_error_mid_copy_leaves_no_version_and_latest_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, (a, b, c) = _three_versions(tmp_path)
    reg.promote(b)
    real_copy = registry_module._copy_file
    copied: list[Path] = []

    def failing_copy(src: Path, dst: Path) -> None:
        if copied:
            raise OSError("disk full")
        real_copy(src, dst)
        copied.append(dst)

    monkeypatch.setattr(registry_module, "_copy_file", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        publish(reg, make_model(tmp_path / "new", b"new weights"), promote=True)
    assert copied  # it did fail half way
    assert reg.versions() == [a, b, c]
    assert reg.latest_version() == b
    assert list((reg.root / ".incoming").iterdir()) == []  # an exception cleans up after itself


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"the child exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "the child never reached the crash point"
        time.sleep(0.02)


_KILLED_MID_COPY = """
import pathlib, sys, time
import pricing_udfs.model.registry as reg
root, model, marker = sys.argv[1:4]
real = reg._copy_file
def slow(src, dst):
    real(src, dst)
    pathlib.Path(marker).write_text("copied one file")
    time.sleep(120)
reg._copy_file = slow
reg.Registry(root).publish(model, feature_spec_version="features/1", training_window=(0, 1), metrics={}, promote=True)
"""


@pytest.mark.timeout(120)
def test_a_process_killed_mid_publish_leaves_only_a_temp_folder(tmp_path: Path) -> None:
    reg, (a, b, c) = _three_versions(tmp_path)
    reg.promote(a)
    model = make_model(tmp_path / "new", os.urandom(1 << 20))
    marker = tmp_path / "marker"
    proc = _child(_KILLED_MID_COPY, str(reg.root), str(model), str(marker))
    try:
        _wait_for(marker, proc)
        assert reg.versions() == [a, b, c]  # a reader during the copy sees the old versions only
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    leftovers = list((reg.root / ".incoming").iterdir())
    assert len(leftovers) == 1 and any(p.is_file() for p in leftovers[0].rglob("*"))  # half a copy
    assert reg.versions() == [a, b, c]
    assert reg.latest_version() == a and reg.resolve("latest").name == a

    # the dead writer's lock is gone; the next publish cleans up and succeeds
    m = publish(reg, model, promote=True)
    assert list((reg.root / ".incoming").iterdir()) == []
    assert reg.versions() == [a, b, c, m.version] and reg.latest_version() == m.version
    assert files_of(reg.model_dir(m.version)) == files_of(model)


_SLOW_PUBLISH = """
import pathlib, sys, time
import pricing_udfs.model.registry as reg
root, model, marker = sys.argv[1:4]
real = reg._copy_file
def slow(src, dst):
    real(src, dst)
    pathlib.Path(marker).touch()
    time.sleep(0.5)
reg._copy_file = slow
print(reg.Registry(root).publish(model, feature_spec_version="features/1", training_window=(0, 1), metrics={}).version)
"""


@pytest.mark.timeout(120)
def test_writers_wait_for_a_publish_in_progress(tmp_path: Path) -> None:
    """Another writer's clean-up never removes a publish that is still running: writers take turns."""
    reg, (a, _, _) = _three_versions(tmp_path)
    model = make_model(tmp_path / "new", b"slow")
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PUBLISH, str(reg.root), str(model), str(marker)],
        env=env, stdout=subprocess.PIPE, text=True,
    )
    _wait_for(marker, proc)
    reg.promote(a)  # a writer that cleans .incoming/ while the child copies
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert reg.verify(out.strip()).version in reg.versions()
    assert reg.latest_version() == a


def test_a_failed_replace_mid_promote_leaves_latest_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, (a, b, _) = _three_versions(tmp_path)
    reg.promote(a)
    history = reg.history_file.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("crash mid-promote")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="crash mid-promote"):
        reg.promote(b)
    with pytest.raises(OSError, match="crash mid-promote"):
        publish(reg, make_model(tmp_path / "new", b"n"), promote=True)
    monkeypatch.undo()
    assert len(reg.versions()) == 4  # the version itself was published (complete), only not promoted

    assert reg.latest_version() == a and reg.resolve("latest").name == a
    assert reg.history_file.read_bytes() == history
    assert list(reg.root.glob(".latest.tmp-*")) == []
    assert reg.promote(b).latest == b  # and it works once the filesystem does


_KILLED_MID_PROMOTE = """
import os, pathlib, sys, time
import pricing_udfs.model.registry as reg
root, version, marker = sys.argv[1:4]
def hang(src, dst):
    pathlib.Path(marker).write_text(str(src))
    time.sleep(120)
os.replace = hang
reg.Registry(root).promote(version)
"""


@pytest.mark.timeout(120)
def test_a_process_killed_mid_promote_leaves_latest_unchanged(tmp_path: Path) -> None:
    reg, (a, b, c) = _three_versions(tmp_path)
    reg.promote(a)
    marker = tmp_path / "marker"
    proc = _child(_KILLED_MID_PROMOTE, str(reg.root), b, str(marker))
    try:
        _wait_for(marker, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    written = Path(marker.read_text())
    assert written.read_text() == b + "\n"  # the new pointer was written in full, beside `latest`
    assert reg.latest_version() == a and reg.resolve("latest").name == a
    assert reg.promote(c).previous == a
    assert not written.exists()  # cleaned up by the next writer
    assert reg.rollback().latest == a


def test_a_history_line_lost_in_a_crash_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg, (a, b, c) = _three_versions(tmp_path)
    reg.promote(a)
    real_append = Registry._append_history

    def crash(self: Registry, event: dict) -> None:
        raise OSError("crash before the history line")

    monkeypatch.setattr(Registry, "_append_history", crash)
    with pytest.raises(OSError):
        reg.promote(b)
    monkeypatch.setattr(Registry, "_append_history", real_append)
    assert reg.latest_version() == b  # `latest` had already changed: the history line is what was lost

    reg.promote(c)
    assert reg.rollback().latest == b  # not a: b was promoted in between
    assert reg.rollback().latest == a


def test_a_torn_history_line_is_skipped_and_not_glued_to_the_next(tmp_path: Path) -> None:
    reg, (a, b, c) = _three_versions(tmp_path)
    reg.promote(a)
    reg.promote(b)
    with open(reg.history_file, "ab") as f:
        f.write(b'{"action": "promote", "version": "v2026')  # a crash mid-append
    reg.promote(c)
    assert [e["version"] for e in reg.history()] == [a, b, c]
    assert reg.rollback().latest == b


def test_nothing_appears_in_versions_until_the_publish_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At every file the publish writes, a reader sees exactly the versions from before."""
    reg, before = _three_versions(tmp_path)
    listing = sorted(os.listdir(reg.versions_dir))
    checks: list[str] = []

    def checked(real):  # noqa: ANN001, ANN202
        def write(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            real(*args, **kwargs)
            assert sorted(os.listdir(reg.versions_dir)) == listing
            assert Registry(reg.root).versions() == before
            checks.append(str(args[0]))

        return write

    monkeypatch.setattr(registry_module, "_copy_file", checked(registry_module._copy_file))
    monkeypatch.setattr(registry_module, "_write_file", checked(registry_module._write_file))
    m = publish(reg, make_model(tmp_path / "new", b"new"))
    assert len(checks) == 4  # three model files and the manifest
    assert reg.versions() == [*before, m.version]


def test_concurrent_readers_only_ever_see_complete_versions(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    models = [make_model(tmp_path / f"m{i}", os.urandom(2 << 20)) for i in range(4)]
    seen: set[str] = set()
    problems: list[str] = []
    done = threading.Event()

    def read() -> None:
        reader = Registry(reg.root)
        while not done.is_set():
            for v in reader.versions():
                try:
                    reader.verify(v)  # manifest present and every byte there
                except Exception as exc:  # noqa: BLE001 - collect, assert in the main thread
                    problems.append(f"{v}: {exc!r}")
                seen.add(v)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for model in models:
            publish(reg, model, promote=True)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert problems == []
    assert seen and seen <= set(reg.versions())
    assert len(reg.versions()) == 4


# -- gate decisions ------------------------------------------------------------------------------
def test_gate_decisions_are_recorded_for_refused_and_promoted_versions(tmp_path: Path) -> None:
    clock = Clock()
    reg = Registry(tmp_path / "reg", clock=clock)
    a = publish(reg, make_model(tmp_path / "a", b"a"), promote=True).version
    clock.now += dt.timedelta(hours=1)
    b = publish(reg, make_model(tmp_path / "b", b"b")).version
    clock.now += dt.timedelta(hours=1)
    c = publish(reg, make_model(tmp_path / "c", b"c")).version

    refused = {"verdict": "refuse", "promote": False, "checks": {"beats_snips": False}, "figures": [1.5, None]}
    line = reg.record_evaluation(b, refused)
    assert line == {"at": "2026-11-29T09:15:00Z", "action": "evaluate", "version": b, "decision": refused}
    reg.record_evaluation(c, {"verdict": "promote", "promote": True})
    reg.promote(c, evidence={"gate": "promote", "against": a})

    assert [e["decision"] for e in reg.evaluations(b)] == [refused] and reg.evaluations(a) == []
    assert [e["version"] for e in reg.evaluations()] == [b, c]
    assert [(e["action"], e["version"]) for e in reg.history()] == [
        ("promote", a), ("evaluate", b), ("evaluate", c), ("promote", c)]
    assert reg.history()[-1]["evidence"] == {"gate": "promote", "against": a}
    assert reg.latest_version() == c  # a refusal moves nothing
    assert reg.rollback().latest == a  # and the rollback stack holds promotions only

    with pytest.raises(RegistryError, match="finite"):
        reg.record_evaluation(b, {"value": float("nan")})
    with pytest.raises(RegistryError, match="unknown version"):
        reg.record_evaluation("v20990101T000000Z-00000000", refused)
    assert len(reg.history()) == 5  # neither bad call wrote a line
