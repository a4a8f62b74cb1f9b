"""A soak: the job on the standalone cluster, RocksDB, exactly-once, for ``--minutes`` at ``--load`` (about 70%)
of its maximum sustained rate; are throughput, consumer lag, memory and checkpoints flat?

Run by hand (about ``--minutes`` + 6 minutes; it starts its own broker and cluster in a temporary folder):

    .venv/bin/python -m benchmarks.soak --minutes 22 --warmup 2 --report benchmarks/soak_<date>.md

1. **Set-up:** a KRaft broker, a Flink cluster (one JobManager, one TaskManager with two slots, 2560 MB of which
   768 MB managed memory for RocksDB and the Python workers), the job with
   parallelism 2, ``state_backend = "rocksdb"``, exactly-once, checkpoints every ``--checkpoint-s``, a
   TensorFlow model of the production architecture from a registry of its own (``--model``, else an untrained
   ``DemandNet``, which scores exactly as fast), and a catalogue (list price and cost) for every product.
2. **Maximum sustained rate:** the traffic mix (1 price request : 10 behaviour events : 1 market signal; products
   by popularity rank^-0.8 over 2,000 products, 20,000 users; event time = now) is offered in steps of
   ``--step-s`` seconds at ``--steps`` events per second, the producer running beside the job as in the soak.
   A step is saturated when the job's Kafka sources (their ``numRecordsOut``, from Flink's REST API) read less than
   95% of what was offered over its second half; the maximum sustained rate is what they read in the first
   saturated step (the job working flat out).
   The backlog is then left to drain before the soak starts.
3. **Soak:** the same mix at ``--load`` x that rate, event time = now, for ``--minutes``. Every
   ``--sample-s`` seconds: events offered and read per second, requests answered per second, the records
   produced and not yet read, the consumer lag of the job's group (the offsets Flink commits at each
   checkpoint, against the inputs' ends: what an SRE's lag monitor sees) and the requests produced and not yet
   answered (both polled every second, mean and maximum over the sample: they are saw-teeth with the
   checkpoint's rhythm), where an answer's time goes (median request -> priced in the job, priced -> readable
   when its transaction commits), the RSS of each process (JobManager, TaskManager, each Python worker, the
   broker), and the last completed checkpoint's size and duration (and its slowest vertex).
   ``--time-scale 100`` compresses event time so that the 24-hour windows fill within the warm-up and then evict
   as fast as they fill: the only way a 20-minute soak can show whether state stays bounded.
4. **Verdict:** after ``--warmup`` minutes, each series' mean over the last quarter of the soak against its mean
   over the first quarter: flat when within 10%; for lag and open requests, also flat when the end is below two
   checkpoint intervals of traffic (exactly-once commits offsets and output at checkpoints only, so a lag below
   that is the checkpoint's rhythm, not a queue); the median request -> priced also when under 1 s, priced ->
   committed when under one checkpoint interval.
   Every request is answered once (lost and duplicated, read_committed, by request id). Checkpoints are
   incremental on RocksDB (the job's default there); the size reported is the full state's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.latency import Promoter, _saved_model, export_untrained_model
from pricing.broker import LocalBroker, free_port
from pricing.cluster import ENDED, LocalCluster, cancel_job, jobs
from pricing.config import ClusterSettings, Settings, load_settings
from pricing.jars import PROJECT_ROOT
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.model.registry import Registry
from pricing_udfs.serde import Contract
from tests.helpers import command_env, write_config_file

N_PRODUCTS, N_USERS = 2_000, 20_000
EVENTS_PER_REQUEST = 12  # 1 request : 10 behaviour : 1 market
BEHAVIOUR = ("view",) * 6 + ("add_to_cart",) * 2 + ("purchase", "review")
MARKET = ("competitor_price", "competitor_price", "inventory", "promotion")  # list price and cost: the catalogue


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class EventClock:
    """Event time for the load: the wall clock (``scale`` 1), or a compressed one that starts ``behind_h`` hours in the
    past and runs ``scale`` times faster, so that the job's 24-hour windows fill, and then evict as fast as they fill,
    within a soak (at 100, 24 event-time hours pass in 14.4 minutes); it stays behind the wall clock, which the
    job's clock-skew rule requires."""

    def __init__(self, scale: float = 1.0, behind_h: float = 0.0) -> None:
        self.scale, self._wall0 = scale, time.time() * 1000
        self._event0 = self._wall0 - behind_h * 3_600_000

    def event_ms(self, wall_s: float | None = None) -> int:
        wall = (time.time() if wall_s is None else wall_s) * 1000
        return int(self._event0 + (wall - self._wall0) * self.scale)

    def wall_ms(self, event_ms: int) -> float:
        """The wall-clock moment at which the load stamped ``event_ms``."""
        return self._wall0 + (event_ms - self._event0) / self.scale

    def ahead_at(self, wall_s: float) -> bool:
        return self.event_ms(wall_s) > wall_s * 1000


