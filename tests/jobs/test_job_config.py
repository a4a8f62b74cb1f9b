"""How settings become Flink configuration and connector options (no cluster needed)."""

import subprocess
import sys

import pytest

from jobs import pricing_job
from jobs.pricing_job import _flink_conf, _sink_ddl, _source_ddl
from pricing.checkpoints import Start
from pricing.config import Settings, load_settings
from pricing.jars import PROJECT_ROOT
from tests.helpers import command_env


def test_exactly_once_uses_transactions_and_read_committed() -> None:
    s = load_settings(job={"ship_jars": False, "transactional_id_prefix": "eu-1", "transaction_timeout_ms": 120_000})
    conf = _flink_conf(s, jobmanager=None)
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert "pipeline.jars" not in conf
    sink = _sink_ddl(s, table="t", topic="priced-events", id_suffix="priced")
    assert "'sink.delivery-guarantee' = 'exactly-once'" in sink
    assert "'sink.transactional-id-prefix' = 'eu-1-priced'" in sink
    assert "'properties.transaction.timeout.ms' = '120000'" in sink
    assert "'properties.isolation.level' = 'read_committed'" in _source_ddl(s, table="t", topic="price-requests")


def test_at_least_once_has_no_transactions_and_remote_target() -> None:
    s = load_settings(job={"ship_jars": False, "delivery_guarantee": "at-least-once"})
    conf = _flink_conf(s, jobmanager="flink-jm:8081")
    assert conf["execution.checkpointing.mode"] == "AT_LEAST_ONCE"
    assert (conf["execution.target"], conf["rest.address"], conf["rest.port"]) == ("remote", "flink-jm", "8081")
    sink = _sink_ddl(s, table="t", topic="priced-events", id_suffix="priced")
    assert "at-least-once" in sink and "transactional-id-prefix" not in sink


def test_bounded_runs_stop_at_the_latest_offsets() -> None:
    bounded = _source_ddl(load_settings(job={"bounded": True}), table="t", topic="x")
    unbounded = _source_ddl(load_settings(), table="t", topic="x")
    assert "'scan.bounded.mode' = 'latest-offset'" in bounded
    assert "scan.bounded.mode" not in unbounded


def test_checkpoints_go_to_a_directory_not_jobmanager_memory(tmp_path) -> None:
    """JobManager memory caps checkpoints at 5 MB, which the feature windows outgrow."""
    conf = _flink_conf(load_settings(state_dir=tmp_path, job={"ship_jars": False, "consumer_group": "g1"}), jobmanager=None)
    assert conf["execution.checkpointing.dir"] == (tmp_path / "checkpoints").as_uri() + "/g1"
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    explicit = load_settings(job={"ship_jars": False, "checkpoint_dir": "s3://b/ckpt/"})
    assert _flink_conf(explicit, jobmanager=None)["execution.checkpointing.dir"] == "s3://b/ckpt/pricing-engine"


