"""The scoring stage of the job: features in, checked decisions out, one model call per batch.

:class:`ScoringStage` is what the Flink pricing UDF runs per Python worker (the UDF in
``pricing_udfs.udfs`` is a thin adapter that calls :meth:`open` once and :meth:`price` per Arrow
batch). Per batch it:

1. gives every row its product's anchor (:class:`Anchors`, for the ``max_change`` guardrail);
2. lets the :class:`ModelWatcher` pick up a newly promoted model (at most once per interval);
3. runs the policy (one ``model.score`` call over all rows and all K candidates), timing the call;
4. checks every decision (``check_decisions``): a bad one is re-priced by the fallback;
5. counts what happened (:attr:`counts`) for the Flink metrics.

Guarantee: given the same batch, the same model and the same anchors, the same prices. The anchors
are per-worker memory, not checkpointed: after a restart (or on another worker) a product has no
anchor until this worker prices it in an earlier hour, so the ``max_change`` limit restarts from
the other guardrails. With exactly-once output, consumers never see prices from before a crash
that the replay might price differently.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.serving import Device, ModelWatcher
from pricing_udfs.policy import ModelPolicy, PolicySettings, check_decisions
from pricing_udfs.policy.guardrails import LIMITS, NO_PRICE_POINT

_HOUR_MS = 3_600_000


class ScoringConfig(BaseModel):
    """Everything a worker needs to build its scoring stage (picklable; shipped with the UDF)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry_dir: str | None
    model_version: str = "latest"
    watch_interval_s: float = 10.0
    device: Device = "auto"
    policy: PolicySettings = PolicySettings()
    default_price_minor: int = 1_999
    currency: str = "EUR"


@dataclass
class Anchors:
    """Per product: the last price offered in an earlier hour (event time) than the current one."""

    _state: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # product -> (hour, last price, anchor)

    def for_batch(self, products: pd.Series, event_time: pd.Series) -> np.ndarray:
        hours = (pd.to_numeric(event_time).to_numpy(dtype=np.int64) // _HOUR_MS).tolist()
        out = np.zeros(len(hours), dtype=np.int64)
        for i, (p, h) in enumerate(zip(products.tolist(), hours)):
            st = self._state.get(p)
            if st is not None:
                out[i] = st[1] if st[0] < h else st[2]
        return out

    def record(self, products: pd.Series, event_time: pd.Series, prices: np.ndarray) -> None:
        hours = (pd.to_numeric(event_time).to_numpy(dtype=np.int64) // _HOUR_MS).tolist()
        for p, h, price in zip(products.tolist(), hours, np.asarray(prices).tolist()):
            st = self._state.get(p)
            if st is None:
                self._state[p] = (h, price, 0)
            elif st[0] < h:
                self._state[p] = (h, price, st[1])
            elif st[0] == h:
                self._state[p] = (h, price, st[2])
            # a request from an older hour than the product's newest does not move the anchor


class _Timed:
    """Wraps a model so the stage can time its ``score`` call."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0
        self.feature_spec_version = getattr(model, "feature_spec_version", None)

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            return self.model.score(features, prices)
        finally:
            self.seconds += time.perf_counter() - t0


class ScoringStage:
    """See the module docstring. ``watcher`` may be injected (tests); else it is built from ``config``."""

    def __init__(self, config: ScoringConfig, *, spec: FeatureSpec = FEATURE_SPEC, watcher: ModelWatcher | None = None) -> None:
        self.config = config
        self.spec = spec
        self.watcher = watcher
        self.anchors = Anchors()
        self.counts: Counter[str] = Counter()
        self.last_batch_size = 0
        self.last_inference_ms = 0.0
        self.events: list[str] = []
        self._recent: np.ndarray | None = None
        self._policy = ModelPolicy.create(None, "none", config.policy, default_price_minor=config.default_price_minor,
                                          currency=config.currency, spec=spec)  # fmt: skip

    def open(self) -> None:
        if self.watcher is None:
            c = self.config
            self.watcher = ModelWatcher(Path(c.registry_dir) if c.registry_dir else None, version=c.model_version,
                                        interval_s=c.watch_interval_s, device=c.device, spec=self.spec)  # fmt: skip
        self._refresh(force=True)

    @property
    def model_version(self) -> str | None:
        return self.watcher.current.version if self.watcher and self.watcher.current else None

    def _refresh(self, *, force: bool = False) -> None:
        assert self.watcher is not None, "open() first"
        before = len(self.watcher.rejected)
        event = self.watcher.check(self._recent, force=force)
        if event:
            self.events.append(event)
        self.counts["rejected_model_versions"] += len(self.watcher.rejected) - before
        current = self.watcher.current
        if current is not None and current.version != self._policy.model_version:
            self._policy = self._policy.with_model(current.model, current.version)

    def decide(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Checked decisions for ``batch`` (request columns plus one column per spec feature)."""
        self._refresh()
        batch = batch.assign(anchor_price_minor=self.anchors.for_batch(batch["product_id"], batch["event_time"]))
        timed = _Timed(self._policy.model) if self._policy.model is not None else None
        policy = self._policy.with_model(timed, self._policy.model_version) if timed else self._policy
        decisions, replaced = check_decisions(policy, batch, policy.decide(batch))
        self.anchors.record(batch["product_id"], batch["event_time"], decisions["price_minor"].to_numpy())
        self._count(decisions, replaced)
        self.last_batch_size = len(batch)
        self.last_inference_ms = timed.seconds * 1000 if timed else 0.0
        if len(batch):
            self._recent = batch[list(self.spec.names)].to_numpy(dtype=np.float64)[-32:]
        return decisions

    def _count(self, decisions: pd.DataFrame, replaced: int) -> None:
        c = self.counts
        c["requests_priced"] += len(decisions)
        c["fallbacks"] += int(decisions["fallback_used"].sum())
        c["explored"] += int(decisions["explored"].sum())
        c["invalid_decisions"] += replaced
        for codes in decisions["reason_codes"]:
            for code in codes:
                if code in LIMITS or code == NO_PRICE_POINT:
                    c[f"guardrail_{code}"] += 1
                elif code in ("no_model", "model_error", "model_invalid_output", "no_unit_cost", "default_price"):
                    c[f"fallback_{code}"] += 1
