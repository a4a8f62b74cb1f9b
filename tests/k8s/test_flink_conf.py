"""The manifests agree with the job's own configuration: the Flink settings the FlinkDeployment gives the
cluster are the ones ``jobs.pricing_job._flink_conf`` derives from the ConfigMap's pricing.toml, the
topics are the ones the job reads, and the pod's environment loads as valid settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.pricing_job import _flink_conf
from pricing.config import ModelSettings, Settings, load_settings
from tests.k8s.conftest import OVERLAYS, one

pytestmark = pytest.mark.integration  # renders the overlays with the fetched kustomize

# Keys _flink_conf sets that are not the cluster's business, and why they are not compared.
NOT_COMPARED = {
    "python.executable": "the interpreter running this test; on the cluster the job's sys.executable is the image's "
                         "/opt/venv/bin/python, which the FlinkDeployment sets and the PythonDriver runs",
    "python.client.executable": "as python.executable",
    "pipeline.jars": "local runs ship jars; the image has the connector and pricing-features.jar in /opt/flink/lib",
    "rest.port": "the local MiniCluster's REST port",
    "rest.address": "submission from a workstation (--jobmanager)",
    "execution.target": "submission from a workstation (--jobmanager)",
}
# Cluster-side settings the job also derives: the FlinkDeployment must set each of them, so that the
# comparison below can never pass by comparing nothing.
MUST_AGREE = {
    "parallelism.default", "execution.checkpointing.interval", "execution.checkpointing.mode",
    "execution.checkpointing.dir", "execution.checkpointing.externalized-checkpoint-retention", "state.backend.type",
    "execution.checkpointing.incremental",
    "restart-strategy.type", "restart-strategy.fixed-delay.attempts", "restart-strategy.fixed-delay.delay",
    "python.fn-execution.bundle.size", "python.fn-execution.bundle.time", "python.fn-execution.arrow.batch.size",
    "execution.buffer-timeout.interval",
}
SECRET_PLACEHOLDER = "from-a-secret"


def pod_settings(docs: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the pricing job's pod loads them: the mounted ConfigMap plus the container's environment."""
    deployment = one(docs, "FlinkDeployment")
    pod = deployment["spec"]["podTemplate"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "flink-main-container"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "pricing-config"]
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    toml = tmp_path / "pricing.toml"
    toml.write_text(config_map["data"]["pricing.toml"])
    env = {e["name"]: e.get("value", SECRET_PLACEHOLDER) for e in container["env"]}
    for tm_container in deployment["spec"].get("taskManager", {}).get("podTemplate", {}).get("spec", {}).get("containers", []):
        env.update({e["name"]: e.get("value", SECRET_PLACEHOLDER) for e in tm_container.get("env", [])})
    assert env.pop("PRICING_CONFIG") == "/etc/pricing/pricing.toml"
    mount = [m for m in container["volumeMounts"] if m["name"] == "pricing-config"]
    assert mount and mount[0]["mountPath"] == "/etc/pricing"
    for name in list(os.environ):
        if name.startswith("PRICING_"):
            monkeypatch.delenv(name)
    if "device" not in ModelSettings.model_fields:  # until the scoring work adds [models] device
        assert env.pop("PRICING_MODELS__DEVICE") in {"auto", "cpu", "gpu"}
    for name, value in env.items():
        if name.startswith("PRICING_"):
            monkeypatch.setenv(name, value)
    return load_settings(toml)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_flink_configuration_is_the_jobs_own(rendered: dict[str, list[dict]], overlay: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    settings = pod_settings(docs, tmp_path, monkeypatch)
    assert not settings.job.ship_jars, "the image has the jars in lib/: ship_jars must be false"
    job_conf = _flink_conf(settings, jobmanager=None)
    deployment = one(docs, "FlinkDeployment")["spec"]
    cluster_conf = {**deployment["flinkConfiguration"], "parallelism.default": str(deployment["job"]["parallelism"])}
    missing = sorted(MUST_AGREE - cluster_conf.keys())
    assert not missing, f"the FlinkDeployment does not set {missing}"
    compared = sorted((cluster_conf.keys() & job_conf.keys()) - NOT_COMPARED.keys())
    assert MUST_AGREE <= set(compared)
    differ = {k: (cluster_conf[k], job_conf[k]) for k in compared if cluster_conf[k] != job_conf[k]}
    assert not differ, f"FlinkDeployment vs the job's own conf (manifest, job): {differ}"
    # The settings the job reads at run time, beyond Flink's.
    assert settings.models.registry_dir == Path("/mnt/models")
    # The Kafka principal is the job's KafkaUser; its password is a file in [secrets] dir, not a setting
    # (tests/k8s/test_kafka_access.py checks the files and that no Kafka secret is in the environment).
    assert settings.kafka.sasl_username in {d["metadata"]["name"] for d in docs if d["kind"] == "KafkaUser"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_and_parallelism_follow_the_partitions(rendered: dict[str, list[dict]], overlay: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    settings = pod_settings(docs, tmp_path, monkeypatch)
    topics = {d["spec"].get("topicName", d["metadata"]["name"]): d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    assert topics.keys() == {t.name for t in settings.kafka.topics.all()}
    for topic in settings.kafka.topics.all():
        spec = topics[topic.name]
        assert spec["partitions"] == topic.partitions, topic.name
        assert 1 <= int(spec["config"]["min.insync.replicas"]) <= max(1, spec["replicas"] - 1), topic.name
        if topic.cleanup_policy == "compact":  # a compacted topic keeps every key's last record for ever
            assert spec["config"]["cleanup.policy"] == "compact" and "retention.ms" not in spec["config"], topic.name
    conf = one(docs, "FlinkDeployment")["spec"]["flinkConfiguration"]
    most = max(t.partitions for t in settings.kafka.topics.all())
    assert int(conf["job.autoscaler.vertex.max-parallelism"]) == most
    assert int(conf["pipeline.max-parallelism"]) % most == 0
    assert int(conf["job.autoscaler.vertex.min-parallelism"]) <= settings.job.parallelism <= most
    assert conf["job.autoscaler.enabled"] == "true" and conf["jobmanager.scheduler"] == "adaptive"
    # exactly-once needs the transactions to outlive two checkpoint intervals (pricing.config checks it too)
    assert settings.job.transaction_timeout_ms >= 2 * settings.job.checkpoint_interval_ms
    # one deployment, one transactional id prefix and consumer group: overlays must not share state
    assert settings.job.consumer_group in conf["execution.checkpointing.dir"]
    # the alerts and the dashboard select the job by its name (pipeline.name, the job_name label)
    rules = str(one(docs, "PrometheusRule")["spec"])
    assert f'job_name="{settings.job.name}"' in rules


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_monitor_scrapes_the_reporter_port(rendered: dict[str, list[dict]], overlay: str) -> None:
    docs = rendered[overlay]
    deployment = one(docs, "FlinkDeployment")
    [container] = deployment["spec"]["podTemplate"]["spec"]["containers"]
    [endpoint] = one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports[endpoint["port"]]) == deployment["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"]
    selector = one(docs, "PodMonitor")["spec"]["selector"]["matchLabels"]
    assert selector["app"] == deployment["metadata"]["name"]  # the operator's pod label


def test_gpu_task_managers_ask_for_what_flink_is_told(rendered: dict[str, list[dict]]) -> None:
    spec = one(rendered["gpu"], "FlinkDeployment")["spec"]
    conf = spec["flinkConfiguration"]
    assert conf["external-resources"] == "gpu"
    assert conf["external-resource.gpu.driver-factory.class"] == "org.apache.flink.externalresource.gpu.GPUDriverFactory"
    assert conf["external-resource.gpu.kubernetes.config-key"] == "nvidia.com/gpu"
    pod = spec["taskManager"]["podTemplate"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == "flink-main-container"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == int(conf["external-resource.gpu.amount"])
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PRICING_MODELS__DEVICE"] == "gpu" and env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert spec["image"].endswith("-gpu:0.1.0")
    # the TaskManager's container must merge into the common one by name, not by position
    assert conf["kubernetes.operator.pod-template.merge-arrays-by-name"] == "true"
    # the CPU overlay has no GPU anywhere
    cpu = one(rendered["cpu"], "FlinkDeployment")["spec"]
    assert "external-resources" not in cpu["flinkConfiguration"] and "nvidia" not in str(cpu)
    assert int(conf["taskmanager.numberOfTaskSlots"]) >= 1
