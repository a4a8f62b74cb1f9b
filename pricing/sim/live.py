"""Live traffic for the running engine: the scenario's market to Kafka, and a closed loop on its answers.

``LiveSimulator`` serves the same market ``pricing simulate history`` writes for its
scenario, at that market's own intensity, in wall-clock time (``pricing.sim.traffic``):
shopper sessions arrive as a Poisson process at every shopper's ``sessions_per_day`` x the
hour-of-day and weekday seasonality at the wall clock, each with its views at the funnel's
gaps, and market changes happen at ``Dynamics.daily_rates``. A rate is a number of copies of
that market side by side (same catalogue, shoppers and hidden truth; copy 0 has the
history's ids), never a faster clock: per product and per shopper the traffic stays what
the demand model learned from. ``intensity`` makes every shopper more or less active.
Every record has Kafka timestamp = payload ``event_time`` (the wall clock) and key =
``product_id``, because the engine takes event time from the Kafka timestamp.

Start: without ``start_state`` the market starts in the scenario's initial state and a
snapshot of it (every list price, cost, stock level, competitor price and promotion) goes
out first. With ``start_state`` (``History.end_state``) it continues that history: the
history's state is already in the topics, so copy 0 sends no snapshot (a burst of
competitor prices would distort the engine's competitor windows); copies >= 1, which the
history never had, still get theirs. Sessions already under way when the run starts keep
viewing, so the traffic starts in the steady state.

Closed loop (default): it reads ``priced-events`` (read_committed, a consumer group
unique to the run, partitions assigned at their end offsets before the first request
so no answer is missed and nothing old is read). For each answer to one of its own
requests the shopper views the offered price and buys with the *true* probability at
exactly that price; the view, cart, purchase (``price_seen_minor`` = offered price, the
``request_id`` it answers) and the resulting stock change are produced as events. The
report gives realised revenue, profit and conversion, the expected profit the list price
would have made on the same requests, and how many requests got no answer within the timeout.

Recommendations (``recommend_share`` > 0, closed loop only): that share of the price requests also sends a
``RecommendRequest`` (the viewed product as context, ``recommend_k`` items) to the recommend-requests topic
and reads the job's ``Recommendation`` from the recommendations topic. The shopper examines the slate with
the slate model (``pricing.sim.slate``: position bias, at most one purchase, the true probability at the
shown price, out-of-stock items not bought) and a purchase is produced as behaviour events (view, cart,
purchase with the recommendation's request id) and a stock change, as for prices. Beside it, on the same
shopper at the same moment with the same random numbers (one examination draw per position, one purchase
draw per product, drawn when the request is sent), the category-popularity slate at list price: the
``recommend_k`` products of the context's category with the highest true popularity (``MarketState.
popularity``), context excluded; it is not shown, only scored: its expected profit from the true
probabilities and the purchase those draws would have made. The report gives profit per recommendation
request of both (realised and expected) and their ratio.

Open loop (``closed_loop=False``): no consumer; the shopper views the historical policy's
price (``policies.historical_prices``, as in ``pricing simulate history``) the request
lead after asking.

Late events: a share of the window's behaviour and market events is *produced* late (held
back, then sent with their original event_time), so consumers see them out of order. Those
still held back when the window closes are sent then, not during the drain, and the
drain's own events are never late. Price requests are never late: a storefront asks
synchronously.

Kafka clients are injectable (``producer=``, ``consumer=``), as are the clocks, so the
process and the loop are unit-tested without a broker.
"""

from __future__ import annotations

import bisect
import heapq
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, TextIO

import numpy as np

from pricing.config import TopicsSettings
from pricing.sim._progress import Progress
from pricing.sim.market import STREAM_LIVE, MarketState, build_market, catalogue_entries
from pricing.sim.policies import historical_prices
from pricing.sim.scenario import Scenario
from pricing.sim.slate import NO_PURCHASE, PositionBias, purchase_probabilities, simulate
from pricing.sim.traffic import Shoppers, TrafficPlan, View, copy_id, copy_ids, plan_traffic
from pricing.sim.world import CHANNELS, Dynamics, MarketSnapshot
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
    catalogue: str | None = None  # None: no catalogue entries are produced
    recommend_requests: str | None = None  # None: no recommendation requests
    recommendations: str | None = None

    @classmethod
    def of(cls, topics: TopicsSettings | None = None) -> "LiveTopics":
        """The names in ``topics`` (``settings.kafka.topics``); without it, the project's default names."""
        t = topics if topics is not None else TopicsSettings()
        return cls(behaviour=t.behaviour.name, market=t.market.name, requests=t.requests.name, priced=t.priced.name,
                   catalogue=t.catalogue.name, recommend_requests=t.recommend_requests.name,
                   recommendations=t.recommendations.name)  # fmt: skip


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
    target_rate: float  # the rate asked for (copies x the natural rate when copies were given)
    window_s: float  # length of the window actually run
    paced_events: int  # events produced in the window (the snapshot excluded)
    snapshot_events: int  # initial market state, produced before the window starts
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
    first_answer_s: float | None = None  # from the start of the window; the engine's warm-up shows here
    unanswered_sent_s: tuple[float, float] | None = None  # first and last send time of those, into the window
    interrupted: bool = False
    copies: int = 1  # copies of the market served side by side
    intensity: float = 1.0  # every shopper's session rate x this
    natural_rate: float = 0.0  # expected events/s of one copy averaged over the week
    expected_rate: float = 0.0  # expected events/s of all copies during this window (seasonality at the wall clock)
    behind_s: float = 0.0  # seconds of arrivals skipped because the producer could not keep up
    # Per shopper who saw an answer: expected profit at the offered price and at the list price (minor units).
    expected_profit_pairs: tuple[tuple[float, float], ...] = field(default=(), repr=False)
    recommend: "RecommendTotals | None" = None  # with recommend_share > 0

    def profit_uplift(self) -> tuple[float, float, float] | None:
        """Expected profit at the engine's prices over the list price's on the same shoppers, minus 1, with a 95%
        interval: (uplift, low, high); None without shoppers. The ratio of sums, by the delta method over shoppers
        (each shopper's pair is one observation; the interval is for the ratio's mean over such shoppers)."""
        return ratio_interval(self.expected_profit_pairs)

    @property
    def achieved_rate(self) -> float:
        return self.paced_events / self.window_s if self.window_s > 0 else 0.0

    @property
    def conversion(self) -> float:
        return self.purchases / self.views if self.views else 0.0

    def summary(self) -> str:
        cur = self.currency
        copies = f"{self.copies} copies" if self.copies != 1 else "1 copy"
        busy = f" at intensity x{self.intensity:g}" if self.intensity != 1 else ""
        lines = [
            f"achieved rate: {self.achieved_rate:,.2f} events/s (expected {self.expected_rate:,.2f} from {copies} of the "
            f"market{busy}, natural rate {self.natural_rate:,.2f}/s per copy; asked {self.target_rate:,.2f}) over "
            f"{self.window_s:.1f} s; {self.paced_events:,} events + {self.snapshot_events:,} snapshot events",
            "produced: " + ", ".join(f"{t} {n:,}" for t, n in self.produced_by_topic.items()),
        ]
        if self.behind_s > 0:
            lines.append(f"the producer fell behind: {self.behind_s:,.1f} s of arrivals were skipped")
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
        if self.recommend is not None:
            lines.append(self.recommend.summary(cur))
        if self.delivery_errors:
            lines.append(f"delivery errors: {self.delivery_errors:,}")
        if self.interrupted:
            lines.append("interrupted before the end of the run")
        return "\n".join(lines)


