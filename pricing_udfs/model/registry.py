"""The model registry: a folder of immutable model versions and an atomic ``latest`` pointer.

The streaming job (to load and hot-swap its model) and the ``pricing models`` commands read
the registry through this module only; ``pricing train`` writes to it with
:meth:`Registry.publish`. It uses the standard library only, so that it can run anywhere
the model is loaded.

Layout::

    <root>/
      versions/<version>/model/          the model files (a TensorFlow SavedModel; opaque here)
      versions/<version>/manifest.json   a Manifest, as JSON (version 2 adds the model's TrustRegion)
      latest                             the promoted version's id and a newline
      history.jsonl                      one JSON line per promotion, rollback or gate decision
      .incoming/                         publishes in progress (or left by a crashed one)
      .lock                              writers' advisory lock (flock)

A version id is ``v<created, UTC, %Y%m%dT%H%M%SZ>-<first 8 hex of the content hash>``, e.g.
``v20261129T071500Z-1a2b3c4d``: ids sort by creation time and are unique (a publish within
the same second as the newest version takes the next free second, so ids stay strictly
increasing in publish order).

Guarantees:

- **Immutable versions.** A version folder is complete when it appears and is never
  written again: publish copies the model into ``.incoming/<tmp>/``, writes the manifest,
  fsyncs every file and folder, then renames the folder into ``versions/`` in one
  ``rename``, which never replaces an existing version. Model files are made read-only.
  The manifest's ``content_hash`` (SHA-256 over the files' relative paths and bytes) lets a
  reader check a copy with :meth:`Registry.verify`.
- **Crashes.** A crash while publishing leaves at most a folder in ``.incoming/``, which
  readers never look at and the next writer removes. ``latest`` changes by writing a
  temporary file, fsyncing it and ``os.replace``-ing it over ``latest``: after a crash at
  any point, ``latest`` names either the old or the new version, never a mix or nothing.
  The promotion is appended to ``history.jsonl`` afterwards; a crash in between loses
  only that history line, which the next promote or rollback takes into account.
- **Gate decisions.** :meth:`Registry.record_evaluation` appends what the promotion gate
  (``pricing learn``) decided about a version, promoted or not, with its figures, as an
  ``evaluate`` line of ``history.jsonl`` (under the lock, one ``write`` plus ``fsync``);
  :meth:`Registry.evaluations` reads them back. They never move ``latest`` and rollback ignores them.
- **Concurrent readers** need no lock: they see a version folder either complete or not
  at all, and ``latest`` either before or after a promotion. Writers (publish, promote,
  rollback) serialise on an advisory ``flock`` of ``<root>/.lock``, which the kernel
  releases when a writer dies.
- **Where this holds.** ``rename`` and ``os.replace`` are atomic within one POSIX
  filesystem. On Kubernetes, mount the registry as a volume (a PersistentVolume: a local
  or block-backed filesystem, or NFS, whose rename is atomic on the server, though
  another client may see a new ``latest`` only when its attribute cache expires, and
  whose flock Linux maps to NFS locks). An object store (S3, GCS) offers no atomic rename and
  is not a valid root, not even through a FUSE mount; copy a version from there into the
  volume and publish it instead.

Everything a user can get wrong (an unknown version, an empty registry, nothing to roll
back to) raises :class:`RegistryError`, a ``ValueError`` with a message that says what to
do; ``pricing`` prints it as ``pricing: error: ...``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

# 2: adds ``trust_region`` (what the model saw in training); a version-1 manifest reads with none.
MANIFEST_VERSION = 2
LATEST = "latest"
_VERSION_RE = re.compile(r"^v(\d{8}T\d{6}Z)-([0-9a-f]{8})$")
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_CHUNK = 1 << 20


class RegistryError(ValueError):
    """A registry operation cannot be done as asked; the message says what to do instead."""


@dataclass(frozen=True)
class TrainingWindow:
    """The event-time span of the training data, epoch milliseconds, both ends included."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        for name in ("start_ms", "end_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise RegistryError(f"training_window.{name} must be an integer (epoch ms), got {value!r}")
        if self.start_ms > self.end_ms:
            raise RegistryError(f"training_window starts after it ends ({self.start_ms} > {self.end_ms})")

    @classmethod
    def of(cls, value: "TrainingWindow | tuple[int, int] | Mapping[str, Any]") -> "TrainingWindow":
        """Accept a TrainingWindow, a ``(start_ms, end_ms)`` pair or ``{"start_ms": .., "end_ms": ..}``."""
        if isinstance(value, TrainingWindow):
            return value
        if isinstance(value, Mapping):
            try:
                return cls(start_ms=value["start_ms"], end_ms=value["end_ms"])
            except KeyError as exc:
                raise RegistryError(f"training_window needs start_ms and end_ms, got {dict(value)!r}") from None
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(start_ms=value[0], end_ms=value[1])
        raise RegistryError(f"training_window must be (start_ms, end_ms), got {value!r}")


