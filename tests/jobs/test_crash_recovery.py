"""A crash, not a clean stop: ``kill -9`` of a running job, then the plain ``pricing job run`` again.

The job runs as its own process group (the CLI's Python process, its Flink MiniCluster JVM
and the Python workers) with exactly-once output, while requests keep coming at about
100/s. The whole group is killed with SIGKILL mid-stream; requests go on arriving while
it is down; the same command starts it again. Every request must then be priced exactly
once, as read_committed consumers see it (and every recommend request, sent with every tenth
request, answered exactly once in recommendations), and answers must become visible soon after the
restart (the killed run's open transactions must not block the partitions until their
timeout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Producer

from pricing.checkpoints import checkpoint_root, completed_checkpoints, local_path
from pricing.config import Settings
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.helpers import PacedRequests, PricedReader, command_env, read_topic, write_config_file

pytestmark = pytest.mark.integration

PRODUCTS = [f"p{i}" for i in range(6)]
RATE = 100  # requests per second
RECOMMEND_EVERY = 10  # and a recommend request with every 10th (with a view per request, so candidates grow)


def _start(config: Path, log: Path) -> subprocess.Popen:
    out = log.open("ab")
    env = command_env()
    return subprocess.Popen(
        [sys.executable, "-m", "pricing.cli", "--config", str(config), "job", "run"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
    )


def _kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its JVM and every Python worker at once
    proc.wait(30)


def test_a_job_killed_mid_stream_prices_every_request_exactly_once_after_a_plain_restart(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    create_topics(settings.kafka)
    topics = settings.kafka.topics
    config = write_config_file(settings, tmp_path / "pricing.toml", job=["checkpoint_interval_ms = 2000", "idle_timeout_ms = 2000"])
    log = tmp_path / "job.log"
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 5})
    now = int(time.time() * 1000)
    for i, product in enumerate(PRODUCTS):
        rec = {"product_id": product, "kind": "list_price", "competitor_id": None, "value": 1_000 + 100 * i,
               "currency": "EUR", "event_time": now - 60_000}
        producer.produce(topics.market.name, serde.encode(Contract.MARKET_EVENT, rec), key=product.encode(), timestamp=now - 60_000)

    requests = PacedRequests(settings, PRODUCTS, rate=RATE, recommend_every=RECOMMEND_EVERY)
    send, sent = requests.send, requests.sent
    answers = PricedReader(settings)
    answers.start()
    slates = PricedReader(settings, Contract.RECOMMENDATION)
    slates.start()
    job = _start(config, log)
    try:
        deadline = time.monotonic() + 180
        while not answers.records:  # the first run is up and its first checkpoint committed
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run answered nothing"
            send(0.5)
        send(6)  # mid-stream: requests waiting for the watermark, open transactions, a few checkpoints
        root = local_path(checkpoint_root(settings))
        assert completed_checkpoints(root), "no checkpoint to resume from"
        _kill9(job)
        killed_at = len(sent)
        answered_before_kill = set(answers.ids)
        send(3)  # requests go on arriving while the job is down

        restarted = time.monotonic()
        job = _start(config, log)
        send(6)
        counted = list(sent)
        asked = list(requests.recommend_sent)
        deadline = time.monotonic() + 180
        while set(counted) - set(answers.ids) or set(asked) - set(slates.ids):  # keep-alive traffic moves the watermark on
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (f"unanswered: {sorted(set(counted) - set(answers.ids))[:10]}, "
                                                 f"{sorted(set(asked) - set(slates.ids))[:10]}")
            send(0.5)
    finally:
        if job.poll() is None:
            _kill9(job)
        answers.stop()
        slates.stop()

    first_after = min(t for t, r in answers.records if r["request_id"] not in answered_before_kill) - restarted
    counts = Counter(serde.decode(Contract.PRICED_EVENT, m.value()).record["request_id"]
                     for m in read_topic(settings, topics.priced.name))  # fmt: skip
    lost = [rid for rid in counted if counts[rid] == 0]
    duplicated = [rid for rid, n in counts.items() if n > 1]
    recommendations = [serde.decode(Contract.RECOMMENDATION, m.value()).record
                       for m in read_topic(settings, topics.recommendations.name)]  # fmt: skip
    rec_counts = Counter(r["request_id"] for r in recommendations)
    rec_lost = [rid for rid in asked if rec_counts[rid] == 0]
    rec_duplicated = [rid for rid, n in rec_counts.items() if n > 1]
    with_items = sum(bool(r["items"]) for r in recommendations)
    print(f"\ncrash: {killed_at} requests sent before kill -9 ({len(answered_before_kill)} answered), "
          f"{len(counted)} counted in all; restart to first new visible answer {first_after:.1f} s; "
          f"lost {len(lost)}, duplicated {len(duplicated)}; recommend requests {len(asked)} ({with_items} answered "
          f"with products): lost {len(rec_lost)}, duplicated {len(rec_duplicated)}")
    assert "resuming from the latest checkpoint" in log.read_text(), log.read_text()[-3000:]
    assert not lost and not duplicated, (lost[:10], duplicated[:10])
    assert not rec_lost and not rec_duplicated, (rec_lost[:10], rec_duplicated[:10])
    assert with_items > len(asked) // 2, "the recommendations that crossed the crash carried products (the gather ran)"
    # The killed run's open transactions are aborted at start, not left to time out (10 min).
    assert first_after < 120, f"answers became visible only {first_after:.0f} s after the restart"
