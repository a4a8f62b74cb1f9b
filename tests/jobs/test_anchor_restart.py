"""The hourly-change guardrail across a crash: ``kill -9`` of a running job, a new model promoted while it
is down, then the plain ``pricing job run`` again.

The job runs as its own process group (the CLI's Python process, its Flink MiniCluster JVM and the Python
workers) with exactly-once output. Before the kill it prices requests of hour h-1 with a very
price-sensitive model (low prices); while it is down a price-insensitive model is promoted (it wants the
ceiling); after the restart it prices requests of hour h. Event times are past hours the test chooses
(event time = the Kafka timestamp, never ahead of the clock). As a read_committed consumer sees the
output, every price of hour h must be within ``max_change`` of the product's last committed price of
hour h-1 (the anchor rule of ``pricing_udfs.anchors``): the restarted worker rebuilt its anchors from
the priced-events topic. Without that rebuild (``anchor_lookback_ms = 0``) the prices jump to the ceiling.
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

from pricing.broker import free_port
from pricing.config import Settings
from pricing.metrics import stage_metrics
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.anchors import HOUR_MS
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.serde import Contract
from tests.helpers import PricedReader, command_env, read_topic, write_config_file

pytestmark = pytest.mark.integration

PRODUCTS = [f"p{i}" for i in range(6)]
ROUNDS = 4  # requests per product and hour
MAX_CHANGE = 0.25  # the default guardrail
STARTUP_BOUND_S = 600.0  # only an upper bound for a job that never comes up; later waits follow measured readiness


def _start(config: Path, log: Path) -> subprocess.Popen:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "pricing.cli", "--config", str(config), "job", "run"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=command_env(),
    )  # fmt: skip


def _kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its JVM and every Python worker at once
    proc.wait(30)


def _publish(registry: Registry, tmp: Path, name: str, **fake: float) -> str:
    FakeDemandModel(**fake).save(tmp / name)
    return registry.publish(tmp / name, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                            metrics={}, promote=True).version  # fmt: skip


class Requests:
    """Price requests with event times the test sets (Kafka timestamp = event time)."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.kafka.topics.requests.name
        self._producer = Producer(settings.kafka.client_config() | {"linger.ms": 5})
        self.sent: list[str] = []

    def send(self, product: str, ts: int) -> str:
        rid = f"r{len(self.sent):04d}-{product}"
        rec = {"request_id": rid, "user_id": f"u{len(self.sent) % 7}", "product_id": product, "channel": "web",
               "event_time": ts}  # fmt: skip
        self._producer.produce(self._topic, serde.encode(Contract.PRICE_REQUEST, rec), key=product.encode(), timestamp=ts)
        self._producer.flush()
        self.sent.append(rid)
        return rid

    def hour(self, start: int, *, offset_ms: int, rounds: int = ROUNDS) -> list[str]:
        """``rounds`` requests per product in increasing event time from ``start + offset_ms``."""
        ids, ts = [], start + offset_ms
        for _ in range(rounds):
            for product in PRODUCTS:
                ts += 250
                ids.append(self.send(product, ts))
        return ids


def _wait_answered(answers: PricedReader, ids: list[str], job: subprocess.Popen, log: Path, *, deadline: float,
                   what: str) -> None:  # fmt: skip
    while set(ids) - set(answers.ids):
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{what}: unanswered {sorted(set(ids) - set(answers.ids))[:10]}"
        time.sleep(0.2)


