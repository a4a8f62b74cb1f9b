"""The local KRaft broker and topic creation, against the real broker."""

import socket
import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from pricing.broker import BrokerError, LocalBroker, free_port
from pricing.config import Settings
from pricing.topics import create_topics

pytestmark = pytest.mark.integration


def test_topics_are_created_idempotently_and_listed_by_a_plain_admin_client(kafka_settings: Settings) -> None:
    first = create_topics(kafka_settings.kafka)
    second = create_topics(kafka_settings.kafka)
    names = [t.name for t in kafka_settings.kafka.topics.all()]
    assert first == {n: "created" for n in names}
    assert second == {n: "exists" for n in names}
    listed = AdminClient({"bootstrap.servers": kafka_settings.kafka.bootstrap_servers}).list_topics(timeout=10).topics
    for topic in kafka_settings.kafka.topics.all():
        assert len(listed[topic.name].partitions) == topic.partitions
    admin = AdminClient({"bootstrap.servers": kafka_settings.kafka.bootstrap_servers})
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in kafka_settings.kafka.topics.all()]
    for resource, future in admin.describe_configs(resources).items():
        policy = future.result(timeout=10)["cleanup.policy"].value
        expected = next(t.cleanup_policy for t in kafka_settings.kafka.topics.all() if t.name == resource.name)
        assert policy == expected, resource.name


def test_cli_start_status_stop_leaves_no_process(broker_state_dir, tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "jars").symlink_to(broker_state_dir / "jars")
    port = free_port()
    env_args = [sys.executable, "-m", "pricing.cli"]
    cfg = tmp_path / "pricing.toml"
    cfg.write_text(f'state_dir = "{state}"\n')

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*env_args, "--config", str(cfg), *args], capture_output=True, text=True, timeout=120)

    started = cli("kafka", "start", "--port", str(port))
    assert started.returncode == 0, started.stderr
    status = cli("kafka", "status")
    assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout
    pid = int(status.stdout.split("pid ")[1].rstrip(")\n"))
    topics = cli("topics", "create")  # finds the local broker without being told its address
    assert topics.returncode == 0 and "price-requests: created" in topics.stdout, topics.stderr
    stopped = cli("kafka", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert cli("kafka", "status").returncode == 3
    assert not _running(pid), f"broker process {pid} is still running"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for init, and runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_taken_port_is_reported_clearly(broker_state_dir) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        broker = LocalBroker(state_dir=broker_state_dir, port=taken, name="kafka-port-test")
        with pytest.raises(BrokerError, match=f"port {taken}.*--port"):
            broker.start()


def test_owned_broker_dies_with_its_parent(broker_state_dir, tmp_path) -> None:
    """A killed test run or demo must not leave a broker behind."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "jars").symlink_to(broker_state_dir / "jars")
    script = (
        "import sys, time; from pathlib import Path; from pricing.broker import LocalBroker, free_port;"
        f"b = LocalBroker(state_dir=Path({str(state)!r}), port=free_port(), die_with_parent=True);"
        "print(b.start().pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert _running(pid)
    finally:
        parent.kill()
        parent.wait()
    import time

    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(pid), "the broker outlived the process that owned it"
