"""A fresh job on a backlog: a simulated day already in two-partition topics, read side by side.

Two failures this catches, both seen before the fix on such a backlog:

* on-time events dead-lettered as ``late``: Flink decides per partition whether it is idle, the
  Python decoder chained to the Kafka reader made the reader's thread look idle while it held one
  partition's batch, the source's watermark ran ahead with the other partition, and up to half of
  the behaviour events (in some runs half of the requests) were rejected;
* requests priced by the fallback with ``default_price`` or ``no_unit_cost`` although their product's
  list price and cost were published long before them (in arrival mode the requests topic was read
  ahead of the market topic).

Every request whose product had a list price and a unit cost earlier than the arrival horizon
before it must be priced by the model, and every event dead-lettered as late must really be behind
the watermark's allowance of an event sent before it on its topic (``without_late``, an independent
check on the produced order).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from jobs import pricing_job
from pricing.config import Settings
from pricing.sim.history import generate_history
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.serde import Contract
from tests.helpers import read_topic
from tests.jobs.feature_reference import produce_events, without_late

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["arrival", "event-time"])
def test_a_fresh_job_on_a_backlog_loses_no_event_and_knows_every_published_list_price(
    kafka_settings: Settings, tmp_path: Path, mode: str
) -> None:
    registry = Registry(tmp_path / "registry")
    FakeDemandModel(slope=2.0).save(tmp_path / "fake")
    version = registry.publish(tmp_path / "fake", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                               metrics={}, promote=True).version  # fmt: skip
    topics = kafka_settings.kafka.topics.model_copy(update={
        name: getattr(kafka_settings.kafka.topics, name).model_copy(update={"partitions": 2})
        for name in ("behaviour", "market", "requests")
    })  # fmt: skip
    settings = kafka_settings.model_copy(update={
        "kafka": kafka_settings.kafka.model_copy(update={"topics": topics}),
        "job": kafka_settings.job.model_copy(update={"bounded": True, "serving_mode": mode,
                                                     "delivery_guarantee": "at-least-once"}),
        "models": kafka_settings.models.model_copy(update={"registry_dir": registry.root, "device": "cpu"}),
    })  # fmt: skip
    create_topics(settings.kafka)
    history = generate_history(get_scenario("default").with_overrides(n_products=120, n_users=3_000, seed=21), days=1)
    frames = {Contract.MARKET_EVENT: history.market_events, Contract.BEHAVIOUR_EVENT: history.behaviour,
              Contract.PRICE_REQUEST: history.requests}  # fmt: skip
    produce_events(settings, frames)

    pricing_job.run(settings, wait=True)

    letters = [serde.decode(Contract.DEAD_LETTER, m.value()).record
               for m in read_topic(settings, settings.kafka.topics.dead_letters.name)]  # fmt: skip
    kinds = Counter((d["source_topic"], d["error_kind"]) for d in letters)
    late = [d for d in letters if d["error_kind"] == "late"]
    assert len(late) == len(letters), f"only late events may be dead-lettered here: {kinds}"
    # Raises when an event was dead-lettered as late although no event sent before it on its topic was ahead of
    # it by more than the out-of-orderness (the watermark can only come from what the source has read).
    kept, n_late = without_late(frames, late, allowance_ms=settings.job.watermark_out_of_orderness_ms)
    priced = {r["request_id"]: r for r in (serde.decode(Contract.PRICED_EVENT, m.value()).record
                                           for m in read_topic(settings, settings.kafka.topics.priced.name))}  # fmt: skip
    requests = kept[Contract.PRICE_REQUEST]
    assert set(priced) == set(requests["request_id"]), "every request that was not late is priced, once"

    market = history.market_events
    horizon = settings.job.arrival_horizon if mode == "arrival" else 0
    known = {kind: market[market["kind"] == kind].groupby("product_id")["event_time"].min()
             for kind in ("list_price", "cost")}  # fmt: skip
    ready = pd.Series(True, index=requests.index)
    for first in known.values():
        ready &= requests["event_time"] - requests["product_id"].map(first).fillna(float("inf")) >= horizon
    fallbacks = Counter(priced[r]["reason_codes"][0] for r in requests.loc[ready, "request_id"]
                        if priced[r]["fallback_used"])  # fmt: skip
    print(f"\nbacklog ({mode}): {len(history.requests):,} requests, {n_late:,} late events of "
          f"{sum(len(f) for f in frames.values()):,}; {int(ready.sum()):,} requests after their product's list price "
          f"and cost, fallbacks among them: {dict(fallbacks) or 'none'}")
    assert ready.sum() > 0.9 * len(requests)
    assert not fallbacks, "a request after its product's list price and cost was priced without them"
    assert {priced[r]["model_version"] for r in requests.loc[ready, "request_id"]} == {version}
