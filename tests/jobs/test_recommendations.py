"""Recommendations through the real job (MiniCluster, real Kafka, exactly-once, arrival mode).

Catalogue, market and behaviour are published first; the job then answers recommend requests of every kind
(history, a context product, a context category, explicit candidates, none to be found, bad bytes and a bad
value). The answers are read read_committed and decoded with fastavro straight from the ``.avsc`` (not the
project's serde). Checked independently of the ranking code: every price inside the guardrails computed
from the published list price and cost, the profit each item claims recomputed from its price, its cost
and its conversion, the order by profit, the candidate rules (context, category, explicit, inactive
products), exactly one answer per good request and a dead letter per bad one; then a price request from a
shopper for a product just recommended is charged the recommended price (``honoured``).
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from pathlib import Path

import fastavro
import numpy as np
import pytest
from confluent_kafka import Producer

from jobs import pricing_job
from pricing.config import Settings
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.serde import Contract
from tests.helpers import read_topic

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CATEGORY = {"rc-p0": "a", "rc-p1": "a", "rc-p2": "a", "rc-p3": "a", "rc-p4": "b", "rc-p5": "b", "rc-p6": "b", "rc-p7": "b"}
LIST_PRICE = {p: 1_000 + 100 * i for i, p in enumerate(CATEGORY)}
COST = {p: v // 2 for p, v in LIST_PRICE.items() if p != "rc-p7"}  # rc-p7 has no cost: the pricing fallback prices it
INACTIVE = "rc-p6"


def _independent_decode(value: bytes) -> dict:
    """The record after the 10-byte frame (magic, 8-byte fingerprint), read with the published schema."""
    schema = fastavro.parse_schema(json.loads((SCHEMAS / "recommendation.avsc").read_text()))
    return fastavro.schemaless_reader(io.BytesIO(value[serde.HEADER_LEN:]), schema, None)


def _produce(producer: Producer, topic: str, contract: Contract, rec: dict, key: str) -> None:
    producer.produce(topic, serde.encode(contract, rec), key=key.encode(), timestamp=int(rec["event_time"]))


def test_the_job_recommends_priced_products_and_honours_the_prices(kafka_settings: Settings, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    FakeDemandModel(intercept=-0.5, slope=3.0).save(tmp_path / "fake")
    registry.publish(tmp_path / "fake", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1), metrics={},
                     promote=True)  # fmt: skip
    settings = kafka_settings.model_copy(update={
        "job": kafka_settings.job.model_copy(update={"checkpoint_interval_ms": 1_000, "serving_mode": "arrival"}),
        "models": kafka_settings.models.model_copy(update={"registry_dir": registry.root}),
    })  # fmt: skip
    topics = settings.kafka.topics
    create_topics(settings.kafka)
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 5})
    now = int(time.time() * 1000)
    t0 = now - 1_800_000
    for p, category in CATEGORY.items():
        _produce(producer, topics.catalogue.name, Contract.CATALOGUE_ENTRY,
                 {"product_id": p, "category": category, "attributes": {}, "active": p != INACTIVE, "event_time": t0}, p)
        _produce(producer, topics.market.name, Contract.MARKET_EVENT, {"product_id": p, "kind": "list_price",
                 "competitor_id": None, "value": LIST_PRICE[p], "currency": "EUR", "event_time": t0}, p)  # fmt: skip
        if p in COST:
            _produce(producer, topics.market.name, Contract.MARKET_EVENT, {"product_id": p, "kind": "cost",
                     "competitor_id": None, "value": COST[p], "currency": "EUR", "event_time": t0}, p)  # fmt: skip
    # Shoppers who view rc-p0 then view rc-p1 (a strong co-view pair) and some rc-p4; everybody views rc-p2.
    behaviour = []
    for u in range(12):
        views = ["rc-p0", "rc-p1"] + (["rc-p4"] if u % 3 == 0 else []) + ["rc-p2", INACTIVE]
        behaviour += [(f"rc-u{u}", p, t0 + 60_000 * u + 1_000 * i) for i, p in enumerate(views)]
    behaviour.append(("rc-hist", "rc-p0", now - 120_000))  # the shopper whose history is one view of rc-p0
    for i, (user, product, ts) in enumerate(behaviour):
        _produce(producer, topics.behaviour.name, Contract.BEHAVIOUR_EVENT, {
            "event_id": f"rc-e{i}", "user_id": user, "product_id": product, "type": "view", "price_seen_minor": 1_000,
            "currency": "EUR", "quantity": 1, "session_id": "s", "event_time": ts, "request_id": None}, user)  # fmt: skip
    producer.flush()

    def ask(rid: str, user: str = "", k: int = 5, **context: object) -> dict:
        rec = {"request_id": rid, "user_id": user, "channel": "web", "event_time": int(time.time() * 1000), "k": k,
               "context_product_id": None, "context_category": None, "candidate_product_ids": [], **context}
        _produce(producer, topics.recommend_requests.name, Contract.RECOMMEND_REQUEST, rec, user or rid)
        return rec

    result = pricing_job.run(settings, wait=False)
    try:
        pricing_job.wait_until_running(result)
        asked = [ask("rq-hist", "rc-hist", k=3), ask("rq-ctx", context_product_id="rc-p0", k=5),
                 ask("rq-cat", context_category="b", k=10),
                 ask("rq-explicit", k=10, candidate_product_ids=["rc-p2", "rc-p3", "rc-p7"]),
                 ask("rq-none", context_category="no-such-category")]  # fmt: skip
        good = ask("rq-good-k", k=1)
        producer.produce(topics.recommend_requests.name, b"not avro", key=b"x", timestamp=good["event_time"])
        # k = 0: valid Avro that breaks the contract's constraint (1 to 50), framed like a good record
        schema = fastavro.parse_schema(json.loads((SCHEMAS / "recommend_request.avsc").read_text()))
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, {**good, "request_id": "rq-bad-k", "k": 0})
        frame = serde.encode(Contract.RECOMMEND_REQUEST, good)[: serde.HEADER_LEN]
        producer.produce(topics.recommend_requests.name, frame + body.getvalue(), key=b"y", timestamp=good["event_time"])
        producer.flush()
        answers: dict[str, list[dict]] = {}
        deadline = time.monotonic() + 120
        while set(answers) < {r["request_id"] for r in asked} and time.monotonic() < deadline:
            answers = {}
            for msg in read_topic(settings, topics.recommendations.name, quiet_s=2.0):
                rec = _independent_decode(msg.value())
                answers.setdefault(rec["request_id"], []).append(rec)
        assert set(answers) >= {r["request_id"] for r in asked}, f"answered: {sorted(answers)}"
        # A price request for the shopper's top recommendation, after the recommendation is out: charged its price.
        offer = answers["rq-hist"][0]["items"][0]
        time.sleep(1.0)
        ts = int(time.time() * 1000)
        _produce(producer, topics.requests.name, Contract.PRICE_REQUEST, {"request_id": "rq-honour", "user_id": "rc-hist",
                 "product_id": offer["product_id"], "channel": "web", "event_time": ts}, offer["product_id"])  # fmt: skip
        producer.flush()
        priced: dict = {}
        deadline = time.monotonic() + 60
        while "rq-honour" not in priced and time.monotonic() < deadline:
            priced = {r["request_id"]: r for r in (serde.decode(Contract.PRICED_EVENT, m.value()).record
                                                   for m in read_topic(settings, topics.priced.name, quiet_s=1.0))}
        letters = [serde.decode(Contract.DEAD_LETTER, m.value()).record for m in
                   read_topic(settings, topics.dead_letters.name, quiet_s=1.0)]  # fmt: skip
    finally:
        result.get_job_client().cancel().result()

    for rid, v in sorted(answers.items()):
        print(rid, v[0]["model_version"], v[0]["fallback_used"], [(i["product_id"], i["price_minor"], i["expected_profit_minor"], i["reason_codes"]) for i in v[0]["items"]])
    print("honour", priced.get("rq-honour", {}).get("price_minor"), priced.get("rq-honour", {}).get("reason_codes"))
    counts = Counter({rid: len(v) for rid, v in answers.items()})
    assert max(counts.values()) == 1, f"answered more than once: {counts}"
    recs = {rid: v[0] for rid, v in answers.items()}
    guard = settings.policy.guardrails
    for rid, rec in recs.items():
        items = rec["items"]
        request = next(r for r in asked + [good] if r["request_id"] == rid)
        assert len(items) <= request["k"]
        products = [i["product_id"] for i in items]
        assert len(set(products)) == len(products), products
        assert INACTIVE not in products, f"{rid}: an inactive product was recommended"
        for item in items:
            p = item["product_id"]
            assert item["currency"] == "EUR" and item["reference_price_minor"] == LIST_PRICE[p]
            lo = max(int(np.ceil(LIST_PRICE[p] * guard.min_multiplier)),
                     int(np.ceil(COST[p] * (1 + guard.min_margin))) if p in COST else 1)  # fmt: skip
            hi = int(np.floor(LIST_PRICE[p] * guard.max_multiplier))
            assert lo <= item["price_minor"] <= hi, (rid, item)
            if p in COST:
                expected = item["expected_conversion"] * (item["price_minor"] - COST[p])
                assert abs(item["expected_profit_minor"] - expected) <= 1, (rid, item)
            else:
                assert item["price_minor"] == LIST_PRICE[p] and np.isnan(item["expected_conversion"]), (rid, item)
        model_priced = [i for i in items if i["product_id"] in COST]
        assert items[: len(model_priced)] == model_priced, f"{rid}: a fallback-priced item ranked above a model-priced one"
        profits = [i["expected_profit_minor"] for i in model_priced]
        assert profits == sorted(profits, reverse=True), f"{rid}: not ranked by expected profit: {profits}"
        assert not rec["fallback_used"] or not model_priced
        assert all(i["propensity"] == 1.0 and not i["explored"] for i in items)  # no exploration configured

    assert "rc-p1" in [i["product_id"] for i in recs["rq-hist"]["items"]], recs["rq-hist"]
    assert "co_view" in next(i for i in recs["rq-hist"]["items"] if i["product_id"] == "rc-p1")["reason_codes"]
    ctx = [i["product_id"] for i in recs["rq-ctx"]["items"]]
    assert "rc-p0" not in ctx and "rc-p1" in ctx, ctx
    assert {i["product_id"] for i in recs["rq-cat"]["items"]} <= {"rc-p4", "rc-p5", "rc-p7"}
    assert recs["rq-cat"]["items"], "category b has products with evidence"
    assert {i["product_id"] for i in recs["rq-explicit"]["items"]} == {"rc-p2", "rc-p3", "rc-p7"}
    assert recs["rq-none"]["items"] == [], recs["rq-none"]
    assert all(r["model_version"] != "fallback/reference-price" for r in recs.values() if r["items"] and not r["fallback_used"])

    mine = [d for d in letters if d["source_topic"] == topics.recommend_requests.name]
    assert sorted(d["error_kind"] for d in mine) == ["bad_framing", "invalid_value"], mine
    assert "rq-bad-k" not in recs and "rq-good-k" in recs

    honoured = priced["rq-honour"]
    assert honoured["price_minor"] == offer["price_minor"], (honoured, offer)
    assert "honoured" in honoured["reason_codes"], honoured["reason_codes"]

