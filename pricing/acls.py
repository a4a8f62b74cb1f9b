"""The principals that talk to Kafka and the least privilege each one needs: the one list of ACLs.

``pricing kafka start --secure`` grants exactly these on the local broker (:func:`apply_acls`), and the
Kubernetes KafkaUsers (k8s/base) are checked against them (tests/k8s). Topic names, the consumer group
and the transactional-id prefix come from the settings, so the ACLs follow the configuration.

| principal | reads | writes | groups | transactional ids |
|---|---|---|---|---|
| the job | its inputs, and the priced events and recommendations its workers follow | priced, recommendations, dead letters | prefix ``pricing-`` (its group and its workers' short readers) | prefix ``[job] transactional_id_prefix`` |
| the storefront (and simulator) | priced, recommendations | requests, recommend requests, behaviour, market, catalogue | prefixes ``pricing-sim-``, ``storefront-`` | none |
| the archive | every topic it archives (``[archive] topics``; by default all, dead letters included, the recommendation topics while ``[recommend] enabled``) | nothing | prefix ``[archive] consumer_group`` | none |
| the trainer | every topic but the dead letters | nothing | prefix ``pricing-trainer`` | none |

The trainer is a local principal (``pricing kafka start --secure``, tests reading the topics): on Kubernetes
training reads the archive, not the topics, so only :data:`KUBERNETES_PRINCIPALS` have KafkaUsers there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pricing.config import TopicsSettings

if TYPE_CHECKING:
    from pricing.config import Settings

Resource = Literal["topic", "group", "transactional_id", "cluster"]
Operation = Literal["read", "write", "describe", "idempotent_write"]
# The principals' user names (SCRAM users locally, KafkaUsers in Kubernetes).
JOB, STOREFRONT, ARCHIVE, TRAINER = "pricing-job", "pricing-storefront", "pricing-archive", "pricing-trainer"
# The principals that have a KafkaUser in k8s/base (the others are local only).
KUBERNETES_PRINCIPALS = (JOB, STOREFRONT, ARCHIVE)
# The consumer groups' prefixes each principal may use.
JOB_GROUP_PREFIX = "pricing-"
STOREFRONT_GROUP_PREFIXES = ("pricing-sim-", "storefront-")
TRAINER_GROUP_PREFIX = "pricing-trainer"


@dataclass(frozen=True, order=True)
class Acl:
    principal: str  # the user name, without "User:"
    resource: Resource
    name: str
    pattern: Literal["literal", "prefixed"]
    operation: Operation


def principal_acls(settings: Settings) -> list[Acl]:
    """Every ALLOW rule of the principals, sorted."""
    t, job, archive = settings.kafka.topics, settings.job, settings.archive
    acls: list[Acl] = []

    def topics(principal: str, names: list[str], *ops: Operation) -> None:
        acls.extend(Acl(principal, "topic", n, "literal", op) for n in names for op in (*ops, "describe"))

    topics(JOB, [t.behaviour.name, t.market.name, t.requests.name, t.recommend_requests.name, t.catalogue.name,
                 t.priced.name, t.recommendations.name], "read")  # fmt: skip
    topics(JOB, [t.priced.name, t.recommendations.name, t.dead_letters.name], "write")
    acls.append(Acl(JOB, "group", JOB_GROUP_PREFIX, "prefixed", "read"))
    acls += [Acl(JOB, "transactional_id", job.transactional_id_prefix, "prefixed", op) for op in ("write", "describe")]
    acls.append(Acl(JOB, "cluster", "kafka-cluster", "literal", "idempotent_write"))

    topics(STOREFRONT, [t.requests.name, t.recommend_requests.name, t.behaviour.name, t.market.name, t.catalogue.name],
           "write")  # fmt: skip
    topics(STOREFRONT, [t.priced.name, t.recommendations.name], "read")
    acls += [Acl(STOREFRONT, "group", p, "prefixed", "read") for p in STOREFRONT_GROUP_PREFIXES]
    acls.append(Acl(STOREFRONT, "cluster", "kafka-cluster", "literal", "idempotent_write"))

    # The archive copies topics to files: it reads, and writes nothing to Kafka (no transactions, no idempotence).
    # Its topics as jobs.archive.archived_topics chooses them (that module needs pyflink; tests/k8s compare the two).
    keys = archive.topics if archive.topics is not None else [
        k for k in TopicsSettings.model_fields
        if settings.recommend.enabled or k not in ("recommend_requests", "recommendations")]
    archived = [getattr(t, key).name for key in dict.fromkeys(keys)]
    topics(ARCHIVE, archived, "read")
    acls.append(Acl(ARCHIVE, "group", archive.consumer_group, "prefixed", "read"))

    topics(TRAINER, [t.behaviour.name, t.market.name, t.requests.name, t.priced.name, t.recommendations.name,
                     t.catalogue.name], "read")  # fmt: skip
    acls.append(Acl(TRAINER, "group", TRAINER_GROUP_PREFIX, "prefixed", "read"))
    return sorted(set(acls))


def apply_acls(admin_config: dict[str, str], acls: list[Acl], *, timeout_s: float = 30.0) -> None:
    """Create ``acls`` (idempotent: Kafka keeps one copy of an existing rule) with an admin's client settings."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
             "transactional_id": ResourceType.TRANSACTIONAL_ID, "cluster": ResourceType.BROKER}  # fmt: skip
    ops = {"read": AclOperation.READ, "write": AclOperation.WRITE, "describe": AclOperation.DESCRIBE,
           "idempotent_write": AclOperation.IDEMPOTENT_WRITE}  # fmt: skip
    patterns = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
    bindings = [AclBinding(kinds[a.resource], a.name, patterns[a.pattern], f"User:{a.principal}", "*", ops[a.operation],
                           AclPermissionType.ALLOW) for a in acls]  # fmt: skip
    admin = AdminClient(admin_config)  # kept alive until every future is resolved
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result(timeout=timeout_s)