def _match(contract: Contract, value: bytes | None, pending: dict, expired: set, totals: Any) -> tuple[dict, Any]:
    """An answer and the pending request it answers (popped), or None: then an unreadable answer counted in
    ``totals.invalid_answers``, one whose request already expired in ``totals.late_answers``, or another run's."""
    decoded = decode(contract, value)
    if not decoded.ok:
        totals.invalid_answers += 1
        return {}, None
    answer = decoded.record  # type: ignore[union-attr]
    rid = answer["request_id"]
    found = pending.pop(rid, None)
    if found is None and rid in expired:
        expired.discard(rid)
        totals.late_answers += 1
    return answer, found


@dataclass
class RecommendTotals:
    """The recommendation loop's outcome: the job's slates and the category-popularity slate at list price on the
    same answered requests (money in minor units; realised with the same draws, expected from the truth)."""

    requests: int = 0
    answered: int = 0
    unanswered: int = 0
    late_answers: int = 0
    invalid_answers: int = 0
    empty: int = 0  # answers without items
    purchases: int = 0
    profit: int = 0
    expected_profit: float = 0.0
    baseline_purchases: int = 0
    baseline_profit: int = 0
    baseline_expected_profit: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def per_request(self) -> dict[str, float]:
        n = max(self.answered, 1)
        return {"profit": self.profit / n, "expected_profit": self.expected_profit / n,
                "baseline_profit": self.baseline_profit / n, "baseline_expected_profit": self.baseline_expected_profit / n}  # fmt: skip

    def summary(self, currency: str) -> str:
        r = self.per_request()
        ratio = lambda a, b: f"{a / b:.3f}" if b > 0 else "n/a"  # noqa: E731
        lat = f", answer latency p50 {np.percentile(self.latencies_ms, 50):,.0f} ms" if self.latencies_ms else ""
        return (f"recommendations: {self.requests:,} requests, answered {self.answered:,} ({self.empty:,} empty), no answer "
                f"{self.unanswered:,}, late {self.late_answers:,}, invalid {self.invalid_answers:,}{lat}; profit per "
                f"request: job {r['profit'] / 100:,.3f} {currency} (expected {r['expected_profit'] / 100:,.3f}, "
                f"{self.purchases:,} purchases), category-popularity at list price {r['baseline_profit'] / 100:,.3f} "
                f"(expected {r['baseline_expected_profit'] / 100:,.3f}, {self.baseline_purchases:,}); job / "
                f"category-popularity {ratio(r['profit'], r['baseline_profit'])} realised, "
                f"{ratio(r['expected_profit'], r['baseline_expected_profit'])} expected")  # fmt: skip


@dataclass
class _RecPending:
    user: int  # slot
    context: int  # product slot
    sent_at: float
    session: str
    u_examine: np.ndarray  # [k]: one examination draw per position
    u_buy: np.ndarray  # [n_products]: one purchase draw per product (of the catalogue, any copy)
    baseline: np.ndarray  # product slots of the category-popularity slate


@dataclass
class _Pending:
    user: int  # slot
    product: int  # slot
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
    profit_pairs: list[tuple[float, float]] = field(default_factory=list)
    first_answer_at: float | None = None
    unanswered_sent_at: list[float] = field(default_factory=list)
    expected_events: float = 0.0  # over the window's time, up to its planned end
    covered_s: float = 0.0
    behind_s: float = 0.0


Change = tuple[int, str, int, int]  # (product slot, kind, competitor index or -1, value)


