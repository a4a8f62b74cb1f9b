"""The profit-maximising policy: score K candidate prices per request with the demand model in one
call, pick the best inside the guardrails, explore on a capped share of traffic, fall back safely.

For each row with a known list price (the reference) and unit cost:

1. the guardrails give the allowed range ``[lo, hi]`` (``pricing_udfs.policy.guardrails``);
2. ``grid_size`` candidates spread evenly over it, each moved to a price point, so every
   candidate is a price the guardrails allow;
3. one ``model.score(features [N, F], candidates [N, K])`` call for the whole batch;
4. the objective ``(price - profit_weight * unit_cost) * p(buy | price)``: ``profit_weight`` 1 is
   expected profit, 0 expected revenue; the best candidate wins (the first on ties);
5. exploration, by ``exploration``:

   * ``"epsilon-greedy"`` (the default): with ``exploration_rate`` > 0, that share of requests
     (chosen by a hash of the request id, so a replay chooses the same) gets a uniformly drawn
     candidate instead. Every model-priced row logs its propensity, the probability that the
     policy would choose this price for this row: ``(1 - rate) * [greedy] + rate / K`` (1.0
     without exploration);
   * ``"thompson"``, with a model that has ``score_members(features, prices) -> [B, N, K]`` (a
     bootstrap ensemble, ``pricing_udfs.model.ensemble``): one ``score_members`` call per batch;
     each request draws ONE member from its request id (the same hash as epsilon-greedy:
     member ``floor(u * B)``, so a replay draws the same member and gets the same price) and
     gets that member's best candidate. Its ``propensity`` is exact: the number of members whose
     best candidate is the chosen one, divided by B, the probability of this price under a
     uniformly drawn member. ``explored`` is true when the price differs from the mean model's
     best candidate; ``expected_conversion`` and ``expected_profit_minor`` are the mean model's
     at the chosen price. Members that agree never explore (propensity 1.0). Exploration thus
     shrinks as the members learn to agree, instead of a fixed share. ``exploration_rate`` is
     not used. With a model without ``score_members`` (a single model), ``"thompson"`` behaves
     exactly as ``"epsilon-greedy"`` (with ``exploration_rate``).

   Whatever the exploration, the chosen price is one of the K candidates: inside the guardrails
   (and the trust region's narrowed range), the fallback taking over as without exploration.

A limit "binds" when the best candidate sits on the range end that the limit set (the optimum
lies at or beyond it): its code joins the row's reason codes (``model`` always, ``exploration``
when explored). Rows without a list price or unit cost, and all rows when the model is missing,
raises, or returns anything but finite probabilities in [0, 1] for a row (under Thompson sampling:
any member), are priced by
:class:`ReferencePriceFallback` with the reason as the first code.

With a **trust region** (the served model's manifest records what it saw in training, and
``trust_region.enabled``), rows whose features lie outside it get a range narrowed toward the
reference price (code ``out_of_range``), rows far outside or of a cold product get the fallback
(``out_of_range`` / ``cold_product`` first), and the model sees the features clipped into the
recorded ranges (``pricing_udfs.policy.trust_region``). The narrowed range always lies inside the
guardrails' range.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.policy.decisions import (
    MODEL_ERROR,
    MODEL_INVALID_OUTPUT,
    NO_LIST_PRICE,
    NO_MODEL,
    NO_UNIT_COST,
    ReferencePriceFallback,
    _column,
    limit_codes,
)
from pricing_udfs.policy.guardrails import NO_PRICE_POINT, Guardrails
from pricing_udfs.policy.trust_region import OUT_OF_RANGE, TrustRegion, TrustRegionSettings, assess, narrow

MODEL = "model"
EXPLORATION = "exploration"
MAX_EXPLORATION_RATE = 0.2


class PolicySettings(BaseModel):
    """``[policy]``: the objective, the candidate grid, exploration and the guardrails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grid_size: int = Field(default=16, ge=2, le=256, description="candidate prices per request (K)")
    profit_weight: float = Field(
        default=1.0, ge=0, le=1, description="objective (price - w * unit_cost) * p(buy): 1 = profit, 0 = revenue"
    )
    exploration_rate: float = Field(
        default=0.0, ge=0, le=MAX_EXPLORATION_RATE,
        description=f"share of requests priced by a uniformly drawn candidate (epsilon-greedy only), at most "
        f"{MAX_EXPLORATION_RATE}",
    )  # fmt: skip
    exploration: Literal["epsilon-greedy", "thompson"] = Field(
        default="epsilon-greedy",
        description="'thompson': each request is priced by one member of an ensemble model, drawn by its request id "
        "(exact propensity: the share of members choosing that price); a single model explores epsilon-greedy",
    )  # fmt: skip
    exploration_seed: int = Field(default=0, ge=0, description="salts the request-id hash that picks explored requests "
                                  "(epsilon-greedy) or the member (thompson)")  # fmt: skip
    guardrails: Guardrails = Guardrails()
    trust_region: TrustRegionSettings = TrustRegionSettings()


