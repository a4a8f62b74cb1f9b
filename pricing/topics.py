"""Create the engine's topics (idempotent) and check a principal can use them, with confluent-kafka's AdminClient.

Every failure to reach or use the cluster is a :class:`KafkaAccessError`: one line saying what was refused and
what to do (a wrong certificate, a wrong password, a missing ACL), not a client stack trace.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pricing.config import KafkaSettings


class KafkaAccessError(ValueError):
    """The cluster cannot be reached or refuses this principal; the message says why and what to do."""


def _who(kafka: KafkaSettings) -> str:
    user = f"principal {kafka.sasl_username!r}" if kafka.sasl_username else "this client"
    return f"{user} on {kafka.bootstrap_servers} ({kafka.security_protocol})"


def _explain(kafka: KafkaSettings, errors: list[KafkaError], fallback: str) -> str:
    for err in errors:
        text = err.str()
        if err.code() == KafkaError._AUTHENTICATION or "SASL authentication" in text:
            return (f"Kafka refused the login of {_who(kafka)}: {text}. Check sasl_username, sasl_password and "
                    "sasl_mechanism")  # fmt: skip
        if err.code() == KafkaError._SSL or "SSL handshake" in text or "certificate" in text:
            return (f"the TLS handshake of {_who(kafka)} failed: {text}. Check ssl_ca_location (the CA that signed the "
                    "brokers' certificates) and the host name in bootstrap_servers")  # fmt: skip
    last = f": {errors[-1].str()}" if errors else ""
    return f"cannot reach Kafka as {_who(kafka)}{last or ': ' + fallback}"


def connect(kafka: KafkaSettings, *, timeout_s: float = 30.0) -> tuple[AdminClient, Any]:
    """An admin client and the cluster's metadata, or a :class:`KafkaAccessError` as soon as the brokers refuse the
    login or the TLS handshake (librdkafka would otherwise retry until ``timeout_s``)."""
    errors: list[KafkaError] = []
    admin = AdminClient({**kafka.client_config(), "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin, admin.list_topics(timeout=min(2.0, max(deadline - time.monotonic(), 0.1)))
        except KafkaException as exc:
            admin.poll(0.1)  # serves error_cb
            if time.monotonic() >= deadline or any(e.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL)
                                                   for e in errors):  # fmt: skip
                raise KafkaAccessError(_explain(kafka, errors, str(exc))) from None


def create_topics(kafka: KafkaSettings, *, replication_factor: int = 1, timeout_s: float = 30.0) -> dict[str, str]:
    """Create every configured topic that is missing; returns ``{name: "created" | "exists"}``.

    An existing topic with fewer partitions than configured is an error (Kafka can
    only add partitions, and that reshuffles keys), reported with the numbers.
    """
    admin, metadata = connect(kafka, timeout_s=timeout_s)
    existing = metadata.topics
    status: dict[str, str] = {}
    wanted = []
    for topic in kafka.topics.all():
        if topic.name in existing:
            have = len(existing[topic.name].partitions)
            if have < topic.partitions:
                raise ValueError(
                    f"topic {topic.name} has {have} partitions, configured {topic.partitions}; "
                    "raise them deliberately with kafka-topics --alter"
                )
            status[topic.name] = "exists"
        else:
            wanted.append(NewTopic(topic.name, num_partitions=topic.partitions, replication_factor=replication_factor,
                                   config={"cleanup.policy": topic.cleanup_policy}))
    if wanted:
        for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
                status[name] = "created"
            except KafkaException as exc:
                if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    status[name] = "exists"
                elif exc.args and "AUTHORIZATION" in exc.args[0].name():
                    raise KafkaAccessError(f"{_who(kafka)} may not create topic {name} ({exc.args[0].name()}): create "
                                           "the topics as an administrator, or grant CREATE") from None  # fmt: skip
                else:
                    raise
    return status


class MissingTopicsError(ValueError):
    """Topics the job reads or writes do not exist: one line, saying how to create them."""


def require_topics(kafka: KafkaSettings, names: list[str], *, timeout_s: float = 30.0) -> None:
    """Raise :class:`MissingTopicsError` naming every topic of ``names`` the cluster does not have, or
    :class:`KafkaAccessError` for those the principal may not use (the Flink connector would otherwise fail the job
    later with a stack trace about partition metadata)."""
    admin, metadata = connect(kafka, timeout_s=timeout_s)
    absent = [n for n in names if n not in metadata.topics]
    # A topic the principal may not describe is left out of the metadata: ask for it by name to tell the two apart.
    denied = [n for n in absent if (t := admin.list_topics(topic=n, timeout=timeout_s).topics.get(n)) is not None
              and t.error is not None and t.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED]  # fmt: skip
    if denied:
        raise KafkaAccessError(f"{_who(kafka)} is not authorised for topics {denied} (TOPIC_AUTHORIZATION_FAILED): "
                               "grant it the ACLs of its role (README, Security)")  # fmt: skip
    if absent:
        raise MissingTopicsError(f"topics {absent} do not exist on {kafka.bootstrap_servers}: create them with "
                                 "`pricing topics create` (or the deployment's KafkaTopics); a job without "
                                 "recommendations needs none of the recommend topics ([recommend] enabled = false)")
