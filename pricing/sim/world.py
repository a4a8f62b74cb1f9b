"""The simulated market over time: exogenous dynamics, the stream of views, and replaying a policy.

``build_world`` draws everything that does not depend on our prices: competitor
price paths (random walks, level shifts, price wars), promotions, list-price and
cost drift, restocks, and every shopper visit (who views which product when) with
the uniform draws that decide their purchases. ``replay`` then runs one pricing
policy through that world, bucket by bucket, tracking stock (which does depend on
prices). Because the draws are fixed, every policy faces exactly the same shoppers
and luck: differences in profit are caused by the prices alone. History generation
replays the historical policy; evaluation replays each candidate policy.

State changes on a grid of ``step_minutes``; within a step each product's changes
take effect at a random offset (``change_offset_ms``), and views before that offset
still see the previous state, so market events and purchases agree to the millisecond.
Restocks happen at step starts; the policy sees the stock at the start of the step.

The dynamics model itself (rates, the competitors' random walk, price wars, promotions,
drift) is ``Dynamics``, shared with the live simulator, which moves the same model one
event at a time (see ``Dynamics`` for why there are two drivers). ``seasonality`` (shopper
traffic by hour and weekday) is shared too, and ``World.end_state`` (a ``MarketSnapshot``)
is where a live run continuing the world's history starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import pandas as pd

from pricing.sim._progress import Progress
from pricing.sim.market import (
    STREAM_DEMAND,
    STREAM_DYNAMICS,
    MarketState,
    rng_for,
    sample_products,
)
from pricing.sim.scenario import Scenario
from pricing_udfs.serde import Contract, enum_symbols

MARKET_KINDS = enum_symbols(Contract.MARKET_EVENT, "kind")  # in Avro order: MarketChanges.kind indexes it
KIND_COMPETITOR, KIND_INVENTORY, KIND_PROMOTION, KIND_LIST_PRICE, KIND_COST = (
    MARKET_KINDS.index(k) for k in ("competitor_price", "inventory", "promotion", "list_price", "cost")
)
CHANNELS = enum_symbols(Contract.PRICE_REQUEST, "channel")  # in Avro order: Views.channel indexes it
DAY_MS = 86_400_000


def seasonality(scenario: Scenario, time_ms: np.ndarray | int) -> np.ndarray:
    """Relative shopper traffic at these UTC times: hour-of-day x weekday weight, each normalised to mean 1.

    Averaged over a whole week it is exactly 1, so ``sessions_per_day`` is a weekly average. The history
    evaluates it at each step's start, the live simulator at the wall clock.
    """
    t = np.asarray(time_ms, dtype=np.int64)
    hourly = np.asarray(scenario.seasonality.hourly)
    weekly = np.asarray(scenario.seasonality.weekly)
    hour = (t // 3_600_000) % 24
    weekday = (t // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return hourly[hour] / hourly.mean() * weekly[weekday] / weekly.mean()


@dataclass(frozen=True, eq=False)
class MarketSnapshot:
    """The market's dynamic state at ``time_ms``, one row per product of one copy of the market.

    ``World.end_state`` is the state after its last step (stock is None there: stock depends on the
    policy replayed through the world); ``History.end_state`` adds the stock the historical policy
    left. A live run started with it (``LiveSimulator(start_state=...)``) continues that market:
    the same list prices, costs, competitor walks (price and the level it reverts to), price wars
    and promotions (ending when they would have), and stock.
    """

    time_ms: int
    list_price: np.ndarray  # int64
    unit_cost: np.ndarray  # int64
    competitor_level: np.ndarray  # [product, competitor] log-price level the walk reverts to; 0 where absent
    competitor_log_price: np.ndarray  # [product, competitor] log price before any price war; 0 where absent
    war_factor: np.ndarray  # 1 outside a price war
    war_ends_ms: np.ndarray  # int64, 0 outside a price war
    promotion_bp: np.ndarray  # int64, 0 outside a promotion
    promotion_ends_ms: np.ndarray  # int64, 0 outside a promotion
    stock: np.ndarray | None  # int64

    @property
    def n_products(self) -> int:
        return int(self.list_price.size)

    def competitor_prices(self, exists: np.ndarray) -> np.ndarray:
        """[product, competitor] prices in minor units (``Dynamics.competitor_prices``); 0 where absent."""
        prices = Dynamics.competitor_prices(self.competitor_log_price, self.war_factor[:, None])
        return np.where(exists, prices, 0).astype(np.int64)

    def save(self, path: Path, *, scenario: Scenario) -> None:
        """Write it (numpy ``.npz``) with what identifies its market: the scenario's name, seed and sizes."""
        if self.stock is None:
            raise ValueError("a snapshot without stock cannot be continued; save History.end_state")
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
        with path.open("wb") as out:
            np.savez_compressed(out, market=np.array(_identity(scenario)), **arrays)

    @classmethod
    def load(cls, path: Path, *, scenario: Scenario) -> "MarketSnapshot":
        """Read what ``save`` wrote; ``ValueError`` if it is another scenario's market (name, seed or sizes)."""
        with np.load(path, allow_pickle=False) as data:
            if str(data["market"]) != _identity(scenario):
                raise ValueError(f"{path} holds the market {str(data['market'])!r}, not {_identity(scenario)!r}")
            values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**values, "time_ms": int(values["time_ms"])})


