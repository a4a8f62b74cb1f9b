"""In-memory Kafka fakes and a fake clock for the simulator's unit tests (no broker, no waiting)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

from pricing.sim.live import LiveSimulator, LiveTopics
from pricing.sim.market import build_market
from pricing.sim.scenario import Scenario
from pricing.sim.traffic import COPY_SEPARATOR
from pricing_udfs.serde import Contract, decode, encode

TOPICS = LiveTopics.of()
CONTRACTS = {TOPICS.behaviour: Contract.BEHAVIOUR_EVENT, TOPICS.market: Contract.MARKET_EVENT,
             TOPICS.requests: Contract.PRICE_REQUEST, TOPICS.priced: Contract.PRICED_EVENT,
             TOPICS.catalogue: Contract.CATALOGUE_ENTRY, TOPICS.recommend_requests: Contract.RECOMMEND_REQUEST,
             TOPICS.recommendations: Contract.RECOMMENDATION}  # fmt: skip
START_MS = 1_767_225_600_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class FakeClock:
    """Monotonic seconds from 0 and a wall clock from ``start_ms`` (default 2026-01-01T00:00Z, a Thursday)."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.t = 0.0
        self.start_ms = start_ms

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 1e-4)  # time always moves on, as it does for real

    def wall_ms(self) -> int:
        return self.start_ms + int(self.t * 1000)


@dataclass
class FakeCluster:
    log: dict[str, list[tuple[bytes, bytes, int, int]]] = field(default_factory=lambda: {t: [] for t in CONTRACTS})
    clock: FakeClock | None = None  # when set, each record also keeps the wall time it was sent at
    order: list[str] = field(default_factory=list)  # the topic of each record produced, in order

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
        self.cluster.order.append(topic)
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
    def __init__(self, value: bytes, topic: str = TOPICS.priced) -> None:
        self._value = value
        self._topic = topic

    def topic(self) -> str:
        return self._topic

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value


class FakeEngine:
    """A consumer of priced-events backed by a fake engine: it prices each new request at
    ``multiplier`` x the initial list price (of the product in copy 0), one poll later, and ignores every
    ``skip_every``-th."""

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
        price = int(round(self.list_price.get(req["product_id"].split(COPY_SEPARATOR)[0], 1000) * self.multiplier))
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




class FakeRecommender(FakeEngine):
    """The fake engine that also answers recommend requests: ``slate(context product id of copy 0)`` (ids of copy 0,
    moved to the request's copy), at ``multiplier`` x their initial list price, one poll later."""

    def __init__(self, cluster: FakeCluster, scenario: Scenario, *, multiplier: float,
                 slate: Callable[[str], list[str]]) -> None:  # fmt: skip
        super().__init__(cluster, scenario, multiplier=multiplier, skip_every=10**9)
        self.extra = []
        self.slate = slate
        self.rec_seen = 0
        self.recommendations: dict[str, dict[str, Any]] = {}

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list[Msg]:
        out = super().consume(num_messages, timeout)
        new = self.cluster.log[TOPICS.recommend_requests][self.rec_seen :]
        self.rec_seen += len(new)
        for _, value, _, _ in new:
            req = decode(Contract.RECOMMEND_REQUEST, value).record  # type: ignore[union-attr]
            base, _, copy = req["context_product_id"].partition(COPY_SEPARATOR)
            ids = [p + (COPY_SEPARATOR + copy if copy else "") for p in self.slate(base)][: req["k"]]
            items = [{"product_id": p, "price_minor": int(round(self.list_price[p.split(COPY_SEPARATOR)[0]] * self.multiplier)),
                      "reference_price_minor": self.list_price[p.split(COPY_SEPARATOR)[0]], "currency": "EUR",
                      "expected_conversion": 0.1, "expected_profit_minor": 1, "reason_codes": [], "explored": False,
                      "propensity": 1.0} for p in ids]  # fmt: skip
            record = {"request_id": req["request_id"], "user_id": req["user_id"], "items": items, "model_version": "fake/1",
                      "fallback_used": False, "request_time": req["event_time"], "answered_time": req["event_time"],
                      "feature_spec_version": None}  # fmt: skip
            self.recommendations[req["request_id"]] = record
            out.append(Msg(encode(Contract.RECOMMENDATION, record), TOPICS.recommendations))
        return out


def simulator(scenario: Scenario, cluster: FakeCluster, clock: FakeClock, **kw: Any) -> LiveSimulator:
    """A LiveSimulator on the fakes: the fake producer and clocks, a 1 s answer timeout, run id ``t1``."""
    args: dict[str, Any] = dict(kafka_config={"bootstrap.servers": "fake:9092"}, duration_s=20, answer_timeout_s=1.0,
                                run_id="t1", producer=FakeProducer(cluster), clock=clock, wall_clock_ms=clock.wall_ms,
                                sleep=clock.sleep)  # fmt: skip
    args.update(kw)
    return LiveSimulator(scenario, **args)


def views_per_session_dispersion(views_per_session: float) -> float:
    """E[N^2] / E[N] for N = 1 + Poisson(views_per_session - 1) views per session.

    Sessions arrive as a Poisson process, so a count of views (or of views in any group of sessions)
    over a window is compound Poisson: its variance is at most its mean times this (equal when whole
    sessions fall into the window, less when the window cuts them). Tolerances are derived from it.
    """
    m = views_per_session - 1
    return (m + (1 + m) ** 2) / (1 + m)
