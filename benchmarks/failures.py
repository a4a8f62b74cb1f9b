"""Failures survived on the standalone cluster with traffic flowing: the long version of
``tests/jobs/test_cluster_job.py``.

A real KRaft broker and a Flink cluster (one JobManager, two TaskManagers) in a fresh state folder; the job runs
exactly-once with parallelism 2, submitted with ``pricing job run --jobmanager``. Price requests flow at
``--rate`` per second while, one after another:

- ``--kills`` TaskManagers are killed with SIGKILL (JVM and Python workers) at random moments, one of them while
  a checkpoint is in progress; each is replaced (as Kubernetes would) once the job runs again;
- the broker is stopped and started again.

Before them, the client that submits the job (``pricing job run --jobmanager``) is killed with SIGKILL within
2 s after the cluster accepted the job, and run again: the job must run once (a second copy would read the
same input and fence the first one's transactions).

A read_committed reader counts the answers by request id. The report gives, per fault, the time to the first
answer to a request sent after the fault, and at the end the requests lost and duplicated (both must be 0).

The job's client process in local (MiniCluster) mode is the cluster itself: its kill -9 and restart are
``tests/jobs/test_crash_recovery.py``.

    .venv/bin/python -m benchmarks.failures --kills 5 --report benchmarks/failures_<date>.md
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

from confluent_kafka import Producer

from pricing.broker import LocalBroker, free_port
from pricing.cluster import ENDED, LocalCluster, cancel_job, jobs
from pricing.config import ClusterSettings, TopicsSettings, load_settings
from pricing.jars import PROJECT_ROOT
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.helpers import PricedReader

PRODUCTS = [f"p{i}" for i in range(6)]


class Traffic:
    """Price requests at ``rate`` per second (event time = now); ``sent`` maps each id to its send time."""

    def __init__(self, kafka: dict[str, str], topic: str, rate: float) -> None:
        self._producer = Producer(kafka | {"linger.ms": 5})
        self._topic, self._rate = topic, rate
        self.sent: dict[str, float] = {}

    def send(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rid, ts = f"r{len(self.sent):06d}", int(time.time() * 1000)
            product = PRODUCTS[len(self.sent) % len(PRODUCTS)]
            rec = {"request_id": rid, "user_id": f"u{len(self.sent) % 23}", "product_id": product, "channel": "web",
                   "event_time": ts}  # fmt: skip
            self._producer.produce(self._topic, serde.encode(Contract.PRICE_REQUEST, rec), key=product.encode(), timestamp=ts)
            self.sent[rid] = time.monotonic()
            self._producer.poll(0)
            time.sleep(1 / self._rate)
        self._producer.flush(60)



def _first_answer_after(traffic: Traffic, answers: PricedReader, fault_at: float, *, timeout_s: float) -> float:
    """Seconds from the fault to the first answer to a request sent after it (traffic keeps flowing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        first_seen: dict[str, float] = {}
        for seen, record in list(answers.records):
            first_seen.setdefault(record["request_id"], seen)
        after = [first_seen[r] for r, t in list(traffic.sent.items()) if t > fault_at and r in first_seen]
        if after:
            return min(after) - fault_at
        traffic.send(0.5)
    raise RuntimeError(f"no answer to a request sent after the fault within {timeout_s:.0f} s")


def _running(cluster: LocalCluster, job_id: str) -> bool:
    job = cluster.rest_json(f"/jobs/{job_id}")
    if job["state"] in ENDED:
        raise RuntimeError(f"the job ended: {job['state']}")
    return job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="TaskManager kills (default 5)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, default=None, help="write the Markdown report here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pricing-failures-") as tmp:
        state = Path(tmp)
        (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars", target_is_directory=True)
        broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
        broker.start(fresh=True, timeout_s=90)
        rest, rpc = free_port(), free_port()
        cluster = LocalCluster(state_dir=state, settings=ClusterSettings(rest_port=rest, rpc_port=rpc, taskmanagers=2,
                                                                          slots_per_taskmanager=2), die_with_parent=True)  # fmt: skip
        faults: list[tuple[str, float, str]] = []
        try:
            cluster.start(timeout_s=180)
            topics = {k: {"name": f"{t['name']}-f", "partitions": t["partitions"]} for k, t in TopicsSettings().model_dump().items()}
            settings = load_settings(state_dir=state, kafka={"bootstrap_servers": broker.bootstrap, "topics": topics},
                                     recommend={"enabled": False})  # fmt: skip
            create_topics(settings.kafka)
            kafka = settings.kafka.client_config()
            market = Producer(kafka)
            now = int(time.time() * 1000)
            for i, product in enumerate(PRODUCTS):
                rec = {"product_id": product, "kind": "list_price", "competitor_id": None, "value": 1_000 + 100 * i,
                       "currency": "EUR", "event_time": now - 60_000}  # fmt: skip
                market.produce(topics["market"]["name"], serde.encode(Contract.MARKET_EVENT, rec), key=product.encode(),
                               timestamp=now - 60_000)  # fmt: skip
            market.flush()
            config = state / "pricing.toml"
            config.write_text("\n".join([
                f'state_dir = "{state}"', "[kafka]", f'bootstrap_servers = "{broker.bootstrap}"',
                *[line for k, t in topics.items() for line in (f"[kafka.topics.{k}]", f'name = "{t["name"]}"',
                                                                f"partitions = {t['partitions']}")],
                "[job]", "parallelism = 2", 'delivery_guarantee = "exactly-once"', "checkpoint_interval_ms = 2000",
                "idle_timeout_ms = 2000", "restart_attempts = 100", "restart_delay_ms = 1000",
                "[recommend]", "enabled = false",
                "[cluster]", f"rest_port = {rest}", f"rpc_port = {rpc}",
            ]) + "\n")  # fmt: skip
            traffic = Traffic(kafka, topics["requests"]["name"], args.rate)
            answers = PricedReader(settings, group_prefix="failures-")  # read_committed
            answers.start()
            submit = [sys.executable, "-m", "pricing.cli", "--config", str(config), "job", "run", "--jobmanager",
                      cluster.settings.rest_address]  # fmt: skip
            # The client is killed (its whole process group: Python and its gateway JVM, as a pod's kill would) just
            # after the cluster accepted its job, then run again: it must not submit a second copy.
            client = subprocess.Popen(submit, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            deadline = time.monotonic() + 180
            while not [j for j in jobs(cluster.rest_url) if j["state"] not in ENDED]:  # the dangerous side: submitted
                if time.monotonic() > deadline or client.poll() is not None:
                    raise RuntimeError("the client submitted no job")
                time.sleep(0.1)
            time.sleep(rng.uniform(0, 2))  # while it waits for the tasks to run
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
            client_killed = time.monotonic()
            were = [j for j in jobs(cluster.rest_url) if j["name"] == "pricing-engine" and j["state"] not in ENDED]
            print(f"kill -9 of the submitting client ({len(were)} job submitted by then)", file=sys.stderr)
            submitted = subprocess.run(submit, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            if submitted.returncode != 0:
                raise RuntimeError(submitted.stderr[-3000:])
            job_id = re.search(r"job ([0-9a-f]{32}) runs on", submitted.stdout).group(1)
            live = [j["jid"] for j in jobs(cluster.rest_url) if j["state"] not in ENDED]
            if live != [job_id]:
                raise RuntimeError(f"jobs running after the client's second run: {live}")
            print(f"job {job_id} runs; waiting for its first answer", file=sys.stderr)
            first = _first_answer_after(traffic, answers, client_killed, timeout_s=180)
            faults.append((f"submitting client killed ({'after' if were else 'before'} it had submitted) and run "
                           "again: one job", client_killed - started, f"{first:.1f}"))  # fmt: skip
            during_checkpoint = rng.randrange(args.kills)
            for k in range(args.kills):
                traffic.send(rng.uniform(5, 15))
                note = "at a random moment"
                if k == during_checkpoint:
                    deadline = time.monotonic() + 30
                    while cluster.rest_json(f"/jobs/{job_id}/checkpoints")["counts"]["in_progress"] == 0:
                        if time.monotonic() > deadline:
                            break
                        traffic.send(0.05)
                    else:
                        note = "while a checkpoint was in progress"
                victim = rng.choice(cluster.status().taskmanager_pids)
                cluster.kill_taskmanager(victim)
                killed = time.monotonic()
                print(f"kill -9 of TaskManager {victim} ({note})", file=sys.stderr)
                first = _first_answer_after(traffic, answers, killed, timeout_s=240)
                deadline = time.monotonic() + 240
                while not _running(cluster, job_id):
                    if not cluster.status().taskmanager_pids:
                        cluster.start(timeout_s=120)
                    if time.monotonic() > deadline:
                        raise RuntimeError("the job did not run again")
                    traffic.send(0.5)
                cluster.start(timeout_s=120)  # replace the killed TaskManager, as Kubernetes would
                faults.append((f"TaskManager kill {k + 1} ({note})", killed - started, f"{first:.1f}"))
            traffic.send(5)
            broker.stop()
            stopped = time.monotonic()
            print("broker stopped", file=sys.stderr)
            time.sleep(3)  # no traffic while it is down: the producer would wait for it in flush()
            broker.start(timeout_s=90)
            first = _first_answer_after(traffic, answers, stopped, timeout_s=240)
            faults.append(("broker stopped for about 3 s and started again", stopped - started, f"{first:.1f}"))
            traffic.send(5)
            counted = list(traffic.sent)
            deadline = time.monotonic() + 180
            while set(counted) - set(answers.ids) and time.monotonic() < deadline:
                traffic.send(0.5)  # keep-alive traffic moves the watermark on
            time.sleep(5)  # room for a duplicate to show
            answers.stop()
            answers.join(10)
            counts = Counter(answers.ids)
            if any(j["jid"] == job_id and j["state"] == "RUNNING" for j in jobs(cluster.rest_url)):
                cancel_job(cluster.rest_url, job_id)
            lost = sorted(set(counted) - set(counts))
            duplicated = sorted(r for r, n in counts.items() if n > 1)
        finally:
            cluster.stop()
            broker.stop()
    minutes = (time.monotonic() - started) / 60
    lines = [
        f"# Failures survived on the standalone cluster ({date.today().isoformat()})",
        "",
        f"`benchmarks/failures.py --kills {args.kills} --rate {args.rate:g} --seed {args.seed}` on a "
        f"{platform.machine()} machine with 2 cores, {minutes:.1f} minutes: one JobManager, two TaskManagers, "
        "parallelism 2, exactly-once, checkpoints every 2 s.",
        "",
        "| fault | at (s) | first answer to a request sent after it (s) |",
        "|---|---|---|",
        *[f"| {name} | {at:.0f} | {first} |" for name, at, first in faults],
        "",
        f"Requests counted (sent until the last fault plus 5 s): {len(counted):,}; answered, with the keep-alive "
        f"traffic after them: {len(counts):,}; **lost {len(lost)}, duplicated {len(duplicated)}** "
        "(read_committed, by request id).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.report:
        args.report.write_text(report)
    return 0 if not lost and not duplicated else 1


if __name__ == "__main__":
    sys.exit(main())
