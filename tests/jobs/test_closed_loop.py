"""Closed loop: the live simulator drives the running job, and buys at exactly the offered prices."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer

from jobs import pricing_job
from pricing.config import Settings
from pricing.sim.live import LiveSimulator, LiveTopics
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract

pytestmark = pytest.mark.integration


def _read(settings: Settings, topic: str, *, quiet_s: float = 4.0, timeout_s: float = 60.0) -> list[bytes]:
    consumer = Consumer(
        settings.kafka.client_config()
        | {"group.id": f"check-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest", "isolation.level": "read_committed"}
    )
    consumer.subscribe([topic])
    out, deadline, last = [], time.monotonic() + timeout_s, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            out.append(msg.value())
            last = time.monotonic()
    consumer.close()
    return out


def test_live_simulator_closes_the_loop_through_the_job(kafka_settings: Settings) -> None:
    job = kafka_settings.job.model_copy(
        update={"checkpoint_interval_ms": 1_000, "watermark_out_of_orderness_ms": 500, "idle_timeout_ms": 1_000}
    )
    settings = kafka_settings.model_copy(update={"job": job})
    topics = settings.kafka.topics
    create_topics(settings.kafka)
    result = pricing_job.run(settings, wait=False)
    try:
        pricing_job.wait_until_running(result)
        sim = LiveSimulator(
            get_scenario("default").with_overrides(n_users=300, n_products=25),
            kafka_config=settings.kafka.client_config(),
            topics=LiveTopics(
                behaviour=topics.behaviour.name, market=topics.market.name,
                requests=topics.requests.name, priced=topics.priced.name,
            ),
            rate=150,
            duration_s=20,
            answer_timeout_s=20,
            seed=11,
        )
        report = sim.run()
    finally:
        result.get_job_client().cancel().result()

    assert report.requests > 0
    # Requests at the very end wait for a watermark that only later traffic would move.
    assert report.answered >= 0.8 * report.requests, report.summary()
    assert report.invalid_answers == 0

    offered = {}
    for value in _read(settings, topics.priced.name):
        rec = serde.decode(Contract.PRICED_EVENT, value).record
        offered[rec["request_id"]] = rec["price_minor"]
    purchases = [
        r for r in (serde.decode(Contract.BEHAVIOUR_EVENT, v) for v in _read(settings, topics.behaviour.name))
        if r.ok and r.record["type"] == "purchase" and r.record["request_id"] is not None
    ]
    assert len(purchases) == report.purchases > 0, report.summary()
    for p in purchases:
        assert p.record["price_seen_minor"] == offered[p.record["request_id"]]
    assert report.revenue_minor == sum(p.record["price_seen_minor"] for p in purchases)
