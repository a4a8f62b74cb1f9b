"""End to end: real Kafka, the real job on the Flink MiniCluster, exactly-once output."""

from __future__ import annotations

import hashlib
import random
import time

import pytest
from confluent_kafka import Producer

from jobs import pricing_job
from pricing.config import Settings
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.helpers import pseudonyms, read_topic

pytestmark = pytest.mark.integration

N_REQUESTS = 300
N_PRODUCTS = 12  # products 10 and 11 never get a list price: fallback


def _market_header() -> bytes:
    rec = {"product_id": "p", "kind": "cost", "competitor_id": None, "value": 1, "currency": "EUR", "event_time": 1}
    return serde.encode(Contract.MARKET_EVENT, rec)[: serde.HEADER_LEN]


def test_job_prices_every_good_request_once_and_dead_letters_every_bad_record(kafka_settings: Settings) -> None:
    settings = kafka_settings.model_copy(
        # event time: a backlog is read topic by topic side by side; the list price in force at each request's
        # event time is what this test checks (arrival mode: tests/jobs/test_arrival_mode.py)
        update={"job": kafka_settings.job.model_copy(update={"bounded": True, "checkpoint_interval_ms": 1_000,
                                                             "serving_mode": "event-time"})}
    )
    topics = settings.kafka.topics
    create_topics(settings.kafka)
    rng = random.Random(7)
    t0 = int(time.time() * 1000) - 600_000
    producer = Producer(settings.kafka.client_config())

    # List prices change over time; the job must use the one in force at each request's time.
    list_prices: dict[str, list[tuple[int, int]]] = {}
    for p in range(N_PRODUCTS - 2):
        pid = f"p{p}"
        for k, ts in enumerate((t0, t0 + 200_000)):
            price = 1000 + 100 * p + 7 * k
            list_prices.setdefault(pid, []).append((ts, price))
            rec = {"product_id": pid, "kind": "list_price", "competitor_id": None, "value": price, "currency": "EUR", "event_time": ts}
            producer.produce(topics.market.name, serde.encode(Contract.MARKET_EVENT, rec), key=pid.encode(), timestamp=ts)
    producer.flush()

    requests = {}
    for i in range(N_REQUESTS):
        ts = t0 + 1_000 + i * 1_000  # spans both list-price versions
        rec = {"request_id": f"r{i}", "user_id": f"u{rng.randrange(50)}", "product_id": f"p{i % N_PRODUCTS}",
               "channel": rng.choice(["web", "app"]), "event_time": ts}
        requests[rec["request_id"]] = rec
    # Retried requests, each sent after the request whose event time it follows (an older one
    # would be late): r5's bytes again, and r7's request_id again 30 s of event time later.
    retries = {"r5": requests["r5"], "r36": requests["r7"] | {"event_time": requests["r7"]["event_time"] + 30_000}}
    for rid, rec in requests.items():
        for r in (rec, retries.get(rid)):
            if r is not None:
                producer.produce(topics.requests.name, serde.encode(Contract.PRICE_REQUEST, r), key=r["product_id"].encode(),
                                 timestamp=r["event_time"])
    good = serde.encode(Contract.PRICE_REQUEST, {"request_id": "x", "user_id": "u", "product_id": "p1", "channel": "web", "event_time": t0})
    # The largest value the broker takes (message.max.bytes minus the batch overhead): a dead
    # letter wrapping it whole would not fit the dead-letter topic.
    huge = bytes(random.Random(3).getrandbits(8) for _ in range(1_048_450))
    # 50 min ahead: the broker takes it (Kafka refuses timestamps more than log.message.timestamp.after.max.ms,
    # 1 h by default, ahead), the engine's max_clock_skew_ms (10 min) does not.
    future = requests["r9"] | {"request_id": "from-the-future", "event_time": int(time.time() * 1000) + 50 * 60_000}
    malformed = {
        "bad_framing": (topics.requests.name, b"{\"request_id\": \"json?\"}", t0 + 5),
        "unknown_schema": (topics.requests.name, serde.MAGIC + b"\x01" * 8 + good[10:], t0 + 6),
        "bad_payload": (topics.requests.name, good[:-4], t0 + 7),
        "invalid_value": (topics.requests.name, good, t0 + 8),  # payload time != record timestamp
        "market_bad_payload": (topics.market.name, _market_header() + b"\xff\xff", t0 + 9),
        "huge_bad_framing": (topics.requests.name, huge, t0 + 150_000),
        # Stamped far ahead: dead-lettered, and it must not drag the watermark (and every later record) along.
        "future_invalid_value": (topics.requests.name, serde.encode(Contract.PRICE_REQUEST, future), future["event_time"]),
    }
    big = Producer(settings.kafka.client_config() | {"message.max.bytes": 4_000_000})
    for topic, value, ts in malformed.values():
        big.produce(topic, value, key=b"p5" if topic == topics.requests.name else None, timestamp=ts)
    # (sent above, in their place; checked with the others below)
    malformed |= {
        "duplicate": (topics.requests.name, serde.encode(Contract.PRICE_REQUEST, retries["r5"]), retries["r5"]["event_time"]),
        "duplicate_later": (topics.requests.name, serde.encode(Contract.PRICE_REQUEST, retries["r36"]), retries["r36"]["event_time"]),
    }
    assert big.flush(30) == 0
    # Beyond the broker's limit a record never reaches the topic: the producer is told.
    refused: list = []
    big.produce(topics.requests.name, huge + b"x" * 200, timestamp=t0 + 150_001, on_delivery=lambda e, m: refused.append(e))
    big.flush(30)
    assert refused and refused[0] is not None and refused[0].name() == "MSG_SIZE_TOO_LARGE", refused

    pricing_job.run(settings, wait=True)  # bounded: returns after the final checkpoint commits

    priced = read_topic(settings, topics.priced.name)
    dead = read_topic(settings, topics.dead_letters.name)

    decoded = [serde.decode(Contract.PRICED_EVENT, m.value()) for m in priced]
    assert all(d.ok for d in decoded)
    ids = [d.record["request_id"] for d in decoded]
    assert len(ids) == len(set(ids)), "a request was priced more than once"
    assert set(ids) == set(requests), f"missing {sorted(set(requests) - set(ids))[:5]}"
    pseudonym = pseudonyms(settings)
    for msg, d in zip(priced, decoded):
        r, req = d.record, requests[d.record["request_id"]]
        assert msg.key() == req["request_id"].encode()
        # the user as the job's key pseudonymises it (pricing_udfs.privacy), never the raw id
        assert (r["user_id"], r["product_id"], r["request_time"]) == (pseudonym(req["user_id"]), req["product_id"],
                                                                      req["event_time"])  # fmt: skip
        assert r["user_id"].startswith(f"{settings.privacy.pseudonym_key_id}:") and r["user_id"] != req["user_id"]
        history = list_prices.get(req["product_id"])
        if history:
            expected = max((ts, price) for ts, price in history if ts <= req["event_time"])[1]
            # no model in the registry and no unit cost: the fallback charges the list price in force
            assert (r["price_minor"], r["reference_price_minor"], r["fallback_used"]) == (expected, expected, True)
            assert r["reason_codes"] == ["no_unit_cost", "reference_price"]
        else:
            assert (r["price_minor"], r["fallback_used"]) == (settings.job.default_price_minor, True)
            assert r["reason_codes"] == ["default_price"]
        assert r["currency"] == "EUR" and r["model_version"] == "fallback/reference-price"
        assert (r["explored"], r["propensity"]) == (False, None)
        assert r["priced_time"] >= r["request_time"]

    letters = [serde.decode(Contract.DEAD_LETTER, m.value()) for m in dead]
    assert all(d.ok for d in letters)
    by_digest = {(d.record["source_topic"], d.record["raw_sha256"]): d.record for d in letters}
    assert len(letters) == len(malformed) == len(by_digest), "each bad record must appear exactly once"
    for name, (topic, value, ts) in malformed.items():
        letter = by_digest[(topic, hashlib.sha256(value).hexdigest())]
        kind = {"market_bad_payload": "bad_payload", "duplicate_later": "duplicate", "huge_bad_framing": "bad_framing",
                "future_invalid_value": "invalid_value"}.get(name, name)
        assert letter["error_kind"] == kind, (letter["error_kind"], letter["error_message"], name)
        assert letter["record_time"] == ts and letter["error_message"]
        keep = settings.job.dead_letter_max_raw_bytes
        assert (bytes(letter["raw"]), letter["raw_size"], letter["raw_truncated"]) == (value[:keep], len(value), len(value) > keep)
    assert by_digest[(topics.requests.name, hashlib.sha256(huge).hexdigest())]["raw_truncated"]
