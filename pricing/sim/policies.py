"""Pricing policies the simulator can replay, and the protocol any other policy implements.

A policy sees a batch of price requests (one row per request, a pandas DataFrame)
and returns one price per row in minor units. The batch holds what an engine could
know at request time (``BATCH_COLUMNS``); only the oracle also knows the ground truth.
The engine's own policy plugs into offline evaluation by wrapping it in this protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pricing.sim.market import MarketState
from pricing_udfs.policy import Guardrails
from pricing.sim.scenario import Span

BATCH_COLUMNS = (
    "user_id",  # str
    "product_id",  # str
    "reference_price_minor",  # int: current list price
    "competitor_min_minor",  # int: lowest competitor price, 0 when the product has no competitor
    "unit_cost_minor",  # int
    "inventory",  # int: stock at the start of the time bucket
    "promotion_active",  # bool
    "promotion_bp",  # int: active promotion discount in basis points, 0 if none
    "event_time",  # int: request time, epoch ms
    "user_index",  # int: 0..n_users-1, for array lookups
    "product_index",  # int: 0..n_products-1
    "category",  # str
    "channel",  # str: a symbol of the PriceRequest channel enum
    "anchor_price_minor",  # int: this policy's last price for the product before this bucket, 0 if none
    "view_index",  # int: the view's position in the world (history names its request h<seed>-r<view_index>)
)


@runtime_checkable
class PricingPolicy(Protocol):
    """Anything with ``price(batch) -> prices``; an optional ``name`` attribute labels it in reports."""

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        """One price per row of ``batch`` (see ``BATCH_COLUMNS``), in minor units."""
        ...


def policy_name(policy: PricingPolicy) -> str:
    """The policy's ``name`` attribute, else its class name."""
    return str(getattr(policy, "name", None) or type(policy).__name__)


def _clamp(guardrails: Guardrails | None, price: np.ndarray, batch: pd.DataFrame) -> np.ndarray:
    if guardrails is None:
        return np.rint(price).astype(np.int64)
    return guardrails.clamp(
        price,
        reference_price=batch["reference_price_minor"].to_numpy(),
        unit_cost=batch["unit_cost_minor"].to_numpy(),
        anchor_price=batch["anchor_price_minor"].to_numpy(),
    )


class StaticMultiplierPolicy:
    """Reference price x a fixed multiplier; the do-nothing baseline (1.0) and its best tuned variant."""

    def __init__(self, multiplier: float = 1.0, *, guardrails: Guardrails | None = None, name: str | None = None) -> None:
        if multiplier <= 0:
            raise ValueError("multiplier must be positive")
        self.multiplier = multiplier
        self.guardrails = guardrails
        self.name = name or f"static-x{multiplier:g}"

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        return _clamp(self.guardrails, batch["reference_price_minor"].to_numpy() * self.multiplier, batch)


class CompetitorMatchPolicy:
    """The classic rule: match the cheapest competitor (minus ``undercut``), within guardrails.

    Without a competitor price it charges the reference price.
    """

    def __init__(self, *, undercut: float = 0.0, guardrails: Guardrails | None = None, name: str = "competitor-match") -> None:
        self.undercut = undercut
        self.guardrails = guardrails if guardrails is not None else Guardrails()
        self.name = name

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        ref = batch["reference_price_minor"].to_numpy(dtype=np.float64)
        comp = batch["competitor_min_minor"].to_numpy(dtype=np.float64)
        target = np.where(comp > 0, comp * (1 - self.undercut), ref)
        return _clamp(self.guardrails, target, batch)


class OraclePolicy:
    """Knows the true demand of every user: the per-request profit-maximising price under guardrails.

    An upper bound for any learned policy with the same guardrails (up to stock effects).
    """

    def __init__(
        self, market: MarketState, *, guardrails: Guardrails | None = None, grid_size: int = 81, name: str = "oracle"
    ) -> None:
        self.market = market
        self.guardrails = guardrails if guardrails is not None else Guardrails()
        self.grid_size = grid_size
        self.name = name

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        return self.market.oracle(
            user_idx=batch["user_index"].to_numpy(),
            product_idx=batch["product_index"].to_numpy(),
            reference_price=batch["reference_price_minor"].to_numpy(),
            competitor_min=batch["competitor_min_minor"].to_numpy(),
            unit_cost=batch["unit_cost_minor"].to_numpy(),
            promotion_active=batch["promotion_active"].to_numpy(),
            inventory=batch["inventory"].to_numpy(),
            guardrails=self.guardrails,
            anchor_price=batch["anchor_price_minor"].to_numpy(),
            grid_size=self.grid_size,
            sensitivity_scale=(self.market.scenario.sensitivity_scale(batch["state_time_ms"].to_numpy())
                               if "state_time_ms" in batch else 1.0),
        )


def historical_prices(
    reference_price: np.ndarray,
    promotion_bp: np.ndarray,
    *,
    multiplier: Span,
    apply_promotion_discount: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """The historical pricing rule, the one place it is written (history logs and open-loop live traffic).

    Reference price x a multiplier drawn uniformly from ``multiplier`` (one draw per row
    from ``rng``), less the promotion discount (``promotion_bp``) if applied, rounded to
    whole minor units and at least 1.
    """
    m = rng.uniform(multiplier.low, multiplier.high, len(reference_price))
    price = np.asarray(reference_price) * m
    if apply_promotion_discount:
        price = price * (1 - np.asarray(promotion_bp) / 10_000)
    return np.maximum(1, np.rint(price)).astype(np.int64)


class HistoricalPolicy:
    """How the logged prices were set: ``historical_prices`` on each batch.

    The randomisation (an A/B-style price test) is what makes elasticity identifiable
    from the logs; the seed makes the logs reproducible.
    """

    def __init__(
        self, *, multiplier: Span, seed: int | list[int], apply_promotion_discount: bool = True, name: str = "historical"
    ) -> None:
        self.multiplier = multiplier
        self.apply_promotion_discount = apply_promotion_discount
        self.name = name
        self._rng = np.random.default_rng(seed)

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        return historical_prices(
            batch["reference_price_minor"].to_numpy(), batch["promotion_bp"].to_numpy(), multiplier=self.multiplier,
            apply_promotion_discount=self.apply_promotion_discount, rng=self._rng,
        )  # fmt: skip
