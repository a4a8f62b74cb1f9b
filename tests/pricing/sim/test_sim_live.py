"""The live loop with in-memory Kafka fakes and a fake clock: pacing, contracts, closed loop, errors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import KafkaError, KafkaException

from pricing.config import Topic, TopicsSettings
from pricing.sim.live import LiveError, LiveSimulator, LiveTopics
from pricing.sim.market import build_market
from pricing.sim.scenario import Scenario, get_scenario
from pricing_udfs.serde import Contract, decode, encode, money_kinds

TOPICS = LiveTopics.of()
CONTRACTS = {TOPICS.behaviour: Contract.BEHAVIOUR_EVENT, TOPICS.market: Contract.MARKET_EVENT,
             TOPICS.requests: Contract.PRICE_REQUEST, TOPICS.priced: Contract.PRICED_EVENT}  # fmt: skip
START_MS = 1_767_225_600_000


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 1e-4)  # time always moves on, as it does for real

    def wall_ms(self) -> int:
        return START_MS + int(self.t * 1000)


@dataclass
class FakeCluster:
    log: dict[str, list[tuple[bytes, bytes, int, int]]] = field(default_factory=lambda: {t: [] for t in CONTRACTS})
    clock: FakeClock | None = None  # when set, each record also keeps the wall time it was sent at

    def metadata(self) -> Any:
        return SimpleNamespace(topics={t: SimpleNamespace(error=None, partitions={0: None, 1: None}) for t in self.log})

    def records(self, topic: str) -> list[dict[str, Any]]:
        out = []
        for key, value, ts, sent in self.log[topic]:
            decoded = decode(CONTRACTS[topic], value)
            assert decoded.ok, decoded
            out.append({**decoded.record, "_key": key, "_ts": ts, "_sent": sent})
        return out


class FakeProducer:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.callbacks: list[Any] = []

    def produce(self, topic: str, value: bytes, key: bytes, timestamp: int, on_delivery: Any) -> None:
        clock = self.cluster.clock
        self.cluster.log[topic].append((key, value, timestamp, clock.wall_ms() if clock else 0))
        self.callbacks.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        n = len(self.callbacks)
        for cb in self.callbacks:
            cb(None, None)
        self.callbacks.clear()
        return n

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        return self.cluster.metadata()


class Msg:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value


class FakeEngine:
    """A consumer of priced-events backed by a fake engine: it prices each new request at
    ``multiplier`` x the initial list price, one poll later, and ignores every ``skip_every``-th."""

    def __init__(self, cluster: FakeCluster, scenario: Scenario, *, multiplier: float, skip_every: int) -> None:
        self.cluster = cluster
        m = build_market(scenario)
        self.list_price = dict(zip(m.product_ids.tolist(), m.list_price_minor.tolist()))
        self.multiplier = multiplier
        self.skip_every = skip_every
        self.seen = 0
        self.answers: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []
        self.assigned: list[Any] = []
        self.closed = False
        self.extra: list[Msg] = [Msg(b"garbage"), Msg(self._answer({"request_id": "someone-else", "user_id": "u1",
                                                                     "product_id": "p000", "event_time": START_MS}))]

    def _answer(self, req: dict[str, Any]) -> bytes:
        price = int(round(self.list_price.get(req["product_id"], 1000) * self.multiplier))
        record = {"request_id": req["request_id"], "user_id": req["user_id"], "product_id": req["product_id"],
                  "price_minor": price, "reference_price_minor": price, "currency": "EUR", "model_version": "fake/1",
                  "expected_conversion": float("nan"), "expected_profit_minor": 0, "reason_codes": ["fake"],
                  "fallback_used": False, "request_time": req["event_time"], "priced_time": req["event_time"]}  # fmt: skip
        return encode(Contract.PRICED_EVENT, record)

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        return self.cluster.metadata()

    def get_watermark_offsets(self, tp: Any, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        return (0, 17)

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[Msg]:
        new = self.cluster.log[TOPICS.requests][self.seen :]
        self.seen += len(new)
        out, self.extra = self.extra, []
        for _, value, _, _ in new:
            req = decode(Contract.PRICE_REQUEST, value).record  # type: ignore[union-attr]
            if (len(self.answers) + len(self.skipped) + 1) % self.skip_every == 0:
                self.skipped.append(req["request_id"])
                continue
            out.append(Msg(self._answer(req)))
            self.answers[req["request_id"]] = decode(Contract.PRICED_EVENT, out[-1].value()).record  # type: ignore[union-attr]
        return out

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return get_scenario("default").with_overrides(n_users=2_000, n_products=100)


def _simulator(scenario: Scenario, cluster: FakeCluster, clock: FakeClock, **kw: Any) -> LiveSimulator:
    args: dict[str, Any] = dict(kafka_config={"bootstrap.servers": "fake:9092"}, rate=400, duration_s=20,
                                answer_timeout_s=1.0, run_id="t1", producer=FakeProducer(cluster), clock=clock,
                                wall_clock_ms=clock.wall_ms, sleep=clock.sleep)  # fmt: skip
    args.update(kw)
    return LiveSimulator(scenario, **args)


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


def test_closed_loop_paces_answers_and_buys_at_the_offered_price(scenario: Scenario) -> None:
    clock = FakeClock()
    cluster = FakeCluster(clock=clock)
    engine = FakeEngine(cluster, scenario, multiplier=1.1, skip_every=10)
    report = _simulator(scenario, cluster, clock, consumer=engine, late_share=0.2).run()

    # pacing: the broker received the target rate, by the clock the test keeps (the initial snapshot is
    # separate), and the report says the rate it really achieved
    assert report.window_s == pytest.approx(20, abs=0.05)
    assert _measured_rate(cluster) == pytest.approx(400, rel=0.03)
    assert report.achieved_rate == pytest.approx(_measured_rate(cluster), rel=0.02)
    assert report.snapshot_events >= 3 * scenario.n_products
    assert sum(report.produced_by_topic.values()) >= report.paced_events + report.snapshot_events
    assert engine.closed and [tp.offset for tp in engine.assigned] == [17, 17]  # started at the end offsets

    # every record honours the contract: decodes, Kafka timestamp = event_time, key = product_id
    records = {t: cluster.records(t) for t in (TOPICS.behaviour, TOPICS.market, TOPICS.requests)}
    for rows in records.values():
        assert all(r["_ts"] == r["event_time"] and r["_key"] == r["product_id"].encode() for r in rows)
    assert report.produced_by_topic == {t: len(cluster.log[t]) for t in records}
    assert all((r["currency"] == scenario.currency) == (r["kind"] in money_kinds()) for r in records[TOPICS.market])

    # the loop: answered + unanswered = requests; exactly the skipped ones timed out
    assert report.requests == len(records[TOPICS.requests]) == len(engine.answers) + len(engine.skipped)
    assert report.answered == len(engine.answers) and report.unanswered == len(engine.skipped) > 0
    assert report.first_answer_s is not None and 0 < report.first_answer_s < 0.1  # the fake answers at the next poll
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
    window_end = START_MS + int(report.window_s * 1000)
    sent_late = [r for t in (TOPICS.behaviour, TOPICS.market) for r in records[t] if r["_sent"] - r["_ts"] > 5]
    assert max(r["_sent"] for r in sent_late) <= window_end + 20
    assert sum(r["_sent"] >= window_end for r in sent_late) > 0  # there were some to send at the close

    # ordering: requests are never late; a share of behaviour/market events is
    assert _out_of_order([r["event_time"] for r in records[TOPICS.requests]]) == 0
    for rows in (behaviour, records[TOPICS.market][report.snapshot_events :]):
        assert 0.1 < _out_of_order([r["event_time"] for r in rows]) < 0.3  # late_share=0.2


def test_open_loop_shows_historical_prices_and_keeps_order(scenario: Scenario) -> None:
    # frequent promotions and list-price changes, so the prices shoppers see exercise the whole rule
    busy = scenario.with_overrides(promotions={**scenario.promotions.model_dump(), "starts_per_day": 5.0},
                                   catalogue={**scenario.catalogue.model_dump(), "list_price_changes_per_day": 2.0})  # fmt: skip
    clock = FakeClock()
    cluster = FakeCluster(clock=clock)
    report = _simulator(busy, cluster, clock, closed_loop=False, rate=250, duration_s=10, late_share=0.0).run()
    assert _measured_rate(cluster) == pytest.approx(250, rel=0.03)
    assert report.achieved_rate == pytest.approx(_measured_rate(cluster), rel=0.02)
    assert report.answered == report.unanswered == 0
    requests = cluster.records(TOPICS.requests)
    behaviour = cluster.records(TOPICS.behaviour)
    market = cluster.records(TOPICS.market)
    assert len(requests) == report.requests == report.views == sum(r["type"] == "view" for r in behaviour)
    assert _out_of_order([r["event_time"] for r in behaviour]) == 0
    assert _out_of_order([r["event_time"] for r in market]) == 0

    # Each view shows the historical price on the market as it stood (the last list price and promotion
    # event for the product, those of the same millisecond included: a tick's market changes go out before
    # its shoppers): list price x a multiplier drawn uniformly from the band, less the promotion, rounded.
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
    assert (promotion_bp > 0).mean() > 0.1 and (list_price != views["product_id"].map(initial)).mean() > 0.05
    base = list_price * (1 - promotion_bp / 10_000)
    multiplier = views["price_seen_minor"].to_numpy() / base
    rounding = 0.5 / base + 1e-12  # the price is a whole minor unit
    band = busy.historical_policy.multiplier
    assert np.all((multiplier >= band.low - rounding) & (multiplier <= band.high + rounding))
    # uniform over the band: Kolmogorov-Smirnov distance, 1% critical value (up to the rounding noise)
    u = np.sort((multiplier - band.low) / (band.high - band.low))
    n = u.size
    ks = max((np.arange(1, n + 1) / n - u).max(), (u - np.arange(n) / n).max())
    assert n > 1_000 and ks < 1.63 / np.sqrt(n)


def test_slower_producer_reports_the_rate_it_really_achieved(scenario: Scenario) -> None:
    """If each tick costs real time, the achieved rate is below target, and reported as such."""
    clock = FakeClock()
    cluster = FakeCluster(clock=clock)

    class SlowProducer(FakeProducer):
        def produce(self, *args: Any, **kwargs: Any) -> None:
            clock.t += 0.004  # 4 ms per event: at most 250 events/s
            super().produce(*args, **kwargs)

    sim = _simulator(scenario, cluster, clock, closed_loop=False, rate=1_000, duration_s=5, producer=SlowProducer(cluster))
    report = sim.run()
    assert _measured_rate(cluster) < 260
    assert report.achieved_rate == pytest.approx(_measured_rate(cluster), rel=0.02)


def test_topic_names_come_from_the_settings(scenario: Scenario) -> None:
    topics = TopicsSettings(market=Topic(name="m-x"), requests=Topic(name="r-x"), behaviour=Topic(name="b-x"),
                            priced=Topic(name="p-x"))  # fmt: skip
    sim = LiveSimulator(scenario, kafka_config={}, topics=topics, rate=1, duration_s=1)
    assert sim.topics == LiveTopics(behaviour="b-x", market="m-x", requests="r-x", priced="p-x")
    assert LiveSimulator(scenario, kafka_config={}, rate=1, duration_s=1).topics == LiveTopics.of(TopicsSettings())
    assert LiveTopics.of(TopicsSettings()).priced == TopicsSettings().priced.name


def test_missing_topic_and_unreachable_broker_are_one_line_errors(scenario: Scenario) -> None:
    cluster, clock = FakeCluster(), FakeClock()
    del cluster.log[TOPICS.priced]
    with pytest.raises(LiveError, match=f"{TOPICS.priced} not found on fake:9092"):
        _simulator(scenario, cluster, clock).run()

    class DownProducer(FakeProducer):
        def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Broker transport failure"))

    with pytest.raises(LiveError, match="cannot reach Kafka at fake:9092") as exc:
        _simulator(scenario, FakeCluster(), clock, producer=DownProducer(FakeCluster())).run()
    assert "\n" not in str(exc.value)


def test_real_client_against_a_closed_port_fails_fast_and_cleanly(scenario: Scenario) -> None:
    sim = LiveSimulator(scenario, kafka_config={"bootstrap.servers": "127.0.0.1:1"}, rate=10, duration_s=1,
                        connect_timeout_s=1.0)  # fmt: skip
    with pytest.raises(LiveError, match=r"cannot reach Kafka at 127\.0\.0\.1:1 within 1 s"):
        sim.run()
