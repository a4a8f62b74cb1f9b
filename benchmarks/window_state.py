"""Per-event cost of the feature windows as one product's window fills, on RocksDB: hot against spread.

    .venv/bin/python -m benchmarks.window_state [--small 4000] [--large 24000] [--repeat 2]

Bounded event-time runs of the feature stage (``jobs.features``: decode, every window, featured requests to a
blackhole) on the local MiniCluster with ``state_backend = "rocksdb"``. Each load has ``--small`` or ``--large``
behaviour events inside 24 hours (one request per 10 of them), either all on **one** product (hot) or spread over
**1,000** (spread). The cost of an added event is the extra wall time of the large load over the small one,
divided by the extra events: fixed costs (planning, deployment, JIT) cancel. When a row's cost grows with what its
key's window holds, the hot added events cost more than the spread ones; when it does not, the two match.

``--jars`` runs another build of ``deploy/jvm`` (for example the release before, built with ``mvn -f <its
deploy/jvm/pom.xml> package -Djars.dir=<folder>``), to compare.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

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
    step = (DAY_MS - 3_600_000) // behaviour
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=4_000)
    parser.add_argument("--large", type=int, default=24_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--jars", type=Path, default=PROJECT_ROOT / ".pricing" / "jars",
                        help="the jars folder to run with (another build of deploy/jvm, to compare)")
    args = parser.parse_args(argv)
    loads = {(shape, size): (n, 1 if shape == "hot" else 1_000) for shape in ("hot", "spread")
             for size, n in (("small", args.small), ("large", args.large))}  # fmt: skip
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in loads}
    with tempfile.TemporaryDirectory(prefix="window-state-") as tmp:
        state = Path(tmp)
        (state / "jars").symlink_to(args.jars.resolve())
        broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
        broker.start(fresh=True)
        try:
            job = {"bounded": True, "delivery_guarantee": "at-least-once", "startup_mode": "earliest-offset",
                   "watermark_out_of_orderness_ms": 5_000, "python_bundle_size": 5_000, "python_bundle_time_ms": 1_000,
                   "restart_attempts": 0, "state_backend": "rocksdb"}  # fmt: skip
            datasets = {}
            for (shape, size), (n, products) in loads.items():
                topics = {k: {"name": f"{k}-{shape}-{size}", "partitions": 1}
                          for k in ("behaviour", "market", "requests", "priced", "dead_letters", "catalogue")}  # fmt: skip
                datasets[shape, size] = load_settings(state_dir=state, job=job,
                                                      kafka={"bootstrap_servers": broker.bootstrap, "topics": topics})  # fmt: skip
                create_topics(datasets[shape, size].kafka)
                _load(datasets[shape, size], behaviour=n, products=products)
            for _ in range(args.repeat):
                for key, base in datasets.items():
                    settings = base.model_copy(update={"job": base.job.model_copy(update={"consumer_group": uuid.uuid4().hex})})
                    seconds[key].append(_run(settings, "features"))
                    print(f"  {key[0]:6} {key[1]:5} {seconds[key][-1]:6.1f}s", file=sys.stderr, flush=True)
        finally:
            broker.stop()
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
    report = "\n".join(lines) + "\n"
    print(report)
    if args.report:
        args.report.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
