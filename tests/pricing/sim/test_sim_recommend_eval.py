"""``pricing evaluate --recommend``: the rows, the metrics, the oracle's ceiling, the candidate features,
with a fake demand model in the job's own scoring stage (TF is not the point here)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing.sim.cli import register
from pricing.sim.engine import offline_stage
from pricing.sim.recommend_eval import (
    MODEL_LIST_PRICE,
    MODEL_PRICE_AWARE,
    ORACLE,
    ROWS,
    CandidateFeatures,
    RecommendEvaluation,
    RecommendSetup,
    evaluate_recommendations,
    fairness_share,
    model_rankers,
    paired_bootstrap,
    recommend_world,
)
from pricing.sim.scenario import Scenario
from pricing.sim.world import CHANNELS
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.serving import ServedModel
from pricing_udfs.policy import Guardrails, PolicySettings

DAYS = 2
LIST = FEATURE_SPEC.index("list_price_minor")


class FakeDemand:
    """A logit in log(price / list): enough to make the policy price and the ranking rank."""

    feature_spec_version = FEATURE_SPEC.version

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        u = -2.3 - 2.5 * np.log(prices / np.maximum(features[:, LIST : LIST + 1], 1.0))
        return 1.0 / (1.0 + np.exp(-u))


@pytest.fixture(scope="module")
def scenario(small_default: Scenario) -> Scenario:
    return small_default.with_overrides(n_users=1_200, n_products=100)


def _evaluate(scenario: Scenario, setup: RecommendSetup, policy: PolicySettings) -> RecommendEvaluation:
    rec = recommend_world(scenario, days=DAYS, setup=setup)
    served = ServedModel("fake", FakeDemand(), 0, None)
    rankers = model_rankers(lambda p: offline_stage(served, p, default_price_minor=1_999, currency="EUR"),
                            CandidateFeatures(rec.world, None), policy)  # fmt: skip
    return evaluate_recommendations(scenario, days=DAYS, guardrails=policy.guardrails, rankers=rankers, setup=setup, rec=rec)


@pytest.fixture(scope="module")
def evaluation(scenario: Scenario) -> RecommendEvaluation:
    return _evaluate(scenario, RecommendSetup(requests=150, bootstrap=300), PolicySettings())


def test_rows_and_columns_are_named_as_the_issue_asks(evaluation: RecommendEvaluation) -> None:
    table = evaluation.table()
    assert list(table["policy"]) == list(ROWS)
    for column in ("policy", "profit_per_request", "revenue_per_request", "conversion", "ndcg_at_k", "coverage",
                   "fairness_cap_used"):  # fmt: skip
        assert column in table.columns
    assert (table["requests"] == 150).all()
    assert "model-price-aware / category-popularity" in evaluation.markdown()
    assert evaluation.price_aware_vs_list is not None


def test_the_oracle_scores_ndcg_one_against_itself_and_others_less(evaluation: RecommendEvaluation) -> None:
    assert evaluation.row(ORACLE).ndcg_at_k == pytest.approx(1.0)
    assert evaluation.row("random").ndcg_at_k < 0.9


def test_list_price_rows_use_none_of_the_fairness_cap(evaluation: RecommendEvaluation) -> None:
    for name in ("random", "popularity", "category-popularity", "item-to-item", MODEL_LIST_PRICE):
        row = evaluation.row(name)
        assert row.fairness_cap_used == 0.0 and row.price_index == pytest.approx(1.0), name
    assert 0 < evaluation.row(MODEL_PRICE_AWARE).fairness_cap_used <= 1
    assert 0 < evaluation.row("random").coverage <= 1
    assert evaluation.row("popularity").coverage < evaluation.row("random").coverage


def test_the_oracle_is_the_ceiling_of_expected_profit_with_one_slot(scenario: Scenario) -> None:
    # k = 1: the oracle shows the product of the highest true expected profit at its best price (a fine grid),
    # so no ranker can beat it but by the grid's resolution.
    ev = _evaluate(scenario, RecommendSetup(k=1, requests=100, bootstrap=50, oracle_grid=161), PolicySettings())
    ceiling = ev.row(ORACLE).expected_profit
    for row in ev.rows:
        assert np.all(row.expected_profit <= ceiling * 1.002 + 1e-9), row.policy
        assert row.expected_profit_per_request <= ev.row(ORACLE).expected_profit_per_request * 1.0005
    assert ev.row("random").expected_profit_per_request < 0.8 * ev.row(ORACLE).expected_profit_per_request


def test_the_world_and_its_draws_are_deterministic(scenario: Scenario) -> None:
    setup = RecommendSetup(requests=40)
    a, b = recommend_world(scenario, days=DAYS, setup=setup), recommend_world(scenario, days=DAYS, setup=setup)
    np.testing.assert_array_equal(a.requests.view, b.requests.view)
    np.testing.assert_array_equal(a.u_buy, b.u_buy)
    assert a.market.tastes is not None  # recommendation evaluation turns tastes on
    assert np.all(np.diff(a.requests.time_ms) >= 0)


def test_candidate_features_take_the_user_from_the_request_and_the_product_from_its_last_request(scenario: Scenario) -> None:
    rec = recommend_world(scenario, days=DAYS, setup=RecommendSetup(requests=20))
    v = rec.world.views
    n, f = len(v), len(FEATURE_SPEC.names)
    feats = np.tile(np.arange(n, dtype=np.float64)[:, None], (1, f))  # every value: its view's index
    cf = CandidateFeatures(rec.world, feats)
    q = rec.requests
    product = (q.context + 1) % rec.market.n_products
    x = cf.vectors(q.view, product, q.step)
    t = v.time_ms - v.request_lead_ms
    user_col = FEATURE_SPEC.index("user_views_24h")
    prod_col = FEATURE_SPEC.index("views_1h")
    for r in range(len(q)):
        assert x[r, user_col] == q.view[r]
        earlier = np.flatnonzero((v.product == product[r]) & (t < t[q.view[r]]))
        want = earlier[np.argmax(t[earlier])] if earlier.size else FEATURE_SPEC.defaults[prod_col]
        assert x[r, prod_col] == want
        assert x[r, LIST] == rec.world.list_price[q.step[r], product[r]]


def test_candidate_features_count_the_users_own_history_with_each_candidate(scenario: Scenario) -> None:
    """features/3's user_product group: the user's views, carts and purchases of the candidate (not of the product
    being viewed) in the 24 h up to the request, counted naively here; without behaviour, the defaults."""
    rec = recommend_world(scenario, days=DAYS, setup=RecommendSetup(requests=60))
    v, q, m = rec.world.views, rec.requests, rec.market
    b = rec.history.behaviour
    # each request's candidates: the products the user has behaviour with (so that many counts are non-zero)
    view, product = [], []
    for r in range(len(q)):
        mine = b[b["user_id"] == m.user_ids[q.user[r]]]["product_id"].unique()
        for p in mine[:5]:
            view.append(q.view[r])
            product.append(int(np.flatnonzero(m.product_ids == p)[0]))
    view, product = np.asarray(view), np.asarray(product)
    step = v.state_step[view]
    x = CandidateFeatures(rec.world, None, behaviour=b).vectors(view, product, step)
    t = (v.time_ms - v.request_lead_ms)[view]
    names = {"user_product_views_24h": "view", "user_product_carts_24h": "add_to_cart",
             "user_product_purchases_24h": "purchase"}
    for name, kind in names.items():
        col = FEATURE_SPEC.index(name)
        want = [int(((b["user_id"] == m.user_ids[v.user[i]]) & (b["product_id"] == m.product_ids[p]) & (b["type"] == kind)
                     & (b["event_time"] >= ti - 86_400_000) & (b["event_time"] <= ti)).sum())
                for i, p, ti in zip(view, product, t)]  # fmt: skip
        np.testing.assert_array_equal(x[:, col], want, err_msg=name)
    assert (x[:, FEATURE_SPEC.index("user_product_views_24h")] > 0).any()
    # features/4: the user's history with the candidate's category (the world's categories), counted naively
    category = dict(zip(m.product_ids, np.asarray(m.category_names, dtype=object)[m.product_category]))
    b_category = b["product_id"].map(category)
    names = {"user_category_views_24h": "view", "user_category_carts_24h": "add_to_cart",
             "user_category_purchases_24h": "purchase"}
    for name, kind in names.items():
        col = FEATURE_SPEC.index(name)
        want = [int(((b["user_id"] == m.user_ids[v.user[i]]) & (b_category == category[m.product_ids[p]])
                     & (b["type"] == kind) & (b["event_time"] >= ti - 86_400_000) & (b["event_time"] <= ti)).sum())
                for i, p, ti in zip(view, product, t)]  # fmt: skip
        np.testing.assert_array_equal(x[:, col], want, err_msg=name)
    cat, own = x[:, FEATURE_SPEC.index("user_category_views_24h")], x[:, FEATURE_SPEC.index("user_product_views_24h")]
    assert (cat > own).any()  # other products of the category count
    plain = CandidateFeatures(rec.world, None).vectors(view, product, step)
    assert (plain[:, FEATURE_SPEC.index("user_product_views_24h")] == 0).all()
    assert (plain[:, FEATURE_SPEC.index("user_category_views_24h")] == 0).all()


def test_no_ranker_recommends_the_product_being_viewed_or_one_twice(scenario: Scenario, evaluation: RecommendEvaluation) -> None:
    rec = recommend_world(scenario, days=DAYS, setup=RecommendSetup(requests=150, bootstrap=300))  # the same requests
    for row in evaluation.rows:
        assert not np.any(row.shown == rec.requests.context[:, None]), row.policy
        for slate in row.shown:
            items = slate[slate >= 0]
            assert items.size == np.unique(items).size, row.policy
    assert (evaluation.row("item-to-item").shown >= 0).sum() > 0.9 * evaluation.row("item-to-item").shown.size


def test_paired_bootstrap_and_fairness_share() -> None:
    rng = np.random.default_rng(0)
    iv = paired_bootstrap(np.full(50, 3.0), resamples=100, rng=rng)
    assert (iv.mean, iv.low, iv.high, iv.excludes_zero) == (3.0, 3.0, 3.0, True)
    noisy = paired_bootstrap(rng.normal(0, 1, 400), resamples=500, rng=rng)
    assert noisy.low < noisy.mean < noisy.high and not noisy.excludes_zero
    band = Guardrails(min_multiplier=0.8, max_multiplier=1.5)
    assert fairness_share(np.array([100, 150, 80, 125]), np.full(4, 100), band) == pytest.approx([0, 1, 1, 0.5])
    capped = Guardrails(max_personal_deviation=0.1)
    assert fairness_share(np.array([105, 90]), np.full(2, 100), capped) == pytest.approx([0.5, 1.0])


def test_the_model_rows_are_the_job_recommend_stage_answers(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    # The evaluator's model-price-aware slates are RecommendStage's for the same inputs: the job's stage fed the
    # slates as the job gathers them (slate_frame of CollectSlate's arrays), around a scoring stage of its own.
    from pricing_udfs.recommend import stage as recommend_stage
    from pricing_udfs.recommend.stage import REASON_SEPARATOR, RecommendConfig, RecommendStage, slate_frame
    from pricing.sim.recommend_eval import index_answers

    calls = []
    real = recommend_stage.RecommendStage.recommend

    def spy(self, requests, slates, *, answered_time_ms):  # noqa: ANN001
        calls.append(len(slates))
        return real(self, requests, slates, answered_time_ms=answered_time_ms)

    monkeypatch.setattr(recommend_stage.RecommendStage, "recommend", spy)
    setup = RecommendSetup(requests=60, bootstrap=50, batch_requests=25)
    ev = _evaluate(scenario, setup, PolicySettings())
    assert calls and sum(calls) == 2 * 60  # both model rows, every request, through RecommendStage
    monkeypatch.setattr(recommend_stage.RecommendStage, "recommend", real)

    rec = recommend_world(scenario, days=DAYS, setup=setup)
    m, q = rec.market, rec.requests
    answers = index_answers(m, rec.history, q, settings=setup.candidates, k=setup.k)
    cf = CandidateFeatures(rec.world, None)
    served = ServedModel("fake", FakeDemand(), 0, None)
    scoring = offline_stage(served, PolicySettings(), default_price_minor=1_999, currency="EUR")
    job = RecommendStage(RecommendConfig(scoring=scoring.config, ranking=setup.ranking), scoring=scoring)
    ids = {str(p): j for j, p in enumerate(m.product_ids)}
    shown = ev.row(MODEL_PRICE_AWARE).shown
    for a in range(0, len(q), 25):
        rows = range(a, min(a + 25, len(q)))
        requests = pd.DataFrame({"request_id": [f"rec{m.scenario.seed}-{r}" for r in rows],
                                 "user_id": [str(m.user_ids[q.user[r]]) for r in rows],
                                 "channel": [CHANNELS[int(q.channel[r])] for r in rows],
                                 "event_time": [int(q.time_ms[r]) for r in rows], "k": setup.k})  # fmt: skip
        slates = []
        for r in rows:
            found = answers.candidates[r]
            prod = np.array([ids[c.product_id] for c in found], dtype=np.int64)
            x = cf.vectors(np.full(prod.size, q.view[r]), prod, np.full(prod.size, q.step[r]))
            slates.append(slate_frame([c.product_id for c in found], ["EUR"] * len(found), [c.score for c in found],
                                      [REASON_SEPARATOR.join(c.reasons) for c in found], x.ravel(), spec=FEATURE_SPEC))  # fmt: skip
        for r, answer in zip(rows, job.recommend(requests, slates, answered_time_ms=0), strict=True):
            want = [ids[i["product_id"]] for i in answer["items"]]
            assert list(shown[r][: len(want)]) == want and np.all(shown[r][len(want):] == -1), r
    scoring.close()


def test_evaluate_recommend_with_a_missing_model_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="pricing")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["evaluate", "--recommend", "--model", "latest", "--registry", str(tmp_path / "empty"),
                         "--users", "50", "--products", "5", "--days", "1", "--out", str(tmp_path / "out")])  # fmt: skip
    assert (args.recommend, args.k, args.requests, args.position_bias) == (True, 10, 2_000, "log")
    assert args.func(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "model" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        p.parse_args(["evaluate", "--recommend", "--k", "51"])
