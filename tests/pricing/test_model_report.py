"""The evaluation report (``pricing.model_report``): tables, plots, and the elasticity check against the simulator.

A tiny scenario makes the truth known in closed form: no competitors, no elasticity noise,
one segment with sensitivity exactly 1, so the true sensitivity of category c is
``elasticity_c * -log_price_vs_reference``. A ``FakeDemandModel`` with that slope must
come out at ratio 1 for that category.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pricing.model_report import write_report
from pricing.sim.market import build_market
from pricing.sim.scenario import CatalogueSpec, Category, CompetitorSpec, Scenario, Segment, Span
from pricing.training import TrainingSet
from pricing_udfs.features.spec import FEATURE_SPEC
from pricing_udfs.model import FakeDemandModel

PNG = b"\x89PNG\r\n\x1a\n"
ELASTICITY = {"cheap": 0.8, "dear": 1.6}


def _scenario() -> Scenario:
    span = {"list_price_minor": Span(low=1_000, high=5_000), "cost_ratio": Span(low=0.5, high=0.7)}
    return Scenario(
        name="tiny", description="two categories with known elasticities", n_products=10, n_users=30,
        catalogue=CatalogueSpec(categories=tuple(Category(name=n, share=1.0, elasticity=e, **span)
                                                 for n, e in ELASTICITY.items()), elasticity_noise_sd=0.0),
        competitors=CompetitorSpec(count_min=0, count_max=0),
        segments=(Segment(name="all", share=1.0, sensitivity_mean=1.0, sensitivity_sd=0.0, sessions_per_day=1.0),),
    )  # fmt: skip


def _truth(scenario: Scenario, category: str) -> float:
    return ELASTICITY[category] * -scenario.demand.log_price_vs_reference


def _rows(scenario: Scenario, n: int = 600) -> tuple[TrainingSet, np.ndarray, np.ndarray]:
    market = build_market(scenario)
    rng = np.random.default_rng(3)
    prod = rng.integers(0, market.n_products, n)
    user = rng.integers(0, market.n_users, n)
    feats = np.tile(FEATURE_SPEC.defaults, (n, 1)).astype(np.float64)
    ref = market.list_price_minor[prod].astype(np.float64)
    feats[:, FEATURE_SPEC.index("list_price_minor")] = ref
    feats[:, FEATURE_SPEC.index("views_1h")] = rng.poisson(5, n)
    prices = np.rint(ref * rng.uniform(0.7, 1.5, n))
    p_true = 1 / (1 + np.exp(-(-1.0 - 2.0 * np.log(prices / ref))))
    labels = (rng.random(n) < p_true).astype(np.float32)
    data = TrainingSet(feats, prices, labels, np.arange(n, dtype=np.int64), FEATURE_SPEC.version)
    return data, market.product_ids[prod], market.user_ids[user]


class _ScoreOnly:
    """A model without ``price_slope``: the report must fall back to finite differences."""

    def __init__(self, inner: FakeDemandModel) -> None:
        self.inner = inner

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        return self.inner.score(features, prices)


def _ratios(out: Path) -> dict[str, float]:
    summary = json.loads((out / "report.json").read_text())
    return {c["category"]: c["ratio"] for c in summary["elasticity"]["categories"]}


def test_report_has_the_tables_and_non_empty_pngs(tmp_path: Path) -> None:
    # Mutation: skip _plot_calibration (or write the baseline row without the RMSE) -> this fails.
    scenario = _scenario()
    data, products, users = _rows(scenario)
    path = write_report(FakeDemandModel(intercept=-1.0, slope=2.0), data, tmp_path / "r", scenario=scenario,
                        product_ids=products, user_ids=users)  # fmt: skip
    text = path.read_text()
    for heading in ("| model | log-loss | AUC | price RMSE |", "| predicted | rows | mean predicted | observed |",
                    "| category | rows | model | truth | model / truth |", "the seed's approach"):  # fmt: skip
        assert heading in text, heading
    assert "| demand model |" in text and "| base rate (" in text
    assert "cannot say what happens at a price nobody tried" in text
    for png in ("calibration.png", "demand_curves.png"):
        blob = (tmp_path / "r" / png).read_bytes()
        assert blob.startswith(PNG) and len(blob) > 1_000, png
    summary = json.loads((tmp_path / "r" / "report.json").read_text())
    # The fake is the data's true model: it beats the base rate, and the price regression nearly recovers prices.
    assert summary["log_loss"] < summary["base_rate_log_loss"] and summary["auc"] > 0.6
    assert 0 < summary["baseline"]["rmse"] < summary["baseline"]["price_sd"]
    assert len(summary["demand_curves"]) == 3


@pytest.mark.parametrize("wrap", [False, True], ids=["price_slope", "finite_differences"])
def test_elasticity_ratio_is_one_for_the_true_slope_and_two_when_doubled(tmp_path: Path, wrap: bool) -> None:
    # Mutation: take the truth's categories from the wrong index (e.g. product_category[u_idx]) or flip the
    # finite difference's sign -> the ratios move off 1.0 / 0.5 / 2.0 and this fails.
    scenario = _scenario()
    data, products, users = _rows(scenario)
    truth = _truth(scenario, "cheap")

    def ratios(slope: float, name: str) -> dict[str, float]:
        model: Any = FakeDemandModel(intercept=-1.0, slope=slope)
        write_report(_ScoreOnly(model) if wrap else model, data, tmp_path / name, scenario=scenario,
                     product_ids=products, user_ids=users)  # fmt: skip
        return _ratios(tmp_path / name)

    right = ratios(truth, "right")
    assert right["cheap"] == pytest.approx(1.0, abs=0.01)
    assert right["dear"] == pytest.approx(ELASTICITY["cheap"] / ELASTICITY["dear"], abs=0.01)
    doubled = ratios(2 * truth, "doubled")
    assert doubled["cheap"] == pytest.approx(2.0, abs=0.02)
    text = (tmp_path / "doubled" / "report.md").read_text()
    assert "within a factor of 2.00" in text


def test_without_a_scenario_there_is_no_simulator_section(tmp_path: Path) -> None:
    # Mutation: always build the simulator section -> demand_curves.png appears and this fails.
    data, _, _ = _rows(_scenario())
    text = write_report(FakeDemandModel(), data, tmp_path / "r").read_text()
    assert "simulator's truth" not in text and not (tmp_path / "r" / "demand_curves.png").exists()
    assert "| demand model |" in text


def test_the_sensitivity_per_user_segment_shows_a_model_that_ignores_who_shops(tmp_path: Path) -> None:
    # Mutation: group the segment table by the product's category instead of the user's segment (or average the
    # truth over all rows) -> the ratios 1.0 / 0.5 move and this fails.
    two = _scenario().with_overrides(
        catalogue=CatalogueSpec(categories=(Category(name="cheap", share=1.0, elasticity=1.0,
                                                     list_price_minor=Span(low=1_000, high=5_000),
                                                     cost_ratio=Span(low=0.5, high=0.7)),), elasticity_noise_sd=0.0),
        segments=(Segment(name="calm", share=0.5, sensitivity_mean=1.0, sensitivity_sd=0.0, sessions_per_day=1.0),
                  Segment(name="keen", share=0.5, sensitivity_mean=2.0, sensitivity_sd=0.0, sessions_per_day=1.0)),
    )  # fmt: skip
    data, products, users = _rows(two)
    calm = -two.demand.log_price_vs_reference  # the calm segment's true sensitivity; the keen one's is twice that
    write_report(FakeDemandModel(intercept=-1.0, slope=calm), data, tmp_path / "r", scenario=two, product_ids=products,
                 user_ids=users)  # fmt: skip
    summary = json.loads((tmp_path / "r" / "report.json").read_text())["elasticity"]
    ratio = {s["segment"]: s["ratio"] for s in summary["segments"]}
    assert ratio["calm"] == pytest.approx(1.0, abs=0.01) and ratio["keen"] == pytest.approx(0.5, abs=0.01)
    assert summary["spread_ratio"] == pytest.approx(0.0, abs=1e-6)  # one slope for everyone
    assert "| keen |" in (tmp_path / "r" / "report.md").read_text()
