"""Where a restarted job starts: the latest completed checkpoint of its deployment, unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

from pricing.checkpoints import checkpoint_root, completed_checkpoints, local_path, plan_start
from pricing.config import Settings, load_settings


def _settings(tmp_path: Path, **job: object) -> Settings:
    return load_settings(state_dir=tmp_path, job={"consumer_group": "shop-eu", **job})


def _checkpoint(root: Path, job_id: str, n: int, *, mtime: float, complete: bool = True) -> Path:
    chk = root / job_id / f"chk-{n}"
    chk.mkdir(parents=True)
    (chk / "state-file").write_bytes(b"x")
    if complete:
        (chk / "_metadata").write_bytes(b"metadata")
        os.utime(chk / "_metadata", (mtime, mtime))
    return chk


def test_each_deployment_has_its_own_checkpoint_folder(tmp_path: Path) -> None:
    root = checkpoint_root(_settings(tmp_path))
    assert local_path(root) == tmp_path.resolve() / "checkpoints" / "shop-eu"
    assert local_path("s3://bucket/ckpt/shop-eu") is None


def test_without_checkpoints_the_job_starts_from_the_committed_offsets(tmp_path: Path) -> None:
    start = plan_start(_settings(tmp_path))
    assert (start.restore_from, start.claim) == (None, False)


def test_a_restart_resumes_from_the_newest_completed_checkpoint(tmp_path: Path) -> None:
    root = local_path(checkpoint_root(_settings(tmp_path)))
    _checkpoint(root, "old-job", 40, mtime=1_000)
    newest = _checkpoint(root, "resumed-job", 3, mtime=2_000)  # a later run, numbered anew after --fresh
    _checkpoint(root, "resumed-job", 4, mtime=3_000, complete=False)  # in progress when the job died
    (root / "empty-job" / "shared").mkdir(parents=True)  # what a claimed, subsumed job leaves
    start = plan_start(_settings(tmp_path))
    assert (start.restore_from, start.claim) == (newest.as_uri(), True)
    assert "resuming" in start.note
    assert not (root / "empty-job").exists() and (root / "old-job").exists()


def test_a_savepoint_given_explicitly_wins_and_stays_the_users(tmp_path: Path) -> None:
    _checkpoint(local_path(checkpoint_root(_settings(tmp_path))), "j", 1, mtime=1_000)
    start = plan_start(_settings(tmp_path, restore_from="file:///savepoints/sp-1"))
    assert (start.restore_from, start.claim) == ("file:///savepoints/sp-1", False)


def test_a_fresh_start_moves_the_checkpoints_aside_and_says_what_it_skips(tmp_path: Path) -> None:
    settings = _settings(tmp_path, start="fresh")
    root = local_path(checkpoint_root(settings))
    chk = _checkpoint(root, "j", 9, mtime=1_000)
    start = plan_start(settings)
    assert (start.restore_from, start.claim) == (None, False)
    assert "FRESH START" in start.note and "will not be priced" in start.note
    assert not root.exists()
    [aside] = tmp_path.resolve().joinpath("checkpoints").glob("shop-eu.discarded-*")
    assert completed_checkpoints(aside) == [aside / "j" / chk.name]  # kept, restorable by hand
    assert plan_start(_settings(tmp_path)).restore_from is None  # and the next plain start does not resume it


def test_remote_checkpoint_storage_is_left_to_flink_high_availability(tmp_path: Path) -> None:
    start = plan_start(_settings(tmp_path, checkpoint_dir="s3://bucket/ckpt"))
    assert start.restore_from is None and "high availability" in start.note
