"""Hot swap: the watcher follows the registry's latest, validates on a canary batch, keeps the old model
when a new one is bad. Fake models stand in for TensorFlow here (the TF round trip is in test_handler)."""

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FAKE_FILE, FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.model.serving import ModelWatcher, load_model, validate

if TYPE_CHECKING:
    import pandas as pd

    from pricing_udfs.scoring import ScoringStage


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


def test_the_served_model_carries_its_manifests_trust_region(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pricing_udfs.model.registry import TrustRegion

    region = TrustRegion(feature_spec_version=FEATURE_SPEC.version, rows=10, quantiles=(0.005, 0.995),
                         features={"views_1h": (0.0, 100.0)})  # fmt: skip
    registry = Registry(tmp_path / "registry")
    FakeDemandModel().save(tmp_path / "with")
    with_region = registry.publish(tmp_path / "with", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                                   metrics={}, trust_region=region, promote=True).version  # fmt: skip
    clock = Clock()
    watcher = ModelWatcher(registry.root, interval_s=1, clock=clock)
    watcher.check()
    assert watcher.current.version == with_region and watcher.current.trust_region == region
    old = publish(registry, tmp_path, "old")  # no trust region, as an older model
    with caplog.at_level("WARNING", logger="pricing_udfs.model.serving"):
        for t in range(1, 5):
            clock.now = t
            watcher.check()
    assert watcher.current.version == old and watcher.current.trust_region is None
    assert [r.getMessage() for r in caplog.records if "no trust region" in r.getMessage()] == [
        f"model {old} has no trust region (manifest version 2): it prices without one"]  # logged once


def test_a_watcher_can_serve_one_given_model_without_a_registry() -> None:
    from pricing_udfs.model.serving import ServedModel

    served = ServedModel("v-fixed", FakeDemandModel(), 0)
    watcher = ModelWatcher.serving(served)
    assert watcher.check(force=True) is None and watcher.current is served and watcher.rejected == {}


# --- Off the hot path: the background loader -------------------------------------------------------------
JOIN_S = 60.0  # generous: only a decide() that waits for the blocked load runs into it


class BlockingLoader:
    """Loads like the job (``load_model``), but a version named in ``block`` waits for ``release``."""

    def __init__(self, block: set[str]) -> None:
        self.block = block
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, path: Path, **kwargs: object) -> object:
        self.calls.append((path.parent.name, kwargs))
        if path.parent.name in self.block:
            self.entered.set()
            assert self.release.wait(JOIN_S), "the test never released the load"
        return load_model(path)


def _batch(n: int = 4) -> "pd.DataFrame":
    import pandas as pd

    rows = np.stack([FEATURE_SPEC.vector({"list_price_minor": 1000.0, "unit_cost_minor": 300.0})] * n)
    out = pd.DataFrame(rows, columns=FEATURE_SPEC.names)
    out.insert(0, "request_id", [f"r{i}" for i in range(n)])
    out.insert(1, "product_id", "p")
    out.insert(2, "event_time", 1_764_000_000_000)
    out["list_currency"] = "EUR"
    return out


