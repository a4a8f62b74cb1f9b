"""What rebuilding the anchors costs a pricing worker at start (``pricing_udfs.anchors.seed_from_topic``).

Run by hand (it starts its own broker, a minute or two):

    .venv/bin/python benchmarks/anchor_seed.py --records 200000 1000000

For each size it writes that many real PricedEvents (34-feature vectors, as the job writes them, ~410
bytes each; 2,000 products with popularity ~ rank^-0.8, event times over the last two hours) to a fresh
priced-events topic of 2 partitions, in transactions of 10,000 records as an exactly-once sink would, and
then times one rebuild with the job's defaults (the lookback covers them all). It reports records, MB
and seconds of the read, and the products held afterwards. With the default lookback (2 h + 10 min) a
worker reads every priced event of the last 2 h 10 min: at 150 requests/s that is about 1.17 million.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pricing.broker import LocalBroker, free_port  # noqa: E402
from pricing.jars import PROJECT_ROOT  # noqa: E402
from pricing_udfs import serde  # noqa: E402
from pricing_udfs.anchors import HOUR_MS, Anchors, seed_from_topic  # noqa: E402
from pricing_udfs.features import FEATURE_SPEC  # noqa: E402
from pricing_udfs.serde import Contract  # noqa: E402

N_PRODUCTS = 2_000


def write(bootstrap: str, topic: str, n: int) -> float:
    """``n`` priced events in transactions; returns the seconds it took."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"bench-{topic}", "linger.ms": 20})
    producer.init_transactions()
    rng = random.Random(1)
    now = int(time.time() * 1000)
    features = [rng.random() for _ in FEATURE_SPEC.names]
    t0 = time.monotonic()
    producer.begin_transaction()
    for i in range(n):
        product = f"p{min(int(rng.paretovariate(0.8)) - 1, N_PRODUCTS - 1)}"
        ts = now - 2 * HOUR_MS + i * (2 * HOUR_MS) // n
        rid = uuid.uuid4().hex
        value = serde.encode(Contract.PRICED_EVENT, {
            "request_id": rid, "user_id": f"u{i % 20_000}", "product_id": product, "price_minor": 900 + i % 200,
            "reference_price_minor": 1_000, "currency": "EUR", "model_version": "v20261129T071500Z-1a2b3c4d",
            "expected_conversion": 0.08, "expected_profit_minor": 40, "reason_codes": ["model"], "fallback_used": False,
            "request_time": ts, "priced_time": ts + 150, "feature_spec_version": FEATURE_SPEC.version,
            "features": features, "explored": False, "propensity": 1.0})  # fmt: skip
        while True:
            try:
                producer.produce(topic, value, key=rid.encode())
                break
            except BufferError:
                producer.poll(0.05)
        if (i + 1) % 10_000 == 0:
            producer.commit_transaction()
            producer.begin_transaction()
    producer.commit_transaction()
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", nargs="+", type=int, default=[200_000])
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="pricing-anchor-seed-"))
    (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars", target_is_directory=True)
    broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
    broker.start(fresh=True, timeout_s=90)
    try:
        for n in args.records:
            topic = f"priced-{uuid.uuid4().hex[:6]}"
            wrote = write(broker.bootstrap, topic, n)
            anchors = Anchors()
            report = seed_from_topic(anchors, {"bootstrap.servers": broker.bootstrap}, topic,
                                     lookback_ms=2 * HOUR_MS + 600_000, timeout_s=1_800)  # fmt: skip
            print(json.dumps({"records": report.records, "mb": round(report.bytes / 1e6, 1), "seconds": report.seconds,
                              "records_per_s": round(report.records / report.seconds), "products": report.products,
                              "write_s": round(wrote, 1)}), flush=True)  # fmt: skip
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
