"""The live loop with in-memory Kafka fakes and a fake clock: the traffic's rate, contracts, closed loop, errors.

The traffic's shape against the history (per product, per shopper, copies, intensity) is tested in
``test_sim_traffic.py``; continuing a history in ``test_sim_continue.py``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import KafkaError, KafkaException

from pricing.config import Topic, TopicsSettings
from pricing.sim.live import LiveError, LiveSimulator, LiveTopics
from pricing.sim.market import build_market
from pricing.sim.scenario import Scenario, get_scenario
from pricing.sim.world import seasonality
from pricing.sim.traffic import copy_id
from pricing_udfs.serde import money_kinds
from tests.pricing.sim.fakes import (
    HOUR_MS,
    START_MS,
    TOPICS,
    FakeClock,
    FakeCluster,
    FakeEngine,
    FakeRecommender,
    FakeProducer,
    simulator,
    views_per_session_dispersion,
)

NOON = START_MS + 12 * HOUR_MS  # a Thursday, 12:00 UTC


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    """A copy of the market as busy as the default's (its 20,000 shoppers), with fewer products."""
    return get_scenario("default").with_overrides(n_users=20_000, n_products=100)


def _expected_requests(sim: LiveSimulator, start_ms: int, window_s: float) -> float:
    """Views (one request each) the run should make: sessions/s x views per session x seasonality x copies."""
    p = sim.plan
    sc = sim.scenario
    return p.copies * p.per_copy.sessions_per_s * sc.funnel.views_per_session * float(seasonality(sc, start_ms)) * window_s


def _measured_rate(cluster: FakeCluster) -> float:
    """Events per second the fake broker received while the window ran, by the test's clock: between the
    first and the last price request (requests are made only in the paced window), snapshot not included."""
    sent = [s for _, _, _, s in cluster.log[TOPICS.requests]]
    first, last = min(sent), max(sent)
    n = sum(first <= s <= last for t in (TOPICS.behaviour, TOPICS.market, TOPICS.requests) for *_, s in cluster.log[t])
    return n / ((last - first) / 1000)


def _out_of_order(times: list[int], tolerance_ms: int = 5) -> float:
    t = np.asarray(times)
    return float((t[1:] < np.maximum.accumulate(t)[:-1] - tolerance_ms).mean())


