"""Hot swap: the watcher follows the registry's latest, validates on a canary batch, keeps the old model
when a new one is bad. Fake models stand in for TensorFlow here (the TF round trip is in test_handler)."""

from pathlib import Path

import numpy as np
import pytest

from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FAKE_FILE, FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.model.serving import ModelWatcher, load_model, validate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def publish(registry: Registry, tmp: Path, name: str, *, promote: bool = True, **fake: float) -> str:
    folder = tmp / f"src-{name}"
    FakeDemandModel(**fake).save(folder)
    return registry.publish(folder, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1), metrics={},
                            promote=promote).version  # fmt: skip


class Rising:
    feature_spec_version = FEATURE_SPEC.version

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        return np.clip(prices / prices.max(), 0, 1)


def test_the_watcher_follows_latest_and_rejects_bad_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    clock = Clock()
    watcher = ModelWatcher(registry.root, interval_s=10, clock=clock)
    assert watcher.check() is None and watcher.current is None  # empty registry: the fallback prices
    v1 = publish(registry, tmp_path, "v1", slope=2.0)
    clock.now = 10
    watcher.check()
    assert watcher.current.version == v1
    v2 = publish(registry, tmp_path, "v2", slope=3.0)
    clock.now = 15
    assert watcher.check() is None and watcher.current.version == v1  # not before the interval
    clock.now = 20
    watcher.check()
    assert watcher.current.version == v2 and watcher.current.model.slope == 3.0

    nan = publish(registry, tmp_path, "nan", intercept=float("nan"))
    clock.now = 30
    assert "non-finite" in watcher.check()
    assert watcher.current.version == v2 and nan in watcher.rejected

    unloadable = tmp_path / "src-broken"
    unloadable.mkdir()
    (unloadable / FAKE_FILE).write_text("{not json")
    broken = registry.publish(unloadable, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                              metrics={}, promote=True).version  # fmt: skip
    clock.now = 40
    assert "unloadable" in watcher.check()
    assert watcher.current.version == v2 and broken in watcher.rejected
    clock.now = 50
    assert watcher.check() is None  # a rejected version is not retried
    assert registry.rollback().latest == nan  # back to the NaN version: still rejected, v2 keeps serving
    clock.now = 55
    assert watcher.check() is None and watcher.current.version == v2
    registry.promote(v1)
    clock.now = 60
    watcher.check()
    assert watcher.current.version == v1


def test_a_rising_or_foreign_model_is_rejected(tmp_path: Path) -> None:
    assert "not monotone" in validate(Rising(), FEATURE_SPEC)
    assert "feature spec" in validate(FakeDemandModel(feature_spec_version="features/0"), FEATURE_SPEC)
    assert validate(FakeDemandModel(), FEATURE_SPEC) is None
    registry = Registry(tmp_path / "registry")
    v1 = publish(registry, tmp_path, "v1")
    v2 = publish(registry, tmp_path, "v2")

    def loader(path: Path, **_: object) -> object:
        return Rising() if v2 in str(path) else load_model(path)

    watcher = ModelWatcher(registry.root, version=v1, loader=loader)
    watcher.check()
    assert watcher.current.version == v1  # pinned
    pinned_to_rising = ModelWatcher(registry.root, loader=loader)
    assert "not monotone" in pinned_to_rising.check() and pinned_to_rising.current is None


def test_a_missing_registry_serves_nothing(tmp_path: Path) -> None:
    watcher = ModelWatcher(tmp_path / "nowhere")
    assert watcher.check() is None and watcher.current is None
    assert ModelWatcher(None).check() is None


def test_canary_rows_include_recent_traffic() -> None:
    recent = np.stack([FEATURE_SPEC.vector({"list_price_minor": 5000.0})] * 3)
    calls = []

    class Spy(FakeDemandModel):
        def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
            calls.append((features.shape, prices.max()))
            return super().score(features, prices)

    assert validate(Spy(), FEATURE_SPEC, recent) is None
    (n, _), top = calls[0]
    assert n == 5 and top == pytest.approx(20_000)
