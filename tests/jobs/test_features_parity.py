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

import pandas as pd
import pytest

from jobs import pricing_job
from pricing.config import Settings
from pricing.sim.history import generate_history
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.serde import Contract
from tests.helpers import read_topic
from pricing.sim.market import build_market, catalogue_entries
from tests.jobs.feature_reference import (
    MIN, assert_affinity_exercised, catalogue_frame, compare_features, expected_features, produce_events,
)  # fmt: skip

pytestmark = pytest.mark.integration


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
    for i, (dt, kind) in enumerate([(5 * MIN, "view"), (5 * MIN + 1, "view"), (60 * MIN, "purchase"), (60 * MIN + 1, "purchase"), (0, "purchase"),
                                     (24 * 60 * MIN, "view"), (24 * 60 * MIN + 1, "view")]):
        behaviour.append({
            "event_id": f"edge-e{i}", "user_id": "edge-user", "product_id": "edge", "type": kind, "price_seen_minor": 950,
            "currency": "EUR", "quantity": 2, "session_id": "edge-s", "event_time": t - dt, "request_id": None,
        })
    for i, (dt, kind, product) in enumerate([(2 * MIN, "add_to_cart", "edge"), (MIN, "view", "edge-other"),
                                             (MIN, "view", "edge-third")]):
        behaviour.append({  # the user's own history with edge, and views of others (edge-other in edge's category)
            "event_id": f"edge-a{i}", "user_id": "edge-user", "product_id": product, "type": kind,
            "price_seen_minor": 950, "currency": "EUR", "quantity": 1, "session_id": "edge-s", "event_time": t - dt,
            "request_id": None,
        })
    requests = [
        {"request_id": "edge-r0", "user_id": "edge-user", "product_id": "edge", "channel": "marketplace", "event_time": t},
        {"request_id": "edge-r1", "user_id": "", "product_id": "edge", "channel": "app", "event_time": t},  # anonymous
        {"request_id": "edge-r2", "user_id": "brand-new-user", "product_id": "brand-new-product", "channel": "web", "event_time": t},
    ]
    return market, behaviour, requests


def _crafted_catalogue(start: int) -> list[dict]:
    """edge and edge-other share a category, edge-third has another; brand-new-product has no entry (unknown)."""
    at = start - 2 * 24 * 60 * MIN  # before every crafted event: each counts in its product's category
    return [{"product_id": p, "category": c, "attributes": {}, "active": True, "event_time": at}
            for p, c in (("edge", "edge-cat"), ("edge-other", "edge-cat"), ("edge-third", "third-cat"))]


def test_served_features_match_a_pandas_recomputation(kafka_settings: Settings) -> None:
    # RocksDB as in production: the window functions keep their entries in MapViews, which Flink backs with MapState
    # there (the heap backend gives the same answers by other code paths).
    job = kafka_settings.job.model_copy(update={"bounded": True, "checkpoint_interval_ms": 1_000, "serving_mode": "event-time",
                                                "watermark_out_of_orderness_ms": 30_000, "state_backend": "rocksdb"})
    settings = kafka_settings.model_copy(update={"job": job})
    create_topics(settings.kafka)
    history = generate_history(get_scenario("default").with_overrides(n_users=150, n_products=6, seed=3), days=1)
    market_x, behaviour_x, requests_x = _crafted(int(history.requests.event_time.min()))
    # the simulator's catalogue, stamped at the history's start as pricing.sim.publish sends it, and the crafted one
    catalogue = catalogue_frame(catalogue_entries(build_market(history.scenario), event_time_ms=history.start_ms))
    catalogue["arrival_time"] = catalogue["event_time"]
    frames = {}
    for contract, frame, extra in (
        (Contract.CATALOGUE_ENTRY, catalogue, _crafted_catalogue(int(history.requests.event_time.min()))),
        (Contract.MARKET_EVENT, history.market_events, market_x),
        (Contract.BEHAVIOUR_EVENT, history.behaviour, behaviour_x),
        (Contract.PRICE_REQUEST, history.requests, requests_x),
    ):
        extra = pd.DataFrame(extra)
        extra["arrival_time"] = extra["event_time"]
        frames[contract] = pd.concat([frame, extra], ignore_index=True)
    produce_events(settings, frames)

    pricing_job.run(settings, wait=True)

    served = {}
    for msg in read_topic(settings, settings.kafka.topics.priced.name):
        rec = serde.decode(Contract.PRICED_EVENT, msg.value()).record
        assert rec["feature_spec_version"] == FEATURE_SPEC.version
        served[rec["request_id"]] = rec["features"]
    expected, n_late = expected_features(settings, frames)
    assert set(served) == set(expected.index), "every on-time request is priced, nothing else"
    result = compare_features(served, expected)
    print(f"\nparity: {result.summary()}; {n_late} late events")
    assert result.mismatches == 0, result.summary()
    # The crafted cases say what the windows mean at their edges.
    edge = expected.loc["edge-r0"]
    assert edge["views_5m"] == 1 and edge["purchases_1h"] == 2 and edge["competitor_events_15m"] == 1
    assert edge["views_24h"] == 3 and edge["purchases_24h"] == 3 and edge["conversion_24h"] == 1.0
    assert edge["user_views_24h"] == 5
    assert (edge["user_product_views_24h"], edge["user_product_carts_24h"], edge["user_product_purchases_24h"]) == (3, 1, 3)
    assert (edge["user_category_views_24h"], edge["user_category_carts_24h"], edge["user_category_purchases_24h"]) == (4, 1, 3)
    assert expected.loc["edge-r2", "user_category_views_24h"] == 0  # a product without a catalogue entry
    assert expected.loc["edge-r1", "user_product_views_24h"] == 0  # anonymous
    assert_affinity_exercised(expected)
    assert edge["promotion_active"] == 1 and edge["user_secs_since_purchase"] == 0
    assert expected.loc["edge-r1", "is_new_user"] == 1 and expected.loc["edge-r2", "is_new_product"] == 1