def test_closed_loop_runs_the_market_answers_and_buys_at_the_offered_price(scenario: Scenario) -> None:
    clock = FakeClock(NOON)
    cluster = FakeCluster(clock=clock)
    engine = FakeEngine(cluster, scenario, multiplier=1.1, skip_every=10)
    sim = simulator(scenario, cluster, clock, consumer=engine, late_share=0.2, copies=20, duration_s=60)
    report = sim.run()

    # the rate: the shoppers of 20 copies at noon's seasonality, within 4 compound-Poisson standard deviations
    # (sessions are Poisson, each with its views); the report says the rate it really achieved, by the clock the
    # test keeps (the initial snapshot is separate), and what it expected
    assert report.window_s == pytest.approx(60, abs=0.05)
    expected = _expected_requests(sim, NOON, report.window_s)
    c = views_per_session_dispersion(scenario.funnel.views_per_session)
    assert expected > 1_000 and abs(report.requests - expected) < 4 * np.sqrt(c * expected)
    assert report.achieved_rate == pytest.approx(_measured_rate(cluster), rel=0.02)
    assert report.copies == 20 and report.expected_rate == pytest.approx(sim.plan.expected_rate(NOON), rel=1e-3)
    assert report.snapshot_events >= 3 * scenario.n_products * 20
    assert sum(report.produced_by_topic.values()) >= report.paced_events + report.snapshot_events
    assert engine.closed and [tp.offset for tp in engine.assigned] == [17, 17]  # started at the end offsets

    # every record honours the contract: decodes, Kafka timestamp = event_time, key = product_id
    records = {t: cluster.records(t) for t in (TOPICS.behaviour, TOPICS.market, TOPICS.requests, TOPICS.catalogue)}
    for rows in records.values():
        assert all(r["_ts"] == r["event_time"] and r["_key"] == r["product_id"].encode() for r in rows)
    assert report.produced_by_topic == {t: len(cluster.log[t]) for t in records}
    # one catalogue entry per product of every copy, with the category of the product it copies
    catalogue = {r["product_id"]: r["category"] for r in records[TOPICS.catalogue]}
    market = build_market(scenario)
    assert len(catalogue) == len(records[TOPICS.catalogue]) == scenario.n_products * 20
    for j in (0, scenario.n_products - 1):
        for c in (0, 19):
            assert catalogue[copy_id(market.product_ids[j], c)] == market.category_names[market.product_category[j]]
    assert all((r["currency"] == scenario.currency) == (r["kind"] in money_kinds()) for r in records[TOPICS.market])

    # the loop: answered + unanswered = requests; exactly the skipped ones timed out
    assert report.requests == len(records[TOPICS.requests]) == len(engine.answers) + len(engine.skipped)
    assert report.answered == len(engine.answers) and report.unanswered == len(engine.skipped) > 0
    first_request_s = (min(r["_sent"] for r in records[TOPICS.requests]) - NOON) / 1000
    assert report.first_answer_s is not None  # the fake answers at the next poll, one tick later
    assert first_request_s < report.first_answer_s <= first_request_s + sim.tick_s + 1e-3
    first, last = report.unanswered_sent_s  # type: ignore[misc]
    assert 0 <= first < 1 and report.window_s - 1 < last <= report.window_s  # skipped all through the window
    assert "no answer within timeout" in report.summary() and "s into the window" in report.summary()
    assert report.invalid_answers == 1  # the garbage message; the foreign answer is ignored
    behaviour = records[TOPICS.behaviour]
    views = [r for r in behaviour if r["type"] == "view"]
    purchases = [r for r in behaviour if r["type"] == "purchase"]
    assert len(views) == report.views == report.answered
    offered = Counter((a["user_id"], a["product_id"], a["price_minor"]) for a in engine.answers.values())
    bought = Counter((p["user_id"], p["product_id"], p["price_seen_minor"]) for p in purchases)
    assert not bought - offered  # every purchase is at exactly the price offered to that shopper
    assert len(purchases) == report.purchases > 0
    assert sum(p["price_seen_minor"] for p in purchases) == report.revenue_minor
    # purchases follow the true probabilities
    assert abs(report.purchases - report.expected_purchases) < 4 * np.sqrt(report.expected_purchases) + 1
    stock_events = [r for r in records[TOPICS.market] if r["kind"] == "inventory"]
    assert len(stock_events) >= report.purchases  # each sale moves the stock

    # late events still held back when the window closes go out then, not during the drain
    window_end = NOON + int(report.window_s * 1000)
    sent_late = [r for t in (TOPICS.behaviour, TOPICS.market) for r in records[t] if r["_sent"] - r["_ts"] > 5]
    assert max(r["_sent"] for r in sent_late) <= window_end + 20
    assert sum(r["_sent"] >= window_end for r in sent_late) > 0  # there were some to send at the close

    # ordering: requests are never late; a share of behaviour/market events is
    assert _out_of_order([r["event_time"] for r in records[TOPICS.requests]]) == 0
    for rows in (behaviour, records[TOPICS.market][report.snapshot_events :]):
        assert 0.1 < _out_of_order([r["event_time"] for r in rows]) < 0.3  # late_share=0.2


def test_recommendations_close_the_loop_beside_category_popularity_on_the_same_draws(scenario: Scenario) -> None:
    # The fake job answers each recommend request with the category-popularity slate at list price: the job's
    # row and the baseline then agree exactly (same shopper, moment, prices and draws), and each purchase is
    # one of the slate's products at its shown price, produced with the recommendation's request id.
    market = build_market(scenario)
    ids = market.product_ids

    def category_popular(context: str) -> list[str]:
        j = int(np.flatnonzero(ids == context)[0])
        same = np.flatnonzero(market.product_category == market.product_category[j])
        same = same[np.argsort(-market.popularity[same], kind="stable")]
        return [str(ids[i]) for i in same if i != j]

    clock = FakeClock(NOON)
    cluster = FakeCluster(clock=clock)
    engine = FakeRecommender(cluster, scenario, multiplier=1.0, slate=category_popular)
    sim = simulator(scenario, cluster, clock, consumer=engine, copies=3, duration_s=30, late_share=0.0,
                    recommend_share=0.5, recommend_k=5)  # fmt: skip
    report = sim.run()
    r = report.recommend
    assert r is not None and r.requests == len(cluster.log[TOPICS.recommend_requests]) > 50
    assert abs(r.requests - 0.5 * report.requests) < 4 * np.sqrt(0.25 * report.requests)
    assert {tp.topic for tp in engine.assigned} == {TOPICS.priced, TOPICS.recommendations}
    assert r.answered == r.requests and r.unanswered == 0 and r.invalid_answers == 0
    assert r.expected_profit == pytest.approx(r.baseline_expected_profit) and r.expected_profit > 0
    assert (r.purchases, r.profit) == (r.baseline_purchases, r.baseline_profit) and r.purchases > 0
    requests = {q["request_id"]: q for q in cluster.records(TOPICS.recommend_requests)}
    assert all(q["k"] == 5 and q["_key"] == q["user_id"].encode() for q in requests.values())
    bought = [b for b in cluster.records(TOPICS.behaviour) if b["request_id"] in requests and b["type"] == "purchase"]
    assert len(bought) == r.purchases
    for b in bought:
        shown = {i["product_id"]: i["price_minor"] for i in engine.recommendations[b["request_id"]]["items"]}
        assert shown[b["product_id"]] == b["price_seen_minor"] and b["user_id"] == requests[b["request_id"]]["user_id"]
    assert "category-popularity at list price" in report.summary()


