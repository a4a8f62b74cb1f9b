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

``--promote-at S`` measures a model promotion: the job serves a real TensorFlow SavedModel from a registry
of its own (``--model``: a SavedModel folder, a registry version or a registry; default: an untrained
``DemandNet`` of the production architecture, exported in a subprocess, which loads exactly like a trained
one), watched every second, and S seconds into each measured load a copy of that SavedModel is published and
promoted as a new version. Every product gets a list price and a unit cost first, so that the model (not
the fallback) prices every request. The job loads and validates it off the hot path and swaps it in. The
**promotion window** runs from the promotion to the first answer that names the new version; the step
reports p50/p99 of the requests produced inside it against the same step's other measured requests.
The Python worker runs in this process (PyFlink's loopback mode), as does the client, so a stall of
the worker's interpreter during the load would also delay the client's clock readings: an upper bound.
``--inline-load`` puts the load back on the batch path (the watcher's synchronous ``check`` in place of
``poll``; possible because the worker runs in this process), for comparison with the behaviour before.

    .venv/bin/python benchmarks/latency.py --modes arrival --guarantees at-least-once --loads 150 \\
        --seconds 60 --promote-at 20
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
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
from pricing_udfs.features import FEATURE_SPEC  # noqa: E402
from pricing_udfs.model.registry import Registry  # noqa: E402
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
        self.versions: dict[str, str] = {}  # request id -> the model version that priced it
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
                    rid = msg.key().decode()
                    if rid not in self.answered:
                        self.answered[rid] = time.time()
                        decoded = serde.decode(Contract.PRICED_EVENT, msg.value())
                        self.versions[rid] = decoded.record["model_version"] if decoded.ok else "?"
        consumer.close()

    def _produce(self, contract: Contract, topic: str, rec: dict, key: str | None = None) -> None:
        """Produce ``rec`` (key: ``key``, else its product id), waiting while the producer's queue is full."""
        while True:
            try:
                self.producer.produce(topic, serde.encode(contract, rec), key=(key or rec["product_id"]).encode(),
                                      timestamp=rec["event_time"])
                return
            except BufferError:
                self.producer.poll(0.01)

    def prime(self) -> None:
        """A list price and a unit cost for every product, so that the model prices every request (without a
        unit cost the policy's fallback would, and the model would never be called)."""
        now_ms = int(time.time() * 1000) - 1_000
        for i in range(N_PRODUCTS):
            for kind, value in (("list_price", 1_000), ("cost", 600)):
                self._produce(Contract.MARKET_EVENT, self.settings.kafka.topics.market.name, {
                    "product_id": f"lp{i}", "kind": kind, "competitor_id": None, "value": value, "currency": "EUR",
                    "event_time": now_ms})  # fmt: skip
        self.producer.flush()

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


@dataclass
class Promotion:
    """One load step with a model promotion in it (``--promote-at``)."""

    mode: str
    guarantee: str
    offered: float
    new_version: str
    promoted_after_s: float  # into the step
    window_s: float  # promotion -> first answer naming the new version (nan: never seen)
    in_window: int  # measured requests produced inside the window
    in_window_p50_ms: float
    in_window_p99_ms: float
    in_window_max_ms: float
    outside: int  # the step's other measured requests
    outside_p50_ms: float
    outside_p99_ms: float
    outside_max_ms: float


class Promoter:
    """Publishes and promotes a copy of ``model_dir`` into ``registry`` at a given time (a new version)."""

    def __init__(self, registry: Registry, model_dir: Path) -> None:
        self.registry = registry
        self.model_dir = model_dir
        self.promoted: list[tuple[float, str]] = []  # (wall time, version)
        self._copies = 0

    def publish(self) -> str:
        self._copies += 1
        version = self.registry.publish(self.model_dir, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                                        metrics={}, extra={"benchmark_copy": self._copies}, promote=True).version  # fmt: skip
        return version

    def at(self, when: float) -> threading.Thread:
        def run() -> None:
            time.sleep(max(0.0, when - time.time()))
            version = self.publish()
            self.promoted.append((time.time(), version))
            print(f"promoted {version}", flush=True)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


def _promotion(settings: Settings, client: Client, rate: float, ids: list[str], promoter: Promoter,
               step_start: float) -> Promotion:  # fmt: skip
    at, version = promoter.promoted[-1]
    seen = [client.answered[r] for r, v in client.versions.items() if v == version]
    swapped = min(seen) if seen else float("inf")
    inside = sorted((client.answered[r] - client.sent[r]) * 1000 for r in ids
                    if r in client.answered and at <= client.sent[r] <= swapped)  # fmt: skip
    outside = sorted((client.answered[r] - client.sent[r]) * 1000 for r in ids
                     if r in client.answered and not at <= client.sent[r] <= swapped)  # fmt: skip

    def stats(lat: list[float]) -> list[float]:
        return [round(_pct(lat, q), 1) if lat else float("nan") for q in (0.5, 0.99, 1.0)]

    return Promotion(settings.job.serving_mode, settings.job.delivery_guarantee, rate, version, round(at - step_start, 1),
                     round(swapped - at, 2) if seen else float("nan"), len(inside), *stats(inside), len(outside),
                     *stats(outside))  # fmt: skip


def measure(settings: Settings, loads: list[float], *, seconds: float, warmup: float, drain: float,
            promoter: Promoter | None = None, promote_at: float | None = None,
            promotions: list[Promotion] | None = None) -> list[Step]:  # fmt: skip
    create_topics(settings.kafka)
    result = pricing_job.run(settings, wait=False)
    client = Client(settings)
    steps = []
    try:
        pricing_job.wait_until_running(result)
        client.start()
        if promoter is not None:
            client.prime()
        client.run(20, 8, measure_from=1e9)  # warm the job up (JIT, Python workers, first checkpoint)
        time.sleep(drain)
        for rate in loads:
            step_start = time.time()
            if promoter is not None and promote_at is not None:
                promoter.at(step_start + promote_at)
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
            if promoter is not None and promoter.promoted and promotions is not None:
                promotions.append(_promotion(settings, client, rate, ids, promoter, step_start))
                print(json.dumps(asdict(promotions[-1])), flush=True)
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


def promotion_table(rows: list[Promotion]) -> str:
    lines = ["| mode | guarantee | offered req/s | window s | requests in window | p50 ms | p99 ms | max ms | "
             "requests outside | p50 ms | p99 ms | max ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.mode} | {r.guarantee} | {r.offered:g} | {r.window_s:g} | {r.in_window} | "
                     f"{r.in_window_p50_ms:,.0f} | {r.in_window_p99_ms:,.0f} | {r.in_window_max_ms:,.0f} | {r.outside} | "
                     f"{r.outside_p50_ms:,.0f} | {r.outside_p99_ms:,.0f} | {r.outside_max_ms:,.0f} |")
    return "\n".join(lines)


def export_untrained_model(out: Path) -> Path:
    """A ``DemandNet`` with random weights (the production architecture, normalisation adapted), exported as a
    SavedModel in a subprocess: TensorFlow then initialises first in the job's worker, as in production."""
    code = ("import shutil, sys; sys.path.insert(0, sys.argv[1]); "
            "from tests.pricing_udfs.model.synthetic import untrained_export; "
            "shutil.copytree(untrained_export(), sys.argv[2])")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT), str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def _saved_model(path: Path) -> Path:
    """A SavedModel folder, a registry version folder, or a registry (its ``latest``) -> the SavedModel folder."""
    if (path / "saved_model.pb").is_file():
        return path
    if (path / "model" / "saved_model.pb").is_file():
        return path / "model"
    if (path / "latest").is_file():
        return Registry(path).model_dir()
    raise SystemExit(f"{path}: not a SavedModel, a registry version or a registry with 'latest'")


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
    parser.add_argument("--buffer-timeout-ms", type=int, default=None, help="[job] buffer_timeout_ms (execution.buffer-timeout.interval); default: the job's per-mode default")
    parser.add_argument("--out", type=Path, default=None, help="write steps (JSON lines), table (.md), plot (.png) here")
    parser.add_argument("--promote-at", type=float, default=None,
                        help="promote a new TensorFlow model version this many seconds into each load (see the docstring)")
    parser.add_argument("--model", type=Path, default=None,
                        help="with --promote-at: the SavedModel to serve and promote copies of (default: an untrained "
                        "DemandNet)")
    parser.add_argument("--inline-load", action="store_true",
                        help="with --promote-at: load new versions on the batch path, as before (for comparison)")
    args = parser.parse_args(argv)
    if args.inline_load:
        from pricing_udfs.model.serving import ModelWatcher

        def inline_poll(self: ModelWatcher, recent: object = None) -> list[str]:
            message = self.check(recent)  # type: ignore[arg-type]
            return [message] if message else []

        ModelWatcher.poll = inline_poll  # type: ignore[method-assign]

    state = Path(tempfile.mkdtemp(prefix="pricing-latency-"))
    (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars", target_is_directory=True)
    promoter: Promoter | None = None
    models: dict = {}
    if args.promote_at is not None:
        model_dir = _saved_model(args.model) if args.model else export_untrained_model(state / "untrained-model")
        local = state / "model-source"
        shutil.copytree(model_dir, local)
        promoter = Promoter(Registry(state / "registry"), local)
        first = promoter.publish()
        print(f"serving {first} from {promoter.registry.root}; a new version every load, {args.promote_at:g} s in",
              flush=True)  # fmt: skip
        models = {"registry_dir": str(promoter.registry.root), "watch_interval_s": 1.0, "device": "cpu"}
    promotions: list[Promotion] = []
    broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
    broker.start(fresh=True, timeout_s=90)
    steps: list[Step] = []
    try:
        for mode in args.modes:
            for guarantee in args.guarantees:
                run = uuid.uuid4().hex[:6]
                knobs = {k: v for k, v in {"checkpoint_interval_ms": args.checkpoint_ms,
                                           "python_bundle_size": args.bundle_size,
                                           "python_bundle_time_ms": args.bundle_time_ms,
                                           "buffer_timeout_ms": args.buffer_timeout_ms}.items() if v is not None}
                settings = load_settings(
                    state_dir=state,
                    kafka={"bootstrap_servers": broker.bootstrap, "topics": {
                        name: {"name": f"{name}-{run}", "partitions": 1}
                        for name in ("requests", "market", "behaviour", "priced", "dead_letters")}},
                    job={"serving_mode": mode, "delivery_guarantee": guarantee, "consumer_group": f"latency-{run}",
                         "transactional_id_prefix": f"latency-{run}", "start": "fresh", **knobs},
                    **({"models": models} if models else {}),
                )
                print(f"== {mode}, {guarantee}, checkpoint {settings.job.checkpoint_interval_ms} ms, bundle "
                      f"{settings.job.python_bundle_size} rows / {settings.job.python_bundle_time_ms or 'per-mode default'} ms", flush=True)
                steps += measure(settings, args.loads, seconds=args.seconds, warmup=args.warmup, drain=args.drain,
                                 promoter=promoter, promote_at=args.promote_at, promotions=promotions)
    finally:
        broker.stop()
    print(table(steps))
    if promotions:
        print(promotion_table(promotions))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".jsonl").write_text("".join(json.dumps(asdict(s)) + "\n" for s in steps))
        args.out.with_suffix(".md").write_text(table(steps) + "\n")
        plot(steps, args.out.with_suffix(".png"))
        if promotions:
            args.out.with_name(args.out.name + "-promotion.md").write_text(promotion_table(promotions) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
