"""The model seam without TensorFlow: input checks, the fake model, and a TF-free import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pricing_udfs.features.spec import FEATURE_SPEC
from pricing_udfs.model import FakeDemandModel, FakeModelHandler, check_inputs

F = len(FEATURE_SPEC.names)
LIST = FEATURE_SPEC.index("list_price_minor")
COMP_MIN = FEATURE_SPEC.index("competitor_min_15m_minor")
COMP_EVENTS = FEATURE_SPEC.index("competitor_events_15m")


def rows(list_prices: list[float]) -> np.ndarray:
    x = np.tile(FEATURE_SPEC.defaults, (len(list_prices), 1))
    x[:, LIST] = list_prices
    return x


def test_importing_the_model_package_does_not_load_tensorflow() -> None:
    code = (
        "import sys, numpy as np\n"
        "import pricing_udfs, pricing_udfs.model as m\n"
        "from pricing_udfs.features.spec import FEATURE_SPEC as S\n"
        "p = m.FakeModelHandler().score(m.FakeDemandModel(), np.tile(S.defaults, (2, 1)), np.ones((2, 3)))\n"
        "assert p.shape == (2, 3)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


@pytest.mark.parametrize("k", [1, 16])
def test_fake_scores_n_by_k_float32(k: int) -> None:
    x = rows([1000.0, 250.0, 0.0, 99_999.0, 5.0])
    prices = np.sort(np.random.default_rng(k).integers(1, 200_000, (5, k)), axis=1)
    p = FakeDemandModel().score(x, prices)
    assert p.shape == (5, k) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(np.diff(p, axis=1) <= 0)


def test_fake_follows_the_documented_curve_and_reference_rule() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=2.0)
    x = rows([1000.0, 0.0, -5.0, float("nan")])
    prices = np.array([[1000.0, 2000.0]] * 4)
    p = model.score(x, prices)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(p[0], [sig(-1.0), sig(-1.0 - 2.0 * np.log(2.0))], rtol=1e-6)
    # unknown reference (0, negative, NaN): the price is its own reference, the curve is flat at the intercept
    np.testing.assert_allclose(p[1:], sig(-1.0), rtol=1e-6)


def test_fake_clips_prices_to_one_minor_unit_and_keeps_nan() -> None:
    p = FakeDemandModel().score(rows([100.0] * 1), np.array([[-50.0, 0.0, 1.0, np.nan]]))
    assert p[0, 0] == p[0, 1] == p[0, 2]
    assert np.isnan(p[0, 3])


def test_fake_competitor_term_applies_only_where_a_competitor_price_is_known() -> None:
    model = FakeDemandModel(intercept=-1.0, slope=2.0, competitor_slope=1.5)
    x = rows([1000.0] * 5)
    x[:, COMP_MIN] = [800.0, 800.0, 0.0, -3.0, float("nan")]
    x[:, COMP_EVENTS] = [2.0, 0.0, 2.0, 2.0, 2.0]  # known only in row 0 (events > 0, positive minimum)
    prices = np.array([[500.0, 1000.0, 2000.0]] * 5)
    p = model.score(x, prices)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = -1.0 - 2.0 * np.log(prices[0] / 1000.0)
    np.testing.assert_allclose(p[0], sig(expected - 1.5 * np.log(prices[0] / 800.0)), rtol=1e-6)
    np.testing.assert_allclose(p[1:], np.tile(sig(expected), (4, 1)), rtol=1e-6)
    np.testing.assert_array_equal(model.price_slope(x), np.float32([3.5, 2.0, 2.0, 2.0, 2.0]))
    # a cheaper competitor lowers the probability at every price; more so the higher the price
    cheaper = x[:1].copy()
    cheaper[0, COMP_MIN] = 600.0
    assert np.all(model.score(cheaper, prices[:1]) < p[:1])
    assert np.all(np.diff(p, axis=1) <= 0)


def test_fake_rejects_a_negative_slope() -> None:
    with pytest.raises(ValueError, match="slope"):
        FakeDemandModel(slope=-0.1)
    with pytest.raises(ValueError, match="slope"):
        FakeDemandModel(competitor_slope=-0.1)


def test_fake_round_trips_through_its_handler(tmp_path) -> None:
    model = FakeDemandModel(intercept=-0.3, slope=1.7, competitor_slope=0.4)
    handler = FakeModelHandler()
    loaded = handler.load(model.save(tmp_path / "m"))
    assert loaded == model
    x, prices = rows([500.0, 800.0]), np.array([[400, 500, 600], [700, 800, 900]])
    np.testing.assert_array_equal(handler.score(loaded, x, prices), model.score(x, prices))


@pytest.mark.parametrize(
    ("features", "prices", "message"),
    [
        (np.zeros(F), np.ones((1, 2)), "features must be 2-D"),
        (np.zeros((2, F - 1)), np.ones((2, 2)), f"{F} columns"),
        (np.zeros((2, F)), np.ones(2), "prices must be 2-D"),
        (np.zeros((2, F)), np.ones((3, 2)), "same rows"),
    ],
)
def test_inputs_are_checked(features: np.ndarray, prices: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_inputs(features, prices, n_features=F)
    with pytest.raises(ValueError, match=message):
        FakeDemandModel().score(features, prices)


def test_check_inputs_accepts_ints_and_float32_as_float64() -> None:
    f, p = check_inputs(np.zeros((2, F), np.float32), np.ones((2, 3), np.int64), n_features=F)
    assert f.dtype == p.dtype == np.float64 and f.flags.c_contiguous and p.flags.c_contiguous
