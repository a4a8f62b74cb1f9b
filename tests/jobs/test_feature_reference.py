"""The parity tests' own reference helpers, checked without services: they must catch a job that is wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.jobs.feature_reference import catalogue_frame, reference_features, without_late

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


def test_the_reference_counts_a_users_events_in_the_category_each_product_had_then() -> None:
    """features/4: an event counts in its product's category at the event (latest catalogue entry by event time;
    in arrival mode among the entries that arrived before it); a request of an unknown category gets 0."""
    m = pd.DataFrame({"product_id": pd.Series(dtype=object), "kind": pd.Series(dtype=object),
                      "value": pd.Series(dtype=np.int64), "event_time": pd.Series(dtype=np.int64),
                      "seq": pd.Series(dtype=np.int64)})  # fmt: skip
    catalogue = catalogue_frame([
        {"product_id": "a", "category": "x", "event_time": T - 10_000},
        {"product_id": "b", "category": "y", "event_time": T - 10_000},
        {"product_id": "b", "category": "x", "event_time": T + 5_000},  # b joins x at T + 5 s
    ]).assign(seq=[0, 1, 9])  # the move arrives after everything else
    behaviour = pd.DataFrame({
        "user_id": "u", "product_id": ["a", "b", "b", "c"], "type": "view", "event_time": [T, T + 1_000, T + 6_000, T],
        "price_seen_minor": 1, "quantity": 1, "seq": [2, 3, 4, 5],
    })
    requests = pd.DataFrame({"request_id": ["ra", "rc"], "user_id": "u", "product_id": ["a", "c"], "channel": "web",
                             "event_time": T + 10_000, "seq": [10, 11]})
    got = reference_features(requests, behaviour, m, catalogue)
    assert got.loc["ra", "user_category_views_24h"] == 2  # a's view and b's view after the move
    assert got.loc["ra", "user_views_24h"] == 4 and got.loc["ra", "user_product_views_24h"] == 1
    assert got.loc["rc", "user_category_views_24h"] == 0  # c has no entry
    arrival = reference_features(requests, behaviour, m, catalogue, arrival=True)
    assert arrival.loc["ra", "user_category_views_24h"] == 1  # b's view at T + 6 s came before the move arrived
