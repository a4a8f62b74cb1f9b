from __future__ import annotations

import numpy as np
import pytest

from pricing.sim.market import (
    Guardrails,
    TrueCoefficients,
    build_market,
    oracle_prices,
    purchase_probability,
)
from pricing.sim.scenario import Scenario

COEF = TrueCoefficients(intercept=-2.0, log_price_vs_reference=-2.5, log_price_vs_competitor=-1.5, promotion=0.4)


def _prob(price, **kw):  # noqa: ANN001, ANN202 - test helper
    args = dict(reference_price=1000, competitor_min=1000, sensitivity=1.0, promotion_active=False, inventory=5,
                coefficients=COEF)  # fmt: skip
    args.update(kw)
    return purchase_probability(offered_price=price, **args)


def test_probability_at_reference_is_the_intercept_logit() -> None:
    assert _prob(1000) == pytest.approx(1 / (1 + np.exp(2.0)))


def test_probability_decreases_in_price_for_every_row() -> None:
    rng = np.random.default_rng(0)
    n = 500
    prices = np.linspace(500, 2000, 40)
    p = purchase_probability(
        offered_price=prices[None, :],
        reference_price=rng.uniform(500, 2000, (n, 1)),
        competitor_min=np.where(rng.random((n, 1)) < 0.2, 0, rng.uniform(500, 2000, (n, 1))),
        sensitivity=rng.uniform(0.2, 3.0, (n, 1)),
        promotion_active=rng.random((n, 1)) < 0.3,
        inventory=np.ones((n, 1)),
        coefficients=COEF,
        base_utility=rng.normal(0, 1, (n, 1)),
    )
    assert p.shape == (n, 40)
    assert np.all(np.diff(p, axis=1) < 0)
    assert np.all((p > 0) & (p < 1))


def test_zero_inventory_means_zero_probability() -> None:
    p = _prob(np.array([800, 1000, 1200]), inventory=np.array([0, 3, 0]))
    assert p[0] == 0.0 and p[2] == 0.0
    assert p[1] > 0


def test_shapes_broadcast_like_numpy() -> None:
    assert _prob(1000).shape == ()
    assert _prob(np.full(7, 1000)).shape == (7,)
    assert _prob(np.full((3, 1), 900), reference_price=np.full(4, 1000)).shape == (3, 4)


def test_competitor_promotion_and_sensitivity_move_probability_the_right_way() -> None:
    base = _prob(1000)
    assert _prob(1000, competitor_min=800) < base  # we are dearer than a competitor
    assert _prob(1000, competitor_min=0) > _prob(1000, competitor_min=800)  # no competitor: term drops out
    assert _prob(1000, promotion_active=True) > base
    assert _prob(1200, sensitivity=2.0) < _prob(1200, sensitivity=0.5)


def test_invalid_prices_raise() -> None:
    with pytest.raises(ValueError, match="offered_price"):
        _prob(np.array([100, 0]))
    with pytest.raises(ValueError, match="reference_price"):
        _prob(100, reference_price=0)


def test_market_state_is_deterministic_and_exposes_truth(small_default: Scenario) -> None:
    a, b = build_market(small_default), build_market(small_default)
    assert np.array_equal(a.list_price_minor, b.list_price_minor)
    assert np.array_equal(a.user_sensitivity, b.user_sensitivity)
    other = build_market(small_default.with_overrides(seed=8))
    assert not np.array_equal(a.list_price_minor, other.list_price_minor)
    assert a.coefficients.log_price_vs_reference == small_default.demand.log_price_vs_reference
    assert np.all(a.unit_cost_minor < a.list_price_minor)
    assert a.product_ids.size == small_default.n_products and a.user_ids.size == small_default.n_users
    # segments really differ in latent sensitivity
    means = [a.user_sensitivity[a.user_segment == s].mean() for s in range(len(a.segment_names))]
    assert means[0] > means[1] > means[2]


def test_guardrails_clamp_and_detect_violations() -> None:
    g = Guardrails(min_multiplier=0.8, max_multiplier=1.2, min_margin=0.1, max_change=0.1)
    ref = np.array([1000, 1000, 1000, 1000])
    cost = np.array([500, 500, 1000, 500])
    anchor = np.array([0, 0, 0, 1000])
    price = np.array([500, 1500, 1000, 1150])
    clamped = g.clamp(price, reference_price=ref, unit_cost=cost, anchor_price=anchor)
    assert clamped.tolist() == [800, 1200, 1100, 1100]  # band, band, cost floor wins, max change from anchor
    assert g.violations(price, reference_price=ref, unit_cost=cost, anchor_price=anchor).tolist() == [True] * 4
    assert not g.violations(clamped, reference_price=ref, unit_cost=cost, anchor_price=anchor).any()


def test_oracle_beats_every_allowed_price_in_expected_profit() -> None:
    rng = np.random.default_rng(1)
    n = 300
    ref = rng.integers(500, 5000, n)
    cost = np.rint(ref * rng.uniform(0.3, 0.85, n)).astype(int)
    comp = np.where(rng.random(n) < 0.2, 0, np.rint(ref * rng.uniform(0.8, 1.2, n)))
    sens = rng.uniform(0.3, 2.5, n)
    promo = rng.random(n) < 0.2
    inv = np.where(rng.random(n) < 0.1, 0, 10)
    anchor = np.where(rng.random(n) < 0.5, 0, np.rint(ref * rng.uniform(0.8, 1.3, n)))
    g = Guardrails()
    kw = dict(competitor_min=comp, sensitivity=sens, promotion_active=promo, coefficients=COEF)
    best = oracle_prices(reference_price=ref, unit_cost=cost, inventory=inv, guardrails=g, anchor_price=anchor, **kw)
    assert best.shape == (n,) and best.dtype == np.int64
    assert not g.violations(best, reference_price=ref, unit_cost=cost, anchor_price=anchor).any()

    def profit(p: np.ndarray) -> np.ndarray:
        return purchase_probability(offered_price=p, reference_price=ref, inventory=1, **kw) * (p - cost)

    lo, hi = g.bounds(reference_price=ref, unit_cost=cost, anchor_price=anchor)
    in_stock = inv > 0
    for frac in np.linspace(0, 1, 101):  # a finer grid than the oracle's, inside the allowed range
        other = np.rint(lo + frac * (hi - lo))
        assert np.all(profit(best)[in_stock] >= profit(other)[in_stock] * 0.999 - 1e-9)
    # and it really personalises: more sensitive shoppers get lower prices, all else equal
    one = dict(reference_price=np.full(2, 1000), unit_cost=np.full(2, 500), competitor_min=np.zeros(2),
               promotion_active=np.zeros(2), inventory=np.ones(2), coefficients=COEF, guardrails=g)  # fmt: skip
    low_s, high_s = oracle_prices(sensitivity=np.array([0.5, 2.0]), **one)
    assert low_s > high_s
