"""A history that ends now, and a live run that continues its market (no snapshot burst, the same state)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.sim.history import History, generate_history, history_ending_at
from pricing.sim.live import LiveError, _LiveMarket
from pricing.sim.market import build_market
from pricing.sim.scenario import Scenario, get_scenario
from pricing.sim.world import MarketSnapshot, seasonality
from tests.pricing.sim.fakes import DAY_MS, HOUR_MS, START_MS, TOPICS, FakeClock, FakeCluster, simulator

NOW = START_MS + 30 * DAY_MS + 14 * HOUR_MS + 1_234_567  # a Saturday afternoon, not on the hour


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return get_scenario("default").with_overrides(n_users=3_000, n_products=150)


@pytest.fixture(scope="module")
def history(scenario: Scenario) -> History:
    """Two days of history ending at (the hour before) ``NOW``."""
    return generate_history(history_ending_at(scenario, days=2, end_ms=NOW), days=2)


@settings(max_examples=200, deadline=None)
@given(st.integers(10 * 365 * DAY_MS, 80 * 365 * DAY_MS), st.integers(1, 30), st.sampled_from([1, 5, 15, 60, 120, 1440]))
def test_a_history_ending_at_a_time_starts_on_the_step_grid_and_ends_within_a_step(end_ms: int, days: int, step: int) -> None:
    sc = get_scenario("default").with_overrides(step_minutes=step)
    moved = history_ending_at(sc, days=days, end_ms=end_ms)
    start, step_ms = moved.start_time_ms, step * 60_000
    assert start % step_ms == 0  # steps stay aligned with UTC hours and days (a step divides a day)
    assert start + days * DAY_MS <= end_ms < start + days * DAY_MS + step_ms
    assert moved.model_dump(exclude={"start_time_ms"}) == sc.model_dump(exclude={"start_time_ms"})


def test_a_history_moved_by_whole_weeks_is_the_same_history_at_other_dates(scenario: Scenario) -> None:
    """Seasonality and every draw depend on the hour of the week only: four weeks later, the same events."""
    a = generate_history(scenario, days=2)
    b = generate_history(history_ending_at(scenario, days=2, end_ms=scenario.start_time_ms + 30 * DAY_MS + 5), days=2)
    assert b.start_ms - a.start_ms == 28 * DAY_MS
    for fa, fb in zip((a.behaviour, a.market_events, a.requests), (b.behaviour, b.market_events, b.requests)):
        shifted = fa.assign(event_time=fa["event_time"] + 28 * DAY_MS, arrival_time=fa["arrival_time"] + 28 * DAY_MS)
        pd.testing.assert_frame_equal(shifted, fb)
    # one day later instead, the weekday differs, and so does the traffic
    c = generate_history(history_ending_at(scenario, days=2, end_ms=scenario.start_time_ms + 3 * DAY_MS + 5), days=2)
    assert len(c.requests) != len(a.requests)
    assert seasonality(scenario, c.start_ms) != seasonality(scenario, a.start_ms)


def test_the_end_state_is_what_the_historys_market_events_say_last(history: History) -> None:
    """Per product: the last list price, cost, promotion and stock event, and per competitor the last price
    (by event time), are the end state; promotions and wars still running end after the history."""
    m = build_market(history.scenario)
    end = history.end_state
    assert end.time_ms == history.end_ms <= NOW < history.end_ms + HOUR_MS
    assert history.market_events["event_time"].max() < history.end_ms
    events = history.market_events.sort_values("event_time", kind="stable")
    index = pd.Series(np.arange(m.n_products), index=m.product_ids)

    def last(kind: str, competitor: str | None = None) -> np.ndarray:
        ev = events[events["kind"] == kind]
        if competitor is not None:
            ev = ev[ev["competitor_id"] == competitor]
        values = ev.groupby("product_id")["value"].last()
        out = np.zeros(m.n_products, np.int64)
        out[index[values.index].to_numpy()] = values.to_numpy()
        return out

    assert np.array_equal(last("list_price"), end.list_price)
    assert np.array_equal(last("cost"), end.unit_cost)
    assert np.array_equal(last("promotion"), end.promotion_bp)
    assert np.array_equal(last("inventory"), end.stock)
    prices = end.competitor_prices(np.isfinite(m.competitor_ratio))
    for c, name in enumerate(m.competitor_ids):
        assert np.array_equal(last("competitor_price", name), prices[:, c])
    running = end.promotion_bp > 0
    assert running.any() and (end.promotion_ends_ms[running] >= end.time_ms).all()
    assert (end.promotion_ends_ms[~running] == 0).all() and ((end.war_ends_ms > 0) == (end.war_factor < 1)).all()


def test_a_live_run_continues_the_history_without_a_snapshot_burst(scenario: Scenario, history: History) -> None:
    """Started from the end state, every copy's market is the history's last state; copy 0 (the history's ids)
    sends no snapshot, copy 1 (ids the topics never saw) does; copy 0's market events are only its changes."""
    clock = FakeClock(NOW)
    cluster = FakeCluster(clock=clock)
    sim = simulator(scenario, cluster, clock, closed_loop=False, copies=2, duration_s=600, tick_s=1.0,
                    start_state=history.end_state)  # fmt: skip
    for copy in range(2):
        first = sim._state.state(copy, history.end_ms)
        for name in ("list_price", "unit_cost", "competitor_level", "competitor_log_price", "war_factor", "war_ends_ms",
                     "promotion_bp", "promotion_ends_ms", "stock"):  # fmt: skip
            assert np.array_equal(getattr(first, name), getattr(history.end_state, name)), (copy, name)
    report = sim.run()
    market = pd.DataFrame(cluster.records(TOPICS.market))
    snapshot, window = market.iloc[: report.snapshot_events], market.iloc[report.snapshot_events :]
    n = scenario.n_products
    assert report.snapshot_events == len(sim._state.snapshot(range(n, 2 * n))) > 3 * n
    assert snapshot["product_id"].str.endswith("-c1").all()
    copy0 = window[~window["product_id"].str.contains("-c")]
    changes = copy0[copy0["kind"] != "inventory"]  # sales move the stock too
    expected = sim._state.changes_per_s / 2 * report.window_s  # one copy's share
    assert len(changes) < expected + 4 * np.sqrt(expected) + 3 * 6  # a few price wars re-price all their competitors
    assert len(changes) < 0.2 * 3 * n  # a snapshot would be one event per product and kind
    assert window["event_time"].min() >= NOW >= history.end_ms
    # copy 0's shoppers and products are the history's: the same ids
    requests = pd.DataFrame(cluster.records(TOPICS.requests))
    copy0 = requests[~requests["user_id"].str.contains("-c")]
    assert len(copy0) > 100 and not copy0["product_id"].str.contains("-c").any()
    assert set(copy0["user_id"]) <= set(build_market(scenario).user_ids)
    assert len(set(copy0["user_id"]) & set(history.requests["user_id"])) > 0.5 * copy0["user_id"].nunique()


def test_a_snapshot_published_first_goes_out_once_before_any_traffic(scenario: Scenario, history: History) -> None:
    """``pricing demo --rate``: the other copies' initial market is produced (and read by the job) first."""
    clock = FakeClock(NOW)
    cluster = FakeCluster(clock=clock)
    sim = simulator(scenario, cluster, clock, closed_loop=False, copies=2, duration_s=60, tick_s=1.0,
                    start_state=history.end_state)  # fmt: skip
    n = sim.publish_snapshot()
    assert n == len(sim._state.snapshot(range(scenario.n_products, 2 * scenario.n_products))) > 0
    assert len(cluster.records(TOPICS.market)) == n and not cluster.records(TOPICS.requests)
    assert sim.publish_snapshot() == n  # idempotent
    report = sim.run()
    assert report.snapshot_events == n
    market = pd.DataFrame(cluster.records(TOPICS.market))
    assert len(market) - n < 0.2 * n  # a minute of changes, no second snapshot
    assert market.iloc[:n]["product_id"].str.endswith("-c1").all() and len(cluster.records(TOPICS.requests)) > 0


def test_a_live_run_cannot_start_before_the_history_ends(scenario: Scenario, history: History) -> None:
    clock = FakeClock(history.end_ms - 60_000)
    sim = simulator(scenario, FakeCluster(clock=clock), clock, closed_loop=False, start_state=history.end_state)
    with pytest.raises(LiveError, match="continues a history that ended before it"):
        sim.run()
    with pytest.raises(ValueError, match="no stock"):
        _LiveMarket(build_market(scenario), np.random.default_rng(0), start=dataclasses.replace(history.end_state, stock=None))
    other = get_scenario("default").with_overrides(n_users=3_000, n_products=151)
    with pytest.raises(ValueError, match="not of this market"):
        _LiveMarket(build_market(other), np.random.default_rng(0), start=history.end_state)


def test_the_end_state_saves_and_loads_for_its_own_market_only(tmp_path: Path, scenario: Scenario, history: History) -> None:
    path = tmp_path / "state.npz"
    history.end_state.save(path, scenario=scenario)
    loaded = MarketSnapshot.load(path, scenario=scenario)
    assert loaded.time_ms == history.end_state.time_ms and isinstance(loaded.time_ms, int)
    for name in ("list_price", "competitor_log_price", "promotion_ends_ms", "stock"):
        assert np.array_equal(getattr(loaded, name), getattr(history.end_state, name))
    with pytest.raises(ValueError, match="not 'default seed 8"):
        MarketSnapshot.load(path, scenario=scenario.with_overrides(seed=8))
