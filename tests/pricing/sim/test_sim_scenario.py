from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pricing.sim.scenario import SCENARIOS, FunnelSpec, Span, UnknownScenarioError, get_scenario
from pricing_udfs.serde import Contract, enum_symbols


def test_registry_has_the_named_scenarios_with_descriptions() -> None:
    assert {"default", "price-war", "high-sensitivity"} <= set(SCENARIOS)
    for name, scenario in SCENARIOS.items():
        assert scenario.name == name
        assert len(scenario.description) > 40
    assert get_scenario("price-war").competitors.price_war_per_day > get_scenario("default").competitors.price_war_per_day
    hs = get_scenario("high-sensitivity")
    assert hs.demand.log_price_vs_reference < get_scenario("default").demand.log_price_vs_reference


def test_unknown_scenario_lists_the_known_names() -> None:
    with pytest.raises(UnknownScenarioError, match="default, price-war, high-sensitivity"):
        get_scenario("nope")


def test_scenarios_are_frozen_and_reject_unknown_fields() -> None:
    s = get_scenario("default")
    with pytest.raises(ValidationError):
        s.seed = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="n_userz"):
        s.with_overrides(n_userz=5)


def test_overrides_are_validated() -> None:
    s = get_scenario("default")
    assert s.with_overrides(seed=11).seed == 11
    assert s.seed == 7
    with pytest.raises(ValidationError):
        s.with_overrides(n_users=0)
    with pytest.raises(ValidationError, match="step_minutes"):
        s.with_overrides(step_minutes=7)
    with pytest.raises(ValidationError, match="unknown categories"):
        s.with_overrides(segments=[{**s.segments[0].model_dump(), "category_preference": {"cars": 2.0}}])


def test_span_accepts_pairs_and_checks_order() -> None:
    assert Span.model_validate([1, 2]) == Span(low=1, high=2)
    with pytest.raises(ValidationError):
        Span(low=2, high=1)


def test_funnel_channels_are_the_price_request_channels() -> None:
    channels = enum_symbols(Contract.PRICE_REQUEST, "channel")
    assert set(FunnelSpec(channels={c: 1.0 for c in channels}).channels) == set(channels)
    with pytest.raises(ValidationError, match="channels must weigh " + "/".join(channels)):
        FunnelSpec(channels={"tv": 1.0})


def test_the_market_shift_changes_the_world_from_its_day_on_and_nothing_before() -> None:
    from pricing.sim.market import build_market
    from pricing.sim.policies import OraclePolicy, StaticMultiplierPolicy
    from pricing.sim.world import build_world, replay

    shifted = get_scenario("market-shift").with_overrides(n_users=300, n_products=20, seed=3)
    calm = shifted.with_overrides(shift=None)
    start = shifted.start_time_ms + int(shifted.shift.start_day * 86_400_000)
    a, b = build_world(build_market(calm), days=4), build_world(build_market(shifted), days=4)
    step_at = (start - a.start_ms) // a.step_ms
    assert (a.competitor_price[:step_at] == b.competitor_price[:step_at]).all()
    expected = np.rint(a.competitor_price[step_at:] * shifted.shift.competitor_factor)
    assert (b.competitor_price[step_at:] == expected).all() and (a.competitor_price[step_at:] > 0).any()
    # the same prices sell alike before the shift and less after it (more sensitive shoppers, cheaper rivals)
    at_list = StaticMultiplierPolicy(1.1)
    pa, pb = replay(a, at_list.price).probability, replay(b, at_list.price).probability
    before = a.views.time_ms < start - 3_600_000
    after = a.views.time_ms >= start + 3_600_000
    assert np.allclose(pa[before], pb[before])
    assert pb[after].mean() < 0.9 * pa[after].mean()
    # the oracle knows: its prices drop after the shift
    oa, ob = replay(a, OraclePolicy(a.market).price).price, replay(b, OraclePolicy(b.market).price).price
    assert (oa[before] == ob[before]).all() and ob[after].mean() < 0.97 * oa[after].mean()
