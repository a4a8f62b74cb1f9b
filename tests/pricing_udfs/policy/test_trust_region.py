"""The trust region: rows like the training rows price as before, rows outside narrow toward the reference
price in proportion to how far out they lie, far out or cold rows get the fallback, and the model never sees a
feature outside its recorded range."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import TrustRegion as Record
from pricing_udfs.policy import Guardrails, ModelPolicy, PolicySettings, TrustRegionSettings, check_decisions
from pricing_udfs.policy.trust_region import TrustRegion, assess, narrow, shrink, widths
from tests.pricing_udfs.policy.test_guardrails import guardrail_settings

LEVELS = (0.005, 0.01, 0.5, 0.99)


def record(**ranges: tuple[float, float]) -> Record:
    """A recorded trust region: every feature in a wide range except ``ranges``; views_24h's 1% quantile is 20."""
    features = {name: (-1e9, 1e9) for name in FEATURE_SPEC.names}
    features.update(ranges)
    return Record(feature_spec_version=FEATURE_SPEC.version, rows=1_000, quantiles=(0.005, 0.995), features=features,
                  traffic_levels=LEVELS, traffic={"views_24h": (10.0, 20.0, 100.0, 1_000.0)})  # fmt: skip


REGION = record(views_1h=(0.0, 100.0), user_views_30m=(0.0, 10.0), is_new_product=(0.0, 0.0))


def rows(n: int, *, seed: int = 0, ref: float = 1_000.0, cost: float = 400.0, **values: float) -> pd.DataFrame:
    base = {"list_price_minor": ref, "unit_cost_minor": cost, "views_1h": 50.0, "views_24h": 500.0,
            "user_views_30m": 3.0, "is_new_product": 0.0}  # fmt: skip
    base.update(values)
    out = pd.DataFrame(np.stack([FEATURE_SPEC.vector(base)] * n), columns=FEATURE_SPEC.names)
    out.insert(0, "request_id", [f"r{seed}-{i}" for i in range(n)])
    out["list_currency"] = "EUR"
    return out


# Explicit settings (the defaults are a measured trade-off that may move): out of range from 0.25 range widths,
# the fallback from 1, cold below the training rows' 1 % quantile.
STRICT = TrustRegionSettings(tolerance=0.25, fallback_distance=1.0, cold_product_quantile=0.01)


def policy(model: object, region: object = REGION, **kw: object) -> ModelPolicy:
    kw.setdefault("trust_region", STRICT)
    return ModelPolicy.create(model, "v-test", PolicySettings(**kw), default_price_minor=1999, currency="EUR",
                              trust_region=region)  # fmt: skip


def test_a_row_inside_the_range_is_priced_as_before() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=2.0)
    b = pd.concat([rows(5, views_1h=v) for v in (0.0, 37.0, 100.0)], ignore_index=True)
    with_region, without = policy(model).decide(b), policy(model, None).decide(b)
    pd.testing.assert_frame_equal(with_region, without)
    assert not with_region["fallback_used"].any()
    assert not any({"out_of_range", "cold_product"} & set(codes) for codes in with_region["reason_codes"])


def test_a_row_far_out_gets_the_fallback_with_out_of_range() -> None:
    b = rows(3, views_1h=100.0 + 100.0 * 5)  # five range widths beyond
    d = policy(FakeDemandModel(slope=0.1)).decide(b)
    assert d["fallback_used"].all() and (d["price_minor"] == 1_000).all()  # the reference price
    assert all(codes[:2] == ["out_of_range", "reference_price"] for codes in d["reason_codes"])
    new_product = policy(FakeDemandModel(slope=0.1)).decide(rows(1, is_new_product=1.0))  # a flag training never saw
    assert new_product["reason_codes"][0][0] == "out_of_range" and new_product["fallback_used"][0]


