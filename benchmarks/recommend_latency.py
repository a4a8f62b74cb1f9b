"""Recommend request -> recommendation latency beside request -> priced latency, and recommend requests/s.

Run by hand (it starts its own broker and one job, a few minutes):

    .venv/bin/python benchmarks/recommend_latency.py                       # arrival, at-least-once
    .venv/bin/python benchmarks/recommend_latency.py --price-rate 50 --loads 2 5 10 20 --seconds 30

One job on the local MiniCluster (parallelism 1, ``serving_mode`` and ``--guarantee`` as given) serves an
untrained ``DemandNet`` of the production architecture (``benchmarks/latency.py``: it loads and scores
exactly like a trained one), so the model, not the fallback, prices every candidate. Every product gets a
list price and a unit cost, and an hour of behaviour (co-views) is written before the job starts, so every
recommend request gets its full ``[recommend] candidates`` (100) and K = ``[policy] grid_size`` (16) prices
each. The price traffic of ``benchmarks/latency.py`` (``--price-rate`` requests/s with background behaviour
and market events) runs throughout; on top, recommend requests (k = 10, a random shopper, no context) at
each offered load in turn. Latency = wall time the answer was read (read_committed) - wall time the request
was produced, for both kinds, over each step after ``--warmup`` seconds.
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

from confluent_kafka import Consumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import N_PRODUCTS, N_USERS, Client, _pct, export_untrained_model  # noqa: E402

from jobs import pricing_job  # noqa: E402
from pricing.broker import LocalBroker, free_port  # noqa: E402
from pricing.config import Settings, load_settings  # noqa: E402
from pricing.jars import PROJECT_ROOT  # noqa: E402
from pricing.topics import create_topics  # noqa: E402
from pricing_udfs import serde  # noqa: E402
from pricing_udfs.features import FEATURE_SPEC  # noqa: E402
from pricing_udfs.model.registry import Registry  # noqa: E402
from pricing_udfs.serde import Contract  # noqa: E402


@dataclass
class Step:
    recommend_offered: float
    recommend_sent: int
    recommend_answered: int
    recommend_per_s: float
    recommend_p50_ms: float
    recommend_p99_ms: float
    mean_items: float
    price_offered: float
    price_answered: int
    price_per_s: float
    price_p50_ms: float
    price_p99_ms: float


class RecommendClient(Client):
    """``Client``'s price traffic, plus recommend requests and a reader of recommendations."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.rec_sent: dict[str, float] = {}
        self.rec_answered: dict[str, tuple[float, int]] = {}
        self._rec_reader = threading.Thread(target=self._read_recommendations, daemon=True)
        self._rec_rng = random.Random(2)

    def start(self) -> None:
        super().start()
        self._rec_reader.start()

    def close(self) -> None:
        super().close()
        self._rec_reader.join(timeout=10)

    def _read_recommendations(self) -> None:
        consumer = Consumer(self.settings.kafka.client_config() | {
            "group.id": f"rec-latency-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "latest",
            "isolation.level": "read_committed", "fetch.wait.max.ms": 5})  # fmt: skip
        consumer.subscribe([self.settings.kafka.topics.recommendations.name])
        while not self._stop.is_set():
            for msg in consumer.consume(500, 0.05):
                if not msg.error():
                    rid = msg.key().decode()
                    if rid not in self.rec_answered:
                        got = serde.decode(Contract.RECOMMENDATION, msg.value())
                        self.rec_answered[rid] = (time.time(), len(got.record["items"]) if got.ok else -1)
        consumer.close()

    def history(self, minutes: int = 60) -> None:
        """An hour of views (sessions of 3 to 6 products per shopper), so that candidates come from co-views."""
        rng = random.Random(3)
        start = int(time.time() * 1000) - minutes * 60_000
        topic = self.settings.kafka.topics.behaviour.name
        for u in range(N_USERS):
            t = start + rng.randrange(minutes * 60_000 - 600_000)
            for j in range(rng.randint(3, 6)):
                self._n += 1
                self._produce(Contract.BEHAVIOUR_EVENT, topic, {
                    "event_id": f"lh{self._n}", "user_id": f"lu{u}", "product_id": f"lp{rng.randrange(N_PRODUCTS)}",
                    "type": "view", "price_seen_minor": 1_000, "currency": "EUR", "quantity": 1, "session_id": "lh",
                    "event_time": t + 30_000 * j, "request_id": None})  # fmt: skip
        self.producer.flush()

    def recommend(self, rate: float, seconds: float, *, measure_from: float) -> list[str]:
        topic = self.settings.kafka.topics.recommend_requests.name
        measured: list[str] = []
        start, k = time.time(), 0
        while (elapsed := time.time() - start) < seconds:
            due = start + k / rate
            if due > time.time():
                time.sleep(max(0.0, due - time.time()))
            now_ms = int(time.time() * 1000)
            rid, user = uuid.uuid4().hex, f"lu{self._rec_rng.randrange(N_USERS)}"
            rec = {"request_id": rid, "user_id": user, "channel": "web", "event_time": now_ms, "k": 10,
                   "context_product_id": None, "context_category": None, "candidate_product_ids": []}
            self._produce(Contract.RECOMMEND_REQUEST, topic, rec, key=rid)
            self.producer.poll(0)
            self.rec_sent[rid] = time.time()
            if elapsed >= measure_from:
                measured.append(rid)
            k += 1
        self.producer.flush()
        return measured


