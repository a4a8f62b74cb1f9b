"""Live traffic is the history's market at its own intensity: per product and per shopper, at the same hour of
the week, whatever the rate (copies) ; ``intensity`` scales it; the natural rate and the copies' ids.

Tolerances come from the traffic's own noise: sessions arrive as a Poisson process with a random number of
views each, so a count of views over a window (or over a group of shoppers or products) has a variance of at
most its mean x E[N^2] / E[N] (``views_per_session_dispersion``); two independent counts differ by less than
4 standard deviations of their difference. Seeds are fixed: the tests are deterministic.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.sim.history import History, generate_history
from pricing.sim.market import MarketState, build_market
from pricing.sim.scenario import Scenario, get_scenario
from pricing.sim.traffic import COPY_SEPARATOR, Shoppers, copy_id, copy_ids, natural_rate, plan_traffic
from pricing.sim.world import seasonality
from pricing_udfs.serde import Contract, field_constraints
from tests.pricing.sim.fakes import DAY_MS, HOUR_MS, START_MS, TOPICS, FakeClock, FakeCluster, simulator, views_per_session_dispersion

THURSDAY = START_MS + 7 * DAY_MS  # 2026-01-08 00:00 UTC: the history's first day is a Thursday too
EVENING = THURSDAY + 17 * HOUR_MS  # a busy hour
MORNING, HOURS = 5, 4  # 05:00 to 09:00, when traffic triples: an hour's error in the clock shows


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    """The default market's shoppers (20,000) with fewer products: one copy makes about 2 events/s."""
    return get_scenario("default").with_overrides(n_users=20_000, n_products=200)


@pytest.fixture(scope="module")
def market(scenario: Scenario) -> MarketState:
    return build_market(scenario)


@pytest.fixture(scope="module")
def history(scenario: Scenario) -> History:
    """Its first day (a Thursday, from 00:00 UTC)."""
    return generate_history(scenario, days=1)


def _split(ids: pd.Series, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index in the market, copy) of each id."""
    parts = ids.str.split(COPY_SEPARATOR, n=1, expand=True, regex=False)
    copy = parts[1].fillna("0").astype(int).to_numpy() if parts.shape[1] > 1 else np.zeros(len(ids), int)
    return pd.Series(np.arange(base.size), index=base).reindex(parts[0]).to_numpy(), copy


def _views(requests: pd.DataFrame, market: MarketState, start_ms: int) -> pd.DataFrame:
    """One row per price request (one per view) with the shopper, the product, the copy and the hour."""
    user, user_copy = _split(requests["user_id"], market.user_ids)
    product, product_copy = _split(requests["product_id"], market.product_ids)
    assert not np.isnan(user.astype(float)).any() and not np.isnan(product.astype(float)).any()
    return pd.DataFrame({
        "user": user, "product": product, "copy": user_copy, "product_copy": product_copy,
        "hour": (requests["event_time"].to_numpy() - start_ms) // HOUR_MS,
        "segment": np.asarray(market.segment_names)[market.user_segment[user]],
        "category": np.asarray(market.category_names)[market.product_category[product]],
    })  # fmt: skip


def _history_views(history: History, market: MarketState, hours: int, *, from_hour: int = 17) -> pd.DataFrame:
    start = history.start_ms + from_hour * HOUR_MS
    r = history.requests
    return _views(r[(r["event_time"] >= start) & (r["event_time"] < start + hours * HOUR_MS)], market, start)


def _live_views(
    scenario: Scenario, market: MarketState, *, hours: int, from_hour: int = 17, **kw: Any
) -> tuple[pd.DataFrame, Any]:
    """The requests of an open-loop run from ``from_hour`` next Thursday on, ticking every 10 s. A tick stamps the
    sessions that started since the last one with its own time, so the last tick's belong to the last hour."""
    start = THURSDAY + from_hour * HOUR_MS
    clock = FakeClock(start)
    cluster = FakeCluster(clock=clock)
    sim = simulator(scenario, cluster, clock, market=market, closed_loop=False, late_share=0.0, duration_s=hours * 3600,
                    tick_s=10.0, **kw)  # fmt: skip
    report = sim.run()
    requests = pd.DataFrame(cluster.records(TOPICS.requests))  # every record decodes: the ids meet the constraints
    views = _views(requests, market, start)
    assert views["hour"].between(0, hours).all()
    return views.assign(hour=np.minimum(views["hour"], hours - 1)), (report, cluster, sim)


def _close(live: float, reference: float, *, c: float, scale: float = 1.0) -> bool:
    """``live`` vs ``scale`` x an independent count ``reference`` of the same process: within 4 standard deviations
    of the difference (compound Poisson, variance <= c x mean of each)."""
    return abs(live - scale * reference) < 4 * np.sqrt(c * (live + scale**2 * reference))