def test_open_loop_shows_historical_prices_and_keeps_order(scenario: Scenario) -> None:
    # frequent short promotions and list-price changes, so the prices shoppers see exercise the whole rule
    busy = scenario.with_overrides(promotions={**scenario.promotions.model_dump(), "starts_per_day": 500.0,
                                               "duration_hours": [0.01, 0.03]},
                                   catalogue={**scenario.catalogue.model_dump(), "list_price_changes_per_day": 500.0})  # fmt: skip
    clock = FakeClock(NOON)
    cluster = FakeCluster(clock=clock)
    sim = simulator(busy, cluster, clock, closed_loop=False, copies=20, duration_s=100, late_share=0.0, tick_s=0.05)
    report = sim.run()
    c = views_per_session_dispersion(busy.funnel.views_per_session)
    expected = _expected_requests(sim, NOON, report.window_s)
    assert abs(report.requests - expected) < 4 * np.sqrt(c * expected)
    assert report.achieved_rate == pytest.approx(_measured_rate(cluster), rel=0.02)
    assert report.answered == report.unanswered == 0
    requests = cluster.records(TOPICS.requests)
    behaviour = cluster.records(TOPICS.behaviour)
    market = cluster.records(TOPICS.market)
    assert len(requests) == report.requests == report.views == sum(r["type"] == "view" for r in behaviour)
    assert _out_of_order([r["event_time"] for r in behaviour]) == 0
    assert _out_of_order([r["event_time"] for r in market]) == 0

    # Each view shows the historical price on the market as it stood when the shopper looked, the request lead
    # after asking (the last list price and promotion event for the product, those of the same millisecond
    # included: a tick's market changes go out before its shoppers): list price x a multiplier drawn uniformly
    # from the band, less the promotion, rounded. Views name the request they answer, as in the history.
    assert {v["request_id"] for v in behaviour if v["type"] == "view"} == {r["request_id"] for r in requests}
    lead = (pd.DataFrame(requests).set_index("request_id")["event_time"]
            .reindex([v["request_id"] for v in behaviour if v["type"] == "view"]).to_numpy())  # fmt: skip
    view_times = np.array([v["event_time"] for v in behaviour if v["type"] == "view"])
    assert np.all(view_times - lead >= busy.funnel.request_lead_ms.low)
    assert np.all(view_times - lead <= busy.funnel.request_lead_ms.high + 50 + 1)  # up to a tick later
    views = pd.DataFrame([v for v in behaviour if v["type"] == "view"])
    events = pd.DataFrame(market)

    def as_of(kind: str) -> np.ndarray:
        ev = events.loc[events["kind"] == kind, ["event_time", "product_id", "value"]]
        merged = pd.merge_asof(views[["event_time", "product_id"]], ev, on="event_time", by="product_id",
                               allow_exact_matches=True)  # fmt: skip
        return merged["value"].to_numpy(dtype=float)

    list_price, promotion_bp = as_of("list_price"), np.nan_to_num(as_of("promotion"))
    assert not np.isnan(list_price).any()  # the snapshot gave every product a list price
    initial = dict(zip(build_market(busy).product_ids.tolist(), build_market(busy).list_price_minor.tolist()))
    base = views["product_id"].str.split("-c").str[0]
    assert 0.1 < (promotion_bp > 0).mean() < 0.9 and (list_price != base.map(initial)).mean() > 0.05
    before_promotion = list_price * (1 - promotion_bp / 10_000)
    multiplier = views["price_seen_minor"].to_numpy() / before_promotion
    rounding = 0.5 / before_promotion + 1e-12  # the price is a whole minor unit
    band = busy.historical_policy.multiplier
    assert np.all((multiplier >= band.low - rounding) & (multiplier <= band.high + rounding))
    # uniform over the band: Kolmogorov-Smirnov distance, 1% critical value (up to the rounding noise)
    u = np.sort((multiplier - band.low) / (band.high - band.low))
    n = u.size
    ks = max((np.arange(1, n + 1) / n - u).max(), (u - np.arange(n) / n).max())
    assert n > 1_000 and ks < 1.63 / np.sqrt(n)


