"""``make demo``: the whole loop on this machine, then everything stopped again.

1. start the local KRaft broker (fresh data) and create the topics;
2. a first demand model when the registry has none: simulate history of the demo scenario,
   backfill the training set (Beam), train and promote (about a minute, once; later runs reuse it);
3. start the job on the Flink MiniCluster; its UDF loads the model from the registry;
4. run the closed-loop market simulator against it for ``duration_s``: shoppers see the
   engine's prices and buy with the simulator's true probabilities (plus two malformed records);
5. print the summary (events/s, requests priced/s, request -> priced latency, profit against
   the list price on the same shoppers, fallbacks, the model version) and stop the job and broker.

The demo succeeds (exit 0) when every request was answered, the model priced them, and both
malformed records were dead-lettered.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from pricing.checkpoints import checkpoint_root, local_path
from pricing.config import Settings, registry_dir
from pricing.metrics import stage_metrics, wait_for_counter
from pricing_udfs import serde

DEMO_SCENARIO = "default"
HISTORY_DAYS = 7  # every weekday: a weekday the model never saw is a feature value it would extrapolate


def ensure_model(settings: Settings, *, scenario: str = DEMO_SCENARIO, days: int = HISTORY_DAYS) -> str:
    """The registry's latest version; when there is none, train one on simulated history and promote it."""
    from pricing_udfs.model.registry import Registry

    registry = Registry(registry_dir(settings))
    latest = registry.latest_version()
    if latest is not None:
        _say(f"    registry {registry.root}: serving {latest}")
        return latest
    from jobs.training_set import run_backfill
    from pricing.sim.history import simulate_history
    from pricing.sim.scenario import get_scenario
    from pricing.training import train

    _say(f"    registry {registry.root} is empty: training a first model on {days} days of '{scenario}' history")
    with tempfile.TemporaryDirectory(prefix="pricing-demo-") as tmp:
        root = Path(tmp)
        simulate_history(get_scenario(scenario), days=days, out_dir=root / "history", progress=sys.stderr)
        run_backfill(root / "history", root / "rows")
        trained = train(root / "rows", out_dir=root / "model", progress=sys.stderr)
        manifest = registry.publish(trained.model_dir, **trained.registry_metadata(), promote=True)
    _say(f"    published and promoted {manifest.version}")
    return manifest.version


def run_demo(settings: Settings, *, duration_s: float, rate: float, port: int | None) -> int:
    from jobs.pricing_job import run, wait_until_running
    from pricing.broker import LocalBroker, free_port
    from pricing.sim.live import LiveSimulator, LiveTopics
    from pricing.sim.scenario import get_scenario
    from pricing.topics import create_topics

    b = settings.broker
    broker = LocalBroker(state_dir=settings.state_dir, host=b.host, port=port or b.port, heap=b.heap,
                         name="demo-kafka", die_with_parent=True)  # fmt: skip
    _say(f"1/5 starting Kafka (KRaft) at {broker.bootstrap} and creating the topics")
    broker.start(fresh=True, timeout_s=b.start_timeout_s)
    result = None
    try:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
        job = settings.job.model_copy(update={
            "checkpoint_interval_ms": 1_000, "idle_timeout_ms": 1_000, "consumer_group": f"demo-{uuid.uuid4().hex[:8]}",
            "metrics_port": settings.job.metrics_port or str(free_port()),
        })  # fmt: skip
        settings = settings.model_copy(update={"kafka": kafka, "job": job})
        for name, state in create_topics(kafka).items():
            _say(f"    {name}: {state}")
        _say("2/5 the demand model")
        version = ensure_model(settings)
        _say(f"3/5 starting the job on the Flink MiniCluster ({job.delivery_guarantee})")
        result = run(settings, wait=False)
        wait_until_running(result)
        metrics_url = f"http://127.0.0.1:{job.metrics_port.split('-')[0]}/metrics"
        _say(f"    Prometheus metrics: {metrics_url}")
        _say(f"4/5 closed-loop market simulation for {duration_s:.0f} s at {rate:.0f} events/s (plus 2 malformed records)")
        _malformed(settings)
        sim = LiveSimulator(get_scenario(DEMO_SCENARIO), kafka_config=kafka.client_config(),
                            topics=LiveTopics.of(kafka.topics), rate=rate, duration_s=duration_s,
                            answer_timeout_s=60.0, progress=sys.stderr)  # fmt: skip
        report = sim.run()
        _say("5/5 summary")
        counters = _counters(metrics_url)
        print(report.summary())
        gain = report.expected_profit_minor / report.expected_profit_at_list_minor - 1 if report.expected_profit_at_list_minor else 0.0
        fallbacks, priced = counters.get("fallbacks", -1), counters.get("requests_priced", -1)
        print(f"requests priced: {report.answered / report.window_s:,.1f}/s; model {version}; fallbacks {fallbacks:,} "
              f"of {priced:,} priced; expected profit {gain:+.1%} against the list price on the same shoppers; "
              f"{counters.get('rejected', 0)} records dead-lettered (the 2 malformed ones and the late events the simulator "
              "sends on purpose)")  # fmt: skip
        ok = report.answered == report.requests and report.unanswered == 0 and counters.get("rejected", 0) >= 2
        return 0 if ok and fallbacks < priced else 1
    finally:
        if result is not None:
            _say("    stopping the job and Kafka")
            try:
                result.get_job_client().cancel().result()
            except Exception as exc:  # noqa: BLE001 - the job may already have failed; say so, keep stopping
                _say(f"    job cancel: {exc}")
            # The demo's consumer group is its own: nothing will resume its retained checkpoints.
            shutil.rmtree(local_path(checkpoint_root(settings)) or "", ignore_errors=True)
        broker.stop()


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
    return out | {name: int(stage[name]) for name in ("fallbacks", "requests_priced") if name in stage}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