@dataclass(frozen=True)
class TrustRegion:
    """What the model saw in training, for the serving policy's trust region
    (``pricing_udfs.policy.trust_region``), computed by ``pricing train`` from the training rows.

    * ``features``: per feature of the spec (in spec order), ``(low, high)``: the ``quantiles``
      (e.g. 0.5 % and 99.5 %) of its values over the ``rows`` training rows;
    * ``traffic``: per traffic window (the product's views, the user's events, ...), its values at
      the ``traffic_levels`` quantiles over the same rows: how much traffic the windows held.

    Plain numbers only (JSON, finite); this module reads and checks them, the policy interprets them.
    """

    feature_spec_version: str
    rows: int
    quantiles: tuple[float, float]
    features: Mapping[str, tuple[float, float]]
    traffic_levels: tuple[float, ...] = ()
    traffic: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _str(self.feature_spec_version, "trust_region.feature_spec_version")
        if not isinstance(self.rows, int) or isinstance(self.rows, bool) or self.rows < 1:
            raise RegistryError(f"trust_region.rows must be a positive integer, got {self.rows!r}")
        q = _numbers(self.quantiles, "trust_region.quantiles")
        if len(q) != 2 or not 0 <= q[0] <= q[1] <= 1:
            raise RegistryError(f"trust_region.quantiles must be (low, high) in [0, 1], got {self.quantiles!r}")
        if not isinstance(self.features, Mapping) or not self.features:
            raise RegistryError("trust_region.features must map feature names to (low, high)")
        features = {}
        for name, pair in self.features.items():
            lo_hi = _numbers(pair, f"trust_region.features.{name}")
            if not isinstance(name, str) or not name or len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise RegistryError(f"trust_region.features.{name} must be (low, high) with low <= high, got {pair!r}")
            features[name] = lo_hi
        levels = _numbers(self.traffic_levels, "trust_region.traffic_levels")
        if any(not 0 <= v <= 1 for v in levels) or list(levels) != sorted(set(levels)):
            raise RegistryError(f"trust_region.traffic_levels must be increasing quantile levels in [0, 1], "
                                f"got {self.traffic_levels!r}")  # fmt: skip
        if not isinstance(self.traffic, Mapping):
            raise RegistryError("trust_region.traffic must map window names to quantiles")
        traffic = {}
        for name, values in self.traffic.items():
            v = _numbers(values, f"trust_region.traffic.{name}")
            if not isinstance(name, str) or not name or len(v) != len(levels) or list(v) != sorted(v):
                raise RegistryError(f"trust_region.traffic.{name} must hold one non-decreasing value per level "
                                    f"({len(levels)}), got {values!r}")  # fmt: skip
            traffic[name] = v
        object.__setattr__(self, "quantiles", q)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "traffic_levels", levels)
        object.__setattr__(self, "traffic", traffic)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_spec_version": self.feature_spec_version,
            "rows": self.rows,
            "quantiles": list(self.quantiles),
            "features": {k: list(v) for k, v in self.features.items()},
            "traffic_levels": list(self.traffic_levels),
            "traffic": {k: list(v) for k, v in self.traffic.items()},
        }

    @classmethod
    def of(cls, value: "TrustRegion | Mapping[str, Any]") -> "TrustRegion":
        """Accept a TrustRegion or its ``to_dict()`` form (as read from JSON)."""
        if isinstance(value, TrustRegion):
            return value
        if not isinstance(value, Mapping):
            raise RegistryError(f"trust_region must be a mapping, got {type(value).__name__}")
        try:
            return cls(
                feature_spec_version=value["feature_spec_version"], rows=value["rows"],
                quantiles=tuple(value["quantiles"]), features=dict(value["features"]),
                traffic_levels=tuple(value.get("traffic_levels") or ()), traffic=dict(value.get("traffic") or {}),
            )  # fmt: skip
        except KeyError as exc:
            raise RegistryError(f"trust_region lacks {exc.args[0]!r}") from None
        except (TypeError, AttributeError) as exc:
            raise RegistryError(f"malformed trust_region: {exc}") from None


