"""Where the archive (``jobs/archive.py``) puts each topic's records, and how readers find them again.

One small module both sides import: the archive job writes this layout, ``pricing backfill``, ``pricing
training-set`` and ``pricing learn`` read it. The layout::

    <root>/<topic name>/dt=YYYY-MM-DD/hour=HH/<file>.avro

* ``dt`` and ``hour`` are the record's Kafka timestamp in UTC. The engine's producers stamp a record with its event
  time (``request_time`` for a priced event), so a partition holds one hour of event time; a late event lands in the
  hour it happened, not the hour it arrived.
* Each file is an Avro object container file whose schema is the topic's contract as published now
  (``schemas/<contract>.avsc``): records written by an older producer are resolved to it before they are archived.
  Only records that decode and pass the contract's rules are archived (the job dead-letters the others, and the
  dead-letter topic is archived too).
* Files whose name starts with ``.`` or ``_`` are not data: a file still being written (``.part-...``, made visible
  at the checkpoint that commits it) or a marker. Readers skip them, so they only ever see committed records.
* Within a file, records are in the order they were read from one Kafka partition. Across files of one hour there
  is no order; :func:`files` sorts them by modification time (the order the archive committed them), then name.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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

    def contains(self, t_ms: int) -> bool:
        return (self.since_ms is None or t_ms >= self.since_ms) and (self.until_ms is None or t_ms < self.until_ms)


def _hours(topic_dir: Path) -> Iterator[tuple[int, Path]]:
    for day_dir in topic_dir.iterdir() if topic_dir.is_dir() else ():
        day = _PARTITION[0].match(day_dir.name)
        if not day or not day_dir.is_dir():
            continue
        for hour_dir in day_dir.iterdir():
            hour = _PARTITION[1].match(hour_dir.name)
            if hour and hour_dir.is_dir():
                start = dt.datetime.fromisoformat(day.group(1)).replace(hour=int(hour.group(1)),
                                                                        tzinfo=dt.timezone.utc)  # fmt: skip
                yield int(start.timestamp() * 1000), hour_dir


def is_data_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith((".", "_"))


def files(root: Path | str, topic: str, time_range: TimeRange = TimeRange()) -> list[Path]:
    """The committed files of ``topic`` whose hour overlaps ``time_range``: hours in time order, within an hour by
    commit time, then name. Records near the range's edges may fall outside it: filter them by their time field."""
    out: list[Path] = []
    for start, hour_dir in sorted(_hours(Path(root) / topic)):
        if time_range.overlaps_hour(start):
            found = [p for p in hour_dir.iterdir() if is_data_file(p)]
            out += sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))
    return out


def topics(root: Path | str) -> list[str]:
    """The topics an archive holds (folders with at least one partition)."""
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(True for _ in _hours(p))) if root.is_dir() \
        else []
