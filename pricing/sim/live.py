"""Live traffic for the running engine: paced events to Kafka, and a closed loop on its answers.

``LiveSimulator`` produces behaviour, market and price-request events at a target
rate (token bucket), each with Kafka timestamp = payload ``event_time`` and key =
``product_id``, because the engine takes event time from the Kafka timestamp.

Closed loop (default): it reads ``priced-events`` (read_committed, a consumer group
unique to the run, partitions assigned at their end offsets before the first request
so no answer is missed and nothing old is read). For each answer to one of its own
requests the shopper views the offered price and buys with the *true* probability at
exactly that price; the view, cart, purchase (``price_seen_minor`` = offered price)
and the resulting stock change are produced as events. The report gives realised
revenue, profit and conversion, the expected profit the list price would have made
on the same requests, and how many requests got no answer within the timeout.

Open loop (``closed_loop=False``): no consumer; shoppers see the historical policy's
price at once (``policies.historical_prices``, as in ``pricing simulate history``).

Market dynamics are the world's model (``world.Dynamics``), moved one event at a time
(each market change is one update whose kind is drawn with the model's daily rates
as weights), since a live run lasts minutes, not days.

Late events: a share of the paced window's behaviour and market events is *produced*
late (held back, then sent with their original event_time), so consumers see them out
of order. Those still held back when the window closes are sent then, not during the
drain, and the drain's own events are never late.
Price requests are never late: a storefront asks synchronously.

Kafka clients are injectable (``producer=``, ``consumer=``), as are the clocks, so
the pacing and the loop are unit-tested without a broker.
"""

from __future__ import annotations

import heapq
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, TextIO

import numpy as np

from pricing.config import TopicsSettings
from pricing.sim._progress import Progress
from pricing.sim.market import STREAM_LIVE, MarketState, build_market, sample_products
from pricing.sim.policies import historical_prices
from pricing.sim.scenario import Scenario
from pricing.sim.world import CHANNELS, Dynamics
from pricing_udfs.serde import Contract, decode, encode, money_kinds

_MONEY = money_kinds()


class LiveError(RuntimeError):
    """The live run cannot start or continue; the message is one line and says what to do."""


