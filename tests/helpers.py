"""Helpers shared by the integration tests."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Message

from pricing.config import Settings


def read_topic(settings: Settings, topic: str, *, quiet_s: float = 4.0, timeout_s: float = 60.0) -> list[Message]:
    """Everything a fresh read_committed consumer sees, until ``quiet_s`` pass without a record.

    Reading past the last expected record is what lets tests catch duplicates.
    """
    consumer = Consumer(
        settings.kafka.client_config()
        | {"group.id": f"check-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest", "isolation.level": "read_committed"}
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline, last = time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert not msg.error(), msg.error()
            out.append(msg)
            last = time.monotonic()
    finally:
        consumer.close()
    return out
