"""``pricing experiments report``: the arms of a live champion/challenger split, from the archive.

The job logs each answer's ``experiment_id`` and ``arm`` (``pricing_udfs.experiment``; PricedEvent v4). This module
joins the archived priced events of one experiment with the purchases that answer them (the training set's
attribution rule, ``jobs.training_set.attribute``: the same user buys the same product within the attribution
window) and compares the arms per priced request:

* **profit** ``label x (price - unit cost)`` (the unit cost is the logged feature ``unit_cost_minor``),
* **revenue** ``label x price``, and **conversion** ``label``; one unit per purchase, as in training.

**Clustered by user.** The split is sticky per user, so one user's requests are not independent: each arm's mean is
a ratio of per-user sums, and its variance is the delta method's over users (cluster-robust), not over requests.

**Always valid.** The interval of the difference (challenger - champion) is a mixture-SPRT confidence sequence
(Johari, Koomen, Pekelis and Walsh, KDD 2017; the normal mixture with variance ``tau^2``): with ``V`` the variance
of the difference, ``theta +/- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))``. It may be
looked at after every batch of traffic, as often as wanted, and still covers the true difference with probability
``1 - alpha`` at all times; a fixed-sample interval read repeatedly would not. ``tau`` is the effect size the test
is tuned to detect: ``mixture_effect`` (default 5%) of the champion's mean.

**Verdict** on profit: ``promote`` when the interval is above zero, ``stop`` (the challenger loses money) when it is
below, else ``keep`` (running). ``--apply`` acts on ``promote`` by promoting the challenger's version in the
registry (the job then serves it to everyone, and the experiment should be ended); a ``stop`` changes nothing in
the registry (the champion is still ``latest``): end the experiment (remove ``[experiment]``). Every applied
verdict is recorded in the registry's history with its figures.

``tests/pricing/test_experiments.py`` checks the interval's coverage on simulated markets whose true difference
between the arms is known.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pricing_udfs.experiment import CHALLENGER, CHAMPION
from pricing_udfs.features import FEATURE_SPEC

METRICS = ("profit", "revenue", "conversion")
DEFAULT_ALPHA = 0.05
DEFAULT_MIXTURE_EFFECT = 0.05


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    requests: int
    users: int
    purchases: int
    profit_per_request: float
    revenue_per_request: float
    conversion: float


@dataclass(frozen=True)
class Difference:
    """Challenger minus champion, per request, with its always-valid interval."""

    metric: str
    champion: float
    challenger: float
    difference: float
    low: float
    high: float
    relative: float | None  # difference / champion


@dataclass(frozen=True)
class Report:
    experiment_id: str
    arms: list[ArmSummary]
    differences: list[Difference]
    verdict: str  # promote | keep | stop
    reason: str
    alpha: float
    challenger_versions: list[str]

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def text(self) -> str:
        lines = [f"experiment {self.experiment_id}: verdict {self.verdict.upper()} ({self.reason})", ""]
        lines.append(f"{'arm':<11}{'requests':>10}{'users':>8}{'purchases':>11}{'profit/req':>12}{'revenue/req':>13}"
                     f"{'conversion':>12}")  # fmt: skip
        for a in self.arms:
            lines.append(f"{a.arm:<11}{a.requests:>10,}{a.users:>8,}{a.purchases:>11,}{a.profit_per_request:>12.2f}"
                         f"{a.revenue_per_request:>13.2f}{a.conversion:>12.4f}")  # fmt: skip
        lines += ["", f"challenger - champion, {1 - self.alpha:.0%} always-valid intervals (per request, minor units):"]
        for d in self.differences:
            rel = f" ({d.relative:+.1%})" if d.relative is not None else ""
            lines.append(f"  {d.metric:<11}{d.difference:+12.4f}{rel}  [{d.low:+.4f}, {d.high:+.4f}]")
        return "\n".join(lines)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def request_outcomes(priced: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Per priced request: user, arm and the three metrics (``priced``: PricedEvent fields; ``labels``: 0/1)."""
    cost_at = FEATURE_SPEC.index("unit_cost_minor")
    cost = np.asarray([f[cost_at] if f is not None else np.nan for f in priced["features"]], dtype=np.float64)
    price = priced["price_minor"].to_numpy(np.float64)
    label = np.asarray(labels, dtype=np.float64)
    return pd.DataFrame({"user_id": priced["user_id"].to_numpy(object), "arm": priced["arm"].to_numpy(object),
                         "profit": label * (price - cost), "revenue": label * price,
                         "conversion": label})  # fmt: skip