def _decide_in_thread(stage: "ScoringStage") -> "pd.DataFrame":
    """``stage.decide`` in another thread; fails (instead of hanging) when it does not finish within JOIN_S."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(stage.decide(_batch())), daemon=True)
    worker.start()
    worker.join(JOIN_S)
    assert not worker.is_alive(), "decide() did not finish while a model version was loading: it waited for the load"
    return out[0]


def test_a_promotion_loads_in_the_background_while_batches_are_scored_by_the_old_version(tmp_path: Path) -> None:
    from pricing_udfs.scoring import ScoringConfig, ScoringStage

    registry = Registry(tmp_path / "registry")
    v1 = publish(registry, tmp_path, "v1", slope=2.0)
    loader = BlockingLoader(set())
    clock = Clock()
    watcher = ModelWatcher(registry.root, interval_s=10, loader=loader, clock=clock)
    stage = ScoringStage(ScoringConfig(registry_dir=None), watcher=watcher)
    stage.open()  # the first load: synchronous, before any batch
    try:
        assert stage.model_version == v1 and [name for name, _ in loader.calls] == [v1]
        v2 = publish(registry, tmp_path, "v2", slope=3.0)
        loader.block.add(v2)
        clock.now = 10  # the interval has passed: this batch wakes the loader, which blocks in v2's load
        first = _decide_in_thread(stage)
        assert loader.entered.wait(JOIN_S), "the loader never started loading v2"
        second = _decide_in_thread(stage)  # while v2's load is blocked
        assert (first["model_version"] == v1).all() and (second["model_version"] == v1).all()
        assert stage.model_version == v1
        loader.release.set()
        assert watcher.look_now(JOIN_S)  # v2 is loaded and validated: a candidate
        third = stage.decide(_batch())
        assert (third["model_version"] == v2).all() and stage.model_version == v2
        assert any(e.startswith(f"serving model {v2}") for e in stage.events)
    finally:
        loader.release.set()
        stage.close()
    assert not watcher._thread.is_alive()


def test_a_version_that_appears_after_open_loads_in_the_background(tmp_path: Path) -> None:
    from pricing_udfs.scoring import ScoringConfig, ScoringStage

    registry = Registry(tmp_path / "registry")
    loader = BlockingLoader(set())
    clock = Clock()
    stage = ScoringStage(ScoringConfig(registry_dir=None),
                         watcher=ModelWatcher(registry.root, interval_s=5, loader=loader, clock=clock))  # fmt: skip
    stage.open()  # an empty registry: the fallback prices
    try:
        v1 = publish(registry, tmp_path, "v1")
        loader.block.add(v1)
        clock.now = 5
        assert _decide_in_thread(stage)["fallback_used"].all()
        assert loader.entered.wait(JOIN_S)
        assert _decide_in_thread(stage)["fallback_used"].all()  # still the fallback while v1 loads
        loader.release.set()
        assert stage.watcher.look_now(JOIN_S)
        assert (stage.decide(_batch())["model_version"] == v1).all()
    finally:
        loader.release.set()
        stage.close()


def test_the_loader_thread_turns_every_failure_into_a_counted_rejection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pricing_udfs.scoring import ScoringConfig, ScoringStage

    registry = Registry(tmp_path / "registry")
    v1 = publish(registry, tmp_path, "v1")
    broken = publish(registry, tmp_path, "broken")

    def loader(path: Path, **_: object) -> object:
        if path.parent.name == broken:
            raise MemoryError("out of memory while loading")
        return load_model(path)

    clock = Clock()
    watcher = ModelWatcher(registry.root, version=v1, interval_s=1, loader=loader, clock=clock)
    stage = ScoringStage(ScoringConfig(registry_dir=None), watcher=watcher)
    stage.open()
    try:
        watcher.version = "latest"  # follow latest from now on: the broken version
        clock.now = 1
        stage.decide(_batch())
        assert watcher.look_now(JOIN_S)
        stage.decide(_batch())
        assert "MemoryError" in watcher.rejected[broken] and stage.counts["rejected_model_versions"] == 1
        assert stage.model_version == v1
        # an unexpected error outside any version's load: a rejection with the reason, the thread lives on
        monkeypatch.setattr(watcher.registry, "latest_version", lambda: (_ for _ in ()).throw(KeyError("boom")))
        clock.now = 2
        stage.decide(_batch())
        assert watcher.look_now(JOIN_S)
        stage.decide(_batch())
        assert "watcher error: KeyError" in watcher.rejected["latest"]
        assert stage.counts["rejected_model_versions"] == 2 and watcher._thread.is_alive()
    finally:
        stage.close()


def test_a_dead_loader_thread_fails_the_batch_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Fatal(BaseException):
        pass

    registry = Registry(tmp_path / "registry")
    publish(registry, tmp_path, "v1")
    watcher = ModelWatcher(registry.root, interval_s=1, clock=Clock())
    watcher.check(force=True)
    monkeypatch.setattr(watcher, "_look", lambda recent: (_ for _ in ()).throw(Fatal("gone")))
    watcher.start()
    try:
        watcher._wake.set()
        assert watcher.look_now(JOIN_S)  # returns once the thread has died
        with pytest.raises(RuntimeError, match="loader thread died: Fatal: gone"):
            watcher.poll()
    finally:
        watcher.close()


def test_tensorflow_threads_are_configured_before_a_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pricing_udfs.model import serving, tf_handler
    from pricing_udfs.scoring import ScoringConfig, ScoringStage

    order: list[object] = []
    monkeypatch.setattr(serving, "configure_threads", lambda intra, inter: order.append(("threads", intra, inter)))
    monkeypatch.setattr(serving, "configure_device", lambda device: order.append(("device", device)))
    monkeypatch.setattr(tf_handler.TFModelHandler, "load", lambda self, path: order.append("load") or "model")
    assert load_model(tmp_path, device="cpu", intra_op_threads=2, inter_op_threads=3) == "model"
    assert order == [("threads", 2, 3), ("device", "cpu"), "load"]
    # the stage hands the configured threads to its watcher, which hands them to the loader
    stage = ScoringStage(ScoringConfig(registry_dir=str(tmp_path / "registry"), intra_op_threads=2, inter_op_threads=4))
    stage.open()
    try:
        assert (stage.watcher.intra_op_threads, stage.watcher.inter_op_threads) == (2, 4)
    finally:
        stage.close()
    registry = Registry(tmp_path / "registry")
    publish(registry, tmp_path, "v1")
    loader = BlockingLoader(set())
    ModelWatcher(registry.root, loader=loader, intra_op_threads=2, inter_op_threads=4).check()
    assert loader.calls[0][1] == {"device": "auto", "intra_op_threads": 2, "inter_op_threads": 4}
