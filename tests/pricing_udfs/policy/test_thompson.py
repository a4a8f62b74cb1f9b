"""Thompson sampling from a bootstrap ensemble: each request priced by one member drawn from its request id, with
the exact propensity of its price; always a guarded candidate; replays price the same; agreeing members never explore.
Fake members (numpy) stand in for TensorFlow here: the ensemble's TF round trip is in tests/pricing/test_training_cli.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.ensemble import EnsembleDemandModel
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.policy import ModelPolicy, PolicySettings, check_decisions
from pricing_udfs.policy.model_policy import unit_hashes
from tests.pricing_udfs.policy.test_guardrails import guardrail_settings
from tests.pricing_udfs.policy.test_model_policy import batch, random_trust_region

# Members that disagree about the price sensitivity (as bootstrap members do, more so where data is thin).
DISAGREEING = [FakeDemandModel(intercept=-1.0, slope=s) for s in (1.5, 2.0, 2.5, 3.5, 5.0)]


def policy(model: object, **kw: object) -> ModelPolicy:
    kw.setdefault("exploration", "thompson")
    return ModelPolicy.create(model, "v-ens", PolicySettings(**kw), default_price_minor=1999, currency="EUR")


def member_prices(members: list, b: pd.DataFrame, **kw: object) -> np.ndarray:
    """``[B, N]``: the price each member alone would choose (brute force: one one-member ensemble per member)."""
    return np.stack([policy(EnsembleDemandModel([m]), **kw).decide(b)["price_minor"].to_numpy() for m in members])


def test_the_propensity_is_the_share_of_members_choosing_the_price() -> None:
    b = batch(300, seed=4)
    ens = EnsembleDemandModel(DISAGREEING)
    d = policy(ens, grid_size=24).decide(b)
    assert not d["fallback_used"].any()
    alone = member_prices(DISAGREEING, b, grid_size=24)  # [B, N]
    price = d["price_minor"].to_numpy()
    # enumerate the members: the probability of each row's price under a uniformly drawn member
    np.testing.assert_allclose(d["propensity"], (alone == price[None, :]).mean(axis=0), rtol=0, atol=1e-12)
    # and the price is the one of the member the request id draws (floor(u * B))
    u, _ = unit_hashes(b["request_id"], 0)
    drawn = np.minimum((u * len(DISAGREEING)).astype(int), len(DISAGREEING) - 1)
    np.testing.assert_array_equal(price, alone[drawn, np.arange(len(b))])
    # the members really disagree here: exploration happens, and only where the mean model would price otherwise
    mean = policy(ens, grid_size=24, exploration="epsilon-greedy").decide(b)
    np.testing.assert_array_equal(d["explored"], price != mean["price_minor"].to_numpy())
    assert 0.2 < d["explored"].mean() < 0.95 and (d["propensity"] < 1).mean() > 0.5
    assert all(("exploration" in c) == e for c, e in zip(d["reason_codes"], d["explored"]))
    # the logged expectations are the mean model's at the chosen price
    feats = b[list(FEATURE_SPEC.names)].to_numpy()
    conv = ens.score(feats, price[:, None].astype(float))[:, 0]
    np.testing.assert_allclose(d["expected_conversion"], conv, atol=1e-6)
    cost = b["unit_cost_minor"].to_numpy()
    np.testing.assert_array_equal(d["expected_profit_minor"], np.rint((price - cost) * d["expected_conversion"]))


def test_the_propensity_is_the_empirical_frequency_over_many_draws() -> None:
    """One request's features under 6,000 request ids: each price turns up as often as its propensity says."""
    one = batch(1, ref=2_000, cost=900)
    many = pd.concat([one] * 6_000, ignore_index=True)
    many["request_id"] = [f"replay-{i}" for i in range(len(many))]
    d = policy(EnsembleDemandModel(DISAGREEING), grid_size=24).decide(many)
    freq = d["price_minor"].value_counts(normalize=True)
    assert len(freq) >= 3  # several prices
    for price, share in freq.items():
        p = d.loc[d["price_minor"] == price, "propensity"]
        assert p.nunique() == 1  # the same price always logs the same propensity
        assert share == pytest.approx(p.iat[0], abs=4 * np.sqrt(p.iat[0] * (1 - p.iat[0]) / len(many)))
    assert freq.sum() == pytest.approx(1.0)
    assert sum(d.groupby("price_minor")["propensity"].first()) == pytest.approx(1.0)  # one distribution


def test_members_that_agree_never_explore() -> None:
    b = batch(200, seed=5)
    same = EnsembleDemandModel([FakeDemandModel(intercept=-1.0, slope=3.0)] * 4)
    d = policy(same).decide(b)
    single = policy(FakeDemandModel(intercept=-1.0, slope=3.0), exploration="epsilon-greedy").decide(b)
    assert (d["propensity"] == 1.0).all() and not d["explored"].any()
    pd.testing.assert_frame_equal(d.drop(columns="model_version"), single.drop(columns="model_version"))


def test_a_replay_prices_the_same_whatever_the_batch() -> None:
    b = batch(400, seed=6)
    p = policy(EnsembleDemandModel(DISAGREEING))
    d = p.decide(b)
    pd.testing.assert_frame_equal(d, p.decide(b))
    shuffled = b.sample(frac=1.0, random_state=1)
    pd.testing.assert_frame_equal(p.decide(shuffled).loc[b.index], d)  # another order, another batch: same price
    part = b.iloc[::7]
    pd.testing.assert_frame_equal(p.decide(part), d.iloc[::7])
    other_seed = policy(EnsembleDemandModel(DISAGREEING), exploration_seed=9).decide(b)
    assert (other_seed["price_minor"] != d["price_minor"]).any()  # the seed salts the draw


