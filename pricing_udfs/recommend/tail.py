"""Following Kafka topics inside a Python worker: a catch-up read at start, then a background thread.

The recommendation path keeps two pieces of worker memory that are functions of topics, not of the
records Flink routes to the worker: the candidate index (behaviour and catalogue topics,
``pricing_udfs.recommend.candidates``) and the offers recommendations made (the recommendations topic,
read by the pricing stage: ``pricing_udfs.recommend.honoured``). Every worker follows every partition,
so the state is the same whatever the job's parallelism and whatever Flink routes where.

:class:`TopicTail` assigns (no consumer group, no commits) every partition of its topics, from the first
record at or after a start time (``since_ms``; 0: the earliest), ``read_committed``. :meth:`catch_up`
reads until each partition's high watermark taken when it was called, or until ``timeout_s`` (then
logs what is missing and goes on: the state is evidence for ranking and offers, not a guardrail, so a
worker never refuses to answer for it); :meth:`start` then follows new records on a daemon thread.
``handle(topic, value)`` is called for each record, in partition order, under :attr:`lock`; the
caller reads its state under the same lock.

Guarantee: after a restart (a failover, ``kill -9``) the state is rebuilt from the topics, the records
written since ``since_ms``; what a worker has not read yet (a few milliseconds live) is missing from
it. Transient Kafka errors are retried (``pricing_udfs.kafka_retry``); a topic that cannot be read
fails :meth:`catch_up` loudly, so that Flink restarts the task.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pricing_udfs.kafka_retry import retried

log = logging.getLogger(__name__)


def _follow(ref: "weakref.ref[TopicTail]", stop: threading.Event) -> None:
    while not stop.is_set():
        tail = ref()
        if tail is None:
            return
        try:
            tail._poll(0.1)
        except Exception:  # noqa: BLE001 - a transient error must not end the thread; logged, retried
            log.exception("%s: reading failed; retrying", tail._name)
            time.sleep(1.0)
        del tail


class TailError(RuntimeError):
    """A topic a worker must follow cannot be read."""


class TopicTail:
    def __init__(self, client_config: dict[str, str], topics: list[tuple[str, int]],
                 handle: Callable[[str, bytes | None], None], *, name: str) -> None:  # fmt: skip
        """``topics``: (topic, since_ms) pairs, read in that order during the catch-up."""
        self.lock = threading.Lock()
        self.records = 0
        self.caught_up_s: float | None = None
        self._config = client_config
        self._topics = topics
        self._handle = handle
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None

    def catch_up(self, timeout_s: float) -> None:
        """Read every topic up to its high watermark at this call, topic after topic; then stay assigned."""
        started = time.monotonic()
        deadline = started + timeout_s
        base = {**self._config, "group.id": f"pricing-{self._name}-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                "enable.auto.offset.store": False, "enable.partition.eof": False, "isolation.level": "read_committed"}  # fmt: skip
        try:
            self._consumer = consumer = Consumer(base)
            assigned: list[TopicPartition] = []
            for topic, since_ms in self._topics:
                left = max(deadline - time.monotonic(), 1.0)
                meta = retried(lambda: consumer.list_topics(topic, timeout=left), timeout_s=left).topics.get(topic)
                if meta is None or meta.error is not None or not meta.partitions:
                    raise TailError(f"{self._name}: cannot read topic {topic!r}: "
                                    f"{meta.error if meta is not None else 'not in the metadata'}")  # fmt: skip
                parts = sorted(meta.partitions)
                ends = {p: retried(lambda p=p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=left,
                                                                              cached=False), timeout_s=left)[1]
                        for p in parts}  # fmt: skip
                if since_ms > 0:
                    found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in parts], timeout=left)
                    starts = {tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition]) for tp in found}
                else:
                    starts = {p: retried(lambda p=p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=left,
                                                                                    cached=False), timeout_s=left)[0]
                              for p in parts}  # fmt: skip
                assigned += [TopicPartition(topic, p, starts[p]) for p in parts]
                consumer.assign(assigned)
                pending = {p: ends[p] for p in parts if starts[p] < ends[p]}
                while pending and time.monotonic() < deadline:
                    self._poll(0.2)
                    for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                        if tp.offset >= 0 and tp.offset >= pending[tp.partition]:
                            del pending[tp.partition]
                if pending:
                    log.warning("%s: %s not read up to its end within %.0f s (partitions and ends %s): going on with "
                                "what was read", self._name, topic, timeout_s, pending)  # fmt: skip
        except KafkaException as exc:
            raise TailError(f"{self._name}: cannot read {[t for t, _ in self._topics]}: {exc}") from exc
        self.caught_up_s = round(time.monotonic() - started, 3)
        log.info("%s: caught up with %s in %.3f s (%d records)", self._name, self._topics, self.caught_up_s, self.records)

    def start(self) -> None:
        """Follow new records on a daemon thread (after :meth:`catch_up`)."""
        if self._consumer is None:
            raise RuntimeError("catch_up() first")
        # The thread holds the tail weakly: a tail its owner dropped without close() (a cancelled job's worker
        # in the client process) stops being followed, and its consumer is closed when it is collected.
        self._thread = threading.Thread(target=_follow, args=(weakref.ref(self), self._stop), name=f"pricing-{self._name}",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __del__(self) -> None:
        self._stop.set()
        if self._consumer is not None:
            self._consumer.close()

    def _poll(self, wait_s: float) -> None:
        messages = self._consumer.consume(5_000, wait_s)
        if not messages:
            return
        with self.lock:
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise TailError(f"{self._name}: {err}")
                    continue
                self._handle(msg.topic(), msg.value())
                self.records += 1
