"""Helpers shared by the integration tests."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Message, Producer

from pricing.config import Settings
from pricing_udfs import serde
from pricing_udfs.privacy import Pseudonymiser
from pricing_udfs.serde import Contract


def read_topic(settings: Settings, topic: str, *, quiet_s: float = 4.0, timeout_s: float = 60.0,
               group_prefix: str = "check-") -> list[Message]:  # fmt: skip
    """Everything a fresh read_committed consumer sees, until ``quiet_s`` pass without a record (counted from the
    group's assignment: a TLS and SCRAM login and the group join come first).

    Reading past the last expected record is what lets tests catch duplicates.
    """
    consumer = Consumer(
        settings.kafka.client_config()
        | {"group.id": f"{group_prefix}{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest", "isolation.level": "read_committed"}
    )
    assigned: list[float] = []
    consumer.subscribe([topic], on_assign=lambda c, parts: assigned.append(time.monotonic()))
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not assigned:
            msg = consumer.poll(0.2)
            if msg is not None:
                assert not msg.error(), msg.error()
                out.append(msg)
        last = assigned[0] if assigned else time.monotonic()
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


class PricedReader(threading.Thread):
    """A read_committed reader of priced-events (or of recommendations, with ``contract``) in the background:
    ``records`` as ``(monotonic time, record)``, in the order they became visible."""

    def __init__(self, settings: Settings, contract: Contract = Contract.PRICED_EVENT, *,
                 group_prefix: str = "reader-") -> None:  # fmt: skip
        super().__init__(daemon=True)
        self._contract = contract
        self.records: list[tuple[float, dict]] = []
        self._halt = threading.Event()
        self._consumer = Consumer(
            settings.kafka.client_config()
            | {"group.id": f"{group_prefix}{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest", "isolation.level": "read_committed"}
        )
        topics = settings.kafka.topics
        self._consumer.subscribe([topics.priced.name if contract is Contract.PRICED_EVENT else topics.recommendations.name])

    @property
    def ids(self) -> list[str]:
        return [r["request_id"] for _, r in self.records]

    def run(self) -> None:
        while not self._halt.is_set():
            msg = self._consumer.poll(0.2)
            if msg is not None and not msg.error():
                self.records.append((time.monotonic(), serde.decode(self._contract, msg.value()).record))
        self._consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class PacedRequests:
    """Price requests at ``rate`` per second with event time = now, round-robin over ``products`` (the key,
    so every partition gets some) and 23 users; ``sent`` holds their ids in order."""

    def __init__(self, settings: Settings, products: list[str], *, rate: float, recommend_every: int = 0) -> None:
        """``recommend_every`` n > 0: each request also comes with a view of its product by its user, and every n-th
        with a recommend request of that user (k = 3); their ids are in ``recommend_sent``."""
        topics = settings.kafka.topics
        self._topic = topics.requests.name
        self._behaviour, self._recommend = topics.behaviour.name, topics.recommend_requests.name
        self._producer = Producer(settings.kafka.client_config() | {"linger.ms": 5})
        self._products = products
        self._rate = rate
        self._every = recommend_every
        self.sent: list[str] = []
        self.recommend_sent: list[str] = []

    def send(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rid = f"r{len(self.sent):05d}"
            ts = int(time.time() * 1000)
            product = self._products[len(self.sent) % len(self._products)]
            user = f"u{len(self.sent) % 23}"
            rec = {"request_id": rid, "user_id": user, "product_id": product, "channel": "web", "event_time": ts}
            self._producer.produce(self._topic, serde.encode(Contract.PRICE_REQUEST, rec), key=product.encode(), timestamp=ts)
            if self._every:
                view = {"event_id": f"v{rid}", "user_id": user, "product_id": product, "type": "view",
                        "price_seen_minor": 1_000, "currency": "EUR", "quantity": 1, "session_id": "s", "event_time": ts,
                        "request_id": None}  # fmt: skip
                self._producer.produce(self._behaviour, serde.encode(Contract.BEHAVIOUR_EVENT, view), key=product.encode(),
                                       timestamp=ts)  # fmt: skip
                if len(self.sent) % self._every == 0:
                    ask = {"request_id": f"rr{len(self.sent):05d}", "user_id": user, "channel": "web", "event_time": ts,
                           "k": 3, "context_product_id": None, "context_category": None, "candidate_product_ids": []}
                    self._producer.produce(self._recommend, serde.encode(Contract.RECOMMEND_REQUEST, ask),
                                           key=user.encode(), timestamp=ts)  # fmt: skip
                    self.recommend_sent.append(ask["request_id"])
            self.sent.append(rid)
            self._producer.poll(0)
            time.sleep(1 / self._rate)
        self._producer.flush()


# What an in-process PyFlink job of an earlier test leaves in this process's environment
# (its loopback Python worker's settings): a shell starting a command has none of it.
_WORKER_ENV = ("PYFLINK_", "PYTHON_LOOPBACK", "WORKER_ID", "PIPELINE_OPTIONS", "SEMI_PERSISTENT_DIRECTORY",
               "LOGGING_API_SERVICE_DESCRIPTOR", "CONTROL_API_SERVICE_DESCRIPTOR", "BOOT_LOG_DIR", "FLINK_")  # fmt: skip


def command_env() -> dict[str, str]:
    """This process's environment as a shell would give it to a ``pricing`` command (no PyFlink worker leftovers)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_WORKER_ENV)}


def write_config_file(settings: Settings, path: Path, *, job: list[str], extra: list[str] = ()) -> Path:
    """The test's settings (state dir, broker, topics, consumer group, transactional ids) as the TOML file a
    user would write, plus ``job`` lines under ``[job]`` and ``extra`` lines after it."""
    kafka, j = settings.kafka, settings.job
    lines = [f'state_dir = "{settings.state_dir}"', "[kafka]", f'bootstrap_servers = "{kafka.bootstrap_servers}"']
    for key in type(kafka.topics).model_fields:
        topic = getattr(kafka.topics, key)
        lines += [f"[kafka.topics.{key}]", f'name = "{topic.name}"', f"partitions = {topic.partitions}"]
    lines += ["[job]", f'consumer_group = "{j.consumer_group}"', f'transactional_id_prefix = "{j.transactional_id_prefix}"',
              *job, *extra]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def pseudonyms(settings: Settings) -> "Pseudonymiser":
    """The job's pseudonymiser (its key file, written when the job started): the user ids its outputs hold."""
    return settings.privacy_config().pseudonymiser()
