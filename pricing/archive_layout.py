"""Where the archive (``jobs/archive.py``) puts each topic's records, and how readers find them again.

One small module both sides import: the archive job writes this layout, ``pricing backfill``, ``pricing
training-set`` and ``pricing learn`` read it. The layout::

    <root>/<topic name>/dt=YYYY-MM-DD/hour=HH/part-<run id>-<writer>-<n>

* ``dt`` and ``hour`` are the record's Kafka timestamp in UTC. Producers of the input topics stamp a record with its
  event time, so a partition holds one hour of event time and a late event lands in the hour it happened, not the
  hour it arrived. The engine's own outputs (priced events, recommendations, dead letters) carry the time Flink
  wrote them, a few milliseconds to a checkpoint interval after the request.
* Each file is an Avro object container file whose schema is the topic's contract as published now
  (``schemas/<contract>.avsc``): records written by an older producer are resolved to it before they are archived.
  Only records that decode and pass the contract's rules are archived (the job dead-letters the others, and the
  dead-letter topic is archived too).
* Files whose name starts with ``.`` or ``_`` are not data: a file still being written (``.part-...``, made visible
  at the checkpoint that commits it) or a marker. Readers skip them, so they only ever see committed records.
* Within a file, records are in the order they were read from one Kafka partition. Across files of one hour there
  is no order; :func:`files` sorts them by modification time (the order the archive committed them), then name.
* The root is a local folder or any URI pyarrow's filesystems open (``s3://bucket/prefix`` on Kubernetes, where the
  archive job writes to object storage): :func:`files` lists and :func:`open_file` opens through ``pyarrow.fs``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

HOUR_MS = 3_600_000
PARTITION_KEYS = ("dt", "hour")
_PARTITION = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$"), re.compile(r"^hour=(\d{2})$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "min": 60_000, "h": HOUR_MS, "d": 24 * HOUR_MS}


def partition_of(timestamp_ms: int) -> tuple[str, str]:
    """The ``(dt, hour)`` partition values of a record stamped ``timestamp_ms`` (UTC)."""
    when = dt.datetime.fromtimestamp(timestamp_ms / 1000, tz=dt.timezone.utc)
    return when.strftime("%Y-%m-%d"), when.strftime("%H")


def partition_path(root: Path | str, topic: str, timestamp_ms: int) -> Path:
    day, hour = partition_of(timestamp_ms)
    return Path(root) / topic / f"dt={day}" / f"hour={hour}"


def parse_duration_ms(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"6h"``, ``"7d"`` (or ``"250ms"``) in milliseconds; a clear error otherwise."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration: write a number and a unit, ms, s, m, h or d (e.g. 6h, 7d)")
    value = float(match.group(1)) * _UNIT_MS[match.group(2)]
    if value <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return int(value)


def parse_time_ms(text: str) -> int:
    """An ISO-8601 time (``2026-12-05T10:00Z``, a date alone is midnight UTC) or epoch milliseconds."""
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: write ISO-8601 (2026-12-05T10:00Z) or epoch milliseconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class TimeRange:
    """Event time ``since_ms <= t < until_ms``; ``None`` leaves that side open."""

    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if self.since_ms is not None and self.until_ms is not None and self.since_ms >= self.until_ms:
            raise ValueError(f"an empty time range: since {self.since_ms} is not before until {self.until_ms}")

    @classmethod
    def of(cls, since: str | None = None, until: str | None = None, last: str | None = None, *,
           now_ms: int | None = None) -> "TimeRange":  # fmt: skip
        """From the command line's ``--since``, ``--until`` and ``--last`` (a duration back from ``--until``, or
        from now)."""
        if last is not None and since is not None:
            raise ValueError("give --since or --last, not both")
        until_ms = parse_time_ms(until) if until is not None else None
        if last is not None:
            end = until_ms if until_ms is not None else (
                now_ms if now_ms is not None else int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000))
            return cls(end - parse_duration_ms(last), end)
        return cls(parse_time_ms(since) if since is not None else None, until_ms)

    def __str__(self) -> str:
        def iso(ms: int | None) -> str:
            return "open" if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).isoformat(
                timespec="seconds").replace("+00:00", "Z")

        return f"[{iso(self.since_ms)}, {iso(self.until_ms)})"

    def overlaps_hour(self, hour_start_ms: int) -> bool:
        return ((self.since_ms is None or hour_start_ms + HOUR_MS > self.since_ms)
                and (self.until_ms is None or hour_start_ms < self.until_ms))  # fmt: skip

    def contains(self, t_ms: Any) -> Any:
        """Whether each time (epoch ms; a number or an array) lies in the range: a bool, or a bool array."""
        import numpy as np

        t = np.asarray(t_ms, dtype=np.int64)
        keep = np.ones(t.shape, dtype=bool)
        if self.since_ms is not None:
            keep &= t >= self.since_ms
        if self.until_ms is not None:
            keep &= t < self.until_ms
        return keep


def _filesystem(root: Path | str) -> tuple[Any, str, str, str]:
    """``(pyarrow filesystem, path inside it, prefix and suffix that turn such a path back into what readers
    open)``: a local folder or ``file:`` URI gives plain paths; ``s3://`` (and whatever else pyarrow knows) gives
    URIs again, with the root's query (``s3://bucket/prefix?endpoint_override=minio:9000&scheme=http``: pyarrow takes
    an S3-compatible store's endpoint from there, not from ``AWS_ENDPOINT_URL``)."""
    import pyarrow.fs as pafs

    text = str(root)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).resolve()), "", ""
    fs, path = pafs.FileSystem.from_uri(text)
    scheme = text.split("://", 1)[0]
    if scheme == "file":
        return fs, path.rstrip("/"), "", ""
    query = text.split("?", 1)[1] if "?" in text else ""
    return fs, path.rstrip("/"), f"{scheme}://", f"?{query}" if query else ""


