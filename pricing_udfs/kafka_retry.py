"""One rule for Kafka admin and metadata calls made outside Flink's connector (the anchors' rebuild in each
worker, the control plane's warm-start plan): retry what Kafka calls transient, for a bounded time.

Transient: a group coordinator that is not ready yet, a partition whose leader is still being elected (a
topic created a moment ago, a broker restarting), and any error librdkafka marks retriable. Anything else,
or a transient error that outlasts ``timeout_s``, is raised as it came.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from confluent_kafka import KafkaError, KafkaException

T = TypeVar("T")

TRANSIENT = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
})  # fmt: skip


def retried(call: Callable[[], T], *, timeout_s: float, pause_s: float = 0.2) -> T:
    """``call()``, again after ``pause_s`` while it raises a transient ``KafkaException``, for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, KafkaError) and (error.code() in TRANSIENT or error.retriable())
            if not transient or time.monotonic() + pause_s > deadline:
                raise
            time.sleep(pause_s)