@dataclass(frozen=True)
class LiveTopics:
    """Topic names the simulator writes to and reads from; ``LiveTopics.of`` takes them from the settings."""

    behaviour: str
    market: str
    requests: str
    priced: str

    @classmethod
    def of(cls, topics: TopicsSettings | None = None) -> "LiveTopics":
        """The names in ``topics`` (``settings.kafka.topics``); without it, the project's default names."""
        t = topics if topics is not None else TopicsSettings()
        return cls(behaviour=t.behaviour.name, market=t.market.name, requests=t.requests.name, priced=t.priced.name)


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` the simulator uses."""

    def produce(self, topic: str, value: bytes | None = ..., key: bytes | None = ..., **kwargs: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...


class ConsumerLike(Protocol):
    """The part of ``confluent_kafka.Consumer`` the simulator uses."""

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...

    def get_watermark_offsets(self, partition: Any, timeout: float = ..., cached: bool = ...) -> Any: ...

    def assign(self, partitions: list[Any]) -> None: ...

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LiveReport:
    """The outcome of one live run (money in minor units of ``currency``)."""

    closed_loop: bool
    target_rate: float
    window_s: float  # length of the paced window actually run
    paced_events: int  # events produced in the paced window (the snapshot excluded)
    snapshot_events: int  # initial market state, produced before pacing starts
    produced_by_topic: dict[str, int]  # everything, including snapshot and drain
    requests: int
    answered: int
    unanswered: int  # no priced answer within the timeout
    late_answers: int  # answers that came after their request had timed out
    invalid_answers: int  # undecodable priced events, or non-positive prices for our requests
    views: int
    purchases: int
    expected_purchases: float  # sum of the true purchase probabilities at the offered prices
    revenue_minor: int
    profit_minor: int
    expected_profit_minor: float  # at the offered prices
    expected_profit_at_list_minor: float  # had the same shoppers been offered the list price
    currency: str
    delivery_errors: int
    answer_latency_p50_ms: float
    answer_latency_p95_ms: float
    answer_latency_p99_ms: float = 0.0
    first_answer_s: float | None = None  # from the start of the paced window; the engine's warm-up shows here
    unanswered_sent_s: tuple[float, float] | None = None  # first and last send time of those, into the window
    interrupted: bool = False

    @property
    def achieved_rate(self) -> float:
        return self.paced_events / self.window_s if self.window_s > 0 else 0.0

    @property
    def conversion(self) -> float:
        return self.purchases / self.views if self.views else 0.0

    def summary(self) -> str:
        cur = self.currency
        lines = [
            f"achieved rate: {self.achieved_rate:,.1f} events/s (target {self.target_rate:,.1f}) over "
            f"{self.window_s:.1f} s; {self.paced_events:,} paced events + {self.snapshot_events:,} snapshot events",
            "produced: " + ", ".join(f"{t} {n:,}" for t, n in self.produced_by_topic.items()),
        ]
        if self.closed_loop:
            unanswered = f"{self.unanswered:,}"
            if self.unanswered_sent_s is not None:
                unanswered += " (sent {:,.1f}-{:,.1f} s into the window)".format(*self.unanswered_sent_s)
            lines.append(
                f"requests: {self.requests:,}; answered {self.answered:,}; no answer within timeout "
                f"{unanswered}; late answers {self.late_answers:,}; invalid answers {self.invalid_answers:,}"
            )
            if self.answered:
                lines.append(
                    f"answer latency: p50 {self.answer_latency_p50_ms:,.0f} ms, p95 {self.answer_latency_p95_ms:,.0f} ms, "
                    f"p99 {self.answer_latency_p99_ms:,.0f} ms; "
                    f"first answer {self.first_answer_s:,.1f} s into the window"
                )
        lines += [
            f"conversion: {self.conversion:.2%} ({self.purchases:,} purchases / {self.views:,} views; "
            f"expected {self.expected_purchases:,.1f})",
            f"revenue: {self.revenue_minor / 100:,.2f} {cur}; profit: {self.profit_minor / 100:,.2f} {cur} "
            f"(expected {self.expected_profit_minor / 100:,.2f}; at list price {self.expected_profit_at_list_minor / 100:,.2f})",
        ]
        if self.delivery_errors:
            lines.append(f"delivery errors: {self.delivery_errors:,}")
        if self.interrupted:
            lines.append("interrupted before the end of the run")
        return "\n".join(lines)


@dataclass
class _Pending:
    user: int
    product: int
    sent_at: float
    session: str


@dataclass
class _Totals:
    produced: dict[str, int] = field(default_factory=dict)
    paced: int = 0
    snapshot: int = 0
    requests: int = 0
    answered: int = 0
    unanswered: int = 0
    late_answers: int = 0
    invalid_answers: int = 0
    views: int = 0
    purchases: int = 0
    expected_purchases: float = 0.0
    revenue: int = 0
    profit: int = 0
    expected_profit: float = 0.0
    expected_profit_at_list: float = 0.0
    delivery_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_answer_at: float | None = None
    unanswered_sent_at: list[float] = field(default_factory=list)


class _LiveMarket:
    """Mutable market state for a live run: the world's ``Dynamics``, moved one event at a time."""

    def __init__(self, market: MarketState, rng: np.random.Generator) -> None:
        sc = market.scenario
        self.m = market
        self.model = model = Dynamics(market)
        self.rng = rng
        self.list_price = market.list_price_minor.astype(np.int64).copy()
        self.cost = market.unit_cost_minor.astype(np.int64).copy()
        self.exists = model.exists
        self.level = model.initial_log_price()
        self.log_price = self.level.copy()
        self.war_left = np.zeros(market.n_products, np.int64)
        self.war_factor = np.ones(market.n_products)
        self.promo_bp = np.zeros(market.n_products, np.int64)
        self.stock = market.capacity.astype(np.int64).copy()
        self.with_comp = np.flatnonzero(market.n_competitors > 0)
        c = sc.competitors
        rates = model.daily_rates()
        self.kinds = tuple(rates)
        daily = np.array(list(rates.values()))
        self.kind_p = daily / daily.sum() if daily.sum() > 0 else np.array([k == "inventory" for k in self.kinds], float)
        mean_comp = max(market.n_competitors[self.with_comp].mean(), 1.0) if self.with_comp.size else 1.0
        self.p_war = min(1.0, c.price_war_per_day / (mean_comp * c.updates_per_day))
        self.p_shift = min(1.0, c.step_changes_per_day / c.updates_per_day)

    def competitor_prices(self, j: int) -> list[tuple[int, int]]:
        comps = np.flatnonzero(self.exists[j])
        prices = self.model.competitor_prices(self.log_price[j, comps], self.war_factor[j]).astype(np.int64)
        return list(zip(comps.tolist(), prices.tolist()))

    def competitor_min(self, products: np.ndarray) -> np.ndarray:
        prices = self.model.competitor_prices(self.log_price[products], self.war_factor[products, None])
        low = np.where(self.exists[products], prices, np.inf).min(axis=1)
        return np.where(np.isfinite(low), low, 0).astype(np.int64)

    def snapshot(self) -> list[tuple[int, str, int, int]]:
        """(product, kind, competitor, value) for the full current state."""
        out: list[tuple[int, str, int, int]] = []
        for j in range(self.m.n_products):
            out += [(j, "list_price", -1, int(self.list_price[j])), (j, "cost", -1, int(self.cost[j])),
                    (j, "inventory", -1, int(self.stock[j]))]  # fmt: skip
            out += [(j, "competitor_price", c, p) for c, p in self.competitor_prices(j)]
            if self.promo_bp[j]:
                out.append((j, "promotion", -1, int(self.promo_bp[j])))
        return out

    def step(self) -> list[tuple[int, str, int, int]]:
        """One market change drawn with the model's daily rates as weights; may yield several events (a price war)."""
        sc = self.m.scenario
        rng = self.rng
        kind = self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))]
        if kind == "competitor_price":
            j = int(rng.choice(self.with_comp))
            if self.war_left[j] > 0:
                self.war_left[j] -= 1
                if self.war_left[j] == 0:
                    self.war_factor[j] = 1.0
                    return [(j, kind, c, p) for c, p in self.competitor_prices(j)]
            elif rng.random() < self.p_war:
                c = sc.competitors
                self.war_factor[j] = self.model.war_factor(rng)
                days = rng.uniform(c.price_war_duration_hours.low, c.price_war_duration_hours.high) / 24
                self.war_left[j] = max(1, int(round(days * c.updates_per_day * self.m.n_competitors[j])))
                return [(j, kind, c_, p) for c_, p in self.competitor_prices(j)]
            comp = int(rng.choice(np.flatnonzero(self.exists[j])))
            if rng.random() < self.p_shift:
                self.level[j, comp] += rng.normal(0, sc.competitors.step_change_sd)
            noise = rng.normal(0, self.model.update_sd)
            self.log_price[j, comp] = self.model.revert(self.log_price[j, comp], self.level[j, comp], noise)
            return [(j, kind, c, p) for c, p in self.competitor_prices(j) if c == comp]
        j = int(rng.integers(self.m.n_products))
        if kind == "promotion":
            self.promo_bp[j] = 0 if self.promo_bp[j] else int(self.model.promotion_bp(rng))
            return [(j, kind, -1, int(self.promo_bp[j]))]
        if kind == "list_price":
            self.list_price[j] = int(self.model.drift(self.list_price[j], rng.normal(0, sc.catalogue.list_price_change_sd)))
            return [(j, kind, -1, int(self.list_price[j]))]
        if kind == "cost":
            self.cost[j] = int(self.model.drift(self.cost[j], rng.normal(0, sc.catalogue.cost_change_sd)))
            return [(j, kind, -1, int(self.cost[j]))]
        self.stock[j] = self.m.capacity[j]
        return [(j, "inventory", -1, int(self.stock[j]))]

    def probability(self, users: np.ndarray, products: np.ndarray, price: np.ndarray) -> np.ndarray:
        """True purchase probability at ``price`` given the current state."""
        return self.m.probability(
            user_idx=users, product_idx=products, offered_price=price, reference_price=self.list_price[products],
            competitor_min=self.competitor_min(products), promotion_active=self.promo_bp[products] > 0,
            inventory=self.stock[products],
        )  # fmt: skip


class LiveSimulator:
    """Paced producer of simulated traffic with an optional closed loop on the engine's answers.

    ``kafka_config`` is a confluent-kafka config (at least ``bootstrap.servers``);
    producer and consumer settings the loop needs are added to it. ``topics`` are the
    settings' topics (``settings.kafka.topics``) or ``LiveTopics``; by default the
    project's default names. Call ``run()``
    once; ``stop()`` (from another thread or a signal handler) ends the paced window early.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        kafka_config: Mapping[str, Any],
        topics: LiveTopics | TopicsSettings | None = None,
        rate: float,
        duration_s: float,
        closed_loop: bool = True,
        answer_timeout_s: float = 30.0,
        late_share: float | None = None,
        market_share: float = 0.1,
        seed: int | None = None,
        run_id: str | None = None,
        progress: TextIO | None = None,
        producer: ProducerLike | None = None,
        consumer: ConsumerLike | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        tick_s: float = 0.01,
        connect_timeout_s: float = 10.0,
        market: MarketState | None = None,
    ) -> None:
        if rate <= 0 or duration_s <= 0 or answer_timeout_s < 0:
            raise ValueError("rate and duration_s must be positive, answer_timeout_s non-negative")
        if not 0 <= market_share < 1:
            raise ValueError("market_share must lie in [0, 1)")
        self.scenario = scenario
        self.kafka_config = dict(kafka_config)
        self.topics = topics if isinstance(topics, LiveTopics) else LiveTopics.of(topics)
        self.rate = float(rate)
        self.duration_s = float(duration_s)
        self.closed_loop = closed_loop
        self.answer_timeout_s = float(answer_timeout_s)
        self.late_share = scenario.lateness.share if late_share is None else float(late_share)
        if not 0 <= self.late_share < 1:
            raise ValueError("late_share must lie in [0, 1)")
        self.market_share = market_share
        self.run_id = run_id or uuid.uuid4().hex[:10]
        self.tick_s = tick_s
        self.connect_timeout_s = connect_timeout_s
        self._progress = Progress(progress, every_s=1.0, clock=clock)
        self._producer = producer
        self._consumer = consumer
        self._clock = clock
        self._wall_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._sleep = sleep
        self._stop = False
        seed = scenario.seed if seed is None else seed
        self._rng = np.random.default_rng([seed, STREAM_LIVE, int(self.run_id.encode().hex(), 16) % (2**63)])
        self._market = market or build_market(scenario)
        self._state = _LiveMarket(self._market, self._rng)
        self._activity = np.cumsum(self._market.user_sessions_per_day)
        self._pending: dict[str, _Pending] = {}
        self._expired: set[str] = set()
        self._late: list[tuple[float, int, str, Contract, str, dict[str, Any]]] = []
        self._seq = 0
        self._in_window = False
        self._window_start = 0.0
        self._t = _Totals()

    # ---------------------------------------------------------------- public

    def stop(self) -> None:
        """End the paced window at the next tick (the run still drains and reports)."""
        self._stop = True

    def run(self) -> LiveReport:
        """Connect, produce the market snapshot, pace traffic for ``duration_s``, drain, and report."""
        interrupted = False
        try:
            self._connect()
            self._snapshot()
            window_start = self._window_start = self._clock()
            try:
                self._paced_window(window_start)
            except KeyboardInterrupt:
                interrupted = True
            window = self._clock() - window_start
            self._in_window = False
            # Held-back events go out now: sent during the drain, a stale event would wake an
            # engine input that had gone idle and hold its event-time clock back (see _drain).
            self._release_late(float("inf"))
            try:
                self._drain(deadline=self._clock() + (0.0 if interrupted else self.answer_timeout_s))
            except KeyboardInterrupt:
                interrupted = True
            self._expire(float("inf"))
            self._progress.clear()
            left = self._producer.flush(30.0)  # type: ignore[union-attr]
            self._t.delivery_errors += int(left or 0)
        finally:
            if self._consumer is not None:
                self._consumer.close()
        return self._report(window, interrupted)

    # ---------------------------------------------------------------- setup

    def _connect(self) -> None:
        bootstrap = self.kafka_config.get("bootstrap.servers", "?")
        from confluent_kafka import KafkaException

        if self._producer is None:
            from confluent_kafka import Producer

            conf = {"linger.ms": 5, "acks": "all", "enable.idempotence": True, "log_level": 2,
                    "error_cb": self._on_error, **self.kafka_config}  # fmt: skip
            self._producer = Producer(conf)
        try:
            meta = self._producer.list_topics(timeout=self.connect_timeout_s)
        except KafkaException as exc:
            raise LiveError(f"cannot reach Kafka at {bootstrap} within {self.connect_timeout_s:g} s: {_one_line(exc)}") from None
        needed = [self.topics.behaviour, self.topics.market, self.topics.requests]
        if self.closed_loop:
            needed.append(self.topics.priced)
        missing = [t for t in needed if t not in meta.topics or getattr(meta.topics[t], "error", None) is not None]
        if missing:
            raise LiveError(f"topic(s) {', '.join(missing)} not found on {bootstrap}; create them first (pricing topics create)")
        if not self.closed_loop:
            return
        if self._consumer is None:
            from confluent_kafka import Consumer

            conf = {"group.id": f"pricing-sim-{self.run_id}", "isolation.level": "read_committed",
                    "enable.auto.commit": False, "auto.offset.reset": "latest", "log_level": 2,
                    "error_cb": self._on_error, **self.kafka_config}  # fmt: skip
            self._consumer = Consumer(conf)
        from confluent_kafka import TopicPartition

        partitions = sorted(meta.topics[self.topics.priced].partitions)
        try:
            assignment = []
            for p in partitions:
                tp = TopicPartition(self.topics.priced, p)
                offsets = self._consumer.get_watermark_offsets(tp, timeout=self.connect_timeout_s)
                if offsets is None:
                    raise LiveError(f"timed out reading the end offsets of {self.topics.priced} on {bootstrap}")
                assignment.append(TopicPartition(self.topics.priced, p, offsets[1]))
            self._consumer.assign(assignment)
        except KafkaException as exc:
            raise LiveError(f"cannot read {self.topics.priced} on {bootstrap}: {_one_line(exc)}") from None

    def _on_error(self, err: Any) -> None:
        """librdkafka reports transient errors here; they surface as timeouts or delivery errors."""

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._t.delivery_errors += 1

    # ---------------------------------------------------------------- producing

    def _produce(self, topic: str, contract: Contract, key: str, record: dict[str, Any]) -> int:
        """Send now, or (for the late share, in the paced window) hold back and send later with the same event_time."""
        if self._in_window and self.late_share and self._rng.random() < self.late_share:
            late = self.scenario.lateness
            delay_s = min(self._rng.exponential(max(late.mean_ms, 1.0)), late.max_ms) / 1000
            self._seq += 1
            heapq.heappush(self._late, (self._clock() + delay_s, self._seq, topic, contract, key, record))
            return 0
        return self._send(topic, contract, key, record)

    def _send(self, topic: str, contract: Contract, key: str, record: dict[str, Any]) -> int:
        value = encode(contract, record)
        while True:
            try:
                self._producer.produce(  # type: ignore[union-attr]
                    topic, value=value, key=key.encode(), timestamp=record["event_time"], on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self._producer.poll(0.05)  # type: ignore[union-attr]
        self._t.produced[topic] = self._t.produced.get(topic, 0) + 1
        if self._in_window:
            self._t.paced += 1
        return 1

    def _market_record(self, j: int, kind: str, comp: int, value: int, now_ms: int) -> dict[str, Any]:
        return {
            "product_id": self._market.product_ids[j],
            "kind": kind,
            "competitor_id": self._market.competitor_ids[comp] if comp >= 0 else None,
            "value": int(value),
            "currency": self.scenario.currency if kind in _MONEY else "",
            "event_time": now_ms,
        }

    def _behaviour(
        self, *, user: int, product: int, kind: str, price: int, session: str, t_ms: int, request_id: str | None = None
    ) -> int:
        self._seq += 1
        record = {
            "event_id": f"live-{self.run_id}-e{self._seq}",
            "user_id": self._market.user_ids[user],
            "product_id": self._market.product_ids[product],
            "type": kind,
            "price_seen_minor": int(price),
            "currency": self.scenario.currency,
            "quantity": 1,
            "session_id": session,
            "event_time": t_ms,
            "request_id": request_id,
        }
        return self._produce(self.topics.behaviour, Contract.BEHAVIOUR_EVENT, record["product_id"], record)

    def _snapshot(self) -> None:
        now = self._wall_ms()
        for j, kind, comp, value in self._state.snapshot():
            rec = self._market_record(j, kind, comp, value, now)
            self._t.snapshot += self._send(self.topics.market, Contract.MARKET_EVENT, rec["product_id"], rec)
        self._producer.poll(0)  # type: ignore[union-attr]

    # ---------------------------------------------------------------- the loop

    def _paced_window(self, start: float) -> None:
        end = start + self.duration_s
        tokens, last = 0.0, start
        burst = max(1.0, self.rate * 0.05)
        per_unit = 1.0 if self.closed_loop else 2.2  # running estimate of events per generated unit
        self._in_window = True
        while not self._stop:
            now = self._clock()
            if now >= end:
                break
            tokens = min(burst, tokens + (now - last) * self.rate)
            last = now
            tokens -= self._poll_answers(now)
            tokens -= self._release_late(now)
            self._expire(now)
            if tokens >= 1:
                units = max(1, int(tokens / per_unit))
                made = self._generate(units)
                tokens -= made
                per_unit = 0.9 * per_unit + 0.1 * (made / units)
            self._producer.poll(0)  # type: ignore[union-attr]
            self._show(now - start)
            next_tick = now + self.tick_s
            self._sleep(max(0.0, min(next_tick, end) - self._clock()))
        self._in_window = False

    def _drain(self, *, deadline: float) -> None:
        """After the window: wait for outstanding answers (up to the timeout), then stop.

        Only the shoppers' reactions to answers are produced here. The engine answers a request
        once its event time has passed it on every input that is not idle; an input that went
        quiet is idle after the engine's idle timeout, but one old record makes it active
        again, and its clock then holds the engine's back for another idle timeout. So late
        events are not released here; they were all sent when the window closed.
        """
        while self._pending and self._clock() < deadline:
            now = self._clock()
            self._poll_answers(now)
            self._expire(now)
            self._producer.poll(0)  # type: ignore[union-attr]
            self._sleep(self.tick_s)

    def _generate(self, units: int) -> int:
        """``units`` new things happen: market changes or shoppers asking for a price."""
        now = self._wall_ms()
        n_market = int(self._rng.binomial(units, self.market_share))
        made = 0
        for _ in range(n_market):
            for j, kind, comp, value in self._state.step():
                rec = self._market_record(j, kind, comp, value, now)
                made += self._produce(self.topics.market, Contract.MARKET_EVENT, rec["product_id"], rec)
        n = units - n_market
        if n == 0:
            return made
        users = np.minimum(np.searchsorted(self._activity, self._rng.random(n) * self._activity[-1], side="right"),
                           self._market.n_users - 1)  # fmt: skip
        products = sample_products(self._market, users, rng=self._rng)
        channels = self._rng.choice(len(CHANNELS), size=n, p=self._channel_p())
        if self.closed_loop:
            for u, j, c in zip(users.tolist(), products.tolist(), channels.tolist()):
                self._seq += 1
                rid = f"live-{self.run_id}-r{self._seq}"
                rec = {"request_id": rid, "user_id": self._market.user_ids[u],
                       "product_id": self._market.product_ids[j], "channel": CHANNELS[c], "event_time": now}  # fmt: skip
                made += self._send(self.topics.requests, Contract.PRICE_REQUEST, rec["product_id"], rec)
                self._pending[rid] = _Pending(user=u, product=j, sent_at=self._clock(), session=f"live-{self.run_id}-s{u}")
                self._t.requests += 1
            return made
        hp = self.scenario.historical_policy
        prices = historical_prices(
            self._state.list_price[products], self._state.promo_bp[products], multiplier=hp.multiplier,
            apply_promotion_discount=hp.apply_promotion_discount, rng=self._rng,
        )  # fmt: skip
        for u, j, c, p in zip(users.tolist(), products.tolist(), channels.tolist(), prices.tolist()):
            self._seq += 1
            rid = f"live-{self.run_id}-r{self._seq}"
            rec = {"request_id": rid, "user_id": self._market.user_ids[u], "product_id": self._market.product_ids[j],
                   "channel": CHANNELS[c], "event_time": now}  # fmt: skip
            made += self._send(self.topics.requests, Contract.PRICE_REQUEST, rec["product_id"], rec)
            self._t.requests += 1
            made += self._shopper_sees(u, j, p, f"live-{self.run_id}-s{u}", now)
        return made

    def _channel_p(self) -> np.ndarray:
        w = np.array([self.scenario.funnel.channels.get(c, 0.0) for c in CHANNELS])
        return w / w.sum()

    def _poll_answers(self, now: float) -> int:
        """Read priced answers; each of ours becomes a shopper decision. Returns events produced."""
        if self._consumer is None:
            return 0
        made = 0
        for msg in self._consumer.consume(num_messages=1000, timeout=0):
            if msg.error() is not None:
                continue
            decoded = decode(Contract.PRICED_EVENT, msg.value())
            if not decoded.ok:
                self._t.invalid_answers += 1
                continue
            answer = decoded.record  # type: ignore[union-attr]
            rid = answer["request_id"]
            pending = self._pending.pop(rid, None)
            if pending is None:
                if rid in self._expired:
                    self._expired.discard(rid)
                    self._t.late_answers += 1
                continue  # another run's or an unknown request
            price = int(answer["price_minor"])
            if price <= 0:
                self._t.invalid_answers += 1
                continue
            self._t.answered += 1
            if self._t.first_answer_at is None:
                self._t.first_answer_at = now
            self._t.latencies_ms.append((now - pending.sent_at) * 1000)
            made += self._shopper_sees(pending.user, pending.product, price, pending.session, self._wall_ms(), request_id=rid)
        return made

    def _shopper_sees(
        self, user: int, product: int, price: int, session: str, t_ms: int, *, request_id: str | None = None
    ) -> int:
        """The shopper views ``price`` and buys with the true probability; produce what happened."""
        st = self._state
        u, j = np.array([user]), np.array([product])
        prob = float(st.probability(u, j, np.array([price]))[0])
        cost = int(st.cost[product])
        at_list = float(st.probability(u, j, st.list_price[j])[0])
        t = self._t
        t.views += 1
        t.expected_purchases += prob
        t.expected_profit += prob * (price - cost)
        t.expected_profit_at_list += at_list * (int(st.list_price[product]) - cost)
        made = self._behaviour(user=user, product=product, kind="view", price=price, session=session, request_id=request_id, t_ms=t_ms)
        draw = self._rng.random(3)
        f = self.scenario.funnel
        if draw[0] < prob:
            made += self._behaviour(user=user, product=product, kind="add_to_cart", price=price, session=session, request_id=request_id, t_ms=t_ms + 1)
            made += self._behaviour(user=user, product=product, kind="purchase", price=price, session=session, request_id=request_id, t_ms=t_ms + 2)
            t.purchases += 1
            t.revenue += price
            t.profit += price - cost
            st.stock[product] -= 1
            rec = self._market_record(product, "inventory", -1, int(st.stock[product]), t_ms + 2)
            made += self._produce(self.topics.market, Contract.MARKET_EVENT, rec["product_id"], rec)
            if draw[1] < f.review_rate:
                made += self._behaviour(user=user, product=product, kind="review", price=price, session=session, request_id=request_id, t_ms=t_ms + 3)
        elif st.stock[product] > 0 and draw[2] < f.cart_abandon:
            made += self._behaviour(user=user, product=product, kind="add_to_cart", price=price, session=session, request_id=request_id, t_ms=t_ms + 1)
        return made

    def _release_late(self, now: float) -> int:
        made = 0
        while self._late and self._late[0][0] <= now:
            _, _, topic, contract, key, record = heapq.heappop(self._late)
            made += self._send(topic, contract, key, record)
        return made

    def _expire(self, now: float) -> None:
        cutoff = now - self.answer_timeout_s
        while self._pending:
            rid, p = next(iter(self._pending.items()))
            if p.sent_at > cutoff:
                break
            del self._pending[rid]
            self._expired.add(rid)
            self._t.unanswered += 1
            self._t.unanswered_sent_at.append(p.sent_at)

    def _show(self, elapsed: float) -> None:
        t = self._t
        rate = t.paced / elapsed if elapsed > 0 else 0.0
        text = (
            f"[live] {elapsed:5.1f}/{self.duration_s:g} s | {rate:,.0f} ev/s (target {self.rate:,.0f}) | "
            f"requests {t.requests:,}"
        )
        if self.closed_loop:
            text += f" answered {t.answered:,} pending {len(self._pending):,} no-answer {t.unanswered:,}"
        text += f" | purchases {t.purchases:,}"
        self._progress.update(text)

    def _report(self, window: float, interrupted: bool) -> LiveReport:
        t = self._t
        lat = np.asarray(t.latencies_ms) if t.latencies_ms else np.zeros(1)
        return LiveReport(
            closed_loop=self.closed_loop,
            target_rate=self.rate,
            window_s=window,
            paced_events=t.paced,
            snapshot_events=t.snapshot,
            produced_by_topic=dict(t.produced),
            requests=t.requests,
            answered=t.answered,
            unanswered=t.unanswered,
            late_answers=t.late_answers,
            invalid_answers=t.invalid_answers,
            views=t.views,
            purchases=t.purchases,
            expected_purchases=t.expected_purchases,
            revenue_minor=t.revenue,
            profit_minor=t.profit,
            expected_profit_minor=t.expected_profit,
            expected_profit_at_list_minor=t.expected_profit_at_list,
            currency=self.scenario.currency,
            delivery_errors=t.delivery_errors,
            answer_latency_p50_ms=float(np.percentile(lat, 50)),
            answer_latency_p95_ms=float(np.percentile(lat, 95)),
            answer_latency_p99_ms=float(np.percentile(lat, 99)),
            first_answer_s=None if t.first_answer_at is None else t.first_answer_at - self._window_start,
            unanswered_sent_s=(min(t.unanswered_sent_at) - self._window_start, max(t.unanswered_sent_at) - self._window_start)
            if t.unanswered_sent_at else None,
            interrupted=interrupted,
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