class Mix:
    """The simulator's traffic mix as Kafka records: ``next(ts)`` -> (topic, key, value); request ids are numbered."""

    def __init__(self, settings: Settings, seed: int, users: int = N_USERS) -> None:
        self._rng = np.random.default_rng(seed)
        self._users = users
        weights = 1.0 / np.arange(1, N_PRODUCTS + 1) ** 0.8
        self._p = weights / weights.sum()
        self._topics = settings.kafka.topics
        self._buf: list[tuple[int, int, int]] = []
        self.requests = 0
        self._n = 0

    def _refill(self) -> None:
        n = 12_000
        kinds = self._rng.permutation(np.repeat([0, 1, 2], [n // 12, n * 10 // 12, n // 12]))
        products = self._rng.choice(N_PRODUCTS, size=n, p=self._p)
        users = self._rng.integers(0, self._users, n)
        self._buf = list(zip(kinds.tolist(), products.tolist(), users.tolist(), strict=True))[::-1]

    def next(self, ts: int) -> tuple[str, bytes, bytes]:
        if not self._buf:
            self._refill()
        kind, p, u = self._buf.pop()
        self._n += 1
        pid, uid, i = f"p{p}", f"u{u}", self._n
        if kind == 0:
            rec = {"request_id": f"r{self.requests}", "user_id": uid, "product_id": pid, "channel": "web", "event_time": ts}
            self.requests += 1
            return self._topics.requests.name, pid.encode(), serde.encode(Contract.PRICE_REQUEST, rec)
        if kind == 1:
            rec = {"event_id": f"e{i}", "user_id": uid, "product_id": pid, "type": BEHAVIOUR[i % 10],
                   "price_seen_minor": 1_000 + i % 500, "currency": "EUR", "quantity": 1, "session_id": f"s{u}",
                   "event_time": ts, "request_id": None}  # fmt: skip
            return self._topics.behaviour.name, pid.encode(), serde.encode(Contract.BEHAVIOUR_EVENT, rec)
        kind_name = MARKET[i % len(MARKET)]
        rec = {"product_id": pid, "kind": kind_name, "competitor_id": "c1" if kind_name == "competitor_price" else None,
               "value": 900 + i % 300 if kind_name != "promotion" else i % 2, "currency": "EUR" if kind_name == "competitor_price" else "",
               "event_time": ts}  # fmt: skip
        return self._topics.market.name, pid.encode(), serde.encode(Contract.MARKET_EVENT, rec)


def catalogue(settings: Settings, producer: Producer, ts: int, seed: int) -> None:
    """A list price and a unit cost for every product (the shop's catalogue), at ``ts``."""
    rng = np.random.default_rng(seed)
    for i in range(N_PRODUCTS):
        price = int(rng.integers(500, 5_000))
        for kind, value in (("list_price", price), ("cost", int(price * rng.uniform(0.4, 0.7)))):
            rec = {"product_id": f"p{i}", "kind": kind, "competitor_id": None, "value": value, "currency": "EUR", "event_time": ts}
            producer.produce(settings.kafka.topics.market.name, serde.encode(Contract.MARKET_EVENT, rec), key=f"p{i}".encode(),
                             timestamp=ts)  # fmt: skip
        producer.poll(0)
    producer.flush(60)


class Answers(threading.Thread):
    """A read_committed reader of priced-events: how many answers, how many request ids twice, and when."""

    def __init__(self, settings: Settings, clock: EventClock) -> None:
        super().__init__(daemon=True)
        self._clock = clock
        self._consumer = Consumer(settings.kafka.client_config() | {"group.id": f"soak-{uuid.uuid4().hex[:6]}",
                                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})  # fmt: skip
        self._consumer.subscribe([settings.kafka.topics.priced.name])
        self.ids: set[str] = set()
        self.duplicates = 0
        self.timeline: list[tuple[float, int]] = []  # (monotonic time, answers so far), once per poll batch
        # Where an answer's time goes, since the last take_delays(): request -> priced (the job's stages, event-time
        # waits included) and priced -> read here (the transaction's commit at the next checkpoint, exactly-once).
        self._delays: list[tuple[int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for msg in self._consumer.consume(1_000, timeout=0.2):
                if msg.error():
                    continue
                rec = serde.decode(Contract.PRICED_EVENT, msg.value()).record
                rid, seen = rec["request_id"], int(time.time() * 1000)
                requested = self._clock.wall_ms(rec["request_time"])  # priced_time is the wall clock's
                self._delays.append((rec["priced_time"] - requested, seen - rec["priced_time"]))
                if rid in self.ids:
                    self.duplicates += 1
                self.ids.add(rid)
            self.timeline.append((time.monotonic(), len(self.ids)))
        self._consumer.close()

    def take_delays(self) -> tuple[float, float]:
        """Median seconds (request -> priced, priced -> read_committed) of the answers since the last call."""
        delays, self._delays = self._delays, []
        if not delays:
            return float("nan"), float("nan")
        return statistics.median(d[0] for d in delays) / 1000, statistics.median(d[1] for d in delays) / 1000

    def stop(self) -> None:
        self._halt.set()
        self.join(10)



def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the TaskManager's Python workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes(cluster: LocalCluster, broker: LocalBroker) -> dict[str, float]:
    """RSS in MB by process: the JobManager, the TaskManager, each Python worker, the broker."""
    status = cluster.status()
    rss: dict[str, float | None] = {"jobmanager": _rss_mb(status.jobmanager_pid), "broker": _rss_mb(broker.status().pid)}
    for n, tm in enumerate(status.taskmanager_pids):
        rss[f"taskmanager{n}"] = _rss_mb(tm)
        workers = [p for p in _children(tm) if "python" in _cmdline(p).split(" ", 1)[0]]
        for k, worker in enumerate(sorted(workers)):
            rss[f"taskmanager{n}.python{k}"] = _rss_mb(worker)
    return {k: v for k, v in rss.items() if v is not None}


class LagWatch(threading.Thread):
    """Every ``every_s``: the consumer lag of the job's group (messages in the inputs past the offsets it committed
    at its last checkpoint) and the requests produced and not yet answered; ``take()`` gives each one's mean and
    maximum since the last call.

    Both are saw-teeth with the checkpoint's period (exactly-once commits offsets and answers at checkpoints): one
    reading every sample, 30.3 s apart against a 10 s rhythm, drifts through the tooth and shows a slow rise that
    is not there (the first soaks reported exactly that). The mean over a sample spans three teeth."""

    def __init__(self, settings: Settings, topics: list[str], partitions: int, open_requests: Any, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self._consumer = Consumer(settings.kafka.client_config() | {"group.id": settings.job.consumer_group,
                                                                    "enable.auto.commit": False})  # fmt: skip
        self._parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        self._open, self._every = open_requests, every_s
        self._readings: list[tuple[int, int]] = []
        self._halt = threading.Event()

    def lag(self) -> int:
        total = 0
        for tp in self._consumer.committed(self._parts, timeout=10):
            _, high = self._consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            total += high - max(tp.offset, 0)
        return total

    def run(self) -> None:
        while not self._halt.wait(self._every):
            self._readings.append((self.lag(), self._open()))

    def take(self) -> tuple[float, int, float, int]:
        """(mean lag, max lag, mean open requests, max open requests) since the last call."""
        readings, self._readings = self._readings, []
        if not readings:
            return float("nan"), 0, float("nan"), 0
        lags, opens = [r[0] for r in readings], [r[1] for r in readings]
        return statistics.fmean(lags), max(lags), statistics.fmean(opens), max(opens)

    def stop(self) -> None:
        self._halt.set()
        self.join(15)
        self._consumer.close()


def last_checkpoint(cluster: LocalCluster, job_id: str) -> tuple[int, float, float, str]:
    """(completed checkpoints, MB of the last completed one's full state, its end-to-end seconds, the slowest
    vertex's name and seconds)."""
    stats = cluster.rest_json(f"/jobs/{job_id}/checkpoints")
    latest = (stats.get("latest") or {}).get("completed") or {}
    slowest = ""
    if latest:
        names = {v["id"]: v["name"] for v in cluster.rest_json(f"/jobs/{job_id}")["vertices"]}
        tasks = cluster.rest_json(f"/jobs/{job_id}/checkpoints/details/{latest['id']}").get("tasks", {})
        if tasks:
            vid, task = max(tasks.items(), key=lambda kv: kv[1].get("end_to_end_duration", 0))
            slowest = f"{names.get(vid, vid)[:40]} {task.get('end_to_end_duration', 0) / 1000:.1f}s"
    return (stats["counts"]["completed"], latest.get("state_size", 0) / 1e6,
            latest.get("end_to_end_duration", 0) / 1000, slowest)  # fmt: skip


def records_read(cluster: LocalCluster, job_id: str, wait: Any = time.sleep) -> int:
    """Records the job's Kafka sources have read so far (their vertices' ``numRecordsOut``, summed over subtasks).

    The REST API answers from the JobManager's metric store and only then asks the TaskManagers for fresh values
    (at most every ``metrics.fetcher.update-interval``): one query every 30 s reads the values of the query before.
    So it asks, waits past the interval (1 s on the soak's cluster) with ``wait(seconds)`` (the load keeps
    flowing), and asks again."""
    sources = [v["id"] for v in cluster.rest_json(f"/jobs/{job_id}")["vertices"] if v["name"].startswith("Source:")]
    if not sources:
        raise RuntimeError("the job has no source vertex")
    total = 0
    for attempt in (0, 1):
        total, found = 0, 0
        for vertex in sources:
            got = cluster.rest_json(f"/jobs/{job_id}/vertices/{vertex}/subtasks/metrics?get=numRecordsOut&agg=sum")
            if got:
                total += int(float(got[0]["sum"]))
                found += 1
        if attempt == 0:
            wait(1.5)
    if found < len(sources):
        raise RuntimeError(f"{len(sources) - found} of the job's source vertices report no numRecordsOut")
    return total


@dataclass
class Sample:
    t_s: float  # since the soak started
    offered_eps: float
    read_eps: float  # records the job's sources read per second
    answered_rps: float
    backlog_requests: float  # requests produced and not yet answered, mean over the sample (polled every second)
    unread: int  # records produced (since the job started) and not yet read by the job's sources
    consumer_lag: float  # committed-offset lag, mean over the sample (polled every second)
    checkpoints: int
    checkpoint_mb: float  # the last completed checkpoint's full state size (incremental: what it adds is smaller)
    rss_mb: dict[str, float]
    checkpoint_s: float = float("nan")  # the last completed checkpoint's end-to-end duration
    slowest_vertex: str = ""  # in that checkpoint, with its seconds
    priced_s: float = float("nan")  # median request_time -> priced_time of the answers in this sample
    committed_s: float = float("nan")  # median priced_time -> read (read_committed) of those answers
    consumer_lag_max: int = 0
    backlog_requests_max: int = 0


class Paced:
    """Produces ``mix`` at ``rate`` events per second (event time = now), in 50 ms ticks."""

    def __init__(self, settings: Settings, mix: Mix, rate: float, clock: EventClock) -> None:
        self._clock = clock
        self._producer = Producer(settings.kafka.client_config() | {"linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
        self._mix, self.rate = mix, rate
        self.sent = 0

    def run_for(self, seconds: float) -> None:
        start, base = time.monotonic(), self.sent
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * self.rate) - (self.sent - base)
            ts = self._clock.event_ms()
            for _ in range(max(due, 0)):
                topic, key, value = self._mix.next(ts)
                self._producer.produce(topic, value, key=key, timestamp=ts)
                self.sent += 1
            self._producer.poll(0)
            time.sleep(max(0.0, 0.05 - (time.monotonic() - now)))

    def flush(self) -> None:
        self._producer.flush(60)


def ramp(paced: Paced, answers: Answers, read: Any, args: argparse.Namespace, steps: list[tuple[float, float, int]]) -> float:
    """Offers ``args.steps`` in turn; returns the maximum sustained events/s (see the module docstring).
    ``read()`` is the count of records the job's sources read so far."""
    rates = [float(x) for x in args.steps.split(",")]
    paced.rate = rates[0]
    deadline = time.monotonic() + 300
    while not answers.ids:  # the job's start (first checkpoint) is not part of a step
        if time.monotonic() > deadline:
            raise RuntimeError("the job answered nothing in 5 minutes")
        paced.run_for(2)
    paced.run_for(30)
    for rate in rates:
        paced.rate = rate
        paced.run_for(args.step_s / 2)
        sent, got, t = paced.sent, read(), time.monotonic()
        paced.run_for(args.step_s / 2)
        dt, now_read = time.monotonic() - t, read()
        offered, processed = (paced.sent - sent) / dt, (now_read - got) / dt
        unread = paced.sent - now_read
        steps.append((offered, processed, unread))
        log(f"  step {rate:7,.0f} ev/s: offered {offered:7,.0f} ev/s, read {processed:7,.0f} ev/s, unread {unread:,}")
        if processed < 0.95 * offered:
            return processed
    raise SystemExit(f"not saturated at {args.steps.split(',')[-1]} events/s: offer more with --steps")


def _trend(times_s: list[float], series: list[float]) -> float:
    """The least-squares line's change over the judged period, relative to the series' mean: a saw-tooth (RocksDB's
    compactions in the checkpoint's size) moves the quarter means with its phase, not the line."""
    n = len(series)
    if n < 2:
        return 0.0
    mt, my = statistics.fmean(times_s), statistics.fmean(series)
    var = sum((t - mt) ** 2 for t in times_s)
    if var == 0 or my == 0:
        return 0.0
    slope = sum((t - mt) * (y - my) for t, y in zip(times_s, series)) / var
    return slope * (times_s[-1] - times_s[0]) / my


def _flat(series: list[float], *, floor: float = 0.0) -> tuple[float, float, float, bool]:
    q = max(1, len(series) // 4)
    first, last = statistics.fmean(series[:q]), statistics.fmean(series[-q:])
    change = (last - first) / first if first else (0.0 if last == first else float("inf"))
    return first, last, change, abs(change) <= 0.10 or last <= floor


def main(argv: list[str] | None = None) -> int:  # noqa: C901, PLR0915 - one harness, top to bottom
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=22.0, help="soak duration (default 22: 2 of warm-up + 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes not judged (default 2)")
    parser.add_argument("--load", type=float, default=0.7, help="share of the maximum sustained rate (default 0.7)")
    parser.add_argument("--steps", default="600,800,1000,1200,1500,2000,2500,3500,5000",
                        help="events/s offered in turn to find the maximum sustained rate")
    parser.add_argument("--step-s", type=float, default=90.0, help="seconds per step")
    parser.add_argument("--rate", type=float, default=None, help="events/s to soak at; skips the maximum-rate phase")
    parser.add_argument("--checkpoint-s", type=float, default=10.0)
    parser.add_argument("--tm-memory", default="2560m", help="TaskManager process size (default 2560m)")
    parser.add_argument("--tm-managed-memory", default="768m", help="its managed memory: RocksDB and Python (default 768m)")
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--model", type=Path, default=None, help="SavedModel, registry version or registry")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=N_USERS,
                        help=f"shoppers in the mix (default {N_USERS:,}); a few dozen saturate the (user, product) pairs "
                             "within minutes, which tells their keys' growth apart from the windows'")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="event time runs this many times faster than the wall clock (default 1: event time = now); "
                             "at 100 the 24 h windows fill in 14.4 minutes and then stay full (use --warmup 15)")
    parser.add_argument("--behind-h", type=float, default=None,
                        help="event time starts this many hours behind the wall clock (default: 0 at scale 1, else "
                             "enough to stay behind it for the whole run)")
    parser.add_argument("--report", type=Path, default=None, help="Markdown report (a .jsonl of samples beside it)")
    args = parser.parse_args(argv)
    if args.time_scale < 1:
        parser.error("--time-scale is at least 1")
    run_min = args.minutes + 30 + (0 if args.rate else len(args.steps.split(",")) * args.step_s / 60)  # with a margin
    if args.behind_h is None:  # the run's whole length, in event time
        args.behind_h = 0.0 if args.time_scale == 1 else run_min / 60 * args.time_scale
    clock = EventClock(args.time_scale, args.behind_h)
    if clock.ahead_at(time.time() + run_min * 60):
        parser.error(f"event time would pass the wall clock within the run: raise --behind-h above {args.behind_h:g}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pricing-soak-") as tmp:
        state = Path(tmp)
        (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars", target_is_directory=True)
        model_dir = _saved_model(args.model) if args.model else export_untrained_model(state / "untrained-model")
        local = state / "model-source"
        shutil.copytree(model_dir, local)
        version = Promoter(Registry(state / "registry"), local).publish()
        broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
        broker.start(fresh=True, timeout_s=90)
        rest, rpc = free_port(), free_port()
        # RocksDB's block cache and write buffers come out of managed memory: a TaskManager as a small pod would have.
        cluster = LocalCluster(state_dir=state, settings=ClusterSettings(
            rest_port=rest, rpc_port=rpc, taskmanagers=1, slots_per_taskmanager=2, taskmanager_memory=args.tm_memory,
            taskmanager_managed_memory=args.tm_managed_memory), die_with_parent=True)  # fmt: skip
        # The REST API's metrics are what the JobManager last fetched from the TaskManager (every 10 s by default):
        # the sources' numRecordsOut read a sample late; fetch every second.
        config = cluster.flink_config
        cluster.flink_config = lambda: config() | {"metrics.fetcher.update-interval": 1000}  # type: ignore[method-assign]
        job_id = None
        samples: list[Sample] = []
        try:
            cluster.start(timeout_s=180)
            run = uuid.uuid4().hex[:6]
            topics = {k: {"name": f"{k}-{run}", "partitions": 2} for k in ("requests", "market", "behaviour", "priced",
                                                                           "dead_letters", "catalogue")}  # fmt: skip
            settings = load_settings(
                state_dir=state, kafka={"bootstrap_servers": broker.bootstrap, "topics": topics},
                job={"consumer_group": f"soak-job-{run}", "transactional_id_prefix": f"soak-{run}"},
                models={"registry_dir": str(state / "registry"), "device": "cpu"}, recommend={"enabled": False},
            )  # fmt: skip
            create_topics(settings.kafka)
            mix = Mix(settings, args.seed, args.users)
            producer = Producer(settings.kafka.client_config() | {"linger.ms": 50, "queue.buffering.max.messages": 2_000_000})
            catalogue(settings, producer, clock.event_ms() - 20 * 60_000, args.seed)
            config = write_config_file(settings, state / "pricing.toml", job=[
                "parallelism = 2", 'delivery_guarantee = "exactly-once"', 'state_backend = "rocksdb"',
                f"checkpoint_interval_ms = {int(args.checkpoint_s * 1000)}", "idle_timeout_ms = 2000",
            ], extra=[f'[models]\nregistry_dir = "{state / "registry"}"\ndevice = "cpu"', "[recommend]\nenabled = false",
                      f"[cluster]\nrest_port = {rest}\nrpc_port = {rpc}"])  # fmt: skip
            answers = Answers(settings, clock)
            answers.start()
            submitted = subprocess.run([sys.executable, "-m", "pricing.cli", "--config", str(config), "job", "run",
                                        "--jobmanager", cluster.settings.rest_address], capture_output=True, text=True,
                                       timeout=300, env=command_env(), stdin=subprocess.DEVNULL)  # fmt: skip
            if submitted.returncode != 0:
                raise RuntimeError(submitted.stderr[-3000:])
            job_id = submitted.stdout.split("job ", 1)[1].split()[0]
            log(f"job {job_id} runs (model {version})")
            steps: list[tuple[float, float, int]] = []  # (offered events/s, read events/s, unread at the end)
            paced = Paced(settings, mix, 0.0, clock)
            paced.sent = 2 * N_PRODUCTS  # the catalogue's records, which the job reads too

            def read() -> int:
                return records_read(cluster, job_id, wait=paced.run_for)

            if not args.rate:
                max_eps = ramp(paced, answers, read, args, steps)
            else:
                max_eps = args.rate / args.load
            max_rps = max_eps / EVENTS_PER_REQUEST
            rate = args.rate or args.load * max_eps
            paced.rate = rate
            deadline = time.monotonic() + 300
            while not answers.ids:  # (with --rate there was no ramp) the job's start is part of the drain, not the soak
                if time.monotonic() > deadline:
                    raise RuntimeError("the job answered nothing in 5 minutes")
                paced.run_for(2)
            drain_until = time.monotonic() + 900
            while (unread := paced.sent - read()) > rate * args.checkpoint_s:
                if time.monotonic() > drain_until:
                    raise RuntimeError(f"the ramp's backlog did not drain in 15 minutes ({unread:,} records unread)")
                log(f"  draining the ramp's backlog at {rate:,.0f} events/s: {unread:,} records unread")
                paced.run_for(10)  # the soak's traffic already, so that event time moves on
            log(f"backlog drained ({paced.sent - read():,} records unread)")
            inputs = [settings.kafka.topics.requests.name, settings.kafka.topics.behaviour.name, settings.kafka.topics.market.name]
            watch = LagWatch(settings, inputs, 2, lambda: mix.requests - len(answers.ids))
            watch.start()
            soak_start = time.monotonic()
            answers.take_delays()  # the drain's answers are not the soak's
            sent_before, read_before, answered_before, t_before = paced.sent, read(), len(answers.ids), soak_start
            log(f"soaking at {rate:,.0f} events/s for {args.minutes:g} minutes")
            while time.monotonic() - soak_start < args.minutes * 60:
                paced.run_for(args.sample_s)
                t, now_read = time.monotonic(), read()
                checkpoints, size, checkpoint_s, slowest = last_checkpoint(cluster, job_id)
                priced_s, committed_s = answers.take_delays()
                lag, lag_max, backlog, backlog_max = watch.take()
                job = cluster.rest_json(f"/jobs/{job_id}")
                if job["state"] in ENDED:
                    raise RuntimeError(f"the job ended: {job['state']}")
                sample = Sample(
                    t_s=round(t - soak_start, 1), offered_eps=round((paced.sent - sent_before) / (t - t_before), 1),
                    read_eps=round((now_read - read_before) / (t - t_before), 1),
                    answered_rps=round((len(answers.ids) - answered_before) / (t - t_before), 1),
                    backlog_requests=round(backlog, 1), unread=paced.sent - now_read, consumer_lag=round(lag, 1),
                    consumer_lag_max=lag_max, backlog_requests_max=backlog_max,
                    checkpoints=checkpoints, checkpoint_mb=round(size, 2),
                    rss_mb={k: round(v, 1) for k, v in processes(cluster, broker).items()},
                    checkpoint_s=round(checkpoint_s, 2), slowest_vertex=slowest,
                    priced_s=round(priced_s, 2), committed_s=round(committed_s, 2),
                )  # fmt: skip
                samples.append(sample)
                sent_before, read_before, answered_before, t_before = paced.sent, now_read, len(answers.ids), t
                log(f"  {sample.t_s:6.0f}s offered {sample.offered_eps:7,.0f} ev/s, read {sample.read_eps:7,.0f} ev/s, "
                    f"answered {sample.answered_rps:5,.0f} req/s, unread {sample.unread:6,}, open {sample.backlog_requests:5,.0f} "
                    f"(max {sample.backlog_requests_max:,}) req, committed lag {sample.consumer_lag:7,.0f} "
                    f"(max {sample.consumer_lag_max:,}), checkpoint {sample.checkpoint_mb:6.1f} MB in "
                    f"{sample.checkpoint_s:.1f}s (slowest {sample.slowest_vertex}), priced after {sample.priced_s:.2f}s, "
                    f"committed after {sample.committed_s:.2f}s, RSS "
                    + ", ".join(f"{k} {v:,.0f}" for k, v in sample.rss_mb.items()))  # fmt: skip
            watch.stop()
            paced.flush()
            total_requests = mix.requests
            deadline = time.monotonic() + 300
            while len(answers.ids) < total_requests and time.monotonic() < deadline:
                time.sleep(2)
            time.sleep(args.checkpoint_s + 2)  # room for a duplicate to show
            answers.stop()
            lost = total_requests - len(answers.ids)
            duplicated = answers.duplicates
        finally:
            if job_id is not None and cluster.status().rest_answers:
                if any(j["jid"] == job_id and j["state"] not in ENDED for j in jobs(cluster.rest_url)):
                    cancel_job(cluster.rest_url, job_id)
            cluster.stop()
            broker.stop()
    judged = [s for s in samples if s.t_s > args.warmup * 60]
    floor_lag = 2 * rate * args.checkpoint_s
    checks = [
        ("events offered per second", [s.offered_eps for s in judged], 0.0),
        ("events read per second", [s.read_eps for s in judged], 0.0),
        ("requests answered per second", [s.answered_rps for s in judged], 0.0),
        ("records not yet read", [float(s.unread) for s in judged], floor_lag / 2),
        ("consumer lag, committed offsets (messages)", [float(s.consumer_lag) for s in judged], floor_lag),
        ("requests produced, not yet answered", [float(s.backlog_requests) for s in judged], floor_lag / EVENTS_PER_REQUEST),
        ("request to priced, median (s)", [s.priced_s for s in judged], 1.0),
        ("priced to committed, median (s)", [s.committed_s for s in judged], args.checkpoint_s),
        ("last checkpoint (MB)", [s.checkpoint_mb for s in judged], 0.0),
        *[(f"RSS {name} (MB)", [s.rss_mb.get(name, 0.0) for s in judged], 0.0)
          for name in sorted({k for s in judged for k in s.rss_mb})],
    ]  # fmt: skip
    rows = []
    judged_t = [s.t_s for s in judged]
    for name, series, floor in checks:
        first, last, change, ok = _flat(series, floor=floor)
        rows.append(f"| {name} | {first:,.1f} | {last:,.1f} | {change:+.1%} | {_trend(judged_t, series):+.1%} | "
                    f"{'flat' if ok else '**not flat**'} |")
    lines = [
        f"# Soak on the standalone cluster, RocksDB ({date.today().isoformat()})",
        "",
        f"`benchmarks/soak.py --minutes {args.minutes:g} --warmup {args.warmup:g} "
        + (f"--rate {args.rate:g}" if args.rate else f"--load {args.load:g}")
        + (f" --time-scale {args.time_scale:g}" if args.time_scale != 1 else "")
        + (f" --users {args.users}" if args.users != N_USERS else "") + "` on a "
        f"{platform.machine()} machine with {os.cpu_count()} cores, {(time.monotonic() - started) / 60:.0f} minutes in all: "
        f"one JobManager, one TaskManager with two slots ({args.tm_memory}, managed {args.tm_managed_memory}), "
        "parallelism 2, exactly-once, "
        f"checkpoints every {args.checkpoint_s:g} s (incremental, RocksDB), the model of the production architecture "
        f"({'the given one' if args.model else 'untrained'}), recommendations off.",
        "",
        (f"Maximum sustained rate (what the sources read in the first saturated step, {args.step_s:g} s steps): "
         f"**{max_eps:,.0f} events/s, {max_rps:,.0f} priced requests/s**. " if steps else "")
        + f"Soaked at {rate:,.0f} events/s" + (f" ({rate / max_eps:.0%})" if steps else " (a given rate; no ramp in this run)")
        + (f", event time {args.time_scale:g} times faster than the wall clock (the 24-hour windows full after "
           f"{24 * 60 / args.time_scale:.1f} minutes)" if args.time_scale != 1 else ", event time = now")
        + f", for {args.minutes:g} minutes; judged after "
        f"{args.warmup:g} minutes of warm-up, the last quarter's mean against the first quarter's ({len(judged)} samples "
        f"every {args.sample_s:g} s).",
        "",
        "| series | first quarter | last quarter | change | least-squares trend | verdict (change within 10%) |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"Requests: {total_requests:,} produced, **{lost:,} lost, {duplicated:,} duplicated** (read_committed, by "
        "request id). Lag and backlog count as flat when their last quarter stays below two checkpoint intervals of "
        f"traffic ({floor_lag:,.0f} messages, {floor_lag / EVENTS_PER_REQUEST:,.0f} requests): exactly-once commits "
        "offsets and output at checkpoints only.",
        "",
        *(["Steps to find the maximum (events/s offered and read by the job's sources over each step's second half, "
            "records unread at its end):", "", "| offered ev/s | read ev/s | unread |", "|---:|---:|---:|",
            *[f"| {o:,.0f} | {r:,.0f} | {u:,} |" for o, r, u in steps], ""] if steps else []),
        "Samples (every fourth):",
        "",
        "| t (s) | offered ev/s | read ev/s | answered req/s | unread | open req (mean, max) | committed lag (mean, max) "
        "| request to priced, priced to committed (s, median) | checkpoint (MB, s) | RSS (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[f"| {s.t_s:.0f} | {s.offered_eps:,.0f} | {s.read_eps:,.0f} | {s.answered_rps:,.0f} | {s.unread:,} | "
          f"{s.backlog_requests:,.0f}, {s.backlog_requests_max:,} | {s.consumer_lag:,.0f}, {s.consumer_lag_max:,} | "
          f"{s.priced_s:.2f}, {s.committed_s:.2f} | {s.checkpoint_mb:.1f}, {s.checkpoint_s:.1f} | "
          f"{', '.join(f'{k} {v:,.0f}' for k, v in s.rss_mb.items())} |" for s in samples[::4]],
    ]  # fmt: skip
    report = "\n".join(lines) + "\n"
    print(report)
    if args.report:
        args.report.write_text(report)
        args.report.with_suffix(".jsonl").write_text("".join(json.dumps(asdict(s)) + "\n" for s in samples))
    ok = lost == 0 and duplicated == 0 and all(_flat(series, floor=floor)[3] for _, series, floor in checks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