def _arm_mean(frame: pd.DataFrame, metric: str) -> tuple[float, float]:
    """The arm's mean per request and its cluster-robust (by user) variance, by the delta method."""
    by_user = frame.groupby("user_id", sort=False)[metric].agg(["sum", "count"])
    y, n = by_user["sum"].to_numpy(np.float64), by_user["count"].to_numpy(np.float64)
    g, total = len(y), n.sum()
    mean = float(y.sum() / total)
    if g < 2:
        return mean, float("inf")
    resid = y - mean * n
    return mean, float(np.square(resid).sum() / total**2 * g / (g - 1))


def always_valid_interval(estimate: float, variance: float, tau: float, alpha: float) -> tuple[float, float]:
    """The mixture-SPRT confidence sequence around ``estimate`` (see the module docstring)."""
    if not (variance > 0 and math.isfinite(variance)) or tau <= 0:
        return float("-inf"), float("inf")
    t2 = tau * tau
    half = math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance)))
    return estimate - half, estimate + half


def compare(outcomes: pd.DataFrame, experiment_id: str, *, alpha: float = DEFAULT_ALPHA,
            mixture_effect: float = DEFAULT_MIXTURE_EFFECT, challenger_versions: list[str] | None = None) -> Report:  # fmt: skip
    """The report of ``outcomes`` (:func:`request_outcomes` rows of one experiment)."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    if mixture_effect <= 0:
        raise ValueError("mixture_effect must be positive")
    arms = {arm: outcomes[outcomes["arm"] == arm] for arm in (CHAMPION, CHALLENGER)}
    empty = [arm for arm, frame in arms.items() if frame.empty]
    if empty:
        raise ValueError(f"experiment {experiment_id}: no priced requests in arm(s) {empty} yet")
    summaries = [ArmSummary(arm, len(f), int(f["user_id"].nunique()), int(f["conversion"].sum()),
                            float(f["profit"].mean()), float(f["revenue"].mean()), float(f["conversion"].mean()))
                 for arm, f in arms.items()]  # fmt: skip
    diffs = []
    for metric in METRICS:
        (m_a, v_a), (m_b, v_b) = _arm_mean(arms[CHAMPION], metric), _arm_mean(arms[CHALLENGER], metric)
        variance = v_a + v_b
        tau = mixture_effect * abs(m_a) or math.sqrt(variance)  # a champion mean of 0: the noise's own scale
        low, high = always_valid_interval(m_b - m_a, variance, tau, alpha)
        diffs.append(Difference(metric, m_a, m_b, m_b - m_a, low, high, (m_b - m_a) / m_a if m_a else None))
    profit = diffs[0]
    if profit.low > 0:
        verdict, reason = "promote", "the challenger earns more profit per request, beyond the interval's doubt"
    elif profit.high < 0:
        verdict, reason = "stop", "the challenger earns less profit per request: end the experiment"
    else:
        verdict, reason = "keep", "not decided yet: the interval of the profit difference contains 0"
    return Report(experiment_id, summaries, diffs, verdict, reason, alpha, sorted(challenger_versions or []))


def load_outcomes(archive: Path | str, priced_topic: str, behaviour_topic: str, experiment_id: str,
                  time_range: Any, *, attribution_window_ms: int, pseudonymise: Any = None) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """The experiment's priced requests in ``time_range`` joined with their purchases, from the archive; and the
    challenger's model versions seen. ``pseudonymise`` maps a raw user id to the job's pseudonym (the purchases are
    raw, the priced events pseudonymous); None: ids are compared as they are."""
    from jobs.training_set import attribute, read_events, serving_archive_files
    from pricing_udfs.serde import Contract

    priced_files, behaviour_files = serving_archive_files(archive, priced_topic, behaviour_topic, time_range,
                                                          attribution_window_ms=attribution_window_ms)  # fmt: skip
    priced = pd.concat([read_events(p, Contract.PRICED_EVENT) for p in priced_files], ignore_index=True)
    priced = priced[priced["experiment_id"] == experiment_id]
    inside = time_range.contains(priced["request_time"].to_numpy(np.int64))
    priced = priced[inside].drop_duplicates("request_id").reset_index(drop=True)  # at-least-once replays
    if priced.empty:
        raise ValueError(f"no priced events of experiment {experiment_id} in the archive for {time_range}")
    behaviour = pd.concat([read_events(p, Contract.BEHAVIOUR_EVENT) for p in behaviour_files], ignore_index=True)
    purchases = behaviour[behaviour["type"] == "purchase"].reset_index(drop=True)
    if pseudonymise is not None and len(purchases):
        purchases["user_id"] = [pseudonymise(u) for u in purchases["user_id"].to_numpy(object)]
    offers = priced.rename(columns={"request_time": "event_time"})
    offers["event_time"] = offers["event_time"].astype(np.int64)
    labels = attribute(offers, purchases, attribution_window_ms)
    versions = sorted(set(priced.loc[(priced["arm"] == CHALLENGER) & ~priced["fallback_used"].astype(bool), "model_version"]))
    return request_outcomes(priced, labels), versions


def write_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