def test_one_copy_is_the_historys_market_hour_by_hour(scenario: Scenario, market: MarketState, history: History) -> None:
    """At one copy, views per hour (per product and per shopper), by segment of shoppers and by category of
    products, match the history's at the same hours of a Thursday morning, when traffic triples (x0.3 to x1.1
    the weekly mean): a run at the market's average rate (a clock independent of the hour) would make 30% more
    views than the history there, and a clock an hour off twice as many in the first hour."""
    live, (report, cluster, sim) = _live_views(scenario, market, hours=HOURS, from_hour=MORNING, copies=1)
    hist = _history_views(history, market, HOURS, from_hour=MORNING)
    c = views_per_session_dispersion(scenario.funnel.views_per_session)
    assert len(hist) > 8_000
    assert _close(len(live), len(hist), c=c), (len(live), len(hist))
    assert len(live) / HOURS / market.n_products == pytest.approx(len(hist) / HOURS / market.n_products, rel=0.1)
    average = sim.plan.per_copy.sessions_per_s * scenario.funnel.views_per_session * HOURS * 3600
    assert not _close(average, len(hist), c=c)  # the test tells the two apart
    for column in ("hour", "segment", "category"):
        a, b = live[column].value_counts(), hist[column].value_counts()
        assert set(a.index) == set(b.index)
        for key in b.index:
            assert _close(a[key], b[key], c=c), (column, key, a[key], b[key])
    # per shopper: the more active shoppers view more, as in the history (views per shopper of each activity tercile)
    tercile = np.digitize(market.user_sessions_per_day, np.quantile(market.user_sessions_per_day, [1 / 3, 2 / 3]))
    a, b = np.bincount(tercile[live["user"]], minlength=3), np.bincount(tercile[hist["user"]], minlength=3)
    assert all(_close(x, y, c=c) for x, y in zip(a, b)), (a, b)
    assert a[2] > 2 * a[0]
    # market changes happen at their daily rates: competitor prices (about 1,500 a day here), within 4 sd
    competitor = sum(r["kind"] == "competitor_price" for r in cluster.records(TOPICS.market)[report.snapshot_events :])
    expected = market.n_competitors.sum() * scenario.competitors.updates_per_day * HOURS / 24
    assert abs(competitor - expected) < 4 * np.sqrt(expected) + 0.05 * expected  # a price war re-prices a few more


def test_copies_multiply_the_traffic_not_its_intensity(scenario: Scenario, market: MarketState, history: History) -> None:
    """Three copies make three times the views of one hour, each copy as many as the history (so views per product
    and per shopper are unchanged), and a copy's shoppers only see its own products."""
    live, (report, _, _) = _live_views(scenario, market, hours=1, copies=3)
    hist = _history_views(history, market, 1)
    c = views_per_session_dispersion(scenario.funnel.views_per_session)
    assert report.copies == 3
    assert _close(len(live), len(hist), c=c, scale=3), (len(live), len(hist))
    assert (live["copy"] == live["product_copy"]).all()
    per_copy = live["copy"].value_counts()
    assert sorted(per_copy.index) == [0, 1, 2]
    for n in per_copy:  # views per product and per shopper of each copy = the history's
        assert _close(n, len(hist), c=c), (per_copy, len(hist))
    for copy in range(3):  # each copy's shoppers spread over its products as the history's do (by category)
        a, b = live.loc[live["copy"] == copy, "category"].value_counts(), hist["category"].value_counts()
        assert all(_close(a.get(k, 0), b[k], c=c) for k in b.index)


@pytest.mark.parametrize("intensity", [3.0, 0.2])
def test_intensity_multiplies_views_per_product_and_shopper(
    scenario: Scenario, market: MarketState, history: History, intensity: float
) -> None:
    live, (report, _, _) = _live_views(scenario, market, hours=1, copies=1, intensity=intensity)
    hist = _history_views(history, market, 1)
    c = views_per_session_dispersion(scenario.funnel.views_per_session)
    assert report.intensity == intensity and report.copies == 1
    assert _close(len(live), len(hist), c=c, scale=intensity), (len(live), len(hist))
    assert not _close(len(live), len(hist), c=c)  # distinguishable from intensity 1
    assert live["user"].nunique() <= market.n_users and (live["copy"] == 0).all()


def test_the_natural_rate_is_the_historys_events_per_second(week_history: History) -> None:
    """One copy's expected events/s averaged over the week is what the history produced per second, within 3%:
    the live simulator writes one stock change per sale (the history one per product and hour) and its natural
    rate assumes list prices (the history's prices vary around them), which move it by about 1%."""
    market = build_market(week_history.scenario)
    per_second = week_history.n_events / (week_history.days * 86_400)
    assert natural_rate(market) == pytest.approx(per_second, rel=0.03)
    assert natural_rate(market, intensity=2) == pytest.approx(2 * natural_rate(market), rel=0.05)


