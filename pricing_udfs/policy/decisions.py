"""What a policy returns, the protocol every policy implements, the rule-based fallback, and the
adapter's check of every decision before it is encoded.

Guarantee: a policy is a pure function of its input batch (request fields, the feature vector,
and ``anchor_price_minor`` when the caller tracks one): it reads no clock and no other state,
so re-pricing the same batch gives the same prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from pricing_udfs.policy.guardrails import LIMITS, Guardrails

DECISION_COLUMNS = (
    "price_minor",
    "reference_price_minor",
    "currency",
    "model_version",
    "expected_conversion",
    "expected_profit_minor",
    "reason_codes",
    "fallback_used",
    "explored",
    "propensity",
)
FALLBACK_VERSION = "fallback/reference-price"
# Why a row was priced by the fallback (reason codes).
NO_MODEL = "no_model"
MODEL_ERROR = "model_error"
MODEL_INVALID_OUTPUT = "model_invalid_output"
NO_LIST_PRICE = "default_price"
NO_UNIT_COST = "no_unit_cost"
INVALID_DECISION = "invalid_decision"
REFERENCE_PRICE = "reference_price"


class Policy(Protocol):
    """``decide(batch)`` -> one row of ``DECISION_COLUMNS`` per input row, same index."""

    guardrails: Guardrails
    fallback: "ReferencePriceFallback"

    def decide(self, batch: pd.DataFrame) -> pd.DataFrame: ...


def _column(batch: pd.DataFrame, name: str, default: float = np.nan) -> np.ndarray:
    if name not in batch:
        return np.full(len(batch), default)
    return pd.to_numeric(batch[name], errors="coerce").to_numpy(dtype=np.float64)


def limit_codes(price: np.ndarray, lo: np.ndarray, hi: np.ndarray, lo_reason: np.ndarray, hi_reason: np.ndarray,
                pushed_down: np.ndarray, pushed_up: np.ndarray) -> list[list[str]]:  # fmt: skip
    """The limit that bound each row: the range end the price sits on, when the wanted price lay beyond it."""
    out: list[list[str]] = []
    for p, l, h, lr, hr, down, up in zip(price, lo, hi, lo_reason, hi_reason, pushed_down, pushed_up):
        codes = []
        if up and p == l and lr:
            codes.append(lr)
        if down and p == h and hr:
            codes.append(hr)
        out.append(codes)
    return out


@dataclass(frozen=True)
class ReferencePriceFallback:
    """The rule-based fallback: the list price moved into the guardrails, or ``default_price_minor``
    in ``currency`` when no list price is known. Never fails on any input; its prices always satisfy
    ``guardrails``."""

    guardrails: Guardrails
    default_price_minor: int
    currency: str

    def decide(self, batch: pd.DataFrame, reasons: list[str] | np.ndarray | None = None) -> pd.DataFrame:
        """Decisions for ``batch``; ``reasons`` (one code per row, or None) say why the fallback was used."""
        n = len(batch)
        ref = _column(batch, "list_price_minor")
        cost = _column(batch, "unit_cost_minor")
        anchor = _column(batch, "anchor_price_minor", 0.0)
        known = np.isfinite(ref) & (ref > 0)
        ref_safe = np.where(known, ref, np.nan)
        b = self.guardrails.limits(reference_price=ref_safe, unit_cost=cost, anchor_price=anchor)
        wanted = np.where(known, np.rint(np.where(known, ref, 0.0)), float(self.default_price_minor)).astype(np.int64)
        clipped = np.clip(wanted, b.lo, b.hi)
        price, fits = self.guardrails.to_price_points(clipped, b.lo, b.hi)
        codes = limit_codes(price, b.lo, b.hi, b.lo_reason, b.hi_reason, wanted > b.hi, wanted < b.lo)
        reason_codes = []
        for i in range(n):
            head = [reasons[i]] if reasons is not None and reasons[i] else []
            head.append(REFERENCE_PRICE if known[i] else NO_LIST_PRICE)
            reason_codes.append(head + codes[i] + ([] if fits[i] else ["no_price_point"]))
        currency = batch["list_currency"] if "list_currency" in batch else pd.Series([None] * n, index=batch.index)
        currency = np.where(known, currency.fillna(self.currency).to_numpy(dtype=object), self.currency)
        return pd.DataFrame(
            {
                "price_minor": price.astype(np.int64),
                "reference_price_minor": np.where(known, wanted, price).astype(np.int64),
                "currency": currency,
                "model_version": np.full(n, FALLBACK_VERSION, dtype=object),
                "expected_conversion": np.full(n, np.nan),
                "expected_profit_minor": np.zeros(n, dtype=np.int64),
                "reason_codes": reason_codes,
                "fallback_used": np.ones(n, dtype=bool),
                "explored": np.zeros(n, dtype=bool),
                "propensity": np.full(n, np.nan),
            },
            index=batch.index,
        )


def check_decisions(policy: Policy, batch: pd.DataFrame, decisions: object) -> tuple[pd.DataFrame, int]:
    """The adapter's last line of defence: every decision must be a positive, finite integer price
    inside the guardrails, one per row. Rows that are not are re-priced by the policy's fallback
    (reason ``invalid_decision``); a malformed result (wrong type or length) re-prices the whole
    batch. Returns the decisions to encode and how many rows were replaced."""
    n = len(batch)
    if not isinstance(decisions, pd.DataFrame) or len(decisions) != n or not set(DECISION_COLUMNS) <= set(decisions):
        return policy.fallback.decide(batch, [INVALID_DECISION] * n), n
    decisions = decisions.set_axis(batch.index)
    price = pd.to_numeric(decisions["price_minor"], errors="coerce").to_numpy(dtype=np.float64)
    ref = _column(batch, "list_price_minor")
    known = np.isfinite(ref) & (ref > 0)
    bad = ~np.isfinite(price) | (price <= 0) | (price != np.rint(price)) | (price > 2**53)
    safe = np.where(bad, 1, price).astype(np.int64)
    bad |= policy.guardrails.violations(
        safe, reference_price=np.where(known, ref, np.nan), unit_cost=_column(batch, "unit_cost_minor"),
        anchor_price=_column(batch, "anchor_price_minor", 0.0),
    )  # fmt: skip
    if not bad.any():
        return decisions, 0
    out = decisions.copy()
    replacement = policy.fallback.decide(batch[bad], [INVALID_DECISION] * int(bad.sum()))
    out = out.astype({"price_minor": np.float64}) if out["price_minor"].dtype != np.int64 else out
    for col in DECISION_COLUMNS:
        out[col] = out[col].astype(object)
        out.loc[bad, col] = replacement[col].astype(object)
    out["price_minor"] = out["price_minor"].astype(np.int64)
    return out, int(bad.sum())


__all__ = ["DECISION_COLUMNS", "FALLBACK_VERSION", "LIMITS", "Policy", "ReferencePriceFallback", "check_decisions"]
