"""Latent shopper tastes: opt-in, deterministic per seed, zero mean over shoppers, and predictive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricing.sim.history import generate_history
from pricing.sim.market import build_market
from pricing.sim.scenario import SCENARIOS, Scenario, TasteSpec
from pricing.sim.world import DAY_MS

TASTES = TasteSpec().model_dump()


@pytest.fixture(scope="module")
def small(small_default: Scenario) -> Scenario:
    return small_default.with_overrides(n_users=1_500, n_products=120)


def test_tastes_are_off_in_the_pricing_scenarios() -> None:
    assert all(s.tastes is None for s in SCENARIOS.values())


def test_tastes_are_deterministic_per_seed_and_shift_no_other_draw(small: Scenario) -> None:
    a = build_market(small.with_overrides(tastes=TASTES))
    b = build_market(small.with_overrides(tastes=TASTES))
    other = build_market(small.with_overrides(tastes=TASTES, seed=small.seed + 1))
    plain = build_market(small)
    assert a.tastes is not None and plain.tastes is None
    np.testing.assert_array_equal(a.tastes.category_affinity, b.tastes.category_affinity)
    np.testing.assert_array_equal(a.tastes.product_factors, b.tastes.product_factors)
    assert not np.allclose(a.tastes.user_factors, other.tastes.user_factors)
    for name in ("list_price_minor", "unit_cost_minor", "appeal", "user_sensitivity", "user_segment"):
        np.testing.assert_array_equal(getattr(a, name), getattr(plain, name))


def test_taste_has_zero_mean_over_shoppers_for_every_product(small: Scenario) -> None:
    m = build_market(small.with_overrides(tastes=TASTES))
    t = m.tastes.affinity(np.arange(m.n_users)[:, None], np.arange(m.n_products)[None, :])
    assert np.abs(t.mean(axis=0)).max() < 1e-9
    assert t.std() > 0.5  # and it does vary between shoppers


def test_taste_moves_the_purchase_probability(small: Scenario) -> None:
    m = build_market(small.with_overrides(tastes=TASTES))
    plain = build_market(small)
    u, j = np.arange(50), np.arange(50)
    args = dict(user_idx=u, product_idx=j, offered_price=1000, reference_price=1000, competitor_min=0,
                promotion_active=0, inventory=1)  # fmt: skip
    liked = m.tastes.affinity(u, j) > 0
    assert np.all((m.probability(**args) > plain.probability(**args)) == liked)


def _category_gap(scenario: Scenario) -> float:
    """Day-2 mean true purchase probability of views in the shopper's most viewed day-1 category, minus
    that of views in their other categories."""
    h = generate_history(scenario, days=2)
    imp = h.impressions
    day1 = imp[imp["event_time"] < h.start_ms + DAY_MS]
    day2 = imp[imp["event_time"] >= h.start_ms + DAY_MS]
    top = day1.groupby(["user_index", "category"]).size().reset_index(name="n").sort_values(
        ["user_index", "n"], ascending=[True, False]).drop_duplicates("user_index").set_index("user_index")["category"]  # fmt: skip
    seen = day2[day2["user_index"].isin(top.index)]
    same = seen["category"].to_numpy() == top.reindex(seen["user_index"]).to_numpy()
    ratio = seen["price_minor"] / seen["reference_price_minor"]
    assert ratio.between(0.5, 2).all()  # the same historical policy either way
    p = pd.Series(seen["true_probability"].to_numpy())
    return float(p[same].mean() - p[~same].mean())


def test_personal_history_predicts_purchases_with_tastes_and_not_without(small: Scenario) -> None:
    with_tastes = _category_gap(small.with_overrides(tastes=TASTES))
    without = _category_gap(small)
    assert with_tastes > 0.02  # a shopper buys more in the category they viewed most the day before
    assert with_tastes > without + 0.015
