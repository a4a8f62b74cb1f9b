"""Ranking priced candidates: the utility order, the fallback, exploration's propensities, and the
contract of what comes out."""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd
import pytest

from pricing_udfs import serde
from pricing_udfs.policy.decisions import FALLBACK_VERSION
from pricing_udfs.recommend.candidates import Candidate
from pricing_udfs.recommend.ranking import EXPLORATION, RankingSettings, candidate_rows, rank
from pricing_udfs.serde import Contract, Ok


def _request(rid: str = "rr1", k: int = 3) -> dict:
    return {"request_id": rid, "user_id": "u1", "channel": "web", "event_time": 1_000, "k": k}


def _decisions(rows: pd.DataFrame, profit: dict[str, int], conversion: dict[str, float],
               fallback: set[str] = frozenset()) -> pd.DataFrame:  # fmt: skip
    fb = [p in fallback for p in rows["product_id"]]
    return pd.DataFrame({
        "price_minor": 1_000, "reference_price_minor": 900, "currency": "EUR",
        "model_version": [FALLBACK_VERSION if f else "m/7" for f in fb],
        "expected_conversion": [math.nan if f else conversion[p] for p, f in zip(rows["product_id"], fb)],
        "expected_profit_minor": [0 if f else profit[p] for p, f in zip(rows["product_id"], fb)],
        "reason_codes": [["no_model", "reference_price"] if f else ["model"] for f in fb],
        "fallback_used": fb, "explored": False, "propensity": 1.0,
    }, index=rows.index)  # fmt: skip


CANDIDATES = [Candidate("a", 5.0, ("popular",)), Candidate("b", 1.0, ("co_view",)), Candidate("c", 3.0, ("recent",)),
              Candidate("d", 9.0, ("popular",))]  # fmt: skip
PROFIT = {"a": 10, "b": 40, "c": 25, "d": 5}
CONVERSION = {"a": 0.5, "b": 0.05, "c": 0.2, "d": 0.9}


def test_items_are_ranked_by_expected_profit_and_valid_recommendations_come_out() -> None:
    rows = candidate_rows([_request()], [CANDIDATES])
    assert list(rows["request_id"]) == ["rr1#a", "rr1#b", "rr1#c", "rr1#d"]
    [rec] = rank([_request()], rows, _decisions(rows, PROFIT, CONVERSION), RankingSettings(),
                 answered_time_ms=2_000, feature_spec_version="features/3")  # fmt: skip
    assert [i["product_id"] for i in rec["items"]] == ["b", "c", "a"]
    assert rec["items"][0]["reason_codes"] == ["co_view", "model"]
    assert rec["model_version"] == "m/7" and not rec["fallback_used"]
    assert all(i["propensity"] == 1.0 and not i["explored"] for i in rec["items"])
    # rank leaves the experiment fields to the stage (pricing_udfs.experiment): null without an experiment
    assert serde.decode(Contract.RECOMMENDATION, serde.encode(Contract.RECOMMENDATION, rec)) == Ok(
        rec | {"experiment_id": None, "arm": None})


def test_a_conversion_value_moves_likely_sales_up() -> None:
    rows = candidate_rows([_request(k=4)], [CANDIDATES])
    [rec] = rank([_request(k=4)], rows, _decisions(rows, PROFIT, CONVERSION), RankingSettings(conversion_value_minor=100),
                 answered_time_ms=2_000, feature_spec_version=None)  # fmt: skip
    # utilities: a 60, b 45, c 45, d 95; ties broken by the candidate score (c 3 > b 1)
    assert [i["product_id"] for i in rec["items"]] == ["d", "a", "c", "b"]


