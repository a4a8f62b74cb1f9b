"""A small simulated market with a known truth, logged the way the engine logs, for the gate's and the loop's tests.

Each request has a list price, a unit cost (60 % of it) and one context feature, the shopper's
``user_price_ratio`` x in [0.8, 1.2]. The truth: ``P(buy | x, price) = sigmoid(0.3 - 3 (x - 1) - 4 log(price /
list))``; at the policy's six candidates (0.7 to 1.5 of the list price) the best is 1.18 of it (1.02 is close), 0.7
earns a third as much, 1.5 about 80 %. The logging policy is the job's ``ModelPolicy`` with ``LOGGING`` (a fake demand model
that picks 1.02, close to the best) and 20 % exploration, so each decision logs its propensity as the job does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pricing.config import Settings
from pricing.learn.gate import LoggedDecisions
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel, log_price_ratio
from pricing_udfs.policy import ModelPolicy, PolicySettings

SPEC = FEATURE_SPEC
TRUE_SLOPE = 4.0
LOGGING = FakeDemandModel(intercept=0.3, slope=5.0)  # picks 1.02 x list: close to the best
WEAK = FakeDemandModel(intercept=-3.0, slope=8.0)  # believes few buy and those very price sensitive: picks 0.7 x
SETTINGS = Settings(policy=PolicySettings(grid_size=6, exploration_rate=0.2))
START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
REF, CONTEXT = SPEC.index("list_price_minor"), SPEC.index("user_price_ratio")


def true_buy(features: np.ndarray, prices: np.ndarray) -> np.ndarray:
    """The truth: P(buy) for ``prices [N, K]``."""
    x = features[:, CONTEXT : CONTEXT + 1]
    return 1.0 / (1.0 + np.exp(-(0.3 - 3.0 * (x - 1.0) - TRUE_SLOPE * log_price_ratio(features, prices, REF))))


@dataclass(frozen=True, eq=False)
class Logs:
    request_ids: list[str]
    features: np.ndarray
    decisions: pd.DataFrame  # ModelPolicy.decide's output: price_minor, propensity, explored, ...
    labels: np.ndarray
    event_time: np.ndarray

    def logged(self) -> LoggedDecisions:
        return LoggedDecisions(self.features, self.decisions["price_minor"].to_numpy(np.float64), self.labels,
                               self.decisions["propensity"].to_numpy(np.float64), self.event_time)  # fmt: skip


def requests(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.choice([1000.0, 1500.0, 2000.0], size=n)
    features = np.tile(SPEC.defaults, (n, 1))
    features[:, REF] = ref
    features[:, SPEC.index("unit_cost_minor")] = 0.6 * ref
    features[:, CONTEXT] = rng.uniform(0.8, 1.2, size=n)
    features[:, SPEC.index("views_24h")] = rng.integers(5, 50, size=n)
    features[:, SPEC.index("is_new_product")] = 0.0
    features[:, SPEC.index("is_new_user")] = 0.0
    return [f"r{seed}-{i}" for i in range(n)], features


def simulate(n: int, seed: int, *, model: object = LOGGING, settings: Settings = SETTINGS) -> Logs:
    """``n`` requests priced by the logging policy (exploration on), one per second from START_MS, and whether
    each shopper bought (drawn from the truth)."""
    ids, features = requests(n, seed)
    policy = ModelPolicy.create(model, "logging", settings.policy, default_price_minor=settings.job.default_price_minor,
                                currency=settings.job.currency)  # fmt: skip
    batch = pd.DataFrame(features, columns=list(SPEC.names)).assign(request_id=ids)
    decisions = policy.decide(batch)
    price = decisions["price_minor"].to_numpy(np.float64)
    bought = np.random.default_rng([seed, 1]).random(n) < true_buy(features, price[:, None])[:, 0]
    return Logs(ids, features, decisions, bought.astype(np.float64), START_MS + 1000 * np.arange(n, dtype=np.int64))


def true_value(model: object, n: int = 20_000, settings: Settings = SETTINGS) -> float:
    """The expected profit per request of ``model``'s greedy policy (exploration off), from the truth."""
    ids, features = requests(n, 12345)
    greedy = settings.policy.model_copy(update={"exploration_rate": 0.0})
    policy = ModelPolicy.create(model, "x", greedy, default_price_minor=settings.job.default_price_minor,
                                currency=settings.job.currency)  # fmt: skip
    price = policy.decide(pd.DataFrame(features, columns=list(SPEC.names)).assign(request_id=ids))["price_minor"]
    price = price.to_numpy(np.float64)
    return float(np.mean((price - features[:, SPEC.index("unit_cost_minor")]) * true_buy(features, price[:, None])[:, 0]))


def fit_fake(features: np.ndarray, prices: np.ndarray, labels: np.ndarray) -> FakeDemandModel:
    """A demand model trained on logs: logistic regression of the label on log(price / list) by Newton's method,
    as a fake model (its slope floored at 0, as the fake requires)."""
    r = log_price_ratio(features, prices[:, None], REF)[:, 0]
    design = np.column_stack([np.ones(len(r)), r])
    beta = np.zeros(2)
    for _ in range(30):
        p = 1.0 / (1.0 + np.exp(-design @ beta))
        beta += np.linalg.solve(design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2), design.T @ (labels - p))
    return FakeDemandModel(intercept=float(beta[0]), slope=max(0.0, -float(beta[1])))


@dataclass(frozen=True)
class FlippedSlope:
    """A model whose price effect has the wrong sign: it scores price p as the wrapped model scores list^2 / p
    (``log(p / list)`` negated), so its demand rises with the price."""

    model: object

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        ref = np.asarray(features, dtype=np.float64)[:, REF : REF + 1]
        return self.model.score(features, ref * ref / np.asarray(prices, dtype=np.float64))
