"""The promotion gate: judge a challenger demand model against the champion on the same logged holdout.

Input: a holdout of logged decisions (:class:`LoggedDecisions`: the served feature vector, the price served, the
``propensity`` the serving policy logged for it, and whether the shopper bought), the champion (the registry's
``latest``, or none) and the challenger, each a :class:`Contestant` (a loaded model with ``score`` and the trust
region its manifest records). The reward of a logged decision is its profit in minor units,
``(price - unit_cost_minor) x label``; the list price and unit cost are the vector's ``list_price_minor`` and
``unit_cost_minor`` (``pricing_udfs.features.FEATURE_SPEC``).

For each model the gate computes, on the same rows (:class:`PolicyFigures`):

* **the policy's decision** for every logged request, through :class:`pricing_udfs.policy.ModelPolicy`, the one
  policy the job runs, with the job's settings (``Settings.policy``: grid, guardrails, trust region, objective;
  ``Settings.job``: fallback price and currency), exploration switched off: both policies are judged by the price
  they would serve to the ``1 - exploration_rate`` share of traffic that is not explored (exploration costs both the
  same); an ensemble is judged by its mean's greedy price, not by Thompson's draws (the same model, less noise). The holdout carries no product anchors, so ``max_change`` does not bind here;
* **its off-policy value** per request, by SNIPS and by doubly robust (``pricing.learn.off_policy``), 95 % intervals
  and Kish's effective sample size. A deterministic policy's probability of the logged price is 1 where its price
  equals the logged one and 0 elsewhere. Prices recomputed offline may sit a few minor units off the logged ones
  (price points, trust regions, anchors the holdout lacks), so with ``kernel_bandwidth`` h > 0 the gate uses the
  kernelised weight of the Open Bandit Pipeline's kernel IPS for continuous actions, with a triangular kernel on the
  relative price distance and K(0) = 1: ``pi(logged | x) = max(0, 1 - |price_policy - price_logged| / (list_price x
  h))``. When h is below the relative gap between neighbouring candidate prices (default 0.02 against a grid gap of
  0.053 for 16 candidates over 0.7 to 1.5 of the list price), at most one candidate of a request is in reach and an
  exact match weighs exactly as without the kernel; a wider h buys matches with bias (neighbouring prices' rewards
  count for the policy's), which SNIPS normalises and DR's residual term does not. ``h = 0``: exact matches only;
* **the reward model of DR**: a logistic regression of the purchase on ``log(price / list price)``, its square, and
  the standardised features, **cross-fitted on the holdout** (two interleaved folds; each row's rewards predicted by
  the fit on the other fold), ``q(x, a) = (a - unit_cost) x p(buy | x, a)``. Neither contestant's model serves as
  the reward model: DR's direct term would then lean toward the model it borrowed (a model that overestimates demand
  at its own prices would value its own policy highly), while a neutral model fitted on neither training set leaves
  both judged alike; cross-fitting keeps a row's residual out of its own fit. DR stays unbiased where the logged
  propensities are right, whatever this model's errors (``tests/pricing/learn/test_off_policy.py``);
* **its log-loss and expected calibration error** (10 bins) on the holdout's logged prices and labels.

The verdict (:class:`GateDecision`) promotes the challenger only when every check holds:

* the job would serve it (``pricing_udfs.model.serving.validate``: the canary batch scores, in [0, 1], monotone in
  price);
* the holdout has at least ``min_holdout_rows`` usable rows (a propensity, a list price and a unit cost);
* each policy's SNIPS and DR estimates rest on at least ``min_effective_rows`` effective rows;
* the logs **support** the challenger: at most ``max_unsupported_share`` of the holdout rows were logged with
  propensity 1 (nothing else could have been served there: no exploration, or an ensemble whose members all agreed)
  at a price the challenger would not serve. Off-policy estimates know nothing of such rows; SNIPS would silently
  judge the challenger on the rows where it agrees with what was served (found by the learning benchmark, where a
  challenger judged on logs without exploration was promoted and lost money);
* with a champion: the challenger **beats** it (``off_policy.beats``: its lower bound above the champion's value)
  by SNIPS **and** by DR, and its log-loss is at most the champion's plus ``log_loss_tolerance``;
* without a champion: its log-loss is below the base rate's (a constant at the holdout's purchase rate) by more
  than ``log_loss_tolerance`` (it learned something beyond the purchase rate), its calibration error at most
  ``max_calibration_error``, and its SNIPS upper bound at least the logged mean profit (it is not clearly worse
  than what was served). Rare in practice: logs priced by the fallback carry no
  propensity, so the first model is promoted by hand (``pricing train --promote``).

Settings: ``[learn]`` (``pricing.config.LearnSettings``). Every figure is in :meth:`GateDecision.to_dict`, JSON
values only (non-finite numbers become null), which the registry records (``Registry.record_evaluation``).
Inputs that cannot be judged (shapes, no usable rows) raise :class:`GateError` (a ``ValueError``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pricing.config import Settings
from pricing.learn.off_policy import Estimate, beats, doubly_robust, snips
from pricing.training import TrainingSet, expected_calibration_error, json_safe, log_loss, sigmoid
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.serving import validate
from pricing_udfs.policy import ModelPolicy

LIST_PRICE = "list_price_minor"
UNIT_COST = "unit_cost_minor"
RIDGE = 1.0  # the reward model's L2 penalty (standardised inputs)


class GateError(ValueError):
    """The holdout cannot be judged as given; the message says why."""


@dataclass(frozen=True, eq=False)
class LoggedDecisions:
    """Logged decisions: ``features [N, F]`` (spec order), the served ``prices [N]`` and the logged
    ``propensity [N]`` (NaN: unknown), ``labels [N]`` (0/1), optional ``event_time [N]`` (ms)."""

    features: np.ndarray
    prices: np.ndarray
    labels: np.ndarray
    propensity: np.ndarray
    event_time: np.ndarray | None = None
    spec: FeatureSpec = FEATURE_SPEC

    def __post_init__(self) -> None:
        f = np.asarray(self.features, dtype=np.float64)
        n = len(f)
        if f.ndim != 2 or f.shape[1] != len(self.spec.names):
            raise GateError(f"features must be [N, {len(self.spec.names)}] ({self.spec.version}), got {f.shape}")
        cols = {name: np.asarray(getattr(self, name), dtype=np.float64) for name in ("prices", "labels", "propensity")}
        for name, col in cols.items():
            if col.shape != (n,):
                raise GateError(f"{name} must hold one value per row ({n}), got shape {col.shape}")
        if not np.all(np.isin(cols["labels"], (0.0, 1.0))):
            raise GateError("labels must be 0 or 1")
        object.__setattr__(self, "features", f)
        for name, col in cols.items():
            object.__setattr__(self, name, col)

    @classmethod
    def of(cls, rows: TrainingSet, spec: FeatureSpec = FEATURE_SPEC) -> "LoggedDecisions":
        """From training rows read with their propensities (``pricing.training.load_training_set``)."""
        if rows.propensity is None:
            raise GateError("these rows were read without their propensities")
        return cls(rows.features, rows.prices, rows.labels, rows.propensity, rows.event_time, spec)

    def __len__(self) -> int:
        return len(self.labels)

    def column(self, name: str) -> np.ndarray:
        return self.features[:, self.spec.index(name)]

    @property
    def rewards(self) -> np.ndarray:
        """Profit per logged request, minor units: ``(price - unit_cost) x label``."""
        return (self.prices - self.column(UNIT_COST)) * self.labels

    def usable(self) -> np.ndarray:
        """``[N]`` bool: a propensity in (0, 1], a positive list price and unit cost, a positive price."""
        p, ref, cost = self.propensity, self.column(LIST_PRICE), self.column(UNIT_COST)
        return ((np.isfinite(p) & (p > 0) & (p <= 1)) & (np.isfinite(ref) & (ref > 0))
                & (np.isfinite(cost) & (cost > 0)) & (np.isfinite(self.prices) & (self.prices > 0)))  # fmt: skip

    def take(self, mask: np.ndarray) -> "LoggedDecisions":
        return LoggedDecisions(self.features[mask], self.prices[mask], self.labels[mask], self.propensity[mask],
                               None if self.event_time is None else np.asarray(self.event_time)[mask], self.spec)


@dataclass(frozen=True)
class Contestant:
    """A model in the gate: its registry version (or a name), anything with ``score(features [N, F], prices [N, K])
    -> probs [N, K]``, and the trust region its manifest records (None: none)."""

    version: str
    model: Any
    trust_region: Any = None


@dataclass(frozen=True)
class PolicyFigures:
    """One model's figures on the holdout: its policy's off-policy values (minor units of profit per request), how
    many logs carry them, and the model's log-loss and calibration error at the logged prices."""

    version: str
    snips: dict[str, Any]  # an off_policy.Estimate as a dict: value, low, high, n, effective_n
    dr: dict[str, Any]
    matched_rows: int  # rows whose logged price the policy would serve (weight > 0)
    unsupported_rows: int  # rows logged with propensity 1 at a price the policy would not serve: no evidence there
    fallback_rows: int  # rows its policy priced with the fallback (the model failed, or the trust region said so)
    mean_price_ratio: float  # mean of the policy's price / list price
    log_loss: float
    calibration_error: float


