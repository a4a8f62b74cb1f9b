"""The demand model ``pricing evaluate --recommend`` serves by default: one trained on the world it serves.

A model trained on another world (the registry's latest, say, from the pricing scenarios without tastes)
prices for that world's shoppers; in the taste world its prices and expected profits are off, and ranking by
them then measures the mismatch, not price-aware ranking. So the evaluation trains its own, with the
project's training code, on the taste world's history *before* the evaluated requests:

1. the history (``recommend_world``) goes through the Beam backfill (``jobs.training_set``, the job's
   feature semantics; :func:`pricing.sim.engine.backfill`), which gives both the served feature vector of
   every view's request (what the model rows are fed) and the labelled training rows;
2. no leakage: the requests are drawn from views at or after ``cutoff = world end - request_days``
   (:func:`pricing.sim.recommend_eval.draw_requests`), and only rows whose whole attribution window closes
   by then train (``event_time + attribution window <= cutoff``): their features, their labels (purchases
   within the window) and therefore the holdout that stops and calibrates the training, and the trust region,
   come from before the first evaluated request;
3. :func:`pricing.training.train_on` (time holdout, temperature, trust region) trains it, and it is
   published to a registry of its own, ``<state_dir>/eval/<scenario>-recommend/registry``, with the key of
   what it was trained on (scenario, its seed and every knob, days, request days, feature spec, training
   config) in the manifest's ``extra``; the backfilled vectors are kept beside it
   (``features/<key>.npy``). A second run with the same key reuses both: no backfill, no training.

``pricing evaluate --recommend --model VERSION`` serves a registry version instead (no training).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import pyarrow as pa

from pricing.sim.recommend_eval import RecommendSetup, RecommendWorld
from pricing.sim.scenario import Scenario
from pricing.sim.world import DAY_MS
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.registry import Manifest, Registry, RegistryError
from pricing_udfs.model.serving import Device, ServedModel

ATTRIBUTION_WINDOW_MS = 30 * 60_000  # the backfill's default (jobs.training_set.DEFAULT_ATTRIBUTION_WINDOW_MS)
KEY = "eval_key"  # the manifest's extra field that says what a version was trained on


@dataclass(frozen=True)
class WorldModel:
    """The served model, the backfilled vectors of every view's request, and how they were had."""

    served: ServedModel
    features: np.ndarray  # [n_views, F], NaN rows: no vector
    manifest: Manifest
    key: str
    reused: bool  # True: found in the cache, nothing trained
    cutoff_ms: int  # the first evaluated request's earliest possible time; training rows close by then
    seconds: float

    def summary(self) -> str:
        m, w = self.manifest.metrics, self.manifest.training_window
        how = "reused" if self.reused else f"trained in {self.seconds:.0f} s"
        return (f"model {self.manifest.version} ({how}) on the taste world's {int(m.get('train_rows', 0)):,} training rows "
                f"from {_utc(w.start_ms)} to {_utc(w.end_ms)}, all labelled by {_utc(self.cutoff_ms)} (the earliest "
                f"evaluated request): test log-loss {m.get('log_loss', float('nan')):.4f} vs base rate "
                f"{m.get('base_rate_log_loss', float('nan')):.4f}, AUC {m.get('auc', float('nan')):.3f}, "
                f"calibration error {m.get('calibration_error', float('nan')):.4f}")  # fmt: skip


def cache_key(scenario: Scenario, *, days: int, setup: RecommendSetup, train_config: object,
              spec: FeatureSpec = FEATURE_SPEC) -> str:  # fmt: skip
    """``<scenario>-s<seed>-d<days>-<digest>``: the digest covers the whole scenario (overrides included),
    the request days, the feature spec and the training config."""
    what = {"scenario": scenario.model_dump(mode="json"), "days": days, "request_days": setup.request_days,
            "spec": spec.version, "train": asdict(train_config), "attribution_ms": ATTRIBUTION_WINDOW_MS}  # fmt: skip
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{scenario.name}-s{scenario.seed}-d{days}-{digest}"


def training_cutoff_ms(rec: RecommendWorld, setup: RecommendSetup) -> int:
    """The earliest time a request may have (``draw_requests``' pool starts there)."""
    return int(rec.world.end_ms - setup.request_days * DAY_MS)