def test_a_cold_product_gets_cold_product() -> None:
    d = policy(FakeDemandModel(slope=0.1)).decide(rows(2, views_24h=19.0))  # below the training's 1% quantile, 20
    assert d["fallback_used"].all() and (d["price_minor"] == 1_000).all()
    assert all(codes[:2] == ["cold_product", "reference_price"] for codes in d["reason_codes"])
    warm = policy(FakeDemandModel(slope=0.1)).decide(rows(2, views_24h=20.0))
    assert not warm["fallback_used"].any()
    off = policy(FakeDemandModel(slope=0.1), trust_region=TrustRegionSettings(cold_product_quantile=0.0))
    assert not off.decide(rows(2, views_24h=0.0))["fallback_used"].any()


def test_in_between_the_range_narrows_toward_the_reference_price() -> None:
    dear = FakeDemandModel(intercept=-1.0, slope=0.05)  # wants the ceiling, 1.5 x list
    s = TrustRegionSettings(tolerance=0.2, fallback_distance=1.2)
    p = policy(dear, guardrails=Guardrails(max_change=None), trust_region=s)
    # distance 0.7: halfway between tolerance and fallback, so half the way from the ceiling to the list price
    d = p.decide(rows(1, views_1h=170.0))
    assert d["price_minor"][0] == 1_250 and not d["fallback_used"][0]
    assert d["reason_codes"][0] == ["model", "out_of_range"]  # the narrowed end is not a guardrail: no "ceiling"
    inside = p.decide(rows(1, views_1h=115.0))  # within the tolerance
    assert inside["price_minor"][0] == 1_500 and inside["reason_codes"][0] == ["model", "ceiling"]


def test_the_model_sees_the_features_clipped_into_the_range_money_features_as_served() -> None:
    seen: list[np.ndarray] = []

    class Spy(FakeDemandModel):
        def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
            seen.append(features.copy())
            return super().score(features, prices)

    region = record(views_1h=(0.0, 100.0), list_price_minor=(100.0, 900.0), user_views_30m=(2.0, 10.0))
    s = TrustRegionSettings(tolerance=0.5, fallback_distance=10.0)
    policy(Spy(), region, trust_region=s).decide(rows(1, views_1h=130.0, user_views_30m=0.0, ref=1_000.0))
    x = seen[0][0]
    assert x[FEATURE_SPEC.index("views_1h")] == 100.0 and x[FEATURE_SPEC.index("user_views_30m")] == 2.0
    assert x[FEATURE_SPEC.index("list_price_minor")] == 1_000.0  # a money feature is not clipped


def test_distance_is_the_worst_features_in_range_widths_with_a_floor_for_constant_features() -> None:
    region = TrustRegion.of(record(views_1h=(10.0, 110.0), is_new_product=(0.0, 0.0), user_price_ratio=(0.9, 1.1)))
    x = np.stack([FEATURE_SPEC.vector({"views_1h": v, "is_new_product": f, "user_price_ratio": r})
                  for v, f, r in ((60, 0, 1.0), (160, 0, 1.0), (0, 0, 1.0), (60, 1, 1.0), (60, 0, 1.15), (np.inf, 0, 1))])  # fmt: skip
    np.testing.assert_allclose(region.distance(x), [0.0, 0.5, 0.1, 1.0, 0.25, np.inf])
    np.testing.assert_array_equal(widths(np.array([0.0, 5.0, 0.0]), np.array([0.0, 5.0, 2.0])), [1.0, 5.0, 2.0])


def test_no_trust_region_or_switched_off_prices_as_before() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=2.0)
    b = rows(4, views_1h=10_000.0, views_24h=0.0)
    plain = policy(model, None).decide(b)
    pd.testing.assert_frame_equal(policy(model, trust_region=TrustRegionSettings(enabled=False)).decide(b), plain)
    assert not plain["fallback_used"].any()


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        TrustRegionSettings(tolerance=1.0, fallback_distance=0.5)
    with pytest.raises(ValidationError):
        TrustRegionSettings(tolerence=0.1)  # extra="forbid": a typo is an error
    with pytest.raises(ValidationError):
        TrustRegionSettings(cold_product_quantile=0.9)
    assert PolicySettings.model_validate({"trust_region": {"tolerance": 0.1}}).trust_region.tolerance == 0.1


