"""The offline validators accept the rendered manifests and reject a field broken on purpose in each kind."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import ROOT, check, one

pytestmark = pytest.mark.integration  # needs the fetched tools (kubectl, validators, CRDs)


def _write(tmp_path: Path, docs: list[dict], name: str = "objects.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_rendered_overlays_are_valid(tools: Path, rendered: dict[str, list[dict]], overlay: str,
                                         tmp_path: Path) -> None:
    result = check(tools, "--files", str(_write(tmp_path, rendered[overlay])))
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {d["kind"] for d in rendered[overlay]}
    assert {"FlinkDeployment", "KafkaTopic", "KafkaUser", "PodMonitor", "PrometheusRule", "CronJob", "ConfigMap",
            "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy",
            "PodDisruptionBudget"} <= kinds
    assert f"{len(rendered[overlay])} of {len(rendered[overlay])} valid" in result.stdout


def _set(path: str, value: object) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


BREAKAGES = [
    # (kind, name, mutation, what the validator must say)
    ("FlinkDeployment", "pricing-engine", _set("spec.flinkVersion", "v2_9"), "spec/flinkVersion"),
    ("FlinkDeployment", "pricing-engine", _set("spec.job.upgradeMode", "savepoints"), "spec/job/upgradeMode"),
    ("FlinkDeployment", "pricing-engine", _set("spec.job.entrypoint", "x"), "'entrypoint' was unexpected"),
    ("FlinkDeployment", "pricing-engine",
     lambda d: d["spec"]["flinkConfiguration"].update({"taskmanager.numberOfTaskSlots": 2}), "is not of type 'string'"),
    ("FlinkDeployment", "pricing-engine", _set("spec.podTemplate.spec.containers.0.ports.0.containerPort", "metrics"),
     "containerPort"),
    ("FlinkDeployment", "pricing-archive", _set("spec.job.upgradeMode", "savepoints"), "spec/job/upgradeMode"),
    ("FlinkDeployment", "pricing-archive",
     lambda d: d["spec"]["flinkConfiguration"].update({"execution.checkpointing.num-retained": 3}),
     "is not of type 'string'"),
    ("KafkaTopic", "price-requests", _set("spec.partitions", 0), "spec/partitions"),
    ("KafkaTopic", "price-requests", _set("spec.replica", 3), "'replica' was unexpected"),
    ("KafkaUser", "pricing-job", _set("spec.authorization.acls.0.operations", ["Reed"]),
     "spec/authorization/acls/0/operations/0"),
    ("KafkaUser", "pricing-job", _set("spec.authentication.type", "scram-sha-256"), "spec/authentication/type"),
    ("KafkaUser", "pricing-job", _set("spec.authorization.acls.0.operation", "Read"), "'operation' was unexpected"),
    ("KafkaUser", "pricing-archive", _set("spec.authorization.acls.8.resource.patternType", "prefixed"),
     "spec/authorization/acls/8/resource/patternType"),
    ("NetworkPolicy", "pricing-engine", _set("spec.egress.1.ports.0.protocol", 6), "spec/egress/1/ports/0/protocol"),
    ("NetworkPolicy", "pricing-engine", _set("spec.ingres", []), "'ingres' was unexpected"),
    ("NetworkPolicy", "pricing-training", _set("spec.egress.0.ports.0.protocol", 17), "spec/egress/0/ports/0/protocol"),
    ("PodDisruptionBudget", "pricing-engine-taskmanager", _set("spec.minAvailabe", 1), "'minAvailabe' was unexpected"),
    ("PodDisruptionBudget", "pricing-engine-jobmanager", _set("spec.selector.matchLabels", "app"),
     "spec/selector/matchLabels"),
    ("PodDisruptionBudget", "pricing-archive-taskmanager", _set("spec.minAvailabe", 1), "'minAvailabe' was unexpected"),
    ("PodMonitor", "pricing-engine", _set("spec.podMetricsEndpoints.0.port", 9249), "port must be string"),
    ("PodMonitor", "pricing-engine", _set("spec.podMetricsEndpoints.0.interval", "15 seconds"),
     "interval must match pattern"),
    ("PodMonitor", "pricing-archive", _set("spec.podMetricsEndpoints.0.interval", "30 seconds"),
     "interval must match pattern"),
    ("PrometheusRule", None, _set("spec.groups.0.rules.0.for", "5 minutes"), "for must match pattern"),
    ("PrometheusRule", None, _set("spec.groups.0.rules.1.expr", "increase(flink_jobmanager_job_numRestarts[15m] > 2"),
     "PromQL does not parse"),
    ("CronJob", None, _set("spec.schedule", 230), "spec/schedule"),
    ("CronJob", None, _set("spec.jobTemplate.spec.template.spec.containers.0.volumeMount", []),
     "'volumeMount' was unexpected"),
    ("PersistentVolumeClaim", "pricing-model-registry", _set("spec.accessModes", "ReadWriteMany"), "spec/accessModes"),
    ("RoleBinding", None, _set("roleRef.kind", 7), "roleRef/kind"),
]


@pytest.mark.parametrize("kind,name,mutate,expected", BREAKAGES,
                         ids=[f"{k}-{e[:30]}" for k, _, _, e in BREAKAGES])
def test_a_broken_field_fails_validation(tools: Path, rendered: dict[str, list[dict]], tmp_path: Path, kind: str,
                                         name: str | None, mutate: Callable[[dict], None], expected: str) -> None:
    docs = copy.deepcopy(rendered["gpu"])
    mutate(one(docs, kind, name))
    result = check(tools, "--files", str(_write(tmp_path, docs)))
    assert result.returncode == 1, result.stdout
    failures = [line for line in result.stdout.splitlines() if "FAIL" in line]
    assert len(failures) == 1 and f"{kind}/" in failures[0] and expected in failures[0], result.stdout


def test_a_broken_grafana_dashboard_fails(tools: Path, rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    docs = copy.deepcopy(rendered["cpu"])
    dashboard = one(docs, "ConfigMap", "pricing-grafana-dashboard")
    text = dashboard["data"]["grafana-dashboard.json"]
    dashboard["data"]["grafana-dashboard.json"] = text.replace("[$__rate_interval]))", "[$__rate_interval])", 1)
    result = check(tools, "--files", str(_write(tmp_path, docs)))
    assert result.returncode == 1 and "PromQL does not parse" in result.stdout, result.stdout


def test_an_unknown_kind_is_not_waved_through(tools: Path, tmp_path: Path) -> None:
    thing = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    result = check(tools, "--files", str(_write(tmp_path, [thing])))
    assert result.returncode == 1 and "Widget" in result.stdout, result.stdout


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.training"])
def test_the_dockerfiles_pass_hadolint_and_a_root_user_fails(tools: Path, tmp_path: Path, dockerfile: str) -> None:
    source = ROOT / "deploy" / "docker" / dockerfile
    ok = check(tools, "--dockerfiles", str(source))
    assert ok.returncode == 0, ok.stdout
    text = source.read_text()
    assert "USER 9999:9999" in text
    broken = tmp_path / dockerfile
    broken.write_text(text.replace("USER 9999:9999", "USER root"))
    result = check(tools, "--dockerfiles", str(broken))
    assert result.returncode == 1 and "DL3002" in result.stdout, result.stdout