def training_rows(table: pa.Table, *, cutoff_ms: int, spec: FeatureSpec = FEATURE_SPEC,
                  attribution_window_ms: int = ATTRIBUTION_WINDOW_MS):  # fmt: skip
    """The backfill's rows whose attribution window closes by ``cutoff_ms``, as a ``TrainingSet`` (event-time
    order; missing feature values take the spec's defaults, as ``load_training_set`` does)."""
    from pricing.training import TrainingSet

    t = table.column("event_time").to_numpy()
    keep = np.flatnonzero(t + attribution_window_ms <= cutoff_ms)
    keep = keep[np.argsort(t[keep], kind="stable")]
    versions = set(table.column("feature_spec_version").to_pylist())
    if versions - {spec.version}:
        raise ValueError(f"backfilled rows are {sorted(versions)}; the model reads {spec.version}")
    n = len(table)
    x = np.asarray(table.column("features").to_pylist(), dtype=np.float64).reshape(n, len(spec.names))[keep]
    x = np.where(np.isfinite(x), x, spec.defaults[None, :])
    return TrainingSet(features=np.ascontiguousarray(x),
                       prices=table.column("price_minor").to_numpy().astype(np.float64)[keep],
                       labels=table.column("label").to_numpy().astype(np.float32)[keep],
                       event_time=t[keep].astype(np.int64), feature_spec_version=spec.version)  # fmt: skip


def find_version(registry: Registry, key: str, *, spec: FeatureSpec = FEATURE_SPEC) -> Manifest | None:
    """The newest version of ``registry`` published with ``key``, if any."""
    try:
        versions = registry.versions()
    except RegistryError:
        return None
    for name in sorted(versions, reverse=True):
        try:
            manifest = registry.manifest(name)
        except RegistryError:
            continue
        if manifest.extra.get(KEY) == key and manifest.feature_spec_version == spec.version:
            return manifest
    return None


def world_model(
    scenario: Scenario,
    rec: RecommendWorld,
    *,
    days: int,
    setup: RecommendSetup,
    cache_dir: Path,
    device: Device = "auto",
    spec: FeatureSpec = FEATURE_SPEC,
    train_config: object | None = None,
    trainer: Callable[..., object] | None = None,
    backfiller: Callable[..., tuple[np.ndarray, pa.Table]] | None = None,
    progress: TextIO | None = None,
) -> WorldModel:
    """The cached model and vectors for this world (see the module docstring), trained and cached when missing.
    ``trainer`` (``pricing.training.train_on``) and ``backfiller`` (``pricing.sim.engine.backfill``) may be
    replaced in tests."""
    from pricing.sim.engine import backfill, served_version
    from pricing.training import TrainConfig, train_on

    t0 = time.perf_counter()
    config = train_config if train_config is not None else TrainConfig()
    key = cache_key(scenario, days=days, setup=setup, train_config=config, spec=spec)
    registry = Registry(cache_dir / "registry")
    vectors = cache_dir / "features" / f"{key}.npy"
    cutoff = training_cutoff_ms(rec, setup)
    manifest = find_version(registry, key, spec=spec)
    n_views = len(rec.world.views)
    if manifest is not None and vectors.is_file():
        features = np.load(vectors)
        if features.shape == (n_views, len(spec.names)):
            served = served_version(registry, manifest.version, device=device, spec=spec)
            return WorldModel(served, features, manifest, key, True, cutoff, time.perf_counter() - t0)
    features, table = (backfiller or backfill)(scenario, days=days, spec=spec, progress=progress, history=rec.history,
                                               attribution_window_ms=ATTRIBUTION_WINDOW_MS)  # fmt: skip
    if manifest is None:
        data = training_rows(table, cutoff_ms=cutoff, spec=spec)
        if len(data) == 0:
            raise ValueError("no training rows close before the evaluated requests: simulate more days")
        with tempfile.TemporaryDirectory(prefix="pricing-rec-train-") as tmp:
            trained = (trainer or train_on)(data, config=config, out_dir=Path(tmp) / "model", spec=spec,
                                            progress=progress)  # fmt: skip
            meta = trained.registry_metadata()
            meta["extra"] = {**meta["extra"], KEY: key, "training_cutoff_ms": cutoff, "scenario": scenario.name,
                             "seed": scenario.seed, "days": days}  # fmt: skip
            manifest = registry.publish(trained.model_dir, **meta, promote=True)
    vectors.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = vectors.with_suffix(".tmp.npy")
    np.save(tmp_path, features)
    tmp_path.replace(vectors)
    served = served_version(registry, manifest.version, device=device, spec=spec)
    return WorldModel(served, features, manifest, key, False, cutoff, time.perf_counter() - t0)


def _utc(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
