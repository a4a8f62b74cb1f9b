"""Following topics inside a worker (real Kafka): the catch-up reads from the start time up to the end taken at
the call, the follow picks up what comes later, an aborted transaction is never seen, and a topic that does
not exist fails loudly."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from pricing.config import Settings
from pricing.topics import create_topics
from pricing_udfs.recommend.tail import TailError, TopicTail

pytestmark = pytest.mark.integration


def test_a_tail_catches_up_from_its_start_time_then_follows(kafka_settings: Settings) -> None:
    create_topics(kafka_settings.kafka)
    topic = kafka_settings.kafka.topics.recommendations.name  # two partitions
    producer = Producer(kafka_settings.kafka.client_config())
    now = int(time.time() * 1000)
    for i in range(10):  # before the start time: not read
        producer.produce(topic, f"old{i}".encode(), key=str(i).encode(), timestamp=now - 600_000)
    for i in range(30):
        producer.produce(topic, f"new{i}".encode(), key=str(i).encode(), timestamp=now - 1_000)
    producer.flush()
    aborted = Producer(kafka_settings.kafka.client_config() | {"transactional.id": f"tail-test-{kafka_settings.job.consumer_group}"})
    aborted.init_transactions()
    aborted.begin_transaction()
    aborted.produce(topic, b"aborted", key=b"a", timestamp=now)
    aborted.abort_transaction()
    seen: list[str] = []
    tail = TopicTail(kafka_settings.kafka.client_config(), [(topic, now - 60_000)], lambda _, v: seen.append(v.decode()),
                     name="test")  # fmt: skip
    try:
        tail.catch_up(30)
        assert sorted(seen) == sorted(f"new{i}" for i in range(30)), "the catch-up reads from the start time to the end"
        tail.start()
        for i in range(5):
            producer.produce(topic, f"later{i}".encode(), key=str(i).encode())
        producer.flush()
        deadline = time.monotonic() + 20
        while len(seen) < 35 and time.monotonic() < deadline:
            time.sleep(0.05)
        with tail.lock:
            assert sorted(seen[30:]) == sorted(f"later{i}" for i in range(5)) and "aborted" not in seen
    finally:
        tail.close()


def test_a_topic_that_does_not_exist_fails_the_catch_up(kafka_settings: Settings) -> None:
    tail = TopicTail(kafka_settings.kafka.client_config() | {"allow.auto.create.topics": "false"},
                     [("no-such-topic-" + kafka_settings.job.consumer_group, 0)], lambda *_: None, name="test")  # fmt: skip
    with pytest.raises(TailError, match="cannot read"):
        tail.catch_up(10)
    tail.close()
