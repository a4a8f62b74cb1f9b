"""Point-in-time parity: the job's served features == a plain pandas recomputation.

The simulator writes a day of events with out-of-order and late arrivals (plus
hand-made cold-start, anonymous and window-boundary cases). The job runs on the real
MiniCluster against the real broker; every priced event logs the feature vector it
served. An independent, deliberately naive pandas implementation recomputes every
feature for every request from the same events (minus those the job dead-lettered
as late) and the two must agree for every request and feature.

Whether an out-of-order event counts as late depends on when the source emits its
next watermark, so here lateness is taken from what the job dead-lettered; the
deterministic late-event test is ``test_late_events.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer

from jobs import pricing_job
from pricing.config import Settings
from pricing.sim.history import generate_history
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.serde import Contract
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

REL_TOL = 1e-9
ABS_TOL = 1e-6
MIN = 60_000


def _crafted(start: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Boundary, cold-start and anonymous cases the simulator does not produce on purpose."""
    t = start + 6 * 3_600_000
    market = [
        {"product_id": "edge", "kind": "list_price", "competitor_id": None, "value": 1000, "currency": "EUR", "event_time": t - 30 * MIN},
        {"product_id": "edge", "kind": "competitor_price", "competitor_id": "c1", "value": 900, "currency": "EUR", "event_time": t - 15 * MIN},
        {"product_id": "edge", "kind": "competitor_price", "competitor_id": "c2", "value": 800, "currency": "EUR", "event_time": t - 15 * MIN - 1},
        {"product_id": "edge", "kind": "promotion", "competitor_id": None, "value": 1500, "currency": "", "event_time": t},
    ]
    behaviour = []
    for i, (dt, kind) in enumerate([(5 * MIN, "view"), (5 * MIN + 1, "view"), (60 * MIN, "purchase"), (60 * MIN + 1, "purchase"), (0, "purchase")]):
        behaviour.append({
            "event_id": f"edge-e{i}", "user_id": "edge-user", "product_id": "edge", "type": kind, "price_seen_minor": 950,
            "currency": "EUR", "quantity": 2, "session_id": "edge-s", "event_time": t - dt, "request_id": None,
        })
    requests = [
        {"request_id": "edge-r0", "user_id": "edge-user", "product_id": "edge", "channel": "marketplace", "event_time": t},
        {"request_id": "edge-r1", "user_id": "", "product_id": "edge", "channel": "app", "event_time": t},  # anonymous
        {"request_id": "edge-r2", "user_id": "brand-new-user", "product_id": "brand-new-product", "channel": "web", "event_time": t},
    ]
    return market, behaviour, requests


def _produce(settings: Settings, frames: dict[Contract, pd.DataFrame]) -> None:
    topics = settings.kafka.topics
    topic = {Contract.MARKET_EVENT: topics.market.name, Contract.BEHAVIOUR_EVENT: topics.behaviour.name,
             Contract.PRICE_REQUEST: topics.requests.name}
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 20})
    for contract, frame in frames.items():
        fields = [f["name"] for f in serde.published_schema(contract)["fields"]]
        for rec in frame.sort_values("arrival_time", kind="stable")[fields].to_dict("records"):
            rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
            producer.produce(topic[contract], serde.encode(contract, rec), key=rec["product_id"].encode(),
                             timestamp=int(rec["event_time"]))
    producer.flush()


def reference_features(requests: pd.DataFrame, behaviour: pd.DataFrame, market: pd.DataFrame) -> pd.DataFrame:
    """Every feature for every request, recomputed naively from the events (``seq``: arrival order)."""
    c = FEATURE_SPEC.constants
    tau = c["demand_velocity_tau_ms"]
    rows = {}
    for req in requests.itertuples(index=False):
        t, p, u = req.event_time, req.product_id, req.user_id
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
            "demand_velocity": float((purchases.quantity * np.exp(-(t - purchases.event_time) / tau)).sum()) * 3_600_000 / tau,
            "hour_of_day": (t // 3_600_000) % 24, "day_of_week": pd.Timestamp(t, unit="ms").dayofweek,
            "channel_web": float(req.channel == "web"), "channel_app": float(req.channel == "app"),
            "channel_marketplace": float(req.channel == "marketplace"),
            "is_new_product": float(len(m) + len(b) == 0),
        }
        f["conversion_1h"] = f["purchases_1h"] / f["views_1h"] if f["views_1h"] else None
        if u:
            ub = behaviour[(behaviour.user_id == u) & (behaviour.event_time <= t)]
            bought = ub[ub.type == "purchase"]
            ratios = []
            for buy in bought.itertuples(index=False):  # paid / list price in force at the purchase
                lp = market[(market.product_id == buy.product_id) & (market.kind == "list_price")
                            & (market.event_time <= buy.event_time)].sort_values(["event_time", "seq"])
                if len(lp) and lp.value.iloc[-1] > 0:
                    ratios.append(buy.price_seen_minor / lp.value.iloc[-1])
            w, prior = c["price_ratio_prior_weight"], c["price_ratio_prior_mean"]
            f |= {
                "user_views_30m": count(ub, "view", 30 * MIN), "user_carts_30m": count(ub, "add_to_cart", 30 * MIN),
                "user_purchases_30m": count(ub, "purchase", 30 * MIN), "user_views_24h": count(ub, "view", 1440 * MIN),
                "user_carts_24h": count(ub, "add_to_cart", 1440 * MIN),
                "user_purchases_24h": count(ub, "purchase", 1440 * MIN),
                "user_price_ratio": (prior * w + sum(ratios)) / (w + len(ratios)),
                "user_secs_since_purchase": min((t - bought.event_time.max()) / 1000, c["never_purchased_secs"]) if len(bought) else None,
                "user_distinct_products_30m": ub[(ub.type == "view") & (ub.event_time >= t - 30 * MIN)].product_id.nunique(),
                "is_new_user": float(len(ub) == 0),
            }
        rows[req.request_id] = FEATURE_SPEC.vector(f)
    return pd.DataFrame.from_dict(rows, orient="index", columns=FEATURE_SPEC.names)


