"""Closed loop: the live simulator drives the running job, and buys at exactly the offered prices.

It also plants known user ids among the simulator's shoppers and scans every output topic, the job's checkpoint
files and its log for them: the job holds pseudonyms only (``pricing_udfs.privacy``, digest-only dead letters).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from pathlib import Path

import pyflink
import pytest
from confluent_kafka import Producer

from jobs import pricing_job
from pricing.config import Settings
from pricing.sim.live import LiveSimulator, LiveTopics
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from pricing.checkpoints import checkpoint_root, local_path
from tests.helpers import pseudonyms, read_topic

pytestmark = pytest.mark.integration


def _planted(settings: Settings, producer: Producer, tag: str, t_ms: int, product: str) -> tuple[list[str], dict[str, bytes]]:
    """Records naming planted shoppers: requests (one sent twice: a duplicate), views, recommend requests and a
    malformed record holding an id. Returns the ids and the bad records' bytes by kind."""
    topics = settings.kafka.topics
    users = [f"planted-{tag}-{i}" for i in range(4)]
    bad: dict[str, bytes] = {}
    for i, user in enumerate(users):
        request = serde.encode(Contract.PRICE_REQUEST, {"request_id": f"pr-{tag}-{i}", "user_id": user,
                                                        "product_id": product, "channel": "web", "event_time": t_ms})  # fmt: skip
        producer.produce(topics.requests.name, request, key=product.encode(), timestamp=t_ms)
        if i == 0:
            producer.produce(topics.requests.name, request, key=product.encode(), timestamp=t_ms)
            bad["duplicate"] = request
        view = {"event_id": f"pv-{tag}-{i}", "user_id": user, "session_id": f"s-{tag}", "product_id": product,
                "type": "view", "event_time": t_ms, "request_id": None, "price_seen_minor": 1_000, "currency": "EUR",
                "quantity": 1}
        producer.produce(topics.behaviour.name, serde.encode(Contract.BEHAVIOUR_EVENT, view), key=product.encode(), timestamp=t_ms)
        ask = {"request_id": f"rr-{tag}-{i}", "user_id": user, "channel": "web", "event_time": t_ms, "k": 3,
               "context_product_id": product, "context_category": None, "candidate_product_ids": []}
        producer.produce(topics.recommend_requests.name, serde.encode(Contract.RECOMMEND_REQUEST, ask),
                         key=user.encode(), timestamp=t_ms)  # fmt: skip
    bad["bad_framing"] = f'{{"user_id": "{users[1]}"}}'.encode()
    producer.produce(topics.requests.name, bad["bad_framing"], timestamp=t_ms)
    assert producer.flush(30) == 0
    return users, bad


def test_live_simulator_closes_the_loop_through_the_job(kafka_settings: Settings) -> None:
    # The default idle timeout (5 s): a shorter one marks a partition idle whenever a cold, busy machine stalls
    # its reader for a moment, the other partitions move the watermark on, and its next records arrive late.
    job = kafka_settings.job.model_copy(update={"checkpoint_interval_ms": 1_000, "watermark_out_of_orderness_ms": 500})
    privacy = kafka_settings.privacy.model_copy(update={"dead_letter_payload": "digest"})
    settings = kafka_settings.model_copy(update={"job": job, "privacy": privacy})
    topics = settings.kafka.topics
    create_topics(settings.kafka)
    log_dir = Path(pyflink.__file__).parent / "log"
    tag = uuid.uuid4().hex[:10]
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
        product = serde.decode(Contract.PRICED_EVENT, read_topic(settings, topics.priced.name, quiet_s=1)[0].value()).record
        users, bad = _planted(settings, Producer(settings.kafka.client_config()), tag, int(time.time() * 1000),
                              product["product_id"])  # fmt: skip
        wanted = {f"pr-{tag}-{i}" for i in range(len(users))}
        slates_wanted = {f"rr-{tag}-{i}" for i in range(len(users))}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both answers of every planted shopper, committed
            answered = {serde.decode(Contract.PRICED_EVENT, m.value()).record["request_id"]
                        for m in read_topic(settings, topics.priced.name, quiet_s=1)}  # fmt: skip
            slated = {serde.decode(Contract.RECOMMENDATION, m.value()).record["request_id"]
                      for m in read_topic(settings, topics.recommendations.name, quiet_s=1)}  # fmt: skip
            if wanted <= answered and slates_wanted <= slated:
                break
        time.sleep(3)  # a checkpoint or two with the planted shoppers in the job's state
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

    # Planted shoppers: answered under their pseudonyms, and no output, checkpoint file or log line names them.
    outputs = {name: read_topic(settings, name) for name in (topics.priced.name, topics.recommendations.name,
                                                             topics.dead_letters.name)}  # fmt: skip
    pseudonym = pseudonyms(settings)
    mine = {r["request_id"]: r for r in (serde.decode(Contract.PRICED_EVENT, m.value()).record
                                         for m in outputs[topics.priced.name]) if tag in r["request_id"]}  # fmt: skip
    assert {r["user_id"] for r in mine.values()} == {pseudonym(u) for u in users}
    slates = [r for r in (serde.decode(Contract.RECOMMENDATION, m.value()).record
                          for m in outputs[topics.recommendations.name]) if tag in r["request_id"]]  # fmt: skip
    assert {r["user_id"] for r in slates} == {pseudonym(u) for u in users}
    letters = {d["error_kind"]: d for d in (serde.decode(Contract.DEAD_LETTER, m.value()).record
                                            for m in outputs[topics.dead_letters.name])
               if d["raw_sha256"] in {hashlib.sha256(b).hexdigest() for b in bad.values()}}  # fmt: skip
    assert set(letters) == set(bad) and all(d["raw"] == b"" and d["raw_size"] > 0 for d in letters.values())
    planted = f"planted-{tag}".encode()  # the users' ids (request ids carry the tag too)
    assert any(planted in m.value() for m in read_topic(settings, topics.requests.name))  # the scan finds what is there
    for name, messages in outputs.items():
        assert not [m.offset() for m in messages if planted in (m.value() or b"") or planted in (m.key() or b"")], name
    folder = local_path(checkpoint_root(settings))
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert files and not [f for f in files if planted in f.read_bytes()], folder
    # the whole log: a new gateway truncates it, and what earlier tests wrote cannot hold this run's ids
    logged = b"".join(f.read_bytes() for f in log_dir.glob("*.log"))
    assert logged and planted not in logged
