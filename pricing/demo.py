"""``make demo``: the whole loop on this machine, then everything stopped again.

1. start the local KRaft broker (fresh data), 2. create the topics, 3. start the job
on the Flink MiniCluster, 4. send list prices and sample price requests (and two
malformed records), 5. print a few priced events and the counts, 6. stop the job and
the broker. A storefront keeps traffic flowing; so does the demo, because a request
is priced once the watermark passes it (README, "Latency").
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer

from pricing.checkpoints import checkpoint_root, local_path
from pricing.config import Settings
from pricing.metrics import wait_for_counter
from pricing_udfs import serde
from pricing_udfs.serde import Contract

_PRODUCTS = [f"sku-{i:03d}" for i in range(20)]


def run_demo(settings: Settings, *, requests: int, port: int | None) -> int:
    from jobs.pricing_job import run, wait_until_running
    from pricing.broker import LocalBroker, free_port
    from pricing.topics import create_topics

    b = settings.broker
    broker = LocalBroker(state_dir=settings.state_dir, host=b.host, port=port or b.port, heap=b.heap, name="demo-kafka", die_with_parent=True)
    _say(f"1/6 starting Kafka (KRaft) at {broker.bootstrap}")
    broker.start(fresh=True, timeout_s=b.start_timeout_s)
    result = None
    try:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
        job = settings.job.model_copy(update={
            "checkpoint_interval_ms": 1_000, "idle_timeout_ms": 1_000, "consumer_group": f"demo-{uuid.uuid4().hex[:8]}",
            "metrics_port": settings.job.metrics_port or str(free_port()),
        })
        settings = settings.model_copy(update={"kafka": kafka, "job": job})
        _say("2/6 creating topics")
        for name, state in create_topics(kafka).items():
            _say(f"    {name}: {state}")
        _say(f"3/6 starting the job on the Flink MiniCluster ({job.delivery_guarantee})")
        result = run(settings, wait=False)
        wait_until_running(result)
        metrics_url = f"http://127.0.0.1:{job.metrics_port.split('-')[0]}/metrics"
        _say(f"    Prometheus metrics: {metrics_url}")
        _say(f"4/6 sending list prices, {requests} price requests and 2 malformed records")
        status = _traffic_and_collect(settings, requests=requests)
        _say_rejected_counter(metrics_url)
        return status
    finally:
        if result is not None:
            _say("6/6 stopping the job and Kafka")
            try:
                result.get_job_client().cancel().result()
            except Exception as exc:  # noqa: BLE001 - the job may already have failed; say so, keep stopping
                _say(f"    job cancel: {exc}")
            # The demo's consumer group is its own: nothing will resume its retained checkpoints.
            shutil.rmtree(local_path(checkpoint_root(settings)) or "", ignore_errors=True)
        broker.stop()


def _traffic_and_collect(settings: Settings, *, requests: int, timeout_s: float = 180.0) -> int:
    topics = settings.kafka.topics
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 5})
    consumer = Consumer(
        settings.kafka.client_config()
        | {"group.id": f"demo-reader-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest", "isolation.level": "read_committed"}
    )
    consumer.subscribe([topics.priced.name, topics.dead_letters.name])
    now = int(time.time() * 1000)
    for i, product in enumerate(_PRODUCTS[:-2]):  # the last two products have no list price: fallback
        _produce(producer, topics.market.name, Contract.MARKET_EVENT, product, now - 60_000,
                 {"product_id": product, "kind": "list_price", "competitor_id": None,
                  "value": 999 + 250 * i, "currency": "EUR", "event_time": now - 60_000})
    producer.produce(topics.requests.name, b"not avro at all", key=b"bad-1")
    producer.produce(topics.requests.name, serde.MAGIC + b"\x00" * 8 + b"junk", key=b"bad-2")
    wanted: set[str] = set()
    priced: dict[str, dict] = {}
    dead = []
    deadline = time.monotonic() + timeout_s
    i = 0
    while time.monotonic() < deadline:
        # Sample requests first, then a keep-alive trickle until all samples are answered.
        if i < requests or len(wanted - priced.keys()) > 0:
            rid = f"{'req' if i < requests else 'keepalive'}-{i:05d}"
            if i < requests:
                wanted.add(rid)
            product = _PRODUCTS[i % len(_PRODUCTS)]
            ts = int(time.time() * 1000)
            _produce(producer, topics.requests.name, Contract.PRICE_REQUEST, product, ts,
                     {"request_id": rid, "user_id": f"user-{i % 37}", "product_id": product,
                      "channel": "web", "event_time": ts})
            i += 1
        producer.poll(0)
        msg = consumer.poll(0.02)
        if msg is not None and not msg.error():
            if msg.topic() == topics.priced.name:
                got = serde.decode(Contract.PRICED_EVENT, msg.value())
                if got.ok:
                    priced[got.record["request_id"]] = got.record
            else:
                dead.append(serde.decode(Contract.DEAD_LETTER, msg.value()))
        if wanted and not (wanted - priced.keys()) and len(dead) >= 2:
            break
    producer.flush()
    consumer.close()
    _say("5/6 results")
    for rid in sorted(wanted & priced.keys())[:5]:
        r = priced[rid]
        latency = r["priced_time"] - r["request_time"]
        _say(f"    {rid} {r['product_id']:8} {r['price_minor'] / 100:8.2f} {r['currency']} "
             f"{','.join(r['reason_codes']):14} fallback={r['fallback_used']!s:5} latency={latency} ms")
    for d in dead:
        if d.ok:
            _say(f"    dead letter: {d.record['error_kind']}: {d.record['error_message'][:80]}")
    answered = len(wanted & priced.keys())
    latencies = sorted(priced[r]["priced_time"] - priced[r]["request_time"] for r in wanted & priced.keys())
    median = f", median latency {latencies[len(latencies) // 2]} ms" if latencies else ""
    print(f"priced {answered}/{len(wanted)} sample requests ({len(priced)} priced events in all), "
          f"{len(dead)} dead letters{median}")
    return 0 if answered == len(wanted) and len(dead) >= 2 else 1


def _say_rejected_counter(url: str) -> None:
    """Show the job's own count of dead-lettered records, as Prometheus sees it."""
    try:
        rejected = wait_for_counter(url, "rejected_records", total=2, timeout_s=10.0)
    except OSError as exc:  # the endpoint of a range may sit on another port; the demo still succeeded
        _say(f"    metrics not readable at {url}: {exc}")
        return
    _say(f"    rejected_records metric: {rejected or 'none yet'}")


def _produce(producer: Producer, topic: str, contract: Contract, key: str, ts: int, record: dict) -> None:
    producer.produce(topic, serde.encode(contract, record), key=key.encode(), timestamp=ts)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
