"""The anchors of the hourly-change guardrail: the rule (hours, ties, older hours, the bound), their
rebuild from priced events, and, against a real broker, from the priced-events topic."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_udfs import serde
from pricing_udfs.anchors import HOUR_MS, Anchors, AnchorSeedError, PricedKey, decode_priced_key, seed_from_topic
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.policy import Guardrails, PolicySettings
from pricing_udfs.scoring import ScoringConfig, ScoringStage
from pricing_udfs.serde import Contract

H = 1_764_000_000_000 // HOUR_MS * HOUR_MS  # the start of an hour


def key(product: str, t: int, price: int, *, priced: int = 0, rid: str = "r") -> PricedKey:
    return PricedKey(product, t, priced, rid, price)


def test_the_anchor_is_the_last_price_of_the_most_recent_earlier_hour() -> None:
    a = Anchors()
    assert a.anchor("x", H) == 0  # never priced
    a.seed([key("x", H + 10, 100), key("x", H + 20, 110), key("x", H + 5, 90)])
    assert a.anchor("x", H + 30) == 0  # same hour: no earlier hour yet
    assert a.anchor("x", H + HOUR_MS) == 110  # the last by event time, not the last recorded
    assert a.anchor("x", H + 5 * HOUR_MS) == 110  # the most recent earlier hour, however long ago
    a.add(key("x", H + 2 * HOUR_MS + 1, 130))  # hour +2; hour +1 had no price
    assert a.anchor("x", H + 2 * HOUR_MS + 9) == 110
    assert a.anchor("x", H + 3 * HOUR_MS) == 130
    assert a.anchor("y", H + 3 * HOUR_MS) == 0  # per product


def test_ties_go_to_the_later_priced_time_then_the_larger_request_id() -> None:
    a = Anchors()
    a.seed([key("x", H, 100, priced=5, rid="b"), key("x", H, 101, priced=7, rid="a"), key("x", H, 99, priced=6, rid="z")])
    assert a.anchor("x", H + HOUR_MS) == 101
    a.add(key("x", H, 102, priced=7, rid="c"))
    assert a.anchor("x", H + HOUR_MS) == 102
    a.add(key("x", H, 103, priced=7, rid="bb"))  # "bb" < "c"
    assert a.anchor("x", H + HOUR_MS) == 102


def test_a_request_of_an_older_hour_gets_its_own_hours_anchor() -> None:
    a = Anchors(history_hours=3)
    a.seed([key("x", H, 100), key("x", H + HOUR_MS, 110), key("x", H + 2 * HOUR_MS, 120)])
    assert a.anchor("x", H + 3 * HOUR_MS) == 120
    assert a.anchor("x", H + 2 * HOUR_MS + 7) == 110  # a late request of hour +2 (the old code gave 110 too)
    assert a.anchor("x", H + HOUR_MS + 7) == 100  # a backlog request of hour +1: hour 0's price, not 120
    batch = a.for_batch(pd.Series(["x", "x", "x"]), pd.Series([H + HOUR_MS, H + 2 * HOUR_MS, H + 3 * HOUR_MS]))
    assert batch.tolist() == [100, 110, 120]


def test_old_hours_are_pruned_and_ignored() -> None:
    a = Anchors(history_hours=2)
    a.seed([key("x", H, 100), key("x", H + HOUR_MS, 110)])
    assert a.anchor("x", H + HOUR_MS) == 100
    a.add(key("x", H + 2 * HOUR_MS, 120))  # keeps hours +1 and +2 only
    assert a.anchor("x", H + HOUR_MS) == 0  # hour 0 is gone
    assert a.anchor("x", H + 2 * HOUR_MS) == 110
    a.add(key("x", H, 999))  # a price for a dropped hour changes nothing
    assert a.anchor("x", H + HOUR_MS) == 0 and a.anchor("x", H + 3 * HOUR_MS) == 120
    assert len(a._hours["x"]) == 2
    with pytest.raises(ValueError):
        Anchors(history_hours=1)


def test_a_batch_never_anchors_on_itself() -> None:
    a = Anchors()
    products, times = pd.Series(["x", "x"]), pd.Series([H + 10, H + HOUR_MS])
    assert a.for_batch(products, times).tolist() == [0, 0]  # hour 0's price is not the anchor of its batch
    a.record(products, times, np.array([100, 200]), priced_time=1, request_ids=["a", "b"])
    assert a.for_batch(pd.Series(["x"]), pd.Series([H + 2 * HOUR_MS])).tolist() == [200]


# --- property: any sequence of batches, against a brute-force recompute ----------------------------------
def brute_force(priced: list[tuple[str, int, int, str, int]], product: str, t: int, history_hours: int) -> int:
    """The rule over every price recorded so far, with the bound: hours more than ``history_hours - 1``
    before the product's newest priced hour are not kept."""
    rows = [r for r in priced if r[0] == product]
    if not rows:
        return 0
    newest = max(r[1] // HOUR_MS for r in rows)
    hours = {r[1] // HOUR_MS for r in rows if newest - history_hours < r[1] // HOUR_MS < t // HOUR_MS}
    if not hours:
        return 0
    g = max(hours)
    return max((r for r in rows if r[1] // HOUR_MS == g), key=lambda r: (r[1], r[2], r[3], r[4]))[4]


rows = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # product
    st.integers(0, 7),  # hour
    st.sampled_from([0, 1, HOUR_MS // 2, HOUR_MS - 1]),  # offset in the hour: equal event times happen
    st.sampled_from(["r1", "r2", "r3"]),  # request id: ties on everything but the id happen
    st.integers(1, 10_000),  # price
)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.lists(rows, min_size=0, max_size=6), min_size=1, max_size=12),
       history_hours=st.integers(2, 4), seed=st.integers(0, 2**32 - 1))
def test_for_any_sequence_of_batches_the_anchor_is_the_brute_force_one(
    batches: list[list[tuple[str, int, int, str, int]]], history_hours: int, seed: int
) -> None:
    a = Anchors(history_hours)
    priced: list[tuple[str, int, int, str, int]] = []  # (product, event time, priced time, request id, price)
    for i, batch in enumerate(batches):
        products = pd.Series([r[0] for r in batch], dtype=object)
        times = pd.Series([H + r[1] * HOUR_MS + r[2] for r in batch], dtype=np.int64)
        got = a.for_batch(products, times).tolist()
        assert got == [brute_force(priced, p, t, history_hours) for p, t in zip(products, times)]
        priced_time = 1_000 + i // 2  # two batches in the same millisecond: ties on it happen too
        a.record(products, times, np.array([r[4] for r in batch], dtype=np.int64), priced_time=priced_time,
                 request_ids=[r[3] for r in batch])  # fmt: skip
        priced += [(p, t, priced_time, r[3], r[4]) for p, t, r in zip(products, times, batch)]
    # rebuilt from the same prices in any order (what a restarted worker reads): the same anchors
    rebuilt = Anchors(history_hours)
    shuffled = list(priced)
    random.Random(seed).shuffle(shuffled)
    rebuilt.seed(PricedKey(p, t, pt, rid, price) for p, t, pt, rid, price in shuffled)
    probes = [(p, H + h * HOUR_MS + 3) for p in "abcd" for h in range(10)]
    assert [rebuilt.anchor(p, t) for p, t in probes] == [a.anchor(p, t) for p, t in probes]


# --- rebuilding from priced events ------------------------------------------------------------------------
def priced_event(product: str, t: int, price: int, *, priced: int, rid: str) -> bytes:
    return serde.encode(Contract.PRICED_EVENT, {
        "request_id": rid, "user_id": "u", "product_id": product, "price_minor": price, "reference_price_minor": 1000,
        "currency": "EUR", "model_version": "v", "expected_conversion": 0.1, "expected_profit_minor": 10,
        "reason_codes": ["model"], "fallback_used": False, "request_time": t, "priced_time": priced,
        "feature_spec_version": FEATURE_SPEC.version, "features": [0.5] * len(FEATURE_SPEC.names), "explored": False,
        "propensity": 1.0})  # fmt: skip


def test_priced_events_decode_to_the_anchors_fields_only() -> None:
    data = priced_event("p1", H + 5, 1234, priced=H + 9, rid="r-1")
    assert decode_priced_key(data) == PricedKey("p1", H + 5, H + 9, "r-1", 1234)
    assert decode_priced_key(b"not avro") is None and decode_priced_key(None) is None
    assert decode_priced_key(serde.encode(Contract.PRICE_REQUEST, {  # another contract's fingerprint
        "request_id": "r", "user_id": "u", "product_id": "p", "channel": "web", "event_time": H})) is None
    # every frozen writer version of PricedEvent that has the fields reads the same way
    for fp, reader in __import__("pricing_udfs.anchors", fromlist=["_prefix_readers"])._prefix_readers().items():
        assert reader is not None, fp.hex()


def test_a_stage_rebuilt_from_the_priced_events_keeps_the_hourly_cap(tmp_path: Path) -> None:
    """What a restart does, without services: the first stage prices hour h-1 with a very price-sensitive
    model; a new stage (a restarted worker, a price-insensitive model now) is rebuilt from the priced events
    the first one wrote, and its hour-h prices stay within max_change of them. Without the rebuild they jump."""
    guardrails = Guardrails(max_change=0.25)  # floor 700 (0.7 x list), ceiling 1500

    def stage(name: str, **fake: float) -> ScoringStage:
        registry = Registry(tmp_path / name)
        FakeDemandModel(**fake).save(tmp_path / f"src-{name}")
        registry.publish(tmp_path / f"src-{name}", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                         metrics={}, promote=True)  # fmt: skip
        s = ScoringStage(ScoringConfig(registry_dir=str(registry.root), policy=PolicySettings(guardrails=guardrails)))
        s.open()
        return s

    def batch(t: int, products: list[str]) -> pd.DataFrame:
        rows = np.stack([FEATURE_SPEC.vector({"list_price_minor": 1000.0, "unit_cost_minor": 300.0})] * len(products))
        out = pd.DataFrame(rows, columns=FEATURE_SPEC.names)
        out.insert(0, "request_id", [f"r{t}-{i}" for i in range(len(products))])
        out.insert(1, "product_id", products)
        out.insert(2, "event_time", t)
        out["list_currency"] = "EUR"
        return out

    before = stage("before", slope=8.0)
    events = []
    for i, t in enumerate([H - HOUR_MS + 1_000, H - 5_000]):
        b = batch(t, ["p", "q"])
        d = before.decide(b, priced_time_ms=t + 100)
        events += [priced_event(p, t, int(price), priced=t + 100, rid=rid)
                   for p, price, rid in zip(b["product_id"], d["price_minor"], b["request_id"])]
    last = int(d["price_minor"].iloc[0])  # hour h-1's last price (the later batch), the same for p and q
    assert last < 800 and d["price_minor"].tolist() == [last, last]
    before.close()
    after = stage("after", slope=0.01)
    after.anchors.seed(decode_priced_key(e) for e in events)
    prices = after.decide(batch(H + 60_000, ["p", "q"]))["price_minor"].tolist()
    assert prices == [int(last * 1.25)] * 2  # it wants the ceiling; the cap holds it
    fresh = stage("fresh", slope=0.01)  # the same restart without the rebuild
    assert fresh.decide(batch(H + 60_000, ["p", "q"]))["price_minor"].tolist() == [1500, 1500]
    after.close()
    fresh.close()


# --- against the real broker (no Flink) -------------------------------------------------------------------
@pytest.mark.integration
def test_the_rebuild_reads_committed_prices_and_waits_for_open_transactions(kafka_settings) -> None:  # noqa: ANN001
    from confluent_kafka import Producer

    from pricing.topics import create_topics

    settings = kafka_settings
    create_topics(settings.kafka)
    topic = settings.kafka.topics.priced.name
    conf = settings.kafka.client_config()
    now = int(time.time() * 1000)
    hour = now // HOUR_MS * HOUR_MS

    old = Producer(conf)  # a price written long before the lookback: not read
    old.produce(topic, priced_event("p", hour - 3 * HOUR_MS, 50, priced=0, rid="old"), key=b"old",
                timestamp=now - 5 * HOUR_MS)  # fmt: skip
    old.flush()
    committed = Producer(conf | {"transactional.id": f"{topic}-a"})
    committed.init_transactions()
    committed.begin_transaction()
    for i, p in enumerate(["p", "q", "p"]):
        committed.produce(topic, priced_event(p, hour - HOUR_MS + i, 100 + i, priced=1, rid=f"c{i}"), key=f"c{i}".encode())
    committed.commit_transaction()
    stuck = Producer(conf | {"transactional.id": f"{topic}-b"})  # a killed run's transaction, still open
    stuck.init_transactions()
    stuck.begin_transaction()
    stuck.produce(topic, priced_event("p", hour - HOUR_MS + 50, 999, priced=2, rid="aborted"), key=b"aborted")
    stuck.flush()
    committed.begin_transaction()  # committed after the open one: behind it for read_committed readers
    committed.produce(topic, priced_event("q", hour - HOUR_MS + 60, 200, priced=3, rid="late"), key=b"late")
    committed.commit_transaction()

    with pytest.raises(AnchorSeedError, match="still open"):
        seed_from_topic(Anchors(), conf, topic, lookback_ms=HOUR_MS, timeout_s=5)
    # with a grace (exactly-once, parallelism > 1: another worker's open transaction), the partition it holds
    # counts as read up to it: "late", committed behind it, is missing there
    held = Anchors()
    report = seed_from_topic(held, conf, topic, lookback_ms=HOUR_MS, timeout_s=60, grace_s=1)
    assert len(report.held) == 1 and report.records in (3, 4)
    [(position, watermark)] = report.held.values()
    assert position < watermark and held.anchor("p", hour) == 102
    stuck.abort_transaction()  # what the restored sink does in its initializeState
    anchors = Anchors()
    report = seed_from_topic(anchors, conf, topic, lookback_ms=HOUR_MS, timeout_s=60)
    assert report.records == 4 and report.skipped == 0 and report.products == 2
    assert anchors.anchor("p", hour) == 102 and anchors.anchor("q", hour) == 200  # not 999, not 50
    assert anchors.anchor("p", hour - HOUR_MS) == 0  # "old" is outside the lookback
    with pytest.raises(AnchorSeedError, match="cannot read"):
        seed_from_topic(Anchors(), conf, f"{topic}-missing", lookback_ms=HOUR_MS, timeout_s=10)
