"""``[learn] ensemble_size``: validated, and ``pricing learn`` trains its challenger as an ensemble of that size."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pricing.archive_layout import TimeRange
from pricing.config import LearnSettings, load_settings
from pricing.learn.loop import LearnError, run_cycle
from pricing.training import TrainingSet
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.registry import Registry
from tests.pricing_udfs.model import synthetic


def test_ensemble_size_is_validated_and_defaults_to_one() -> None:
    assert LearnSettings().ensemble_size == 1
    assert LearnSettings(ensemble_size=5).ensemble_size == 5
    for bad in (0, -1, 33):
        with pytest.raises(ValueError):
            LearnSettings(ensemble_size=bad)


def test_the_cycle_trains_an_ensemble_of_the_configured_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = synthetic.generate(1_000, seed=4)
    rows = TrainingSet(data.features, data.prices.astype(np.float64), data.labels.astype(np.float32),
                       data.event_time, FEATURE_SPEC.version, propensity=np.full(1_000, 0.5))  # fmt: skip
    seen: list[Any] = []

    def fake_train_on(train_rows: TrainingSet, *, config: Any, **_: Any) -> Any:
        seen.append(config)
        raise ValueError("stopped before training")

    monkeypatch.setattr("jobs.training_set.serving_archive_files", lambda *a, **k: ([tmp_path], [tmp_path]))
    monkeypatch.setattr("jobs.training_set.run_from_serving_logs", lambda *a, **k: SimpleNamespace(rows=1_000, counts={}))
    monkeypatch.setattr("pricing.training.load_training_set", lambda *a, **k: rows)
    monkeypatch.setattr("pricing.training.train_on", fake_train_on)
    for size in (1, 4):
        settings = load_settings(learn={"ensemble_size": size, "min_rows": 100, "min_holdout_rows": 10})
        with pytest.raises(LearnError, match="stopped before training"):
            run_cycle(tmp_path, Registry(tmp_path / "registry"), settings, TimeRange.of(None, None, None), progress=None)
        assert seen[-1].ensemble_size == size and seen[-1].epochs == settings.learn.epochs
