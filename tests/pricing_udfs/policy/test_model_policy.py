"""The model policy: the best expected profit inside the guardrails, never a bad price, whatever the model does."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import TrustRegion
from pricing_udfs.policy import (
    FALLBACK_VERSION,
    Guardrails,
    ModelPolicy,
    PolicySettings,
    TrustRegionSettings,
    check_decisions,
)
from tests.pricing_udfs.policy.test_guardrails import guardrail_settings


def batch(n: int, *, seed: int = 0, ref: float | None = None, cost: float | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    refs = np.full(n, ref) if ref is not None else rng.integers(100, 50_000, n).astype(float)
    costs = np.full(n, cost) if cost is not None else refs * rng.uniform(0.2, 1.2, n)
    rows = [FEATURE_SPEC.vector({"list_price_minor": r, "unit_cost_minor": c}) for r, c in zip(refs, costs)]
    out = pd.DataFrame(np.stack(rows), columns=FEATURE_SPEC.names)
    out.insert(0, "request_id", [f"r{seed}-{i}" for i in range(n)])
    out["list_currency"] = "EUR"
    return out


def policy(model: object, **kw: object) -> ModelPolicy:
    return ModelPolicy.create(model, "v-test", PolicySettings(**kw), default_price_minor=1999, currency="EUR")


def test_the_chosen_price_maximises_expected_profit_on_the_grid() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=3.0)
    b = batch(200, seed=1)
    p = policy(model, grid_size=64, guardrails=Guardrails(max_change=None))
    d = p.decide(b)
    assert not d["fallback_used"].any() and (d["model_version"] == "v-test").all()
    # an independent search over a fine grid inside the same range finds no better price
    lo, hi = p.guardrails.bounds(reference_price=b["list_price_minor"], unit_cost=b["unit_cost_minor"])
    fine = np.linspace(lo, hi, 2001).T
    feats = b[list(FEATURE_SPEC.names)].to_numpy()
    cost = b["unit_cost_minor"].to_numpy()[:, None]
    best = ((fine - cost) * model.score(feats, fine)).max(axis=1)
    chosen = (d["price_minor"].to_numpy() - cost[:, 0]) * model.score(feats, d["price_minor"].to_numpy()[:, None].astype(float))[:, 0]
    assert np.all(chosen >= best * 0.995 - 1e-9)
    assert np.allclose(d["expected_conversion"], model.score(feats, d["price_minor"].to_numpy()[:, None].astype(float))[:, 0], atol=1e-6)


def test_revenue_weight_never_prices_above_the_profit_optimum() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=2.5)
    b = batch(300, seed=2)
    profit = policy(model, profit_weight=1.0).decide(b)["price_minor"]
    revenue = policy(model, profit_weight=0.0).decide(b)["price_minor"]
    assert (revenue <= profit).all() and (revenue < profit).any()


def test_a_binding_limit_is_named() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=0.1)  # hardly price-sensitive: wants the highest price
    d = policy(model, guardrails=Guardrails(max_change=None, max_personal_deviation=0.1)).decide(batch(5, ref=1000, cost=100))
    assert (d["price_minor"] == 1100).all()
    assert all(codes == ["model", "personal_deviation"] for codes in d["reason_codes"])


class Broken:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        if self.kind == "raise":
            raise RuntimeError("boom")
        if self.kind == "shape":
            return np.zeros((1, 1))
        out = np.full(prices.shape, 0.1)
        out[::2] = np.nan if self.kind == "nan" else 7.0
        return out


@pytest.mark.parametrize("kind, reason", [("raise", "model_error"), ("shape", "model_invalid_output"),
                                          ("nan", "model_invalid_output"), ("above_one", "model_invalid_output")])
def test_a_broken_model_yields_the_fallback(kind: str, reason: str) -> None:
    b = batch(6, ref=1000, cost=500)
    d = policy(Broken(kind)).decide(b)
    failed = d["fallback_used"].to_numpy()
    assert failed[::2].all()
    assert (d["price_minor"][failed] == 1000).all()  # the reference price, inside the guardrails
    assert all(codes[0] == reason for codes in d["reason_codes"][failed])
    assert (d["model_version"][failed] == FALLBACK_VERSION).all()
    assert not check_decisions(policy(Broken(kind)), b, d)[1]


def test_missing_inputs_fall_back_with_their_reason() -> None:
    b = pd.concat([batch(1, ref=1000, cost=0), batch(1, ref=0, cost=500)], ignore_index=True)
    d = policy(FakeDemandModel()).decide(b)
    assert d["reason_codes"].tolist() == [["no_unit_cost", "reference_price"], ["default_price"]]
    assert d["price_minor"].tolist() == [1000, 1999]
    no_model = policy(None).decide(batch(2, ref=1000, cost=500))
    assert no_model["fallback_used"].all() and no_model["reason_codes"][0][0] == "no_model"


class RandomModel:
    """Any monotone or non-monotone, possibly NaN or raising model."""

    def __init__(self, seed: int, kind: str) -> None:
        self.rng = np.random.default_rng(seed)
        self.kind = kind

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        if self.kind == "raise":
            raise ValueError("model failure")
        out = self.rng.random(prices.shape)
        if self.kind == "monotone":
            out = -np.sort(-out, axis=1)
        if self.kind == "nan":
            out[self.rng.random(prices.shape) < 0.1] = np.nan
        return out


def random_trust_region(rng: np.random.Generator, b: pd.DataFrame) -> TrustRegion:
    """Most features' ranges hold the batch's values; a few random ones (views_1h always) are narrower, constant,
    or beside them; a random views_24h traffic profile."""
    x = np.nan_to_num(b[list(FEATURE_SPEC.names)].to_numpy(dtype=np.float64))
    features = {name: (float(x[:, j].min()), float(x[:, j].max())) for j, name in enumerate(FEATURE_SPEC.names)}
    for name in {"views_1h", *rng.choice(FEATURE_SPEC.names, 3)}:
        j = FEATURE_SPEC.index(name)
        a, c = sorted(rng.choice(x[:, j], 2))
        kind = rng.integers(0, 3)
        lo, hi = (a, c) if kind == 0 else (a, a) if kind == 1 else (a - abs(rng.normal(0, 10)), c + rng.normal(0, 10))
        features[name] = (float(lo), float(max(lo, hi)))
    levels = (0.005, 0.01, 0.5, 0.995)
    traffic = {"views_24h": tuple(float(v) for v in np.sort(rng.uniform(0, 30, 4)))}
    return TrustRegion(feature_spec_version=FEATURE_SPEC.version, rows=100, quantiles=(0.005, 0.995), features=features,
                       traffic_levels=levels, traffic=traffic)  # fmt: skip


trust_settings = st.builds(lambda tol, span, cold, on: TrustRegionSettings(enabled=on, tolerance=tol,
                           fallback_distance=tol + span, cold_product_quantile=cold),  # fmt: skip
                           st.floats(0, 2), st.floats(0.01, 5), st.floats(0, 0.5), st.booleans())


@settings(max_examples=150, deadline=None)
@given(g=guardrail_settings, seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["monotone", "any", "nan", "raise"]),
       grid=st.integers(2, 40), weight=st.floats(0, 1), explore=st.floats(0, 0.2),
       trust=st.one_of(st.none(), trust_settings))  # fmt: skip
def test_every_price_is_finite_positive_and_inside_every_guardrail(g, seed, kind, grid, weight, explore, trust) -> None:
    rng = np.random.default_rng(seed)
    b = batch(40, seed=seed % 1000)
    b.loc[rng.random(40) < 0.1, "list_price_minor"] = 0.0  # unknown list price
    b.loc[rng.random(40) < 0.1, "unit_cost_minor"] = np.nan
    b["anchor_price_minor"] = np.where(rng.random(40) < 0.5, 0, rng.integers(1, 80_000, 40))
    for name in ("views_1h", "views_24h", "user_views_30m", "is_new_product", "conversion_24h"):
        b[name] = rng.choice([0.0, 1.0, 3.0, 50.0, 1e6], 40)  # inside, near and far outside a random range
    region = random_trust_region(rng, b) if trust is not None else None
    if region is not None:  # a quarter of the rows between the range and far beyond it: narrowed, not only fallen back
        lo, hi = region.features["views_1h"]
        far = rng.random(40) < 0.25
        b.loc[far, "views_1h"] = hi + max(hi - lo, 1.0) * rng.uniform(0, trust.fallback_distance * 1.2, int(far.sum()))
    b.loc[rng.random(40) < 0.05, "views_5m"] = rng.choice([np.nan, np.inf, -np.inf])  # not finite: infinitely far
    p = ModelPolicy.create(RandomModel(seed, kind), "v", PolicySettings(guardrails=g, grid_size=grid, profit_weight=weight,
                           exploration_rate=explore, trust_region=trust or TrustRegionSettings()),
                           default_price_minor=1999, currency="EUR", trust_region=region)  # fmt: skip
    d = p.decide(b)
    price = d["price_minor"].to_numpy()
    assert d["price_minor"].dtype == np.int64 and np.all(price > 0)
    ref = b["list_price_minor"].where(b["list_price_minor"] > 0)
    assert not g.violations(price, reference_price=ref, unit_cost=b["unit_cost_minor"],
                            anchor_price=b["anchor_price_minor"]).any()  # fmt: skip
    assert check_decisions(p, b, d)[1] == 0
    if kind in ("raise",):
        assert d["fallback_used"].all()
    trusted = [codes for codes in d["reason_codes"] if {"out_of_range", "cold_product"} & set(codes)]
    if region is None or not trust.enabled:
        assert not trusted
    for codes, used in zip(d["reason_codes"], d["fallback_used"]):  # a trust code leads a fallback, follows "model"
        if used and codes[0] in ("out_of_range", "cold_product"):
            assert codes[1] == "reference_price"
        elif not used and "out_of_range" in codes:
            assert codes[:2] == ["model", "out_of_range"]
    if kind == "nan":
        assert d.loc[~d["fallback_used"], "expected_conversion"].notna().all()


def test_exploration_is_capped_deterministic_and_logs_its_propensity() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=3.0)
    b = batch(4000, seed=3)
    p = policy(model, exploration_rate=0.1, grid_size=10)
    d1, d2 = p.decide(b), p.decide(b)
    pd.testing.assert_frame_equal(d1, d2)  # a replay prices the same
    share = d1["explored"].mean()
    assert 0.08 < share < 0.12
    greedy = policy(model, grid_size=10).decide(b)
    same = d1["price_minor"] == greedy["price_minor"]
    assert np.allclose(d1.loc[~d1["explored"], "propensity"], 0.9 + 0.01)
    explored_off_greedy = d1["explored"] & ~same
    assert np.allclose(d1.loc[explored_off_greedy, "propensity"], 0.01)
    assert (greedy["propensity"] == 1.0).all() and not greedy["explored"].any()
    assert all("exploration" in c for c in d1.loc[d1["explored"], "reason_codes"])


def test_the_exploration_rate_is_capped() -> None:
    with pytest.raises(ValueError):
        PolicySettings(exploration_rate=0.5)
