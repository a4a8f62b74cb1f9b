"""Kafka access on the cluster: the KafkaTopics and KafkaUsers live where Strimzi's operators reconcile them,
every principal's ACLs cover what it reads and writes (and nothing else), and the pods of both Flink
deployments (the pricing job and the archive) log in as their own principal and get their Kafka credentials and
the pseudonym key as files from the Secrets that own them, never through the environment.

The settings are read with ``tomllib`` from the ConfigMap the pods mount (plus the literal
``PRICING_<SECTION>__<FIELD>`` overrides of their environment), not through ``pricing.config``, so these checks
hold whatever the settings code accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import PurePosixPath

import pytest

import pricing.acls as acls_module
from tests.k8s.conftest import ARCHIVE, DEPLOYMENTS, JOB, OVERLAYS, ROOT, one

pytestmark = pytest.mark.integration  # renders the overlays with the fetched kustomize

# What each principal does with each topic of [kafka.topics] (by key). A topic added to pricing.toml must be
# placed here, so that a new topic cannot go without its ACLs.
JOB_READS = {"behaviour", "market", "requests", "recommend_requests", "catalogue", "priced", "recommendations"}
JOB_WRITES = {"priced", "recommendations", "dead_letters"}
STOREFRONT_READS = {"priced", "recommendations"}
STOREFRONT_WRITES = {"requests", "recommend_requests", "behaviour", "market", "catalogue"}
PRINCIPALS = {  # KafkaUser name -> (reads, writes), beside the job's and the archive's (tested on their own)
    "pricing-storefront": (STOREFRONT_READS, STOREFRONT_WRITES),
}
# Each FlinkDeployment's Kafka principal (pricing.acls).
PRINCIPAL_OF = {JOB: acls_module.JOB, ARCHIVE: acls_module.ARCHIVE}
# Operations no principal here needs: topic or ACL administration, and the wildcard.
NEVER = {"All", "Create", "Delete", "Alter", "AlterConfigs", "ClusterAction"}

# Strimzi's Secret layouts (User Operator and Cluster Operator documentation).
USER_SECRET_KEYS = {
    "scram-sha-512": {"password", "sasl.jaas.config"},
    "tls": {"ca.crt", "user.crt", "user.key", "user.p12", "user.password"},
}
CLUSTER_CA_CERT_KEYS = {"ca.crt", "ca.p12", "ca.password"}
PSEUDONYM_SECRET, PSEUDONYM_SECRET_KEY = "pricing-pseudonym-key", "key"
REFLECTOR = "reflector.v1.k8s.emberstack.com/"
# The files the job reads from [secrets] dir, and the Secret (kind) and key each must come from.
SECRET_FILES = {
    "kafka.password": ("scram-user", "password"),
    "kafka.ca.crt": ("cluster-ca", "ca.crt"),
    "kafka.ca.password": ("cluster-ca", "ca.password"),
    "kafka.keystore.password": ("tls-user", "user.password"),
    "pseudonym.key": ("pseudonym", PSEUDONYM_SECRET_KEY),
}
BOOTSTRAP = re.compile(r"^(?P<cluster>[a-z0-9-]+)-kafka-bootstrap\.(?P<namespace>[a-z0-9-]+)\.svc(\.cluster\.local)?"
                       r":(?P<port>\d+)$")


# ---------------------------------------------------------------- helpers
def job_toml(docs: list[dict], deployment: str = JOB) -> dict:
    """pricing.toml as a deployment's pods mount it (the ConfigMap behind the volume `pricing-config`)."""
    pod = one(docs, "FlinkDeployment", deployment)["spec"]["podTemplate"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "pricing-config"]
    return tomllib.loads(one(docs, "ConfigMap", volume["configMap"]["name"])["data"]["pricing.toml"])


def env_overrides(docs: list[dict], deployment: str) -> dict[tuple[str, str], str]:
    """(section, field) -> value of the literal ``PRICING_<SECTION>__<FIELD>`` variables of a deployment's pods."""
    found = {}
    for container in flink_containers(docs, deployment):
        for env in container.get("env", []):
            match = re.fullmatch(r"PRICING_([A-Z0-9_]+?)__([A-Z0-9_]+)", env["name"])
            if match and "value" in env:
                found[(match.group(1).lower(), match.group(2).lower())] = env["value"]
    return found


