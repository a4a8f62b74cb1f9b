"""The scoring stage the pricing UDF runs: model from the registry, anchors, checks, counts."""

from pathlib import Path

import numpy as np
import pandas as pd

from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.policy import Guardrails, PolicySettings
from pricing_udfs.scoring import Anchors, ScoringConfig, ScoringStage

HOUR = 3_600_000
T = 1_764_000_000_000 // HOUR * HOUR


def requests(n: int, *, t: int = T, product: str = "p", ref: float = 1000.0, cost: float = 300.0) -> pd.DataFrame:
    rows = np.stack([FEATURE_SPEC.vector({"list_price_minor": ref, "unit_cost_minor": cost})] * n)
    out = pd.DataFrame(rows, columns=FEATURE_SPEC.names)
    out.insert(0, "request_id", [f"r{t}-{i}" for i in range(n)])
    out.insert(1, "product_id", product)
    out.insert(2, "event_time", t)
    out["list_currency"] = "EUR"
    return out


def stage_for(tmp_path: Path, **policy: object) -> tuple[ScoringStage, Registry]:
    registry = Registry(tmp_path / "registry")
    config = ScoringConfig(registry_dir=str(registry.root), watch_interval_s=0.001, policy=PolicySettings(**policy))
    stage = ScoringStage(config)
    stage.open()
    return stage, registry


def settle(stage: ScoringStage) -> None:
    """Let the stage's background loader finish a look at the registry: the next ``decide`` swaps in what it loaded."""
    assert stage.watcher is not None and stage.watcher.look_now(timeout_s=60), "the model watcher did not look"


def publish(registry: Registry, tmp_path: Path, name: str, **fake: float) -> str:
    FakeDemandModel(**fake).save(tmp_path / name)
    return registry.publish(tmp_path / name, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                            metrics={}, promote=True).version  # fmt: skip


def test_the_stage_prices_with_the_fallback_until_a_model_is_promoted(tmp_path: Path) -> None:
    stage, registry = stage_for(tmp_path)
    first = stage.decide(requests(3))
    assert first["fallback_used"].all() and stage.counts["fallback_no_model"] == 3
    v1 = publish(registry, tmp_path, "m1", slope=0.5)
    settle(stage)
    second = stage.decide(requests(3, t=T + 1))
    assert (second["model_version"] == v1).all() and not second["fallback_used"].any()
    assert stage.counts["requests_priced"] == 6 and stage.counts["fallbacks"] == 3
    assert stage.last_batch_size == 3 and stage.last_inference_ms >= 0
    publish(registry, tmp_path, "bad", intercept=float("nan"))
    settle(stage)
    third = stage.decide(requests(2, t=T + 2))
    assert (third["model_version"] == v1).all() and stage.counts["rejected_model_versions"] == 1


def test_a_products_price_moves_at_most_max_change_per_hour(tmp_path: Path) -> None:
    stage, registry = stage_for(tmp_path, guardrails=Guardrails(max_change=0.1, max_multiplier=3.0))
    publish(registry, tmp_path, "cheap", slope=8.0)  # very price-sensitive: wants a low price
    settle(stage)
    low = stage.decide(requests(1))["price_minor"].iloc[0]
    assert low == 700  # the minimum advertised price
    publish(registry, tmp_path, "dear", slope=0.01)  # hardly sensitive: wants the ceiling now
    settle(stage)
    other = stage.decide(requests(1, product="q"))  # another product, no anchor: the ceiling
    assert other["price_minor"].iloc[0] == 3000 and other["reason_codes"].iloc[0] == ["model", "ceiling"]
    next_hour = stage.decide(requests(1, t=T + HOUR))
    later = stage.decide(requests(1, t=T + 2 * HOUR))
    assert next_hour["price_minor"].iloc[0] == 770 and later["price_minor"].iloc[0] == 847
    assert next_hour["reason_codes"].iloc[0] == ["model", "max_change"]
    assert stage.counts["guardrail_max_change"] == 2


