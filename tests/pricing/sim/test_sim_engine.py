"""`pricing evaluate --model`: the job's policy object, with backfilled features, in the offline replay."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from pricing.sim.cli import register
from pricing.sim.engine import EnginePolicy, backfilled_features
from pricing.sim.evaluate import evaluate_policies
from pricing.sim.scenario import get_scenario
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.policy import ModelPolicy, PolicySettings

SCENARIO = get_scenario("default").with_overrides(n_users=300, n_products=20)


class Spy:
    """A fake model that records the feature rows it is asked to score."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.inner = FakeDemandModel(intercept=-1.0, slope=3.0)

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        self.rows.append(features.copy())
        return self.inner.score(features, prices)


def test_the_engine_policy_sees_the_backfilled_vector_of_each_request() -> None:
    features = backfilled_features(SCENARIO, days=1)
    assert not np.isnan(features).any()  # every view's request has its vector
    spy = Spy()
    policy = ModelPolicy.create(spy, "fake", PolicySettings(), default_price_minor=1999, currency="EUR")
    engine = EnginePolicy(policy, features)
    evaluation = evaluate_policies(SCENARIO, days=1, policies=[engine], static_grid=(0.9, 1.0))
    seen = np.vstack(spy.rows)
    assert seen.shape == features.shape
    # the behaviour features are the backfill's, row for row (views are priced in order)
    col = FEATURE_SPEC.index("user_views_24h")
    assert np.array_equal(seen[:, col], features[:, col])
    result = evaluation.result("model-fake")
    assert result.guardrail_violations == 0 and engine.fallbacks == 0 and engine.priced == len(features)


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
    assert f"| model-{version} |" in out and "of the oracle's" in out
    assert (tmp_path / "e" / "evaluation.csv").read_text().count(f"model-{version}") == 1