def pod_toml(docs: list[dict], deployment: str = JOB) -> dict:
    """The settings a deployment's pods load: the mounted pricing.toml with their environment's overrides."""
    toml = job_toml(docs, deployment)
    for (section, field), value in env_overrides(docs, deployment).items():
        toml.setdefault(section, {})[field] = value
    return toml


def kafka_cluster(toml: dict) -> re.Match[str]:
    """Strimzi's cluster name, namespace and listener port, from the bootstrap address the job uses."""
    [server] = toml["kafka"]["bootstrap_servers"].split(",")
    match = BOOTSTRAP.match(server)
    assert match, f"{server} is not a Strimzi bootstrap service address"
    return match


def topics(toml: dict) -> dict[str, str]:
    """[kafka.topics] key -> topic name."""
    return {key: section["name"] for key, section in toml["kafka"]["topics"].items()}


def acls(user: dict) -> list[tuple[str, str | None, str, set[str]]]:
    """(resource type, name, pattern type, operations) of the user's allow rules; no deny rules are used here."""
    rules = user["spec"]["authorization"]["acls"]
    assert all(rule.get("type", "allow") == "allow" for rule in rules)
    return [(r["resource"]["type"], r["resource"].get("name"), r["resource"].get("patternType", "literal"),
             set(r["operations"])) for r in rules]


def allowed(user: dict, resource_type: str, name: str | None = None) -> set[str]:
    """The operations the user may do on one resource, as Kafka matches literal and prefix ACLs."""
    ops: set[str] = set()
    for rtype, rname, pattern, operations in acls(user):
        if rtype != resource_type:
            continue
        if (resource_type == "cluster" or rname == "*" or (pattern == "literal" and rname == name)
                or (pattern == "prefix" and name is not None and name.startswith(rname or ""))):
            ops |= operations
    return ops


def flink_containers(docs: list[dict], deployment: str = JOB) -> list[dict]:
    """Every container spec of a FlinkDeployment's pod templates (common, JobManager, TaskManager)."""
    spec = one(docs, "FlinkDeployment", deployment)["spec"]
    templates = [spec.get("podTemplate"), spec.get("jobManager", {}).get("podTemplate"),
                 spec.get("taskManager", {}).get("podTemplate")]
    return [c for t in templates if t for c in t["spec"].get("containers", [])]


def all_keys(node: object) -> list[str]:
    """Every key of a nested dict, at any depth."""
    return [k for key, value in node.items() for k in [key, *all_keys(value)]] if isinstance(node, dict) else []


def worker_group_prefixes() -> set[str]:
    """The literal start of every consumer group id the Python workers make up (f"pricing-...-{uuid}")."""
    found = set()
    for path in (ROOT / "pricing_udfs").rglob("*.py"):
        found |= set(re.findall(r'"group\.id":\s*f"([^"{]*)\{', path.read_text()))
    return found