def _identity(scenario: Scenario) -> str:
    return f"{scenario.name} seed {scenario.seed}: {scenario.n_products} products, {scenario.n_users} users"


@dataclass(frozen=True)
class Dynamics:
    """The scenario's market dynamics, written once for the two drivers that move them.

    ``build_world`` steps the model on the scenario's time grid over days: in each step every
    product and competitor changes with probability rate x step length. The live simulator
    (``pricing.sim.live``) moves it one event at a time instead, in wall-clock time: changes
    arrive as a Poisson process at ``daily_rates`` per day, the kind of each drawn with those
    rates as weights, and promotions and price wars end at their scheduled times, because a
    live run lasts minutes: on an hourly grid nothing would change during a run, and on a grid
    fine enough almost every draw would be "no change". The two drivers cannot share the
    stepping code, so they share everything else: the rates, the initial state (or a
    ``MarketSnapshot`` to continue from), the competitors' mean-reverting random walk, the
    price-war and promotion draws, and the list-price and cost drift.
    ``tests/pricing/sim/test_sim_dynamics.py`` checks that they agree: the same initial state,
    the world's realised changes per day match the rates, the live driver changes at them per
    copy of the market, promotions and wars last as long, and competitor prices spread alike.
    One known difference: the live driver picks a product, then one of its competitors, so a
    product's competitors share its update rate (each competitor updates at the world's rate on
    average over products, not each one).
    """

    market: MarketState

    @property
    def exists(self) -> np.ndarray:
        """[product, competitor]: whether the competitor sells the product."""
        return np.isfinite(self.market.competitor_ratio)

    @property
    def reversion(self) -> float:
        """Share of the gap to its level that a competitor price closes in one update."""
        c = self.market.scenario.competitors
        return min(1.0, c.mean_reversion_daily / c.updates_per_day)

    @property
    def update_sd(self) -> float:
        """sd of the log-price noise of one competitor update."""
        c = self.market.scenario.competitors
        return c.volatility_daily / np.sqrt(c.updates_per_day)

    def initial_log_price(self) -> np.ndarray:
        """[product, competitor]: log of the initial competitor prices (their levels); 0 where absent."""
        m = self.market
        return np.where(self.exists, np.log(m.list_price_minor[:, None] * np.nan_to_num(m.competitor_ratio, nan=1.0)), 0.0)

    def daily_rates(self) -> dict[str, float]:
        """Expected changes per day of each market kind (a promotion counts twice: start and end).

        The order is the live driver's draw order: changing it reshuffles live runs of a seed.
        """
        m = self.market
        sc = m.scenario
        n = m.n_products
        return {
            "competitor_price": float(m.n_competitors.sum() * sc.competitors.updates_per_day),
            "promotion": n * sc.promotions.starts_per_day * 2,
            "list_price": n * sc.catalogue.list_price_changes_per_day,
            "cost": n * sc.catalogue.cost_changes_per_day,
            "inventory": float((1.0 / m.restock_period_days).sum()),
        }

    def revert(self, log_price: np.ndarray, level: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """One competitor update: part of the way back to the level, plus noise."""
        return log_price + (self.reversion * (level - log_price) + noise)

    @staticmethod
    def competitor_prices(log_price: np.ndarray, war_factor: np.ndarray) -> np.ndarray:
        """Prices in whole minor units (at least 1) from log prices, cut by any price war."""
        return np.maximum(1, np.rint(np.exp(log_price) * war_factor))

    @staticmethod
    def drift(price: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """A list price or cost after a log-normal change, in whole minor units (at least 1)."""
        return np.maximum(1, np.rint(price * np.exp(noise)))

    def war_factor(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """Competitor prices are multiplied by this during a price war."""
        depth = self.market.scenario.competitors.price_war_depth
        return 1 - rng.uniform(depth.low, depth.high, size)

    def promotion_bp(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """The discount of a new promotion, in basis points."""
        depth = self.market.scenario.promotions.depth_bp
        return np.rint(rng.uniform(depth.low, depth.high, size))


@dataclass(frozen=True, eq=False)
class Views:
    """Every product view (one price request each), sorted by time, with its fixed random draws."""

    time_ms: np.ndarray
    user: np.ndarray
    product: np.ndarray
    session: np.ndarray
    channel: np.ndarray  # index into CHANNELS
    step: np.ndarray
    state_step: np.ndarray  # which step's market state the view sees
    u_purchase: np.ndarray  # buys iff u_purchase < true probability (and in stock)
    u_cart: np.ndarray  # abandons a cart iff u_cart < cart_abandon (when not buying)
    u_review: np.ndarray
    request_lead_ms: np.ndarray
    cart_delay_ms: np.ndarray
    purchase_delay_ms: np.ndarray
    review_delay_ms: np.ndarray

    def __len__(self) -> int:
        return int(self.time_ms.size)


@dataclass(frozen=True, eq=False)
class MarketChanges:
    """Exogenous market events (columnar): everything but stock changes caused by sales."""

    time_ms: np.ndarray
    product: np.ndarray
    kind: np.ndarray  # index into MARKET_KINDS
    competitor: np.ndarray  # index into market.competitor_ids, -1 if not a competitor price
    value: np.ndarray


@dataclass(frozen=True, eq=False)
class World:
    """One realisation of the market over ``days`` (arrays are [step, product] unless noted)."""

    market: MarketState
    days: int
    start_ms: int
    step_ms: int
    list_price: np.ndarray
    unit_cost: np.ndarray
    competitor_price: np.ndarray  # [step, product, competitor]; 0 where the competitor does not exist
    competitor_min: np.ndarray  # 0 when the product has no competitor
    promotion_bp: np.ndarray
    restock: np.ndarray  # bool: stock is topped up to capacity at the start of the step
    change_offset_ms: np.ndarray
    views: Views
    changes: MarketChanges
    step_bounds: np.ndarray  # views of step s are views[step_bounds[s]:step_bounds[s+1]]
    end_state: MarketSnapshot  # after the last step, at ``end_ms``; its stock is None (see MarketSnapshot)

    @property
    def n_steps(self) -> int:
        return int(self.list_price.shape[0])

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.n_steps * self.step_ms

    def at_views(self, array: np.ndarray) -> np.ndarray:
        """A [step, product] state array as seen by each view."""
        return array[self.views.state_step, self.views.product]


@dataclass(frozen=True, eq=False)
class Outcome:
    """What happened to every view of a world under one policy."""

    price: np.ndarray
    inventory_seen: np.ndarray  # stock at the start of the view's step (what the policy saw)
    inventory_at_view: np.ndarray  # true stock when the shopper looked
    anchor: np.ndarray  # product's last price before the view's step under this policy (0: none)
    probability: np.ndarray  # true purchase probability at the offered price (0 when out of stock)
    purchased: np.ndarray
    stock_time_ms: np.ndarray  # stock changes caused by sales (columnar)
    stock_product: np.ndarray
    stock_value: np.ndarray
    end_stock: np.ndarray  # stock after the last view (and before a restock at ``World.end_ms``)


Pricer = Callable[[pd.DataFrame], np.ndarray]


def build_world(market: MarketState, *, days: int, progress: TextIO | None = None) -> World:
    """Draw the exogenous market and all views for ``days`` days (deterministic in the scenario seed)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    sc = market.scenario
    step_ms = sc.step_minutes * 60_000
    n_steps = days * 1440 // sc.step_minutes
    status = Progress(progress)
    status.update(f"simulating market dynamics over {days} days", force=True)
    dyn = _dynamics(market, n_steps=n_steps, step_ms=step_ms)
    status.update(f"simulating shopper visits over {days} days", force=True)
    views = _views(market, n_steps=n_steps, step_ms=step_ms, change_offset_ms=dyn["change_offset_ms"])
    bounds = np.searchsorted(views.step, np.arange(n_steps + 1)).astype(np.int64)
    return World(
        market=market, days=days, start_ms=sc.start_time_ms, step_ms=step_ms, views=views, step_bounds=bounds, **dyn
    )


def _dynamics(market: MarketState, *, n_steps: int, step_ms: int) -> dict:
    """Competitors, promotions, list prices, costs and restocks, one vectorized step at a time."""
    sc = market.scenario
    rng = rng_for(sc.seed, STREAM_DYNAMICS)
    n = market.n_products
    step_days = sc.step_minutes / 1440
    start = sc.start_time_ms
    comp = sc.competitors
    cat = sc.catalogue
    promo_spec = sc.promotions

    model = Dynamics(market)
    offset = rng.integers(0, step_ms, (n_steps, n))
    offset[0] = 0
    exists = model.exists
    n_comp = exists.shape[1]
    level = model.initial_log_price()
    log_price = level.copy()
    list_price = market.list_price_minor.astype(np.float64)
    unit_cost = market.unit_cost_minor.astype(np.float64)
    war_left = np.zeros(n, np.int64)
    war_factor = np.ones(n)
    promo_left = np.zeros(n, np.int64)
    promo_bp = np.zeros(n, np.int64)
    steps_per_hour = 60 / sc.step_minutes
    p_update = min(1.0, comp.updates_per_day * step_days)

    t_days = np.arange(n_steps) * step_days
    cycle = np.floor((t_days[:, None] - market.restock_phase_days[None, :]) / market.restock_period_days[None, :])
    restock = np.zeros((n_steps, n), dtype=bool)
    restock[1:] = cycle[1:] != cycle[:-1]

    out_list = np.empty((n_steps, n), np.int64)
    out_cost = np.empty((n_steps, n), np.int64)
    out_comp = np.empty((n_steps, n, n_comp), np.int64)
    out_promo = np.empty((n_steps, n), np.int64)
    ev: list[tuple[np.ndarray, ...]] = []
    prev_list = prev_cost = prev_comp = prev_promo = None
    products = np.arange(n)
    for s in range(n_steps):
        if s > 0:
            ch = rng.random(n) < cat.list_price_changes_per_day * step_days
            list_price[ch] = model.drift(list_price[ch], rng.normal(0, cat.list_price_change_sd, ch.sum()))
            ch = rng.random(n) < cat.cost_changes_per_day * step_days
            unit_cost[ch] = model.drift(unit_cost[ch], rng.normal(0, cat.cost_change_sd, ch.sum()))
            shift = exists & (rng.random(exists.shape) < comp.step_changes_per_day * step_days)
            level[shift] += rng.normal(0, comp.step_change_sd, shift.sum())
            upd = exists & ((rng.random(exists.shape) < p_update) | shift)
            log_price[upd] = model.revert(log_price[upd], level[upd], rng.normal(0, model.update_sd, upd.sum()))
            war_left[war_left > 0] -= 1
            war_factor[war_left == 0] = 1.0
            war = (war_left == 0) & (market.n_competitors > 0) & (rng.random(n) < comp.price_war_per_day * step_days)
            war_factor[war] = model.war_factor(rng, war.sum())
            war_left[war] = np.ceil(rng.uniform(comp.price_war_duration_hours.low, comp.price_war_duration_hours.high,
                                                war.sum()) * steps_per_hour).astype(np.int64)  # fmt: skip
            promo_left[promo_left > 0] -= 1
            promo_bp[promo_left == 0] = 0
            start_promo = (promo_bp == 0) & (rng.random(n) < promo_spec.starts_per_day * step_days)
            promo_bp[start_promo] = model.promotion_bp(rng, start_promo.sum())
            promo_left[start_promo] = np.ceil(rng.uniform(promo_spec.duration_hours.low, promo_spec.duration_hours.high,
                                                          start_promo.sum()) * steps_per_hour).astype(np.int64)  # fmt: skip
        comp_price = np.where(exists, model.competitor_prices(log_price, war_factor[:, None]), 0).astype(np.int64)
        if sc.shift is not None and s * step_ms >= sc.shift.start_day * DAY_MS:  # competitors undercut from then on
            comp_price = np.rint(comp_price * sc.shift.competitor_factor).astype(np.int64)
        out_list[s], out_cost[s], out_comp[s], out_promo[s] = list_price, unit_cost, comp_price, promo_bp
        t = start + s * step_ms + offset[s]
        if s == 0:
            ev.append((t, products, np.full(n, KIND_LIST_PRICE), np.full(n, -1), out_list[s]))
            ev.append((t, products, np.full(n, KIND_COST), np.full(n, -1), out_cost[s]))
            ev.append((t, products, np.full(n, KIND_INVENTORY), np.full(n, -1), market.capacity))
            ev.append(_promo_events(t, promo_bp, promo_bp > 0))
            ev.append(_competitor_events(t, comp_price, exists))
        else:
            ev.append(_changed(t, out_list[s], prev_list, KIND_LIST_PRICE))
            ev.append(_changed(t, out_cost[s], prev_cost, KIND_COST))
            ev.append(_promo_events(t, promo_bp, promo_bp != prev_promo))
            ev.append(_competitor_events(t, comp_price, exists & (comp_price != prev_comp)))
            r = restock[s]
            ev.append((np.full(r.sum(), start + s * step_ms), products[r], np.full(r.sum(), KIND_INVENTORY),
                       np.full(r.sum(), -1), market.capacity[r]))  # fmt: skip
        prev_list, prev_cost, prev_comp, prev_promo = out_list[s], out_cost[s], comp_price, promo_bp.copy()

    end_ms = start + n_steps * step_ms

    def ends(left: np.ndarray) -> np.ndarray:  # a war or promotion with k steps left ends at the start of step n-1+k
        return np.where(left > 0, end_ms + (left - 1) * step_ms, 0).astype(np.int64)

    end_state = MarketSnapshot(
        time_ms=end_ms, list_price=out_list[-1].copy(), unit_cost=out_cost[-1].copy(), competitor_level=level,
        competitor_log_price=log_price, war_factor=war_factor, war_ends_ms=ends(war_left),
        promotion_bp=promo_bp.copy(), promotion_ends_ms=ends(promo_left), stock=None,
    )  # fmt: skip
    with np.errstate(invalid="ignore"):
        comp_min = np.where(exists[None], out_comp, np.iinfo(np.int64).max).min(axis=2)
    comp_min = np.where(market.n_competitors[None, :] > 0, comp_min, 0)
    cols = [np.concatenate([e[i] for e in ev]) for i in range(5)]
    order = np.argsort(cols[0], kind="stable")
    changes = MarketChanges(*(c[order].astype(np.int64) for c in cols))
    return {
        "list_price": out_list,
        "unit_cost": out_cost,
        "competitor_price": out_comp,
        "competitor_min": comp_min.astype(np.int64),
        "promotion_bp": out_promo,
        "restock": restock,
        "change_offset_ms": offset,
        "changes": changes,
        "end_state": end_state,
    }


def _changed(t: np.ndarray, now: np.ndarray, before: np.ndarray, kind: int) -> tuple[np.ndarray, ...]:
    m = now != before
    return t[m], np.flatnonzero(m), np.full(m.sum(), kind), np.full(m.sum(), -1), now[m]


def _promo_events(t: np.ndarray, bp: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    return t[mask], np.flatnonzero(mask), np.full(mask.sum(), KIND_PROMOTION), np.full(mask.sum(), -1), bp[mask]


def _competitor_events(t: np.ndarray, price: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    prod, comp = np.nonzero(mask)
    return t[prod], prod, np.full(prod.size, KIND_COMPETITOR), comp, price[prod, comp]


def _views(market: MarketState, *, n_steps: int, step_ms: int, change_offset_ms: np.ndarray) -> Views:
    """Sessions by seasonality and user activity, then views by taste and popularity."""
    sc = market.scenario
    rng = rng_for(sc.seed, STREAM_DEMAND)
    f = sc.funnel
    start = sc.start_time_ms
    step_start = start + np.arange(n_steps, dtype=np.int64) * step_ms
    season = seasonality(sc, step_start)
    per_step = market.user_sessions_per_day.sum() * sc.step_minutes / 1440
    n_sessions = rng.poisson(per_step * season)
    total = int(n_sessions.sum())

    sess_start = np.repeat(step_start, n_sessions) + rng.integers(0, step_ms, total)
    activity = np.cumsum(market.user_sessions_per_day)
    sess_user = np.minimum(np.searchsorted(activity, rng.random(total) * activity[-1], side="right"), market.n_users - 1)
    weights = np.array([f.channels.get(c, 0.0) for c in CHANNELS])
    sess_channel = rng.choice(len(CHANNELS), size=total, p=weights / weights.sum()).astype(np.int8)
    n_views = 1 + rng.poisson(f.views_per_session - 1, total)

    view_sess = np.repeat(np.arange(total), n_views)
    first = np.concatenate([[0], np.cumsum(n_views)[:-1]]).astype(np.int64)
    gaps = rng.exponential(f.view_gap_s * 1000, view_sess.size)
    gaps[first] = 0.0
    csum = np.cumsum(gaps)
    time_ms = sess_start[view_sess] + np.rint(csum - csum[first][view_sess]).astype(np.int64)
    user = sess_user[view_sess]
    product = sample_products(market, user, rng=rng)

    keep = time_ms < start + n_steps * step_ms
    order = np.flatnonzero(keep)[np.argsort(time_ms[keep], kind="stable")]
    time_ms, user, product, view_sess = time_ms[order], user[order], product[order], view_sess[order]
    v = time_ms.size
    step = (time_ms - start) // step_ms
    within = time_ms - step_start[step]
    state_step = np.maximum(step - (within < change_offset_ms[step, product]), 0)

    def delays(span: object, scale: float) -> np.ndarray:
        return np.rint(rng.uniform(span.low, span.high, v) * scale).astype(np.int64)  # type: ignore[attr-defined]

    return Views(
        time_ms=time_ms,
        user=user.astype(np.int64),
        product=product,
        session=view_sess.astype(np.int64),
        channel=sess_channel[view_sess],
        step=step.astype(np.int64),
        state_step=state_step.astype(np.int64),
        u_purchase=rng.random(v),
        u_cart=rng.random(v),
        u_review=rng.random(v),
        request_lead_ms=delays(f.request_lead_ms, 1),
        cart_delay_ms=delays(f.cart_delay_s, 1000),
        purchase_delay_ms=delays(f.purchase_delay_s, 1000),
        review_delay_ms=delays(f.review_delay_hours, 3_600_000),
    )


def step_batch(world: World, a: int, b: int, *, inventory: np.ndarray, anchor: np.ndarray) -> pd.DataFrame:
    """The policy input for views ``a:b``: what a pricing engine could know at request time."""
    m = world.market
    v = world.views
    prod = v.product[a:b]
    ks = v.state_step[a:b]
    bp = world.promotion_bp[ks, prod]
    return pd.DataFrame(
        {
            "user_id": m.user_ids[v.user[a:b]],
            "product_id": m.product_ids[prod],
            "reference_price_minor": world.list_price[ks, prod],
            "competitor_min_minor": world.competitor_min[ks, prod],
            "unit_cost_minor": world.unit_cost[ks, prod],
            "inventory": inventory[prod],
            "promotion_active": bp > 0,
            "promotion_bp": bp,
            "event_time": v.time_ms[a:b] - v.request_lead_ms[a:b],
            "user_index": v.user[a:b],
            "product_index": prod,
            "category": np.asarray(m.category_names, dtype=object)[m.product_category[prod]],
            "channel": np.asarray(CHANNELS, dtype=object)[v.channel[a:b]],
            "anchor_price_minor": anchor[prod],
            "view_index": np.arange(a, b),  # the view's position: history names its request h<seed>-r<view_index>
            # the market's state time (the scenario's shift applies by it: Scenario.sensitivity_scale)
            "state_time_ms": world.start_ms + ks.astype(np.int64) * world.step_ms,
        }
    )


StepHook = Callable[[int, int, np.ndarray, np.ndarray], None]


def replay(world: World, pricer: Pricer, *, progress: TextIO | None = None, label: str = "policy",
           on_step: StepHook | None = None) -> Outcome:  # fmt: skip
    """Run one policy through the world: price each step's views, decide purchases, track stock.

    Within a step, shoppers are served in time order: a purchase happens iff the
    shopper's draw is below the true probability and stock is left when they look.
    ``on_step(a, b, prices, bought)`` sees each step's outcome (views ``a:b``) as it happens, before the next
    step is priced: a policy that learns from its own sales reads them there.
    """
    m = world.market
    v = world.views
    n_views = len(v)
    price = np.zeros(n_views, np.int64)
    inv_seen = np.zeros(n_views, np.int64)
    inv_view = np.zeros(n_views, np.int64)
    anchors = np.zeros(n_views, np.int64)
    prob = np.zeros(n_views)
    bought = np.zeros(n_views, dtype=bool)
    stock = m.capacity.copy()
    anchor = np.zeros(m.n_products, np.int64)
    purchase_time = v.time_ms + v.cart_delay_ms + v.purchase_delay_ms
    st_t: list[np.ndarray] = []
    st_p: list[np.ndarray] = []
    st_v: list[np.ndarray] = []
    status = Progress(progress)
    for s in range(world.n_steps):
        r = world.restock[s]
        stock[r] = m.capacity[r]
        a, b = int(world.step_bounds[s]), int(world.step_bounds[s + 1])
        status.update(f"replaying {label}: day {s * world.step_ms // DAY_MS + 1}/{world.days}")
        if a == b:
            continue
        prod = v.product[a:b]
        ks = v.state_step[a:b]
        batch = step_batch(world, a, b, inventory=stock, anchor=anchor)
        p = _checked_prices(pricer(batch), b - a, label)
        start_stock = stock[prod]
        p_in_stock = m.probability(
            user_idx=v.user[a:b], product_idx=prod, offered_price=p, reference_price=world.list_price[ks, prod],
            competitor_min=world.competitor_min[ks, prod], promotion_active=world.promotion_bp[ks, prod] > 0,
            inventory=1, sensitivity_scale=m.scenario.sensitivity_scale(world.start_ms + ks.astype(np.int64) * world.step_ms),
        )  # fmt: skip
        intent = (v.u_purchase[a:b] < p_in_stock) & (start_stock > 0)
        before = _exclusive_count_by_group(prod, intent)
        available = before < start_stock
        buy = intent & available
        price[a:b] = p
        inv_seen[a:b] = start_stock
        inv_view[a:b] = np.maximum(start_stock - before, 0)
        anchors[a:b] = anchor[prod]
        prob[a:b] = p_in_stock * available
        bought[a:b] = buy
        if buy.any():
            sold_prod = prod[buy]
            stock -= np.bincount(sold_prod, minlength=m.n_products)
            last_t = np.zeros(m.n_products, np.int64)
            np.maximum.at(last_t, sold_prod, purchase_time[a:b][buy])
            changed = np.unique(sold_prod)
            step_end = world.start_ms + (s + 1) * world.step_ms
            st_t.append(np.minimum(last_t[changed], step_end - 1))  # before the next step's restock
            st_p.append(changed)
            st_v.append(stock[changed].copy())
        rev_prod, rev_idx = np.unique(prod[::-1], return_index=True)
        anchor[rev_prod] = p[::-1][rev_idx]
        if on_step is not None:
            on_step(a, b, p, buy)
    status.clear()
    empty = np.zeros(0, np.int64)
    return Outcome(
        price=price,
        inventory_seen=inv_seen,
        inventory_at_view=inv_view,
        anchor=anchors,
        probability=prob,
        purchased=bought,
        stock_time_ms=np.concatenate(st_t) if st_t else empty,
        stock_product=np.concatenate(st_p) if st_p else empty,
        stock_value=np.concatenate(st_v) if st_v else empty,
        end_stock=stock.copy(),
    )


def _checked_prices(prices: object, n: int, label: str) -> np.ndarray:
    """Policy output as int64 minor units; a wrong shape or a non-positive price is the policy's bug."""
    arr = np.asarray(prices, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"policy {label} returned shape {arr.shape}, expected ({n},)")
    if not np.all(np.isfinite(arr)) or np.any(arr < 1):
        raise ValueError(f"policy {label} returned a non-finite or non-positive price")
    return np.rint(arr).astype(np.int64)


def _exclusive_count_by_group(group: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """For each row, how many earlier rows of the same group have ``flag`` set."""
    if group.size == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(group, kind="stable")
    g = group[order]
    f = flag[order].astype(np.int64)
    excl = np.cumsum(f) - f
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    gid = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
    out = np.empty_like(excl)
    out[order] = excl - excl[starts][gid]
    return out
