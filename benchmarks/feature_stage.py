"""Feature-stage throughput vs a decode-and-forward passthrough, measured side by side.

    .venv/bin/python benchmarks/feature_stage.py [--requests 20000] [--repeat 2]
        [--popularity 0.8] [--with-product-stages] [--with-python-state]

Loads one realistic mix into a private Kafka broker (about 10 behaviour events and
1 market event per price request, product popularity ~ rank^-0.8 as in the
simulator, event times in order), then runs bounded jobs over the same topics, one
after the other, on the local MiniCluster:

* passthrough: the job's Kafka sources and Arrow-batch decoders, every decoded row
  forwarded to a blackhole sink;
* features: the same sources and decoders plus the whole feature stage
  (``jobs.features``), featured requests to a blackhole sink;
* with ``--with-product-stages``: the product stage alone (where does the time go?);
* with ``--with-python-state``: one 5-minute count per product over the behaviour
  events, once as a SQL over-window (JVM state) and once in a Python
  ``KeyedProcessFunction`` with keyed state, which is the other way to build features.

Sustained rate: every job pays a fixed cost that does not depend on the data (SQL
planning and code generation, which grow with the feature SQL, deployment, JIT
warm-up). So each job runs twice, over the full load and over a fifth of it with the
same event density (the first fifth of the timeline, in topics of its own), and the
sustained rate is the difference in events over the difference in wall time. The
rate over the full run, fixed cost included, is printed too. This machine is noisy,
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
from jobs.features import arrival_allowance_ms, declare_feature_views
from pricing.broker import LocalBroker, free_port
from pricing.config import load_settings
from pricing.jars import PROJECT_ROOT
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.serde import Contract


def _load(settings, *, requests: int, hours: float, popularity: float, seed: int = 1) -> int:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    topics = settings.kafka.topics
    n_products, n_users = 2_000, 20_000
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 50, "batch.size": 1_000_000})
    t0 = 1_767_225_600_000
    n_beh, n_mkt = requests * 10, requests
    total = requests + n_beh + n_mkt
    times = t0 + np.sort(rng.integers(0, int(hours * 3_600_000), total))
    kinds = rng.permutation(np.repeat([0, 1, 2], [requests, n_beh, n_mkt]))
    # Product popularity ~ rank^-0.8 by default, as in the simulator's default scenario (top product ~5%).
    weights = 1.0 / np.arange(1, n_products + 1) ** popularity
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
    if mode == "passthrough":
        for view in inputs:
            t_env.execute_sql(f"CREATE TEMPORARY TABLE sink_{view} (ok BOOLEAN, event_time BIGINT) "
                              "WITH ('connector' = 'blackhole')")  # every input has these (recommend requests no product)
            statements.add_insert_sql(f"INSERT INTO sink_{view} SELECT ok, event_time FROM {view}")
    elif mode == "product-stages":
        declare_feature_views(t_env, requests="requests", market="market", behaviour="behaviour",
                              catalogue="catalogue")
        t_env.execute_sql("CREATE TEMPORARY TABLE sink_p (request_id STRING, v BIGINT, l BIGINT) WITH ('connector' = 'blackhole')")
        statements.add_insert_sql("INSERT INTO sink_p SELECT request_id, views_1h, list_price FROM by_product WHERE src = 'request'")
    else:  # the windows of the settings' serving mode
        job = settings.job
        allowance = arrival_allowance_ms(max_clock_skew_ms=job.max_clock_skew_ms,
                                         watermark_out_of_orderness_ms=job.watermark_out_of_orderness_ms)
        featured = declare_feature_views(t_env, requests="requests", market="market", behaviour="behaviour",
                                         catalogue="catalogue", mode=job.serving_mode, allowance_ms=allowance,
                                         horizon_ms=job.arrival_horizon)  # fmt: skip
        t_env.execute_sql("CREATE TEMPORARY TABLE sink_features (request_id STRING, features ARRAY<DOUBLE>) "
                          "WITH ('connector' = 'blackhole')")
        statements.add_insert_sql(
            f"INSERT INTO sink_features SELECT request_id, ARRAY[{', '.join(FEATURE_SPEC.names)}] FROM {featured}"
        )
    start = time.perf_counter()
    statements.execute().wait()
    return time.perf_counter() - start


_WINDOW_5M = "RANGE BETWEEN INTERVAL '5' MINUTE PRECEDING AND CURRENT ROW"


def _run_one_window_sql(settings) -> float:  # noqa: ANN001
    """One 5-minute count per product over the behaviour events, as a SQL over-window (JVM state)."""
    t_env = pricing_job.create_table_env(settings)
    pricing_job.declare_inputs(t_env, settings)
    t_env.execute_sql("CREATE TEMPORARY TABLE sink_w (product_id STRING, n BIGINT) WITH ('connector' = 'blackhole')")
    start = time.perf_counter()
    t_env.execute_sql(f"""