# ---------------------------------------------------------------- where the Strimzi objects live
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_and_users_live_where_strimzi_reconciles_them(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    toml = job_toml(docs)
    cluster = kafka_cluster(toml)
    kafka_topics = {d["spec"].get("topicName", d["metadata"]["name"]): d for d in docs if d["kind"] == "KafkaTopic"}
    assert kafka_topics.keys() == set(topics(toml).values()), "every topic in pricing.toml is a KafkaTopic, no more"
    strimzi = [d for d in docs if d["kind"] in {"KafkaTopic", "KafkaUser"}]
    assert {d["kind"] for d in strimzi} == {"KafkaTopic", "KafkaUser"}
    for doc in strimzi:
        # the Kafka cluster's own namespace (its Topic and User Operators watch it by default) and its label
        assert doc["metadata"]["namespace"] == cluster["namespace"], doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == cluster["cluster"], doc["metadata"]["name"]
        assert doc["apiVersion"] == "kafka.strimzi.io/v1"
    others = {d["metadata"].get("namespace") for d in docs if d["kind"] not in {"KafkaTopic", "KafkaUser"}}
    assert others == {"pricing"}, "the job's own objects stay in pricing"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_each_deployment_connects_to_the_tls_listener_as_its_own_kafka_user(rendered: dict[str, list[dict]],
                                                                             overlay: str, deployment: str) -> None:
    docs = rendered[overlay]
    toml = pod_toml(docs, deployment)
    kafka = toml["kafka"]
    assert kafka["security_protocol"] == "SASL_SSL" and kafka["ssl_endpoint_identification"] is True
    assert kafka_cluster(toml)["port"] == "9093"  # Strimzi's internal TLS listener
    user = one(docs, "KafkaUser", kafka["sasl_username"])
    assert kafka["sasl_mechanism"] == "SCRAM-SHA-512" and user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert user["spec"]["authorization"]["type"] == "simple"
    # each deployment is its own principal: the archive is not the job (and so cannot write its topics)
    assert kafka["sasl_username"] == PRINCIPAL_OF[deployment]
    # the pods load the same settings otherwise: one ConfigMap for both deployments
    assert job_toml(docs, deployment) == job_toml(docs, JOB)
    if deployment != JOB:  # the only Kafka override is the user name (no other [kafka] setting differs)
        assert {f for s, f in env_overrides(docs, deployment) if s == "kafka"} == {"sasl_username"}


# ---------------------------------------------------------------- ACLs
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_jobs_acls_cover_exactly_the_topics_it_reads_and_writes(rendered: dict[str, list[dict]],
                                                                     overlay: str) -> None:
    docs = rendered[overlay]
    toml = job_toml(docs)
    names = topics(toml)
    assert JOB_READS | JOB_WRITES == names.keys(), "a topic in pricing.toml that the job neither reads nor writes?"
    user = one(docs, "KafkaUser", toml["kafka"]["sasl_username"])
    for key, topic in names.items():
        ops = allowed(user, "topic", topic)
        assert ("Read" in ops) == (key in JOB_READS), f"Read on {topic}: {sorted(ops)}"
        assert ("Write" in ops) == (key in JOB_WRITES), f"Write on {topic}: {sorted(ops)}"
        assert "Describe" in ops, topic  # metadata and offsets of every topic it touches
        assert not ops & NEVER, f"{topic}: {sorted(ops & NEVER)}"
    # topic rules name topics of pricing.toml, literally (no prefixes, no wildcard)
    topic_rules = [(name, pattern) for rtype, name, pattern, _ in acls(user) if rtype == "topic"]
    assert {name for name, _ in topic_rules} == set(names.values())
    assert {pattern for _, pattern in topic_rules} == {"literal"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_jobs_transactional_ids_groups_and_idempotence(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    toml = job_toml(docs)
    user = one(docs, "KafkaUser", toml["kafka"]["sasl_username"])
    [transactional] = [(name, pattern, ops) for rtype, name, pattern, ops in acls(user) if rtype == "transactionalId"]
    # the exactly-once sinks' ids start with [job] transactional_id_prefix (then -<sink>-...)
    assert transactional == (toml["job"]["transactional_id_prefix"], "prefix", {"Write", "Describe"})
    assert "Read" in allowed(user, "group", toml["job"]["consumer_group"])
    prefixes = worker_group_prefixes()
    assert prefixes, "no worker consumer group found in pricing_udfs: has the pattern changed?"
    for prefix in prefixes:  # the workers' readers: pricing-anchor-seed-<uuid>, pricing-<reader>-<uuid>
        assert "Read" in allowed(user, "group", prefix + "0123abcd"), prefix
    assert {name for rtype, name, _, _ in acls(user) if rtype == "group"} == {"pricing-"}
    assert allowed(user, "cluster") == {"IdempotentWrite"}


@pytest.mark.parametrize("name", sorted(PRINCIPALS))
def test_the_other_principals_get_what_they_use_and_no_more(rendered: dict[str, list[dict]], name: str) -> None:
    docs = rendered["gpu"]
    names = topics(job_toml(docs))
    reads, writes = PRINCIPALS[name]
    assert (reads | writes) <= names.keys()
    user = one(docs, "KafkaUser", name)
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    for key, topic in names.items():
        ops = allowed(user, "topic", topic)
        assert ("Read" in ops) == (key in reads), f"{name}: Read on {topic}: {sorted(ops)}"
        assert ("Write" in ops) == (key in writes), f"{name}: Write on {topic}: {sorted(ops)}"
        assert not ops & NEVER
    assert not [rule for rule in acls(user) if rule[0] == "transactionalId"]
    assert allowed(user, "cluster") == ({"IdempotentWrite"} if writes else set())
    groups = {name for rtype, name, _, _ in acls(user) if rtype == "group"}
    assert groups and "pricing-" not in groups and "*" not in groups  # not the job's groups


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_archive_reads_every_topic_it_archives_and_writes_nothing(rendered: dict[str, list[dict]],
                                                                      overlay: str) -> None:
    from jobs.archive import archived_topics
    from pricing.config import load_settings

    docs = rendered[overlay]
    toml = pod_toml(docs, ARCHIVE)
    user = one(docs, "KafkaUser", toml["kafka"]["sasl_username"])
    settings = load_settings(kafka=job_toml(docs)["kafka"], archive=toml.get("archive", {}),
                             recommend=toml.get("recommend", {}))  # fmt: skip
    archived = {name for _, name, _ in archived_topics(settings)}
    assert archived == set(topics(toml).values()), "the archive copies every topic, the dead letters included"
    for topic in topics(toml).values():
        ops = allowed(user, "topic", topic)
        assert ops == ({"Read", "Describe"} if topic in archived else set()), f"{topic}: {sorted(ops)}"
    # its own consumer group ([archive] consumer_group), which is neither the job's nor under another's prefix
    group = settings.archive.consumer_group
    groups = [(name, pattern, ops) for rtype, name, pattern, ops in acls(user) if rtype == "group"]
    assert groups == [(group, "prefix", {"Read"})]
    assert group != toml["job"]["consumer_group"]
    # no transactions, no idempotent producer: it writes nothing to Kafka
    assert {rtype for rtype, *_ in acls(user)} == {"topic", "group"}
    assert user["spec"]["template"]["secret"]["metadata"]["annotations"]  # mirrored to the pods (secrets below)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_principals_deployed_here_have_kafka_users(rendered: dict[str, list[dict]], overlay: str) -> None:
    """The trainer of pricing.acls is local (tests, `pricing kafka start --secure`): training on the cluster
    reads the archive, so a KafkaUser for it would be a credential nobody uses."""
    users = {d["metadata"]["name"] for d in rendered[overlay] if d["kind"] == "KafkaUser"}
    assert users == set(acls_module.KUBERNETES_PRINCIPALS)
    assert acls_module.TRAINER not in users
    # every user's Secret that a pod here mounts is mirrored to `pricing`; the storefront's is not (it runs elsewhere)
    mounted = {name for d in DEPLOYMENTS for name, _ in secret_sources(rendered[overlay], job_toml(rendered[overlay]),
                                                                        d).values()}  # fmt: skip
    assert users & mounted == {PRINCIPAL_OF[d] for d in DEPLOYMENTS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_acl_names_an_existing_topic(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    existing = {d["spec"].get("topicName", d["metadata"]["name"]) for d in docs if d["kind"] == "KafkaTopic"}
    for user in (d for d in docs if d["kind"] == "KafkaUser"):
        named = {name for rtype, name, _, _ in acls(user) if rtype == "topic"}
        assert named <= existing, f"{user['metadata']['name']}: ACLs on unknown topics {sorted(named - existing)}"


# ---------------------------------------------------------------- secrets
def secret_sources(docs: list[dict], toml: dict, deployment: str = JOB) -> dict[str, tuple[str, str]]:
    """file in [secrets] dir -> (Secret, key), from the projected volume the main container mounts there."""
    pod = one(docs, "FlinkDeployment", deployment)["spec"]["podTemplate"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "flink-main-container"]
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == toml["secrets"]["dir"]]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True, "one read-only mount at [secrets] dir"
    [volume] = [v for v in pod["volumes"] if v["name"] == mounts[0]["name"]]
    assert set(volume) == {"name", "projected"}, "a projected volume of Secrets"
    files = {}
    for source in volume["projected"]["sources"]:
        assert set(source) == {"secret"}, f"only Secrets in the secrets volume: {source}"
        for item in source["secret"]["items"]:
            assert item["path"] not in files, item["path"]
            files[item["path"]] = (source["secret"]["name"], item["key"])
    return files


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_the_pods_mount_every_secret_file_the_settings_name(rendered: dict[str, list[dict]], overlay: str,
                                                            deployment: str) -> None:
    docs = rendered[overlay]
    toml = pod_toml(docs, deployment)
    directory, kafka = PurePosixPath(toml["secrets"]["dir"]), toml["kafka"]
    files = secret_sources(docs, toml, deployment)
    needed = {"pseudonym.key"} if toml["privacy"].get("pseudonym_key_id") else set()
    if kafka["security_protocol"].startswith("SASL_"):
        needed.add("kafka.password")
    if kafka["security_protocol"].endswith("SSL"):
        ca = PurePosixPath(kafka["ssl_ca_location"])
        assert ca.parent == directory, "the CA is one of the secret files"
        needed.add(ca.name)
        if ca.suffix in {".p12", ".pfx"}:
            needed.add("kafka.ca.password")
    if kafka.get("ssl_keystore_location"):
        needed |= {PurePosixPath(kafka["ssl_keystore_location"]).name, "kafka.keystore.password"}
    assert needed <= files.keys(), f"not mounted: {sorted(needed - files.keys())}"
    assert files.keys() <= needed, f"mounted but unused: {sorted(files.keys() - needed)}"
    # the JobManager's and TaskManagers' own templates do not replace or shadow the volume
    spec = one(docs, "FlinkDeployment", deployment)["spec"]
    common = spec["podTemplate"]["spec"]
    [mount] = [m for c in common["containers"] for m in c["volumeMounts"] if m["mountPath"] == str(directory)]
    for role in ("jobManager", "taskManager"):
        template = spec.get(role, {}).get("podTemplate", {}).get("spec", {})
        assert mount["name"] not in {v["name"] for v in template.get("volumes", [])}, role
        for container in template.get("containers", []):
            assert not [m for m in container.get("volumeMounts", []) if m["name"] == mount["name"]
                        or m["mountPath"].startswith(str(directory))], role


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_secret_keys_exist_in_strimzis_secret_layouts(rendered: dict[str, list[dict]], overlay: str,
                                                      deployment: str) -> None:
    docs = rendered[overlay]
    toml = pod_toml(docs, deployment)
    cluster = kafka_cluster(toml)
    pods_namespace = one(docs, "FlinkDeployment", deployment)["metadata"]["namespace"]
    users = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}
    for file, (secret, key) in secret_sources(docs, toml, deployment).items():
        kind, expected_key = SECRET_FILES[file]
        assert key == expected_key, f"{file} must be {kind}'s key {expected_key}, not {key}"
        if kind == "cluster-ca":
            assert secret == f"{cluster['cluster']}-cluster-ca-cert" and key in CLUSTER_CA_CERT_KEYS, file
        elif kind in {"scram-user", "tls-user"}:
            # the password of the user the pods log in as (each deployment its own)
            assert secret == toml["kafka"]["sasl_username"] and secret in users, f"{file}: {secret}: not the pods' user"
            auth = users[secret]["spec"]["authentication"]["type"]
            assert auth == ("scram-sha-512" if kind == "scram-user" else "tls") and key in USER_SECRET_KEYS[auth], file
            # the User Operator writes it in `kafka`: it must be mirrored to the pods' namespace
            annotations = users[secret]["spec"]["template"]["secret"]["metadata"]["annotations"]
            assert annotations[REFLECTOR + "reflection-allowed"] == annotations[REFLECTOR + "reflection-auto-enabled"] \
                == "true"
            for which in ("reflection-allowed-namespaces", "reflection-auto-namespaces"):
                assert pods_namespace in annotations[REFLECTOR + which].split(","), which
        else:
            assert secret == PSEUDONYM_SECRET, file


# The one Kafka setting a pod's environment may carry: the user name (not a secret), which the archive's pods
# set to their own KafkaUser; its password stays a file.
KAFKA_USER_ENV = "PRICING_KAFKA__SASL_USERNAME"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_kafka_credentials_in_the_environment_or_the_config(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    toml = job_toml(docs)
    secret_names = {name for d in DEPLOYMENTS for name, _ in secret_sources(docs, pod_toml(docs, d), d).values()}
    users = {d["metadata"]["name"] for d in docs if d["kind"] == "KafkaUser"}
    cronjob = one(docs, "CronJob", "pricing-training")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    containers = [c for d in DEPLOYMENTS for c in flink_containers(docs, d)] + cronjob["containers"]
    assert len(containers) >= 3
    for container in containers:
        assert not container.get("envFrom"), container["name"]
        for env in container.get("env", []):
            name, ref = env["name"], (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            if name == KAFKA_USER_ENV:
                assert env.get("value") in users, f"{name} names a KafkaUser, literally"
                continue
            assert not re.search(r"KAFKA|SASL|SSL|PSEUDONYM|JAAS", name, re.I), f"{name}: secrets are files, not env"
            assert ref.get("name") not in secret_names, f"{name} reads {ref.get('name')}"
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", name, re.I):
                assert "value" not in env, f"{name} holds a literal value"
    # the training CronJob does not talk to Kafka: it mounts none of the job's secrets
    cron_secrets = {s["secret"]["name"] for v in cronjob["volumes"] for s in v.get("projected", {}).get("sources", [])
                    if "secret" in s} | {v["secret"]["secretName"] for v in cronjob["volumes"] if "secret" in v}
    assert not cron_secrets & secret_names
    # no password in the settings (a ConfigMap) or in Flink's configuration
    assert not [k for k in all_keys(toml) if "password" in k.lower() or "jaas" in k.lower()]
    for deployment in DEPLOYMENTS:
        conf = one(docs, "FlinkDeployment", deployment)["spec"]["flinkConfiguration"]
        assert not [k for k in conf if re.search(r"password|jaas|sasl", k, re.I)], deployment


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_kafka_users_grant_exactly_the_acls_of_pricing_acls(rendered: dict[str, list[dict]], overlay: str) -> None:
    """One list of principals and rights (pricing.acls, which `pricing kafka start --secure` grants): the KafkaUsers
    of each overlay say the same, for the topics, groups and transactional ids of the overlay's own pricing.toml
    (the principals deployed here: the trainer is local only)."""
    from pricing.acls import KUBERNETES_PRINCIPALS, principal_acls
    from pricing.config import load_settings

    docs = rendered[overlay]
    toml = job_toml(docs)
    settings = load_settings(kafka=toml["kafka"], job=toml["job"], archive=toml.get("archive", {}),
                             recommend=toml.get("recommend", {}))
    kinds = {"topic": "topic", "group": "group", "transactionalId": "transactional_id", "cluster": "cluster"}
    patterns = {"literal": "literal", "prefix": "prefixed"}
    granted = set()
    for user in (d for d in docs if d.get("kind") == "KafkaUser"):
        for rtype, name, pattern, operations in acls(user):
            for op in operations:
                op = "idempotent_write" if op == "IdempotentWrite" else op.lower()
                granted.add((user["metadata"]["name"], kinds[rtype], name or "kafka-cluster", patterns[pattern], op))
    wanted = {(a.principal, a.resource, a.name, a.pattern, a.operation) for a in principal_acls(settings)
              if a.principal in KUBERNETES_PRINCIPALS}
    assert granted == wanted, {"only in k8s": sorted(granted - wanted), "only in pricing.acls": sorted(wanted - granted)}
