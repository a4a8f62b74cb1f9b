"""Restart from a savepoint: the restored job serves the features an uninterrupted run would, each request once.

Run 1 reads the first half of a simulated day (in arrival order) and is stopped with a
savepoint while it works; its feature windows, the rows waiting for the watermark and
its Kafka offsets go into the savepoint. Run 2 starts from it, reads the second half
and is stopped with a drain, which flushes the requests still waiting for the watermark. Across both runs every on-time request is priced exactly once
(read_committed), and every served feature vector matches the pandas reference over
the whole day: the windows did not forget what run 1 saw.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from confluent_kafka import Consumer, TopicPartition

from jobs import pricing_job
from pricing.config import Settings
from pricing.sim.history import generate_history
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.helpers import read_topic
from tests.jobs.feature_reference import compare_features, expected_features, produce_events

pytestmark = pytest.mark.integration


def _priced_ids(settings: Settings) -> list[str]:
    msgs = read_topic(settings, settings.kafka.topics.priced.name, quiet_s=2.0)
    return [serde.decode(Contract.PRICED_EVENT, m.value()).record["request_id"] for m in msgs]


def _wait_until_consumed(settings: Settings, *, timeout_s: float) -> None:
    """Until the job's consumer group has committed (on checkpoint) the end offsets of its input topics."""
    topics = settings.kafka.topics
    consumer = Consumer(settings.kafka.client_config() | {"group.id": settings.job.consumer_group})
    try:
        partitions = [TopicPartition(t.name, p) for t in (topics.behaviour, topics.market, topics.requests)
                      for p in range(t.partitions)]  # fmt: skip
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=10)}
            if all(committed[k] >= end for k, end in ends.items()):
                return
            assert time.monotonic() < deadline, f"the job has not consumed its input: committed {committed}, end {ends}"
            time.sleep(1)
    finally:
        consumer.close()


def test_a_job_restored_from_a_savepoint_serves_the_same_features_exactly_once(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    job = kafka_settings.job.model_copy(update={"checkpoint_interval_ms": 1_000, "watermark_out_of_orderness_ms": 30_000,
                                                "serving_mode": "event-time"})
    settings = kafka_settings.model_copy(update={"job": job})
    create_topics(settings.kafka)
    history = generate_history(get_scenario("default").with_overrides(n_users=100, n_products=5, seed=8), days=1)
    frames = {Contract.MARKET_EVENT: history.market_events, Contract.BEHAVIOUR_EVENT: history.behaviour,
              Contract.PRICE_REQUEST: history.requests}  # fmt: skip
    cut = pd.concat([f.arrival_time for f in frames.values()]).median()
    produce_events(settings, {c: f[f.arrival_time <= cut] for c, f in frames.items()})
    first_half = int((history.requests.arrival_time <= cut).sum())

    result = pricing_job.run(settings, wait=False)
    try:
        pricing_job.wait_until_running(result)
        deadline = time.monotonic() + 120
        while len(_priced_ids(settings)) < first_half // 3:  # stop it while it works, state in every window
            assert time.monotonic() < deadline, "run 1 priced too little to make the savepoint worth testing"
            time.sleep(1)
        savepoint = pricing_job.stop_with_savepoint(result, directory=(tmp_path / "savepoints").as_uri())
    except BaseException:
        result.get_job_client().cancel().result()
        raise
    before = Counter(_priced_ids(settings))
    assert 0 < sum(before.values()) < len(history.requests)

    produce_events(settings, {c: f[f.arrival_time > cut] for c, f in frames.items()})
    restored = settings.model_copy(update={"job": settings.job.model_copy(update={"restore_from": savepoint})})
    result = pricing_job.run(restored, wait=False)
    try:
        pricing_job.wait_until_running(result)
        _wait_until_consumed(settings, timeout_s=180)
        # Drain: the end of event time flushes the requests still waiting for the watermark.
        pricing_job.stop_with_savepoint(result, directory=(tmp_path / "savepoints").as_uri(), drain=True)
    except BaseException:
        result.get_job_client().cancel().result()
        raise

    served: dict[str, list[float]] = {}
    counts: Counter[str] = Counter()
    for msg in read_topic(settings, settings.kafka.topics.priced.name):
        rec = serde.decode(Contract.PRICED_EVENT, msg.value()).record
        counts[rec["request_id"]] += 1
        served[rec["request_id"]] = rec["features"]
    assert max(counts.values()) == 1, f"priced twice: {[r for r, n in counts.items() if n > 1][:5]}"
    expected, n_late = expected_features(settings, frames)
    assert set(served) == set(expected.index), "every on-time request is priced, in one run or the other"
    assert set(before) < set(served)
    comparison = compare_features(served, expected)
    print(f"\nrestore: {sum(before.values())} priced before the savepoint, {len(served) - len(before)} after; "
          f"{comparison.summary()}; {n_late} late events")
    assert comparison.mismatches == 0, comparison.summary()