class _LiveMarket:
    """Mutable state of ``copies`` copies of a market: the world's ``Dynamics``, one event at a time.

    Product slot ``c * n_products + j`` is product ``j`` in copy ``c``; copies move
    independently. Market changes arrive as a Poisson process at ``Dynamics.daily_rates``
    per copy (``changes``); each is one update whose kind is drawn with those rates as
    weights. A promotion or a price war lasts the scenario's duration and ends at its time,
    as in the world (a new promotion starts only on a product without one). Restocks pick a
    product in proportion to its restock rate. ``start`` (a ``MarketSnapshot``, e.g.
    ``History.end_state``) sets every copy's initial state; without it, the scenario's.
    """

    def __init__(
        self, market: MarketState, rng: np.random.Generator, *, copies: int = 1, start: MarketSnapshot | None = None
    ) -> None:
        sc = market.scenario
        self.m = market
        self.copies = k = copies
        self.n = n = market.n_products
        self.model = model = Dynamics(market)
        self.rng = rng

        def tile(a: np.ndarray) -> np.ndarray:
            a = np.asarray(a)
            return np.tile(a, (k,) + (1,) * (a.ndim - 1))

        if start is None:
            level = model.initial_log_price()
            start = MarketSnapshot(
                time_ms=0, list_price=market.list_price_minor, unit_cost=market.unit_cost_minor, competitor_level=level,
                competitor_log_price=level, war_factor=np.ones(n), war_ends_ms=np.zeros(n, np.int64),
                promotion_bp=np.zeros(n, np.int64), promotion_ends_ms=np.zeros(n, np.int64), stock=market.capacity,
            )  # fmt: skip
        _check_state(start, market)
        self.list_price = tile(start.list_price).astype(np.int64)
        self.cost = tile(start.unit_cost).astype(np.int64)
        self.level = tile(start.competitor_level).astype(np.float64)
        self.log_price = tile(start.competitor_log_price).astype(np.float64)
        self.war_factor = tile(start.war_factor).astype(np.float64)
        self.war_ends = tile(start.war_ends_ms).astype(np.int64)
        self.promo_bp = tile(start.promotion_bp).astype(np.int64)
        self.promo_ends = tile(start.promotion_ends_ms).astype(np.int64)
        self.stock = tile(start.stock).astype(np.int64)  # type: ignore[arg-type]
        self.exists = tile(model.exists)
        self.capacity = tile(market.capacity).astype(np.int64)
        self.with_comp = np.flatnonzero(tile(market.n_competitors) > 0)
        self._ends: list[tuple[int, int, str]] = []  # (end time ms, slot, "war" | "promotion")
        for j in np.flatnonzero(self.war_ends).tolist():
            heapq.heappush(self._ends, (int(self.war_ends[j]), j, "war"))
        for j in np.flatnonzero(self.promo_ends).tolist():
            heapq.heappush(self._ends, (int(self.promo_ends[j]), j, "promotion"))
        rates = model.daily_rates()
        draws = {**rates, "promotion": rates["promotion"] / 2}  # starts are drawn; each ends at its scheduled time
        self.kinds = tuple(draws)
        daily = np.array(list(draws.values())) * k
        self.changes_per_s = float(daily.sum()) / 86_400
        self.kind_p = daily / daily.sum() if daily.sum() > 0 else np.array([x == "inventory" for x in self.kinds], float)
        self._kind_cdf = np.cumsum(self.kind_p).tolist()
        self._comps = [np.flatnonzero(row).tolist() for row in model.exists]  # per product of one copy
        c = sc.competitors
        mean_comp = max(market.n_competitors[market.n_competitors > 0].mean(), 1.0) if self.with_comp.size else 1.0
        self.p_war = min(1.0, c.price_war_per_day / (mean_comp * c.updates_per_day))
        self.p_shift = min(1.0, c.step_changes_per_day / c.updates_per_day)
        self._restock_cdf = np.cumsum(1.0 / tile(market.restock_period_days))

    @property
    def n_slots(self) -> int:
        return self.copies * self.n

    def state(self, copy: int, time_ms: int) -> MarketSnapshot:
        """Copy ``copy``'s current state (for tests and reports)."""
        s = slice(copy * self.n, (copy + 1) * self.n)
        return MarketSnapshot(
            time_ms=time_ms, list_price=self.list_price[s].copy(), unit_cost=self.cost[s].copy(),
            competitor_level=self.level[s].copy(), competitor_log_price=self.log_price[s].copy(),
            war_factor=self.war_factor[s].copy(), war_ends_ms=self.war_ends[s].copy(),
            promotion_bp=self.promo_bp[s].copy(), promotion_ends_ms=self.promo_ends[s].copy(), stock=self.stock[s].copy(),
        )  # fmt: skip

    def competitor_prices(self, j: int) -> list[tuple[int, int]]:
        comps = np.flatnonzero(self.exists[j])
        prices = self.model.competitor_prices(self.log_price[j, comps], self.war_factor[j]).astype(np.int64)
        return list(zip(comps.tolist(), prices.tolist()))

    def competitor_min(self, products: np.ndarray) -> np.ndarray:
        prices = self.model.competitor_prices(self.log_price[products], self.war_factor[products, None])
        low = np.where(self.exists[products], prices, np.inf).min(axis=1)
        return np.where(np.isfinite(low), low, 0).astype(np.int64)

    def snapshot(self, slots: range | None = None) -> list[Change]:
        """The full current state of these product slots (all by default) as changes."""
        out: list[Change] = []
        for j in slots if slots is not None else range(self.n_slots):
            out += [(j, "list_price", -1, int(self.list_price[j])), (j, "cost", -1, int(self.cost[j])),
                    (j, "inventory", -1, int(self.stock[j]))]  # fmt: skip
            out += [(j, "competitor_price", c, p) for c, p in self.competitor_prices(j)]
            if self.promo_bp[j]:
                out.append((j, "promotion", -1, int(self.promo_bp[j])))
        return out

    def changes(self, dt_s: float, now_ms: int) -> list[Change]:
        """What changed over the last ``dt_s`` seconds, up to ``now_ms``: the promotions and price wars that
        ended by then, and a Poisson number (mean ``changes_per_s * dt_s``) of drawn changes."""
        out = self.ends(now_ms)
        for _ in range(int(self.rng.poisson(self.changes_per_s * dt_s)) if dt_s > 0 else 0):
            out += self.step(now_ms)
        return out

    def ends(self, now_ms: int) -> list[Change]:
        """End the promotions and price wars due by ``now_ms``."""
        out: list[Change] = []
        while self._ends and self._ends[0][0] <= now_ms:
            _, j, what = heapq.heappop(self._ends)
            if what == "war":
                self.war_factor[j], self.war_ends[j] = 1.0, 0
                out += [(j, "competitor_price", c, p) for c, p in self.competitor_prices(j)]
            else:
                self.promo_bp[j], self.promo_ends[j] = 0, 0
                out.append((j, "promotion", -1, 0))
        return out

    def step(self, now_ms: int) -> list[Change]:
        """One market change drawn with the model's daily rates as weights; may yield several events (a price war)."""
        sc = self.m.scenario
        rng = self.rng
        kind = self.kinds[min(bisect.bisect_right(self._kind_cdf, rng.random()), len(self.kinds) - 1)]
        if kind == "competitor_price":
            j = int(self.with_comp[rng.integers(self.with_comp.size)])
            c = sc.competitors
            if self.war_ends[j] == 0 and rng.random() < self.p_war:
                self.war_factor[j] = self.model.war_factor(rng)
                hours = rng.uniform(c.price_war_duration_hours.low, c.price_war_duration_hours.high)
                self.war_ends[j] = now_ms + max(1, int(round(hours * 3_600_000)))
                heapq.heappush(self._ends, (int(self.war_ends[j]), j, "war"))
                return [(j, kind, c_, p) for c_, p in self.competitor_prices(j)]
            comps = self._comps[j % self.n]
            comp = comps[int(rng.integers(len(comps)))]
            if rng.random() < self.p_shift:
                self.level[j, comp] += rng.normal(0, c.step_change_sd)
            noise = rng.normal(0, self.model.update_sd)
            self.log_price[j, comp] = log_price = self.model.revert(self.log_price[j, comp], self.level[j, comp], noise)
            return [(j, kind, comp, int(self.model.competitor_prices(log_price, self.war_factor[j])))]
        if kind == "inventory":
            j = int(min(np.searchsorted(self._restock_cdf, rng.random() * self._restock_cdf[-1], side="right"), self.n_slots - 1))
            self.stock[j] = self.capacity[j]
            return [(j, "inventory", -1, int(self.stock[j]))]
        j = int(rng.integers(self.n_slots))
        if kind == "promotion":
            if self.promo_bp[j]:
                return []  # one promotion at a time, as in the world
            p = sc.promotions
            self.promo_bp[j] = int(self.model.promotion_bp(rng))
            hours = rng.uniform(p.duration_hours.low, p.duration_hours.high)
            self.promo_ends[j] = now_ms + max(1, int(round(hours * 3_600_000)))
            heapq.heappush(self._ends, (int(self.promo_ends[j]), j, "promotion"))
            return [(j, kind, -1, int(self.promo_bp[j]))]
        if kind == "list_price":
            self.list_price[j] = int(self.model.drift(self.list_price[j], rng.normal(0, sc.catalogue.list_price_change_sd)))
            return [(j, kind, -1, int(self.list_price[j]))]
        self.cost[j] = int(self.model.drift(self.cost[j], rng.normal(0, sc.catalogue.cost_change_sd)))
        return [(j, "cost", -1, int(self.cost[j]))]

    def probability(
        self, users: np.ndarray, products: np.ndarray, price: np.ndarray, *, in_stock: bool = False
    ) -> np.ndarray:
        """True purchase probability at ``price`` given the current state (user and product slots); with
        ``in_stock`` as if every product were in stock (the caller checks the stock)."""
        return self.m.probability(
            user_idx=users % self.m.n_users, product_idx=products % self.n, offered_price=price,
            reference_price=self.list_price[products], competitor_min=self.competitor_min(products),
            promotion_active=self.promo_bp[products] > 0, inventory=1 if in_stock else self.stock[products],
        )  # fmt: skip