def _latencies(sent: dict[str, float], answered: dict, ids: list[str]) -> list[float]:
    out = []
    for rid in ids:
        got = answered.get(rid)
        if got is not None:
            out.append(((got[0] if isinstance(got, tuple) else got) - sent[rid]) * 1000)
    return sorted(out)


def measure(settings: Settings, loads: list[float], *, price_rate: float, seconds: float, warmup: float,
            drain: float) -> list[Step]:  # fmt: skip
    client = RecommendClient(settings)
    client.prime()
    client.history()
    result = pricing_job.run(settings, wait=False)
    steps = []
    try:
        pricing_job.wait_until_running(result)
        client.start()
        client.run(price_rate, 20.0, measure_from=20.0)  # the Python workers open, TensorFlow loads
        client.recommend(1.0, 10.0, measure_from=10.0)
        for load in loads:
            prices: list[str] = []
            pricer = threading.Thread(target=lambda: prices.extend(client.run(price_rate, seconds, measure_from=warmup)))
            pricer.start()
            recs = client.recommend(load, seconds, measure_from=warmup)
            pricer.join()
            deadline = time.time() + drain
            while time.time() < deadline and not (set(recs) <= set(client.rec_answered) and set(prices) <= set(client.answered)):
                time.sleep(0.2)
            rec_lat = _latencies(client.rec_sent, client.rec_answered, recs)
            price_lat = _latencies(client.sent, client.answered, prices)
            window = seconds - warmup
            items = [client.rec_answered[r][1] for r in recs if r in client.rec_answered]
            step = Step(
                recommend_offered=load, recommend_sent=len(recs), recommend_answered=len(rec_lat),
                recommend_per_s=round(len(rec_lat) / window, 2),
                recommend_p50_ms=round(_pct(rec_lat, 0.5), 1) if rec_lat else float("nan"),
                recommend_p99_ms=round(_pct(rec_lat, 0.99), 1) if rec_lat else float("nan"),
                mean_items=round(statistics.fmean(items), 2) if items else float("nan"),
                price_offered=price_rate, price_answered=len(price_lat), price_per_s=round(len(price_lat) / window, 2),
                price_p50_ms=round(_pct(price_lat, 0.5), 1) if price_lat else float("nan"),
                price_p99_ms=round(_pct(price_lat, 0.99), 1) if price_lat else float("nan"),
            )  # fmt: skip
            print(json.dumps(asdict(step)), flush=True)
            steps.append(step)
    finally:
        client.close()
        result.get_job_client().cancel().result()
    return steps


def table(steps: list[Step]) -> str:
    head = ("| recommend req/s offered | answered/s | p50 ms | p99 ms | items | price req/s | answered/s | p50 ms | p99 ms |\n"
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")  # fmt: skip
    rows = [f"| {s.recommend_offered:g} | {s.recommend_per_s:g} | {s.recommend_p50_ms:.0f} | {s.recommend_p99_ms:.0f} | "
            f"{s.mean_items:.1f} | {s.price_offered:g} | {s.price_per_s:g} | {s.price_p50_ms:.0f} | {s.price_p99_ms:.0f} |"
            for s in steps]  # fmt: skip
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="arrival", choices=["arrival", "event-time"])
    parser.add_argument("--guarantee", default="at-least-once", choices=["at-least-once", "exactly-once"])
    parser.add_argument("--price-rate", type=float, default=50.0)
    parser.add_argument("--loads", nargs="+", type=float, default=[2, 5, 10, 20])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--drain", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=None, help="write steps (JSON lines) and the table (.md) here")
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="pricing-rec-latency-"))
    (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars", target_is_directory=True)
    registry = Registry(state / "registry")
    registry.publish(export_untrained_model(state / "untrained-model"), feature_spec_version=FEATURE_SPEC.version,
                     training_window=(0, 1), metrics={}, promote=True)  # fmt: skip
    broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
    broker.start(fresh=True, timeout_s=90)
    try:
        run = uuid.uuid4().hex[:6]
        settings = load_settings(
            state_dir=state,
            kafka={"bootstrap_servers": broker.bootstrap, "topics": {
                name: {"name": f"{name}-{run}", "partitions": 1}
                for name in ("requests", "market", "behaviour", "priced", "dead_letters", "recommend_requests",
                             "recommendations", "catalogue")}},
            job={"serving_mode": args.mode, "delivery_guarantee": args.guarantee, "consumer_group": f"rec-latency-{run}",
                 "transactional_id_prefix": f"rec-latency-{run}", "start": "fresh"},
            models={"registry_dir": str(registry.root), "device": "cpu"},
        )  # fmt: skip
        create_topics(settings.kafka)
        print(f"== {args.mode}, {args.guarantee}: {settings.recommend.candidates} candidates x K = "
              f"{settings.policy.grid_size} prices per recommend request; {args.price_rate:g} price requests/s beside",
              flush=True)  # fmt: skip
        steps = measure(settings, args.loads, price_rate=args.price_rate, seconds=args.seconds, warmup=args.warmup,
                        drain=args.drain)  # fmt: skip
    finally:
        broker.stop()
    print(table(steps))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".jsonl").write_text("".join(json.dumps(asdict(s)) + "\n" for s in steps))
        args.out.with_suffix(".md").write_text(table(steps) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
