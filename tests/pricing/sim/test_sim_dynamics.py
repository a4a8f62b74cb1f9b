"""The two drivers of the market dynamics agree: ``build_world`` (a time grid over days) and the
live simulator's ``_LiveMarket`` (one event at a time) move the same ``world.Dynamics`` model."""

from __future__ import annotations

import numpy as np
import pytest

from pricing.sim.live import _LiveMarket
from pricing.sim.market import build_market
from pricing.sim.scenario import get_scenario
from pricing.sim.world import MARKET_KINDS, Dynamics, build_world

DAY_MS = 86_400_000


@pytest.mark.parametrize("name", ["default", "price-war"])
def test_the_live_market_starts_from_the_worlds_first_step(name: str) -> None:
    market = build_market(get_scenario(name).with_overrides(n_users=100, n_products=60))
    world = build_world(market, days=1)
    live = _LiveMarket(market, np.random.default_rng(0))
    snapshot = {(j, kind, c): value for j, kind, c, value in live.snapshot()}
    expected = {}
    for j in range(market.n_products):
        expected[(j, "list_price", -1)] = world.list_price[0, j]
        expected[(j, "cost", -1)] = world.unit_cost[0, j]
        expected[(j, "inventory", -1)] = market.capacity[j]
        for c in np.flatnonzero(np.isfinite(market.competitor_ratio[j])):
            expected[(j, "competitor_price", int(c))] = world.competitor_price[0, j, c]
        assert world.promotion_bp[0, j] == 0  # no promotion at the start, so none in the snapshot
    assert snapshot == expected


def test_the_world_changes_at_the_daily_rates_the_live_market_draws_with() -> None:
    """Per kind, the world's realised changes per day (after its first step, the initial state) match
    ``Dynamics.daily_rates``, which weigh the live market's draws. A promotion starts only on a product
    without one in the world, so its rate there is a few percent lower than the live market's toggles."""
    market = build_market(get_scenario("default").with_overrides(n_users=100, n_products=2_000))
    world = build_world(market, days=28)
    changes = world.changes
    later = changes.time_ms >= world.start_ms + world.step_ms
    days = (world.n_steps - 1) * world.step_ms / DAY_MS
    rates = Dynamics(market).daily_rates()
    assert set(rates) == set(MARKET_KINDS)
    for kind, rate in rates.items():
        realised = (changes.kind[later] == MARKET_KINDS.index(kind)).sum() / days
        assert realised == pytest.approx(rate, rel=0.1), kind


@pytest.mark.parametrize("name", ["default", "price-war"])
def test_competitor_prices_move_alike_over_the_same_span(name: str) -> None:
    """Over three days (the world's grid; the live market's expected number of events in three days),
    the spread of the competitors' log-price changes agrees within 15%.

    A known difference: the live market picks a product, then one of its competitors, so a product's
    competitors share its update rate (each updates at the world's rate on average over products, not
    each one); the medians of the changes differ by about 10% for that, the spreads by less.
    """
    market = build_market(get_scenario(name).with_overrides(n_users=100, n_products=300))
    world = build_world(market, days=3)
    exists = np.isfinite(market.competitor_ratio)
    world_change = np.log(world.competitor_price[-1][exists] / world.competitor_price[0][exists])

    live = _LiveMarket(market, np.random.default_rng(1))
    before = Dynamics.competitor_prices(live.log_price, live.war_factor[:, None])
    span_days = (world.n_steps - 1) * world.step_ms / DAY_MS
    for _ in range(int(sum(Dynamics(market).daily_rates().values()) * span_days)):
        live.step()
    after = Dynamics.competitor_prices(live.log_price, live.war_factor[:, None])
    live_change = np.log(after[exists] / before[exists])

    assert live_change.std() == pytest.approx(world_change.std(), rel=0.15)
    assert (live_change != 0).mean() == pytest.approx((world_change != 0).mean(), abs=0.02)
