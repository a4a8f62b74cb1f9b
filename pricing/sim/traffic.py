"""How much live traffic one market makes, and its shoppers as a process in wall-clock time.

A live run serves the market ``pricing simulate history`` writes for the same scenario, at
that market's own intensity: every shopper starts sessions at their ``sessions_per_day``
times the scenario's hour-of-day and weekday seasonality (``world.seasonality``), here at
the wall clock, since the live event time is the wall clock. A higher rate is not a faster
clock: it is more copies of the same market side by side (``TrafficPlan``), each with the
same catalogue, shoppers and hidden truth, so per product and per shopper the traffic looks
like the history whatever the rate. ``intensity`` scales every shopper's session rate (a
quieter or busier market than the history's).

Guarantees (``tests/pricing/sim/test_sim_traffic.py``):

* ``Shoppers`` draws sessions as the history does (``world._views``): Poisson arrivals,
  the user by activity, the channel, ``1 + Poisson(views_per_session - 1)`` views at
  exponential gaps of ``view_gap_s``, each product by the user's taste and popularity
  (``market.sample_products``), a request lead per view. Views per product and per shopper
  per hour match the history's at the same hour of the week; k copies make k times the
  traffic with the same per-product and per-shopper intensity. It starts in the steady
  state (sessions already under way when a run starts keep viewing), not from an empty shop.
* Copy 0 keeps the market's ids (``p000``, ``u00000``), so what ``simulate history`` wrote is
  copy 0; copy c >= 1 appends ``-c<c>``; ids of different copies never collide, and a copy's
  shoppers only see its own products.
* ``natural_rate`` is the expected events/s of one copy averaged over a week, every topic
  counted as the live simulator produces them.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from pricing.sim.market import STREAM_LIVE, MarketState, rng_for, sample_products
from pricing.sim.scenario import Scenario
from pricing.sim.world import CHANNELS, DAY_MS, Dynamics, seasonality

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CONVERSION_SAMPLE = 50_000  # views drawn to estimate the market's conversion at list price
COPY_SEPARATOR = "-c"


def copy_id(base: str, copy: int) -> str:
    """The id of ``base`` in copy ``copy``: itself in copy 0, ``<base>-c<copy>`` after."""
    return base if copy == 0 else f"{base}{COPY_SEPARATOR}{copy}"


def copy_ids(ids: np.ndarray, copies: int) -> np.ndarray:
    """The ids of ``copies`` copies side by side: slot ``c * len(ids) + i`` is ``copy_id(ids[i], c)``."""
    return np.array([copy_id(i, c) for c in range(copies) for i in ids.tolist()], dtype=object)


def conversion_at_list_price(market: MarketState) -> float:
    """Expected purchases per view at the initial list prices, over the market's views (deterministic).

    Estimated from a fixed sample of views drawn as the history draws them (user by activity,
    product by taste and popularity), so it is the same number for every run of a scenario.
    """
    rng = rng_for(market.scenario.seed, STREAM_LIVE)
    activity = np.cumsum(market.user_sessions_per_day)
    users = np.minimum(np.searchsorted(activity, rng.random(_CONVERSION_SAMPLE) * activity[-1], side="right"),
                       market.n_users - 1)  # fmt: skip
    products = sample_products(market, users, rng=rng)
    model = Dynamics(market)
    prices = np.where(model.exists, model.competitor_prices(model.initial_log_price(), np.ones((market.n_products, 1))), np.inf)
    comp_min = np.where(np.isfinite(prices.min(axis=1)), prices.min(axis=1), 0)
    ref = market.list_price_minor[products]
    p = market.probability(user_idx=users, product_idx=products, offered_price=ref, reference_price=ref,
                           competitor_min=comp_min[products], promotion_active=False, inventory=1)  # fmt: skip
    return float(p.mean())


@dataclass(frozen=True)
class Intensity:
    """Expected events/s of one copy of a market, averaged over a week (seasonality averages to 1)."""

    sessions_per_s: float  # shopper sessions
    shopper_events_per_s: float  # requests, views, carts, purchases, reviews and the stock change of each sale
    market_events_per_s: float  # exogenous market changes at ``Dynamics.daily_rates``
    events_per_view: float
    conversion: float  # purchases per view, at list price

    @property
    def events_per_s(self) -> float:
        return self.shopper_events_per_s + self.market_events_per_s


def market_intensity(market: MarketState, *, intensity: float = 1.0) -> Intensity:
    """The expected traffic of one copy of ``market`` with every shopper's session rate x ``intensity``.

    Per view the live simulator produces a request and a view; a cart with P(buy) + P(no buy) x
    ``cart_abandon``; on a purchase the purchase, the stock change and a review with ``review_rate``.
    P(buy) is the market's conversion at list price (an engine's prices move it a little).
    Market changes do not scale with ``intensity``: they are per product.
    """
    sc = market.scenario
    f = sc.funnel
    conv = conversion_at_list_price(market)
    per_view = 2 + conv + (1 - conv) * f.cart_abandon + conv * (2 + f.review_rate)
    sessions = float(market.user_sessions_per_day.sum()) * intensity / 86_400
    market_events = sum(Dynamics(market).daily_rates().values()) / 86_400
    return Intensity(
        sessions_per_s=sessions,
        shopper_events_per_s=sessions * f.views_per_session * per_view,
        market_events_per_s=market_events,
        events_per_view=per_view,
        conversion=conv,
    )


def natural_rate(market: MarketState, *, intensity: float = 1.0) -> float:
    """Expected events/s of one copy of ``market`` averaged over a week (all topics), see ``market_intensity``."""
    return market_intensity(market, intensity=intensity).events_per_s


@dataclass(frozen=True)
class TrafficPlan:
    """What a live run's ``rate`` means: ``copies`` copies of one market, each at its own intensity.

    The actual rate follows seasonality at the wall clock: ``expected_rate(at_ms)``.
    """

    scenario: Scenario
    n_products: int
    n_users: int
    copies: int
    intensity: float
    per_copy: Intensity
    target_rate: float | None  # the rate asked for, if one was

    @property
    def natural_rate(self) -> float:
        """Expected events/s of one copy, averaged over the week."""
        return self.per_copy.events_per_s

    def expected_rate(self, at_ms: int | np.ndarray) -> float | np.ndarray:
        """Expected events/s of all copies at wall-clock time ``at_ms``."""
        p = self.per_copy
        return self.copies * (p.shopper_events_per_s * seasonality(self.scenario, at_ms) + p.market_events_per_s)

    def warning(self) -> str | None:
        """Why the rate asked for is not what will run (more than 10% off: below one copy, or between two
        multiples of it), or None."""
        if self.target_rate is None:
            return None
        offered = self.copies * self.natural_rate
        if abs(offered / self.target_rate - 1) <= 0.1:
            return None
        if self.target_rate < self.natural_rate:
            return (f"rate {self.target_rate:g} is below one copy of the market ({self.natural_rate:.2f} events/s "
                    f"averaged over the week): running one copy")  # fmt: skip
        return (f"rate {self.target_rate:g} is not near a multiple of one copy ({self.natural_rate:.2f} events/s): "
                f"running {self.copies} copies, {offered:.2f} events/s averaged over the week")  # fmt: skip

    def describe(self, at_ms: int) -> str:
        """One line: copies, the expected rate now and the natural rate."""
        when = f"{_WEEKDAYS[int((at_ms // DAY_MS + 3) % 7)]} {int(at_ms // 3_600_000 % 24):02d}h UTC"
        n = f"{self.copies} copies" if self.copies != 1 else "1 copy"
        busy = f", intensity x{self.intensity:g}" if self.intensity != 1 else ""
        return (f"{n} of the market '{self.scenario.name}' ({self.n_products:,} products, {self.n_users:,} shoppers "
                f"each{busy}), expected {float(self.expected_rate(at_ms)):,.2f} events/s now ({when}; natural rate "
                f"{self.natural_rate:.2f}/s per copy averaged over the week)")  # fmt: skip


def plan_traffic(
    market: MarketState, *, rate: float | None = None, copies: int | None = None, intensity: float = 1.0
) -> TrafficPlan:
    """``copies`` copies, or ``max(1, round(rate / natural_rate))`` for a ``rate``; one copy without either."""
    if rate is not None and copies is not None:
        raise ValueError("give rate or copies, not both")
    if not (intensity > 0 and math.isfinite(intensity)):
        raise ValueError("intensity must be positive")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ValueError("rate must be positive")
    if copies is not None and copies < 1:
        raise ValueError("copies must be at least 1")
    per_copy = market_intensity(market, intensity=intensity)
    if copies is None:
        copies = 1 if rate is None else max(1, round(rate / per_copy.events_per_s))
    return TrafficPlan(scenario=market.scenario, n_products=market.n_products, n_users=market.n_users,
                       copies=int(copies), intensity=float(intensity), per_copy=per_copy,
                       target_rate=None if rate is None else float(rate))  # fmt: skip


@dataclass(order=True)
class View:
    """One scheduled price request of a live session (times on the run's monotonic clock, seconds)."""

    due_s: float
    seq: int
    user: int  # slot: copy * n_users + user
    product: int  # slot: copy * n_products + product
    channel: int  # index into CHANNELS
    session: int
    lead_s: float  # request lead: in the open loop the shopper views the price this long after asking


class Shoppers:
    """The shoppers of ``copies`` copies of ``market`` as a process in time: sessions, then their views.

    ``arrive(t0, t1, wall_ms)`` starts the sessions of ``(t0, t1]`` (monotonic seconds; the
    seasonality at ``wall_ms``) and schedules their views; ``due(now)`` pops the views whose
    time has come, in time order. ``warm_up(now, wall_ms)`` schedules the remaining views of
    sessions that started before ``now``, so a run starts in the steady state.
    """

    def __init__(self, market: MarketState, *, copies: int, intensity: float, rng: np.random.Generator) -> None:
        self.m = market
        self.copies = copies
        self.intensity = intensity
        self.rng = rng
        sc = market.scenario
        self.f = sc.funnel
        self._activity = np.cumsum(market.user_sessions_per_day)
        # sessions per second of all copies, before seasonality
        self.base_sessions_per_s = copies * intensity * float(market.user_sessions_per_day.sum()) / 86_400
        w = np.array([self.f.channels.get(c, 0.0) for c in CHANNELS])
        self._channel_p = w / w.sum()
        self._heap: list[View] = []
        self._seq = 0
        self.sessions = 0

    def __len__(self) -> int:
        return len(self._heap)

    def warm_up(self, now_s: float, wall_ms: int) -> None:
        """Sessions that started in the hour(s) before ``now_s`` (long enough that none is still under way
        from before), keeping only their views from ``now_s`` on."""
        span = 20.0 * self.f.view_gap_s * max(self.f.views_per_session, 1.0)
        edges = np.arange(-span, 0.0, 60.0)
        season = seasonality(self.m.scenario, wall_ms + (edges * 1000).astype(np.int64))
        counts = self.rng.poisson(self.base_sessions_per_s * np.minimum(60.0, -edges) * season)
        starts = np.repeat(edges, counts) + self.rng.random(int(counts.sum())) * np.repeat(np.minimum(60.0, -edges), counts)
        self._start(now_s + starts, keep_from=now_s)

    def arrive(self, t0_s: float, t1_s: float, wall_ms: int) -> int:
        """Start the sessions of ``(t0_s, t1_s]`` at the seasonality of ``wall_ms``; returns how many."""
        dt = t1_s - t0_s
        if dt <= 0:
            return 0
        n = int(self.rng.poisson(self.base_sessions_per_s * float(seasonality(self.m.scenario, wall_ms)) * dt))
        if n:
            self._start(t1_s - self.rng.random(n) * dt, keep_from=-math.inf)
        return n

    def _start(self, start_s: np.ndarray, *, keep_from: float) -> None:
        m, f, rng = self.m, self.f, self.rng
        n = start_s.size
        if n == 0:
            return
        copy = rng.integers(0, self.copies, n)
        user = np.minimum(np.searchsorted(self._activity, rng.random(n) * self._activity[-1], side="right"), m.n_users - 1)
        channel = rng.choice(len(CHANNELS), size=n, p=self._channel_p)
        n_views = 1 + rng.poisson(f.views_per_session - 1, n)
        sess = np.repeat(np.arange(n), n_views)
        first = np.concatenate([[0], np.cumsum(n_views)[:-1]]).astype(np.int64)
        gaps = rng.exponential(f.view_gap_s, sess.size)
        gaps[first] = 0.0
        csum = np.cumsum(gaps)
        due = start_s[sess] + (csum - csum[first][sess])
        product = sample_products(m, user[sess], rng=rng)
        lead = rng.uniform(f.request_lead_ms.low, f.request_lead_ms.high, sess.size) / 1000
        keep = due >= keep_from
        session_no = self.sessions + sess
        self.sessions += n
        user_slot = (copy * m.n_users + user)[sess]
        product_slot = copy[sess] * m.n_products + product
        for i in np.flatnonzero(keep).tolist():
            self._seq += 1
            heapq.heappush(self._heap, View(float(due[i]), self._seq, int(user_slot[i]), int(product_slot[i]),
                                            int(channel[sess[i]]), int(session_no[i]), float(lead[i])))  # fmt: skip

    def due(self, now_s: float) -> list[View]:
        """The scheduled views up to ``now_s``, in time order."""
        out = []
        while self._heap and self._heap[0].due_s <= now_s:
            out.append(heapq.heappop(self._heap))
        return out