def test_a_single_model_explores_epsilon_greedy_and_the_rate_is_for_epsilon_greedy_only() -> None:
    b = batch(500, seed=7)
    model = FakeDemandModel(intercept=-1.0, slope=3.0)
    pd.testing.assert_frame_equal(policy(model, exploration_rate=0.1).decide(b),
                                  policy(model, exploration_rate=0.1, exploration="epsilon-greedy").decide(b))
    ens = EnsembleDemandModel(DISAGREEING)
    pd.testing.assert_frame_equal(policy(ens, exploration_rate=0.2).decide(b), policy(ens).decide(b))
    with pytest.raises(ValueError):
        PolicySettings(exploration="softmax")


class BadMember:
    """A member whose probabilities are NaN or above one for every other row."""

    feature_spec_version = FEATURE_SPEC.version
    n_features = len(FEATURE_SPEC.names)

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        out = FakeDemandModel().score(features, prices)
        out[::2] = self.value
        return out


@pytest.mark.parametrize("value", [np.nan, 1.5])
def test_a_bad_member_sends_its_rows_to_the_fallback(value: float) -> None:
    b = batch(6, ref=1000, cost=500)
    d = policy(EnsembleDemandModel([FakeDemandModel(), BadMember(value), FakeDemandModel(slope=3.0)])).decide(b)
    failed = d["fallback_used"].to_numpy()
    assert failed.tolist() == [True, False] * 3  # even where the mean would look fine (1.5 averages below 1)
    assert all(codes[0] == "model_invalid_output" for codes in d["reason_codes"][failed])
    assert (d["price_minor"][failed] == 1000).all()


def test_a_member_that_raises_fails_the_batch_to_the_fallback() -> None:
    class Raising(BadMember):
        def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
            raise RuntimeError("boom")

    d = policy(EnsembleDemandModel([FakeDemandModel(), Raising(0.0)])).decide(batch(4, ref=1000, cost=500))
    assert d["fallback_used"].all() and all(c[0] == "model_error" for c in d["reason_codes"])


members_st = st.lists(st.builds(lambda i, s: FakeDemandModel(intercept=i, slope=s), st.floats(-3, 2), st.floats(0, 8)),
                      min_size=1, max_size=6)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(g=guardrail_settings, members=members_st, seed=st.integers(0, 2**31 - 1), grid=st.integers(2, 24),
       weight=st.floats(0, 1), trusted=st.booleans())  # fmt: skip
def test_thompson_prices_are_guarded_candidates(g, members, seed, grid, weight, trusted) -> None:
    rng = np.random.default_rng(seed)
    b = batch(30, seed=seed % 1000)
    b.loc[rng.random(30) < 0.1, "list_price_minor"] = 0.0
    b.loc[rng.random(30) < 0.1, "unit_cost_minor"] = np.nan
    b["anchor_price_minor"] = np.where(rng.random(30) < 0.5, 0, rng.integers(1, 80_000, 30))
    b["views_1h"] = rng.choice([0.0, 3.0, 50.0, 1e6], 30)
    region = random_trust_region(rng, b) if trusted else None
    kw = {"guardrails": g, "grid_size": grid, "profit_weight": weight}
    ens = EnsembleDemandModel(members)
    p = ModelPolicy.create(ens, "v", PolicySettings(exploration="thompson", **kw), default_price_minor=1999,
                           currency="EUR", trust_region=region)  # fmt: skip
    d = p.decide(b)
    price = d["price_minor"].to_numpy()
    assert np.all(price > 0) and check_decisions(p, b, d)[1] == 0
    ref = b["list_price_minor"].where(b["list_price_minor"] > 0)
    assert not g.violations(price, reference_price=ref, unit_cost=b["unit_cost_minor"],
                            anchor_price=b["anchor_price_minor"]).any()  # fmt: skip
    # the fallback takes the same rows as without exploration
    greedy = ModelPolicy.create(ens, "v", PolicySettings(**kw), default_price_minor=1999, currency="EUR",
                                trust_region=region).decide(b)  # fmt: skip
    np.testing.assert_array_equal(d["fallback_used"], greedy["fallback_used"])
    model_rows = ~d["fallback_used"].to_numpy()
    # each model-priced row: the price of one of the members alone (each member's price is one of the K guarded
    # candidates), with the share of members choosing it as its propensity
    alone = np.stack([ModelPolicy.create(EnsembleDemandModel([m]), "v", PolicySettings(exploration="thompson", **kw),
                                         default_price_minor=1999, currency="EUR",
                                         trust_region=region).decide(b)["price_minor"].to_numpy()
                      for m in members])  # fmt: skip
    share = (alone == price[None, :]).mean(axis=0)
    assert np.all(share[model_rows] > 0)
    np.testing.assert_allclose(d["propensity"].to_numpy()[model_rows], share[model_rows], atol=1e-12)
    assert np.all(d["propensity"].to_numpy()[model_rows] >= 1 / len(members) - 1e-12)
    np.testing.assert_array_equal(d["explored"].to_numpy()[model_rows],
                                  (price != greedy["price_minor"].to_numpy())[model_rows])
