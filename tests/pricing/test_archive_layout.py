"""The archive's layout: partitions of UTC hours, committed files only, in commit order; time ranges from the
command line. The archive job's own test (tests/jobs/test_archive.py) checks that it writes this layout."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricing import archive_layout as al
from pricing.archive_layout import HOUR_MS, TimeRange

T0 = int(dt.datetime(2026, 12, 5, 22, 30, tzinfo=dt.timezone.utc).timestamp() * 1000)


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_a_timestamp_lies_in_the_hour_its_partition_names(t: int) -> None:
    day, hour = al.partition_of(t)
    start = int(dt.datetime.fromisoformat(f"{day}T{hour}:00:00+00:00").timestamp() * 1000)
    assert start <= t < start + HOUR_MS


def test_partitions_are_utc_hours() -> None:
    assert al.partition_of(T0) == ("2026-12-05", "22")
    assert al.partition_path("/a", "t", T0 + HOUR_MS * 2) == Path("/a/t/dt=2026-12-06/hour=00")


@pytest.mark.parametrize("text,ms", [("250ms", 250), ("90s", 90_000), ("15m", 900_000), ("15min", 900_000),
                                     ("6h", 6 * HOUR_MS), ("1.5h", 5_400_000), ("7d", 7 * 24 * HOUR_MS)])
def test_durations(text: str, ms: int) -> None:
    assert al.parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "6", "h", "-1h", "0h", "6 hours", "1e3s"])
def test_bad_durations_are_clear_errors(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        al.parse_duration_ms(text)


def test_time_ranges_from_the_command_line() -> None:
    assert TimeRange.of(last="6h", now_ms=T0) == TimeRange(T0 - 6 * HOUR_MS, T0)
    assert TimeRange.of(until="2026-12-05T22:30Z", last="30m") == TimeRange(T0 - 1_800_000, T0)
    assert TimeRange.of(since="2026-12-05") == TimeRange(T0 - 22 * HOUR_MS - 1_800_000, None)
    assert TimeRange.of(since=str(T0), until=str(T0 + 1)) == TimeRange(T0, T0 + 1)
    assert TimeRange.of() == TimeRange()
    with pytest.raises(ValueError, match="not both"):
        TimeRange.of(since="2026-12-05", last="1h")
    with pytest.raises(ValueError, match="empty time range"):
        TimeRange.of(since="2026-12-06", until="2026-12-05")
    with pytest.raises(ValueError, match="not a time"):
        TimeRange.of(since="yesterday")
    assert str(TimeRange(T0, None)) == "[2026-12-05T22:30:00Z, open)"


def _file(folder: Path, name: str, mtime_s: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(name.encode())
    os.utime(path, (mtime_s, mtime_s))
    return path


@pytest.mark.parametrize("as_uri", [False, True])
def test_files_are_the_committed_ones_of_the_hours_in_range_in_commit_order(tmp_path: Path, as_uri: bool) -> None:
    root = tmp_path / "archive"
    h0 = al.partition_path(root, "t", T0)  # 22:00
    h1 = al.partition_path(root, "t", T0 + HOUR_MS)  # 23:00
    h2 = al.partition_path(root, "t", T0 + 2 * HOUR_MS)  # 00:00 the next day
    late = _file(h1, "part-a", 200)
    early = _file(h1, "part-b", 100)  # committed first, though its name sorts later
    first = _file(h0, "part-z", 300)
    last = _file(h2, "part-0", 50)
    _file(h1, ".part-c.inprogress", 10)  # not committed yet
    _file(h1, "_SUCCESS", 10)  # a marker
    _file(root / "t" / "dt=2026-12-05", "stray", 10)  # not in an hour folder
    _file(root / "t" / "misc" / "hour=01", "part-x", 10)  # not a partition
    base = root.as_uri() if as_uri else str(root)
    assert al.files(base, "t") == [str(p) for p in (first, early, late, last)]
    # The range picks the whole hours that overlap it: [23:00, 00:00) is the 23:00 hour alone; an end at
    # 23:00:00.001 still takes the 23:00 hour, an end at 23:00 does not.
    at_23 = T0 + 1_800_000
    assert al.files(base, "t", TimeRange(at_23, at_23 + HOUR_MS)) == [str(early), str(late)]
    assert al.files(base, "t", TimeRange(None, at_23 + 1)) == [str(first), str(early), str(late)]
    assert al.files(base, "t", TimeRange(None, at_23)) == [str(first)]
    assert al.files(base, "t", TimeRange(T0 + 3 * HOUR_MS, None)) == []
    assert al.files(base, "absent") == [] and al.topics(base) == ["t"]
    with al.open_file(al.files(base, "t")[0]) as f:
        assert f.read() == b"part-z"


def test_an_object_store_uri_keeps_its_endpoint_query_for_the_files_it_lists() -> None:
    """pyarrow takes an S3-compatible store's endpoint from the URI's query: listed files must carry it along."""
    fs, base, prefix, suffix = al._filesystem("s3://bucket/archive?endpoint_override=minio:9000&scheme=http")
    assert type(fs).__name__ == "S3FileSystem" and base == "bucket/archive"
    assert (prefix, suffix) == ("s3://", "?endpoint_override=minio:9000&scheme=http")
    # (a URI without endpoint or region would ask AWS for the bucket's region: no network in unit tests)
    assert al._filesystem("s3://bucket/archive?region=eu-west-1")[2:] == ("s3://", "?region=eu-west-1")


def test_a_range_contains_numbers_and_arrays_alike() -> None:
    r = TimeRange(10, 20)
    assert r.contains(10) and not r.contains(20) and TimeRange().contains(-5)
    assert r.contains(np.array([9, 10, 19, 20])).tolist() == [False, True, True, False]