def test_served_features_match_a_pandas_recomputation(kafka_settings: Settings) -> None:
    job = kafka_settings.job.model_copy(update={"bounded": True, "checkpoint_interval_ms": 1_000,
                                                "watermark_out_of_orderness_ms": 30_000})
    settings = kafka_settings.model_copy(update={"job": job})
    create_topics(settings.kafka)
    history = generate_history(get_scenario("default").with_overrides(n_users=150, n_products=6, seed=3), days=1)
    market_x, behaviour_x, requests_x = _crafted(int(history.requests.event_time.min()))
    frames = {}
    for contract, frame, extra in (
        (Contract.MARKET_EVENT, history.market_events, market_x),
        (Contract.BEHAVIOUR_EVENT, history.behaviour, behaviour_x),
        (Contract.PRICE_REQUEST, history.requests, requests_x),
    ):
        extra = pd.DataFrame(extra)
        extra["arrival_time"] = extra["event_time"]
        frames[contract] = pd.concat([frame, extra], ignore_index=True)
    _produce(settings, frames)

    pricing_job.run(settings, wait=True)

    served = {}
    for msg in read_topic(settings, settings.kafka.topics.priced.name):
        rec = serde.decode(Contract.PRICED_EVENT, msg.value()).record
        assert rec["feature_spec_version"] == FEATURE_SPEC.version
        served[rec["request_id"]] = rec["features"]
    late = [serde.decode(Contract.DEAD_LETTER, m.value()).record for m in read_topic(settings, settings.kafka.topics.dead_letters.name)]
    assert {d["error_kind"] for d in late} <= {"late"}, "only late events may be rejected here"
    late_raw = {bytes(d["raw"]) for d in late}
    kept = {}
    for contract, frame in frames.items():
        fields = [f["name"] for f in serde.published_schema(contract)["fields"]]
        frame = frame.sort_values("arrival_time", kind="stable").reset_index(drop=True)
        frame["seq"] = frame.index
        encoded = [serde.encode(contract, {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
                   for r in frame[fields].to_dict("records")]
        kept[contract] = frame[[e not in late_raw for e in encoded]]
    n_late = sum(len(frames[c]) - len(kept[c]) for c in frames)
    assert n_late == len(late), "every late event is dead-lettered once"

    requests = kept[Contract.PRICE_REQUEST]
    assert set(served) == set(requests.request_id), "every on-time request is priced, nothing else"
    expected = reference_features(requests, kept[Contract.BEHAVIOUR_EVENT], kept[Contract.MARKET_EVENT])
    got = pd.DataFrame.from_dict(served, orient="index", columns=FEATURE_SPEC.names).loc[expected.index]

    diff = (got - expected).abs()
    allowed = ABS_TOL + REL_TOL * expected.abs()
    worst = (diff - allowed).stack().idxmax()
    print(f"\nparity: {len(expected)} requests x {len(FEATURE_SPEC.names)} features, {n_late} late events; "
          f"worst |diff| {diff.stack().max():.3g} at {worst}")
    bad = diff > allowed
    assert not bad.any().any(), (
        f"{int(bad.sum().sum())} mismatches, e.g. request {worst[0]} feature {worst[1]}: "
        f"served {got.loc[worst]} vs expected {expected.loc[worst]}"
    )
    # The crafted cases say what the windows mean at their edges.
    edge = expected.loc["edge-r0"]
    assert edge["views_5m"] == 1 and edge["purchases_1h"] == 2 and edge["competitor_events_15m"] == 1
    assert edge["promotion_active"] == 1 and edge["user_secs_since_purchase"] == 0
    assert expected.loc["edge-r1", "is_new_user"] == 1 and expected.loc["edge-r2", "is_new_product"] == 1
