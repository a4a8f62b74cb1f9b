"""``publish_history`` writes the history into the input topics as consumers would have seen it (fake producer)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import KafkaError, KafkaException

from pricing.sim.history import History, generate_history
from pricing.sim.live import LiveError
from pricing.sim.market import build_market
from pricing.sim.publish import publish_history
from pricing.sim.scenario import Scenario
from tests.pricing.sim.fakes import TOPICS, FakeCluster, FakeProducer

KAFKA = {"bootstrap.servers": "fake:9092"}


def test_every_record_goes_out_decodable_keyed_stamped_and_in_arrival_order(week_history: History) -> None:
    cluster = FakeCluster()
    counts = publish_history(week_history, kafka_config=KAFKA, producer=FakeProducer(cluster))
    frames = {TOPICS.behaviour: week_history.behaviour, TOPICS.market: week_history.market_events,
              TOPICS.requests: week_history.requests}  # fmt: skip
    catalogue = cluster.records(TOPICS.catalogue)
    assert counts == {t: len(f) for t, f in frames.items()} | {TOPICS.catalogue: len(catalogue)}
    assert cluster.log[TOPICS.priced] == []
    # the catalogue first: every product once, with its category, stamped at the history's start
    market = build_market(week_history.scenario)
    assert cluster.order[: len(catalogue)] == [TOPICS.catalogue] * len(catalogue)
    assert [r["product_id"] for r in catalogue] == list(market.product_ids)
    assert [r["category"] for r in catalogue] == [market.category_names[c] for c in market.product_category]
    assert {r["_ts"] for r in catalogue} == {week_history.start_ms}
    del cluster.order[: len(catalogue)]
    for topic, frame in frames.items():
        records = pd.DataFrame(cluster.records(topic))  # asserts that each decodes (constraints included)
        assert (records["_ts"] == records["event_time"]).all()
        assert (records["_key"] == records["product_id"].str.encode("utf-8")).all()
        # the topic holds the history's records in its (arrival) order, late ones still late
        held = [c for c in frame.columns if c != "arrival_time"]
        pd.testing.assert_frame_equal(records[held], frame[held].reset_index(drop=True), check_dtype=False)
        assert not records["event_time"].is_monotonic_increasing or topic == TOPICS.requests
    # across topics, records go out in arrival order (no topic runs ahead of the others)
    arrival = {t: iter(f["arrival_time"].tolist()) for t, f in frames.items()}
    merged = np.array([next(arrival[t]) for t in cluster.order])
    assert len(merged) == week_history.n_events and (np.diff(merged) >= 0).all()
    switches = sum(a != b for a, b in zip(cluster.order, cluster.order[1:]))
    assert switches > 0.1 * len(cluster.order)  # interleaved all along, not one topic after the other


@pytest.fixture(scope="module")
def day(small_default: Scenario) -> History:
    return generate_history(small_default.with_overrides(n_users=500), days=1)


def test_missing_topics_unreachable_broker_and_failed_deliveries_are_one_line_errors(day: History) -> None:
    cluster = FakeCluster()
    del cluster.log[TOPICS.market]
    with pytest.raises(LiveError, match=f"{TOPICS.market} not found on fake:9092"):
        publish_history(day, kafka_config=KAFKA, producer=FakeProducer(cluster))

    class Down(FakeProducer):
        def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Broker transport failure"))

    with pytest.raises(LiveError, match="cannot reach Kafka at fake:9092"):
        publish_history(day, kafka_config=KAFKA, producer=Down(FakeCluster()))

    class Failing(FakeProducer):
        def poll(self, timeout: float = 0) -> int:
            for cb in self.callbacks:
                cb(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"), None)
            n = len(self.callbacks)
            self.callbacks.clear()
            return n

    with pytest.raises(LiveError, match="were not delivered to fake:9092; first: .*timed out") as exc:
        publish_history(day, kafka_config=KAFKA, producer=Failing(FakeCluster()))
    assert "\n" not in str(exc.value)

    class Stuck(FakeProducer):
        def flush(self, timeout: float = 0) -> int:
            return 7

    with pytest.raises(LiveError, match="7 history records were still undelivered"):
        publish_history(day, kafka_config=KAFKA, producer=Stuck(FakeCluster()))