@dataclass(frozen=True)
class Manifest:
    """What a version is: stored as ``manifest.json`` next to its ``model/`` folder."""

    version: str
    created: str  # ISO 8601, UTC, seconds: "2026-11-29T07:15:00Z"
    feature_spec_version: str
    training_window: TrainingWindow
    metrics: Mapping[str, float]  # e.g. log_loss, auc, base_rate_log_loss, calibration_error
    content_hash: str  # hex SHA-256 over the model files (see content_hash())
    parent: str | None  # the version that was latest when this one was published
    extra: Mapping[str, Any] = field(default_factory=dict)  # free-form, JSON values (notes, seed, data path, ...)
    manifest_version: int = MANIFEST_VERSION
    # What the model saw in training (version 2); None for older manifests and models published without one.
    trust_region: TrustRegion | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": self.manifest_version,
            "version": self.version,
            "created": self.created,
            "feature_spec_version": self.feature_spec_version,
            "training_window": {"start_ms": self.training_window.start_ms, "end_ms": self.training_window.end_ms},
            "metrics": dict(self.metrics),
            "content_hash": self.content_hash,
            "parent": self.parent,
            "extra": dict(self.extra),
            "trust_region": None if self.trust_region is None else self.trust_region.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """Read a manifest; keys this version does not know are ignored (a newer writer may add some)."""
        try:
            return cls(
                version=_check_version_id(data["version"]),
                created=_str(data["created"], "created"),
                feature_spec_version=_str(data["feature_spec_version"], "feature_spec_version"),
                training_window=TrainingWindow.of(data["training_window"]),
                metrics=_metrics(data["metrics"]),
                content_hash=_hex_hash(data["content_hash"]),
                parent=None if data.get("parent") is None else _check_version_id(data["parent"]),
                extra=dict(data.get("extra") or {}),
                manifest_version=int(data.get("manifest_version", 1)),
                trust_region=None if data.get("trust_region") is None else TrustRegion.of(data["trust_region"]),
            )
        except KeyError as exc:
            raise RegistryError(f"manifest lacks {exc.args[0]!r}") from None
        except (TypeError, AttributeError) as exc:
            raise RegistryError(f"malformed manifest: {exc}") from None


@dataclass(frozen=True)
class PointerChange:
    """What a promote or rollback did to ``latest``."""

    previous: str | None
    latest: str


def content_hash(model_dir: Path) -> str:
    """Hex SHA-256 over every file and folder under ``model_dir``: relative POSIX paths and bytes.

    Deterministic: entries are taken in sorted path order and each is length-prefixed, so
    the hash depends only on the tree's names and contents (not on timestamps, permissions
    or the order the filesystem lists them in). Symbolic links are refused.
    """
    digest = hashlib.sha256()
    for rel, path in _tree(Path(model_dir)):
        if path.is_dir():
            _hash_entry(digest, b"D", rel, 0)
        else:
            _hash_entry(digest, b"F", rel, path.stat().st_size)
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()