@dataclass(frozen=True)
class GateDecision:
    """The verdict and every figure behind it (see the module docstring); :meth:`to_dict` is JSON-ready."""

    promote: bool
    reasons: list[str]  # every check in words, failed ones first
    checks: dict[str, bool]
    challenger: PolicyFigures
    champion: PolicyFigures | None
    holdout: dict[str, Any]  # rows, rows_used, dropped, time span, logged_value, purchase_rate, base_rate_log_loss
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "promote" if self.promote else "refuse"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        return json_safe(out)


# ------------------------------------------------------------------------------------------ the gate
def judge(holdout: LoggedDecisions, challenger: Contestant, champion: Contestant | None, *,
          settings: Settings) -> GateDecision:  # fmt: skip
    """Judge ``challenger`` against ``champion`` (None: there is none) on ``holdout`` (see the module docstring).

    Deterministic for given inputs. GateError when fewer than ``[learn] min_holdout_rows`` rows are usable."""
    learn = settings.learn
    ok = holdout.usable()
    if int(ok.sum()) < learn.min_holdout_rows:
        raise GateError(
            f"{int(ok.sum())} of {len(holdout)} holdout rows have a propensity, a list price and a unit cost; "
            f"the gate needs at least {learn.min_holdout_rows} ([learn] min_holdout_rows): without propensities "
            "(priced events before PricedEvent v3, or priced by the fallback) decisions cannot be re-weighted")
    logs = holdout.take(ok)
    rewards = logs.rewards
    q_logged, q_at = _reward_model(logs)
    base_rate = float(logs.labels.mean())
    figures = {role: _figures(c, logs, rewards, q_logged, q_at, settings)
               for role, c in (("challenger", challenger), ("champion", champion)) if c is not None}  # fmt: skip
    ch, cp = figures["challenger"], figures.get("champion")
    holdout_info = {
        "rows": len(holdout), "rows_used": len(logs), "dropped": int(len(holdout) - len(logs)),
        "start_ms": None if logs.event_time is None or not len(logs) else int(np.min(logs.event_time)),
        "end_ms": None if logs.event_time is None or not len(logs) else int(np.max(logs.event_time)),
        "logged_value": float(rewards.mean()), "purchase_rate": base_rate,
        "base_rate_log_loss": log_loss(logs.labels, np.full(len(logs), base_rate)),
        "explored_share": float(np.mean(logs.propensity < 1.0)),
    }  # fmt: skip
    checks: dict[str, tuple[bool, str]] = {}
    for role, fig in figures.items():
        for name in ("snips", "dr"):
            ess = fig[1][name].effective_n
            checks[f"{role}_{name}_evidence"] = (
                ess >= learn.min_effective_rows,
                f"the {role}'s {name.upper()} rests on {ess:.1f} effective rows "
                f"({'>=' if ess >= learn.min_effective_rows else '<'} {learn.min_effective_rows:g}, "
                f"{fig[0].matched_rows} rows matched)")  # fmt: skip
    c_fig, c_est = ch
    unsupported = c_fig.unsupported_rows / max(len(logs), 1)
    checks["support"] = (
        unsupported <= learn.max_unsupported_share,
        f"the logs support the challenger: {unsupported:.1%} of the rows were served with certainty at another "
        f"price ({'<=' if unsupported <= learn.max_unsupported_share else '>'} {learn.max_unsupported_share:.0%})")
    problem = validate(challenger.model, holdout.spec)
    checks["serves"] = (problem is None, "the job would serve it (canary batch: shape, probabilities in [0, 1], "
                        "monotone in price)" if problem is None else f"the job would refuse to serve it: {problem}")
    if cp is not None:
        p_fig, p_est = cp
        for name in ("snips", "dr"):
            won = beats(c_est[name], p_est[name])
            checks[f"beats_{name}"] = (
                won, f"{name.upper()}: the challenger's lower bound {c_est[name].low:.2f} is "
                     f"{'above' if won else 'not above'} the champion's value {p_est[name].value:.2f}")  # fmt: skip
        limit = p_fig.log_loss + learn.log_loss_tolerance
        good = c_fig.log_loss <= limit
        checks["log_loss"] = (good, f"log-loss {c_fig.log_loss:.4f} {'<=' if good else '>'} the champion's "
                                    f"{p_fig.log_loss:.4f} + tolerance {learn.log_loss_tolerance:g}")  # fmt: skip
    else:
        base = holdout_info["base_rate_log_loss"] - learn.log_loss_tolerance
        learned = c_fig.log_loss < base
        checks["log_loss"] = (learned, f"log-loss {c_fig.log_loss:.4f} {'<' if learned else '>='} the base rate's "
                              f"{holdout_info['base_rate_log_loss']:.4f} - tolerance {learn.log_loss_tolerance:g} "
                              "(no champion)")  # fmt: skip
        ece_ok = c_fig.calibration_error <= learn.max_calibration_error
        checks["calibration"] = (ece_ok, f"calibration error {c_fig.calibration_error:.4f} "
                                         f"{'<=' if ece_ok else '>'} {learn.max_calibration_error:g} (no champion)")
        high, logged = c_est["snips"].high, holdout_info["logged_value"]
        not_worse = bool(np.isfinite(high) and high >= logged)
        checks["not_worse_than_logged"] = (
            not_worse, f"SNIPS upper bound {high:.2f} {'>=' if not_worse else '<'} the logged mean profit "
                       f"{logged:.2f} per request (no champion)")  # fmt: skip
    passed = {name: ok_ for name, (ok_, _) in checks.items()}
    order = sorted(checks, key=lambda name: passed[name])  # failed first, otherwise in check order
    return GateDecision(
        promote=all(passed.values()),
        reasons=[("FAILED: " if not passed[n] else "ok: ") + checks[n][1] for n in order],
        checks={n: passed[n] for n in order},
        challenger=c_fig,
        champion=None if cp is None else cp[0],
        holdout=holdout_info,
        settings={"log_loss_tolerance": learn.log_loss_tolerance, "min_effective_rows": learn.min_effective_rows,
                  "max_unsupported_share": learn.max_unsupported_share,
                  "kernel_bandwidth": learn.kernel_bandwidth, "max_calibration_error": learn.max_calibration_error,
                  "min_holdout_rows": learn.min_holdout_rows, "grid_size": settings.policy.grid_size,
                  "profit_weight": settings.policy.profit_weight,
                  "trust_region": settings.policy.trust_region.enabled,
                  "reward_model": "cross-fitted logistic regression on the holdout (2 folds)"},
    )  # fmt: skip


