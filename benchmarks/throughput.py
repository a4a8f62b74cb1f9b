"""Throughput of the whole job against the engine's own limit and against what a team would write instead.

    .venv/bin/python -m benchmarks.throughput [--requests 20000] [--backends rocksdb,hashmap]
        [--python-workers loopback,process] [--model PATH] [--per-event 30] [--report benchmarks/throughput_<date>.md]

Run by hand (about 10 minutes). One private broker and one load, benchmarks/feature_stage's traffic mix (1 price
request : 10 behaviour events : 1 market event; product popularity rank^-0.8 over 2,000 products, 20,000 users;
events in event-time order over 6 hours per 20,000 requests) plus a catalogue of list prices and unit costs, in a
full size and a fifth of it with the same density. Every contender reads the same topics:

1. **limit:** the job's own Kafka sources (the same DDL) into a blackhole sink, no Python: what Flink reads here
   (each input read ``--limit-copies`` times in the one job, since one copy reads too fast to time);
2. **the job** (``jobs.pricing_job.build``: decode, pseudonymise, feature windows, the scoring stage with the model
   over K candidates, policy, guardrails, encode, Kafka sink), at-least-once, bounded, for each state backend of
   ``--backends`` and each ``job.python_workers`` of ``--python-workers``;
3. **a hand-written loop**, one process, as a team might write it instead of Flink: a confluent-kafka consumer on
   the input topics merged by timestamp (the oldest head of any partition next, as Kafka Streams does), the
   contracts' fastavro decoder, the spec's 40 features kept in Python dictionaries (deques of event times per
   window, evicted as events arrive), the same scoring stage (model and policy) on
   each poll's requests, the same encoder, a confluent-kafka producer. No pseudonyms, no dead letters, no state
   that survives a crash, no delivery guarantee;
4. **the seed's per-event loop**, briefly: Keras ``model.predict`` on one request's K candidates at a time.

Rates of 1 to 3 are sustained rates: (events of the full load - events of the fifth) / (seconds of the full run -
seconds of the fifth), so that fixed costs (start-up, planning, the model's load) cancel. 4 is requests per second
over ``--per-event`` calls, times the load's events per request. The model is ``--model`` (a SavedModel, a registry
version or a registry) or an untrained ``DemandNet`` (the production architecture; it scores exactly as fast).

A sanity check beside the rates: how many requests each contender priced, and how many of the loop's feature
vectors match the job's (from the priced events' ``features``) within 1e-6; arrival order differs between the
two (Flink interleaves the topics' partitions as it reads them), so a few differ where two events raced.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict, deque
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks import feature_stage
from benchmarks.latency import _saved_model, export_untrained_model
from benchmarks.scoring import K, _catalogue, _keras_per_event
from jobs import pricing_job
from pricing.broker import LocalBroker, free_port
from pricing.config import Settings, load_settings
from pricing.jars import PROJECT_ROOT
from pricing.topics import create_topics
from pricing_udfs import serde, udfs
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.registry import Registry
from pricing_udfs.scoring import ScoringConfig, ScoringStage
from pricing_udfs.serde import Contract

MIN, HOUR = 60_000, 3_600_000
DAY = 24 * HOUR
TYPES = {"view": "views", "add_to_cart": "carts", "purchase": "purchases"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# 3. The hand-written loop
# ----------------------------------------------------------------------------------------------
def _evict(q: deque, oldest: int) -> int:
    """Drop the entries before ``oldest`` (entries are times or (time, ...) tuples); return what stays."""
    while q and (q[0] if isinstance(q[0], int) else q[0][0]) < oldest:
        q.popleft()
    return len(q)


_PRODUCT_WINDOWS = ("views_5m", "carts_5m", "purchases_5m", "views_1h", "carts_1h", "purchases_1h", "views_24h", "purchases_24h")


class _Product:
    def __init__(self) -> None:
        self.list_price = self.cost = 0.0
        self.currency = ""
        self.inventory, self.promotion = -1.0, 0.0
        self.competitor: deque[tuple[int, int]] = deque()  # (time, price), 15 minutes
        self.windows: dict[str, deque[int]] = {name: deque() for name in _PRODUCT_WINDOWS}
        self.bought: deque[tuple[int, int]] = deque()  # (time, quantity), 1 hour: demand velocity
        self.seen = False
        self.category: tuple[int, str] | None = None  # (event time, category) of the latest catalogue entry


class _User:
    def __init__(self) -> None:
        self.windows = {f"{kind}_{w}": deque() for kind in ("views", "carts", "purchases") for w in ("30m", "24h")}
        self.viewed: deque[tuple[int, str]] = deque()  # (time, product), 30 minutes
        self.viewed_count: Counter[str] = Counter()
        self.paid_ratio_sum, self.paid_ratio_n = 0.0, 0
        self.last_purchase: int | None = None
        self.seen = False


_SPANS = {"5m": 5 * MIN, "30m": 30 * MIN, "1h": HOUR, "24h": DAY}


class HandFeatures:
    """The feature spec's 40 features over the events seen so far, in arrival order, in Python dictionaries: how a
    team would write them without a stream processor (windows as deques of event times, evicted on access)."""

    def __init__(self) -> None:
        c = FEATURE_SPEC.constants
        self._tau, self._horizon = c["demand_velocity_tau_ms"], c["demand_velocity_horizon_ms"]
        self._prior, self._weight, self._never = c["price_ratio_prior_mean"], c["price_ratio_prior_weight"], c["never_purchased_secs"]
        self.products: defaultdict[str, _Product] = defaultdict(_Product)
        self.users: defaultdict[str, _User] = defaultdict(_User)
        self.user_product: defaultdict[tuple[str, str, str], deque[int]] = defaultdict(deque)  # 24 hours
        self.user_category: defaultdict[tuple[str, str, str], deque[int]] = defaultdict(deque)  # 24 hours

    def market(self, r: dict[str, Any]) -> None:
        p, kind, t, v = self.products[r["product_id"]], r["kind"], r["event_time"], r["value"]
        p.seen = True
        if kind == "list_price":
            p.list_price, p.currency = float(v), r["currency"]
        elif kind == "cost":
            p.cost = float(v)
        elif kind == "competitor_price":
            p.competitor.append((t, v))
        elif kind == "inventory":
            p.inventory = float(v)
        elif kind == "promotion":
            p.promotion = 1.0 if v > 0 else 0.0

    def catalogue(self, r: dict[str, Any]) -> None:
        p = self.products[r["product_id"]]
        if p.category is None or r["event_time"] >= p.category[0]:
            p.category = (r["event_time"], r["category"])

    def behaviour(self, r: dict[str, Any]) -> None:
        pid, uid, t, kind = r["product_id"], r["user_id"], r["event_time"], TYPES.get(r["type"])
        p, u = self.products[pid], self.users[uid]
        p.seen = u.seen = True
        if kind is None:  # a review: the product and the user are no longer new, nothing is counted
            return
        for w in ("5m", "1h", "24h"):
            if f"{kind}_{w}" in p.windows:
                p.windows[f"{kind}_{w}"].append(t)
        for w in ("30m", "24h"):
            u.windows[f"{kind}_{w}"].append(t)
        self.user_product[uid, pid, kind].append(t)
        if p.category is not None:
            self.user_category[uid, p.category[1], kind].append(t)
        if kind == "views":
            u.viewed.append((t, pid))
            u.viewed_count[pid] += 1
        elif kind == "purchases":
            p.bought.append((t, r["quantity"]))
            u.last_purchase = t if u.last_purchase is None else max(u.last_purchase, t)
            if p.list_price > 0:
                u.paid_ratio_sum += r["price_seen_minor"] / p.list_price
                u.paid_ratio_n += 1

    def request(self, r: dict[str, Any]) -> list[float]:
        pid, uid, t = r["product_id"], r["user_id"], r["event_time"]
        p, u = self.products[pid], self.users[uid]
        pw = {name: _evict(q, t - _SPANS[name.rsplit("_", 1)[1]]) for name, q in p.windows.items()}
        uw = {name: _evict(q, t - _SPANS[name.rsplit("_", 1)[1]]) for name, q in u.windows.items()}
        n_comp = _evict(p.competitor, t - 15 * MIN)
        _evict(p.bought, t - self._horizon)
        while u.viewed and u.viewed[0][0] < t - 30 * MIN:
            _, gone = u.viewed.popleft()
            u.viewed_count[gone] -= 1
            if not u.viewed_count[gone]:
                del u.viewed_count[gone]
        up = {kind: _evict(self.user_product[uid, pid, kind], t - DAY) if (uid, pid, kind) in self.user_product else 0
              for kind in TYPES.values()}  # fmt: skip
        category = p.category[1] if p.category else None
        uc = {kind: (_evict(self.user_category[uid, category, kind], t - DAY)
                     if category is not None and (uid, category, kind) in self.user_category else 0)
              for kind in TYPES.values()}  # fmt: skip
        velocity = sum(q * math.exp(-(t - ti) / self._tau) for ti, q in p.bought) / (self._tau / HOUR)
        ratio = (u.paid_ratio_sum + self._prior * self._weight) / (u.paid_ratio_n + self._weight)
        since = self._never if u.last_purchase is None else min((t - u.last_purchase) / 1000, self._never)
        when = datetime.fromtimestamp(t / 1000, UTC)
        channel = r["channel"]
        values = {
            "list_price_minor": p.list_price, "unit_cost_minor": p.cost,
            "competitor_min_15m_minor": float(min(v for _, v in p.competitor)) if n_comp else 0.0,
            "competitor_mean_15m_minor": statistics.fmean(v for _, v in p.competitor) if n_comp else 0.0,
            "competitor_events_15m": float(n_comp), "inventory": p.inventory, "promotion_active": p.promotion,
            "views_5m": pw["views_5m"], "carts_5m": pw["carts_5m"], "purchases_5m": pw["purchases_5m"],
            "views_1h": pw["views_1h"], "carts_1h": pw["carts_1h"], "purchases_1h": pw["purchases_1h"],
            "conversion_1h": pw["purchases_1h"] / pw["views_1h"] if pw["views_1h"] else 0.0,
            "views_24h": pw["views_24h"], "purchases_24h": pw["purchases_24h"],
            "conversion_24h": pw["purchases_24h"] / pw["views_24h"] if pw["views_24h"] else 0.0,
            "demand_velocity": velocity,
            "user_views_30m": uw["views_30m"], "user_carts_30m": uw["carts_30m"], "user_purchases_30m": uw["purchases_30m"],
            "user_views_24h": uw["views_24h"], "user_carts_24h": uw["carts_24h"], "user_purchases_24h": uw["purchases_24h"],
            "user_price_ratio": ratio, "user_secs_since_purchase": since,
            "user_distinct_products_30m": float(len(u.viewed_count)),
            "user_product_views_24h": up["views"], "user_product_carts_24h": up["carts"],
            "user_product_purchases_24h": up["purchases"],
            "user_category_views_24h": uc["views"], "user_category_carts_24h": uc["carts"],
            "user_category_purchases_24h": uc["purchases"],
            "hour_of_day": float(when.hour), "day_of_week": float(when.weekday()),
            "channel_web": float(channel == "web"), "channel_app": float(channel == "app"),
            "channel_marketplace": float(channel == "marketplace"),
            "is_new_user": 0.0 if u.seen else 1.0, "is_new_product": 0.0 if p.seen else 1.0,
        }  # fmt: skip
        return [float(values[name]) for name in FEATURE_SPEC.names]


def hand_loop(settings: Settings, registry: Path) -> tuple[float, int]:
    """Reads the inputs to their ends (as they were at the start), prices every request; (seconds, priced)."""
    t0 = time.perf_counter()
    topics = settings.kafka.topics
    contracts = {topics.requests.name: Contract.PRICE_REQUEST, topics.market.name: Contract.MARKET_EVENT,
                 topics.behaviour.name: Contract.BEHAVIOUR_EVENT, topics.catalogue.name: Contract.CATALOGUE_ENTRY}  # fmt: skip
    stage = ScoringStage(ScoringConfig(registry_dir=str(registry), device="cpu", policy=settings.policy,
                                       default_price_minor=settings.job.default_price_minor, currency=settings.job.currency))  # fmt: skip
    stage.open()  # loads the model
    consumer = Consumer(settings.kafka.client_config() | {"group.id": uuid.uuid4().hex, "enable.auto.commit": False,
                                                          "fetch.max.bytes": 8_000_000})  # fmt: skip
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    ends: dict[tuple[str, int], int] = {}
    parts = []
    for topic in contracts:
        for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            if high > 0:
                ends[topic, partition] = high
                parts.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
    consumer.assign(parts)
    features, priced = HandFeatures(), 0
    handlers = {Contract.MARKET_EVENT: features.market, Contract.BEHAVIOUR_EVENT: features.behaviour,
                Contract.CATALOGUE_ENTRY: features.catalogue}  # fmt: skip
    # The inputs merged by timestamp (what Kafka Streams does across a task's partitions): the next record is the
    # oldest at the head of any partition, taken only when every partition not yet read to its end has a head.
    buffers: dict[tuple[str, int], deque[Any]] = {tp: deque() for tp in ends}
    fetched: set[tuple[str, int]] = set()  # partitions read to their end
    while len(fetched) < len(ends) or any(buffers.values()):
        for msg in consumer.consume(2_000, timeout=0.5):
            if msg.error():
                continue
            tp = (msg.topic(), msg.partition())
            buffers[tp].append(msg)
            if msg.offset() + 1 >= ends[tp]:
                fetched.add(tp)
        pending: list[tuple[dict[str, Any], list[float]]] = []
        while not any(not buf and tp not in fetched for tp, buf in buffers.items()):
            heads = [(buf[0].timestamp()[1], tp) for tp, buf in buffers.items() if buf]
            if not heads:
                break
            msg = buffers[min(heads)[1]].popleft()
            contract = contracts[msg.topic()]
            decoded = serde.decode(contract, msg.value())
            if not decoded.ok:
                continue
            if contract is Contract.PRICE_REQUEST:
                pending.append((decoded.record, features.request(decoded.record)))
            else:
                handlers[contract](decoded.record)
        if pending:
            priced += len(pending)
            currency = [features.products[r["product_id"]].currency or settings.job.currency for r, _ in pending]
            request = {"request_id": pd.Series([r["request_id"] for r, _ in pending], dtype=object),
                       "user_id": pd.Series([r["user_id"] for r, _ in pending], dtype=object),
                       "product_id": pd.Series([r["product_id"] for r, _ in pending], dtype=object),
                       "channel": pd.Series([r["channel"] for r, _ in pending], dtype=object),
                       "event_time": pd.Series([r["event_time"] for r, _ in pending], dtype=np.int64),
                       "list_currency": pd.Series(currency, dtype=object)}  # fmt: skip
            batch = udfs.request_batch(request, pd.Series([f for _, f in pending]), spec=FEATURE_SPEC)
            decisions = stage.decide(batch)
            encoded = udfs.encode_priced_events(batch, decisions, spec=FEATURE_SPEC, priced_time_ms=int(time.time() * 1000))
            for key, value in zip(batch["product_id"], encoded, strict=True):
                producer.produce(topics.priced.name, value, key=key.encode())
            producer.poll(0)
    producer.flush(60)
    consumer.close()
    stage.close()
    return time.perf_counter() - t0, priced


# ----------------------------------------------------------------------------------------------
# 1. and 2.: Flink jobs
# ----------------------------------------------------------------------------------------------
def limit_job(settings: Settings, copies: int) -> float:
    """The job's Kafka sources (their DDL, ``jobs.pricing_job._source_ddl``) into a blackhole: no Python. Each
    input is read ``copies`` times (by as many sources, one after the other in one job's slot): reading is so fast
    that one copy's full and fifth runs differ by less than the machine's noise."""
    t_env = pricing_job.create_table_env(settings)
    statements = t_env.create_statement_set()
    topics = settings.kafka.topics
    for copy in range(copies):
        for view, topic in (("requests", topics.requests.name), ("market", topics.market.name),
                            ("behaviour", topics.behaviour.name), ("catalogue", topics.catalogue.name)):  # fmt: skip
            name = f"{view}_{copy}"
            t_env.execute_sql(pricing_job._source_ddl(settings, table=f"{name}_src", topic=topic))  # noqa: SLF001
            t_env.execute_sql(f"CREATE TEMPORARY TABLE {name}_sink (v BYTES) WITH ('connector' = 'blackhole')")
            statements.add_insert_sql(f"INSERT INTO {name}_sink SELECT `value` FROM {name}_src")
    t = time.perf_counter()
    statements.execute().wait()
    return time.perf_counter() - t


def full_job(settings: Settings) -> float:
    t_env = pricing_job.create_table_env(settings)
    statements = pricing_job.build(t_env, settings)
    t = time.perf_counter()
    statements.execute().wait()
    return time.perf_counter() - t


def priced_features(settings: Settings, expected: int) -> dict[str, list[float]]:
    """request id -> the served feature vector, from the priced-events topic."""
    consumer = Consumer(settings.kafka.client_config() | {"group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    consumer.subscribe([settings.kafka.topics.priced.name])
    out: dict[str, list[float]] = {}
    deadline = time.monotonic() + 60
    while len(out) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(5_000, timeout=1.0):
            if not msg.error():
                rec = serde.decode(Contract.PRICED_EVENT, msg.value())
                if rec.ok:
                    out[rec.record["request_id"]] = list(rec.record["features"])
    consumer.close()
    return out


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:  # noqa: C901, PLR0915 - one benchmark, top to bottom
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="price requests in the full load (12 events each)")
    parser.add_argument("--backends", default="rocksdb,hashmap",
                        help="state backends of the job, comma-separated: rocksdb, hashmap (the heap) or both")
    parser.add_argument("--python-workers", default="loopback",
                        help="job.python_workers of the job, comma-separated: loopback, process or both")
    parser.add_argument("--model", type=Path, default=None, help="SavedModel, registry version or registry")
    parser.add_argument("--limit-copies", type=int, default=8, help="times the limit job reads each input (default 8)")
    parser.add_argument("--per-event", type=int, default=30, help="requests for the per-event model.predict loop")
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    backends, workers = args.backends.split(","), args.python_workers.split(",")
    if not set(backends) <= {"rocksdb", "hashmap"} or not set(workers) <= {"loopback", "process"}:
        parser.error("--backends takes rocksdb and hashmap, --python-workers loopback and process")
    sizes = {"full": args.requests, "fifth": args.requests // 5}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        state = Path(tmp)
        (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars", target_is_directory=True)
        model_dir = _saved_model(args.model) if args.model else export_untrained_model(state / "untrained-model")
        shutil.copytree(model_dir, state / "model-source")
        registry = Registry(state / "registry")
        version = registry.publish(state / "model-source", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                                   metrics={}, promote=True).version  # fmt: skip
        broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
        broker.start(fresh=True, timeout_s=90)
        seconds: dict[tuple[str, str], float] = {}
        priced: dict[tuple[str, str], int] = {}
        events: dict[str, int] = {}
        try:
            job = {"bounded": True, "delivery_guarantee": "at-least-once", "startup_mode": "earliest-offset",
                   "watermark_out_of_orderness_ms": 5_000, "python_bundle_size": 1_000, "python_bundle_time_ms": 1_000,
                   "restart_attempts": 0}  # fmt: skip
            base: dict[str, Settings] = {}
            for size, requests in sizes.items():
                topics = {k: {"name": f"{k}-{size}", "partitions": 2}
                          for k in ("behaviour", "market", "requests", "dead_letters", "catalogue", "priced")}  # fmt: skip
                base[size] = load_settings(state_dir=state, job=job, kafka={"bootstrap_servers": broker.bootstrap, "topics": topics},
                                           models={"registry_dir": str(registry.root), "version": version, "device": "cpu"},
                                           policy={"grid_size": K})  # fmt: skip
                create_topics(base[size].kafka)
                t = time.perf_counter()
                events[size] = _catalogue(base[size]) + feature_stage._load(  # noqa: SLF001
                    base[size], requests=requests, hours=6 * requests / args.requests, popularity=0.8)
                log(f"loaded {events[size]:,} events ({requests:,} requests) in {time.perf_counter() - t:.0f}s")

            def settings_for(size: str, name: str, **job_update: Any) -> Settings:
                """``base[size]`` with a fresh consumer group and a priced topic of the contender's own."""
                s = _named(base[size], name)
                out = s.model_copy(update={"job": s.job.model_copy(update={"consumer_group": uuid.uuid4().hex, **job_update})})
                create_topics(out.kafka)
                return out

            contenders: list[tuple[str, Any]] = [("limit", lambda s: limit_job(s, args.limit_copies))]
            for backend in backends:
                for worker in workers:
                    contenders.append((f"job-{backend}-{worker}", lambda s: full_job(s)))
            contenders.append(("hand-loop", None))
            warm = settings_for("fifth", "warm-up", state_backend=backends[0])
            t = time.perf_counter()
            full_job(warm)
            log(f"warm-up job (not counted) {time.perf_counter() - t:.1f}s")
            for name, run in contenders:
                for size in sizes:
                    if name.startswith("job-"):
                        _, backend, worker = name.split("-")
                        s = settings_for(size, name, state_backend=backend, python_workers=worker)
                    else:
                        s = settings_for(size, name)
                    if run is None:
                        seconds[name, size], priced[name, size] = hand_loop(s, registry.root)
                    else:
                        seconds[name, size] = run(s)
                        priced[name, size] = len(priced_features(s, sizes[size])) if name != "limit" else 0
                    log(f"  {name:24} {size:5} {seconds[name, size]:6.1f}s, {priced[name, size]:,} priced")
            job_name = f"job-{backends[0]}-{workers[0]}"
            job_vectors = priced_features(_named(base["full"], job_name), sizes["full"])
            loop_vectors = priced_features(_named(base["full"], "hand-loop"), sizes["full"])
            matching = sum(1 for rid, v in loop_vectors.items() if rid in job_vectors
                           and np.allclose(v, job_vectors[rid], rtol=1e-9, atol=1e-6))  # fmt: skip
            differing = Counter(name for rid, v in loop_vectors.items() if rid in job_vectors
                                for name, a, b in zip(FEATURE_SPEC.names, v, job_vectors[rid], strict=True)
                                if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6))  # fmt: skip
            # 4. The seed's per-event loop.
            predict = _keras_per_event(model_dir, len(FEATURE_SPEC.names))
            rng = np.random.default_rng(1)
            feats, prices = rng.uniform(0, 10, (args.per_event, len(FEATURE_SPEC.names))), rng.uniform(500, 5_000, (args.per_event, K))
            predict.predict([feats[:1], prices[:1]], verbose=0)  # the first call builds the graph
            t = time.perf_counter()
            for i in range(args.per_event):
                predict.predict([feats[i : i + 1], prices[i : i + 1]], verbose=0)
            per_event_rps = args.per_event / (time.perf_counter() - t)
        finally:
            broker.stop()
    d_events, d_requests = events["full"] - events["fifth"], sizes["full"] - sizes["fifth"]
    per_request = events["full"] / sizes["full"]
    read = {name: d_events * (args.limit_copies if name == "limit" else 1) for name, _ in contenders}
    rate = {name: read[name] / max(seconds[name, "full"] - seconds[name, "fifth"], 1e-9) for name, _ in contenders}
    rate["per-event"] = per_event_rps * per_request
    labels = {"limit": "1. Kafka sources to a blackhole, no Python (the limit)", "hand-loop": "3. hand-written loop",
              "per-event": "4. per-event `model.predict`"}  # fmt: skip
    for name, _ in contenders:
        if name.startswith("job-"):
            _, backend, worker = name.split("-")
            labels[name] = f"2. the job, {backend}, Python workers: {worker}"
    rows = [f"| {labels[name]} | {rate[name]:,.0f} | {rate[name] / per_request:,.0f} | {rate[name] / rate['limit']:.2f} | "
            f"{rate[name] / rate['hand-loop']:.2f} | "
            + (f"{seconds[name, 'full']:.1f} / {seconds[name, 'fifth']:.1f} | {priced[name, 'full']:,}" if name != "per-event"
               else f"{args.per_event} calls | {args.per_event}") + " |"
            for name in [*[n for n, _ in contenders], "per-event"]]  # fmt: skip
    best_job = max((n for n, _ in contenders if n.startswith("job-")), key=lambda n: rate[n])
    lines = [
        f"# Throughput: the job against its limit and a hand-written loop ({date.today().isoformat()})",
        "",
        f"`benchmarks/throughput.py --requests {args.requests} --backends {args.backends} --python-workers "
        f"{args.python_workers} --limit-copies {args.limit_copies}` on a {platform.machine()} machine with {os.cpu_count()} cores, "
        f"{(time.monotonic() - started) / 60:.0f} minutes in all; the model: "
        f"{'the given one' if args.model else 'an untrained DemandNet (the production architecture)'}, K = {K}. "
        f"Load: {events['full']:,} events ({sizes['full']:,} requests, {per_request:.1f} events per request) and a fifth "
        "of it; sustained = extra events / extra seconds between the two runs (fixed costs cancel).",
        "",
        "| contender | sustained events/s | priced requests/s | / limit | / hand loop | runs (s), full / fifth | priced (full) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"Targets: the job at least 0.5 of the limit (best here: {rate[best_job] / rate['limit']:.2f}, {labels[best_job][3:]}) "
        f"and at least 1 times the hand-written loop ({rate[best_job] / rate['hand-loop']:.2f}).",
        "",
        f"Sanity: of the hand loop's {len(loop_vectors):,} feature vectors, {matching:,} "
        f"({matching / max(len(loop_vectors), 1):.1%}) match the job's ({labels[job_name][3:]}) within 1e-6"
        + (f"; the features that differ most often: " + ", ".join(f"{n} {c:,}" for n, c in differing.most_common(5))
           if differing else "") + ".",
    ]  # fmt: skip
    report = "\n".join(lines) + "\n"
    print(report)
    if args.report:
        args.report.write_text(report)
    return 0


def _named(settings: Settings, name: str) -> Settings:
    """``settings`` reading the priced topic a contender of that name wrote."""
    topics = settings.kafka.topics
    size = topics.priced.name.split("-", 1)[1]
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topics": topics.model_copy(
        update={"priced": topics.priced.model_copy(update={"name": f"priced-{size}-{name}"})})})})


if __name__ == "__main__":
    sys.exit(main())