def _check_state(state: MarketSnapshot, market: MarketState) -> None:
    """A start state must describe this market: one row per product, the competitors it has, a stock."""
    n, shape = market.n_products, market.competitor_ratio.shape
    if state.stock is None:
        raise ValueError("the start state has no stock: use History.end_state, not World.end_state")
    sizes = [a.shape for a in (state.list_price, state.unit_cost, state.war_factor, state.war_ends_ms, state.promotion_bp,
                               state.promotion_ends_ms, state.stock)]  # fmt: skip
    if any(s != (n,) for s in sizes) or state.competitor_level.shape != shape or state.competitor_log_price.shape != shape:
        raise ValueError(f"the start state is not of this market ({n} products, {shape[1]} competitor slots)")


class LiveSimulator:
    """Live traffic of one scenario's market, in copies, with an optional closed loop on the engine's answers.

    ``rate`` (events/s) picks the number of copies of the market, ``max(1, round(rate /
    natural_rate))``; or give ``copies``; with neither, one copy. Each copy runs at the
    market's own intensity x ``intensity``; the actual rate follows the seasonality of the
    wall clock (``self.plan``, ``pricing.sim.traffic``). ``start_state`` continues a history
    (``History.end_state``) instead of starting from the scenario's initial state.
    ``kafka_config`` is a confluent-kafka config (at least ``bootstrap.servers``);
    producer and consumer settings the loop needs are added to it. ``topics`` are the
    settings' topics (``settings.kafka.topics``) or ``LiveTopics``; by default the
    project's default names. Call ``run()`` once; ``stop()`` (from another thread or a
    signal handler) ends the window early.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        kafka_config: Mapping[str, Any],
        topics: LiveTopics | TopicsSettings | None = None,
        rate: float | None = None,
        copies: int | None = None,
        intensity: float = 1.0,
        duration_s: float,
        closed_loop: bool = True,
        answer_timeout_s: float = 30.0,
        late_share: float | None = None,
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
        start_state: MarketSnapshot | None = None,
        recommend_share: float = 0.0,
        recommend_k: int = 10,
        position_bias: PositionBias | None = None,
    ) -> None:
        if not 0 <= recommend_share <= 1 or not 1 <= recommend_k <= 50:
            raise ValueError("recommend_share must lie in [0, 1] and recommend_k in 1..50")
        if recommend_share > 0 and not closed_loop:
            raise ValueError("recommendations need the closed loop (the job's answers)")
        if duration_s <= 0 or answer_timeout_s < 0 or tick_s <= 0:
            raise ValueError("duration_s and tick_s must be positive, answer_timeout_s non-negative")
        self.scenario = scenario
        self.kafka_config = dict(kafka_config)
        self.topics = topics if isinstance(topics, LiveTopics) else LiveTopics.of(topics)
        self.duration_s = float(duration_s)
        self.closed_loop = closed_loop
        self.answer_timeout_s = float(answer_timeout_s)
        self.late_share = scenario.lateness.share if late_share is None else float(late_share)
        if not 0 <= self.late_share < 1:
            raise ValueError("late_share must lie in [0, 1)")
        self.run_id = run_id or uuid.uuid4().hex[:10]
        self.tick_s = tick_s
        self.max_lag_s = max(1.0, 2 * tick_s)  # a producer slower than this skips arrivals instead of piling them up
        self.connect_timeout_s = connect_timeout_s
        self._stream = progress
        self._progress = Progress(progress, every_s=1.0, clock=clock)
        self._producer = producer
        self._consumer = consumer
        self._clock = clock
        self._wall_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._sleep = sleep
        self._stop = False
        self._market = market or build_market(scenario)
        self.plan: TrafficPlan = plan_traffic(self._market, rate=rate, copies=copies, intensity=intensity)
        self.start_state = start_state
        seed = scenario.seed if seed is None else seed
        streams = [seed, STREAM_LIVE, int(self.run_id.encode().hex(), 16) % (2**63)]
        self._rng = np.random.default_rng([*streams, 0])  # the shoppers' decisions and lateness
        k = self.plan.copies
        self._state = _LiveMarket(self._market, np.random.default_rng([*streams, 1]), copies=k, start=start_state)
        self._shoppers = Shoppers(self._market, copies=k, intensity=self.plan.intensity, rng=np.random.default_rng([*streams, 2]))
        self._product_ids = copy_ids(self._market.product_ids, k)
        self._pending: dict[str, _Pending] = {}
        self._expired: set[str] = set()
        self._late: list[tuple[float, int, str, Contract, str, dict[str, Any]]] = []
        self._shows: list[tuple[float, int, View, str]] = []  # open loop: views due, with their request id
        self._seq = 0
        self._in_window = False
        self._window_start = 0.0
        self._snapshot_sent = False
        self._t = _Totals()
        self.recommend_share = float(recommend_share)
        self.recommend_k = int(recommend_k)
        self.position_bias = position_bias or PositionBias()
        self._rec_rng = np.random.default_rng([*streams, 3])  # whether a shopper asks, and the slate's draws
        self._rec_pending: dict[str, _RecPending] = {}
        self._rec_expired: set[str] = set()
        self._rec = RecommendTotals() if self.recommend_share > 0 else None
        self._slot_of = {str(p): j for j, p in enumerate(self._product_ids)}
        self._by_category = self._category_popularity()

    # ---------------------------------------------------------------- public

    @property
    def rate(self) -> float:
        """The rate asked for, or (given copies) copies x the natural rate."""
        p = self.plan
        return p.target_rate if p.target_rate is not None else p.copies * p.natural_rate

    def stop(self) -> None:
        """End the window at the next tick (the run still drains and reports)."""
        self._stop = True

    def publish_snapshot(self, *, flush_timeout_s: float = 120.0) -> int:
        """Produce the market snapshot now and wait until Kafka has it; returns how many records it held.

        ``run()`` then starts the traffic at once. A caller that wants the engine to have read a large
        snapshot (many copies of the market) before the first shopper arrives calls this first and waits
        for the engine (as ``pricing demo`` does): in arrival mode a request is not held back for market
        events stamped only seconds before it, and a snapshot of 200,000 records takes longer to read."""
        if self._snapshot_sent:
            return self._t.snapshot
        self._connect()
        self._check_start_state(self._wall_ms())
        self._snapshot()
        left = self._producer.flush(flush_timeout_s)  # type: ignore[union-attr]
        if left:
            raise LiveError(f"{left} snapshot records not delivered within {flush_timeout_s:g} s")
        return self._t.snapshot

    def _check_start_state(self, now_ms: int) -> None:
        if self.start_state is not None and now_ms < self.start_state.time_ms:
            raise LiveError(f"the start state is of {self.start_state.time_ms} ms, later than the clock ({now_ms} ms): "
                            "a live run continues a history that ended before it")  # fmt: skip

    def run(self) -> LiveReport:
        """Connect, produce the market snapshot (unless ``publish_snapshot`` did), run the traffic for
        ``duration_s``, drain, and report."""
        interrupted = False
        try:
            self._connect()
            now_ms = self._wall_ms()
            self._check_start_state(now_ms)
            self._announce(now_ms)
            self._snapshot()
            window_start = self._window_start = self._clock()
            self._shoppers.warm_up(window_start, self._wall_ms())
            try:
                self._window(window_start)
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

    def _announce(self, now_ms: int) -> None:
        if self._stream is None:
            return
        lines = [f"[live] {self.plan.describe(now_ms)}"]
        if self.start_state is not None:
            lines.append(f"[live] continuing the history that ended {max(now_ms - self.start_state.time_ms, 0) / 60_000:,.1f} "
                         "min ago: no snapshot for copy 0" + (", a snapshot for the other copies" if self.plan.copies > 1 else ""))  # fmt: skip
        warning = self.plan.warning()
        if warning:
            lines.append(f"[live] warning: {warning}")
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()

    def _connect(self) -> None:
        bootstrap = self.kafka_config.get("bootstrap.servers", "?")
        from confluent_kafka import KafkaException

        if self._producer is None:
            from confluent_kafka import Producer

            conf = {"linger.ms": 5, "acks": "all", "enable.idempotence": True, "log_level": 2,
                    "error_cb": self._on_error, **self.kafka_config}  # fmt: skip
            self._producer = Producer(conf)
        needed = [self.topics.behaviour, self.topics.market, self.topics.requests]
        if self.topics.catalogue:
            needed.append(self.topics.catalogue)
        if self.closed_loop:
            needed.append(self.topics.priced)
        if self._rec is not None:
            if not (self.topics.recommend_requests and self.topics.recommendations):
                raise LiveError("recommendations need the recommend-requests and recommendations topics")
            needed += [self.topics.recommend_requests, self.topics.recommendations]
        meta = check_topics(self._producer, needed, bootstrap=bootstrap, timeout_s=self.connect_timeout_s)
        if not self.closed_loop:
            return
        if self._consumer is None:
            from confluent_kafka import Consumer

            conf = {"group.id": f"pricing-sim-{self.run_id}", "isolation.level": "read_committed",
                    "enable.auto.commit": False, "auto.offset.reset": "latest", "log_level": 2,
                    "error_cb": self._on_error, **self.kafka_config}  # fmt: skip
            self._consumer = Consumer(conf)
        from confluent_kafka import TopicPartition

        answers = [self.topics.priced] + ([self.topics.recommendations] if self._rec is not None else [])
        try:
            assignment = []
            for topic in answers:
                for p in sorted(meta.topics[topic].partitions):
                    tp = TopicPartition(topic, p)
                    offsets = self._consumer.get_watermark_offsets(tp, timeout=self.connect_timeout_s)
                    if offsets is None:
                        raise LiveError(f"timed out reading the end offsets of {topic} on {bootstrap}")
                    assignment.append(TopicPartition(topic, p, offsets[1]))
            self._consumer.assign(assignment)
        except KafkaException as exc:
            raise LiveError(f"cannot read {', '.join(answers)} on {bootstrap}: {_one_line(exc)}") from None

    def _on_error(self, err: Any) -> None:
        """librdkafka reports transient errors here; they surface as timeouts or delivery errors."""

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._t.delivery_errors += 1

    # ---------------------------------------------------------------- producing

    def _produce(self, topic: str, contract: Contract, key: str, record: dict[str, Any]) -> int:
        """Send now, or (for the late share, in the window) hold back and send later with the same event_time."""
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

    def _user_id(self, slot: int) -> str:
        n = self._market.n_users
        return copy_id(self._market.user_ids[slot % n], slot // n)

    def _market_record(self, j: int, kind: str, comp: int, value: int, now_ms: int) -> dict[str, Any]:
        return {
            "product_id": self._product_ids[j],
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
            "user_id": self._user_id(user),
            "product_id": self._product_ids[product],
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
        """The initial state of the copies whose state the topics do not hold yet (all of them without a start state)."""
        if self._snapshot_sent:
            return
        self._snapshot_sent = True
        now = self._wall_ms()
        first = 1 if self.start_state is not None else 0
        if self.topics.catalogue:  # the copies' catalogue entries, before their market state
            slots = np.arange(first * self._state.n, self._state.n_slots)
            for rec in catalogue_entries(self._market, event_time_ms=now, product_ids=self._product_ids[slots],
                                         slots=slots):  # fmt: skip
                self._send(self.topics.catalogue, Contract.CATALOGUE_ENTRY, rec["product_id"], rec)
        for j, kind, comp, value in self._state.snapshot(range(first * self._state.n, self._state.n_slots)):
            rec = self._market_record(j, kind, comp, value, now)
            self._t.snapshot += self._send(self.topics.market, Contract.MARKET_EVENT, rec["product_id"], rec)
        self._producer.poll(0)  # type: ignore[union-attr]

    # ---------------------------------------------------------------- the loop

    def _window(self, start: float) -> None:
        """Tick until ``duration_s`` has passed: each tick makes what happened in the market since the last one."""
        end = start + self.duration_s
        last = start
        self._in_window = True
        while True:
            now = self._clock()
            upto = min(now, end)
            wall = self._wall_ms()
            self._poll_answers(now)
            self._release_late(now)
            self._expire(now)
            self._t.expected_events += float(self.plan.expected_rate(wall)) * (upto - last)
            self._t.covered_s += upto - last
            span = min(upto - last, self.max_lag_s)
            self._t.behind_s += (upto - last) - span
            self._generate(upto, span, wall)
            self._show_views(upto)
            last = upto
            self._producer.poll(0)  # type: ignore[union-attr]
            self._show(now - start)
            if now >= end or self._stop:
                break
            self._sleep(max(0.0, min(now + self.tick_s, end) - self._clock()))
        self._in_window = False

    def _drain(self, *, deadline: float) -> None:
        """After the window: wait for outstanding answers (up to the timeout), then stop.

        Only the shoppers' reactions to answers (and, in the open loop, the views of requests
        already sent) are produced here. The engine answers a request once its event time has
        passed it on every input that is not idle; an input that went quiet is idle after the
        engine's idle timeout, but one old record makes it active again, and its clock then
        holds the engine's back for another idle timeout. So late events are not released
        here; they were all sent when the window closed.
        """
        while (self._pending or self._shows or self._rec_pending) and self._clock() < deadline:
            now = self._clock()
            self._poll_answers(now)
            self._show_views(now)
            self._expire(now)
            self._producer.poll(0)  # type: ignore[union-attr]
            self._sleep(self.tick_s)
        self._show_views(float("inf"))

    def _generate(self, now: float, span_s: float, wall_ms: int) -> int:
        """The market changes and the shoppers' price requests of the last ``span_s`` seconds (market first)."""
        made = 0
        for j, kind, comp, value in self._state.changes(span_s, wall_ms):
            rec = self._market_record(j, kind, comp, value, wall_ms)
            made += self._produce(self.topics.market, Contract.MARKET_EVENT, rec["product_id"], rec)
        self._shoppers.arrive(now - span_s, now, wall_ms)
        for v in self._shoppers.due(now):
            self._seq += 1
            rid = f"live-{self.run_id}-r{self._seq}"
            product_id = self._product_ids[v.product]
            rec = {"request_id": rid, "user_id": self._user_id(v.user), "product_id": product_id,
                   "channel": CHANNELS[v.channel], "event_time": wall_ms}  # fmt: skip
            made += self._send(self.topics.requests, Contract.PRICE_REQUEST, product_id, rec)
            self._t.requests += 1
            if self.closed_loop:
                self._pending[rid] = _Pending(user=v.user, product=v.product, sent_at=self._clock(),
                                              session=self._session_id(v.session))  # fmt: skip
                if self._rec is not None and self._rec_rng.random() < self.recommend_share:
                    made += self._ask_recommendations(v, rec["user_id"], product_id, wall_ms)
            else:
                self._seq += 1
                heapq.heappush(self._shows, (now + v.lead_s, self._seq, v, rid))
        return made

    def _session_id(self, session: int) -> str:
        return f"live-{self.run_id}-s{session}"

    def _show_views(self, now: float) -> int:
        """Open loop: the shoppers whose request lead has passed view the historical policy's price."""
        due = []
        while self._shows and self._shows[0][0] <= now:
            due.append(heapq.heappop(self._shows))
        if not due:
            return 0
        hp = self.scenario.historical_policy
        products = np.array([v.product for _, _, v, _ in due])
        prices = historical_prices(self._state.list_price[products], self._state.promo_bp[products], multiplier=hp.multiplier,
                                   apply_promotion_discount=hp.apply_promotion_discount, rng=self._rng)  # fmt: skip
        return self._shoppers_see([(v.user, v.product, self._session_id(v.session), rid) for _, _, v, rid in due], prices)

    def _poll_answers(self, now: float) -> int:
        """Read priced answers; each of ours becomes a shopper decision. Returns events produced."""
        if self._consumer is None:
            return 0
        seen: list[tuple[int, int, str, str]] = []
        prices: list[int] = []
        for msg in self._consumer.consume(num_messages=1000, timeout=0):
            if msg.error() is not None:
                continue
            if self._rec is not None and msg.topic() == self.topics.recommendations:
                self._slate_answer(msg.value(), now)
                continue
            answer, pending = _match(Contract.PRICED_EVENT, msg.value(), self._pending, self._expired, self._t)
            if pending is None:
                continue  # unreadable, late, another run's or an unknown request
            rid = answer["request_id"]
            price = int(answer["price_minor"])
            if price <= 0:
                self._t.invalid_answers += 1
                continue
            self._t.answered += 1
            if self._t.first_answer_at is None:
                self._t.first_answer_at = now
            self._t.latencies_ms.append((now - pending.sent_at) * 1000)
            seen.append((pending.user, pending.product, pending.session, rid))
            prices.append(price)
        return self._shoppers_see(seen, np.array(prices, np.int64)) if seen else 0

    def _shoppers_see(self, shoppers: list[tuple[int, int, str, str]], prices: np.ndarray) -> int:
        """Each (user, product, session, request id) views its price now and buys with the true probability; produce
        what happened. A sale that empties the stock leaves nothing to buy for the next shopper of that product."""
        st = self._state
        users = np.array([s[0] for s in shoppers])
        products = np.array([s[1] for s in shoppers])
        prob_in_stock = st.probability(users, products, prices, in_stock=True)
        at_list_in_stock = st.probability(users, products, st.list_price[products], in_stock=True)
        t_ms = self._wall_ms()
        made = 0
        for (user, product, session, rid), price, p, p_list in zip(shoppers, prices.tolist(), prob_in_stock.tolist(),
                                                                   at_list_in_stock.tolist()):  # fmt: skip
            in_stock = st.stock[product] > 0
            made += self._shopper_sees(user, product, price, session, t_ms, request_id=rid, prob=p if in_stock else 0.0,
                                       at_list=p_list if in_stock else 0.0)  # fmt: skip
        return made

    def _shopper_sees(
        self, user: int, product: int, price: int, session: str, t_ms: int, *, request_id: str, prob: float, at_list: float
    ) -> int:
        """The shopper views ``price`` and buys with probability ``prob`` (the true one); produce what happened."""
        st = self._state
        cost = int(st.cost[product])
        t = self._t
        t.views += 1
        t.expected_purchases += prob
        t.expected_profit += prob * (price - cost)
        t.expected_profit_at_list += at_list * (int(st.list_price[product]) - cost)
        t.profit_pairs.append((prob * (price - cost), at_list * (int(st.list_price[product]) - cost)))
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

    # ---------------------------------------------------------------- recommendations

    def _category_popularity(self) -> dict[int, np.ndarray]:
        """Per category, its products (indices in copy 0) by true popularity, most popular first."""
        m = self._market
        out = {}
        for c in np.unique(m.product_category):
            members = np.flatnonzero(m.product_category == c)
            out[int(c)] = members[np.argsort(-m.popularity[members], kind="stable")]
        return out

    def _ask_recommendations(self, v: View, user_id: str, context_id: str, wall_ms: int) -> int:
        """Send a recommend request for the shopper viewing ``v.product``; draw its slate's random numbers and the
        category-popularity slate it is compared with."""
        self._seq += 1
        rid = f"live-{self.run_id}-rec{self._seq}"
        k, n = self.recommend_k, self._market.n_products
        rec = {"request_id": rid, "user_id": user_id, "channel": CHANNELS[v.channel], "event_time": wall_ms, "k": k,
               "context_product_id": context_id, "context_category": None, "candidate_product_ids": []}  # fmt: skip
        made = self._send(self.topics.recommend_requests, Contract.RECOMMEND_REQUEST, user_id, rec)  # type: ignore[arg-type]
        copy, j = divmod(int(v.product), n)
        same = self._by_category[int(self._market.product_category[j])]
        baseline = same[same != j][:k] + copy * n
        self._rec_pending[rid] = _RecPending(user=v.user, context=v.product, sent_at=self._clock(),
                                             session=self._session_id(v.session), u_examine=self._rec_rng.random(k),
                                             u_buy=self._rec_rng.random(n), baseline=baseline)  # fmt: skip
        self._rec.requests += 1  # type: ignore[union-attr]
        return made

    def _slate_value(self, p: _RecPending, slots: np.ndarray, prices: np.ndarray) -> tuple[int, float, np.ndarray]:
        """(position bought or NO_PURCHASE, expected profit, true probabilities) of a slate shown to ``p``'s shopper now."""
        st = self._state
        if slots.size == 0:
            return NO_PURCHASE, 0.0, np.zeros(0)
        users = np.full(slots.size, p.user)
        prob = st.probability(users, slots, prices, in_stock=True) * (st.stock[slots] > 0)
        e = self.position_bias.examination(slots.size)
        margin = prices - st.cost[slots]
        expected = float(purchase_probabilities(prob[None, :], e)[0] @ margin)
        bought = simulate(prob[None, :], e, p.u_examine[None, : slots.size], p.u_buy[slots % self._market.n_products][None, :])
        return int(bought[0]), expected, prob

    def _slate_answer(self, value: bytes, now: float) -> int:
        """One recommendation: if ours, the shopper examines it (and the category-popularity slate is scored)."""
        r = self._rec
        answer, p = _match(Contract.RECOMMENDATION, value, self._rec_pending, self._rec_expired, r)
        if p is None:
            return 0
        rid = answer["request_id"]
        items = answer["items"][: self.recommend_k]
        slots = np.array([self._slot_of.get(str(i["product_id"]), -1) for i in items], dtype=np.int64)
        prices = np.array([int(i["price_minor"]) for i in items], dtype=np.int64)
        if np.any(slots < 0) or np.any(prices <= 0):
            r.invalid_answers += 1  # type: ignore[union-attr]
            return 0
        r.answered += 1  # type: ignore[union-attr]
        r.empty += int(slots.size == 0)  # type: ignore[union-attr]
        r.latencies_ms.append((now - p.sent_at) * 1000)  # type: ignore[union-attr]
        st = self._state
        base_prices = st.list_price[p.baseline].astype(np.int64)
        b_at, b_expected, _ = self._slate_value(p, p.baseline, base_prices)
        r.baseline_expected_profit += b_expected  # type: ignore[union-attr]
        if b_at != NO_PURCHASE:
            r.baseline_purchases += 1  # type: ignore[union-attr]
            r.baseline_profit += int(base_prices[b_at] - st.cost[p.baseline[b_at]])  # type: ignore[union-attr]
        at, expected, _ = self._slate_value(p, slots, prices)
        r.expected_profit += expected  # type: ignore[union-attr]
        if at == NO_PURCHASE:
            return 0
        product, price = int(slots[at]), int(prices[at])
        cost = int(st.cost[product])
        r.purchases += 1  # type: ignore[union-attr]
        r.profit += price - cost  # type: ignore[union-attr]
        t_ms = self._wall_ms()
        made = 0
        for i, kind in enumerate(("view", "add_to_cart", "purchase")):
            made += self._behaviour(user=p.user, product=product, kind=kind, price=price, session=p.session,
                                    request_id=rid, t_ms=t_ms + i)  # fmt: skip
        st.stock[product] -= 1
        rec = self._market_record(product, "inventory", -1, int(st.stock[product]), t_ms + 2)
        return made + self._produce(self.topics.market, Contract.MARKET_EVENT, rec["product_id"], rec)

    def _release_late(self, now: float) -> int:
        made = 0
        while self._late and self._late[0][0] <= now:
            _, _, topic, contract, key, record = heapq.heappop(self._late)
            made += self._send(topic, contract, key, record)
        return made

    def _expire(self, now: float) -> None:
        cutoff = now - self.answer_timeout_s
        while self._rec_pending:
            rid, rp = next(iter(self._rec_pending.items()))
            if rp.sent_at > cutoff:
                break
            del self._rec_pending[rid]
            self._rec_expired.add(rid)
            self._rec.unanswered += 1  # type: ignore[union-attr]
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
        expected = t.expected_events / elapsed if elapsed > 0 else 0.0
        text = (
            f"[live] {elapsed:5.1f}/{self.duration_s:g} s | {rate:,.1f} ev/s (expected {expected:,.1f}, "
            f"{self.plan.copies} x the market) | requests {t.requests:,}"
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
            copies=self.plan.copies,
            intensity=self.plan.intensity,
            natural_rate=self.plan.natural_rate,
            expected_rate=t.expected_events / t.covered_s if t.covered_s > 0 else 0.0,
            behind_s=t.behind_s,
            expected_profit_pairs=tuple(t.profit_pairs),
            recommend=self._rec,
        )


