import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_udfs.policy import Guardrails
from pricing_udfs.policy.guardrails import CEILING, FLOOR_MAP, FLOOR_MARGIN, MAX_CHANGE, PERSONAL_DEVIATION


def test_each_limit_names_itself_and_the_cost_floor_wins() -> None:
    g = Guardrails(min_multiplier=0.7, max_multiplier=1.5, min_margin=0.1, max_change=0.1, max_personal_deviation=0.2)
    b = g.limits(reference_price=[1000, 1000, 1000, 1000], unit_cost=[100, 900, 2000, 100], anchor_price=[0, 0, 0, 1050])
    # row 0: MAP floor 700 vs deviation 800 -> deviation; ceiling 1500 vs deviation 1200 -> deviation
    assert (b.lo[0], b.lo_reason[0], b.hi[0], b.hi_reason[0]) == (800, PERSONAL_DEVIATION, 1200, PERSONAL_DEVIATION)
    # row 1: cost floor 990 binds the low end
    assert (b.lo[1], b.lo_reason[1]) == (990, FLOOR_MARGIN)
    # row 2: cost floor 2200 above the ceiling: the floor wins, the range is that one price
    assert (b.lo[2], b.hi[2], b.lo_reason[2]) == (2200, 2200, FLOOR_MARGIN)
    # row 3: anchor 1050 +/- 10%: [945, 1155]
    assert (b.lo[3], b.lo_reason[3], b.hi[3], b.hi_reason[3]) == (945, MAX_CHANGE, 1155, MAX_CHANGE)
    plain = Guardrails(max_change=None).limits(reference_price=[1000], unit_cost=[0])
    assert (plain.lo[0], plain.lo_reason[0], plain.hi[0], plain.hi_reason[0]) == (700, FLOOR_MAP, 1500, CEILING)


def test_price_points_are_the_nearest_inside_the_range_or_none() -> None:
    g = Guardrails(price_ending=99)
    prices, fits = g.to_price_points(np.array([1234, 1260, 1010, 1050]), np.array([1000, 1000, 1000, 1001]),
                                     np.array([2000, 2000, 1098, 1098]))  # fmt: skip
    assert prices.tolist() == [1199, 1299, 1010, 1050]  # no .99 price in [1000, 1098]: the price stays
    assert fits.tolist() == [True, True, False, False]


def test_an_unknown_reference_leaves_the_cost_floor_and_a_positive_price() -> None:
    b = Guardrails().limits(reference_price=[np.nan], unit_cost=[np.nan])
    assert b.lo[0] == 1 and b.hi[0] >= b.lo[0]


guardrail_settings = st.builds(
    Guardrails,
    min_multiplier=st.floats(0.1, 1.0),
    max_multiplier=st.floats(1.0, 3.0),
    min_margin=st.floats(0.0, 1.0),
    max_change=st.one_of(st.none(), st.floats(0.01, 1.0)),
    max_personal_deviation=st.one_of(st.none(), st.floats(0.01, 0.9)),
    price_ending=st.one_of(st.none(), st.integers(0, 99)),
)


@settings(max_examples=200, deadline=None)
@given(g=guardrail_settings, seed=st.integers(0, 2**32 - 1))
def test_clamp_lands_inside_every_limit_and_is_idempotent(g: Guardrails, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 50
    ref = rng.integers(1, 100_000, n)
    cost = rng.integers(0, 150_000, n)
    anchor = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 200_000, n))
    wanted = rng.normal(1.0, 2.0, n) * ref
    kw = dict(reference_price=ref, unit_cost=cost, anchor_price=anchor)
    price = g.clamp(wanted, **kw)
    lo, hi = g.bounds(**kw)
    assert np.all((price >= lo) & (price <= hi) & (price > 0))
    assert np.all(lo >= np.ceil(cost * (1 + g.min_margin) - 1e-6))  # the cost floor always holds
    assert not g.violations(price, **kw).any()
    assert np.array_equal(g.clamp(price, **kw), price)
    if g.price_ending is not None:
        _, fits = g.to_price_points(lo, lo, hi)
        assert np.all(~fits | (price % 100 == g.price_ending))


def test_violations_flag_bad_prices() -> None:
    g = Guardrails(price_ending=99)
    kw = dict(reference_price=[1000] * 4, unit_cost=[500] * 4)
    assert g.violations([999, 1000, 2000, -5], **kw).tolist() == [False, True, True, True]


@pytest.mark.parametrize("bad", [dict(min_multiplier=2.0, max_multiplier=1.0), dict(max_personal_deviation=1.5)])
def test_inconsistent_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Guardrails(**bad)