def test_a_rate_picks_whole_copies_and_says_so(market: MarketState) -> None:
    one = natural_rate(market)
    assert plan_traffic(market).copies == 1 and plan_traffic(market).warning() is None
    plan = plan_traffic(market, rate=10 * one)
    assert plan.copies == 10 and plan.warning() is None
    assert plan.expected_rate(EVENING) == pytest.approx(10 * plan.expected_rate(EVENING) / plan.copies)
    assert "10 copies of the market" in plan.describe(EVENING) and "Thursday 17h UTC" in plan.describe(EVENING)
    low = plan_traffic(market, rate=0.2 * one)
    assert low.copies == 1 and "below one copy" in (low.warning() or "")
    off = plan_traffic(market, rate=2.5 * one)
    assert off.copies in (2, 3) and "not near a multiple" in (off.warning() or "")
    busy = plan_traffic(market, rate=10 * one, intensity=10)
    assert busy.copies == 1 and busy.natural_rate == pytest.approx(natural_rate(market, intensity=10))
    # over a week the expected rate averages to copies x the natural rate (seasonality has mean 1)
    week = EVENING + np.arange(7 * 24 * 12) * HOUR_MS // 12
    assert np.mean(plan.expected_rate(week)) == pytest.approx(10 * one, rel=1e-9)
    with pytest.raises(ValueError):
        plan_traffic(market, rate=1, copies=1)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.01, 1_000), st.floats(0.05, 20))
def test_copies_are_the_nearest_whole_number_of_natural_rates(rate: float, intensity: float) -> None:
    plan = plan_traffic(_tiny_market(), rate=rate, intensity=intensity)
    ratio = rate / plan.natural_rate
    assert plan.copies >= 1
    assert plan.copies == 1 or abs(ratio - plan.copies) <= 0.5 + 1e-9
    off = abs(plan.copies * plan.natural_rate / rate - 1) > 0.1
    assert (plan.warning() is not None) == off
    assert not off or ("below one copy" in plan.warning()) == (ratio < 1)  # type: ignore[operator]


_TINY: list[MarketState] = []


def _tiny_market() -> MarketState:
    if not _TINY:
        _TINY.append(build_market(get_scenario("default").with_overrides(n_users=300, n_products=12)))
    return _TINY[0]


_IDS = st.text(alphabet=string.ascii_lowercase + string.digits + "_", min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(st.lists(_IDS, min_size=1, max_size=30, unique=True), st.integers(1, 40))
def test_copies_never_share_ids_and_copy_0_keeps_them(base: list[str], copies: int) -> None:
    """For any distinct ids without the separator (the market's are ``p<digits>`` and ``u<digits>``)."""
    ids = copy_ids(np.array(base, dtype=object), copies)
    assert ids.size == len(base) * copies and len(set(ids.tolist())) == ids.size
    assert ids[: len(base)].tolist() == base
    for c in range(copies):
        assert ids[c * len(base) : (c + 1) * len(base)].tolist() == [copy_id(b, c) for b in base]


def test_copy_ids_meet_the_contracts_constraints(market: MarketState) -> None:
    """The longest ids of the largest plausible run (10,000 copies) fit every id field of every contract."""
    longest = max(len(copy_id(i, 9_999)) for i in (market.product_ids[-1], market.user_ids[-1]))
    for contract in (Contract.BEHAVIOUR_EVENT, Contract.MARKET_EVENT, Contract.PRICE_REQUEST):
        for name, rule in field_constraints(contract).items():
            if name.endswith("_id") and "max_length" in rule:
                assert rule.get("min_length", 0) <= longest <= rule["max_length"], (contract, name)
    assert copy_ids(market.product_ids, 2)[: market.n_products].tolist() == market.product_ids.tolist()


def test_the_shoppers_start_in_the_steady_state(scenario: Scenario, market: MarketState) -> None:
    """Sessions under way when a run starts keep viewing, so its first minute has as many views as any other
    (without them, only the sessions started in the run would view: about half as many in the first minute)."""
    shoppers = Shoppers(market, copies=20, intensity=1.0, rng=np.random.default_rng(3))
    shoppers.warm_up(0.0, EVENING)
    per_second = []
    for second in range(1, 601):
        shoppers.arrive(second - 1.0, float(second), EVENING + second * 1000)
        per_second.append(len(shoppers.due(float(second))))
    per_minute = np.add.reduceat(per_second, np.arange(0, 600, 60))
    steady = 20 * market.user_sessions_per_day.sum() / 86_400 * scenario.funnel.views_per_session * 60
    steady *= float(seasonality(scenario, EVENING))  # 17:00 on a Thursday
    c = views_per_session_dispersion(scenario.funnel.views_per_session)
    for n in per_minute:
        assert abs(n - steady) < 4 * np.sqrt(c * steady), (per_minute, steady)