def test_prometheus_reporter_only_when_a_metrics_port_is_set() -> None:
    assert not any(k.startswith("metrics.reporter") for k in _flink_conf(load_settings(job={"ship_jars": False}),
                                                                         jobmanager=None))
    with_port = load_settings(job={"ship_jars": False, "metrics_port": "9249-9259"})
    local = _flink_conf(with_port, jobmanager=None)
    assert local["metrics.reporter.prom.port"] == "9249-9259"
    assert local["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    # The local MiniCluster looks for reporters on the class path; a cluster has the plugin.
    assert "flink-metrics-prometheus-" in local["pipeline.jars"]
    assert "flink-metrics-prometheus-" not in _flink_conf(with_port, jobmanager="flink-jm:8081")["pipeline.jars"]


def test_restore_from_a_savepoint_only_when_asked() -> None:
    assert "execution.state-recovery.path" not in _flink_conf(load_settings(job={"ship_jars": False}), jobmanager=None)
    conf = _flink_conf(load_settings(job={"ship_jars": False, "restore_from": "s3://b/sp-1"}), jobmanager=None)
    assert conf["execution.state-recovery.path"] == "s3://b/sp-1"
    assert conf["execution.state-recovery.claim-mode"] == "NO_CLAIM"  # a savepoint stays the user's


def test_a_resumed_checkpoint_is_claimed() -> None:
    start = Start("file:///c/g/j/chk-7", claim=True, note="")
    conf = _flink_conf(load_settings(job={"ship_jars": False}), jobmanager=None, start=start)
    assert (conf["execution.state-recovery.path"], conf["execution.state-recovery.claim-mode"]) == (
        "file:///c/g/j/chk-7", "CLAIM")


def test_intervals_are_exact_beyond_99_seconds() -> None:
    from jobs.pricing_job import _interval

    assert _interval(2_000) == "INTERVAL '0 00:00:02.000' DAY TO SECOND(3)"
    assert _interval(600_000) == "INTERVAL '0 00:10:00.000' DAY TO SECOND(3)"
    assert _interval(90_061_001) == "INTERVAL '1 01:01:01.001' DAY TO SECOND(3)"
    ddl = _source_ddl(load_settings(job={"watermark_out_of_orderness_ms": 150_000}), table="t", topic="x")
    assert "- INTERVAL '0 00:02:30.000' DAY TO SECOND(3)" in ddl and "WATERMARK FOR `ts` AS" in ddl


@pytest.mark.integration
def test_a_job_whose_topics_are_missing_fails_at_once_with_one_line_naming_them(kafka_settings: Settings) -> None:
    from pricing.topics import MissingTopicsError

    with pytest.raises(MissingTopicsError, match=kafka_settings.kafka.topics.recommend_requests.name):
        pricing_job.run(kafka_settings, wait=False)  # no topic was created for this test


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_the_jaas_login_module_the_connector_is_given_is_a_class_in_the_connector_jar(mechanism: str) -> None:
    """The connector relocates the Kafka client: the plain ``org.apache.kafka`` login modules are not in it, and
    a job naming one cannot log in to a SASL broker ("No LoginModule found")."""
    import re
    import zipfile

    from pricing.jars import connector_jars

    s = load_settings(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism, "sasl_username": "u",
                             "sasl_password": "p"})  # fmt: skip
    props = s.job_kafka_client().java_properties()
    module = re.match(r"(\S+) required ", props["sasl.jaas.config"]).group(1)
    classes = {name for jar in connector_jars(s.state_dir) for name in zipfile.ZipFile(jar).namelist()}
    assert module.replace(".", "/") + ".class" in classes, module
    # the password is a reference the connector's Kafka client resolves with its (relocated) config provider
    assert props["config.providers.dir.class"].replace(".", "/") + ".class" in classes


@pytest.mark.integration
def test_a_rest_port_taken_between_its_choice_and_the_start_is_replaced(kafka_settings: Settings, monkeypatch) -> None:
    import socket

    from pricing.broker import free_port
    from pricing.topics import create_topics

    create_topics(kafka_settings.kafka)
    settings = kafka_settings.model_copy(update={"job": kafka_settings.job.model_copy(update={"bounded": True})})
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1], free_port()]
    monkeypatch.setattr(pricing_job, "free_port", lambda: ports.pop(0))
    try:
        pricing_job.run(settings, wait=True)  # bounded, empty topics: it ends at once
    finally:
        taken.close()
    assert ports == [], "the taken port was given up for the next one"


_WHERE_PYTHON_RUNS = """
import os, sys
from jobs import pricing_job
from pricing.config import load_settings
for workers in ("process", "loopback"):  # process first: a loopback server, once started, stays in the process
    settings = load_settings(state_dir=sys.argv[1], job={"python_workers": workers, "ship_jars": False})
    t_env = pricing_job.create_table_env(settings)
    address = t_env.get_config().get("python.loopback-server.address", "")
    print(workers, bool(address), "_python_worker_execution_mode" in os.environ)
"""


def test_local_python_workers_run_where_the_setting_says(tmp_path) -> None:
    """loopback: PyFlink serves the Python functions from the client process (it starts a loopback server and tells
    the MiniCluster its address); process: no such server, the MiniCluster starts worker processes. The mode PyFlink
    reads from the environment is left as it was. In a process of its own: a loopback server takes over Beam's
    ParDo handler in the process that starts it (``jobs.training_set``), which would break later Beam tests here."""
    env = {k: v for k, v in command_env().items() if k != "_python_worker_execution_mode"}
    done = subprocess.run([sys.executable, "-c", _WHERE_PYTHON_RUNS, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=PROJECT_ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("process ", "loopback "))]
    assert lines == ["process False False", "loopback True False"], done.stdout
