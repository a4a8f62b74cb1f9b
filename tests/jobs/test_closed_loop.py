"""Closed loop: the live simulator drives the running job, and buys at exactly the offered prices."""

from __future__ import annotations

from collections import Counter

import pytest

from jobs import pricing_job
from pricing.config import Settings
from pricing.sim.live import LiveSimulator, LiveTopics
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.helpers import read_topic

pytestmark = pytest.mark.integration


def test_live_simulator_closes_the_loop_through_the_job(kafka_settings: Settings) -> None:
    # The default idle timeout (5 s): a shorter one marks a partition idle whenever a cold, busy machine stalls
    # its reader for a moment, the other partitions move the watermark on, and its next records arrive late.
    job = kafka_settings.job.model_copy(update={"checkpoint_interval_ms": 1_000, "watermark_out_of_orderness_ms": 500})
    settings = kafka_settings.model_copy(update={"job": job})
    topics = settings.kafka.topics
    create_topics(settings.kafka)
    result = pricing_job.run(settings, wait=False)
    try:
        pricing_job.wait_until_running(result)
        # One copy of this market makes about 10 events/s (100,000 shoppers); rate 150 runs 15 copies side by side
        # (375 products). Flat seasonality: the load is the same whatever the hour the test runs at.
        scenario = get_scenario("default").with_overrides(
            n_users=100_000, n_products=25, seasonality={"hourly": [1.0] * 24, "weekly": [1.0] * 7}
        )
        sim = LiveSimulator(
            scenario,
            kafka_config=settings.kafka.client_config(),
            topics=LiveTopics.of(topics),
            rate=150,
            duration_s=20,
            answer_timeout_s=90,  # completeness, not speed: a cold, busy machine may take long to warm up
            seed=11,
        )
        assert sim.plan.copies == 15 and 140 < sim.plan.expected_rate(0) < 160
        report = sim.run()
    finally:
        result.get_job_client().cancel().result()

    assert report.requests > 0
    # Every request is answered: the engine's speed on this machine only shows in the latency.
    if not (report.answered == report.requests and report.late_answers == 0):
        dead = Counter((d["source_topic"], d["error_kind"]) for d in (
            serde.decode(Contract.DEAD_LETTER, m.value()).record for m in read_topic(settings, topics.dead_letters.name)))
        pytest.fail(f"{report.summary()}\ndead letters: {dict(dead)}")
    assert report.invalid_answers == 0

    offered = {}
    for msg in read_topic(settings, topics.priced.name):
        rec = serde.decode(Contract.PRICED_EVENT, msg.value()).record
        offered[rec["request_id"]] = rec["price_minor"]
    purchases = [
        r for r in (serde.decode(Contract.BEHAVIOUR_EVENT, m.value()) for m in read_topic(settings, topics.behaviour.name))
        if r.ok and r.record["type"] == "purchase" and r.record["request_id"] is not None
    ]
    assert len(purchases) == report.purchases > 0, report.summary()
    for p in purchases:
        assert p.record["price_seen_minor"] == offered[p.record["request_id"]]
    assert report.revenue_minor == sum(p.record["price_seen_minor"] for p in purchases)
