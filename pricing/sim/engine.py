"""The engine in the simulator: the job's own scoring stage, fed the features the backfill computes
for the same requests, with the simulator supplying only the market.

``pricing evaluate --model VERSION`` builds it: the evaluation's world is the one ``pricing simulate
history`` writes for the same scenario and days (same seed), so the backfill of that history
(``jobs.training_set``, the job's feature semantics) gives every view's request its served vector,
by request id (``h<seed>-r<view_index>``). Per step (an hour of the replay) :class:`EngineStage`
takes those vectors, overrides what the replay knows better at that moment (list price, unit cost,
stock: they are the market's, not the history's), and hands the requests to a
:class:`pricing_udfs.scoring.ScoringStage`, the object each job worker runs: the same request ids
as the history's (so exploration picks the same requests as the job would), the stage's own anchors
(the product's last price in an earlier hour of event time), the policy with the served version's
trust region, and ``check_decisions``.

The stage is built around one registry version without a registry watcher
(:func:`served_version` loads and validates it as the job's watcher would;
``ModelWatcher.serving`` serves it), so nothing is swapped during a replay.

Limit, stated: behaviour-derived features (views, purchases, conversion, the user's history) come
from the *historical* log, not from the purchases this policy's own prices cause in the replay.
A request the backfill has no vector for (none here, unless the history was cut) gets the spec's
defaults with the market's values.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pricing.sim.history import History, generate_history, write_history
from pricing.sim.scenario import Scenario
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.registry import LATEST, Registry
from pricing_udfs.model.serving import Device, ModelWatcher, ServedModel, load_model, validate
from pricing_udfs.policy import PolicySettings
from pricing_udfs.scoring import ScoringConfig, ScoringStage

log = logging.getLogger(__name__)


class ModelNotServable(ValueError):
    """The version would not serve in the job (its watcher would reject it); the message says why."""


def served_version(registry: Registry, version: str = LATEST, *, device: Device = "auto",
                   spec: FeatureSpec = FEATURE_SPEC) -> ServedModel:  # fmt: skip
    """``version`` of ``registry`` loaded and checked as the job's model watcher does (same loader, same
    canary validation), with its manifest's trust region. ModelNotServable when the watcher would reject it."""
    name = registry.resolve(version).name
    manifest = registry.manifest(name)
    model = load_model(registry.model_dir(name), device=device)
    reason = validate(model, spec)
    if reason:
        raise ModelNotServable(f"model {name} would not serve: {reason}")
    if manifest.trust_region is None:
        log.warning("model %s has no trust region (manifest version %s): it prices without one", name,
                    manifest.manifest_version)  # fmt: skip
    created = dt.datetime.strptime(manifest.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    return ServedModel(name, model, int(created.timestamp()), manifest.trust_region)


def offline_stage(served: ServedModel, policy: PolicySettings, *, default_price_minor: int, currency: str,
                  spec: FeatureSpec = FEATURE_SPEC) -> ScoringStage:  # fmt: skip
    """The job's scoring stage around ``served`` (no registry, no watcher thread), opened."""
    config = ScoringConfig(registry_dir=None, model_version=served.version, policy=policy,
                           default_price_minor=default_price_minor, currency=currency)  # fmt: skip
    stage = ScoringStage(config, spec=spec, watcher=ModelWatcher.serving(served, spec=spec))
    stage.open()
    return stage


def request_ids(seed: int, view_index: np.ndarray) -> list[str]:
    """The request ids ``pricing simulate history`` gives these views (``h<seed>-r<view_index>``)."""
    return [f"h{seed}-r{int(i)}" for i in view_index]


class EngineStage:
    """A ``PricingPolicy`` (``price(batch) -> prices``) around the job's :class:`ScoringStage`."""

    def __init__(self, stage: ScoringStage, features: np.ndarray, *, seed: int, spec: FeatureSpec = FEATURE_SPEC,
                 name: str | None = None) -> None:  # fmt: skip
        self.stage = stage
        self.features = features  # [n_views, F]; NaN rows: no backfilled vector
        self.seed = seed  # the scenario's: request ids are the history's
        self.spec = spec
        self.name = name or f"model-{stage.model_version}"

    @property
    def priced(self) -> int:
        return int(self.stage.counts["requests_priced"])

    @property
    def fallbacks(self) -> int:
        return int(self.stage.counts["fallbacks"])

    def requests(self, batch: pd.DataFrame) -> pd.DataFrame:
        """The stage's input for a replay batch: the history's request ids, the backfilled vectors with the
        market's list price, unit cost and stock, the request's event time."""
        idx = batch["view_index"].to_numpy(dtype=np.int64)
        x = self.features[idx].copy()
        missing = np.isnan(x).all(axis=1)
        x[missing] = self.spec.defaults
        frame = pd.DataFrame(x, columns=self.spec.names)
        for name, column in (("list_price_minor", "reference_price_minor"), ("unit_cost_minor", "unit_cost_minor"),
                             ("inventory", "inventory")):  # fmt: skip
            if name in self.spec.names:
                frame[name] = batch[column].to_numpy(dtype=np.float64)
        frame.insert(0, "request_id", request_ids(self.seed, idx))
        frame.insert(1, "user_id", batch["user_id"].to_numpy(dtype=object))
        frame.insert(2, "product_id", batch["product_id"].to_numpy(dtype=object))
        frame.insert(3, "channel", batch["channel"].to_numpy(dtype=object))
        frame.insert(4, "event_time", batch["event_time"].to_numpy(dtype=np.int64))
        frame.insert(5, "list_currency", self.stage.config.currency)
        return frame

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        decisions = self.stage.decide(self.requests(batch))
        return decisions["price_minor"].to_numpy(dtype=np.int64)


def backfilled_features(scenario: Scenario, *, days: int, spec: FeatureSpec = FEATURE_SPEC,
                        progress: TextIO | None = None, history: History | None = None) -> np.ndarray:  # fmt: skip
    """The served feature vector of every view's request in ``scenario``'s world, ``[n_views, F]``
    (NaN rows where the backfill has none), via the history files and the Beam backfill. ``history``: that
    world's history when the caller already generated it (``generate_history``), else generated here."""
    return backfill(scenario, days=days, spec=spec, progress=progress, history=history)[0]


def backfill(scenario: Scenario, *, days: int, spec: FeatureSpec = FEATURE_SPEC, progress: TextIO | None = None,
             history: History | None = None, attribution_window_ms: int | None = None) -> tuple[np.ndarray, pa.Table]:  # fmt: skip
    """:func:`backfilled_features` and the backfill's labelled training rows themselves (``pricing.training_rows``
    columns plus ``view_index``, the history's view each row is the request of; -1: none), from one Beam run."""
    from jobs.training_set import DEFAULT_ATTRIBUTION_WINDOW_MS, run_backfill

    if history is not None and (history.days != days or history.scenario != scenario):
        raise ValueError("history is not this scenario's history over these days")
    history = history if history is not None else generate_history(scenario, days=days, progress=progress)
    n_views = len(history.impressions)
    window = DEFAULT_ATTRIBUTION_WINDOW_MS if attribution_window_ms is None else attribution_window_ms
    with tempfile.TemporaryDirectory(prefix="pricing-eval-") as tmp:
        write_history(history, Path(tmp) / "history", progress=progress)
        summary = run_backfill(Path(tmp) / "history", Path(tmp) / "rows", attribution_window_ms=window,
                               show_progress=progress is not None)  # fmt: skip
        table = pq.read_table(summary.out_dir)
    prefix = f"h{scenario.seed}-r"
    ids = table.column("request_id").to_pylist()
    rows = np.array([int(r[len(prefix):]) if r.startswith(prefix) else -1 for r in ids], dtype=np.int64)
    rows = np.where((rows >= 0) & (rows < n_views), rows, -1)
    vectors = np.asarray(table.column("features").to_pylist(), dtype=np.float64).reshape(len(ids), len(spec.names))
    out = np.full((n_views, len(spec.names)), np.nan)
    ok = rows >= 0
    out[rows[ok]] = vectors[ok]
    if progress is not None:
        print(f"backfilled {int(ok.sum()):,} of {n_views:,} requests' features", file=progress or sys.stderr)
    return out, table.append_column("view_index", pa.array(rows, pa.int64()))
