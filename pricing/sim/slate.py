"""The recommendation slate model: how a simulated shopper reads a ranked list and buys at most one item.

The shopper scans the slate top down. Position i (1-based) is examined with probability ``e_i``, the
position bias (:class:`PositionBias`: ``1 / log2(i + 1)``, the discount of DCG, or a geometric cascade
``decay ** (i - 1)``); an examined item is wanted with its true purchase probability ``p_i`` at the price
the slate shows (the pricing world's ground truth, ``MarketState.probability``, the shopper's taste
included); the shopper buys the first examined and wanted item and stops. So

    P(buy the item at i) = e_i * p_i * prod_{j < i} (1 - e_j * p_j),

the probabilities sum to at most 1 (at most one purchase per slate), and a higher price at a position
lowers that item's chance and raises the chance of the items below it.

Common random numbers: :func:`simulate` takes one examination draw per (request, position) and one
purchase draw per (request, product), so two slates shown to the same shopper that put the same product
at the same price get the same decision for it wherever the examination allows, and differences between
rankers come from their slates alone. Examination and wish are independent draws, so a realised
purchase has exactly the probabilities above.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field

NO_PURCHASE = -1


class PositionBias(BaseModel):
    """How likely the shopper examines each position: ``log`` (1 / log2(i + 1)) or ``geometric`` (decay^(i-1))."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["log", "geometric"] = "log"
    decay: float = Field(default=0.7, gt=0, le=1, description="geometric only: P(examine i+1) / P(examine i)")

    def examination(self, k: int) -> np.ndarray:
        """``e_1 .. e_k``: each in (0, 1], ``e_1`` = 1, non-increasing."""
        if k < 0:
            raise ValueError("k must be non-negative")
        i = np.arange(1, k + 1, dtype=np.float64)
        if self.kind == "log":
            return 1.0 / np.log2(i + 1.0)
        return self.decay ** (i - 1.0)


def purchase_probabilities(probability: ArrayLike, examination: ArrayLike) -> np.ndarray:
    """``[requests, k]``: P(the shopper buys the item at each position), from the true purchase
    probabilities of the shown items ``[requests, k]`` (NaN or 0 for an empty slot) and ``e_1..e_k``."""
    p = np.nan_to_num(np.asarray(probability, dtype=np.float64), nan=0.0)
    e = np.asarray(examination, dtype=np.float64)
    if p.ndim != 2 or e.shape != (p.shape[1],):
        raise ValueError(f"probabilities {p.shape} and examination {e.shape} do not match")
    if np.any((p < 0) | (p > 1)) or np.any((e < 0) | (e > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    hit = e[None, :] * p
    before = np.cumprod(np.concatenate([np.ones((p.shape[0], 1)), 1.0 - hit[:, :-1]], axis=1), axis=1)
    return hit * before


def simulate(probability: ArrayLike, examination: ArrayLike, u_examine: ArrayLike, u_buy: ArrayLike) -> np.ndarray:
    """Per request, the position bought (0-based) or ``NO_PURCHASE``: the first position whose examination
    draw is below ``e_i`` and whose purchase draw (``u_buy``, gathered per shown product) is below ``p_i``."""
    p = np.nan_to_num(np.asarray(probability, dtype=np.float64), nan=0.0)
    e = np.asarray(examination, dtype=np.float64)
    ue = np.asarray(u_examine, dtype=np.float64)
    ub = np.asarray(u_buy, dtype=np.float64)
    if not (p.shape == ue.shape == ub.shape) or e.shape != (p.shape[1],):
        raise ValueError("probabilities, draws and examination must agree in shape")
    bought = (ue < e[None, :]) & (ub < p)
    first = np.argmax(bought, axis=1)
    return np.where(bought.any(axis=1), first, NO_PURCHASE)