def test_without_any_model_price_the_fallback_ranks_by_candidate_score() -> None:
    rows = candidate_rows([_request()], [CANDIDATES])
    [rec] = rank([_request()], rows, _decisions(rows, PROFIT, CONVERSION, fallback=set("abcd")), RankingSettings(),
                 answered_time_ms=2_000, feature_spec_version=None)  # fmt: skip
    assert [i["product_id"] for i in rec["items"]] == ["d", "a", "c"]
    assert rec["fallback_used"] and rec["model_version"] == FALLBACK_VERSION
    assert all(math.isnan(i["expected_conversion"]) and i["expected_profit_minor"] == 0 for i in rec["items"])


def test_candidates_the_model_could_not_price_come_after_the_priced_ones() -> None:
    rows = candidate_rows([_request(k=4)], [CANDIDATES])
    [rec] = rank([_request(k=4)], rows, _decisions(rows, PROFIT, CONVERSION, fallback={"b"}), RankingSettings(),
                 answered_time_ms=2_000, feature_spec_version=None)  # fmt: skip
    assert [i["product_id"] for i in rec["items"]] == ["c", "a", "d", "b"] and not rec["fallback_used"]


def test_slates_of_several_requests_in_one_batch_stay_apart() -> None:
    requests = [_request("x", k=2), _request("y", k=5), _request("z", k=1)]
    found = [CANDIDATES[:2], CANDIDATES[2:], []]
    rows = candidate_rows(requests, found)
    recs = rank(requests, rows, _decisions(rows, PROFIT, CONVERSION), RankingSettings(), answered_time_ms=1,
                feature_spec_version=None)  # fmt: skip
    assert [[i["product_id"] for i in r["items"]] for r in recs] == [["b", "a"], ["c", "d"], []]
    assert recs[2]["fallback_used"]  # nothing to rank: nothing the model priced


def test_exploration_propensities_are_the_true_slot_probabilities() -> None:
    """Over many requests, how often each item lands in the first slot matches the logged propensities,
    and every explored slate logs the probability the rule gave it."""
    s = RankingSettings(exploration_rate=0.2, max_explored_slots=1, exploration_seed=4)
    requests = [_request(f"r{i}", k=2) for i in range(4_000)]
    rows = candidate_rows(requests, [CANDIDATES] * len(requests))
    recs = rank(requests, rows, _decisions(rows, PROFIT, CONVERSION), s, answered_time_ms=1, feature_spec_version=None)
    first = Counter(r["items"][0]["product_id"] for r in recs)
    n = len(recs)
    # best (b) with 0.8 + 0.2/4, each other with 0.2/4
    assert first["b"] / n == pytest.approx(0.85, abs=0.02)
    for other in "acd":
        assert first[other] / n == pytest.approx(0.05, abs=0.015)
    for r in recs:
        top = r["items"][0]
        assert top["propensity"] == pytest.approx(0.85 if top["product_id"] == "b" else 0.05)
        assert (EXPLORATION in top["reason_codes"]) == top["explored"]
        assert sum(i["explored"] for i in r["items"]) <= 1
    explored = [r for r in recs if r["items"][0]["explored"]]
    assert len(explored) / n == pytest.approx(0.2, abs=0.02)
    # once the one explored slot is used, the next slot is greedy with propensity 1
    assert all(r["items"][1]["propensity"] == 1.0 for r in explored)


def test_the_same_input_gives_the_same_slates() -> None:
    s = RankingSettings(exploration_rate=0.2, max_explored_slots=2)
    requests = [_request(f"r{i}", k=3) for i in range(50)]
    rows = candidate_rows(requests, [CANDIDATES] * 50)
    d = _decisions(rows, PROFIT, CONVERSION)
    assert rank(requests, rows, d, s, answered_time_ms=1, feature_spec_version=None) == rank(
        requests, rows, d, s, answered_time_ms=1, feature_spec_version=None)


def test_decisions_must_match_the_rows() -> None:
    rows = candidate_rows([_request()], [CANDIDATES])
    with pytest.raises(ValueError, match="3 decisions for 4 candidate rows"):
        rank([_request()], rows, _decisions(rows, PROFIT, CONVERSION).iloc[:3], RankingSettings(),
             answered_time_ms=1, feature_spec_version=None)  # fmt: skip