def _hour_start(day: str, hour: str) -> int:
    start = dt.datetime.fromisoformat(day).replace(hour=int(hour), tzinfo=dt.timezone.utc)
    return int(start.timestamp() * 1000)


def is_data_file(path: Path | str) -> bool:
    """A committed data file by its name (``.`` and ``_`` prefixes are in-progress files and markers)."""
    return not Path(str(path)).name.startswith((".", "_"))


def files(root: Path | str, topic: str, time_range: TimeRange = TimeRange()) -> list[str]:
    """The committed files of ``topic`` whose hour overlaps ``time_range``: hours in time order, within an hour by
    commit time, then name. ``root`` is a folder or a URI (``s3://bucket/prefix``); the result holds local paths for
    a local archive, URIs otherwise (open them with :func:`open_file`). Records near the range's edges may fall
    outside it: filter them by their time field."""
    import pyarrow.fs as pafs

    fs, base, prefix, suffix = _filesystem(root)
    topic_dir = f"{base}/{topic}"
    if fs.get_file_info(topic_dir).type != pafs.FileType.Directory:
        return []
    found: dict[int, list[tuple[int, str]]] = {}
    for info in fs.get_file_info(pafs.FileSelector(topic_dir, recursive=True)):
        if info.type != pafs.FileType.File or not is_data_file(info.path):
            continue
        parts = info.path[len(topic_dir) + 1:].split("/")
        if len(parts) != 3:
            continue
        day, hour = _PARTITION[0].match(parts[0]), _PARTITION[1].match(parts[1])
        if day and hour:
            start = _hour_start(day.group(1), hour.group(1))
            if time_range.overlaps_hour(start):
                found.setdefault(start, []).append((info.mtime_ns or 0, info.path))
    return [prefix + path + suffix for start in sorted(found) for _, path in sorted(found[start])]


def open_file(path: Path | str) -> BinaryIO:
    """A file :func:`files` listed, open for reading (local path or URI)."""
    text = str(path)
    if "://" not in text:
        return open(text, "rb")  # noqa: SIM115 - the caller closes it
    fs, inner, _, _ = _filesystem(text)
    return fs.open_input_file(inner)


def topics(root: Path | str) -> list[str]:
    """The topics an archive holds (folders with at least one committed file in a partition)."""
    import pyarrow.fs as pafs

    fs, base, _, _ = _filesystem(root)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(base)) if i.type == pafs.FileType.Directory]
    return sorted(n for n in names if files(root, n))