def kernel_probabilities(policy_prices: np.ndarray, logged_prices: np.ndarray, list_prices: np.ndarray,
                         bandwidth: float) -> np.ndarray:  # fmt: skip
    """A deterministic policy's weight for each logged price: 1 where it is the policy's price; with
    ``bandwidth`` h > 0, the triangular kernel ``max(0, 1 - |policy - logged| / (list_price x h))`` (K(0) = 1)."""
    a, b, ref = (np.asarray(v, dtype=np.float64) for v in (policy_prices, logged_prices, list_prices))
    if bandwidth < 0 or not math.isfinite(bandwidth):
        raise ValueError(f"the kernel bandwidth must be a finite number >= 0, got {bandwidth}")
    if bandwidth == 0:
        return (a == b).astype(np.float64)
    return np.clip(1.0 - np.abs(a - b) / (ref * bandwidth), 0.0, 1.0)


def policy_decisions(contestant: Contestant, logs: LoggedDecisions, settings: Settings) -> pd.DataFrame:
    """What ``contestant``'s policy would serve for each logged request: ``ModelPolicy.decide`` with the job's
    policy and fallback settings, exploration off (an ensemble: its mean's greedy price)."""
    policy = ModelPolicy.create(
        contestant.model, contestant.version,
        settings.policy.model_copy(update={"exploration_rate": 0.0, "exploration": "epsilon-greedy"}),
        default_price_minor=settings.job.default_price_minor, currency=settings.job.currency, spec=logs.spec,
        trust_region=contestant.trust_region)  # fmt: skip
    batch = pd.DataFrame(logs.features, columns=list(logs.spec.names))
    batch["request_id"] = [f"holdout-{i}" for i in range(len(logs))]
    return policy.decide(batch)


