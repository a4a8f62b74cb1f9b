"""Historical logs for training and backfills: what the shop would have recorded over N days.

The simulated world is replayed under the historical policy (list price x a random
multiplier, see ``HistoricalPolicy``), and the outcome is turned into the three
input contracts of the engine: behaviour events (views, carts, purchases, reviews),
market events (competitor prices, stock, promotions, list prices, costs) and price
requests (one per view, slightly before it). The view and the cart, purchase and review
that follow it carry that request's ``request_id``, as live traffic answering an engine
price does, so training attributes purchases to offers the same way for both. A
configurable share of behaviour and market events arrives late: files are in arrival
order, so those event_times are out of order, exactly as a consumer would see them.
Price requests are never late: a storefront asks synchronously.

``History.end_state`` is the market after the last step (stock included), which a live run
continues (``LiveSimulator(start_state=...)``); ``history_ending_at`` moves a scenario in time
so that its history ends now, and ``pricing.sim.publish`` writes it into the input topics.
Behaviour events that follow a view late in the history (a purchase minutes later, a review
up to a day later) can fall after its end, as they would in a shop's logs.

Everything is columnar numpy; only the final dict rows fastavro needs are built,
lazily, while writing.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np
import pandas as pd

from pricing.sim._progress import Progress
from pricing.sim.market import (STREAM_HISTORICAL_POLICY, STREAM_LATENESS, MarketState, build_market,
                                catalogue_entries, rng_for)  # fmt: skip
from pricing.sim.policies import HistoricalPolicy
from pricing.sim.scenario import Scenario
from pricing.sim.world import (
    CHANNELS,
    DAY_MS,
    KIND_INVENTORY,
    MARKET_KINDS,
    MarketSnapshot,
    Outcome,
    World,
    build_world,
    replay,
)
from pricing_udfs.serde import Contract, enum_symbols, money_kinds, published_schema, write_container

FILES = {
    Contract.BEHAVIOUR_EVENT: "behaviour_events.avro",
    Contract.MARKET_EVENT: "market_events.avro",
    Contract.PRICE_REQUEST: "price_requests.avro",
}
# The catalogue (CatalogueEntry, one per product, stamped at the history's start), written beside FILES: the backfill
# reads each product's category from it (features/4).
CATALOGUE_FILE = "catalogue.avro"
END_STATE_FILE = "market_end_state.npz"  # History.end_state, written next to the files by ``pricing simulate history``
BEHAVIOUR_TYPES = enum_symbols(Contract.BEHAVIOUR_EVENT, "type")


@dataclass(frozen=True, eq=False)
class History:
    """The logs of one simulated period as DataFrames (Avro field names, plus ``arrival_time``).

    ``impressions`` is not a contract: it is one row per view with the market context,
    the outcome and the hidden truth (``true_probability``, ``price_sensitivity``),
    for training demand models and for tests. ``end_state`` is the market at ``end_ms``
    (after the last step, stock included): a live run started from it continues this market.
    Events cover ``[scenario.start_time_ms, end_ms)`` by event time; a late one may arrive after.
    """

    scenario: Scenario
    days: int
    behaviour: pd.DataFrame
    market_events: pd.DataFrame
    requests: pd.DataFrame
    impressions: pd.DataFrame
    end_state: MarketSnapshot

    @property
    def start_ms(self) -> int:
        return self.scenario.start_time_ms

    @property
    def end_ms(self) -> int:
        return self.end_state.time_ms

    def frames(self) -> dict[Contract, pd.DataFrame]:
        return {
            Contract.BEHAVIOUR_EVENT: self.behaviour,
            Contract.MARKET_EVENT: self.market_events,
            Contract.PRICE_REQUEST: self.requests,
        }

    def counts(self) -> dict[str, int]:
        return {FILES[c]: len(df) for c, df in self.frames().items()}

    @property
    def n_events(self) -> int:
        return sum(self.counts().values())


@dataclass(frozen=True)
class HistoryRun:
    """What ``simulate_history`` wrote, and how fast."""

    out_dir: Path
    files: dict[str, Path]
    counts: dict[str, int]
    seconds: float

    @property
    def n_events(self) -> int:
        return sum(self.counts.values())

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        parts = ", ".join(f"{name.removesuffix('.avro')} {n:,}" for name, n in self.counts.items())
        return (
            f"wrote {self.n_events:,} events ({parts}) to {self.out_dir} in {self.seconds:.1f} s "
            f"({self.events_per_s:,.0f} events/s)"
        )


def history_ending_at(scenario: Scenario, *, days: int, end_ms: int) -> Scenario:
    """``scenario`` moved in time so that ``days`` of history end at or just before ``end_ms``.

    The start is a multiple of the scenario's step (which divides a day) since the epoch, as the
    default start is, so steps stay aligned with UTC hours and days: the hour-of-day and weekday
    seasonality, restock cycles and every feature window see the same calendar as any other start.
    The history then ends less than one step before ``end_ms`` (``start + days <= end_ms``): up
    to an hour for the named scenarios, an hour in which a live run that follows finds fewer
    views in the windows than usual. A finer step (``scenario.with_overrides(step_minutes=15)``,
    the same market at the same rates, its history a little slower to simulate) narrows that gap.
    Everything else, the seed included, is unchanged: the same market (catalogue, users, hidden
    truth), living through other dates.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    step_ms = scenario.step_minutes * 60_000
    start = (end_ms - days * DAY_MS) // step_ms * step_ms
    if start <= 0:
        raise ValueError(f"{days} days ending at {end_ms} would start before 1970")
    return scenario.with_overrides(start_time_ms=int(start))


