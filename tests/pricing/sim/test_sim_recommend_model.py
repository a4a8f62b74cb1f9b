"""The model ``pricing evaluate --recommend`` trains on the world it serves: no leakage past the first evaluated
request, published once per key and reused (fake backfill and trainer: the caching and the cut are the point)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pricing.sim.recommend_eval import RecommendSetup, recommend_world
from pricing.sim.recommend_model import ATTRIBUTION_WINDOW_MS, cache_key, training_cutoff_ms, training_rows, world_model
from pricing.sim.scenario import Scenario
from pricing.sim.world import DAY_MS
from pricing.training import TrainConfig
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry

DAYS = 2
F = len(FEATURE_SPEC.names)


def _table(times: np.ndarray) -> pa.Table:
    n = times.size
    return pa.table({
        "request_id": [f"r{i}" for i in range(n)], "event_time": pa.array(times, pa.int64()),
        "feature_spec_version": [FEATURE_SPEC.version] * n,
        "features": pa.array([list(FEATURE_SPEC.defaults + i) for i in range(n)], pa.list_(pa.float64())),
        "price_minor": pa.array(np.full(n, 1_000), pa.int64()), "label": pa.array(np.arange(n) % 2, pa.int8()),
    })  # fmt: skip


def test_training_rows_close_their_attribution_window_by_the_cutoff() -> None:
    cutoff = 10 * DAY_MS
    times = np.array([cutoff - ATTRIBUTION_WINDOW_MS - 1, cutoff, cutoff - ATTRIBUTION_WINDOW_MS, 5, cutoff - 1])
    data = training_rows(_table(times), cutoff_ms=cutoff)
    assert list(data.event_time) == [5, cutoff - ATTRIBUTION_WINDOW_MS - 1, cutoff - ATTRIBUTION_WINDOW_MS]
    assert np.all(data.event_time + ATTRIBUTION_WINDOW_MS <= cutoff)
    assert data.features[0, 0] == FEATURE_SPEC.defaults[0] + 3  # row 3 (t = 5) first: sorted by time


@dataclass
class Fakes:
    backfills: int = 0
    trained_on: list[Any] = field(default_factory=list)

    def backfill(self, scenario: Scenario, *, days: int, history: Any, **_: Any) -> tuple[np.ndarray, pa.Table]:
        self.backfills += 1
        t = history.requests["event_time"].to_numpy(dtype=np.int64)
        n = len(history.impressions)
        return np.full((n, F), 1.0), _table(t)

    def train(self, data: Any, *, config: TrainConfig, out_dir: Path, **_: Any) -> Any:
        self.trained_on.append(data)
        FakeDemandModel.for_spec(FEATURE_SPEC, intercept=-1.0, slope=2.0).save(out_dir)
        return _Trained(out_dir, (int(data.event_time.min()), int(data.event_time.max())))


@dataclass
class _Trained:
    model_dir: Path
    window: tuple[int, int]

    def registry_metadata(self) -> dict[str, Any]:
        return {"feature_spec_version": FEATURE_SPEC.version, "training_window": self.window,
                "metrics": {"log_loss": 0.4, "train_rows": 10.0}, "trust_region": None, "extra": {"config": {}}}  # fmt: skip


def test_the_model_is_trained_before_the_requests_once_and_reused(small_default: Scenario, tmp_path: Path) -> None:
    scenario = small_default.with_overrides(n_users=400, n_products=40, tastes={})
    setup = RecommendSetup(requests=30)
    rec = recommend_world(scenario, days=DAYS, setup=setup)
    fakes = Fakes()
    kw = dict(days=DAYS, setup=setup, cache_dir=tmp_path, device="cpu", trainer=fakes.train, backfiller=fakes.backfill)
    first = world_model(scenario, rec, **kw)
    cutoff = training_cutoff_ms(rec, setup)
    assert not first.reused and fakes.backfills == 1 and len(fakes.trained_on) == 1
    assert cutoff <= rec.requests.time_ms.min()  # every evaluated request is at or after the cutoff
    assert np.all(fakes.trained_on[0].event_time + ATTRIBUTION_WINDOW_MS <= cutoff)
    assert first.manifest.training_window.end_ms < rec.requests.time_ms.min()
    assert first.features.shape == (len(rec.world.views), F)

    again = world_model(scenario, rec, **kw)  # the same key: nothing backfilled, nothing trained
    assert again.reused and fakes.backfills == 1 and len(fakes.trained_on) == 1
    assert again.manifest.version == first.manifest.version
    np.testing.assert_array_equal(again.features, first.features)

    other = scenario.with_overrides(seed=scenario.seed + 1)
    assert cache_key(other, days=DAYS, setup=setup, train_config=TrainConfig()) != first.key
    assert cache_key(scenario, days=DAYS + 1, setup=setup, train_config=TrainConfig()) != first.key
    assert len(Registry(tmp_path / "registry").versions()) == 1