# ----------------------------------------------------------------------------- properties
@settings(max_examples=200, deadline=None)
@given(g=guardrail_settings, seed=st.integers(0, 2**32 - 1), d1=st.floats(0, 5), d2=st.floats(0, 5),
       tol=st.floats(0, 1), span=st.floats(0.01, 3))  # fmt: skip
def test_the_narrowed_range_shrinks_monotonically_with_the_distance(g, seed, d1, d2, tol, span) -> None:
    """For d1 <= d2 the range at d2 lies inside the range at d1, which lies inside the guardrails' and holds the
    reference price; at the fallback distance only the reference price is left."""
    d1, d2 = min(d1, d2), max(d1, d2)
    rng = np.random.default_rng(seed)
    n = 40
    ref = rng.integers(1, 100_000, n).astype(float)
    b = g.limits(reference_price=ref, unit_cost=rng.integers(0, 150_000, n),
                 anchor_price=np.where(rng.random(n) < 0.5, 0, rng.integers(1, 200_000, n)))  # fmt: skip
    s = TrustRegionSettings(tolerance=tol, fallback_distance=tol + span)
    lo1, hi1 = narrow(b.lo, b.hi, np.rint(ref), shrink(np.full(n, d1), s))
    lo2, hi2 = narrow(b.lo, b.hi, np.rint(ref), shrink(np.full(n, d2), s))
    c = np.clip(np.rint(ref), b.lo, b.hi)
    assert np.all((b.lo <= lo1) & (lo1 <= lo2) & (lo2 <= c) & (c <= hi2) & (hi2 <= hi1) & (hi1 <= b.hi))
    if d1 <= tol:
        assert np.array_equal(lo1, b.lo) and np.array_equal(hi1, b.hi)
    if d2 >= tol + span:
        assert np.array_equal(lo2, c) and np.array_equal(hi2, c)


@settings(max_examples=60, deadline=None)
@given(views=st.lists(st.floats(100, 400), min_size=2, max_size=6), slope=st.sampled_from([0.05, 8.0]),
       ref=st.integers(200, 50_000))  # fmt: skip
def test_the_price_moves_toward_the_reference_as_the_row_lies_further_out(views, slope, ref) -> None:
    """A model that wants a range end (the ceiling, or the floor): the further out, the closer to the reference."""
    model = FakeDemandModel(intercept=-6.0, slope=slope)  # rare purchases: about constant elasticity
    p = policy(model, guardrails=Guardrails(max_change=None, min_margin=0.0), grid_size=64,
               trust_region=TrustRegionSettings(tolerance=0.1, fallback_distance=3.0))  # fmt: skip
    b = pd.concat([rows(1, views_1h=v, ref=float(ref), cost=ref * 0.1) for v in sorted(views)], ignore_index=True)
    gap = np.abs(p.decide(b)["price_minor"].to_numpy() - ref)
    assert np.all(np.diff(gap) <= 1)  # non-increasing (up to the grid's rounding)
    assert assess(TrustRegion.of(REGION), b[FEATURE_SPEC.names].to_numpy(), p.settings.trust_region).distance.tolist() \
        == sorted((np.maximum(np.array(sorted(views)) - 100.0, 0) / 100.0).tolist())


def test_every_checked_decision_of_a_narrowed_batch_passes_check_decisions() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=1.0)
    b = pd.concat([rows(1, views_1h=v, seed=i) for i, v in enumerate(np.linspace(0, 400, 50))], ignore_index=True)
    p = policy(model, guardrails=Guardrails(price_ending=99, max_personal_deviation=0.2))
    d = p.decide(b)
    assert check_decisions(p, b, d)[1] == 0


def test_the_default_settings_are_valid_and_switch_the_trust_region_on() -> None:
    s = TrustRegionSettings()
    assert s.enabled and 0 <= s.tolerance < s.fallback_distance and 0 <= s.cold_product_quantile <= 0.5
