"""The pandas reference for the served features, shared by the parity and restore tests.

``reference_features`` is deliberately naive: for each request it filters the event
log to what happened at or before the request, per product and per user, and counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from confluent_kafka import Producer

from pricing.config import Settings
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.serde import Contract
from tests.helpers import read_topic

REL_TOL = 1e-9
ABS_TOL = 1e-6
MIN = 60_000


def _record(rec: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}


def produce_events(settings: Settings, frames: dict[Contract, pd.DataFrame]) -> None:
    """Send the frames to the settings' topics in arrival order; Kafka timestamp = event_time, key = product."""
    topics = settings.kafka.topics
    topic = {Contract.MARKET_EVENT: topics.market.name, Contract.BEHAVIOUR_EVENT: topics.behaviour.name,
             Contract.PRICE_REQUEST: topics.requests.name, Contract.CATALOGUE_ENTRY: topics.catalogue.name}
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 20})
    for contract, frame in frames.items():
        fields = [f["name"] for f in serde.published_schema(contract)["fields"]]
        for rec in frame.sort_values("arrival_time", kind="stable").reindex(columns=fields).to_dict("records"):
            rec = _record(rec)
            producer.produce(topic[contract], serde.encode(contract, rec), key=rec["product_id"].encode(),
                             timestamp=int(rec["event_time"]))
    producer.flush()


def catalogue_frame(entries: Iterable[dict]) -> pd.DataFrame:
    """``CatalogueEntry`` records as a frame (``attributes`` {} and ``active`` True unless given)."""
    frame = pd.DataFrame([{"attributes": {}, "active": True} | e for e in entries])
    frame["event_time"] = frame["event_time"].astype(np.int64)
    return frame


def _category_at(catalogue: pd.DataFrame, product_id: str, t: int, seq: int | None) -> str | None:
    """The product's category at ``t``: its latest catalogue entry by event time at or before ``t`` (ties: arrival
    order); with ``seq`` (arrival mode) among the entries that arrived before."""
    e = catalogue[(catalogue.product_id == product_id) & (catalogue.event_time <= t)
                  & ((catalogue.seq < seq) if seq is not None else True)]  # fmt: skip
    return str(e.sort_values(["event_time", "seq"]).category.iloc[-1]) if len(e) else None


