"""Request -> priced latency as a client sees it, by offered load, serving mode and delivery guarantee.

Run by hand (it starts its own broker and jobs, a few minutes):

    .venv/bin/python benchmarks/latency.py                          # the full matrix, table + plot
    .venv/bin/python benchmarks/latency.py --modes arrival --guarantees at-least-once --loads 150 \\
        --bundle-time-ms 200                                        # one knob

For each (mode, guarantee) one job runs on the local MiniCluster (parallelism 1). A client of its own
produces price requests at each offered load in turn (Kafka timestamp = event time = now), with
background behaviour events at a third of the request rate and market events at 1/150 of it, and
reads priced-events with ``read_committed`` (exactly-once output is visible at checkpoints; at-least-once
output at once). Latency = the wall time the priced event was read - the wall time its request was
produced, both on this machine. Each load runs ``--seconds``; the first ``--warmup`` of them are not
measured. A load is saturated when the answered rate falls behind the offered rate or latency keeps
growing; requests still unanswered ``--drain`` seconds after a step count as lost for that step.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import pricing_job  # noqa: E402
from pricing.broker import LocalBroker, free_port  # noqa: E402
from pricing.config import Settings, load_settings  # noqa: E402
from pricing.jars import PROJECT_ROOT  # noqa: E402
from pricing.topics import create_topics  # noqa: E402
from pricing_udfs import serde  # noqa: E402
from pricing_udfs.serde import Contract  # noqa: E402

N_PRODUCTS, N_USERS = 200, 2_000


@dataclass
class Step:
    mode: str
    guarantee: str
    offered: float
    sent: int
    answered: int
    answered_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class Client:
    """Produces paced traffic and timestamps every answer it reads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer(settings.kafka.client_config() | {"linger.ms": 0})
        self.sent: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._rng = random.Random(1)
        self._n = 0

    def start(self) -> None:
        self._reader.start()

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=10)

    def _read(self) -> None:
        consumer = Consumer(self.settings.kafka.client_config() | {
            "group.id": f"latency-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "latest",
            "isolation.level": "read_committed", "fetch.wait.max.ms": 5})
        consumer.subscribe([self.settings.kafka.topics.priced.name])
        while not self._stop.is_set():
            for msg in consumer.consume(500, 0.05):
                if not msg.error():
                    self.answered.setdefault(msg.key().decode(), time.time())
        consumer.close()

    def _produce(self, contract: Contract, topic: str, rec: dict) -> None:
        while True:
            try:
                self.producer.produce(topic, serde.encode(contract, rec), key=rec["product_id"].encode(),
                                      timestamp=rec["event_time"])
                return
            except BufferError:
                self.producer.poll(0.01)

    def run(self, rate: float, seconds: float, *, measure_from: float) -> list[str]:
        """Offer ``rate`` requests/s for ``seconds``; returns the ids sent after ``measure_from`` seconds."""
        topics = self.settings.kafka.topics
        measured: list[str] = []
        start = time.time()
        k = 0
        behaviour_due = market_due = 0.0
        while (elapsed := time.time() - start) < seconds:
            due = start + k / rate
            if due > time.time():
                time.sleep(max(0.0, due - time.time()))
            now_ms = int(time.time() * 1000)
            product = f"lp{min(int(self._rng.paretovariate(0.8)) - 1, N_PRODUCTS - 1)}"
            user = f"lu{self._rng.randrange(N_USERS)}"
            behaviour_due += 1 / 3
            while behaviour_due >= 1:
                behaviour_due -= 1
                self._n += 1
                self._produce(Contract.BEHAVIOUR_EVENT, topics.behaviour.name, {
                    "event_id": f"le{self._n}", "user_id": user, "product_id": product,
                    "type": self._rng.choice(["view", "view", "view", "add_to_cart", "purchase"]),
                    "price_seen_minor": 1_000, "currency": "EUR", "quantity": 1, "session_id": "ls",
                    "event_time": now_ms, "request_id": None})
            market_due += 1 / 150
            while market_due >= 1:
                market_due -= 1
                self._produce(Contract.MARKET_EVENT, topics.market.name, {
                    "product_id": product, "kind": self._rng.choice(["competitor_price", "list_price", "inventory"]),
                    "competitor_id": "c1", "value": self._rng.randint(900, 1100), "currency": "EUR",
                    "event_time": now_ms})
            rid = uuid.uuid4().hex
            self._produce(Contract.PRICE_REQUEST, topics.requests.name, {
                "request_id": rid, "user_id": user, "product_id": product, "channel": "web", "event_time": now_ms})
            self.producer.poll(0)
            self.sent[rid] = time.time()
            if elapsed >= measure_from:
                measured.append(rid)
            k += 1
        self.producer.flush()
        return measured


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def measure(settings: Settings, loads: list[float], *, seconds: float, warmup: float, drain: float) -> list[Step]:
    create_topics(settings.kafka)
    result = pricing_job.run(settings, wait=False)
    client = Client(settings)
    steps = []
    try:
        pricing_job.wait_until_running(result)
        client.start()
        client.run(20, 8, measure_from=1e9)  # warm the job up (JIT, Python workers, first checkpoint)
        time.sleep(drain)
        for rate in loads:
            ids = client.run(rate, seconds, measure_from=warmup)
            deadline = time.time() + drain
            while time.time() < deadline and any(r not in client.answered for r in ids):
                time.sleep(0.1)
            lat = sorted((client.answered[r] - client.sent[r]) * 1000 for r in ids if r in client.answered)
            span = client.sent[ids[-1]] - client.sent[ids[0]] if len(ids) > 1 else 1.0
            answered_in_span = sum(1 for r in ids if r in client.answered
                                   and client.answered[r] <= client.sent[ids[-1]])
            step = Step(settings.job.serving_mode, settings.job.delivery_guarantee, rate, len(ids), len(lat),
                        round(answered_in_span / span, 1),
                        *(round(_pct(lat, q), 1) if lat else float("nan") for q in (0.5, 0.95, 0.99, 1.0)))
            steps.append(step)
            print(json.dumps(asdict(step)), flush=True)
            if not lat or len(lat) < 0.9 * len(ids):
                print(f"saturated at {rate}/s: stopping this series", flush=True)
                break
    finally:
        client.close()
        result.get_job_client().cancel().result()
    return steps