def check_topics(producer: ProducerLike, topics: list[str], *, bootstrap: str, timeout_s: float) -> Any:
    """The cluster's metadata, once every topic in ``topics`` exists; else a one-line ``LiveError``."""
    from confluent_kafka import KafkaException

    try:
        meta = producer.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise LiveError(f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s: {_one_line(exc)}") from None
    missing = [t for t in topics if t not in meta.topics or getattr(meta.topics[t], "error", None) is not None]
    if missing:
        raise LiveError(f"topic(s) {', '.join(missing)} not found on {bootstrap}; create them first (pricing topics create)")
    return meta


def ratio_interval(pairs: Sequence[tuple[float, float]], *, z: float = 1.96) -> tuple[float, float, float] | None:
    """``sum(a) / sum(b) - 1`` over pairs ``(a, b)`` with a ``z`` interval by the delta method:
    se = sqrt(var(a - r * b) / n) / mean(b). None without pairs or when ``sum(b)`` is not positive."""
    if not pairs:
        return None
    a, b = np.asarray(pairs, dtype=np.float64).T
    if b.sum() <= 0:
        return None
    r = a.sum() / b.sum()
    n = len(a)
    se = float(np.sqrt(np.var(a - r * b, ddof=1) / n) / b.mean()) if n > 1 else float("inf")
    return r - 1.0, r - 1.0 - z * se, r - 1.0 + z * se


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
