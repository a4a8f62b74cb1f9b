"""The engine's own policy in the simulator: the same ``ModelPolicy`` object and model the job runs,
fed the feature vectors the backfill computes for the same requests.

``pricing evaluate --model VERSION`` builds it: the evaluation's world is the one ``pricing simulate
history`` writes for the same scenario and days (same seed), so the backfill of that history
(``jobs.training_set``, the job's feature semantics) gives every view's request its served vector,
by request id (``h<seed>-r<view_index>``). Per step the adapter takes those vectors, overrides
what the replay knows better at that moment (list price, unit cost, stock: they are the market's,
not the history's), adds the replay's anchor (the policy's last price for the product in an
earlier hour) and lets the policy decide.

Limit, stated: behaviour-derived features (views, purchases, conversion, the user's history) come
from the *historical* log, not from the purchases this policy's own prices cause in the replay.
A request the backfill has no vector for (none here, unless the history was cut) gets the spec's
defaults with the market's values.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pricing.sim.history import generate_history, write_history
from pricing.sim.scenario import Scenario
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.policy import ModelPolicy


class EnginePolicy:
    """A ``PricingPolicy`` (``price(batch) -> prices``) around the engine's ``ModelPolicy``."""

    def __init__(self, policy: ModelPolicy, features: np.ndarray, *, spec: FeatureSpec = FEATURE_SPEC,
                 name: str | None = None) -> None:  # fmt: skip
        self.policy = policy
        self.features = features  # [n_views, F]; NaN rows: no backfilled vector
        self.spec = spec
        self.name = name or f"model-{policy.model_version}"
        self.fallbacks = 0
        self.priced = 0

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        idx = batch["view_index"].to_numpy(dtype=np.int64)
        x = self.features[idx].copy()
        missing = np.isnan(x).all(axis=1)
        x[missing] = self.spec.defaults
        frame = pd.DataFrame(x, columns=self.spec.names)
        frame["list_price_minor"] = batch["reference_price_minor"].to_numpy(dtype=np.float64)
        frame["unit_cost_minor"] = batch["unit_cost_minor"].to_numpy(dtype=np.float64)
        frame["inventory"] = batch["inventory"].to_numpy(dtype=np.float64)
        frame["request_id"] = [f"r{i}" for i in idx]
        frame["anchor_price_minor"] = batch["anchor_price_minor"].to_numpy()
        frame["list_currency"] = self.policy.fallback.currency
        decisions = self.policy.decide(frame)
        self.priced += len(decisions)
        self.fallbacks += int(decisions["fallback_used"].sum())
        return decisions["price_minor"].to_numpy(dtype=np.int64)


def backfilled_features(scenario: Scenario, *, days: int, spec: FeatureSpec = FEATURE_SPEC,
                        progress: TextIO | None = None) -> np.ndarray:  # fmt: skip
    """The served feature vector of every view's request in ``scenario``'s world, ``[n_views, F]``
    (NaN rows where the backfill has none), via the history files and the Beam backfill."""
    from jobs.training_set import run_backfill

    history = generate_history(scenario, days=days, progress=progress)
    n_views = len(history.impressions)
    with tempfile.TemporaryDirectory(prefix="pricing-eval-") as tmp:
        write_history(history, Path(tmp) / "history", progress=progress)
        summary = run_backfill(Path(tmp) / "history", Path(tmp) / "rows", show_progress=progress is not None)
        table = pq.read_table(summary.out_dir, columns=["request_id", "features"])
    prefix = f"h{scenario.seed}-r"
    ids = table.column("request_id").to_pylist()
    rows = np.array([int(r[len(prefix):]) if r.startswith(prefix) else -1 for r in ids], dtype=np.int64)
    vectors = np.asarray(table.column("features").to_pylist(), dtype=np.float64).reshape(len(ids), len(spec.names))
    out = np.full((n_views, len(spec.names)), np.nan)
    ok = (rows >= 0) & (rows < n_views)
    out[rows[ok]] = vectors[ok]
    if progress is not None:
        print(f"backfilled {int(ok.sum()):,} of {n_views:,} requests' features", file=progress or sys.stderr)
    return out
