"""Create the engine's topics (idempotent) with confluent-kafka's AdminClient."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pricing.config import KafkaSettings


def create_topics(kafka: KafkaSettings, *, replication_factor: int = 1, timeout_s: float = 30.0) -> dict[str, str]:
    """Create every configured topic that is missing; returns ``{name: "created" | "exists"}``.

    An existing topic with fewer partitions than configured is an error (Kafka can
    only add partitions, and that reshuffles keys), reported with the numbers.
    """
    admin = AdminClient(kafka.client_config())
    existing = admin.list_topics(timeout=timeout_s).topics
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
                else:
                    raise
    return status


class MissingTopicsError(ValueError):
    """Topics the job reads or writes do not exist: one line, saying how to create them."""


def require_topics(kafka: KafkaSettings, names: list[str], *, timeout_s: float = 30.0) -> None:
    """Raise :class:`MissingTopicsError` naming every topic of ``names`` the cluster does not have (the Flink
    connector would otherwise fail the job later with a stack trace about partition metadata)."""
    existing = AdminClient(kafka.client_config()).list_topics(timeout=timeout_s).topics
    missing = [n for n in names if n not in existing]
    if missing:
        raise MissingTopicsError(f"topics {missing} do not exist on {kafka.bootstrap_servers}: create them with "
                                 "`pricing topics create` (or the deployment's KafkaTopics); a job without "
                                 "recommendations needs none of the recommend topics ([recommend] enabled = false)")
