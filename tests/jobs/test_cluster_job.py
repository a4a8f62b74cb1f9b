"""The job on a real multi-process Flink cluster: one JobManager and two TaskManagers (``pricing cluster``).

The job is submitted the way the README ("Running on a cluster") says, with ``pricing job run --jobmanager``
from a separate process, parallelism 2 and exactly-once, against the session's real
broker. Requests flow at about 50/s over both partitions of the request topic; mid-stream
one TaskManager (with its Python workers) is killed with SIGKILL, then the broker is restarted. The job
must restart on the other TaskManager from its last checkpoint, ride out the broker's absence, and
every request must be priced exactly once, as read_committed consumers see it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pricing.broker import LocalBroker, free_port
from pricing.cluster import ENDED, LocalCluster, cancel_job, jobs
from pricing.config import ClusterSettings, Settings
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.helpers import PacedRequests, PricedReader, command_env, read_topic, write_config_file

pytestmark = pytest.mark.integration

PRODUCTS = [f"p{i}" for i in range(6)]
RATE = 50  # requests per second

@pytest.fixture(scope="session")
def flink_cluster(broker_state_dir: Path) -> Iterator[LocalCluster]:
    """One JobManager and two TaskManagers (2 slots each) for the session; stopped even when a test fails."""
    rest_port = free_port()
    rpc_port = free_port()
    while rpc_port == rest_port:
        rpc_port = free_port()
    cluster = LocalCluster(
        state_dir=broker_state_dir,
        settings=ClusterSettings(rest_port=rest_port, rpc_port=rpc_port, taskmanagers=2, slots_per_taskmanager=2),
        die_with_parent=True,
    )
    try:
        cluster.start(timeout_s=180)
        yield cluster
    finally:
        cluster.stop()


def _config_file(settings: Settings, cluster: LocalCluster, path: Path) -> Path:
    """The test's settings as the TOML file of the README's "Running on a cluster"."""
    job = ["parallelism = 2", 'delivery_guarantee = "exactly-once"', "checkpoint_interval_ms = 2000",
           "idle_timeout_ms = 2000", "restart_attempts = 5", "restart_delay_ms = 1000"]  # fmt: skip
    cluster_lines = ["[cluster]", f"rest_port = {cluster.settings.rest_port}", f"rpc_port = {cluster.settings.rpc_port}"]
    return write_config_file(settings, path, job=job, extra=cluster_lines)


def _cli(config: Path, *args: str, timeout_s: float) -> subprocess.CompletedProcess:
    env = command_env()
    return subprocess.run(
        [sys.executable, "-m", "pricing.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL,
    )




def test_cluster_start_is_idempotent_and_status_reports_every_process(
    flink_cluster: LocalCluster, kafka_settings: Settings, tmp_path: Path
) -> None:
    config = _config_file(kafka_settings, flink_cluster, tmp_path / "pricing.toml")
    before = flink_cluster.status()
    again = _cli(config, "cluster", "start", timeout_s=60)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    status = _cli(config, "cluster", "status", timeout_s=30)
    assert status.returncode == 0, status.stderr
    assert f"JobManager pid {before.jobmanager_pid}" in status.stdout
    assert all(str(pid) in status.stdout for pid in before.taskmanager_pids) and len(before.taskmanager_pids) == 2
    assert "2 TaskManager(s) registered" in status.stdout
    overview = flink_cluster.rest_json("/overview")
    assert (overview["taskmanagers"], overview["slots-total"]) == (2, 4)


def test_the_job_on_the_cluster_prices_every_request_exactly_once_through_a_taskmanager_crash(
    flink_cluster: LocalCluster, kafka_broker: LocalBroker, kafka_settings: Settings, tmp_path: Path
) -> None:
    """Two faults in a row, with traffic flowing: a TaskManager killed, then the broker restarted."""
    settings = kafka_settings
    topics = settings.kafka.topics
    assert topics.requests.partitions == 2, "parallelism 2 needs both request partitions fed"
    create_topics(settings.kafka)
    config = _config_file(settings, flink_cluster, tmp_path / "pricing.toml")
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 5})
    now = int(time.time() * 1000)
    for i, product in enumerate(PRODUCTS):
        rec = {"product_id": product, "kind": "list_price", "competitor_id": None, "value": 1_000 + 100 * i,
               "currency": "EUR", "event_time": now - 60_000}
        producer.produce(topics.market.name, serde.encode(Contract.MARKET_EVENT, rec), key=product.encode(), timestamp=now - 60_000)
    producer.flush()

    requests = PacedRequests(settings, PRODUCTS, rate=RATE)
    send, sent = requests.send, requests.sent
    answers = PricedReader(settings)
    answers.start()
    job_id = None
    try:
        submitted = _cli(config, "job", "run", "--jobmanager", flink_cluster.settings.rest_address, timeout_s=240)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr[-3000:]
        job_id = re.search(r"job ([0-9a-f]{32}) runs on", submitted.stdout).group(1)
        job = flink_cluster.rest_json(f"/jobs/{job_id}")
        assert {v["parallelism"] for v in job["vertices"]} == {2}, [(v["name"], v["parallelism"]) for v in job["vertices"]]
        # Run again (a deploy script retrying after its client died), the command finds the job and submits no copy.
        again = _cli(config, "job", "run", "--jobmanager", flink_cluster.settings.rest_address, timeout_s=120)
        assert again.returncode == 0 and f"job {job_id} runs on" in again.stdout, again.stdout + again.stderr[-2000:]
        assert [j["jid"] for j in jobs(flink_cluster.rest_url) if j["state"] not in ENDED] == [job_id]

        deadline = time.monotonic() + 120
        while not answers.ids:  # the job prices, and its first checkpoint committed
            assert time.monotonic() < deadline, "the job on the cluster answered nothing"
            send(0.5)
        # Both request partitions carry traffic, and both TaskManagers run a share of the job.
        probe = Consumer(settings.kafka.client_config() | {"group.id": f"probe-{uuid.uuid4().hex[:6]}"})
        lows_highs = [probe.get_watermark_offsets(TopicPartition(topics.requests.name, p), timeout=10) for p in (0, 1)]
        probe.close()
        assert all(high > low for low, high in lows_highs), lows_highs
        source = next(v for v in job["vertices"] if "requests_src" in v["name"])
        hosts = flink_cluster.rest_json(f"/jobs/{job_id}/vertices/{source['id']}/taskmanagers")["taskmanagers"]
        assert len(hosts) == 2, "slots are spread over both TaskManagers"

        send(5)  # mid-stream: requests waiting for the watermark, open transactions, a checkpoint or two
        victim = flink_cluster.status().taskmanager_pids[0]
        flink_cluster.kill_taskmanager(victim)  # kill -9 of its JVM and its Python workers
        killed = time.monotonic()
        answered_before_kill = set(answers.ids)
        send(4)  # requests go on arriving while the job fails over

        deadline = time.monotonic() + 150
        replaced = False
        while True:
            restarts = int(flink_cluster.rest_json(f"/jobs/{job_id}/metrics?get=numRestarts")[0]["value"])
            job = flink_cluster.rest_json(f"/jobs/{job_id}")
            if restarts >= 1 and job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"]):
                break
            assert job["state"] not in {"FAILED", "CANCELED", "FINISHED"}, job["state"]
            assert time.monotonic() < deadline, f"the job did not run again ({job['state']}, {restarts} restarts)"
            if not flink_cluster.status().taskmanager_pids:
                # PyFlink 2.2 can take the surviving TaskManager down too while it cancels the failed tasks
                # ("Reference count must not be negative" closing the slot's shared Python worker). Then
                # replace the TaskManagers, as Kubernetes would: the guarantee under test is the same.
                flink_cluster.start(timeout_s=120)
                replaced = True
            send(1)
        if not replaced:
            assert flink_cluster.rest_json("/overview")["taskmanagers"] == 1, "it restarted on the surviving TaskManager"
        restarted = time.monotonic() - killed
        send(3)
        # The broker goes down and comes back (a rolling restart of a one-node cluster): sources, sinks and open
        # transactions reconnect. No traffic meanwhile: the test's producer flushes after each send.
        before_broker = len(answers.ids)
        kafka_broker.stop()
        time.sleep(2)
        kafka_broker.start(timeout_s=90)
        broker_back = time.monotonic()
        deadline = broker_back + 150
        while len(answers.ids) == before_broker:
            assert time.monotonic() < deadline, "nothing answered after the broker came back"
            send(0.5)
        first_after_broker = time.monotonic() - broker_back
        send(3)
        counted = list(sent)
        deadline = time.monotonic() + 120
        while set(counted) - set(answers.ids):  # keep-alive traffic moves the watermark on
            assert time.monotonic() < deadline, f"{len(set(counted) - set(answers.ids))} requests unanswered"
            send(0.5)
    finally:
        answers.stop()
        if job_id is not None and flink_cluster.status().rest_answers:
            if any(j["jid"] == job_id and j["state"] not in {"FAILED", "CANCELED", "FINISHED"} for j in jobs(flink_cluster.rest_url)):
                cancel_job(flink_cluster.rest_url, job_id)

    priced = read_topic(settings, topics.priced.name)
    counts = Counter(serde.decode(Contract.PRICED_EVENT, m.value()).record["request_id"] for m in priced)
    duplicates = sorted(rid for rid, n in counts.items() if n > 1)
    lost = sorted(set(counted) - set(counts))
    print(f"\ncluster: {len(counted)} requests counted ({len(answered_before_kill)} answered before the kill), "
          f"{len(sent)} sent; running again {restarted:.1f} s after kill -9 "
          f"({'on replaced TaskManagers: the survivor crashed too' if replaced else 'on the surviving TaskManager'}); "
          f"first answer {first_after_broker:.1f} s after the broker came back; lost {len(lost)}, "
          f"duplicated {len(duplicates)}")
    assert not duplicates, f"priced more than once: {duplicates[:5]}"
    assert not lost, f"never priced: {lost[:5]}"
    assert set(counts) <= set(sent)
    assert answered_before_kill < set(counts), "nothing was priced after the crash"
