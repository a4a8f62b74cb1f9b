"""``pricing cluster`` without starting one: its settings, its Flink configuration, its refusals,
and what a job submitted to a cluster ships (the integration test is tests/jobs/test_cluster_job.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from pricing import cli
from pricing.cluster import ClusterError, LocalCluster
from pricing.config import ClusterSettings, load_settings


def test_cluster_settings_are_validated() -> None:
    s = load_settings().cluster
    assert (s.rest_port, s.taskmanagers, s.slots_per_taskmanager, s.taskmanager_memory) == (8081, 2, 2, "1024m")
    assert load_settings(cluster={"rest_port": 9000}).cluster.rest_address == "127.0.0.1:9000"
    for bad in ({"rest_port": 6123}, {"taskmanager_memory": "1 GB"}, {"taskmanagers": 0}, {"slot": 2}):
        with pytest.raises(ValidationError):
            ClusterSettings(**bad)


def test_the_flink_configuration_keeps_logs_pids_and_python_in_the_state_dir(tmp_path: Path) -> None:
    settings = ClusterSettings(rest_port=18081, rpc_port=16123, slots_per_taskmanager=3, taskmanager_memory="1200m")
    conf = LocalCluster(state_dir=tmp_path, settings=settings, python="/venv/bin/python").flink_config()
    home = tmp_path.resolve() / "cluster"
    assert (conf["env.log.dir"], conf["env.pid.dir"], conf["io.tmp.dirs"]) == (
        str(home / "log"), str(home / "pid"), str(home / "tmp"))
    assert conf["python.executable"] == "/venv/bin/python"
    assert (conf["rest.port"], conf["jobmanager.rpc.port"], conf["taskmanager.numberOfTaskSlots"]) == (18081, 16123, 3)
    assert conf["taskmanager.memory.process.size"] == "1200m"
    assert conf["restart-strategy.type"] == "fixed-delay"
    assert conf["taskmanager.load-balance.mode"] == "SLOTS"
    # The distribution's own settings stay (the JVM flags Java 17 needs), flattened.
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in conf["env.java.opts.all"]
    assert not any(isinstance(v, dict) for v in conf.values())


def test_nothing_running_is_reported_and_stopping_it_is_a_no_op(tmp_path: Path) -> None:
    cluster = LocalCluster(state_dir=tmp_path)
    status = cluster.status()
    assert not status.running and status.describe() == "not running"
    assert cluster.stop() is False


def test_a_busy_rest_port_is_refused_with_the_setting_to_change(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = LocalCluster(state_dir=tmp_path, settings=ClusterSettings(rest_port=port, rpc_port=port + 1 if port < 65535 else 1))
        with pytest.raises(ClusterError, match=f"REST port {port} .* already in use.*rest_port"):
            cluster.start(timeout_s=5)
    assert not (tmp_path / "cluster" / "processes.json").exists()


def test_cluster_status_exits_3_when_nothing_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli._parser().parse_args(["cluster", "status"])
    assert args.func(args, load_settings(state_dir=tmp_path)) == 3
    assert capsys.readouterr().out.strip() == "not running"


def test_a_job_submitted_to_a_cluster_ships_its_own_jar_and_flink_python_even_without_ship_jars(tmp_path: Path) -> None:
    from jobs.pricing_job import _flink_conf

    settings = load_settings(state_dir=tmp_path, job={"ship_jars": False, "python_executable": "python3"})
    remote = _flink_conf(settings, jobmanager="flink-jm:8081")
    names = [uri.rsplit("/", 1)[-1] for uri in remote["pipeline.jars"].split(";")]
    assert names[0] == "pricing-features.jar" and names[1].startswith("flink-python-") and len(names) == 2
    assert remote["python.executable"] == "python3"  # a path on the TaskManagers, not this interpreter
    # The local MiniCluster is unchanged: ship_jars = false ships nothing.
    assert "pipeline.jars" not in _flink_conf(settings, jobmanager=None)
