"""The pods are fenced and protected: each Flink deployment's NetworkPolicy (the pricing job's, the archive's)
selects its pods by the labels Flink's native Kubernetes integration gives them and lets through what a Flink
cluster needs (each other, the operator, Prometheus, Kafka's TLS listener, DNS, the object store and the API
server); the training CronJob's lets it reach DNS and the object store only; and each deployment's
PodDisruptionBudgets select its JobManager and TaskManagers with budgets that Kubernetes can compute for
operator-created pods."""

from __future__ import annotations

import math
from urllib.parse import urlsplit

import pytest

from tests.k8s.conftest import DEPLOYMENTS, OVERLAYS, one
from tests.k8s.test_kafka_access import job_toml, kafka_cluster

pytestmark = pytest.mark.integration  # renders the overlays with the fetched kustomize

FLINK_REST_PORT = 8081  # Flink's fixed REST port in Kubernetes (what the operator calls)


def flink_pod_labels(docs: list[dict], component: str, deployment: str) -> dict[str, str]:
    """The labels Flink puts on a FlinkDeployment's pods (its KubernetesUtils: app = cluster id = the name), with
    the pod template's own."""
    spec = one(docs, "FlinkDeployment", deployment)
    return {**spec["spec"]["podTemplate"].get("metadata", {}).get("labels", {}), "type": "flink-native-kubernetes",
            "app": spec["metadata"]["name"], "component": component}


def cron_pod_labels(docs: list[dict]) -> dict[str, str]:
    return one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "matchLabels only"
    return selector.get("matchLabels", {}).items() <= labels.items()


