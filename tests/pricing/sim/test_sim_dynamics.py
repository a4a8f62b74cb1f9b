"""The two drivers of the market dynamics agree: ``build_world`` (a time grid over days) and the
live simulator's ``_LiveMarket`` (one event at a time) move the same ``world.Dynamics`` model."""

from __future__ import annotations

import numpy as np
import pytest

from pricing.sim.live import Change, _LiveMarket
from pricing.sim.market import build_market
from pricing.sim.scenario import get_scenario
from pricing.sim.world import MARKET_KINDS, Dynamics, build_world

DAY_MS = 86_400_000


def _run(live: _LiveMarket, *, days: float, start_ms: int = 0, dt_s: float = 60.0, every: list | None = None) -> list[Change]:
    """Drive the live market's clock over ``days`` in ``dt_s`` ticks; ``every`` collects the share of
    product slots on promotion and at war after each hour."""
    out: list[Change] = []
    per_hour = int(round(3600 / dt_s))
    for i in range(int(round(days * 86_400 / dt_s))):
        out += live.changes(dt_s, start_ms + int((i + 1) * dt_s * 1000))
        if every is not None and (i + 1) % per_hour == 0:
            every.append(((live.promo_bp > 0).mean(), (live.war_factor < 1).mean()))
    return out


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
    """Over three days (the world's grid; the live market on its Poisson clock), the spread of the competitors' log-price changes agrees within 15%.

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
    _run(live, days=(world.n_steps - 1) * world.step_ms / DAY_MS)
    after = Dynamics.competitor_prices(live.log_price, live.war_factor[:, None])
    live_change = np.log(after[exists] / before[exists])

    assert live_change.std() == pytest.approx(world_change.std(), rel=0.15)
    assert (live_change != 0).mean() == pytest.approx((world_change != 0).mean(), abs=0.02)


def test_the_live_market_changes_at_the_daily_rates_per_copy() -> None:
    """On its Poisson clock, each kind of change happens ``Dynamics.daily_rates`` times a day per copy, within
    4 Poisson standard deviations. A promotion starts only on a product without one, so its expected count is
    the rate x the share of products without a promotion (both starts and ends count, as in the rates); and
    a price war re-prices all of a product's competitors at its start and at its end."""
    market = build_market(get_scenario("default").with_overrides(n_users=100, n_products=500))
    copies, days = 2, 7.0
    live = _LiveMarket(market, np.random.default_rng(5), copies=copies)
    shares: list = []
    changes = _run(live, days=days, every=shares)
    rates = Dynamics(market).daily_rates()
    without_promotion = 1 - np.mean([p for p, _ in shares])
    counted = {kind: sum(k == kind for _, k, _, _ in changes) for kind in rates}
    n_comp = market.n_competitors[market.n_competitors > 0]
    for kind, rate in rates.items():
        expected = rate * days * copies * (without_promotion if kind == "promotion" else 1)
        if kind == "competitor_price":  # a war's start and end re-price all of a product's competitors
            expected += 2 * market.scenario.competitors.price_war_per_day * (n_comp.size * copies) * days * n_comp.mean()
        assert abs(counted[kind] - expected) < 4 * np.sqrt(expected) + 1, (kind, counted[kind], expected)
    # the copies move independently: their list prices drift apart
    assert not np.array_equal(live.list_price[: market.n_products], live.list_price[market.n_products :])


def test_promotions_and_price_wars_last_as_long_as_in_the_world() -> None:
    """The share of products on promotion (and at war) over time matches the world's: promotions and wars
    end after the scenario's durations (a toggled promotion would instead stay on half the time)."""
    default = get_scenario("default")
    sc = default.with_overrides(n_users=100, n_products=300, competitors={**default.competitors.model_dump(),
                                                                          "price_war_per_day": 0.2})  # fmt: skip
    market = build_market(sc)
    world = build_world(market, days=10)
    settled = slice(3 * 24, None)  # after three days: every promotion and war of the start has ended
    world_promo = (world.promotion_bp[settled] > 0).mean()
    live = _LiveMarket(market, np.random.default_rng(9), copies=2)
    shares: list = []
    _run(live, days=10, every=shares)
    live_promo, live_war = np.mean([s for s in shares[3 * 24 :]], axis=0)
    n = 2 * market.n_products  # the live shares are averages over hours of one sample of this many slots
    for live_share, world_share in ((live_promo, world_promo),):
        assert abs(live_share - world_share) < 4 * np.sqrt(world_share * (1 - world_share) * (1 / n + 1 / market.n_products))
    war = sc.competitors
    expected_war = war.price_war_per_day * (war.price_war_duration_hours.low + war.price_war_duration_hours.high) / 48
    expected_war = expected_war / (1 + expected_war)  # a war starts only on a product at peace
    assert abs(live_war - expected_war) < 4 * np.sqrt(expected_war * (1 - expected_war) / n)
    assert 0.02 < world_promo < 0.2 and 0.15 < expected_war < 0.4