def _figures(contestant: Contestant, logs: LoggedDecisions, rewards: np.ndarray, q_logged: np.ndarray,
             q_at: Any, settings: Settings) -> tuple[PolicyFigures, dict[str, Estimate]]:  # fmt: skip
    decisions = policy_decisions(contestant, logs, settings)
    price = decisions["price_minor"].to_numpy(np.float64)
    ref = logs.column(LIST_PRICE)
    target = kernel_probabilities(price, logs.prices, ref, settings.learn.kernel_bandwidth)
    est = {"snips": snips(rewards, logs.propensity, target),
           "dr": doubly_robust(rewards, logs.propensity, target, q_logged, q_at(price))}  # fmt: skip
    probs = np.asarray(contestant.model.score(logs.features, logs.prices[:, None]), dtype=np.float64)[:, 0]
    if probs.shape != (len(logs),) or not np.all(np.isfinite(probs) & (probs >= 0) & (probs <= 1)):
        raise GateError(f"model {contestant.version} does not score the holdout with probabilities in [0, 1]")
    figures = PolicyFigures(
        version=contestant.version, snips=asdict(est["snips"]), dr=asdict(est["dr"]),
        matched_rows=int((target > 0).sum()), fallback_rows=int(decisions["fallback_used"].sum()),
        unsupported_rows=int(((logs.propensity >= 1.0) & (target == 0)).sum()),
        mean_price_ratio=float(np.mean(price / ref)), log_loss=log_loss(logs.labels, probs),
        calibration_error=expected_calibration_error(logs.labels, probs))  # fmt: skip
    return figures, est


