"""Late events: counted into the dead-letter topic as ``late``, never silently dropped, never used."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from jobs import pricing_job
from pricing.broker import free_port
from pricing.config import Settings
from pricing.metrics import wait_for_counter
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.serde import Contract

pytestmark = pytest.mark.integration


def test_events_behind_the_watermark_are_dead_lettered_and_not_used(kafka_settings: Settings) -> None:
    metrics_port = free_port()
    job = kafka_settings.job.model_copy(update={
        "checkpoint_interval_ms": 1_000, "watermark_out_of_orderness_ms": 1_000,  # default idle timeout: safe when busy
        "metrics_port": str(metrics_port), "serving_mode": "event-time"})  # what is used: the context as of the watermark
    settings = kafka_settings.model_copy(update={"job": job})
    topics = settings.kafka.topics
    create_topics(settings.kafka)
    producer = Producer(settings.kafka.client_config())
    consumer = Consumer(settings.kafka.client_config() | {
        "group.id": f"check-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.subscribe([topics.priced.name, topics.dead_letters.name])

    def view(i: int, ts: int) -> None:
        rec = {"event_id": f"v{i}", "user_id": "u1", "product_id": "p1", "type": "view", "price_seen_minor": 100,
               "currency": "EUR", "quantity": 1, "session_id": "s", "event_time": ts, "request_id": None}
        producer.produce(topics.behaviour.name, serde.encode(Contract.BEHAVIOUR_EVENT, rec), key=b"p1", timestamp=ts)

    def request(rid: str, ts: int) -> None:
        rec = {"request_id": rid, "user_id": "u1", "product_id": "p1", "channel": "web", "event_time": ts}
        producer.produce(topics.requests.name, serde.encode(Contract.PRICE_REQUEST, rec), key=b"p1", timestamp=ts)

    priced: dict[str, dict] = {}
    dead: list[dict] = []

    def pump(until, timeout_s: float = 60.0) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout_s
        while not until() and time.monotonic() < deadline:
            request(f"keepalive-{uuid.uuid4().hex[:6]}", int(time.time() * 1000))  # moves the watermark
            producer.flush()
            for msg in consumer.consume(100, timeout=0.3):
                if msg.error():
                    continue
                if msg.topic() == topics.priced.name:
                    rec = serde.decode(Contract.PRICED_EVENT, msg.value()).record
                    priced[rec["request_id"]] = rec
                else:
                    dead.append(serde.decode(Contract.DEAD_LETTER, msg.value()).record)
        assert until(), f"timed out; priced {len(priced)}, dead {len(dead)}"

    result = pricing_job.run(settings, wait=False)
    try:
        pricing_job.wait_until_running(result)
        # Readiness, measured: a request answered end to end. Events produced before that raced the sources'
        # start on a loaded machine (1 of 2 runs beside three busy loops lost "before": neither priced nor
        # dead-lettered; cause not found).
        pump(lambda: any(rid.startswith("keepalive-") for rid in priced))
        now = int(time.time() * 1000)  # ahead of every watermark so far (the keepalives': now - 1 s at most)
        for i in range(3):
            view(i, now + i)
        request("before", now + 10)
        producer.flush()
        pump(lambda: "before" in priced)  # the watermark has passed now + 10 everywhere
        view(99, now - 5_000)  # behind the watermark, for the product of the next request
        request("late-request", now - 5_000)
        producer.flush()
        request("after", int(time.time() * 1000))  # on time: the watermark follows the wall clock here
        pump(lambda: "after" in priced and len(dead) >= 2)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        late_counts = wait_for_counter(metrics_url, "late_events", total=2)
        rejected_counts = wait_for_counter(metrics_url, "rejected_records", total=2)
    finally:
        result.get_job_client().cancel().result()
        consumer.close()

    kinds = {(d["source_topic"], d["error_kind"]) for d in dead}
    assert kinds == {(topics.behaviour.name, "late"), (topics.requests.name, "late")}
    late_ids = {serde.decode(Contract.BEHAVIOUR_EVENT, bytes(d["raw"])).record.get("event_id") for d in dead
                if d["source_topic"] == topics.behaviour.name}
    assert late_ids == {"v99"}
    # (a decoder that ran but counted nothing reports 0: the market decoder sees only its source's idle markers)
    late_counts = {contract: n for contract, n in late_counts.items() if n}
    assert late_counts == {"behaviour_event": 1, "price_request": 1}, "the late_events metric counts each late record"
    assert {c: n for c, n in rejected_counts.items() if n} == late_counts, (
        "rejected_records counts the late records too, and nothing else was rejected (no idle marker either)")
    assert "late-request" not in priced
    views = FEATURE_SPEC.index("views_5m")
    assert priced["before"]["features"][views] == 3
    assert priced["after"]["features"][views] == 3, "the late view must not count"
