"""The trust region: price with the demand model only as far as the request looks like what it learned from.

A model's manifest records what it saw in training (``pricing_udfs.model.registry.TrustRegion``,
computed by ``pricing train``): each feature's range over the training rows and how much traffic
the product and user windows held. Per request, :func:`assess` measures

* **how far the features lie outside the recorded ranges**: per feature, the distance beyond the
  range divided by the range's width (at least :func:`widths`' floor: a feature that was constant in
  training, like a flag that never flipped, counts one unit per unit), and the row's distance is its
  worst feature's. A missing (non-finite) value counts as infinitely far;
* **whether the product has too little history** (a new product, a fresh job's empty windows, a new
  market): one of its traffic windows (``PRODUCT_TRAFFIC``) holds less than the training rows'
  ``cold_product_quantile`` quantile of that window did.

What the policy does with it (``pricing_udfs.policy.model_policy``):

* within ``tolerance`` the allowed range stays the guardrails' (the model still sees clipped features);
* beyond it the allowed range ``[lo, hi]`` (the guardrails') narrows toward the reference price
  ``c`` (the list price moved into the guardrails, what the fallback charges), in proportion:
  ``shrink = (distance - tolerance) / (fallback_distance - tolerance)``, the range becomes
  ``[c - (c - lo) * (1 - shrink), c + (hi - c) * (1 - shrink)]``: a subset of the guardrails'
  range that shrinks monotonically with the distance. Such a row's reason codes carry
  ``out_of_range``;
* at ``fallback_distance`` and beyond, and for a cold product, the fallback prices the row (the
  reference price, ``fallback_used``), with ``out_of_range`` or ``cold_product`` first.

The model is fed the features **clipped into the recorded ranges** (:meth:`TrustRegion.clip`), so it
never extrapolates in a feature: a product five times busier than any in training is scored as
the busiest one it saw. Money features (names ending in ``_minor``: list price, unit cost, competitor
prices) are not clipped: the network reads them as ratios to each other and to the candidate
price, and clipping one would change a ratio the row really has; their distance still counts.

Without a recorded trust region (an older model) or with ``enabled = false``, none of this applies.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.registry import TrustRegion as TrustRegionRecord

log = logging.getLogger(__name__)

OUT_OF_RANGE = "out_of_range"
COLD_PRODUCT = "cold_product"
TRUST_CODES = (OUT_OF_RANGE, COLD_PRODUCT)
# What training records (``pricing.training.trust_region_of``): the range of each feature between
# these quantiles, and the traffic windows' values at these levels.
RANGE_QUANTILES = (0.005, 0.995)
TRAFFIC_LEVELS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995)
# The traffic windows: the product's (also the cold-product test) and the user's (recorded, shown).
PRODUCT_TRAFFIC = ("views_24h", "purchases_24h", "views_1h", "views_5m")
USER_TRAFFIC = ("user_views_24h", "user_purchases_24h", "user_views_30m")
MONEY_SUFFIX = "_minor"


class TrustRegionSettings(BaseModel):
    """``[policy.trust_region]``: how far from what the model saw in training it may price freely.

    The defaults were measured offline (README, "Trust region" and "It earns more"): they leave the
    training intensity's prices as they were and narrow most rows of a market 20 times busier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="apply the model's recorded trust region (when it has one)")
    tolerance: float = Field(
        default=1.0, ge=0, description="distance outside the training ranges (in range widths) that changes nothing"
    )
    fallback_distance: float = Field(
        default=16.0, gt=0, description="distance at and beyond which the reference price (fallback) is charged"
    )
    cold_product_quantile: float = Field(
        default=0.0, ge=0, le=0.5,
        description="a product whose traffic window holds less than the training rows' quantile at this level is "
        "cold and gets the reference price; 0: off",
    )  # fmt: skip

    @model_validator(mode="after")
    def _ordered(self) -> "TrustRegionSettings":
        if self.fallback_distance <= self.tolerance:
            raise ValueError("fallback_distance must exceed tolerance")
        return self


