"""Guardrails: the hard business limits on any price, one implementation for the job and the simulator.

The allowed range of a row is ``[lo, hi]`` in integer minor units, built from:

* ``floor_margin``: ``unit_cost * (1 + min_margin)`` (never sell below cost plus a margin);
* ``floor_map``: ``reference * min_multiplier``, the minimum advertised price (as a share of the
  list price: the contracts carry no per-product MAP feed);
* ``ceiling``: ``reference * max_multiplier``;
* ``personal_deviation``: ``reference * (1 +/- max_personal_deviation)``, so that two shoppers
  never see prices further apart than ``2 * max_personal_deviation`` of the list price (fairness);
* ``max_change``: ``anchor * (1 +/- max_change)``, the anchor being the product's last price offered
  in an earlier hour (event time) than the request's: a product's price level moves at most
  ``max_change`` per hour. No anchor yet (0, NaN): no limit from it;
* ``price_point``: prices end in ``price_ending`` (e.g. 99 for .99 endings) when one fits in the range.

Precedence when limits conflict: the cost floor wins, then the minimum advertised price, then
the ceiling, then the fairness band, then ``max_change`` (each later limit is clipped into the
range the earlier ones leave). So ``lo <= hi`` always, and ``lo`` respects the cost floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Reason codes of the limits, as they appear in a priced event's reason_codes.
FLOOR_MARGIN = "floor_margin"
FLOOR_MAP = "floor_map"
CEILING = "ceiling"
PERSONAL_DEVIATION = "personal_deviation"
MAX_CHANGE = "max_change"
NO_PRICE_POINT = "no_price_point"
# The largest price any limit allows (minor units): far beyond real prices, exact in a float64.
MAX_PRICE_MINOR = float(2**53)
LIMITS = (FLOOR_MARGIN, FLOOR_MAP, CEILING, PERSONAL_DEVIATION, MAX_CHANGE)


@dataclass(frozen=True)
class Bounds:
    """Allowed integer prices per row, ``lo <= hi``, and which limit set each end (a ``LIMITS`` code or "")."""

    lo: np.ndarray
    hi: np.ndarray
    lo_reason: np.ndarray
    hi_reason: np.ndarray


class Guardrails(BaseModel):
    """Business limits on any price (see the module docstring for each limit and their precedence)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_multiplier: float = Field(default=0.7, gt=0, description="floor: reference * min_multiplier (minimum advertised price)")
    max_multiplier: float = Field(default=1.5, gt=0, description="ceiling: reference * max_multiplier")
    min_margin: float = Field(default=0.05, ge=0, description="floor = unit cost * (1 + min_margin)")
    max_change: float | None = Field(
        default=0.25, gt=0, description="max relative move per hour from the anchor (the product's price in an earlier hour)"
    )
    max_personal_deviation: float | None = Field(
        default=None, gt=0, lt=1, description="prices within reference * (1 +/- this): the fairness cap; None: off"
    )
    price_ending: int | None = Field(
        default=None, ge=0, le=99, description="prices end in these minor units (99: .99 endings); None: any price"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "Guardrails":
        if self.min_multiplier > self.max_multiplier:
            raise ValueError("min_multiplier must not exceed max_multiplier")
        return self

    def limits(
        self, *, reference_price: ArrayLike, unit_cost: ArrayLike, anchor_price: ArrayLike | None = None
    ) -> Bounds:
        """The allowed integer range per row, with the limit that set each end."""
        ref = np.asarray(reference_price, dtype=np.float64)
        cost = np.nan_to_num(np.asarray(unit_cost, dtype=np.float64), nan=0.0)
        ref, cost = np.broadcast_arrays(ref, cost)
        n = ref.shape
        lo = np.full(n, -np.inf)
        hi = np.full(n, np.inf)
        lo_r = np.full(n, "", dtype=object)
        hi_r = np.full(n, "", dtype=object)

        def tighten(new_lo: np.ndarray | None, new_hi: np.ndarray | None, code: str) -> None:
            # Clip the new limit into the current range (earlier limits win), then take it where it is tighter.
            nonlocal lo, hi
            if new_lo is not None:
                cand = np.clip(new_lo, lo, hi)
                tighter = cand > lo
                lo = np.where(tighter, cand, lo)
                lo_r[tighter] = code
            if new_hi is not None:
                cand = np.clip(new_hi, lo, hi)
                tighter = cand < hi
                hi = np.where(tighter, cand, hi)
                hi_r[tighter] = code

        tighten(cost * (1 + self.min_margin), None, FLOOR_MARGIN)
        tighten(ref * self.min_multiplier, None, FLOOR_MAP)
        tighten(None, ref * self.max_multiplier, CEILING)
        if self.max_personal_deviation is not None:
            d = self.max_personal_deviation
            tighten(ref * (1 - d), ref * (1 + d), PERSONAL_DEVIATION)
        if anchor_price is not None and self.max_change is not None:
            anchor = np.broadcast_to(np.asarray(anchor_price, dtype=np.float64), n)
            known = np.isfinite(anchor) & (anchor > 0)
            safe = np.where(known, anchor, 1.0)
            tighten(np.where(known, safe * (1 - self.max_change), -np.inf),
                    np.where(known, safe * (1 + self.max_change), np.inf), MAX_CHANGE)  # fmt: skip
        # Integers inside the range (a price is at least 1; an unknown reference leaves no upper limit but the
        # money range); the cost floor wins if rounding leaves no integer.
        lo_i = np.ceil(np.clip(lo, 1.0, MAX_PRICE_MINOR) - 1e-9).astype(np.int64)
        hi_i = np.floor(np.clip(hi, 1.0, MAX_PRICE_MINOR) + 1e-9).astype(np.int64)
        hi_i = np.maximum(hi_i, lo_i)
        return Bounds(lo=lo_i, hi=hi_i, lo_reason=lo_r, hi_reason=hi_r)

    def bounds(
        self, *, reference_price: ArrayLike, unit_cost: ArrayLike, anchor_price: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest allowed integer price per row (minor units)."""
        b = self.limits(reference_price=reference_price, unit_cost=unit_cost, anchor_price=anchor_price)
        return b.lo, b.hi

    def to_price_points(self, price: ArrayLike, lo: ArrayLike, hi: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Each integer price moved to the nearest price point inside ``[lo, hi]``; where none fits the
        price stays. Returns the prices and where a price point was found."""
        p = np.asarray(price, dtype=np.int64)
        lo = np.broadcast_to(np.asarray(lo, dtype=np.int64), p.shape)
        hi = np.broadcast_to(np.asarray(hi, dtype=np.int64), p.shape)
        if self.price_ending is None:
            return p.copy(), np.ones(p.shape, dtype=bool)
        e = self.price_ending
        down = (p - e) // 100 * 100 + e  # the price point at or below p
        up = down + 100
        first = (lo - e + 99) // 100 * 100 + e  # the lowest price point >= lo
        down_ok = (down >= lo) & (down <= hi)
        up_ok = (up >= lo) & (up <= hi)
        nearest = np.where(down_ok & (~up_ok | (p - down <= up - p)), down, np.where(up_ok, up, first))
        fits = (nearest >= lo) & (nearest <= hi) & (nearest > 0)
        return np.where(fits, nearest, p), fits

    def clamp(
        self, price: ArrayLike, *, reference_price: ArrayLike, unit_cost: ArrayLike, anchor_price: ArrayLike | None = None
    ) -> np.ndarray:
        """``price`` rounded to minor units, moved into the allowed range, then to a price point in it."""
        lo, hi = self.bounds(reference_price=reference_price, unit_cost=unit_cost, anchor_price=anchor_price)
        p = np.clip(np.rint(np.asarray(price, dtype=np.float64)).astype(np.int64), lo, hi)
        return self.to_price_points(p, lo, hi)[0]

    def violations(
        self, price: ArrayLike, *, reference_price: ArrayLike, unit_cost: ArrayLike, anchor_price: ArrayLike | None = None
    ) -> np.ndarray:
        """True where ``price`` breaks a guardrail (outside the range, or not a price point when one fits)."""
        lo, hi = self.bounds(reference_price=reference_price, unit_cost=unit_cost, anchor_price=anchor_price)
        p = np.asarray(price)
        bad = ~np.isfinite(p.astype(np.float64)) | (p < lo) | (p > hi) | (p <= 0)
        if self.price_ending is not None:
            snapped, fits = self.to_price_points(np.where(bad, lo, p).astype(np.int64), lo, hi)
            bad |= fits & (snapped != np.where(bad, lo, p))
        return bad
