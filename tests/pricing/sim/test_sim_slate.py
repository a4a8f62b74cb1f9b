"""The slate model: position bias, at most one purchase, purchases at the shown prices' probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pricing.sim.slate import NO_PURCHASE, PositionBias, purchase_probabilities, simulate


def test_position_bias_is_dcg_discount_or_a_geometric_cascade() -> None:
    e = PositionBias().examination(4)
    assert e == pytest.approx([1.0, 1 / np.log2(3), 0.5, 1 / np.log2(5)])
    g = PositionBias(kind="geometric", decay=0.5).examination(3)
    assert g == pytest.approx([1.0, 0.5, 0.25])
    assert PositionBias().examination(0).size == 0


def test_the_same_item_lower_in_the_slate_sells_less() -> None:
    e = PositionBias().examination(3)
    top = purchase_probabilities([[0.3, 0.0, 0.0]], e)[0]
    bottom = purchase_probabilities([[0.0, 0.0, 0.3]], e)[0]
    assert top[0] == pytest.approx(0.3)
    assert bottom[2] == pytest.approx(0.3 * e[2]) and bottom[2] < top[0]


def test_a_dearer_item_above_leaves_more_sales_to_the_items_below() -> None:
    e = PositionBias().examination(2)
    cheap = purchase_probabilities([[0.4, 0.2]], e)[0]
    dear = purchase_probabilities([[0.1, 0.2]], e)[0]  # the same item at a higher price: lower probability
    assert dear[0] < cheap[0] and dear[1] > cheap[1]
    assert cheap[1] == pytest.approx(e[1] * 0.2 * (1 - 0.4))


@settings(max_examples=60, deadline=None)
@given(p=arrays(np.float64, (5, 6), elements=st.floats(0, 1)), kind=st.sampled_from(["log", "geometric"]))
def test_at_most_one_purchase_per_slate(p: np.ndarray, kind: str) -> None:
    buy = purchase_probabilities(p, PositionBias(kind=kind).examination(6))
    assert np.all(buy >= 0) and np.all(buy.sum(axis=1) <= 1 + 1e-12)


def test_simulated_purchases_follow_the_probabilities_at_the_shown_prices() -> None:
    rng = np.random.default_rng(3)
    n = 200_000
    p = np.tile([0.3, 0.5, 0.2], (n, 1))
    e = PositionBias(kind="geometric", decay=0.6).examination(3)
    bought = simulate(p, e, rng.random((n, 3)), rng.random((n, 3)))
    assert set(np.unique(bought)) <= {NO_PURCHASE, 0, 1, 2}  # one position or none per request
    freq = np.array([(bought == i).mean() for i in range(3)])
    assert freq == pytest.approx(purchase_probabilities(p[:1], e)[0], abs=0.005)


def test_with_the_same_draws_a_higher_probability_never_loses_the_sale() -> None:
    rng = np.random.default_rng(4)
    ue, ub = rng.random((1000, 1)), rng.random((1000, 1))
    e = PositionBias().examination(1)
    low = simulate(np.full((1000, 1), 0.2), e, ue, ub) == 0
    high = simulate(np.full((1000, 1), 0.5), e, ue, ub) == 0
    assert np.all(high[low]) and high.sum() > low.sum()


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError):
        purchase_probabilities([[0.1, 0.2]], [1.0])
    with pytest.raises(ValueError):
        purchase_probabilities([[1.5]], [1.0])