def test_the_hourly_cap_holds_across_a_kill_9_and_a_model_promoted_while_the_job_was_down(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    create_topics(settings.kafka)
    topics = settings.kafka.topics
    registry = Registry(tmp_path / "registry")
    sensitive = _publish(registry, tmp_path, "sensitive", slope=8.0)  # wants a low price
    port = free_port()
    config = write_config_file(
        settings, tmp_path / "pricing.toml",
        job=["checkpoint_interval_ms = 2000", "idle_timeout_ms = 2000", f'metrics_port = "{port}"'],
        extra=["[models]", f'registry_dir = "{registry.root}"', "watch_interval_s = 1", 'device = "cpu"'],
    )  # fmt: skip
    log = tmp_path / "job.log"
    now = int(time.time() * 1000)
    h = now // HOUR_MS * HOUR_MS - HOUR_MS  # the start of hour h: the previous wall-clock hour; h-1 before it
    producer = Producer(settings.kafka.client_config())
    market_ts = h - HOUR_MS + 60_000
    for product in PRODUCTS:
        for kind, value in (("list_price", 1_000), ("cost", 300)):
            rec = {"product_id": product, "kind": kind, "competitor_id": None, "value": value, "currency": "EUR",
                   "event_time": market_ts}  # fmt: skip
            producer.produce(topics.market.name, serde.encode(Contract.MARKET_EVENT, rec), key=product.encode(),
                             timestamp=market_ts)  # fmt: skip
    producer.flush()

    requests = Requests(settings)
    answers = PricedReader(settings)
    answers.start()
    job = _start(config, log)
    try:
        started = time.monotonic()
        # Warm up until a round is priced by the model: in arrival mode the topics are read side by side, so
        # the first requests may be priced before the market events (no list price: the default price).
        warm: list[str] = []
        for i in range(100):  # event times stay before the hour h-1 block below
            warm += (batch := requests.hour(h - HOUR_MS, offset_ms=2 * 60_000 + i * 10_000, rounds=1))
            _wait_answered(answers, batch, job, log, deadline=started + STARTUP_BOUND_S, what="first run")
            if all("model" in r["reason_codes"] for _, r in answers.records if r["request_id"] in batch):
                break
        ready_s = time.monotonic() - started
        before = requests.hour(h - HOUR_MS, offset_ms=20 * 60_000)
        _wait_answered(answers, before, job, log, deadline=time.monotonic() + max(60.0, 2 * ready_s), what="hour h-1")
        _kill9(job)  # every hour h-1 price is committed (visible): a restart replays none of them
        insensitive = _publish(registry, tmp_path, "insensitive", slope=0.01)  # promoted while down: wants the ceiling

        restarted = time.monotonic()
        job = _start(config, log)
        after = requests.hour(h, offset_ms=5 * 60_000)
        first = after[:1]
        _wait_answered(answers, first, job, log, deadline=restarted + STARTUP_BOUND_S, what="after the restart")
        ready_s = time.monotonic() - restarted
        _wait_answered(answers, after, job, log, deadline=time.monotonic() + max(60.0, 2 * ready_s), what="hour h")
        try:
            seeded = stage_metrics(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            seeded = {}
    finally:
        if job.poll() is None:
            _kill9(job)
        answers.stop()

    events = [serde.decode(Contract.PRICED_EVENT, m.value()).record for m in read_topic(settings, topics.priced.name)]
    counts = Counter(e["request_id"] for e in events)
    assert all(counts[r] == 1 for r in [*warm, *before, *after]), "every request priced exactly once"
    print(f"\nrestart to first answer {ready_s:.1f} s; anchors rebuilt from {seeded.get('anchor_seed_records')} "
          f"records in {seeded.get('anchor_seed_ms')} ms")  # fmt: skip
    assert "resuming from the latest checkpoint" in log.read_text()
    for product in PRODUCTS:
        mine = [e for e in events if e["product_id"] == product]
        earlier = [e for e in mine if e["request_time"] // HOUR_MS == h // HOUR_MS - 1]
        later = [e for e in mine if e["request_time"] // HOUR_MS == h // HOUR_MS]
        assert earlier and later
        last_event = max(earlier, key=lambda e: (e["request_time"], e["priced_time"], e["request_id"]))
        assert last_event["model_version"] == sensitive
        last = last_event["price_minor"]
        prices = [e["price_minor"] for e in later]
        lo, hi = last * (1 - MAX_CHANGE), last * (1 + MAX_CHANGE)
        assert all(lo - 1e-6 <= p <= hi + 1e-6 for p in prices), (
            f"{product}: hour h prices {prices} are not within {MAX_CHANGE:.0%} of hour h-1's last price {last}")
        assert all(e["model_version"] == insensitive for e in later)
        assert all("max_change" in e["reason_codes"] for e in later), "the new model wanted more than the cap"