INSERT INTO sink_w SELECT product_id, COUNT(*) OVER (PARTITION BY product_id ORDER BY ts {_WINDOW_5M})
FROM behaviour WHERE ok""").wait()
    return time.perf_counter() - start


def _run_one_window_python(settings) -> float:  # noqa: ANN001
    """The same count in a Python ``KeyedProcessFunction`` with keyed list state (the Beam state API).

    Simplified in Python's favour: rows are counted in arrival order (the topic is in
    event-time order), with no event-time timers and no sorting.
    """
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction, RuntimeContext, StreamExecutionEnvironment
    from pyflink.datastream.state import ListStateDescriptor
    from pyflink.table import StreamTableEnvironment

    class ViewsInWindow(KeyedProcessFunction):
        def open(self, runtime_context: RuntimeContext) -> None:
            self.times = runtime_context.get_list_state(ListStateDescriptor("times", Types.LONG()))

        def process_element(self, value, ctx):  # noqa: ANN001, ANN201
            now = value[1]
            kept = [t for t in self.times.get() if t >= now - 300_000] + [now]
            self.times.update(kept)
            yield len(kept)

    env = StreamExecutionEnvironment.get_execution_environment()
    t_env = StreamTableEnvironment.create(env)
    for key, value in pricing_job._flink_conf(settings, jobmanager=None).items():  # noqa: SLF001 - same config as the job
        t_env.get_config().set(key, value)
    pricing_job.declare_inputs(t_env, settings)
    rows = t_env.to_data_stream(t_env.sql_query("SELECT product_id, event_time FROM behaviour WHERE ok"))
    counts = rows.key_by(lambda r: r[0], key_type=Types.STRING()).process(ViewsInWindow(), output_type=Types.INT())
    counts.filter(lambda n: n < 0).print()  # nothing is printed; the sink only consumes
    start = time.perf_counter()
    env.execute("python-keyed-state")
    return time.perf_counter() - start


_RUNNERS = {"one-window-sql": _run_one_window_sql, "one-window-python": _run_one_window_python}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--state-ttl-ms", type=int, default=7 * 24 * 3_600_000, help="0 disables state TTL")
    parser.add_argument("--popularity", type=float, default=0.8,
                        help="product popularity ~ rank^-x; 1.3 puts a quarter of all traffic on one product")
    parser.add_argument("--with-product-stages", action="store_true",
                        help="also time the product stage alone (where does the time go?)")
    parser.add_argument("--with-python-state", action="store_true",
                        help="also time one 5-minute count per product in SQL and in Python keyed state")
    parser.add_argument("--serving-mode", default="event-time", choices=["event-time", "arrival"],
                        help="the feature stage's windows: event-time (default, as in the results) or arrival")
    args = parser.parse_args()
    sizes = {"full": args.requests, "fifth": args.requests // 5}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars")
        broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
        broker.start(fresh=True)
        try:
            job = {"bounded": True, "delivery_guarantee": "at-least-once", "startup_mode": "earliest-offset",
                   "watermark_out_of_orderness_ms": 5_000, "python_bundle_size": 5_000,
                   "python_bundle_time_ms": 1_000, "state_ttl_ms": args.state_ttl_ms, "restart_attempts": 0,
                   "serving_mode": args.serving_mode}
            datasets, events = {}, {}
            for size, requests in sizes.items():
                topics = {key: {"name": f"{key}-{size}", "partitions": 2}
                          for key in ("behaviour", "market", "requests", "priced", "dead_letters")}
                datasets[size] = load_settings(state_dir=state, job=job,
                                               kafka={"bootstrap_servers": broker.bootstrap, "topics": topics})
                create_topics(datasets[size].kafka)
                t = time.perf_counter()
                events[size] = _load(datasets[size], requests=requests, hours=6 * requests / args.requests,
                                     popularity=args.popularity)
                print(f"loaded {events[size]:,} events ({requests:,} requests) in {time.perf_counter() - t:.1f}s")
            modes = ["passthrough", "features"] + (["product-stages"] if args.with_product_stages else [])
            modes += list(_RUNNERS) if args.with_python_state else []
            seconds: dict[tuple[str, str], list[float]] = {(m, size): [] for m in modes for size in sizes}
            for _ in range(args.repeat):
                for mode in modes:
                    for size, base in datasets.items():
                        settings = base.model_copy(
                            update={"job": base.job.model_copy(update={"consumer_group": uuid.uuid4().hex})})
                        run = _RUNNERS.get(mode)
                        seconds[mode, size].append(run(settings) if run else _run(settings, mode))
                        print(f"  {mode:14} {size:5} {seconds[mode, size][-1]:6.1f}s", flush=True)
        finally:
            broker.stop()
    best = {key: min(values) for key, values in seconds.items()}
    # The one-window jobs read only the behaviour topic (ten events per request): count those.
    read = {m: ({k: 10 * sizes[k] for k in sizes} if m in _RUNNERS else events) for m in modes}
    sustained = {m: (read[m]["full"] - read[m]["fifth"]) / max(best[m, "full"] - best[m, "fifth"], 1e-9) for m in modes}
    overall = {m: read[m]["full"] / best[m, "full"] for m in modes}
    print(f"\nbest of {args.repeat}; sustained = (events full - fifth) / (seconds full - fifth)")
    print(f"{'job':32} {'sustained ev/s':>15} {'incl. fixed cost':>17}")
    labels = {"passthrough": "passthrough (decode + forward)", "features": "feature stage",
              "product-stages": "product stage only", "one-window-sql": "one 5-min count, SQL",
              "one-window-python": "one 5-min count, Python state"}
    for m in modes:
        print(f"{labels[m]:32} {sustained[m]:15,.0f} {overall[m]:17,.0f}")
    print(f"{'ratio features / passthrough':32} {sustained['features'] / sustained['passthrough']:15.2f} "
          f"{overall['features'] / overall['passthrough']:17.2f}   (target >= 0.5, sustained)")
    per_repeat = [
        ((seconds["passthrough", "full"][i] - seconds["passthrough", "fifth"][i])
         / max(seconds["features", "full"][i] - seconds["features", "fifth"][i], 1e-9))
        for i in range(args.repeat)
    ]
    print(f"{'ratio per repeat':32} {' '.join(f'{r:.2f}' for r in per_repeat):>15}")
    if args.with_python_state:
        print(f"{'ratio Python state / SQL':32} {sustained['one-window-python'] / sustained['one-window-sql']:15.2f} "
              f"{overall['one-window-python'] / overall['one-window-sql']:17.2f}   (one window, behaviour events)")

if __name__ == "__main__":
    main()