def table(steps: list[Step]) -> str:
    lines = ["| mode | guarantee | offered req/s | answered req/s | p50 ms | p95 ms | p99 ms | max ms | unanswered |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in steps:
        lines.append(f"| {s.mode} | {s.guarantee} | {s.offered:g} | {s.answered_per_s:g} | {s.p50_ms:,.0f} | "
                     f"{s.p95_ms:,.0f} | {s.p99_ms:,.0f} | {s.max_ms:,.0f} | {s.sent - s.answered} |")
    return "\n".join(lines)


def plot(steps: list[Step], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, q in zip(axes, ("p50_ms", "p99_ms")):
        for key in sorted({(s.mode, s.guarantee) for s in steps}):
            series = [s for s in steps if (s.mode, s.guarantee) == key]
            ax.plot([s.offered for s in series], [getattr(s, q) for s in series], marker="o", label=f"{key[0]}, {key[1]}")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (price requests/s)")
        ax.set_title(q.replace("_ms", "") + " request -> priced latency")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms (log scale)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["arrival", "event-time"])
    parser.add_argument("--guarantees", nargs="+", default=["at-least-once", "exactly-once"])
    parser.add_argument("--loads", nargs="+", type=float, default=[50, 150, 300, 600, 1000])
    parser.add_argument("--seconds", type=float, default=14.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--drain", type=float, default=8.0)
    parser.add_argument("--checkpoint-ms", type=int, default=None)
    parser.add_argument("--bundle-size", type=int, default=None)
    parser.add_argument("--bundle-time-ms", type=int, default=None)
    parser.add_argument("--buffer-timeout-ms", type=int, default=None, help="execution.buffer-timeout.interval")
    parser.add_argument("--out", type=Path, default=None, help="write steps (JSON lines), table (.md), plot (.png) here")
    args = parser.parse_args(argv)

    if args.buffer_timeout_ms is not None:
        conf = pricing_job._flink_conf

        def with_buffer_timeout(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            return conf(*a, **kw) | {"execution.buffer-timeout.interval": f"{args.buffer_timeout_ms} ms"}

        pricing_job._flink_conf = with_buffer_timeout
    state = Path(tempfile.mkdtemp(prefix="pricing-latency-"))
    (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars", target_is_directory=True)
    broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
    broker.start(fresh=True, timeout_s=90)
    steps: list[Step] = []
    try:
        for mode in args.modes:
            for guarantee in args.guarantees:
                run = uuid.uuid4().hex[:6]
                knobs = {k: v for k, v in {"checkpoint_interval_ms": args.checkpoint_ms,
                                           "python_bundle_size": args.bundle_size,
                                           "python_bundle_time_ms": args.bundle_time_ms}.items() if v is not None}
                settings = load_settings(
                    state_dir=state,
                    kafka={"bootstrap_servers": broker.bootstrap, "topics": {
                        name: {"name": f"{name}-{run}", "partitions": 1}
                        for name in ("requests", "market", "behaviour", "priced", "dead_letters")}},
                    job={"serving_mode": mode, "delivery_guarantee": guarantee, "consumer_group": f"latency-{run}",
                         "transactional_id_prefix": f"latency-{run}", "start": "fresh", **knobs},
                )
                print(f"== {mode}, {guarantee}, checkpoint {settings.job.checkpoint_interval_ms} ms, bundle "
                      f"{settings.job.python_bundle_size} rows / {settings.job.python_bundle_time_ms or 'per-mode default'} ms", flush=True)
                steps += measure(settings, args.loads, seconds=args.seconds, warmup=args.warmup, drain=args.drain)
    finally:
        broker.stop()
    print(table(steps))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".jsonl").write_text("".join(json.dumps(asdict(s)) + "\n" for s in steps))
        args.out.with_suffix(".md").write_text(table(steps) + "\n")
        plot(steps, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
