"""Per-event cost of the feature windows as one product's window fills, on RocksDB: hot against spread.

    .venv/bin/python -m benchmarks.window_state [--small 4000] [--large 24000] [--repeat 2]

Bounded event-time runs of the feature stage (``jobs.features``: decode, every window, featured requests to a
blackhole) on the local MiniCluster with ``state_backend = "rocksdb"``. Each load has ``--small`` or ``--large``
behaviour events inside 24 hours (one request per 10 of them), either all on **one** product (hot) or spread over
**1,000** (spread). The cost of an added event is the extra wall time of the large load over the small one,
divided by the extra events: fixed costs (planning, deployment, JIT) cancel. When a row's cost grows with what its
key's window holds, the hot added events cost more than the spread ones; when it does not, the two match.

``--sizes 1000,10000,100000,1000000`` is the hot-key run instead: one product receives each number of events inside
its 24-hour window, one load per size; the cost per event at a size is the extra wall time over the size before,
divided by the extra events (at the first size: over an empty load of the same shape, a list price only), and the
verdict compares the cost at the largest size with the cost at the smallest.

``--jars`` runs another build of ``deploy/jvm`` (for example the release before, built with ``mvn -f <its
deploy/jvm/pom.xml> package -Djars.dir=<folder>``), to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any, Iterator

from confluent_kafka import Producer

from benchmarks.feature_stage import _run
from pricing.broker import LocalBroker, free_port
from pricing.config import Settings, load_settings
from pricing.jars import PROJECT_ROOT
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract

DAY_MS = 24 * 3_600_000
T0 = 1_767_225_600_000


def _load(settings: Settings, *, behaviour: int, products: int) -> int:
    """``behaviour`` views over 23 hours on ``products`` products, a request every 10th event, a list price each."""
    topics = settings.kafka.topics
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 50, "batch.size": 1_000_000})
    for p in range(products):
        rec = {"product_id": f"p{p}", "kind": "list_price", "competitor_id": None, "value": 1_000, "currency": "EUR",
               "event_time": T0}  # fmt: skip
        producer.produce(topics.market.name, serde.encode(Contract.MARKET_EVENT, rec), key=f"p{p}".encode(), timestamp=T0)
    step = (DAY_MS - 3_600_000) // max(behaviour, 1)
    for i in range(behaviour):
        ts, pid = T0 + 1 + i * step, f"p{i % products}"
        rec = {"event_id": f"e{i}", "user_id": f"u{i % 5_000}", "product_id": pid, "type": "view", "price_seen_minor": 1_000,
               "currency": "EUR", "quantity": 1, "session_id": f"s{i % 5_000}", "event_time": ts, "request_id": None}  # fmt: skip
        producer.produce(topics.behaviour.name, serde.encode(Contract.BEHAVIOUR_EVENT, rec), key=pid.encode(), timestamp=ts)
        if i % 10 == 0:
            req = {"request_id": f"r{i}", "user_id": f"u{i % 5_000}", "product_id": pid, "channel": "web", "event_time": ts}
            producer.produce(topics.requests.name, serde.encode(Contract.PRICE_REQUEST, req), key=pid.encode(), timestamp=ts)
        if i % 20_000 == 0:
            producer.poll(0)
    producer.flush(60)
    return behaviour


@contextlib.contextmanager
def _private_broker(args: argparse.Namespace) -> Iterator[tuple[Path, LocalBroker]]:
    """A temporary state folder with ``args.jars`` and a broker of its own, started (stopped by the caller)."""
    with tempfile.TemporaryDirectory(prefix="window-state-") as tmp:
        state = Path(tmp)
        (state / "jars").symlink_to(args.jars.resolve())
        broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
        broker.start(fresh=True)
        try:
            yield state, broker
        finally:
            broker.stop()


def _report(lines: list[str], path: Path | None) -> None:
    """Prints the report, and writes it to ``path`` when given."""
    report = "\n".join(lines) + "\n"
    print(report)
    if path:
        path.write_text(report)


def _time_runs(datasets: dict[Any, Settings], repeat: int) -> dict[Any, list[float]]:
    """Seconds of each dataset's bounded feature-stage run (a fresh consumer group each time), ``repeat`` times."""
    seconds: dict[Any, list[float]] = {key: [] for key in datasets}
    for _ in range(repeat):
        for key, base in datasets.items():
            settings = base.model_copy(update={"job": base.job.model_copy(update={"consumer_group": uuid.uuid4().hex})})
            seconds[key].append(_run(settings, "features"))
            print(f"  {key} {seconds[key][-1]:7.1f}s", file=sys.stderr, flush=True)
    return seconds