def ports(rule: dict) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_fenced_by_exactly_one_network_policy(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    pods = {f"{d}/{c}": flink_pod_labels(docs, c, d) for d in DEPLOYMENTS for c in ("jobmanager", "taskmanager")}
    pods["training"] = cron_pod_labels(docs)
    for pod, labels in pods.items():
        selected_by = [name for name, spec in policies.items() if selects(spec["podSelector"], labels)]
        assert selected_by == [pod.split("/")[0] if "/" in pod else "pricing-training"], pod
    for name, spec in policies.items():
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}, name
        for rule in spec["ingress"] + spec["egress"]:
            peers = rule.get("from", rule.get("to"))
            assert peers, f"{name}: a rule without peers lets everybody through: {rule}"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_ingress_is_the_cluster_itself_the_operator_and_the_scraper(rendered: dict[str, list[dict]], overlay: str,
                                                                    deployment: str) -> None:
    docs = rendered[overlay]
    spec = one(docs, "NetworkPolicy", deployment)["spec"]
    flink = one(docs, "FlinkDeployment", deployment)["spec"]
    metrics_port = int(flink["flinkConfiguration"]["metrics.reporter.prom.port"])
    open_to = {}
    for rule in spec["ingress"]:
        for peer in rule["from"]:
            if "namespaceSelector" not in peer:  # the policy's own namespace: only this Flink cluster's pods
                assert selects(peer["podSelector"], flink_pod_labels(docs, "taskmanager", deployment))
                assert peer["podSelector"] == spec["podSelector"]
                open_to["self"] = ports(rule)
            else:
                namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                assert peer.get("podSelector", {}).get("matchLabels"), f"every pod of {namespace}?"
                assert rule.get("ports"), f"{namespace}: any port?"
                open_to[namespace] = ports(rule)
    assert open_to.pop("self") == set()  # any port: the data exchange between TaskManagers picks one at random
    assert open_to == {"flink-operator": {("TCP", FLINK_REST_PORT)}, "monitoring": {("TCP", metrics_port)}}
    # the PodMonitor scrapes that very port by its name
    [container] = flink["podTemplate"]["spec"]["containers"]
    [endpoint] = one(docs, "PodMonitor", deployment)["spec"]["podMetricsEndpoints"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[endpoint["port"]] == metrics_port


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_egress_reaches_kafka_dns_storage_and_the_api_server(rendered: dict[str, list[dict]], overlay: str,
                                                             deployment: str) -> None:
    docs = rendered[overlay]
    spec = one(docs, "NetworkPolicy", deployment)["spec"]
    cluster = kafka_cluster(job_toml(docs))
    by_namespace, cidr_ports = {}, set()
    for rule in spec["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                cidr_ports |= ports(rule)
            elif "namespaceSelector" in peer:
                namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                by_namespace[namespace] = (peer.get("podSelector", {}).get("matchLabels", {}), ports(rule))
            else:
                assert peer["podSelector"] == spec["podSelector"] and not rule.get("ports")
    # Kafka: the brokers of the cluster in the bootstrap address, on its port
    kafka_pods, kafka_ports = by_namespace.pop(cluster["namespace"])
    assert kafka_pods["strimzi.io/cluster"] == cluster["cluster"] and kafka_ports == {("TCP", int(cluster["port"]))}
    # DNS
    dns_pods, dns_ports = by_namespace.pop("kube-system")
    assert dns_pods == {"k8s-app": "kube-dns"} and dns_ports == {("UDP", 53), ("TCP", 53)}
    # HTTPS (object store, API server) and nothing else by address
    assert cidr_ports == {("TCP", 443), ("TCP", 6443)}
    conf = one(docs, "FlinkDeployment", deployment)["spec"]["flinkConfiguration"]
    if "s3.endpoint" in conf:  # an in-cluster object store: its namespace and port
        endpoint = urlsplit(conf["s3.endpoint"])
        service, namespace = endpoint.hostname.split(".")[:2]
        store_pods, store_ports = by_namespace.pop(namespace)
        assert store_ports == {("TCP", endpoint.port)}, service
    assert not by_namespace, f"egress to more namespaces than needed: {sorted(by_namespace)}"
    # what goes to the object store is s3:// (HTTPS, or the in-cluster store above)
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "high-availability.storageDir"):
        assert urlsplit(conf[key]).scheme == "s3", key


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_disruption_budgets_protect_the_jobmanager_and_the_tasks_minimum(rendered: dict[str, list[dict]],
                                                                       overlay: str, deployment: str) -> None:
    docs = rendered[overlay]
    spec = one(docs, "FlinkDeployment", deployment)["spec"]
    conf = spec["flinkConfiguration"]
    budgets = {}
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        components = [c for c in ("jobmanager", "taskmanager") if selects(pdb["spec"]["selector"],
                                                                         flink_pod_labels(docs, c, deployment))]
        others = [(d, c) for d in DEPLOYMENTS if d != deployment for c in ("jobmanager", "taskmanager")
                  if selects(pdb["spec"]["selector"], flink_pod_labels(docs, c, d))]
        assert not (components and others), f"{pdb['metadata']['name']} selects two deployments' pods"
        if not components:
            continue
        [component] = components
        assert pdb["spec"]["selector"]["matchLabels"]["component"] == component  # not both roles at once
        # TaskManager pods' controller is the JobManager's Deployment (1 replica): maxUnavailable and percentages
        # would be computed against it. An integer minAvailable is counted on the pods.
        assert "maxUnavailable" not in pdb["spec"] and isinstance(pdb["spec"]["minAvailable"], int)
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # a broken pod never blocks a drain
        budgets[component] = pdb["spec"]["minAvailable"]
    assert budgets.keys() == {"jobmanager", "taskmanager"}
    assert budgets["jobmanager"] == spec["jobManager"]["replicas"] == 1
    slots = int(conf["taskmanager.numberOfTaskSlots"])
    # the least parallelism it runs at: the autoscaler's floor, or the fixed parallelism without the autoscaler
    least = int(conf["job.autoscaler.vertex.min-parallelism"]) if conf.get("job.autoscaler.enabled") == "true" \
        else spec["job"]["parallelism"]
    assert budgets["taskmanager"] == math.ceil(least / slots)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_training_pods_reach_dns_and_the_object_store_only(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    spec = one(docs, "NetworkPolicy", "pricing-training")["spec"]
    assert selects(spec["podSelector"], cron_pod_labels(docs))
    assert spec["ingress"] == [], "nothing connects to a training run"
    [container] = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    endpoint = {e["name"]: e.get("value") for e in container["env"]}.get("AWS_ENDPOINT_URL")
    by_namespace, cidr_ports = {}, set()
    for rule in spec["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                cidr_ports |= ports(rule)
            else:
                namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                by_namespace[namespace] = (peer.get("podSelector", {}).get("matchLabels", {}), ports(rule))
    dns_pods, dns_ports = by_namespace.pop("kube-system")
    assert dns_pods == {"k8s-app": "kube-dns"} and dns_ports == {("UDP", 53), ("TCP", 53)}
    assert cidr_ports == {("TCP", 443)}, "HTTPS to the object store; no Kubernetes API"
    if endpoint:  # an in-cluster object store: its namespace and port
        url = urlsplit(endpoint)
        assert by_namespace.pop(url.hostname.split(".")[1])[1] == {("TCP", url.port)}
    # no Kafka, no Flink pods: learning reads the archive
    assert not by_namespace, f"egress to more namespaces than needed: {sorted(by_namespace)}"
    assert urlsplit(job_toml(docs)["archive"]["path"]).scheme == "s3"