def test_slower_producer_reports_the_rate_it_really_achieved() -> None:
    """If producing costs real time, the achieved rate is below the expected one, and reported as such; the
    arrivals it could not make are skipped (and reported), not piled up into an ever longer tick."""
    many_shoppers = get_scenario("default").with_overrides(n_users=200_000, n_products=5)
    clock = FakeClock(NOON)
    cluster = FakeCluster(clock=clock)

    class SlowProducer(FakeProducer):
        def produce(self, *args: Any, **kwargs: Any) -> None:
            clock.t += 0.004  # 4 ms per event: at most 250 events/s
            super().produce(*args, **kwargs)

    sim = simulator(many_shoppers, cluster, clock, closed_loop=False, rate=1_000, duration_s=5, producer=SlowProducer(cluster))
    report = sim.run()
    assert report.expected_rate > 1_000
    assert _measured_rate(cluster) < 260
    assert report.achieved_rate == pytest.approx(_measured_rate(cluster), rel=0.02)
    assert report.behind_s > 1 and "fell behind" in report.summary()
    # bounded: a tick makes at most max_lag_s (1 s) of arrivals (about 1,300 events, 5.2 s here) however long the
    # previous one took; unbounded, the ticks after 2 s would make ever more and the window last over 25 s
    assert report.window_s < 5 + 3 * sim.max_lag_s * 1_300 * 0.004


def test_topic_names_come_from_the_settings(scenario: Scenario) -> None:
    topics = TopicsSettings(market=Topic(name="m-x"), requests=Topic(name="r-x"), behaviour=Topic(name="b-x"),
                            priced=Topic(name="p-x"))  # fmt: skip
    sim = LiveSimulator(scenario, kafka_config={}, topics=topics, rate=1, duration_s=1)
    d = TopicsSettings()
    assert sim.topics == LiveTopics(behaviour="b-x", market="m-x", requests="r-x", priced="p-x",
                                    catalogue=d.catalogue.name, recommend_requests=d.recommend_requests.name,
                                    recommendations=d.recommendations.name)  # fmt: skip
    assert LiveSimulator(scenario, kafka_config={}, duration_s=1).topics == LiveTopics.of(TopicsSettings())
    assert LiveTopics.of(TopicsSettings()).priced == TopicsSettings().priced.name


def test_missing_topic_and_unreachable_broker_are_one_line_errors(scenario: Scenario) -> None:
    cluster, clock = FakeCluster(), FakeClock()
    del cluster.log[TOPICS.priced]
    with pytest.raises(LiveError, match=f"{TOPICS.priced} not found on fake:9092"):
        simulator(scenario, cluster, clock).run()

    class DownProducer(FakeProducer):
        def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Broker transport failure"))

    with pytest.raises(LiveError, match="cannot reach Kafka at fake:9092") as exc:
        simulator(scenario, FakeCluster(), clock, producer=DownProducer(FakeCluster())).run()
    assert "\n" not in str(exc.value)


def test_real_client_against_a_closed_port_fails_fast_and_cleanly(scenario: Scenario) -> None:
    sim = LiveSimulator(scenario, kafka_config={"bootstrap.servers": "127.0.0.1:1"}, rate=10, duration_s=1,
                        connect_timeout_s=1.0)  # fmt: skip
    with pytest.raises(LiveError, match=r"cannot reach Kafka at 127\.0\.0\.1:1 within 1 s"):
        sim.run()