def _bounded_job(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[job]`` settings of every run: bounded, RocksDB, the windows of ``--serving-mode``."""
    return {"bounded": True, "delivery_guarantee": "at-least-once", "startup_mode": "earliest-offset",
            "watermark_out_of_orderness_ms": 5_000, "python_bundle_size": 5_000, "python_bundle_time_ms": 1_000,
            "restart_attempts": 0, "state_backend": "rocksdb", "serving_mode": args.serving_mode}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=4_000)
    parser.add_argument("--large", type=int, default=24_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--jars", type=Path, default=PROJECT_ROOT / ".pricing" / "jars",
                        help="the jars folder to run with (another build of deploy/jvm, to compare)")
    parser.add_argument("--serving-mode", default="event-time", choices=["event-time", "arrival"],
                        help="the windows measured: event-time (Windowed* functions, default) or arrival (Arrival*)")
    parser.add_argument("--sizes", default=None, help="the hot-key run: events in one product's window, comma-separated")
    args = parser.parse_args(argv)
    if args.sizes:
        return hot_key(args, [int(x) for x in args.sizes.split(",")])
    loads = {(shape, size): (n, 1 if shape == "hot" else 1_000) for shape in ("hot", "spread")
             for size, n in (("small", args.small), ("large", args.large))}  # fmt: skip
    with _private_broker(args) as (state, broker):
        job = _bounded_job(args)
        datasets = {}
        for (shape, size), (n, products) in loads.items():
            topics = {k: {"name": f"{k}-{shape}-{size}", "partitions": 1}
                      for k in ("behaviour", "market", "requests", "priced", "dead_letters", "catalogue")}  # fmt: skip
            datasets[shape, size] = load_settings(state_dir=state, job=job,
                                                  kafka={"bootstrap_servers": broker.bootstrap, "topics": topics})  # fmt: skip
            create_topics(datasets[shape, size].kafka)
            _load(datasets[shape, size], behaviour=n, products=products)
        seconds = _time_runs(datasets, args.repeat)
    best = {k: min(v) for k, v in seconds.items()}
    added = (args.large - args.small) * 1.1  # behaviour events and their requests
    per_event = {shape: (best[shape, "large"] - best[shape, "small"]) / added * 1e6 for shape in ("hot", "spread")}
    lines = [
        f"# Window state: per-event cost as one product's window fills ({date.today().isoformat()})",
        "",
        f"`benchmarks/window_state.py --small {args.small} --large {args.large} --repeat {args.repeat}` on a "
        f"{platform.machine()} machine with 2 cores; RocksDB, event time, the feature stage, best of {args.repeat}.",
        "",
        "| load | small (s) | large (s) | µs per added event |",
        "|---|---:|---:|---:|",
        *[f"| {shape} ({'one product' if shape == 'hot' else '1,000 products'}) | {best[shape, 'small']:.1f} | "
          f"{best[shape, 'large']:.1f} | {per_event[shape]:,.0f} |" for shape in ("hot", "spread")],
        "",
        f"Hot / spread: **{per_event['hot'] / per_event['spread']:.1f}x** (1.0: a row's cost does not depend on what "
        "its key's window holds).",
    ]  # fmt: skip
    _report(lines, args.report)
    return 0


def hot_key(args: argparse.Namespace, sizes: list[int]) -> int:
    """One product, ``sizes`` events in its 24-hour window (and 0, for the fixed costs); µs per event at each size."""
    sizes = sorted(set(sizes))
    # A step of a few thousand events is a fraction of a second of work, inside the runs' noise (about 1 s): the
    # verdict compares the largest size with the smallest size reached by a step of at least 9,000 added events.
    base = next((n for n, b in zip(sizes, [0, *sizes], strict=False) if n - b >= 9_000), sizes[-1])
    if base == sizes[-1]:
        raise SystemExit(f"--sizes {','.join(map(str, sizes))}: the verdict needs a size reached by a step of at least "
                         "9,000 events and a larger one after it (for example 10000,20000,40000)")
    with _private_broker(args) as (state, broker):
        job = _bounded_job(args)
        datasets = {}
        for n in [0, *sizes]:
            topics = {k: {"name": f"{k}-hot-{n}", "partitions": 1}
                      for k in ("behaviour", "market", "requests", "priced", "dead_letters", "catalogue")}  # fmt: skip
            datasets[n] = load_settings(state_dir=state, job=job, kafka={"bootstrap_servers": broker.bootstrap, "topics": topics})
            create_topics(datasets[n].kafka)
            started = time.monotonic()
            _load(datasets[n], behaviour=n, products=1)
            print(f"  loaded {n:,} events in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
        _time_runs({"warm-up (not counted)": datasets[0]}, 1)  # the first run in a process pays class loading and JIT
        seconds = _time_runs(datasets, args.repeat)
    best = {n: min(v) for n, v in seconds.items()}
    per_event, before = {}, 0
    for n in sizes:
        per_event[n] = (best[n] - best[before]) / ((n - before) * 1.1) * 1e6  # behaviour events and their requests
        before = n
    ratio = per_event[sizes[-1]] / per_event[base]
    lines = [
        f"# Window state: the hot-key run ({date.today().isoformat()})",
        "",
        f"`benchmarks/window_state.py --sizes {','.join(map(str, sizes))} --repeat {args.repeat} --serving-mode "
        f"{args.serving_mode}` on a {platform.machine()} machine with {os.cpu_count()} cores; RocksDB, the "
        f"{args.serving_mode} windows, the feature stage (decode, "
        "every window, featured requests to a blackhole), bounded runs on the local MiniCluster, best of "
        f"{args.repeat}. One product receives N behaviour events (and a request every 10th) inside its 24-hour window; "
        "the cost per event at N is the extra wall time over the size before, divided by the extra events.",
        "",
        "| events in the window | run (s) | µs per event (added since the size before) |",
        "|---:|---:|---:|",
        f"| 0 (list price only) | {best[0]:.1f} | |",
        *[f"| {n:,} | {best[n]:.1f} | {per_event[n]:,.0f} |" for n in sizes],
        "",
        f"Cost per event at {sizes[-1]:,} against {base:,}: **{ratio:.2f}x** (target: at most 2; the smallest size "
        "compared is the first reached by a step of at least 9,000 events: smaller steps are a fraction of a second "
        "of work, inside the runs' noise).",
    ]  # fmt: skip
    _report(lines, args.report)
    return 0 if ratio <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
