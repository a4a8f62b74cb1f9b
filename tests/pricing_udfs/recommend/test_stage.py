"""The recommend stage (``pricing_udfs.recommend.stage``): one model call for every candidate of every slate,
prices from the pricing path's stage and guardrails, no offer recorded as a sale, the fallback ranking, and the
candidate stage's handling of the followed topics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.policy.decisions import FALLBACK_VERSION
from pricing_udfs.recommend.candidates import CandidateSettings
from pricing_udfs.recommend.stage import CandidateConfig, CandidateStage, RecommendConfig, RecommendStage, slate_frame
from pricing_udfs.serde import Contract
from tests.pricing_udfs.test_scoring import T, publish, settle, stage_for

COSTS = {"a": 300.0, "b": 700.0, "c": 100.0}
LIST = {"a": 1_000.0, "b": 1_000.0, "c": 400.0}


def _slate(products: list[str]) -> pd.DataFrame:
    vectors = [FEATURE_SPEC.vector({"list_price_minor": LIST[p], "unit_cost_minor": COSTS[p]}) for p in products]
    return slate_frame(products, ["EUR"] * len(products), [1.0 + i for i in range(len(products))],
                       ["popular,co_view"] * len(products), np.concatenate(vectors or [np.zeros(0)]), spec=FEATURE_SPEC)  # fmt: skip


def _requests(n: int, k: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"request_id": [f"rr{i}" for i in range(n)], "user_id": "u", "channel": "web",
                         "event_time": T, "k": k})  # fmt: skip


class _Counting:
    """The served model, counting its calls and the rows of each."""

    def __init__(self, model: object) -> None:
        self.model, self.calls = model, []

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        self.calls.append(len(features))
        return self.model.score(features, prices)


def test_every_candidate_of_every_slate_is_priced_in_one_model_call_and_ranked_by_expected_profit(tmp_path: Path) -> None:
    scoring, registry = stage_for(tmp_path)
    publish(registry, tmp_path, "m", intercept=0.0, slope=2.0)
    settle(scoring)
    scoring.decide(pd.DataFrame(columns=["request_id", "product_id", "event_time", *FEATURE_SPEC.names]))  # swap the model in
    counting = _Counting(scoring._policy.model)
    scoring._policy = scoring._policy.with_model(counting, scoring._policy.model_version)
    stage = RecommendStage(RecommendConfig(scoring=scoring.config), scoring=scoring)
    out = stage.recommend(_requests(2, k=2), [_slate(["a", "b", "c"]), _slate(["c", "a"])], answered_time_ms=T + 5)
    assert counting.calls == [5], "one model call for the five candidates of both slates"
    for rec in out:
        profits = [i["expected_profit_minor"] for i in rec["items"]]
        assert len(rec["items"]) == 2 and profits == sorted(profits, reverse=True) and not rec["fallback_used"]
        for item in rec["items"]:
            p = item["product_id"]
            assert 0.7 * LIST[p] <= item["price_minor"] <= 1.5 * LIST[p] and item["price_minor"] >= COSTS[p] * 1.05
            assert abs(item["expected_profit_minor"] - item["expected_conversion"] * (item["price_minor"] - COSTS[p])) <= 1
        assert serde.decode(Contract.RECOMMENDATION, serde.encode(Contract.RECOMMENDATION, rec)).ok
    assert len(scoring.anchors) == 0, "a recommendation's prices are offers, not sales: no anchor recorded"
    scoring.close()


def test_without_a_model_the_fallback_ranks_by_candidate_evidence_at_the_reference_price(tmp_path: Path) -> None:
    scoring, _ = stage_for(tmp_path)
    stage = RecommendStage(RecommendConfig(scoring=scoring.config), scoring=scoring)
    [rec] = stage.recommend(_requests(1, k=3), [_slate(["a", "b", "c"])], answered_time_ms=T)
    assert rec["fallback_used"] and rec["model_version"] == FALLBACK_VERSION
    assert [i["product_id"] for i in rec["items"]] == ["c", "b", "a"]  # candidate scores 3, 2, 1
    assert [i["price_minor"] for i in rec["items"]] == [400, 1_000, 1_000]
    empty = stage.recommend(_requests(1), [_slate([])], answered_time_ms=T)
    assert empty[0]["items"] == [] and empty[0]["fallback_used"]
    scoring.close()


def test_a_slate_whose_features_do_not_match_its_candidates_is_refused() -> None:
    with pytest.raises(ValueError, match="feature values"):
        slate_frame(["a", "b"], ["EUR", "EUR"], [1.0, 2.0], ["", ""], np.zeros(len(FEATURE_SPEC.names)), spec=FEATURE_SPEC)


def test_the_candidate_stage_reads_the_catalogue_and_behaviour_and_skips_what_it_cannot_read() -> None:
    stage = CandidateStage(CandidateConfig(settings=CandidateSettings(), kafka=None, behaviour_topic="b", catalogue_topic="c"))
    stage.open()  # no topics to follow: fed by hand
    for p, cat in (("x", "k1"), ("y", "k1"), ("z", "k2")):
        stage.handle("c", serde.encode(Contract.CATALOGUE_ENTRY, {"product_id": p, "category": cat, "attributes": {},
                                                                   "active": p != "z", "event_time": 1}))  # fmt: skip
    for i, p in enumerate(("x", "y", "z")):
        stage.handle("b", serde.encode(Contract.BEHAVIOUR_EVENT, {
            "event_id": f"e{i}", "user_id": "u", "product_id": p, "type": "view", "price_seen_minor": 1, "currency": "EUR",
            "quantity": 1, "session_id": "s", "event_time": 1_000 + i, "request_id": None}))  # fmt: skip
    stage.handle("b", b"garbage")
    stage.handle("c", None)
    assert stage.skipped == 2
    requests = pd.DataFrame({"ok": [True, False, True], "user_id": ["", "", "v"], "event_time": [2_000] * 3,
                             "context_product_id": ["x", None, None], "context_category": [None, None, "k1"],
                             "candidate_product_ids": [[], [], []]})  # fmt: skip
    ctx, bad, cat = stage.candidates(requests)
    assert [c.product_id for c in ctx][0] == "y" and "z" not in [c.product_id for c in ctx]  # z left the catalogue
    assert bad == [] and {c.product_id for c in cat} == {"x", "y"}