def test_anchors_remember_the_last_price_of_an_earlier_hour() -> None:
    a = Anchors()
    p, t = pd.Series(["x", "x"]), pd.Series([T, T + 10])
    assert a.for_batch(p, t).tolist() == [0, 0]
    a.record(p, t, np.array([100, 110]))
    assert a.for_batch(pd.Series(["x"]), pd.Series([T + 20])).tolist() == [0]  # same hour: still none
    assert a.for_batch(pd.Series(["x"]), pd.Series([T + HOUR])).tolist() == [110]
    a.record(pd.Series(["x"]), pd.Series([T + HOUR]), np.array([120]))
    assert a.for_batch(pd.Series(["x", "y"]), pd.Series([T + HOUR + 5, T + HOUR])).tolist() == [110, 0]


def test_the_stage_applies_the_served_versions_trust_region_and_counts_it(tmp_path: Path) -> None:
    from pricing_udfs.model.registry import TrustRegion
    from pricing_udfs.udfs import STAGE_COUNTERS

    from pricing_udfs.policy import TrustRegionSettings

    stage, registry = stage_for(tmp_path, trust_region=TrustRegionSettings(tolerance=0.25, fallback_distance=1.0,
                                                                           cold_product_quantile=0.01))  # fmt: skip
    region = TrustRegion(feature_spec_version=FEATURE_SPEC.version, rows=100, quantiles=(0.005, 0.995),
                         features={"views_1h": (0.0, 100.0)}, traffic_levels=(0.01, 0.5),
                         traffic={"views_24h": (10.0, 100.0)})  # fmt: skip
    FakeDemandModel(slope=0.1).save(tmp_path / "m")
    version = registry.publish(tmp_path / "m", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                               metrics={}, trust_region=region, promote=True).version  # fmt: skip
    settle(stage)
    b = requests(4)
    b["views_24h"] = [500.0, 500.0, 500.0, 5.0]  # the last one: a cold product
    b["views_1h"] = [50.0, 150.0, 900.0, 50.0]  # inside, narrowed (distance 0.5), far out
    d = stage.decide(b)
    assert stage.model_version == version
    assert [codes[:2] for codes in d["reason_codes"]] == [
        ["model", "ceiling"], ["model", "out_of_range"], ["out_of_range", "reference_price"],
        ["cold_product", "reference_price"]]  # fmt: skip
    # the ceiling; a third of the way (distance 0.5, tolerance 0.25, fallback at 1) toward the list price
    assert d["price_minor"].tolist() == [1_500, 1_333, 1_000, 1_000]
    c = stage.counts
    assert (c["trust_narrowed"], c["trust_out_of_range"], c["trust_cold_product"], c["fallbacks"]) == (3, 2, 1, 2)
    assert {"trust_narrowed", "trust_out_of_range", "trust_cold_product"} <= set(STAGE_COUNTERS)


def test_the_stage_samples_an_ensembles_members_when_the_policy_says_thompson() -> None:
    """The stage times its model through a wrapper: the wrapper must still offer the members to the policy, or
    Thompson sampling would quietly become epsilon-greedy in the job."""
    from pricing_udfs.model.ensemble import EnsembleDemandModel
    from pricing_udfs.model.serving import ModelWatcher, ServedModel

    members = [FakeDemandModel(intercept=-1.0, slope=s) for s in (0.5, 1.5, 3.0, 6.0)]
    served = ServedModel("v-ens", EnsembleDemandModel(members), 0, None)
    config = ScoringConfig(registry_dir=None, policy=PolicySettings(exploration="thompson"))
    stage = ScoringStage(config, watcher=ModelWatcher.serving(served))
    stage.open()
    decisions = stage.decide(requests(400))
    stage.close()
    assert decisions["explored"].any() and (decisions["propensity"] < 1).any()
    assert decisions["price_minor"].nunique() > 1