def widths(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Each range's width, with a floor for features constant in training: ``max(1, |value|)`` (one step of a
    flag or a count, or the value's own scale), so that every distance is finite."""
    return np.where(hi > lo, hi - lo, np.maximum(1.0, np.abs(hi)))


@dataclass(frozen=True, eq=False)
class TrustRegion:
    """A recorded trust region as arrays in the serving spec's order (see the module docstring).

    A feature the record has no range for is unconstrained (``-inf``, ``inf``); a traffic window it has
    no quantiles for never makes a product cold.
    """

    lo: np.ndarray  # [F]
    hi: np.ndarray  # [F]
    width: np.ndarray  # [F], > 0
    clipped: np.ndarray  # [F] bool: fed to the model clipped into [lo, hi]
    traffic_levels: np.ndarray  # [L]
    product_traffic: Mapping[int, np.ndarray]  # spec index -> values at traffic_levels
    record: TrustRegionRecord | None = None

    @classmethod
    def of(cls, value: "TrustRegion | TrustRegionRecord | Mapping[str, Any] | None",
           spec: FeatureSpec = FEATURE_SPEC) -> "TrustRegion | None":  # fmt: skip
        """The arrays for ``spec`` from a manifest's record (or its dict); a TrustRegion or None passes through."""
        if value is None or isinstance(value, TrustRegion):
            return value
        record = TrustRegionRecord.of(value)
        if record.feature_spec_version != spec.version:
            log.warning("the trust region was recorded for feature spec %s, the job serves %s: features are "
                        "matched by name", record.feature_spec_version, spec.version)  # fmt: skip
        n = len(spec.names)
        lo, hi = np.full(n, -np.inf), np.full(n, np.inf)
        for i, name in enumerate(spec.names):
            if name in record.features:
                lo[i], hi[i] = record.features[name]
        known = np.isfinite(lo) & np.isfinite(hi)
        width = np.where(known, widths(np.where(known, lo, 0.0), np.where(known, hi, 0.0)), np.inf)
        clipped = np.array([known[i] and not name.endswith(MONEY_SUFFIX) for i, name in enumerate(spec.names)])
        levels = np.asarray(record.traffic_levels, dtype=np.float64)
        traffic = {spec.index(name): np.asarray(record.traffic[name], dtype=np.float64)
                   for name in PRODUCT_TRAFFIC if name in spec.names and name in record.traffic}  # fmt: skip
        return cls(lo=lo, hi=hi, width=width, clipped=clipped, traffic_levels=levels, product_traffic=traffic,
                   record=record)  # fmt: skip

    def distances(self, features: np.ndarray) -> np.ndarray:
        """``[N, F]``: per feature, how far outside its range, in range widths (0 inside; inf when not finite)."""
        x = np.asarray(features, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            beyond = np.maximum(np.maximum(self.lo - x, x - self.hi), 0.0) / self.width
        return np.where(np.isfinite(x), np.nan_to_num(beyond, nan=0.0), np.inf)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """``[N]``: the row's worst feature's distance."""
        d = self.distances(features)
        return d.max(axis=1, initial=0.0)

    def cold(self, features: np.ndarray, quantile: float) -> np.ndarray:
        """``[N]`` bool: a product traffic window holds less than the training rows' ``quantile`` of it
        (interpolated between the recorded levels; below the lowest level, the lowest level's value)."""
        x = np.asarray(features, dtype=np.float64)
        out = np.zeros(len(x), dtype=bool)
        if quantile <= 0 or self.traffic_levels.size == 0:
            return out
        for i, values in self.product_traffic.items():
            threshold = float(np.interp(quantile, self.traffic_levels, values))
            out |= x[:, i] < threshold
        return out

    def clip(self, features: np.ndarray) -> np.ndarray:
        """The features with every clipped feature moved into its range (money features kept)."""
        x = np.asarray(features, dtype=np.float64)
        return np.where(self.clipped, np.clip(x, self.lo, self.hi), x)


@dataclass(frozen=True, eq=False)
class Assessment:
    """Per row: the distance, whether the product is cold, the shrink in [0, 1] and what follows from it."""

    distance: np.ndarray
    cold: np.ndarray
    shrink: np.ndarray  # 0: the guardrails' range, 1: the reference price only

    @property
    def fallback(self) -> np.ndarray:
        return self.cold | (self.shrink >= 1.0)

    @property
    def narrowed(self) -> np.ndarray:
        return self.cold | (self.shrink > 0.0)

    def reasons(self) -> np.ndarray:
        """Per row "" or the trust code that applies (``cold_product`` wins)."""
        return np.where(self.cold, COLD_PRODUCT, np.where(self.shrink > 0.0, OUT_OF_RANGE, "")).astype(object)


def shrink(distance: np.ndarray, settings: TrustRegionSettings) -> np.ndarray:
    """0 up to the tolerance, 1 from the fallback distance, linear in between (non-decreasing in the distance)."""
    d = np.asarray(distance, dtype=np.float64)
    span = settings.fallback_distance - settings.tolerance
    with np.errstate(over="ignore"):
        return np.clip((np.nan_to_num(d, nan=math.inf) - settings.tolerance) / span, 0.0, 1.0)


def assess(region: TrustRegion, features: np.ndarray, settings: TrustRegionSettings) -> Assessment:
    distance = region.distance(features)
    return Assessment(distance=distance, cold=region.cold(features, settings.cold_product_quantile),
                      shrink=shrink(distance, settings))  # fmt: skip


def narrow(lo: np.ndarray, hi: np.ndarray, center: np.ndarray, shrink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer ``[lo', hi']`` inside ``[lo, hi]`` that contains ``center`` (clipped into ``[lo, hi]``) and
    shrinks toward it: ``shrink`` 0 leaves the range, 1 leaves the center alone."""
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    c = np.clip(np.asarray(center, dtype=np.int64), lo, hi)
    keep = 1.0 - np.clip(np.asarray(shrink, dtype=np.float64), 0.0, 1.0)
    new_lo = np.clip(np.ceil(c - (c - lo) * keep - 1e-9).astype(np.int64), lo, c)
    new_hi = np.clip(np.floor(c + (hi - c) * keep + 1e-9).astype(np.int64), c, hi)
    return new_lo, new_hi