def reference_features(
    requests: pd.DataFrame, behaviour: pd.DataFrame, market: pd.DataFrame, catalogue: pd.DataFrame | None = None,
    *, arrival: bool = False,
) -> pd.DataFrame:
    """Every feature for every request, recomputed naively from the events (``seq``: arrival order).

    ``arrival``: the arrival-mode reference. ``seq`` is then one order across all four frames (the
    order the job processed them in), and a request sees only the events before it in that order;
    a purchase's paid/list ratio uses the list prices that arrived before the purchase.

    ``catalogue`` (``CatalogueEntry`` rows with ``seq``; none: every category unknown) gives the
    ``user_category`` features: each behaviour event counts in the category its product had at the
    event (as the job's product stage sees it), the request's in the one its product has at the request.
    """
    if catalogue is None:
        catalogue = pd.DataFrame({"product_id": [], "category": [], "event_time": [], "seq": []})
    behaviour = behaviour.assign(category=[
        _category_at(catalogue, b.product_id, b.event_time, b.seq if arrival else None)
        for b in behaviour.itertuples(index=False)])  # fmt: skip
    c = FEATURE_SPEC.constants
    tau = c["demand_velocity_tau_ms"]
    rows = {}
    all_market, all_behaviour = market, behaviour
    for req in requests.itertuples(index=False):
        t, p, u = req.event_time, req.product_id, req.user_id
        if arrival:
            market, behaviour = all_market[all_market.seq < req.seq], all_behaviour[all_behaviour.seq < req.seq]
        m = market[(market.product_id == p) & (market.event_time <= t)].sort_values(["event_time", "seq"])
        b = behaviour[(behaviour.product_id == p) & (behaviour.event_time <= t)]

        def last(kind: str) -> float | None:
            v = m[m.kind == kind]
            return float(v.value.iloc[-1]) if len(v) else None

        def count(frame: pd.DataFrame, kind: str, window_ms: int) -> int:
            return int(((frame.type == kind) & (frame.event_time >= t - window_ms)).sum())

        comp = m[(m.kind == "competitor_price") & (m.event_time >= t - 15 * MIN)]
        purchases = b[(b.type == "purchase") & (b.event_time >= t - 60 * MIN)]
        promo = last("promotion")
        f = {
            "list_price_minor": last("list_price"), "unit_cost_minor": last("cost"),
            "competitor_min_15m_minor": float(comp.value.min()) if len(comp) else None,
            "competitor_mean_15m_minor": float(comp.value.mean()) if len(comp) else None,
            "competitor_events_15m": len(comp), "inventory": last("inventory"),
            "promotion_active": None if promo is None else float(promo > 0),
            "views_5m": count(b, "view", 5 * MIN), "carts_5m": count(b, "add_to_cart", 5 * MIN),
            "purchases_5m": count(b, "purchase", 5 * MIN), "views_1h": count(b, "view", 60 * MIN),
            "carts_1h": count(b, "add_to_cart", 60 * MIN), "purchases_1h": count(b, "purchase", 60 * MIN),
            "views_24h": count(b, "view", 24 * 60 * MIN), "purchases_24h": count(b, "purchase", 24 * 60 * MIN),
            "demand_velocity": float((purchases.quantity * np.exp(-(t - purchases.event_time) / tau)).sum()) * 3_600_000 / tau,
            "hour_of_day": (t // 3_600_000) % 24, "day_of_week": pd.Timestamp(t, unit="ms").dayofweek,
            "channel_web": float(req.channel == "web"), "channel_app": float(req.channel == "app"),
            "channel_marketplace": float(req.channel == "marketplace"),
            "is_new_product": float(len(m) + len(b) == 0),
        }
        f["conversion_1h"] = f["purchases_1h"] / f["views_1h"] if f["views_1h"] else None
        f["conversion_24h"] = f["purchases_24h"] / f["views_24h"] if f["views_24h"] else None
        if u:
            ub = behaviour[(behaviour.user_id == u) & (behaviour.event_time <= t)]
            bought = ub[ub.type == "purchase"]
            ratios = []
            for buy in bought.itertuples(index=False):  # paid / list price in force at the purchase
                lp = market[(market.product_id == buy.product_id) & (market.kind == "list_price")
                            & (market.event_time <= buy.event_time) & ((market.seq < buy.seq) if arrival else True)
                            ].sort_values(["event_time", "seq"])
                if len(lp) and lp.value.iloc[-1] > 0:
                    ratios.append(buy.price_seen_minor / lp.value.iloc[-1])
            w, prior = c["price_ratio_prior_weight"], c["price_ratio_prior_mean"]
            up = ub[ub.product_id == p]  # the user's own history with this product
            category = _category_at(catalogue, p, t, req.seq if arrival else None)
            uc = ub[ub.category == category] if category is not None else ub.iloc[:0]  # ... with its category
            f |= {
                "user_views_30m": count(ub, "view", 30 * MIN), "user_carts_30m": count(ub, "add_to_cart", 30 * MIN),
                "user_purchases_30m": count(ub, "purchase", 30 * MIN), "user_views_24h": count(ub, "view", 1440 * MIN),
                "user_carts_24h": count(ub, "add_to_cart", 1440 * MIN),
                "user_purchases_24h": count(ub, "purchase", 1440 * MIN),
                "user_price_ratio": (prior * w + sum(ratios)) / (w + len(ratios)),
                "user_secs_since_purchase": min((t - bought.event_time.max()) / 1000, c["never_purchased_secs"]) if len(bought) else None,
                "user_distinct_products_30m": ub[(ub.type == "view") & (ub.event_time >= t - 30 * MIN)].product_id.nunique(),
                "user_product_views_24h": count(up, "view", 1440 * MIN),
                "user_product_carts_24h": count(up, "add_to_cart", 1440 * MIN),
                "user_product_purchases_24h": count(up, "purchase", 1440 * MIN),
                "user_category_views_24h": count(uc, "view", 1440 * MIN),
                "user_category_carts_24h": count(uc, "add_to_cart", 1440 * MIN),
                "user_category_purchases_24h": count(uc, "purchase", 1440 * MIN),
                "is_new_user": float(len(ub) == 0),
            }
        rows[req.request_id] = FEATURE_SPEC.vector(f)
    return pd.DataFrame.from_dict(rows, orient="index", columns=FEATURE_SPEC.names)


AFFINITY = ("user_product_views_24h", "user_product_carts_24h", "user_product_purchases_24h",
            "user_category_views_24h", "user_category_carts_24h", "user_category_purchases_24h")


def assert_affinity_exercised(expected: pd.DataFrame) -> None:
    """The (user, product) and (user, category) features are non-zero in some rows, and the views differ there from
    the user's views of every product (and the category's from the product's): a parity test over these rows
    catches an affinity stage keyed by user alone, or a category stage keyed by product."""
    for name in AFFINITY:
        assert (expected[name] > 0).any(), f"no request has {name} > 0: the data does not exercise it"
    views = expected["user_product_views_24h"]
    assert ((views > 0) & (views < expected["user_views_24h"])).any(), "no request tells a product's views apart"
    cat = expected["user_category_views_24h"]
    assert ((cat > views) & (cat < expected["user_views_24h"])).any(), "no request tells a category's views apart"


def without_late(
    frames: dict[Contract, pd.DataFrame], dead_letters: Iterable[dict], *, allowance_ms: int
) -> tuple[dict[Contract, pd.DataFrame], int]:
    """The events the job kept: each frame minus the events it dead-lettered as late (matched by their bytes),
    with ``seq`` = arrival order. Also returns how many were dropped.

    Which out-of-order events are late depends on when the source emits watermarks, but a
    late event must be behind the allowance of some event of its topic that was sent before
    it (a watermark never runs ahead of what the source has read): checked for each one, so
    a job that rejected on-time events would fail here.
    """
    late_raw = {bytes(d["raw"]) for d in dead_letters}
    kept = {}
    for contract, frame in frames.items():
        fields = [f["name"] for f in serde.published_schema(contract)["fields"]]
        frame = frame.sort_values("arrival_time", kind="stable").reset_index(drop=True)
        frame["seq"] = frame.index
        encoded = [serde.encode(contract, _record(r)) for r in frame.reindex(columns=fields).to_dict("records")]
        late = pd.Series([e in late_raw for e in encoded], index=frame.index)
        newest_before = frame["event_time"].cummax().shift(1)
        wrongly_late = frame[late & ~(frame["event_time"] <= newest_before - allowance_ms)]
        assert wrongly_late.empty, f"{contract.value}: dead-lettered as late, but on time:\n{wrongly_late.head()}"
        kept[contract] = frame[~late]
    return kept, sum(len(frames[c]) - len(kept[c]) for c in frames)


def expected_features(settings: Settings, frames: dict[Contract, pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """The reference vectors of every request the job should have priced, and how many events were late.

    What the job dead-lettered is read back: only ``late`` is allowed, each once; those events
    are left out (whether an out-of-order event is late depends on watermark timing).
    """
    dlq = settings.kafka.topics.dead_letters.name
    late = [serde.decode(Contract.DEAD_LETTER, m.value()).record for m in read_topic(settings, dlq)]
    assert {d["error_kind"] for d in late} <= {"late"}, "only late events may be rejected here"
    kept, n_late = without_late(frames, late, allowance_ms=settings.job.watermark_out_of_orderness_ms)
    assert n_late == len(late), "every late event is dead-lettered once"
    expected = reference_features(kept[Contract.PRICE_REQUEST], kept[Contract.BEHAVIOUR_EVENT], kept[Contract.MARKET_EVENT],
                                  kept.get(Contract.CATALOGUE_ENTRY))  # fmt: skip
    return expected, n_late


@dataclass(frozen=True)
class Comparison:
    """Served vs expected features: the worst absolute difference, and the cells beyond tolerance."""

    requests: int
    worst_diff: float
    worst_at: tuple[str, str]
    mismatches: int
    example: str

    def summary(self) -> str:
        return (f"{self.requests} requests x {len(FEATURE_SPEC.names)} features; worst |diff| {self.worst_diff:.3g} "
                f"at {self.worst_at}; {self.mismatches} mismatches{', e.g. ' + self.example if self.mismatches else ''}")


def compare_features(served: dict[str, list[float]], expected: pd.DataFrame) -> Comparison:
    """Compare the served vectors (by request id) with ``expected`` within REL_TOL/ABS_TOL."""
    got = pd.DataFrame.from_dict(served, orient="index", columns=FEATURE_SPEC.names).loc[expected.index]
    diff = (got - expected).abs()
    allowed = ABS_TOL + REL_TOL * expected.abs()
    worst = (diff - allowed).stack().idxmax()
    bad = diff > allowed
    return Comparison(
        requests=len(expected),
        worst_diff=float(diff.stack().max()),
        worst_at=worst,
        mismatches=int(bad.sum().sum()),
        example=f"request {worst[0]} feature {worst[1]}: served {got.loc[worst]} vs expected {expected.loc[worst]}",
    )


def expected_arrival_features(
    settings: Settings, frames: dict[Contract, pd.DataFrame], *, duplicates: Iterable[str] = ()
) -> tuple[pd.DataFrame, int]:
    """``expected_features`` for arrival mode: ``arrival_time`` in ``frames`` is one order over all three
    (the order the job processed them in), and each request sees the events before it in that order.

    Dead letters may be ``late`` events (left out, as there) and ``duplicate`` requests, which must be
    exactly the copies of ``duplicates`` (request ids) after the first to arrive; those get no answer.
    """
    dlq = settings.kafka.topics.dead_letters.name
    letters = [serde.decode(Contract.DEAD_LETTER, m.value()).record for m in read_topic(settings, dlq)]
    late = [d for d in letters if d["error_kind"] == "late"]
    repeated = [d for d in letters if d["error_kind"] == "duplicate"]
    assert len(late) + len(repeated) == len(letters), f"unexpected dead letters: {letters[:3]}"
    kept, n_late = without_late(frames, late, allowance_ms=settings.job.watermark_out_of_orderness_ms)
    assert n_late == len(late), "every late event is dead-lettered once"
    for frame in kept.values():
        frame["seq"] = frame["arrival_time"]
    requests = kept[Contract.PRICE_REQUEST]
    first = ~requests.duplicated(["request_id", "product_id"], keep="first")  # sorted by arrival
    assert sorted(requests.loc[~first, "request_id"]) == sorted(duplicates)
    assert len(repeated) == int((~first).sum()), "every later copy is dead-lettered as duplicate"
    expected = reference_features(requests[first], kept[Contract.BEHAVIOUR_EVENT], kept[Contract.MARKET_EVENT],
                                  kept.get(Contract.CATALOGUE_ENTRY), arrival=True)
    return expected, n_late
