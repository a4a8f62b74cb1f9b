"""Feature-stage throughput vs a decode-and-forward passthrough, measured side by side.

    .venv/bin/python benchmarks/feature_stage.py [--requests 20000] [--repeat 2]

Loads one realistic mix into a private Kafka broker (about 10 behaviour events and
1 market event per price request, product popularity ~ rank^-0.8 as in the
simulator, event times in order), then runs two bounded jobs over the same topics, alternating, on the local
MiniCluster:

* passthrough: the job's Kafka sources and Arrow-batch decoders, every decoded row
  forwarded to a blackhole sink;
* features: the same sources and decoders plus the whole feature stage
  (``jobs.features``), featured requests to a blackhole sink.

Both include job start-up, so it is measured too (an empty bounded run) and
subtracted. The output is events/s for each and their ratio; this machine is noisy,
so compare the ratio, not the absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from jobs import pricing_job
from jobs.features import declare_feature_views
from pricing.broker import LocalBroker, free_port
from pricing.config import load_settings
from pricing.jars import PROJECT_ROOT
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.serde import Contract


def _load(settings, *, requests: int, seed: int = 1) -> int:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    topics = settings.kafka.topics
    n_products, n_users = 2_000, 20_000
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 50, "batch.size": 1_000_000})
    t0 = 1_767_225_600_000
    n_beh, n_mkt = requests * 10, requests
    total = requests + n_beh + n_mkt
    times = t0 + np.sort(rng.integers(0, 6 * 3_600_000, total))
    kinds = rng.permutation(np.repeat([0, 1, 2], [requests, n_beh, n_mkt]))
    # Product popularity ~ rank^-0.8, as in the simulator's default scenario (top product ~5%).
    weights = 1.0 / np.arange(1, n_products + 1) ** 0.8
    products = rng.choice(n_products, size=total, p=weights / weights.sum())
    users = rng.integers(0, n_users, total)
    btypes = np.array(["view", "view", "view", "view", "view", "view", "add_to_cart", "add_to_cart", "purchase", "review"])
    mkinds = np.array(["competitor_price", "competitor_price", "inventory", "list_price", "promotion", "cost"])
    for i in range(total):
        ts, pid, uid = int(times[i]), f"p{products[i]}", f"u{users[i]}"
        if kinds[i] == 0:
            topic, contract = topics.requests.name, Contract.PRICE_REQUEST
            rec = {"request_id": f"r{i}", "user_id": uid, "product_id": pid, "channel": "web", "event_time": ts}
        elif kinds[i] == 1:
            topic, contract = topics.behaviour.name, Contract.BEHAVIOUR_EVENT
            rec = {"event_id": f"e{i}", "user_id": uid, "product_id": pid, "type": str(btypes[i % 10]),
                   "price_seen_minor": 1000 + i % 500, "currency": "EUR", "quantity": 1, "session_id": f"s{users[i]}",
                   "event_time": ts, "request_id": None}
        else:
            topic, contract = topics.market.name, Contract.MARKET_EVENT
            kind = str(mkinds[i % 6])
            rec = {"product_id": pid, "kind": kind, "competitor_id": "c1" if kind == "competitor_price" else None,
                   "value": 900 + i % 300, "currency": "" if kind in ("inventory", "promotion") else "EUR", "event_time": ts}
        producer.produce(topic, serde.encode(contract, rec), key=pid.encode(), timestamp=ts)
        if i % 50_000 == 0:
            producer.poll(0)
    producer.flush()
    return total


def _run(settings, mode: str) -> float:  # noqa: ANN001
    t_env = pricing_job.create_table_env(settings)
    inputs = pricing_job.declare_inputs(t_env, settings)
    statements = t_env.create_statement_set()
    if mode == "empty":
        t_env.execute_sql("CREATE TEMPORARY TABLE nothing (x INT) WITH ('connector' = 'datagen', 'number-of-rows' = '1')")
        t_env.execute_sql("CREATE TEMPORARY TABLE sink_empty (x INT) WITH ('connector' = 'blackhole')")
        statements.add_insert_sql("INSERT INTO sink_empty SELECT x FROM nothing")
    elif mode == "passthrough":
        for view in inputs:
            t_env.execute_sql(f"CREATE TEMPORARY TABLE sink_{view} (ok BOOLEAN, product_id STRING, event_time BIGINT) "
                              "WITH ('connector' = 'blackhole')")
            statements.add_insert_sql(f"INSERT INTO sink_{view} SELECT ok, product_id, event_time FROM {view}")
    elif mode == "product-stages":
        declare_feature_views(t_env, requests="requests", market="market", behaviour="behaviour")
        t_env.execute_sql("CREATE TEMPORARY TABLE sink_p (request_id STRING, v BIGINT, l BIGINT) WITH ('connector' = 'blackhole')")
        statements.add_insert_sql("INSERT INTO sink_p SELECT request_id, views_1h, list_price FROM fp4 WHERE src = 'r'")
    else:
        featured = declare_feature_views(t_env, requests="requests", market="market", behaviour="behaviour")
        t_env.execute_sql("CREATE TEMPORARY TABLE sink_features (request_id STRING, features ARRAY<DOUBLE>) "
                          "WITH ('connector' = 'blackhole')")
        statements.add_insert_sql(
            f"INSERT INTO sink_features SELECT request_id, ARRAY[{', '.join(FEATURE_SPEC.names)}] FROM {featured}"
        )
    start = time.perf_counter()
    statements.execute().wait()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--state-ttl-ms", type=int, default=7 * 24 * 3_600_000, help="0 disables state TTL")
    parser.add_argument("--with-product-stages", action="store_true",
                        help="also time the product stages alone (where does the time go?)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars")
        broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
        broker.start(fresh=True)
        try:
            base = load_settings(state_dir=state, kafka={"bootstrap_servers": broker.bootstrap},
                                 job={"bounded": True, "delivery_guarantee": "at-least-once",
                                      "startup_mode": "earliest-offset", "watermark_out_of_orderness_ms": 5_000,
                                      "python_bundle_size": 5_000, "python_bundle_time_ms": 1_000,
                                      "state_ttl_ms": args.state_ttl_ms})
            create_topics(base.kafka)
            t = time.perf_counter()
            total = _load(base, requests=args.requests)
            print(f"loaded {total:,} events ({args.requests:,} requests) in {time.perf_counter() - t:.1f}s")
            results: dict[str, list[float]] = {"empty": [], "passthrough": [], "features": []}
            if args.with_product_stages:
                results["product-stages"] = []
            for _ in range(args.repeat):
                for mode in results:
                    settings = base.model_copy(update={"job": base.job.model_copy(update={"consumer_group": uuid.uuid4().hex})})
                    results[mode].append(_run(settings, mode))
                    print(f"  {mode:12} {results[mode][-1]:6.1f}s", flush=True)
        finally:
            broker.stop()
    startup = min(results["empty"])
    rate = {m: total / max(min(results[m]) - startup, 1e-9) for m in results if m != "empty"}
    if "product-stages" in rate:
        print(f"product stages only           : {rate['product-stages']:10,.0f} events/s")
    print(f"\nstart-up {startup:.1f}s (subtracted); best of {args.repeat}")
    print(f"passthrough (decode + forward): {rate['passthrough']:10,.0f} events/s")
    print(f"feature stage                 : {rate['features']:10,.0f} events/s")
    print(f"ratio features / passthrough  : {rate['features'] / rate['passthrough']:.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
