"""The parity tests' own reference helpers, checked without services: they must catch a job that is wrong."""

from __future__ import annotations

import pandas as pd
import pytest

from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.jobs.feature_reference import without_late

T = 1_764_000_000_000


def _requests(times: list[int]) -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": [f"r{i}" for i in range(len(times))], "user_id": "u", "product_id": "p", "channel": "web",
        "event_time": times, "arrival_time": range(len(times)),
    })


def _letters(frame: pd.DataFrame, *rows: int) -> list[dict]:
    fields = [f["name"] for f in serde.published_schema(Contract.PRICE_REQUEST)["fields"]]
    return [{"raw": serde.encode(Contract.PRICE_REQUEST, frame.reindex(columns=fields).iloc[i].to_dict())} for i in rows]


def test_an_event_behind_the_allowance_of_an_earlier_one_may_be_late() -> None:
    frame = _requests([T, T + 10_000, T + 7_000, T + 2_000])  # r3 is 8 s behind r1
    kept, n_late = without_late({Contract.PRICE_REQUEST: frame}, _letters(frame, 3), allowance_ms=5_000)
    assert n_late == 1 and list(kept[Contract.PRICE_REQUEST]["request_id"]) == ["r0", "r1", "r2"]


def test_a_job_that_dead_letters_an_on_time_event_is_caught() -> None:
    frame = _requests([T, T + 10_000, T + 7_000, T + 2_000])  # r2 is only 3 s behind r1: on time
    with pytest.raises(AssertionError, match="on time"):
        without_late({Contract.PRICE_REQUEST: frame}, _letters(frame, 2), allowance_ms=5_000)
