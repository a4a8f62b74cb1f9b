"""Where a job's checkpoints live, and where a restarted job starts from.

Each deployment keeps its checkpoints under ``<checkpoint_dir>/<consumer_group>/<job id>/chk-N``
(the consumer group names the deployment's input position, which the checkpoint holds).
Checkpoints are retained when the job is cancelled or dies (``RETAIN_ON_CANCELLATION``).

Guarantee of ``plan_start``, the default way a job starts (``job.start = "resume"``):

* if the deployment has a completed checkpoint (a ``chk-N`` with its ``_metadata``), the job
  resumes from the newest one: its Kafka offsets, feature windows and the requests still
  waiting for the watermark come back, and the Kafka sink aborts the transactions the
  previous run left open. After a crash (``kill -9`` included) nothing is lost and, with
  exactly-once output, nothing is duplicated. Flink takes ownership of that checkpoint
  (``CLAIM``) and deletes it once newer ones replace it;
* with no checkpoint, the job starts empty from the consumer group's committed offsets.

``job.start = "fresh"`` (``pricing job run --fresh``) starts with empty state on purpose: the
previous run's checkpoints are moved aside, not deleted, and the job says so; the input
continues from the committed offsets, so what the previous run had read but not yet answered
(requests waiting for the watermark at its last checkpoint) is not priced. An explicit
``job.restore_from`` (a savepoint) wins over both.

Only a local ``checkpoint_dir`` (a path or ``file:`` URI) can be searched from here. On a
cluster with remote storage, Flink's high availability (the Kubernetes operator) resumes the
job, or pass ``restore_from``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pricing.config import Settings


@dataclass(frozen=True)
class Start:
    """How a job starts: from which checkpoint or savepoint, whether Flink may own it, and why."""

    restore_from: str | None
    claim: bool
    note: str


def checkpoint_root(settings: Settings) -> str:
    """The URI under which this deployment's jobs write their checkpoints."""
    job = settings.job
    base = job.checkpoint_dir or (settings.state_dir / "checkpoints").resolve().as_uri()
    return f"{base.rstrip('/')}/{job.consumer_group}"


def local_path(uri: str) -> Path | None:
    """The local folder of a ``file:`` URI or plain path; None for remote storage (s3:, hdfs:, ...)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        return Path(uri)
    return None


def completed_checkpoints(root: Path) -> list[Path]:
    """The completed checkpoints under ``root`` (``<job id>/chk-N`` with a non-empty ``_metadata``), newest last."""
    found = [m.parent for m in root.glob("*/chk-*/_metadata") if m.stat().st_size > 0]
    return sorted(found, key=lambda chk: ((chk / "_metadata").stat().st_mtime, int(chk.name.removeprefix("chk-"))))


def plan_start(settings: Settings) -> Start:
    """Decide where the job starts (see the module docstring); moves checkpoints aside for a fresh start."""
    job = settings.job
    if job.restore_from:
        return Start(job.restore_from, claim=False, note=f"restoring from {job.restore_from}")
    root_uri = checkpoint_root(settings)
    root = local_path(root_uri)
    if root is None:
        return Start(None, claim=False, note=(
            f"checkpoints go to {root_uri}, which is not local: a restart resumes through Flink's high "
            "availability (or pass --restore-from); starting from the committed offsets"))
    if job.start == "fresh":
        if not completed_checkpoints(root):
            return Start(None, claim=False, note="fresh start (no earlier checkpoint)")
        aside = root.with_name(f"{root.name}.discarded-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
        shutil.move(str(root), str(aside))
        return Start(None, claim=False, note=(
            f"FRESH START: the previous run's state is not used (its checkpoints are kept in {aside}); "
            "input continues from the consumer group's committed offsets, so requests that run had read "
            "but not yet answered will not be priced"))
    _drop_empty_job_folders(root)
    checkpoints = completed_checkpoints(root) if root.is_dir() else []
    if not checkpoints:
        return Start(None, claim=False, note="no earlier checkpoint: starting from the committed offsets")
    latest = checkpoints[-1]
    return Start(latest.as_uri(), claim=True, note=f"resuming from the latest checkpoint {latest}")


def _drop_empty_job_folders(root: Path) -> None:
    """Remove job folders that hold no file at all (their checkpoints were subsumed after a resume)."""
    if not root.is_dir():
        return
    for job_dir in root.iterdir():
        if job_dir.is_dir() and not any(p.is_file() for p in job_dir.rglob("*")):
            shutil.rmtree(job_dir)
