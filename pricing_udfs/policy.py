"""Pricing policies: given a batch of requests with their context, choose prices.

A policy is vectorized: ``decide(batch)`` takes a pandas DataFrame (one row per
request) and returns a DataFrame of decisions with the columns of ``DECISION_COLUMNS``.
The Flink UDF in ``pricing_udfs.udfs`` is a thin adapter around it, so a policy is
tested without Flink and swapped without touching the job graph.

Guarantee: a policy is a pure function of its input batch: it reads no clock and no
other state, so re-pricing a replayed request gives the same price, which is what makes
at-least-once replays harmless and exactly-once replays identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

DECISION_COLUMNS = (
    "price_minor",
    "reference_price_minor",
    "currency",
    "model_version",
    "expected_conversion",
    "expected_profit_minor",
    "reason_codes",
    "fallback_used",
)


class Policy(Protocol):
    model_version: str

    def decide(self, batch: pd.DataFrame) -> pd.DataFrame: ...


@dataclass(frozen=True)
class BaselineListPrice:
    """PLACEHOLDER policy until the model policy lands: charge the latest list price.

    Input columns: ``list_price_minor`` (the feature; null or 0 when no list price was
    seen yet) and ``list_currency``. With no list price it charges ``default_price_minor`` in
    ``currency`` and flags the decision as a fallback. It has no demand model, so
    ``expected_conversion`` is NaN and ``expected_profit_minor`` is 0.
    """

    default_price_minor: int
    currency: str
    model_version: str = "baseline-list-price/1"

    def decide(self, batch: pd.DataFrame) -> pd.DataFrame:
        list_price = pd.to_numeric(batch["list_price_minor"], errors="coerce")
        known = list_price.notna().to_numpy() & (list_price.fillna(0).to_numpy() > 0)
        price = np.where(known, list_price.fillna(0).to_numpy(dtype=np.int64), self.default_price_minor)
        currency = np.where(known, batch["list_currency"].fillna(self.currency).to_numpy(dtype=object), self.currency)
        n = len(batch)
        return pd.DataFrame(
            {
                "price_minor": price.astype(np.int64),
                "reference_price_minor": price.astype(np.int64),
                "currency": currency,
                "model_version": np.full(n, self.model_version, dtype=object),
                "expected_conversion": np.full(n, np.nan),
                "expected_profit_minor": np.zeros(n, dtype=np.int64),
                "reason_codes": [["list_price"] if k else ["default_price"] for k in known],
                "fallback_used": ~known,
            },
            index=batch.index,
        )
