"""`pricing evaluate --model`: the job's own scoring stage, fed backfilled features, in the offline replay."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing.sim.cli import register
from pricing.sim.engine import EngineStage, ModelNotServable, backfilled_features, offline_stage, served_version
from pricing.sim.evaluate import evaluate_policies
from pricing.sim.history import generate_history
from pricing.sim.scenario import get_scenario
from pricing.training import trust_region_of
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.model.serving import ServedModel
from pricing_udfs.policy import PolicySettings
from pricing_udfs.scoring import ScoringConfig, ScoringStage

SCENARIO = get_scenario("default").with_overrides(n_users=300, n_products=20, seed=11)
MODEL = FakeDemandModel(intercept=-1.0, slope=3.0, competitor_slope=1.0)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return backfilled_features(SCENARIO, days=1)


class Spy:
    """A fake model that records the feature rows it is asked to score."""

    feature_spec_version = FEATURE_SPEC.version

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        self.rows.append(features.copy())
        return MODEL.score(features, prices)


def test_the_stage_sees_the_backfilled_vector_and_the_historys_request_id_of_each_view(features: np.ndarray) -> None:
    assert not np.isnan(features).any()  # every view's request has its vector
    spy = Spy()
    stage = offline_stage(ServedModel("fake", spy, 0), PolicySettings(exploration_rate=0.2),
                          default_price_minor=1999, currency="EUR")  # fmt: skip
    batches: list[pd.DataFrame] = []
    decide = stage.decide
    stage.decide = lambda batch: batches.append(batch) or decide(batch)  # type: ignore[method-assign]
    engine = EngineStage(stage, features, seed=SCENARIO.seed)
    evaluation = evaluate_policies(SCENARIO, days=1, policies=[engine], static_grid=(0.9, 1.0))
    seen = np.vstack(spy.rows)
    assert seen.shape == features.shape
    col = FEATURE_SPEC.index("user_views_24h")  # the behaviour features are the backfill's, row for row
    assert np.array_equal(seen[:, col], features[:, col])
    # the request ids, users, products and times are those `pricing simulate history` wrote for the same views
    sent = pd.concat(batches, ignore_index=True).set_index("request_id")
    history = generate_history(SCENARIO, days=1).requests.set_index("request_id")
    assert set(sent.index) == set(history.index)
    for column in ("user_id", "product_id", "event_time", "channel"):
        assert (sent[column] == history.loc[sent.index, column]).all(), column
    result = evaluation.result("model-fake")
    assert engine.fallbacks == 0 and engine.priced == len(features)
    assert 0.15 < stage.counts["explored"] / engine.priced < 0.25  # the job's exploration, by request id
    print(f"\nguardrail violations against the replay's anchors: {result.guardrail_violations}")


def test_the_evaluate_stage_decides_as_the_jobs_stage_on_the_same_batches(tmp_path: Path, features: np.ndarray) -> None:
    """Unit-level parity: the stage the job's UDF builds (registry, watcher) and the one `pricing evaluate --model`
    builds around the same version give the same decisions, batch by batch, exploration and trust region included."""
    MODEL.save(tmp_path / "m")
    region = trust_region_of(features[: len(features) // 3])  # the first eight hours: later rows lie outside
    registry = Registry(tmp_path / "reg")
    version = registry.publish(tmp_path / "m", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                               metrics={}, trust_region=region, promote=True).version  # fmt: skip
    policy = PolicySettings(exploration_rate=0.2, exploration_seed=3)
    job = ScoringStage(ScoringConfig(registry_dir=str(registry.root), policy=policy, default_price_minor=1999,
                                     currency="EUR"))  # fmt: skip
    job.open()
    offline = offline_stage(served_version(registry, "latest", device="cpu"), policy, default_price_minor=1999,
                            currency="EUR")  # fmt: skip
    batches: list[pd.DataFrame] = []
    decided: list[pd.DataFrame] = []
    original = offline.decide

    def recorded(batch: pd.DataFrame) -> pd.DataFrame:
        batches.append(batch)
        decided.append(original(batch))
        return decided[-1]

    offline.decide = recorded  # type: ignore[method-assign]
    evaluate_policies(SCENARIO, days=1, policies=[EngineStage(offline, features, seed=SCENARIO.seed)],
                      static_grid=(1.0,))  # fmt: skip
    got = pd.concat([job.decide(b) for b in batches], ignore_index=True)  # the same batches, in the same order
    pd.testing.assert_frame_equal(got, pd.concat(decided, ignore_index=True))
    assert job.model_version == version == offline.model_version
    assert dict(job.counts) == dict(offline.counts)
    c = job.counts
    assert c["explored"] > 0 and c["trust_narrowed"] > 0 and c["trust_out_of_range"] > 0, dict(c)
    assert c["fallbacks"] < c["requests_priced"]


def test_a_version_that_would_not_serve_is_refused(tmp_path: Path) -> None:
    FakeDemandModel(intercept=float("nan")).save(tmp_path / "nan")
    registry = Registry(tmp_path / "reg")
    registry.publish(tmp_path / "nan", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1), metrics={},
                     promote=True)  # fmt: skip
    with pytest.raises(ModelNotServable, match="non-finite"):
        served_version(registry)


def test_evaluate_with_a_registry_model_prints_its_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FakeDemandModel(intercept=-1.0, slope=3.0).save(tmp_path / "m")
    version = Registry(tmp_path / "reg").publish(tmp_path / "m", feature_spec_version=FEATURE_SPEC.version,
                                                 training_window=(0, 1), metrics={}, promote=True).version  # fmt: skip
    p = argparse.ArgumentParser(prog="pricing")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["evaluate", "--users", "300", "--products", "20", "--days", "1", "--out", str(tmp_path / "e"),
                         "--model", "latest", "--registry", str(tmp_path / "reg")])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"| model-{version} |" in out and "of the oracle's" in out and "the trust region narrowed 0 " in out
    assert (tmp_path / "e" / "evaluation.csv").read_text().count(f"model-{version}") == 1
