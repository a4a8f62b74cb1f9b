"""One policy path offline and online: `pricing evaluate --model`'s scoring stage decides as the running job does.

A simulated day (with the crafted edge cases of the training-set tests) goes through the real job (MiniCluster,
event time, bounded, one worker, one priced partition) with a registry model that has a trust region and with
exploration on (rate 0.2, so the request ids matter). The priced events log each request's id, time, served
feature vector, price, reason codes, exploration flag and propensity, and the time their batch was encoded,
which recovers the job's batches (the anchors of the hourly-change limit depend on them). Fed the same requests
and vectors, batch by batch, the evaluate path's stage (``pricing.sim.engine``, built around the same registry
version without a watcher) must give every request the same price, reason codes, exploration flag and
propensity. The evaluate path's request ids for the same simulated views are the job's (``h<seed>-r<view>``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs import pricing_job
from pricing.config import Settings
from pricing.sim.engine import EngineStage, offline_stage, served_version
from pricing.sim.market import build_market
from pricing.sim.scenario import get_scenario
from pricing.sim.world import build_world, step_batch
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry, TrustRegion
from pricing_udfs.policy import Guardrails, TrustRegionSettings
from pricing_udfs.serde import Contract
from tests.helpers import pseudonyms, read_topic
from tests.jobs.feature_reference import produce_events
from tests.jobs.test_training_set import HOUR, simulated_day

pytestmark = pytest.mark.integration

SEED, USERS, PRODUCTS = 3, 150, 6


def _registry(root: Path, tmp: Path) -> Registry:
    """A fake demand model whose trust region narrows busy hours (views_1h beyond 10) and makes products with
    fewer than 3 views in 24 hours cold, so that every trust path is taken on a simulated day."""
    FakeDemandModel(intercept=-1.0, slope=2.5, competitor_slope=1.0).save(tmp / "model")
    features = {name: (-1e12, 1e12) for name in FEATURE_SPEC.names}
    features["views_1h"] = (0.0, 10.0)
    region = TrustRegion(feature_spec_version=FEATURE_SPEC.version, rows=1_000, quantiles=(0.005, 0.995),
                         features=features, traffic_levels=(0.005, 0.01, 0.5), traffic={"views_24h": (1.0, 3.0, 100.0)})  # fmt: skip
    registry = Registry(root)
    registry.publish(tmp / "model", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1), metrics={},
                     trust_region=region, promote=True)  # fmt: skip
    return registry


def test_the_evaluate_stage_decides_as_the_job_for_the_same_requests(kafka_settings: Settings, tmp_path: Path) -> None:
    registry = _registry(tmp_path / "registry", tmp_path)
    topics = kafka_settings.kafka.topics.model_copy(update={"priced": kafka_settings.kafka.topics.priced.model_copy(
        update={"partitions": 1})})  # one partition: the topic's order is the worker's  # fmt: skip
    # exploration picks requests by id; a tight hourly-change limit makes every price depend on the anchors; a strict
    # trust region takes every path (in range, narrowed, out of range, cold)
    policy = kafka_settings.policy.model_copy(update={
        "exploration_rate": 0.2, "guardrails": Guardrails(max_change=0.05),
        "trust_region": TrustRegionSettings(tolerance=0.25, fallback_distance=2.0, cold_product_quantile=0.01)})  # fmt: skip
    settings = kafka_settings.model_copy(update={
        "kafka": kafka_settings.kafka.model_copy(update={"topics": topics}),
        # at-least-once: every record visible at once (delivery is not what this test is about)
        "job": kafka_settings.job.model_copy(update={"bounded": True, "checkpoint_interval_ms": 1_000, "parallelism": 1,
                                                     "serving_mode": "event-time", "delivery_guarantee": "at-least-once",
                                                     # a loaded machine must not make a partition look idle
                                                     "idle_timeout_ms": 60_000,
                                                     # small batches: a product's anchor moves between them
                                                     "python_bundle_size": 40,
                                                     "watermark_out_of_orderness_ms": 3 * HOUR}),
        "models": kafka_settings.models.model_copy(update={"registry_dir": registry.root}),
        "policy": policy,
    })  # fmt: skip
    create_topics(settings.kafka)
    frames = simulated_day(seed=SEED, n_users=USERS, n_products=PRODUCTS)
    produce_events(settings, frames)

    pricing_job.run(settings, wait=True)

    messages = read_topic(settings, settings.kafka.topics.priced.name, quiet_s=15.0, timeout_s=180.0)
    assert {m.partition() for m in messages} == {0}
    priced = pd.DataFrame([serde.decode(Contract.PRICED_EVENT, m.value()).record
                           for m in sorted(messages, key=lambda m: m.offset())])  # fmt: skip
    letters = [serde.decode(Contract.DEAD_LETTER, m.value()).record
               for m in read_topic(settings, settings.kafka.topics.dead_letters.name)]  # fmt: skip
    kinds = pd.Series([d["error_kind"] for d in letters], dtype=object).value_counts().to_dict()
    sent = frames[Contract.PRICE_REQUEST]
    assert priced["request_id"].is_unique
    assert set(sent["request_id"]) == set(priced["request_id"]), f"not every request was priced; dead letters {kinds}"

    # The same requests and served vectors, in the job's batches (one encode time each), through the evaluate
    # path's stage.
    stage = offline_stage(served_version(registry, "latest", device="cpu"), policy,
                          default_price_minor=settings.job.default_price_minor, currency=settings.job.currency)  # fmt: skip
    batch_id = (priced["priced_time"] != priced["priced_time"].shift()).cumsum()
    decided = []
    for _, rows in priced.groupby(batch_id, sort=True):
        batch = pd.DataFrame({"request_id": rows["request_id"], "user_id": rows["user_id"],
                              "product_id": rows["product_id"], "channel": None, "event_time": rows["request_time"],
                              "list_currency": rows["currency"]}).reset_index(drop=True)  # fmt: skip
        vectors = pd.DataFrame(np.vstack(rows["features"].to_numpy()), columns=FEATURE_SPEC.names)
        decided.append(stage.decide(pd.concat([batch, vectors], axis=1), priced_time_ms=int(rows["priced_time"].iloc[0])))
    offline = pd.concat(decided, ignore_index=True)

    job = priced.reset_index(drop=True)
    assert offline["price_minor"].tolist() == job["price_minor"].tolist()
    assert [list(c) for c in offline["reason_codes"]] == [list(c) for c in job["reason_codes"]]
    assert offline["explored"].tolist() == job["explored"].tolist()
    assert offline["fallback_used"].tolist() == job["fallback_used"].tolist()
    assert offline["model_version"].tolist() == job["model_version"].tolist()
    # a fallback logs no propensity (null in the event, NaN in the decision)
    np.testing.assert_array_equal(offline["propensity"].to_numpy(dtype=np.float64),
                                  job["propensity"].to_numpy(dtype=np.float64))  # fmt: skip
    codes = {code for c in job["reason_codes"] for code in c}
    print(f"\n{len(job)} requests in {batch_id.max()} batches: {int(job['explored'].sum())} explored, "
          f"{int(job['fallback_used'].sum())} fallbacks; codes {sorted(codes)}")
    assert {"exploration", "out_of_range", "cold_product", "max_change"} <= codes, codes
    assert job["explored"].any() and (~job["explored"]).any()
    assert (job["reason_codes"].map(lambda c: "max_change" in c)).sum() > 20 and batch_id.max() > 10

    # The evaluate path names the simulated views' requests as the history did, so it explores the same ones.
    scenario = get_scenario("default").with_overrides(n_users=USERS, n_products=PRODUCTS, seed=SEED)
    world = build_world(build_market(scenario), days=1)
    views = step_batch(world, 0, len(world.views), inventory=np.zeros(world.market.n_products, np.int64),
                       anchor=np.zeros(world.market.n_products, np.int64))  # fmt: skip
    requests = EngineStage(stage, np.full((len(views), len(FEATURE_SPEC.names)), np.nan), seed=SEED).requests(views)
    by_id = job.set_index("request_id")
    simulated = requests.set_index("request_id")
    assert set(simulated.index) <= set(by_id.index) and len(simulated) > 500
    pseudonym = pseudonyms(settings)  # the job holds pseudonyms only (pricing_udfs.privacy)
    assert (simulated["user_id"].map(pseudonym) == by_id.loc[simulated.index, "user_id"]).all()
    assert (simulated["product_id"] == by_id.loc[simulated.index, "product_id"]).all()
    assert (simulated["event_time"] == by_id.loc[simulated.index, "request_time"]).all()
