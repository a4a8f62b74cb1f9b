"""Ranking priced candidates into recommendations (Pei et al., WWW 2019: rank by purchase probability times
value, not by click probability).

A recommendation is many pricing decisions ranked. The caller prices every candidate of every request
in one batch with the pricing path's stage (``candidate_rows`` builds that batch: one row per request
and candidate, so one model call covers all candidates times the K prices of every request), then
``rank`` orders each request's candidates by

    utility = expected_profit_minor + conversion_value_minor * expected_conversion

(``conversion_value_minor`` = 0: profit alone; a storefront that wants relevance first values a sale
above its margin). Candidates the model could not price (the pricing fallback priced them) go after
every model-priced one, by their candidate score; when the model priced none of a request's candidates,
the request is ranked by the fallback: candidate score (popularity and co-occurrence evidence) at the
fallback's reference price, ``fallback_used`` true.

Exploration: with ``exploration_rate`` e, each of the first ``max_explored_slots`` slots that exploration
picks (a per-request, per-slot hash, stable across replays) is filled by a uniformly drawn remaining
candidate instead of the best remaining one. Every item logs the probability of having been put in its
slot given the items above it: ``(1 - e) * [it is the best remaining] + e / remaining`` for a slot
exploration may pick, 1 otherwise; ``explored`` says whether exploration put it there. Pure: the same
input gives the same slates.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pricing_udfs.policy.decisions import FALLBACK_VERSION
from pricing_udfs.policy.model_policy import unit_hashes
from pricing_udfs.recommend.candidates import Candidate

EXPLORATION = "exploration"
# Separates a recommend request's id from a candidate's in the pricing rows' request_id, so that the
# pricing policy's own exploration hash differs per candidate.
ID_SEPARATOR = "#"
MAX_EXPLORATION_RATE = 0.2


class RankingSettings(BaseModel):
    """``[recommend]``'s ranking part."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conversion_value_minor: float = Field(
        default=0.0, ge=0, description="utility = expected profit + this * expected conversion (minor units per sale)")
    exploration_rate: float = Field(default=0.0, ge=0, le=MAX_EXPLORATION_RATE,
                                    description="chance that a slot is filled by a uniformly drawn candidate")
    max_explored_slots: int = Field(default=1, ge=0, le=50, description="at most this many explored slots per slate")
    exploration_seed: int = Field(default=0, ge=0)


def candidate_rows(requests: Sequence[Mapping[str, Any]], candidates: Sequence[Sequence[Candidate]]) -> pd.DataFrame:
    """The pricing batch: one row per request and candidate with the request fields the pricing path
    reads (``request_id`` is ``<request id>#<product id>``), plus ``slate`` (the request's position) and
    ``candidate_score``. The caller adds the feature columns for (user, product)."""
    rows = []
    for slate, (request, found) in enumerate(zip(requests, candidates, strict=True)):
        for c in found:
            rows.append({"request_id": f"{request['request_id']}{ID_SEPARATOR}{c.product_id}",
                         "user_id": request["user_id"], "product_id": c.product_id, "channel": request["channel"],
                         "event_time": request["event_time"], "slate": slate, "candidate_score": c.score,
                         "candidate_reasons": list(c.reasons)})  # fmt: skip
    columns = ["request_id", "user_id", "product_id", "channel", "event_time", "slate", "candidate_score",
               "candidate_reasons"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def rank(requests: Sequence[Mapping[str, Any]], rows: pd.DataFrame, decisions: pd.DataFrame, settings: RankingSettings,
         *, answered_time_ms: int, feature_spec_version: str | None) -> list[dict[str, Any]]:  # fmt: skip
    """One ``Recommendation`` record per request (the contract's fields), from ``rows`` (``candidate_rows``)
    and their checked pricing ``decisions`` (same index)."""
    if len(rows) != len(decisions):
        raise ValueError(f"{len(decisions)} decisions for {len(rows)} candidate rows")
    decisions = decisions.set_axis(rows.index)
    slate_of = rows["slate"].to_numpy()
    out = []
    for slate, request in enumerate(requests):
        at = np.flatnonzero(slate_of == slate)
        mine = decisions.iloc[at]
        model_priced = ~mine["fallback_used"].to_numpy(dtype=bool)
        fallback = not model_priced.any()
        items = []
        for j, i in enumerate(at):
            score = float(rows["candidate_score"].iat[i])
            if model_priced[j]:
                d = mine.iloc[j]
                utility = float(d["expected_profit_minor"]) + settings.conversion_value_minor * float(d["expected_conversion"])
                key = (0, -utility, -score)
            else:
                key = (1, -score, 0.0)
            items.append((key, str(rows["product_id"].iat[i]), j))
        items.sort()
        order, explored, propensity = _explore(request["request_id"], [j for *_, j in items], int(request["k"]), settings)
        chosen = []
        for slot, j in enumerate(order):
            d, i = mine.iloc[j], at[j]
            codes = list(rows["candidate_reasons"].iat[i]) + list(d["reason_codes"]) + ([EXPLORATION] if explored[slot] else [])
            chosen.append({
                "product_id": str(rows["product_id"].iat[i]), "price_minor": int(d["price_minor"]),
                "reference_price_minor": int(d["reference_price_minor"]), "currency": str(d["currency"]),
                "expected_conversion": float(d["expected_conversion"]) if model_priced[j] else math.nan,
                "expected_profit_minor": int(d["expected_profit_minor"]) if model_priced[j] else 0,
                "reason_codes": codes, "explored": bool(explored[slot]), "propensity": float(propensity[slot]),
            })  # fmt: skip
        versions = [str(v) for v, ok in zip(mine["model_version"], model_priced) if ok]
        out.append({
            "request_id": request["request_id"], "user_id": request["user_id"], "items": chosen,
            "model_version": versions[0] if versions else FALLBACK_VERSION, "fallback_used": fallback,
            "request_time": int(request["event_time"]), "answered_time": int(answered_time_ms),
            "feature_spec_version": feature_spec_version,
        })  # fmt: skip
    return out


def _explore(request_id: str, ranked: list[int], k: int, s: RankingSettings) -> tuple[list[int], list[bool], list[float]]:
    """The first ``k`` of ``ranked`` (best first), with exploration; each slot's explored flag and propensity."""
    remaining = list(ranked)
    order: list[int] = []
    explored: list[bool] = []
    propensity: list[float] = []
    budget = s.max_explored_slots if s.exploration_rate > 0 else 0
    for slot in range(min(k, len(ranked))):
        n = len(remaining)
        may = budget > 0 and n > 1
        if may:
            u, v = unit_hashes([f"{request_id}/{slot}"], s.exploration_seed)
            if u[0] < s.exploration_rate:
                pick = min(int(v[0] * n), n - 1)
                budget -= 1
            else:
                pick = 0
            e = s.exploration_rate
            propensity.append((1 - e) * (pick == 0) + e / n)
            explored.append(bool(u[0] < s.exploration_rate))
        else:
            pick = 0
            propensity.append(1.0)
            explored.append(False)
        order.append(remaining.pop(pick))
    return order, explored, propensity
