"""The archive job under a crash: ``kill -9`` mid-stream, the plain ``pricing archive run`` again, then count.

Records of five topics keep arriving (one of them in an older writer version, some of them bad bytes, one batch in
a Kafka transaction that is aborted) while the archive job runs with one-second checkpoints. The job's whole process
group is killed with SIGKILL once files are visible, records go on arriving while it is down, and the same command
starts it again. The committed files, read back with fastavro (not the Java writer that wrote them), must then hold
every good record exactly once, in the partition of its event time, resolved to the contract's current schema;
nothing of the aborted transaction, no bad bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer

from jobs.archive import archived_topics
from pricing import archive_layout
from pricing.config import Settings
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.helpers import command_env, write_config_file

pytestmark = pytest.mark.integration

HOUR_MS = archive_layout.HOUR_MS


def _start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pricing.cli", "--config", str(config), "archive", "run"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env=command_env(),
    )


def _kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its MiniCluster JVM at once
    proc.wait(30)


def _priced_v1(i: int, now: int) -> bytes:
    """A priced event as its first published version wrote it (no features, no exploration fields)."""
    v1 = serde.frozen_schemas(Contract.PRICED_EVENT)[0]
    assert "propensity" not in {f["name"] for f in v1["fields"]}
    rec = _priced(f"old-{i}", now)
    for name in ("feature_spec_version", "features", "explored", "propensity"):
        rec.pop(name)
    from io import BytesIO

    out = BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(v1), rec)
    return serde.MAGIC + serde.schema_fingerprint(v1) + out.getvalue()


def _priced(request_id: str, t: int) -> dict[str, Any]:
    return {"request_id": request_id, "user_id": "u1", "product_id": "p1", "price_minor": 1_234,
            "reference_price_minor": 1_300, "currency": "EUR", "model_version": "v1", "expected_conversion": 0.25,
            "expected_profit_minor": 100, "reason_codes": [], "fallback_used": False, "request_time": t,
            "priced_time": t + 5, "feature_spec_version": "features/5", "features": [1.0, 2.5], "explored": True,
            "propensity": 0.05}  # fmt: skip


class _Traffic:
    """Records of several topics at a steady pace, event times spread over three hours; remembers what it sent."""

    def __init__(self, settings: Settings) -> None:
        self._topics = settings.kafka.topics
        self._producer = Producer(settings.kafka.client_config() | {"linger.ms": 5, "enable.idempotence": True})
        self._now = int(time.time() * 1000)
        self.sent: dict[str, list[tuple[Any, int]]] = {}  # topic -> (record's key, Kafka timestamp)
        self.old_version: set[str] = set()
        self._i = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _send(self, topic: str, contract: Contract, rec: dict[str, Any], key: Any, t: int, raw: bytes | None = None) -> None:
        value = raw if raw is not None else serde.encode(contract, rec)
        self._producer.produce(topic, value, key=b"k", timestamp=t)
        self.sent.setdefault(topic, []).append((key, t))

    def _batch(self) -> None:
        t = self._topics
        for _ in range(10):
            i = self._i = self._i + 1
            when = self._now - (i % 3) * HOUR_MS - i  # three hours of event time, every record a distinct time
            self._send(t.behaviour.name, Contract.BEHAVIOUR_EVENT, {
                "event_id": f"b{i}", "user_id": f"u{i % 7}", "product_id": f"p{i % 5}", "type": "view",
                "price_seen_minor": 1_000 + i, "currency": "EUR", "quantity": 1, "session_id": "s",
                "event_time": when, "request_id": None}, f"b{i}", when)  # fmt: skip
            self._send(t.market.name, Contract.MARKET_EVENT, {
                "product_id": f"m{i}", "kind": "competitor_price", "competitor_id": "c1", "value": 900 + i,
                "currency": "EUR", "event_time": when}, f"m{i}", when)  # fmt: skip
            self._send(t.requests.name, Contract.PRICE_REQUEST, {
                "request_id": f"r{i}", "user_id": f"u{i % 7}", "product_id": f"p{i % 5}", "channel": "web",
                "event_time": when}, f"r{i}", when)  # fmt: skip
            if i % 4 == 0:
                self._send(t.priced.name, Contract.PRICED_EVENT, _priced(f"q{i}", when), f"q{i}", when)
            if i % 13 == 0:  # an old producer
                self._send(t.priced.name, Contract.PRICED_EVENT, {}, f"old-{i}", when, raw=_priced_v1(i, when))
                self.old_version.add(f"old-{i}")
            if i % 17 == 0:  # bad bytes: the pricing job dead-letters them, the archive leaves them out
                self._producer.produce(t.behaviour.name, b"\xc3\x01 not a record", key=b"k", timestamp=when)
        self._producer.flush(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._batch()
            time.sleep(0.1)

    def start(self) -> "_Traffic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _aborted_transaction(settings: Settings) -> None:
    producer = Producer(settings.kafka.client_config() | {"transactional.id": f"archive-test-{time.time_ns()}"})
    producer.init_transactions(10)
    producer.begin_transaction()
    now = int(time.time() * 1000)
    for i in range(5):
        producer.produce(settings.kafka.topics.priced.name, serde.encode(Contract.PRICED_EVENT, _priced(f"aborted-{i}", now)),
                         timestamp=now)  # fmt: skip
    producer.flush(10)
    producer.abort_transaction(10)


KEY_FIELD = {Contract.BEHAVIOUR_EVENT: "event_id", Contract.MARKET_EVENT: "product_id",
             Contract.PRICE_REQUEST: "request_id", Contract.PRICED_EVENT: "request_id"}  # fmt: skip
TIME_FIELD = {Contract.BEHAVIOUR_EVENT: "event_time", Contract.MARKET_EVENT: "event_time",
              Contract.PRICE_REQUEST: "event_time", Contract.PRICED_EVENT: "request_time"}  # fmt: skip


def _archived(root: Path, settings: Settings) -> dict[str, list[tuple[Any, int, Path, dict[str, Any]]]]:
    """Per topic: (key, time, the file's hour folder, the record) of every record in a visible file, read with
    fastavro under the schema the file declares."""
    out: dict[str, list[tuple[Any, int, Path, dict[str, Any]]]] = {}
    for _, topic, contract in archived_topics(settings):
        if contract not in KEY_FIELD:
            continue
        rows = out.setdefault(topic, [])
        for path in map(Path, archive_layout.files(root, topic)):
            with path.open("rb") as f:
                for rec in fastavro.reader(f):
                    t = rec[TIME_FIELD[contract]]  # timestamp-millis: fastavro gives an aware datetime
                    rows.append((rec[KEY_FIELD[contract]], round(t.timestamp() * 1000), path.parent, rec))
    return out


def _missing(archived: dict[str, list[Any]], sent: dict[str, list[Any]]) -> int:
    return sum(len(set(k for k, _ in sent[t]) - set(r[0] for r in archived.get(t, []))) for t in sent)


def test_the_archive_holds_every_good_record_exactly_once_after_a_kill_9_and_a_plain_restart(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    create_topics(settings.kafka)
    root = tmp_path / "archive"
    config = write_config_file(settings, tmp_path / "pricing.toml", job=[], extra=[
        "[archive]", f'path = "{root}"', "checkpoint_interval_ms = 1000", 'codec = "deflate"',
        f'consumer_group = "{settings.job.consumer_group}-archive"'])  # fmt: skip
    log = tmp_path / "archive.log"
    _aborted_transaction(settings)
    traffic = _Traffic(settings).start()
    job = _start(config, log)
    try:
        deadline = time.monotonic() + 120
        while not any(archive_layout.files(root, t) for t in traffic.sent):  # the first checkpoint committed files
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run archived nothing: " + log.read_text()[-3000:]
            time.sleep(0.3)
        time.sleep(1.5)  # mid-stream: records read since the last checkpoint sit in hidden in-progress files
        _kill9(job)
        before = sum(len(v) for v in _archived(root, settings).values())
        hidden = [p for p in root.rglob(".*") if p.is_file()]
        assert hidden, "the killed run left no in-progress file: the crash did not hit mid-stream"
        time.sleep(2)  # records arrive while it is down
        job = _start(config, log)
        time.sleep(3)
        traffic.stop()
        deadline = time.monotonic() + 90
        while _missing(archived := _archived(root, settings), traffic.sent):
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, (f"{_missing(archived, traffic.sent)} records never archived; "
                                                 + log.read_text()[-2000:])  # fmt: skip
            time.sleep(0.5)
        time.sleep(2.5)  # two more checkpoints: a duplicate would have landed by now
        archived = _archived(root, settings)
    finally:
        traffic.stop()
        if job.poll() is None:
            _kill9(job)
    assert before > 0
    for topic, sent in traffic.sent.items():
        rows = archived[topic]
        keys = Counter(r[0] for r in rows)
        repeated = {k: n for k, n in keys.items() if n > 1}
        assert not repeated, f"{topic}: archived more than once: {list(repeated.items())[:5]}"
        assert set(keys) == {k for k, _ in sent}, f"{topic}: archive and topic differ"
        expected_time = dict(sent)
        for key, t, hour_dir, _ in rows:  # the partition of the record's Kafka timestamp (= its event time)
            assert t == expected_time[key]
            assert hour_dir == archive_layout.partition_path(root, topic, t)
        assert len({r[2] for r in rows}) == 3, f"{topic}: expected three hour partitions"
    priced = {r[0]: r[3] for r in archived[settings.kafka.topics.priced.name]}
    assert not any(k.startswith("aborted-") for k in priced), "an aborted transaction was archived"
    assert traffic.old_version and traffic.old_version <= set(priced)
    for key in traffic.old_version:  # resolved to the current schema: the fields v1 lacked have their defaults
        assert priced[key]["features"] is None and priced[key]["propensity"] is None
    some_new = next(k for k in priced if k.startswith("q"))
    assert priced[some_new]["features"] == [1.0, 2.5] and priced[some_new]["propensity"] == 0.05
    # What the training set reads (jobs.training_set.read_events): epoch millis, not fastavro's datetimes.
    from jobs.training_set import read_events

    requests_topic = settings.kafka.topics.requests.name
    frame = read_events(archive_layout.files(root, requests_topic)[0], Contract.PRICE_REQUEST)
    assert frame["event_time"].dtype == "int64"
    assert set(zip(frame["request_id"], frame["event_time"])) <= set(traffic.sent[requests_topic])
    # The files declare the current contract (readers need no other schema).
    with archive_layout.open_file(archive_layout.files(root, settings.kafka.topics.priced.name)[0]) as f:
        declared = fastavro.reader(f).writer_schema
    assert [f["name"] for f in declared["fields"]] == [f["name"] for f in serde.published_schema(Contract.PRICED_EVENT)["fields"]]
    # The bad bytes (every 17th batch record on the behaviour topic) were left out without failing the job: had the
    # writer thrown, the job would have stopped (poll() above) and nothing more been archived.