def generate_history(
    scenario: Scenario, *, days: int, market: MarketState | None = None, progress: TextIO | None = None,
    world: World | None = None,
) -> History:
    """Simulate ``days`` days of logs under the historical policy, as DataFrames (no files). ``world``: the
    scenario's world for these days when the caller already built it (``build_world``), else built here."""
    if world is not None and (world.days != days or world.market.scenario != scenario):
        raise ValueError("world is not this scenario's world over these days")
    market = world.market if world is not None else market or build_market(scenario)
    world = world if world is not None else build_world(market, days=days, progress=progress)
    hp = scenario.historical_policy
    policy = HistoricalPolicy(
        multiplier=hp.multiplier,
        seed=[scenario.seed, STREAM_HISTORICAL_POLICY],
        apply_promotion_discount=hp.apply_promotion_discount,
    )
    outcome = replay(world, policy.price, progress=progress, label="historical policy")
    status = Progress(progress)
    status.update("assembling events", force=True)
    return _assemble(world, outcome)


def _assemble(world: World, outcome: Outcome) -> History:
    sc = world.market.scenario
    m = world.market
    v = world.views
    f = sc.funnel
    late_rng = rng_for(sc.seed, STREAM_LATENESS)
    seed = sc.seed
    n = len(v)
    view_idx = np.arange(n)
    request_ids = np.array([f"h{seed}-r{i}" for i in range(n)], dtype=object)
    n_sessions = int(v.session.max()) + 1 if n else 0
    session_ids = np.array([f"h{seed}-s{i}" for i in range(n_sessions)], dtype=object)

    bought = outcome.purchased
    in_stock = outcome.inventory_at_view > 0
    cart = bought | (~bought & in_stock & (v.u_cart < f.cart_abandon))
    review = bought & (v.u_review < f.review_rate)
    cart_t = v.time_ms + v.cart_delay_ms
    buy_t = cart_t + v.purchase_delay_ms
    rows = np.concatenate([view_idx, view_idx[cart], view_idx[bought], view_idx[review]])
    funnel = np.array([BEHAVIOUR_TYPES.index(t) for t in ("view", "add_to_cart", "purchase", "review")], np.int8)
    btype = np.repeat(funnel, [n, int(cart.sum()), int(bought.sum()), int(review.sum())])
    btime = np.concatenate([v.time_ms, cart_t[cart], buy_t[bought], (buy_t + v.review_delay_ms)[review]])
    arrival = _arrival(btime, late_rng, sc)
    order = np.lexsort((btype, btime, arrival))
    rows, btype, btime, arrival = rows[order], btype[order], btime[order], arrival[order]
    behaviour = pd.DataFrame(
        {
            "event_id": np.array([f"h{seed}-e{i}" for i in range(rows.size)], dtype=object),
            "user_id": m.user_ids[v.user[rows]],
            "product_id": m.product_ids[v.product[rows]],
            "type": np.asarray(BEHAVIOUR_TYPES, dtype=object)[btype],
            "price_seen_minor": outcome.price[rows],
            "currency": sc.currency,
            "quantity": np.ones(rows.size, np.int32),
            "session_id": session_ids[v.session[rows]],
            "event_time": btime,
            # The request whose answer (the historical price) the view showed; its cart, purchase and
            # review follow that price too, as in the live closed loop: training attributes by it.
            "request_id": request_ids[rows],
            "arrival_time": arrival,
        }
    )

    ch = world.changes
    kind = np.concatenate([ch.kind, np.full(outcome.stock_product.size, KIND_INVENTORY)])
    mtime = np.concatenate([ch.time_ms, outcome.stock_time_ms])
    mprod = np.concatenate([ch.product, outcome.stock_product])
    mcomp = np.concatenate([ch.competitor, np.full(outcome.stock_product.size, -1)])
    mvalue = np.concatenate([ch.value, outcome.stock_value])
    marrival = _arrival(mtime, late_rng, sc)
    order = np.lexsort((mtime, marrival))
    kind, mtime, mprod, mcomp, mvalue, marrival = (a[order] for a in (kind, mtime, mprod, mcomp, mvalue, marrival))
    kind_names = np.asarray(MARKET_KINDS, dtype=object)[kind]
    comp_names = np.asarray((None, *m.competitor_ids), dtype=object)[mcomp + 1]
    money = np.isin(kind, [MARKET_KINDS.index(k) for k in money_kinds()])
    market_events = pd.DataFrame(
        {
            "product_id": m.product_ids[mprod],
            "kind": kind_names,
            "competitor_id": comp_names,
            "value": mvalue,
            "currency": np.where(money, sc.currency, "").astype(object),
            "event_time": mtime,
            "arrival_time": marrival,
        }
    )

    req_time = v.time_ms - v.request_lead_ms
    req_order = np.argsort(req_time, kind="stable")  # leads vary, so view order is not request order
    channel = np.asarray(CHANNELS, dtype=object)[v.channel]
    requests = pd.DataFrame(
        {
            "request_id": request_ids[req_order],
            "user_id": m.user_ids[v.user[req_order]],
            "product_id": m.product_ids[v.product[req_order]],
            "channel": channel[req_order],
            "event_time": req_time[req_order],
            "arrival_time": req_time[req_order],
        }
    )

    ref = world.at_views(world.list_price)
    bp = world.at_views(world.promotion_bp)
    impressions = pd.DataFrame(
        {
            "request_id": request_ids,
            "event_time": v.time_ms,
            "user_index": v.user,
            "product_index": v.product,
            "segment": np.asarray(m.segment_names, dtype=object)[m.user_segment[v.user]],
            "category": np.asarray(m.category_names, dtype=object)[m.product_category[v.product]],
            "channel": channel,
            "price_minor": outcome.price,
            "reference_price_minor": ref,
            "competitor_min_minor": world.at_views(world.competitor_min),
            "unit_cost_minor": world.at_views(world.unit_cost),
            "promotion_active": bp > 0,
            "promotion_bp": bp,
            "inventory": outcome.inventory_at_view,
            "added_to_cart": cart,
            "purchased": bought,
            "reviewed": review,
            "true_probability": outcome.probability,
            "price_sensitivity": m.price_sensitivity(v.user, v.product),
        }
    )
    return History(
        scenario=sc, days=world.days, behaviour=behaviour, market_events=market_events, requests=requests,
        impressions=impressions, end_state=dataclasses.replace(world.end_state, stock=outcome.end_stock),
    )  # fmt: skip