def unit_hashes(request_ids: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uniforms in [0, 1) per request id, stable across processes and replays."""
    u1, u2 = [], []
    for rid in request_ids:
        h = hashlib.blake2b(f"{seed}:{rid}".encode(), digest_size=16).digest()
        u1.append(int.from_bytes(h[:8], "little") / 2**64)
        u2.append(int.from_bytes(h[8:], "little") / 2**64)
    return np.asarray(u1), np.asarray(u2)


_KEEP: Any = object()


@dataclass
class ModelPolicy:
    """Expected-profit maximisation over a candidate grid with a demand model (see the module docstring).

    ``model`` is anything with ``score(features, prices) -> probs`` (a handler's loaded model); None prices
    everything with the fallback. With ``settings.exploration == "thompson"``, a model that also has
    ``score_members(features, prices) -> [B, N, K]`` (an ensemble) is Thompson-sampled; any other explores
    epsilon-greedy. ``model_version`` goes into every model-priced event. ``trust_region``:
    what the model saw in training (a manifest's ``TrustRegion`` record, its dict, or the arrays), or None.
    """

    model: Any
    model_version: str
    settings: PolicySettings
    fallback: ReferencePriceFallback
    spec: FeatureSpec = FEATURE_SPEC
    trust_region: Any = None
    guardrails: Guardrails = field(init=False)

    def __post_init__(self) -> None:
        self.guardrails = self.settings.guardrails
        if self.fallback.guardrails != self.guardrails:
            raise ValueError("the fallback must use the policy's guardrails")
        self.trust_region = TrustRegion.of(self.trust_region, self.spec)

    @classmethod
    def create(cls, model: Any, model_version: str, settings: PolicySettings, *, default_price_minor: int,
               currency: str, spec: FeatureSpec = FEATURE_SPEC, trust_region: Any = None) -> "ModelPolicy":  # fmt: skip
        fallback = ReferencePriceFallback(settings.guardrails, default_price_minor, currency)
        return cls(model=model, model_version=model_version, settings=settings, fallback=fallback, spec=spec,
                   trust_region=trust_region)  # fmt: skip

    def with_model(self, model: Any, model_version: str, trust_region: Any = _KEEP) -> "ModelPolicy":
        """The same policy with another model (and that model's trust region; by default the current one's)."""
        region = self.trust_region if trust_region is _KEEP else trust_region
        return ModelPolicy(model=model, model_version=model_version, settings=self.settings, fallback=self.fallback,
                           spec=self.spec, trust_region=region)  # fmt: skip

    @property
    def thompson(self) -> bool:
        """Whether requests are priced by Thompson sampling: ``exploration = "thompson"`` and a model with members."""
        return self.settings.exploration == "thompson" and hasattr(self.model, "score_members")

    @property
    def active_trust_region(self) -> TrustRegion | None:
        """The trust region that applies: the model's, unless the settings switch it off (or there is no model)."""
        if self.model is None or not self.settings.trust_region.enabled:
            return None
        return self.trust_region

    def decide(self, batch: pd.DataFrame) -> pd.DataFrame:
        n = len(batch)
        ref = _column(batch, "list_price_minor")
        cost = _column(batch, "unit_cost_minor")
        reason = np.full(n, "", dtype=object)
        reason[~(np.isfinite(cost) & (cost > 0))] = NO_UNIT_COST
        reason[~(np.isfinite(ref) & (ref > 0))] = NO_LIST_PRICE
        if self.model is None:
            reason[reason == ""] = NO_MODEL
        shrink = np.zeros(n)
        region = self.active_trust_region
        if region is not None and (reason == "").any():
            candidates = np.flatnonzero(reason == "")
            features = batch.iloc[candidates][list(self.spec.names)].to_numpy(dtype=np.float64)
            a = assess(region, features, self.settings.trust_region)
            reason[candidates[a.fallback]] = a.reasons()[a.fallback]
            shrink[candidates] = a.shrink
        scored = np.flatnonzero(reason == "")
        out = pd.DataFrame(index=batch.index, columns=list(self.fallback.decide(batch.iloc[:0]).columns))
        if scored.size:
            rows = batch.iloc[scored]
            decisions, failed = self._score(rows, ref[scored], cost[scored], None if region is None else shrink[scored],
                                            region)  # fmt: skip
            reason[scored[failed != ""]] = failed[failed != ""]
            ok = failed == ""
            if ok.any():
                out.iloc[scored[ok]] = decisions[ok].to_numpy(dtype=object)
        fb = np.flatnonzero(reason != "")
        if fb.size:
            codes = [r if r != NO_LIST_PRICE else None for r in reason[fb]]
            out.iloc[fb] = self.fallback.decide(batch.iloc[fb], codes).to_numpy(dtype=object)
        return out.astype({"price_minor": np.int64, "reference_price_minor": np.int64, "expected_conversion": np.float64,
                           "expected_profit_minor": np.int64, "fallback_used": bool, "explored": bool,
                           "propensity": np.float64})  # fmt: skip

    def _score(self, rows: pd.DataFrame, ref: np.ndarray, cost: np.ndarray, shrink: np.ndarray | None = None,
               region: TrustRegion | None = None) -> tuple[pd.DataFrame, np.ndarray]:  # fmt: skip
        """Decisions for rows with a list price and a unit cost, and per row "" or why the model failed.

        ``shrink`` (per row, in [0, 1)) narrows the allowed range toward the reference price; ``region``
        clips the features the model sees."""
        s = self.settings
        n, k = len(rows), s.grid_size
        g = self.guardrails
        b = g.limits(reference_price=ref, unit_cost=cost, anchor_price=_column(rows, "anchor_price_minor", 0.0))
        lo, hi, lo_reason, hi_reason = b.lo, b.hi, b.lo_reason, b.hi_reason
        narrowed = np.zeros(n, dtype=bool) if shrink is None else shrink > 0
        if narrowed.any():
            lo, hi = narrow(b.lo, b.hi, np.rint(ref), np.where(narrowed, shrink, 0.0))
            # A narrowed end is not a guardrail: no limit code when the price sits on it.
            lo_reason = np.where(lo == b.lo, b.lo_reason, "")
            hi_reason = np.where(hi == b.hi, b.hi_reason, "")
        steps = np.linspace(0.0, 1.0, k)[None, :]
        grid = np.rint(lo[:, None] + (hi - lo)[:, None] * steps).astype(np.int64)
        cand, fits = g.to_price_points(grid, lo[:, None], hi[:, None])
        if narrowed.any() and not fits.all():
            # no price point inside the narrowed range: the nearest one inside the guardrails' range
            wide, wide_fits = g.to_price_points(grid, b.lo[:, None], b.hi[:, None])
            cand, fits = np.where(fits, cand, wide), fits | wide_fits
        features = rows[list(self.spec.names)].to_numpy(dtype=np.float64)
        if region is not None:
            features = region.clip(features)
        failed = np.full(n, "", dtype=object)
        thompson = self.thompson
        try:
            if thompson:  # one call: each member's probabilities; the mean model is their mean
                members = np.asarray(self.model.score_members(features, cand.astype(np.float64)), dtype=np.float64)
            else:
                probs = np.asarray(self.model.score(features, cand.astype(np.float64)), dtype=np.float64)
        except Exception:  # noqa: BLE001 - any model failure is priced by the fallback, counted by the caller
            failed[:] = MODEL_ERROR
            return pd.DataFrame(index=rows.index), failed
        if thompson:
            if members.ndim != 3 or members.shape[0] < 1 or members.shape[1:] != (n, k):
                failed[:] = MODEL_INVALID_OUTPUT
                return pd.DataFrame(index=rows.index), failed
            valid = np.all(np.isfinite(members) & (members >= 0) & (members <= 1), axis=(0, 2))
            members = np.where(valid[None, :, None], members, 0.0)
            # the mean model exactly as the ensemble's score() gives it (float64 mean, float32 result)
            probs = members.mean(axis=0).astype(np.float32).astype(np.float64)
        elif probs.shape != (n, k):
            failed[:] = MODEL_INVALID_OUTPUT
            return pd.DataFrame(index=rows.index), failed
        else:
            valid = np.all(np.isfinite(probs) & (probs >= 0) & (probs <= 1), axis=1)
        failed[~valid] = MODEL_INVALID_OUTPUT
        probs = np.where(valid[:, None], probs, 0.0)
        margin = cand - s.profit_weight * cost[:, None]
        objective = margin * probs
        greedy = np.argmax(objective, axis=1)
        chosen = greedy.copy()
        explored = np.zeros(n, dtype=bool)
        propensity = np.ones(n)
        if thompson:
            b_size = members.shape[0]
            u, _ = unit_hashes(rows["request_id"] if "request_id" in rows else range(n), s.exploration_seed)
            drawn = np.minimum((u * b_size).astype(np.int64), b_size - 1)  # a uniform member per request
            best = np.argmax(margin[None, :, :] * members, axis=2)  # [B, N]: each member's best candidate
            chosen = best[drawn, np.arange(n)]
            best_price = cand[np.arange(n)[None, :], best]  # [B, N]
            price_chosen = cand[np.arange(n), chosen]
            # P(this price | x) under a uniformly drawn member: the share of members whose best is this price
            propensity = (best_price == price_chosen[None, :]).sum(axis=0) / b_size
            explored = price_chosen != cand[np.arange(n), greedy]
        elif s.exploration_rate > 0:
            u, v = unit_hashes(rows["request_id"] if "request_id" in rows else range(n), s.exploration_seed)
            explored = u < s.exploration_rate
            pick = np.minimum((v * k).astype(np.int64), k - 1)
            chosen = np.where(explored, pick, greedy)
            propensity = (1 - s.exploration_rate) * (chosen == greedy) + s.exploration_rate / k
        at = np.arange(n)
        price = cand[at, chosen]
        conversion = probs[at, chosen]
        bound = limit_codes(price, lo, hi, lo_reason, hi_reason, greedy == k - 1, greedy == 0)
        codes = [
            [MODEL] + ([OUT_OF_RANGE] if narrowed[i] else []) + ([EXPLORATION] if explored[i] else [])
            + ([] if explored[i] else bound[i])
            + ([] if fits[i, chosen[i]] else [NO_PRICE_POINT])
            for i in range(n)
        ]  # fmt: skip
        currency = rows["list_currency"] if "list_currency" in rows else pd.Series([None] * n, index=rows.index)
        decisions = pd.DataFrame(
            {
                "price_minor": price.astype(np.int64),
                "reference_price_minor": np.rint(ref).astype(np.int64),
                "currency": currency.fillna(self.fallback.currency).to_numpy(dtype=object),
                "model_version": np.full(n, self.model_version, dtype=object),
                "expected_conversion": conversion,
                "expected_profit_minor": np.rint((price - cost) * conversion).astype(np.int64),
                "reason_codes": codes,
                "fallback_used": np.zeros(n, dtype=bool),
                "explored": explored,
                "propensity": propensity,
            },
            index=rows.index,
        )
        return decisions, failed
