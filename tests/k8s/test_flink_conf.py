"""The manifests agree with the jobs' own configuration: the Flink settings each FlinkDeployment gives its
cluster are the ones ``jobs.pricing_job._flink_conf`` derives from the ConfigMap's pricing.toml (for the archive,
from ``jobs.archive.archive_settings`` of it), the topics are the ones the job reads, the pods' environment
loads as valid settings, and the training CronJob learns from the archive the archive deployment writes."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest

from jobs.archive import archive_settings, archived_topics
from jobs.pricing_job import _flink_conf
from pricing.checkpoints import checkpoint_root
from pricing.config import ModelSettings, Settings, load_settings
from tests.k8s.conftest import ARCHIVE, JOB, OVERLAYS, ROOT, one

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


def pod_settings(docs: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = JOB) -> Settings:
    """Settings as a deployment's pods load them: the mounted ConfigMap plus the container's environment."""
    deployment = one(docs, "FlinkDeployment", name)
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
    if "device" not in ModelSettings.model_fields and name == JOB:  # until the scoring work adds [models] device
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
    deployment = one(docs, "FlinkDeployment", JOB)["spec"]
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
    conf = one(docs, "FlinkDeployment", JOB)["spec"]["flinkConfiguration"]
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
@pytest.mark.parametrize("name", [JOB, ARCHIVE])
def test_the_pod_monitor_scrapes_the_reporter_port(rendered: dict[str, list[dict]], overlay: str, name: str) -> None:
    docs = rendered[overlay]
    deployment = one(docs, "FlinkDeployment", name)
    [container] = deployment["spec"]["podTemplate"]["spec"]["containers"]
    [endpoint] = one(docs, "PodMonitor", name)["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports[endpoint["port"]]) == deployment["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"]
    selector = one(docs, "PodMonitor", name)["spec"]["selector"]["matchLabels"]
    assert selector["app"] == deployment["metadata"]["name"]  # the operator's pod label


def test_gpu_task_managers_ask_for_what_flink_is_told(rendered: dict[str, list[dict]]) -> None:
    spec = one(rendered["gpu"], "FlinkDeployment", JOB)["spec"]
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
    cpu = one(rendered["cpu"], "FlinkDeployment", JOB)["spec"]
    assert "external-resources" not in cpu["flinkConfiguration"] and "nvidia" not in str(cpu)
    # the archive's TaskManagers never need a GPU, nor its image CUDA
    for overlay in OVERLAYS:
        archive = one(rendered[overlay], "FlinkDeployment", ARCHIVE)["spec"]
        assert "external-resources" not in archive["flinkConfiguration"] and "nvidia" not in str(archive), overlay
        assert not archive["image"].endswith("-gpu:0.1.0"), overlay
    assert int(conf["taskmanager.numberOfTaskSlots"]) >= 1


# What the archive derives too: its FlinkDeployment must set each (it has no Python UDFs, so no Python bundles).
ARCHIVE_MUST_AGREE = {
    "pipeline.name", "parallelism.default", "execution.checkpointing.interval", "execution.checkpointing.mode",
    "execution.checkpointing.dir", "execution.checkpointing.externalized-checkpoint-retention", "state.backend.type",
    "execution.checkpointing.incremental",
    "restart-strategy.type", "restart-strategy.fixed-delay.attempts", "restart-strategy.fixed-delay.delay",
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_archives_flink_configuration_is_its_own(rendered: dict[str, list[dict]], overlay: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    settings = pod_settings(docs, tmp_path, monkeypatch, ARCHIVE)
    archive = archive_settings(settings)  # what jobs/archive.py runs with
    job_conf = _flink_conf(archive, jobmanager=None)
    deployment = one(docs, "FlinkDeployment", ARCHIVE)["spec"]
    conf = deployment["flinkConfiguration"]
    cluster_conf = {**conf, "parallelism.default": str(deployment["job"]["parallelism"])}
    missing = sorted(ARCHIVE_MUST_AGREE - cluster_conf.keys())
    assert not missing, f"the archive's FlinkDeployment does not set {missing}"
    compared = sorted((cluster_conf.keys() & job_conf.keys()) - NOT_COMPARED.keys())
    assert ARCHIVE_MUST_AGREE <= set(compared)
    differ = {k: (cluster_conf[k], job_conf[k]) for k in compared if cluster_conf[k] != job_conf[k]}
    assert not differ, f"archive FlinkDeployment vs the archive's own conf (manifest, job): {differ}"
    # files become visible at each checkpoint: [archive] checkpoint_interval_ms, exactly once
    assert conf["execution.checkpointing.interval"] == f"{settings.archive.checkpoint_interval_ms} ms"
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert conf["pipeline.name"] == f"{settings.job.name}-archive"
    # its own checkpoints and savepoints (under its consumer group), never the pricing job's
    job = one(docs, "FlinkDeployment", JOB)["spec"]["flinkConfiguration"]
    assert conf["execution.checkpointing.dir"] == checkpoint_root(archive) != job["execution.checkpointing.dir"]
    assert conf["execution.checkpointing.dir"].endswith("/" + settings.archive.consumer_group)
    assert settings.archive.consumer_group != settings.job.consumer_group
    assert conf["execution.checkpointing.savepoint-dir"] != job["execution.checkpointing.savepoint-dir"]
    assert conf["high-availability.type"] == "kubernetes"
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "high-availability.storageDir"):
        assert urlsplit(conf[key]).scheme == "s3", key
    # it writes to object storage through the one S3 plugin with a recoverable writer (Hadoop's), at the
    # same store as the pricing job's checkpoints (the cpu overlay's MinIO)
    assert urlsplit(settings.archive.root(settings.state_dir)).scheme == "s3"
    [container] = deployment["podTemplate"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    flink_version = deployment["job"]["jarURI"].rsplit("flink-python-", 1)[1].removesuffix(".jar")
    assert env["ENABLE_BUILT_IN_PLUGINS"] == f"flink-s3-fs-hadoop-{flink_version}.jar"
    assert "presto" not in str(deployment)
    for key in ("s3.endpoint", "s3.path.style.access"):
        assert conf.get(key) == job.get(key), key
    # the archive's entry point, with savepoint upgrades like the pricing job
    args = deployment["job"]["args"]
    assert args[args.index("-py") + 1] == "/opt/flink/usrlib/jobs/archive.py"
    assert deployment["job"]["upgradeMode"] == "savepoint" and deployment["job"]["state"] == "running"
    # every topic, the dead letters included
    assert {name for _, name, _ in archived_topics(settings)} == {t.name for t in settings.kafka.topics.all()}
    # the alerts select it by its job name
    assert f'job_name="{archive.job.name}"' in str(one(docs, "PrometheusRule")["spec"])


def training_pod(docs: list[dict]) -> dict:
    return one(docs, "CronJob", "pricing-training")["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def mounted_config_map(docs: list[dict], pod: dict, container: dict, path: str) -> dict:
    """The ConfigMap a container mounts at ``path``."""
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return one(docs, "ConfigMap", volume["configMap"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_training_cronjob_learns_from_the_archive_the_archive_writes(rendered: dict[str, list[dict]],
                                                                         overlay: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """train.sh runs, as the CronJob starts it, with a stand-in `pricing` that records its arguments: it runs
    `pricing learn` on the URI the archive's pods write to."""
    docs = rendered[overlay]
    written = archive_settings(pod_settings(docs, tmp_path, monkeypatch, ARCHIVE))
    pod = training_pod(docs)
    [container] = pod["containers"]
    config = mounted_config_map(docs, pod, container, "/etc/pricing")
    archive_pod = one(docs, "FlinkDeployment", ARCHIVE)["spec"]["podTemplate"]["spec"]
    [archive_config] = [v["configMap"]["name"] for v in archive_pod["volumes"] if v["name"] == "pricing-config"]
    assert config["metadata"]["name"] == archive_config, "the CronJob and the archive read one pricing.toml"
    shell, script_path = container["command"]
    script = mounted_config_map(docs, pod, container, str(PurePosixPath(script_path).parent))
    work = tmp_path / "cron"
    (work / "bin").mkdir(parents=True)
    (work / "train.sh").write_text(script["data"][PurePosixPath(script_path).name])
    (work / "pricing.toml").write_text(config["data"]["pricing.toml"])
    fake = work / "bin" / "pricing"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{work / "args"}"\n')
    fake.chmod(0o755)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env.pop("PRICING_CONFIG") == "/etc/pricing/pricing.toml"
    env |= {"PRICING_CONFIG": str(work / "pricing.toml"), "PYTHONPATH": str(ROOT), "HOME": str(work),
            "PATH": os.pathsep.join([str(work / "bin"), str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
    done = subprocess.run([shell, str(work / "train.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    args = (work / "args").read_text().splitlines()
    uri = written.archive.root(written.state_dir)
    endpoint = env.get("AWS_ENDPOINT_URL")  # in-cluster object store: pyarrow wants it in the URI's query
    query = "" if endpoint is None else (f"?endpoint_override={endpoint.split('://', 1)[1]}"
                                         f"&scheme={endpoint.split('://', 1)[0]}")  # fmt: skip
    assert args == ["learn", "--archive", uri + query, "--last", env["LEARN_WINDOW"]]
    if endpoint is not None:
        import pyarrow.fs

        store, path = pyarrow.fs.FileSystem.from_uri(uri + query)  # what archive_layout opens: S3 at the endpoint
        assert type(store).__name__ == "S3FileSystem" and not path.endswith(query)
    assert uri == tomllib.loads(config["data"]["pricing.toml"])["archive"]["path"]
    # a local archive is a folder on the archive's pods, which the CronJob cannot see: refused
    local = subprocess.run([shell, str(work / "train.sh")], env=env | {"ARCHIVE_URI": "/var/lib/pricing/archive"},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert local.returncode == 2 and "object storage" in local.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_training_cronjob_reaches_the_archive_and_the_registry(rendered: dict[str, list[dict]], overlay: str,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered[overlay]
    cron = one(docs, "CronJob", "pricing-training")["spec"]
    minute, hour, *rest = cron["schedule"].split()
    assert minute.isdigit() and hour == "*/6" and rest == ["*", "*", "*"], "every 6 hours"
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 6 * 3600
    pod = training_pod(docs)
    [container] = pod["containers"]
    settings = pod_settings(docs, tmp_path, monkeypatch, JOB)
    # the registry, writable, where [models] registry_dir says; the only volume claim left
    [registry] = [m for m in container["volumeMounts"] if m["mountPath"] == str(settings.models.registry_dir)]
    assert not registry.get("readOnly")
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"pricing-model-registry"}
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"} == claims
    # the object store: the archive pods' credentials (same Secret and keys) and, in-cluster, the same endpoint
    archive = one(docs, "FlinkDeployment", ARCHIVE)["spec"]
    [archive_container] = archive["podTemplate"]["spec"]["containers"]

    def refs(c: dict) -> dict[str, dict]:
        return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if e["name"].startswith("AWS_")
                and "valueFrom" in e}  # fmt: skip

    assert refs(container) == refs(archive_container) and refs(container).keys() == {"AWS_ACCESS_KEY_ID",
                                                                                      "AWS_SECRET_ACCESS_KEY"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("AWS_ENDPOINT_URL") == archive["flinkConfiguration"].get("s3.endpoint")
