"""The off-policy estimators against a simulated market whose true policy values are known.

Shoppers have a context x (their price sensitivity); the chance that one buys at price a is a logistic curve in x and
a; profit is (a - cost) on a purchase. The engine's logging policy serves the best price of a slightly wrong demand
model with epsilon-greedy exploration and logs its propensities, as the job does. A policy's true value is its
expected profit per request, computed exactly from the curve over many contexts. Every estimator must cover it.
"""

from __future__ import annotations

import numpy as np
import pytest

from pricing.learn.off_policy import Estimate, beats, doubly_robust, ips, snips

PRICES = np.arange(800, 1400, 100, dtype=float)  # K = 6 candidates, minor units
COST = 600.0
EPSILON = 0.2


def buy_probability(x: np.ndarray, slope: float = -0.006) -> np.ndarray:
    """P(buy | x, a) for every candidate price: an (n, K) matrix."""
    logit = 1.5 + 0.8 * x[:, None] + slope * (PRICES[None, :] - 800.0) * (1.0 + 0.3 * x[:, None])
    return 1.0 / (1.0 + np.exp(-logit))


def greedy(p: np.ndarray) -> np.ndarray:
    """The deterministic policy maximising expected profit under buy probabilities p: one-hot (n, K)."""
    best = np.argmax(p * (PRICES - COST), axis=1)
    return np.eye(len(PRICES))[best]


def logging_policy(x: np.ndarray) -> np.ndarray:
    """The serving policy: the best price of a model that overestimates demand at high prices, epsilon-greedy."""
    return (1 - EPSILON) * greedy(buy_probability(x, slope=-0.004)) + EPSILON / len(PRICES)


POLICIES = {
    "oracle": lambda x: greedy(buy_probability(x)),
    "logging": logging_policy,
    "cheapest": lambda x: np.eye(len(PRICES))[np.zeros(len(x), dtype=int)],
    "flipped slope": lambda x: greedy(buy_probability(x, slope=+0.006)),  # a model with the price effect's sign wrong
}


def true_value(policy, n: int = 400_000) -> float:  # noqa: ANN001
    x = np.random.default_rng(0).normal(size=n)
    return float((policy(x) * buy_probability(x) * (PRICES - COST)).sum(axis=1).mean())


TRUTH = {name: true_value(policy) for name, policy in POLICIES.items()}


def logs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    pi = logging_policy(x)
    action = np.minimum((pi.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1), len(PRICES) - 1)  # draw from pi
    bought = rng.random(n) < buy_probability(x)[np.arange(n), action]
    return {"x": x, "action": action, "propensity": pi[np.arange(n), action],
            "reward": np.where(bought, PRICES[action] - COST, 0.0)}  # fmt: skip


def estimate(name: str, log: dict[str, np.ndarray], policy: str, q_scale: float = 1.0) -> Estimate:
    n = len(log["x"])
    target = POLICIES[policy](log["x"])
    target_probs = target[np.arange(n), log["action"]]
    if name == "ips":
        return ips(log["reward"], log["propensity"], target_probs)
    if name == "snips":
        return snips(log["reward"], log["propensity"], target_probs)
    q = q_scale * buy_probability(log["x"]) * (PRICES - COST)  # the reward model, right or scaled wrong
    return doubly_robust(log["reward"], log["propensity"], target_probs, q[np.arange(n), log["action"]],
                         (target * q).sum(axis=1))  # fmt: skip


def test_the_simulated_policies_differ() -> None:
    assert TRUTH["oracle"] > TRUTH["logging"] > TRUTH["cheapest"] and TRUTH["flipped slope"] < TRUTH["logging"]


@pytest.mark.parametrize("name", ["ips", "snips", "dr"])
@pytest.mark.parametrize("policy", ["oracle", "cheapest", "flipped slope"])
def test_the_intervals_cover_the_true_value(name: str, policy: str) -> None:
    """Nominal 95% intervals, 60 seeded logs of 4,000 requests each: at least 85% cover (a binomial 95% would
    fall under that about 1 time in 100)."""
    covered = [(e.low <= TRUTH[policy] <= e.high) for e in (estimate(name, logs(4_000, s), policy) for s in range(60))]
    assert np.mean(covered) >= 0.85, (name, policy, np.mean(covered))


def test_doubly_robust_is_tighter_than_ips_with_a_good_reward_model_and_still_covers_with_a_bad_one() -> None:
    runs = [logs(4_000, s) for s in range(30)]
    width = {name: np.mean([estimate(name, log, "oracle").high - estimate(name, log, "oracle").low for log in runs])
             for name in ("ips", "dr")}  # fmt: skip
    assert width["dr"] < 0.8 * width["ips"], width  # measured: about 0.65
    biased = [estimate("dr", log, "oracle", q_scale=0.6) for log in runs]  # demand underestimated by 40%
    assert np.mean([e.low <= TRUTH["oracle"] <= e.high for e in biased]) >= 0.85


@pytest.mark.parametrize("name", ["snips", "dr"])
def test_the_gate_promotes_a_better_policy_and_refuses_worse_ones(name: str) -> None:
    log = logs(20_000, 1234)
    champion = estimate(name, log, "logging")
    assert beats(estimate(name, log, "oracle"), champion)
    assert not beats(estimate(name, log, "cheapest"), champion)
    assert not beats(estimate(name, log, "flipped slope"), champion)
    assert not beats(champion, champion)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="propensity"):
        ips(np.array([1.0]), np.array([0.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="equal"):
        snips(np.array([1.0, 2.0]), np.array([0.5, 0.5]), np.array([1.0]))
    with pytest.raises(ValueError, match="same estimator"):
        beats(Estimate("ips", 1, 0, 2, 10, 5), Estimate("snips", 1, 0, 2, 10, 5))