# ------------------------------------------------------------------------------------ the reward model
def _reward_model(logs: LoggedDecisions) -> tuple[np.ndarray, Any]:
    """DR's reward model (module docstring): ``q`` at the logged prices, and a function giving ``q`` at any
    prices ``[N]``, each row from the fit on the other fold."""
    ref, cost = logs.column(LIST_PRICE), logs.column(UNIT_COST)
    x = np.nan_to_num(logs.features)
    mean, std = x.mean(axis=0), x.std(axis=0)
    keep = std > 0
    z = (x[:, keep] - mean[keep]) / std[keep]
    fold = np.arange(len(logs)) % 2
    betas = [_fit_logistic(_design(z[fold != k], logs.prices[fold != k] / ref[fold != k]), logs.labels[fold != k])
             for k in (0, 1)]  # fmt: skip

    def q(prices: np.ndarray) -> np.ndarray:
        design = _design(z, np.asarray(prices, dtype=np.float64) / ref)
        p = np.where(fold == 0, sigmoid(design @ betas[0]), sigmoid(design @ betas[1]))
        return (prices - cost) * p

    return q(logs.prices), q


def _design(z: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    r = np.log(np.clip(ratio, 1e-3, 1e3))
    return np.column_stack([np.ones(len(z)), r, r * r, z])


def _fit_logistic(design: np.ndarray, labels: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Ridge-penalised logistic regression by Newton's method (the intercept unpenalised)."""
    y = np.asarray(labels, dtype=np.float64)
    beta = np.zeros(design.shape[1])
    rate = min(max(y.mean(), 1e-4), 1 - 1e-4)
    beta[0] = math.log(rate / (1 - rate))
    penalty = np.full(design.shape[1], RIDGE)
    penalty[0] = 0.0
    for _ in range(iterations):
        p = sigmoid(design @ beta)
        w = p * (1 - p) + 1e-9
        grad = design.T @ (y - p) - penalty * beta
        hess = design.T @ (design * w[:, None]) + np.diag(penalty) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return beta