def _arrival(event_time: np.ndarray, rng: np.random.Generator, scenario: Scenario) -> np.ndarray:
    """When each event reaches the log: on time, or (for a share) late by an exponential delay."""
    late = scenario.lateness
    is_late = rng.random(event_time.size) < late.share
    delay = np.minimum(rng.exponential(max(late.mean_ms, 1e-9), event_time.size), late.max_ms)
    return event_time + np.where(is_late, np.rint(delay), 0).astype(np.int64)


def write_history(history: History, out_dir: Path, *, progress: TextIO | None = None) -> dict[str, Path]:
    """Write one Avro container file per contract into ``out_dir`` (created if missing), and the catalogue
    (``CATALOGUE_FILE``: each product's ``CatalogueEntry``, stamped at the history's start, as ``pricing.sim.publish``
    sends it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    status = Progress(progress)
    paths: dict[str, Path] = {}
    entries = catalogue_entries(build_market(history.scenario), event_time_ms=history.start_ms)
    write_container(out_dir / CATALOGUE_FILE, Contract.CATALOGUE_ENTRY, entries)
    paths[CATALOGUE_FILE] = out_dir / CATALOGUE_FILE
    for contract, frame in history.frames().items():
        path = out_dir / FILES[contract]
        write_container(path, contract, _rows(frame, _fields(contract, frame), status=status, label=FILES[contract]))
        paths[FILES[contract]] = path
    status.clear()
    return paths


def _fields(contract: Contract, frame: pd.DataFrame) -> tuple[str, ...]:
    """The contract's fields (schema order) that ``frame`` has; a field it lacks is written as the schema's default."""
    fields = published_schema(contract)["fields"]
    missing = [f["name"] for f in fields if f["name"] not in frame.columns and "default" not in f]
    if missing:
        raise ValueError(f"{contract.value}: the frame lacks {missing}, which have no default in the schema")
    return tuple(f["name"] for f in fields if f["name"] in frame.columns)


def _rows(frame: pd.DataFrame, fields: tuple[str, ...], *, status: Progress, label: str) -> Iterator[dict[str, Any]]:
    """Dict rows for fastavro, built lazily from columns (plain Python ints/strs via ``tolist``)."""
    total = len(frame)
    columns = [frame[c].tolist() for c in fields]
    chunk = 100_000
    for start in range(0, total, chunk):
        status.update(f"writing {label}: {start:,}/{total:,}")
        for values in zip(*(c[start : start + chunk] for c in columns)):
            yield dict(zip(fields, values))


def simulate_history(
    scenario: Scenario, *, days: int, out_dir: Path, progress: TextIO | None = None
) -> HistoryRun:
    """Generate ``days`` of logs for ``scenario`` and write them as Avro files; report the throughput."""
    t0 = time.perf_counter()
    history = generate_history(scenario, days=days, progress=progress)
    files = write_history(history, out_dir, progress=progress)
    return HistoryRun(out_dir=out_dir, files=files, counts=history.counts(), seconds=time.perf_counter() - t0)