class Registry:
    """A model registry rooted at ``root`` (created by the first publish)."""

    def __init__(self, root: Path | str, *, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.root = Path(root)
        self._clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))

    # -- paths ---------------------------------------------------------------------------
    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def latest_file(self) -> Path:
        return self.root / LATEST

    @property
    def history_file(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def _incoming(self) -> Path:
        return self.root / ".incoming"

    # -- reading (no lock) ---------------------------------------------------------------
    def versions(self) -> list[str]:
        """Every complete version, oldest first (newest last)."""
        try:
            names = os.listdir(self.versions_dir)
        except FileNotFoundError:
            return []
        return sorted(
            n for n in names if _VERSION_RE.match(n) and (self.versions_dir / n / "manifest.json").is_file()
        )

    def latest_version(self) -> str | None:
        """The promoted version, or None when nothing was promoted yet."""
        try:
            text = self.latest_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not _VERSION_RE.match(text):
            raise RegistryError(
                f"{self.latest_file} is corrupt ({text[:80]!r}); promote a version again with "
                "'pricing models promote VERSION'"
            )
        return text

    def resolve(self, version: str = LATEST) -> Path:
        """The folder of ``version`` (or of the promoted version for ``"latest"``); its model is in ``model/``."""
        name = self._name(version)
        path = self.versions_dir / name
        if not (path / "manifest.json").is_file():
            if version == LATEST:
                raise RegistryError(
                    f"{self.latest_file} names {name}, which is not in {self.versions_dir}; "
                    "promote an existing version with 'pricing models promote VERSION'"
                )
            raise RegistryError(self._unknown(name))
        return path

    def model_dir(self, version: str = LATEST) -> Path:
        """The model files of ``version`` (the SavedModel folder)."""
        return self.resolve(version) / "model"

    def manifest(self, version: str = LATEST) -> Manifest:
        path = self.resolve(version) / "manifest.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON: {exc}") from None
        manifest = Manifest.from_dict(data)
        if manifest.version != path.parent.name:
            raise RegistryError(f"{path} describes {manifest.version}, not {path.parent.name}")
        return manifest

    def verify(self, version: str = LATEST) -> Manifest:
        """Recompute the content hash of ``version``'s files; RegistryError if they changed."""
        manifest = self.manifest(version)
        actual = content_hash(self.resolve(manifest.version) / "model")
        if actual != manifest.content_hash:
            raise RegistryError(
                f"the files of {manifest.version} changed after publishing (content hash {actual[:12]}..., "
                f"manifest {manifest.content_hash[:12]}...); publish the model again as a new version"
            )
        return manifest

    # -- writing (under the lock) --------------------------------------------------------
    def publish(
        self,
        model_dir: Path | str,
        *,
        feature_spec_version: str,
        training_window: TrainingWindow | tuple[int, int] | Mapping[str, Any],
        metrics: Mapping[str, float],
        extra: Mapping[str, Any] | None = None,
        trust_region: TrustRegion | Mapping[str, Any] | None = None,
        promote: bool = False,
    ) -> Manifest:
        """Copy ``model_dir`` into a new immutable version and return its manifest.

        ``trust_region``: what the model saw in training (``pricing train`` computes it); without
        one the version serves without a trust region.

        ``latest`` changes only with ``promote=True``. ``parent`` is the version that was
        latest at the time. If copying or writing fails, nothing becomes visible; if only
        the promotion fails, the version is published (complete) and ``latest`` unchanged.
        """
        source = Path(model_dir)
        if not source.is_dir():
            raise RegistryError(f"model folder {source} does not exist or is not a folder")
        feature_spec_version = _str(feature_spec_version, "feature_spec_version")
        window = TrainingWindow.of(training_window)
        metrics = _metrics(metrics)
        region = None if trust_region is None else TrustRegion.of(trust_region)
        extra = dict(extra or {})
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"extra must hold JSON values only: {exc}") from None

        with self._lock(create=True):
            tmp = self._incoming / f"publish-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                digest = _copy_tree(source, tmp / "model")
                parent = self.latest_version()
                created = self._created()
                while True:
                    version = f"v{created.strftime(_TIME_FORMAT)}-{digest[:8]}"
                    manifest = Manifest(
                        version=version,
                        created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        feature_spec_version=feature_spec_version,
                        training_window=window,
                        metrics=metrics,
                        content_hash=digest,
                        parent=parent,
                        extra=extra,
                        trust_region=region,
                    )
                    _write_file(tmp / "manifest.json", manifest.to_json().encode("utf-8"), mode=0o444)
                    _fsync_dir(tmp)
                    try:
                        os.rename(tmp, self.versions_dir / version)  # never replaces a non-empty folder
                    except OSError as exc:
                        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
                        (tmp / "manifest.json").unlink()
                        created += dt.timedelta(seconds=1)
                        continue
                    break
            except BaseException:
                _rmtree(tmp)
                raise
            _fsync_dir(self.versions_dir)
            _fsync_dir(self._incoming)
            if promote:
                self._set_latest(version, action="promote")
        return manifest

    def promote(self, version: str, *, evidence: Mapping[str, Any] | None = None) -> PointerChange:
        """Make ``version`` the one ``latest`` names (atomically); no-op if it already is.

        ``evidence`` (JSON values): why it was promoted, kept in the promotion's history line (``pricing learn``
        puts its gate's verdict there; the full figures are in the version's ``evaluate`` line)."""
        evidence = None if evidence is None else _json_mapping(evidence, "evidence")
        with self._lock():
            name = self.resolve(version).name
            previous = self.latest_version()
            if previous == name:
                return PointerChange(previous=previous, latest=name)
            return self._set_latest(name, action="promote", evidence=evidence)

    def record_evaluation(self, version: str, decision: Mapping[str, Any]) -> dict[str, Any]:
        """Append a gate decision about ``version`` (promoted or not) to ``history.jsonl``; returns the line.

        ``decision`` holds JSON values only (finite numbers: no NaN); it is stored as given under ``decision``.
        The version must exist. The line is written whole with one ``write`` and fsynced, under the writers' lock,
        like a promotion's; it does not change ``latest``, and rollback does not count it as a promotion.
        """
        decision = _json_mapping(decision, "decision")
        with self._lock():
            name = self.resolve(version).name
            return self._append_history({"action": "evaluate", "version": name, "decision": decision})

    def evaluations(self, version: str | None = None) -> list[dict[str, Any]]:
        """The recorded gate decisions (``evaluate`` lines: ``at``, ``version``, ``decision``), oldest first;
        only ``version``'s when given (an id, not ``latest``)."""
        return [e for e in self.history()
                if e.get("action") == "evaluate" and (version is None or e["version"] == version)]  # fmt: skip

    def rollback(self) -> PointerChange:
        """Make ``latest`` name the version promoted before the current one again."""
        with self._lock():
            current = self.latest_version()
            if current is None:
                raise RegistryError(
                    f"nothing to roll back in {self.root}: no version was promoted yet "
                    "(promote one with 'pricing models promote VERSION')"
                )
            stack = self._promotion_stack(current)
            if len(stack) < 2:
                raise RegistryError(
                    f"nothing to roll back to: no version was promoted before {current} in {self.root}; "
                    "promote the one you want with 'pricing models promote VERSION'"
                )
            target = stack[-2]
            self.resolve(target)  # it exists (versions are never removed), but say so clearly if not
            return self._set_latest(target, action="rollback")

    def history(self) -> list[dict[str, Any]]:
        """The recorded promotions, rollbacks and gate decisions (``action``: ``promote``, ``rollback``,
        ``evaluate``), oldest first (a torn last line is skipped)."""
        try:
            lines = self.history_file.read_text(encoding="utf-8").split("\n")
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # empty, or torn by a crash mid-append
            if isinstance(event, dict) and _VERSION_RE.match(str(event.get("version", ""))):
                events.append(event)
        return events

    # -- internals -----------------------------------------------------------------------
    def _name(self, version: str) -> str:
        if version == LATEST:
            latest = self.latest_version()
            if latest is None:
                if not self.versions():
                    raise RegistryError(self._empty())
                raise RegistryError(
                    f"no version of {self.root} is promoted yet; promote one with "
                    "'pricing models promote VERSION' (see 'pricing models list')"
                )
            return latest
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise RegistryError(
                f"{version!r} is not a version id (like v20261129T071500Z-1a2b3c4d) or 'latest'; "
                "see 'pricing models list'"
            )
        return version

    def _empty(self) -> str:
        return f"no model versions in {self.root}; publish one with 'pricing train' (or check --registry)"

    def _unknown(self, name: str) -> str:
        known = self.versions()
        if not known:
            return f"unknown version {name}: {self._empty()}"
        return f"unknown version {name} in {self.root}; 'pricing models list' shows the {len(known)} known ones"

    def _created(self) -> dt.datetime:
        now = self._clock().astimezone(dt.timezone.utc).replace(microsecond=0)
        known = self.versions()
        if known:
            newest = dt.datetime.strptime(_VERSION_RE.match(known[-1]).group(1), _TIME_FORMAT)  # type: ignore[union-attr]
            newest = newest.replace(tzinfo=dt.timezone.utc)
            if now <= newest:
                now = newest + dt.timedelta(seconds=1)
        return now

    def _promotion_stack(self, current: str | None) -> list[str]:
        """Replay the history into the stack of promoted versions; its top is ``current``."""
        stack: list[str] = []
        for event in self.history():
            if event.get("action") not in ("promote", "rollback"):
                continue  # a gate decision (evaluate) moves nothing
            version = event["version"]
            if event.get("action") == "rollback" and version in stack:
                del stack[len(stack) - stack[::-1].index(version):]
            elif not stack or stack[-1] != version:
                stack.append(version)
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)  # promoted, then a crash before its history line
        return stack

    def _set_latest(self, version: str, *, action: str, evidence: dict[str, Any] | None = None) -> PointerChange:
        previous = self.latest_version()
        recorded = self._promotion_stack(None)
        if previous is not None and (not recorded or recorded[-1] != previous):
            # `previous` was promoted, then a crash lost its history line: record it first,
            # so that a later rollback can return to it.
            self._append_history({"action": "promote", "version": previous, "previous": None, "recovered": True})
        _atomic_write(self.latest_file, (version + "\n").encode("utf-8"))
        event: dict[str, Any] = {"action": action, "version": version, "previous": previous}
        if evidence is not None:
            event["evidence"] = evidence
        self._append_history(event)
        return PointerChange(previous=previous, latest=version)

    def _append_history(self, event: dict[str, Any]) -> dict[str, Any]:
        event = {"at": _iso(self._clock()), **event}
        line = json.dumps(event, sort_keys=True, allow_nan=False) + "\n"
        fd = os.open(self.history_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(self.history_file, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = "\n" + line  # a crash tore the last line: do not glue this one to it
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return event

    def _clean_incoming(self) -> None:
        """Remove what crashed writers left (we hold the lock, so no other writer is active)."""
        if self._incoming.is_dir():
            for entry in self._incoming.iterdir():
                _rmtree(entry)
        for entry in self.root.glob(f".{LATEST}.tmp-*"):
            entry.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self, *, create: bool = False) -> Iterator[None]:
        """Serialise writers; ``create``: make the registry's folders (publish) instead of requiring them."""
        if create:
            for d in (self.root, self.versions_dir, self._incoming):
                d.mkdir(parents=True, exist_ok=True)
        elif not self.versions_dir.is_dir():
            raise RegistryError(self._empty())
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._clean_incoming()
            yield
        finally:
            os.close(fd)  # releases the lock


# -- helpers -------------------------------------------------------------------------------
def _tree(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file and folder under root, sorted by relative path."""
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise RegistryError(f"{path} is a symbolic link; the registry stores plain files and folders only")
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise RegistryError(f"{path} is not a regular file or folder")
            entries.append((path.relative_to(root).as_posix(), path))
    entries.sort(key=lambda e: e[0].encode("utf-8"))
    return entries


def _hash_entry(digest: "hashlib._Hash", kind: bytes, rel: str, size: int) -> None:
    name = rel.encode("utf-8")
    digest.update(kind + len(name).to_bytes(8, "big") + name + size.to_bytes(8, "big"))


def _copy_tree(source: Path, dest: Path) -> str:
    """Copy source to dest (fsynced, files read-only) and return the content hash of the copy."""
    entries = _tree(source)
    if not any(p.is_file() for _, p in entries):
        raise RegistryError(f"model folder {source} holds no files")
    dest.mkdir()
    for rel, path in entries:
        if path.is_dir():
            (dest / rel).mkdir()
        else:
            _copy_file(path, dest / rel)
    for dirpath, _, _ in os.walk(dest, topdown=False):
        _fsync_dir(Path(dirpath))
    return content_hash(dest)


def _copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o444)


def _write_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers and crashes see the old or the new bytes, nothing else."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _check_version_id(value: Any) -> str:
    if not isinstance(value, str) or not _VERSION_RE.match(value):
        raise RegistryError(f"{value!r} is not a version id (like v20261129T071500Z-1a2b3c4d)")
    return value


def _hex_hash(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise RegistryError(f"content_hash must be 64 lowercase hex digits, got {value!r}")
    return value


def _numbers(values: Any, name: str) -> tuple[float, ...]:
    """A sequence of finite numbers as a tuple of floats; RegistryError otherwise."""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
        raise RegistryError(f"{name} must be a list of numbers, got {values!r}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise RegistryError(f"{name} must hold numbers, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise RegistryError(f"{name} holds {number}; the manifest holds finite numbers only")
        out.append(number)
    return tuple(out)


def _json_mapping(value: Any, name: str) -> dict[str, Any]:
    """``value`` as a dict of JSON values (finite numbers only); RegistryError otherwise."""
    if not isinstance(value, Mapping):
        raise RegistryError(f"{name} must be a mapping, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{name} must hold JSON values only (finite numbers): {exc}") from None


def _metrics(values: Any) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise RegistryError(f"metrics must be a mapping of names to numbers, got {type(values).__name__}")
    out: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise RegistryError(f"metric names must be non-empty strings, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise RegistryError(f"metric {key} must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise RegistryError(f"metric {key} is {number}; the manifest holds finite numbers only (leave it out)")
        out[key] = number
    return out
