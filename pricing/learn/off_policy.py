"""Off-policy estimates of a pricing policy's profit per request from the engine's own logged decisions.

The engine logs, for every priced request, the price it served and the probability that its policy would serve that
price (``propensity`` in ``priced_event.avsc``: 1 - epsilon + epsilon/K for the best price, epsilon/K for another, 1.0
without exploration). Joined with what the shopper then did, each logged request gives a reward (profit in minor
units, 0 without a purchase). From those alone the estimators below judge another policy before it serves anyone:

* **IPS** (inverse propensity scoring): mean of ``w * r`` with ``w = pi_new(a | x) / propensity``. Unbiased when every
  price the new policy may choose had a positive propensity; its variance grows with the weights.
* **SNIPS** (self-normalised IPS): ``sum(w * r) / sum(w)``. Slightly biased, far lower variance; the usual default.
* **DR** (doubly robust): the reward model's value of the new policy plus the weighted residuals of the logged
  rewards, ``mean(q_new(x) + w * (r - q(x, a)))``. Unbiased if either the propensities or the reward model are right.

Each returns an :class:`Estimate` with a normal-approximation confidence interval (the delta method for SNIPS).
:func:`beats` is the promotion rule: a challenger wins only when its interval's lower bound is above the champion's
estimate on the same logs. These are the formulas of the Open Bandit Pipeline's estimators (which does not install
beside TensorFlow 2.20 on Python 3.11), written out; ``tests/pricing/learn/test_off_policy.py`` checks them against
a simulation whose true policy values are known.

This module is the first part of the learning loop (issue 21): the promotion gate (``pricing.learn.gate``) judges a
challenger against the champion with it, and ``pricing learn`` (``pricing.learn.loop``) runs that gate on every model
it trains from the archive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A policy's estimated reward per request with a two-sided confidence interval."""

    name: str
    value: float
    low: float
    high: float
    n: int
    effective_n: float  # Kish's effective sample size of the weights: how many logs the estimate really rests on


def _weights(propensities: np.ndarray, target_probs: np.ndarray) -> np.ndarray:
    p = np.asarray(propensities, dtype=float)
    t = np.asarray(target_probs, dtype=float)
    if p.shape != t.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(f"propensities {p.shape} and target probabilities {t.shape} must be equal, non-empty vectors")
    if not np.all((p > 0) & (p <= 1)):
        raise ValueError("every logged propensity must be in (0, 1]: a decision without one cannot be re-weighted")
    if not np.all((t >= 0) & (t <= 1)):
        raise ValueError("target probabilities must be in [0, 1]")
    return t / p


def _kish(w: np.ndarray) -> float:
    total = w.sum()
    return float(total * total / np.square(w).sum()) if total > 0 else 0.0


def _normal(name: str, terms: np.ndarray, w: np.ndarray, z: float) -> Estimate:
    n = len(terms)
    value = float(terms.mean())
    half = z * float(terms.std(ddof=1)) / np.sqrt(n) if n > 1 else float("inf")
    return Estimate(name, value, value - half, value + half, n, _kish(w))


def ips(rewards: np.ndarray, propensities: np.ndarray, target_probs: np.ndarray, *, z: float = Z_95) -> Estimate:
    """Inverse propensity scoring: ``mean(w * r)``."""
    w = _weights(propensities, target_probs)
    return _normal("ips", w * np.asarray(rewards, dtype=float), w, z)


def snips(rewards: np.ndarray, propensities: np.ndarray, target_probs: np.ndarray, *, z: float = Z_95) -> Estimate:
    """Self-normalised IPS: ``sum(w * r) / sum(w)``, its interval by the delta method."""
    w = _weights(propensities, target_probs)
    r = np.asarray(rewards, dtype=float)
    n = len(w)
    if w.sum() <= 0:
        return Estimate("snips", float("nan"), float("-inf"), float("inf"), n, 0.0)
    value = float((w * r).sum() / w.sum())
    mean_w = w.mean()
    # Delta method for a ratio of means: var(w * (r - value)) / (n * mean(w)^2).
    half = z * float(np.std(w * (r - value), ddof=1)) / (np.sqrt(n) * mean_w) if n > 1 else float("inf")
    return Estimate("snips", value, value - half, value + half, n, _kish(w))


def doubly_robust(rewards: np.ndarray, propensities: np.ndarray, target_probs: np.ndarray, q_logged: np.ndarray,
                  q_target: np.ndarray, *, z: float = Z_95) -> Estimate:  # fmt: skip
    """``mean(q_target + w * (r - q_logged))``: ``q_logged`` is the reward model's value of the logged price,
    ``q_target`` its expected value under the new policy (``sum over prices of pi_new(a | x) * q(x, a)``)."""
    w = _weights(propensities, target_probs)
    r = np.asarray(rewards, dtype=float)
    q_a, q_pi = np.asarray(q_logged, dtype=float), np.asarray(q_target, dtype=float)
    if q_a.shape != r.shape or q_pi.shape != r.shape:
        raise ValueError("rewards and both reward-model columns must have one value per logged request")
    return _normal("dr", q_pi + w * (r - q_a), w, z)


def beats(challenger: Estimate, champion: Estimate) -> bool:
    """The promotion rule: the challenger's lower bound is above the champion's estimate (same logs, same estimator)."""
    if challenger.name != champion.name or challenger.n != champion.n:
        raise ValueError("compare two policies with the same estimator on the same logs")
    return bool(np.isfinite(challenger.low) and challenger.low > champion.value)
