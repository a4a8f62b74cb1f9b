"""``make demo``: the whole loop on this machine, then everything stopped again.

1. start the local KRaft broker (fresh data) and create the topics;
2. simulate a week of the demo scenario's market that ends now and write it into the topics
   (behaviour, market and request events, record time = event time), as a shop's history;
3. a first demand model when the registry has none that serves this feature spec: backfill the
   training set from that week (Beam), train and promote (about a minute, once; later runs reuse it);
4. start the job on the Flink MiniCluster without state: its requests start now, its behaviour input
   24 h back and its market input from its first record (warm start), so its windows hold the last day and its
   list prices and costs the latest ones before the first request; wait until it has read them;
5. run the closed-loop market simulator against it: the same market, continuing from the week's
   last state, at its own intensity per shopper and product (``--rate`` only adds copies of the
   market); shoppers see the engine's prices and buy with the simulator's true probabilities
   (plus two malformed records); a share of them (``--recommend-share``) also asks for
   recommendations and may buy from the slate, scored beside category popularity at list price;
6. print the summary: events/s, requests priced/s, request -> priced latency, expected profit
   against the list price on the same shoppers with a 95% interval, fallbacks with their reasons,
   the trust region's share, the model version;
7. recommendations for the week's most active shopper (no context, then the product they viewed
   last), each item at the price the engine would charge them, with its list price, expected
   conversion and profit and why it was chosen; then stop the job and the broker.

The demo succeeds (exit 0) when every request was answered, the model priced them (no fallback for
a product whose list price and cost the week published), both malformed records were
dead-lettered, and every recommend request was answered (both of step 7 by the model). Whether the engine earns more than the list price in one run is a measurement, printed
with its interval, not a pass condition (``benchmarks/RESULTS.md`` has the runs).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, Producer, TopicPartition

from pricing.checkpoints import checkpoint_root, local_path
from pricing.config import Settings, registry_dir
from pricing.metrics import stage_metrics, wait_for_counter
from pricing_udfs import serde
from pricing_udfs.kafka_retry import retried

if TYPE_CHECKING:
    from pricing.sim.history import History
    from pricing.sim.live import LiveReport

DEMO_SCENARIO = "default"
HISTORY_DAYS = 7  # every weekday: a weekday the model never saw is a feature value it would extrapolate
HISTORY_STEP_MINUTES = 15  # the week ends at most this long before the live traffic starts
CATCH_UP_TIMEOUT_S = 300.0


def ensure_model(settings: Settings, history: History, *, scenario: str = DEMO_SCENARIO) -> str:
    """The registry's latest version when it serves this feature spec with a trust region; else train one on
    ``history`` (backfilled like any event history) and promote it."""
    from pricing_udfs.features import FEATURE_SPEC
    from pricing_udfs.model.registry import Registry

    registry = Registry(registry_dir(settings))
    latest = registry.latest_version()
    if latest is not None:
        manifest = registry.manifest(latest)
        if manifest.feature_spec_version == FEATURE_SPEC.version and manifest.trust_region is not None:
            _say(f"    registry {registry.root}: serving {latest}")
            return latest
        _say(f"    registry {registry.root}: {latest} has no trust region or another feature spec; training a new one")
    from jobs.training_set import run_backfill
    from pricing.sim.history import write_history
    from pricing.training import train

    _say(f"    training a first model on the {history.days} days of '{scenario}' history")
    with tempfile.TemporaryDirectory(prefix="pricing-demo-") as tmp:
        root = Path(tmp)
        write_history(history, root / "history")
        run_backfill(root / "history", root / "rows")
        trained = train(root / "rows", out_dir=root / "model", progress=sys.stderr)
        manifest = registry.publish(trained.model_dir, **trained.registry_metadata(), promote=True)
    _say(f"    published and promoted {manifest.version}")
    return manifest.version


@dataclass(frozen=True)
class DemoOutcome:
    """What one demo run measured (``benchmarks/online_profit.py`` repeats it)."""

    exit_code: int
    report: LiveReport
    counters: dict[str, int]
    model_version: str


def run_demo(settings: Settings, *, duration_s: float, rate: float | None, port: int | None, intensity: float = 1.0,
             seed: int | None = None, recommend_share: float = 0.0) -> int:
    """``pricing demo``: the steps of the module docstring; 0 when the run passed (see there)."""
    return demo_once(settings, duration_s=duration_s, rate=rate, port=port, intensity=intensity, seed=seed,
                     recommend_share=recommend_share).exit_code


def demo_once(settings: Settings, *, duration_s: float, rate: float | None, port: int | None, intensity: float = 1.0,
              seed: int | None = None, recommend_share: float = 0.0) -> DemoOutcome:
    """One demo run; ``intensity`` multiplies the live shoppers' session rates (1: the history's market), ``seed``
    the live simulator's randomness (None: the scenario's), ``recommend_share`` the share of live shoppers who also
    ask for recommendations (``pricing.sim.live``)."""
    from jobs.pricing_job import run, wait_until_running
    from pricing.broker import LocalBroker, free_port
    from pricing.sim.history import generate_history, history_ending_at
    from pricing.sim.live import LiveSimulator, LiveTopics
    from pricing.sim.publish import publish_history
    from pricing.sim.scenario import get_scenario
    from pricing.topics import create_topics

    b = settings.broker
    broker = LocalBroker(state_dir=settings.state_dir, host=b.host, port=port or b.port, heap=b.heap,
                         name="demo-kafka", die_with_parent=True)  # fmt: skip
    _say(f"1/7 starting Kafka (KRaft) at {broker.bootstrap} and creating the topics")
    broker.start(fresh=True, timeout_s=b.start_timeout_s)
    result = None
    try:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
        job = settings.job.model_copy(update={
            "checkpoint_interval_ms": 1_000, "consumer_group": f"demo-{uuid.uuid4().hex[:8]}",
            "metrics_port": settings.job.metrics_port or str(free_port()), "startup_mode": "latest-offset",
        })  # fmt: skip
        settings = settings.model_copy(update={"kafka": kafka, "job": job})
        for name, state in create_topics(kafka).items():
            _say(f"    {name}: {state}")
        base = get_scenario(DEMO_SCENARIO).with_overrides(step_minutes=HISTORY_STEP_MINUTES)
        scenario = history_ending_at(base, days=HISTORY_DAYS, end_ms=int(time.time() * 1000))
        _say(f"2/7 a week of '{DEMO_SCENARIO}' ending now, into the topics (the shop's history)")
        history = generate_history(scenario, days=HISTORY_DAYS, progress=sys.stderr)
        counts = publish_history(history, kafka_config=kafka.client_config(), topics=kafka.topics, progress=sys.stderr)
        _say("    " + ", ".join(f"{topic} {n:,}" for topic, n in counts.items()))
        _say("3/7 the demand model")
        version = ensure_model(settings, history)
        _say(f"4/7 starting the job on the Flink MiniCluster ({job.delivery_guarantee}, {job.serving_mode}, warm start "
             f"{job.warm_start_ms / 3_600_000:g} h)")  # fmt: skip
        result = run(settings, wait=False)
        wait_until_running(result)
        _wait_for_catch_up(settings)
        metrics_url = f"http://127.0.0.1:{job.metrics_port.split('-')[0]}/metrics"
        _say(f"    Prometheus metrics: {metrics_url}")
        sim = LiveSimulator(scenario, kafka_config=kafka.client_config(), topics=LiveTopics.of(kafka.topics),
                            rate=rate, intensity=intensity, duration_s=duration_s, answer_timeout_s=60.0,
                            start_state=history.end_state, seed=seed, progress=sys.stderr,
                            recommend_share=recommend_share if settings.recommend.enabled else 0.0,
                            recommend_k=RECOMMEND_K)  # fmt: skip
        _say(f"5/7 closed-loop market for {duration_s:.0f} s: {sim.plan.describe(int(time.time() * 1000))} "
             "(plus 2 malformed records)")  # fmt: skip
        if sim.plan.copies > 1:  # their initial market goes in first, and the job reads it before any shopper comes
            _say(f"    the other copies' initial market: {sim.publish_snapshot():,} records")
            _wait_for_catch_up(settings)
        _malformed(settings)
        report = sim.run()
        _say("6/7 summary")
        counters = _counters(metrics_url)
        print(report.summary())
        print(_profit_line(report))
        print(_engine_line(report, counters, version))
        _say("7/7 recommendations")
        recommended = _show_recommendations(settings, history)
        # Fallbacks with a reason the engine should not have (the trust region's fallback is a decision, not one).
        unexplained = sum(n for name, n in counters.items() if name.startswith("fallback_"))
        ok = report.answered == report.requests and report.unanswered == 0 and counters.get("rejected", 0) >= 2
        rec = report.recommend
        ok = ok and recommended and (rec is None or rec.unanswered == 0)
        code = 0 if ok and counters.get("requests_priced", 0) > 0 and unexplained == 0 else 1
        return DemoOutcome(exit_code=code, report=report, counters=counters, model_version=version)
    finally:
        if result is not None:
            _say("    stopping the job and Kafka")
            try:
                client = result.get_job_client()
                client.cancel().result()
                # until its tasks are down: the Python workers close their Kafka clients before the broker goes
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    try:
                        if str(client.get_job_status().result()) == "CANCELED":
                            break
                    except Exception:  # noqa: BLE001 - the job's own MiniCluster shuts down with it: nothing runs
                        break
                    time.sleep(0.2)
            except Exception as exc:  # noqa: BLE001 - the job may already have failed; say so, keep stopping
                _say(f"    job cancel: {exc}")
            # The demo's consumer group is its own: nothing will resume its retained checkpoints.
            shutil.rmtree(local_path(checkpoint_root(settings)) or "", ignore_errors=True)
        broker.stop()


RECOMMEND_K = 5


def _show_recommendations(settings: Settings, history: History) -> bool:
    """Ask the job for recommendations for the history's most active shopper (no context, then their last viewed
    product), print them; True when both were answered, ranked by the model."""
    from pricing_udfs.serde import Contract

    behaviour = history.behaviour
    user = str(behaviour["user_id"][behaviour["user_id"] != ""].value_counts().index[0])
    last = str(behaviour[behaviour["user_id"] == user].sort_values("event_time")["product_id"].iloc[-1])
    list_price = history.market_events[history.market_events["kind"] == "list_price"].groupby("product_id")["value"].last()
    topics = settings.kafka.topics
    producer = Producer(settings.kafka.client_config())
    asked = {}
    for rid, context in ((f"demo-rec-{uuid.uuid4().hex[:6]}", None), (f"demo-rec-{uuid.uuid4().hex[:6]}", last)):
        now = int(time.time() * 1000)
        rec = {"request_id": rid, "user_id": user, "channel": "web", "event_time": now, "k": RECOMMEND_K,
               "context_product_id": context, "context_category": None, "candidate_product_ids": []}
        producer.produce(topics.recommend_requests.name, serde.encode(Contract.RECOMMEND_REQUEST, rec), key=user.encode(),
                         timestamp=now)  # fmt: skip
        asked[rid] = context
    producer.flush(10)
    answers = _read_recommendations(settings, set(asked), timeout_s=60.0)
    for rid, context in asked.items():
        rec = answers.get(rid)
        title = f"    shopper {user}" + (f", viewing {context}" if context else ", no context")
        if rec is None:
            _say(f"{title}: no answer within 60 s")
            continue
        latency = rec["answered_time"] - rec["request_time"]
        print(f"{title}: {len(rec['items'])} products, model {rec['model_version']}"
              f"{' (fallback)' if rec['fallback_used'] else ''}, answered in {latency} ms")  # fmt: skip
        for n, item in enumerate(rec["items"], 1):
            ref = list_price.get(item["product_id"])
            vs = f" ({item['price_minor'] / ref - 1:+.0%} vs list {ref / 100:.2f})" if ref else ""
            print(f"      {n}. {item['product_id']:<12} {item['price_minor'] / 100:>8.2f} {item['currency']}{vs}  "
                  f"p(buy) {item['expected_conversion']:.2f}  E[profit] {item['expected_profit_minor'] / 100:.2f}  "
                  f"{', '.join(item['reason_codes'])}")  # fmt: skip
    return set(answers) == set(asked) and not any(r["fallback_used"] for r in answers.values())


def _read_recommendations(settings: Settings, ids: set[str], *, timeout_s: float) -> dict[str, dict]:
    from pricing_udfs.serde import Contract

    consumer = Consumer(settings.kafka.client_config() | {"group.id": f"demo-read-{uuid.uuid4().hex[:6]}",
                                                          "auto.offset.reset": "earliest",
                                                          "isolation.level": "read_committed", "log_level": 2})  # fmt: skip
    consumer.subscribe([settings.kafka.topics.recommendations.name])
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while set(found) < ids and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            got = serde.decode(Contract.RECOMMENDATION, msg.value())
            if got.ok and got.record["request_id"] in ids:
                found[got.record["request_id"]] = got.record
    finally:
        consumer.close()
    return found


def _wait_for_catch_up(settings: Settings) -> None:
    """Until the job's consumer group has committed (at a checkpoint) the end offsets the behaviour and market
    topics have now: it has then read the history in them. Progress on stderr."""
    topics = [settings.kafka.topics.behaviour.name, settings.kafka.topics.market.name]
    consumer = Consumer(settings.kafka.client_config() | {"group.id": settings.job.consumer_group,
                                                          "enable.auto.commit": False, "log_level": 2})  # fmt: skip
    try:
        meta = consumer.list_topics(timeout=10)
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(meta.topics[t].partitions)]
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions}
        start, deadline = time.monotonic(), time.monotonic() + CATCH_UP_TIMEOUT_S
        tty, next_line = sys.stderr.isatty(), 0.0
        while True:
            # retried while the group's coordinator moves or loads (NOT_COORDINATOR on a new broker failed a demo)
            committed = {(tp.topic, tp.partition): tp.offset for tp in retried(
                lambda: consumer.committed(partitions, timeout=10), timeout_s=60)}  # fmt: skip
            behind = sum(max(end - max(committed[k], 0), 0) for k, end in ends.items())
            if behind == 0:
                _say(f"    the job has read the behaviour and market records in {time.monotonic() - start:.0f} s")
                return
            if time.monotonic() > deadline:
                _say(f"    catching up: still {behind:,} records behind after {CATCH_UP_TIMEOUT_S:.0f} s; going on")
                return
            if tty or time.monotonic() >= next_line:
                note = f"    catching up: {behind:,} behaviour and market records to read ..."
                print(f"\r{note}" if tty else note, end="" if tty else "\n", file=sys.stderr, flush=True)
                next_line = time.monotonic() + 10.0
            time.sleep(1.0)
    finally:
        if tty:
            print("\r", end="", file=sys.stderr)
        consumer.close()


def _profit_line(report: LiveReport) -> str:
    uplift = report.profit_uplift()
    if uplift is None:
        return "expected profit against the list price: no shopper saw an answer"
    gain, low, high = uplift
    return (f"expected profit {gain:+.1%} against the list price on the same {len(report.expected_profit_pairs):,} "
            f"shoppers (95% interval {low:+.1%} to {high:+.1%}; one run, see benchmarks/RESULTS.md for many)")  # fmt: skip


def _engine_line(report: LiveReport, counters: dict[str, int], version: str) -> str:
    priced = counters.get("requests_priced", 0)
    fallbacks = counters.get("fallbacks", 0)
    reasons = ", ".join(f"{name.removeprefix('fallback_')} {n:,}" for name, n in sorted(counters.items())
                        if name.startswith("fallback_") and n)  # fmt: skip
    narrowed = counters.get("trust_narrowed", 0)
    share = f"{narrowed / priced:.1%}" if priced else "n/a"
    return (f"requests priced: {report.answered / max(report.window_s, 1e-9):,.1f}/s; model {version}; fallbacks "
            f"{fallbacks:,} of {priced:,} priced{f' ({reasons})' if reasons else ''}; trust region narrowed {narrowed:,} "
            f"({share}: out of range {counters.get('trust_out_of_range', 0):,}, cold product "
            f"{counters.get('trust_cold_product', 0):,}); {counters.get('rejected', 0):,} records dead-lettered (the 2 "
            "malformed ones and the late events the simulator sends on purpose)")  # fmt: skip


def _malformed(settings: Settings) -> None:
    producer = Producer(settings.kafka.client_config())
    topic = settings.kafka.topics.requests.name
    producer.produce(topic, b"not avro at all", key=b"bad-1")
    producer.produce(topic, serde.MAGIC + b"\x00" * 8 + b"junk", key=b"bad-2")
    producer.flush(10)


def _counters(url: str) -> dict[str, int]:
    """The job's own counters, as Prometheus sees them: dead letters and the scoring stage's."""
    try:
        out = {"rejected": sum(wait_for_counter(url, "rejected_records", total=2, timeout_s=10.0).values())}
        stage = stage_metrics(url)
    except OSError as exc:  # the endpoint of a range may sit on another port; say so
        _say(f"    metrics not readable at {url}: {exc}")
        return {}
    return out | {name: int(value) for name, value in stage.items()}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
