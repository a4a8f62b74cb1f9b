"""The TensorFlow demand model: monotone in price, the documented signature, a fresh-process round trip,
and the same seam as the fake."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pricing_udfs.features.spec import FEATURE_SPEC
from pricing_udfs.model import FakeDemandModel, FakeModelHandler, TFDemandModel, TFModelHandler
from tests.pricing_udfs.model import synthetic

pytest.importorskip("tensorflow")

F = len(FEATURE_SPEC.names)
LIST = FEATURE_SPEC.index("list_price_minor")
COMP_MIN = FEATURE_SPEC.index("competitor_min_15m_minor")
COMP_MEAN = FEATURE_SPEC.index("competitor_mean_15m_minor")
COMP_EVENTS = FEATURE_SPEC.index("competitor_events_15m")

# Plausible raw values per feature (what the job can serve), by name; anything else is a count.
_MONEY = st.one_of(st.just(0.0), st.integers(1, 10**8).map(float))
_RANGES = {
    "list_price_minor": _MONEY,
    "unit_cost_minor": _MONEY,
    "competitor_min_15m_minor": _MONEY,
    "competitor_mean_15m_minor": _MONEY,
    "inventory": st.integers(-1, 10**9).map(float),
    "conversion_1h": st.floats(0, 1),
    "demand_velocity": st.floats(0, 1e4),
    "user_price_ratio": st.floats(0.05, 20),
    "user_secs_since_purchase": st.floats(0, 2_592_000),
    "hour_of_day": st.integers(0, 23).map(float),
    "day_of_week": st.integers(0, 6).map(float),
}
_BINARY = st.sampled_from([0.0, 1.0])
_COUNT = st.integers(0, 10**6).map(float)


def _feature(name: str) -> st.SearchStrategy[float]:
    if name in _RANGES:
        return _RANGES[name]
    if name.startswith(("channel_", "is_", "promotion_")):
        return _BINARY
    return _COUNT


feature_rows = st.tuples(*(_feature(n) for n in FEATURE_SPEC.names)).map(lambda t: np.array(t, dtype=np.float64))


def _competitor_known(x: np.ndarray) -> np.ndarray:
    return (x[:, COMP_EVENTS] > 0) & (x[:, COMP_MIN] > 0)


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """N rows and, per row, an ascending grid of K integer prices: absolute, or multiples of the list
    price or of the competitor minimum. Each row's competitor price is known (events > 0 and a positive
    minimum, at a random multiple of the list price or anywhere), unknown (no events, or no minimum), or drawn
    like any other feature."""
    n = draw(st.integers(1, 6))
    k = draw(st.integers(1, 16))
    x = np.stack([draw(feature_rows) for _ in range(n)])
    for i in range(n):
        case = draw(st.sampled_from(["known", "known_vs_list", "no_events", "no_minimum", "as_drawn"]))
        if case.startswith("known"):
            x[i, COMP_EVENTS] = draw(st.integers(1, 50))
            x[i, COMP_MIN] = draw(st.integers(1, 10**8))
            if case == "known_vs_list" and x[i, LIST] > 0:
                x[i, COMP_MIN] = max(1.0, float(np.rint(x[i, LIST] * draw(st.floats(0.05, 5)))))
            x[i, COMP_MEAN] = max(x[i, COMP_MIN], x[i, COMP_MEAN])
        elif case == "no_events":
            x[i, COMP_EVENTS] = 0.0
        elif case == "no_minimum":
            x[i, COMP_MIN] = 0.0
    grids = []
    for i in range(n):
        anchor = draw(st.sampled_from(["list", "competitor", "absolute"]))
        base = x[i, LIST] if anchor == "list" else x[i, COMP_MIN] if anchor == "competitor" else 0.0
        if base > 0:
            mult = draw(st.lists(st.floats(0.01, 100), min_size=k, max_size=k))
            grids.append(np.rint(base * np.sort(mult)))
        else:
            grids.append(np.sort(draw(st.lists(st.integers(0, 10**9), min_size=k, max_size=k))).astype(float))
    return x, np.stack(grids)


@pytest.fixture(scope="module")
def untrained() -> TFDemandModel:
    return TFDemandModel.load(synthetic.untrained_export())


@pytest.fixture(scope="module")
def trained() -> TFDemandModel:
    _, model, _ = synthetic.trained()
    return TFDemandModel.load(model.model_dir)


def _check_monotone(model: TFDemandModel, x: np.ndarray, prices: np.ndarray) -> None:
    p = model.score(x, prices)
    assert p.shape == prices.shape and p.dtype == np.float32
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    steps = np.diff(p, axis=1)
    worst = np.unravel_index(steps.argmax(), steps.shape) if steps.size else None
    assert np.all(steps <= 0), f"probability rises with price by {steps.max()} at {worst}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches())
def test_untrained_model_is_monotone_in_price(untrained: TFDemandModel, batch: tuple[np.ndarray, np.ndarray]) -> None:
    _check_monotone(untrained, *batch)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches())
def test_trained_model_is_monotone_in_price(trained: TFDemandModel, batch: tuple[np.ndarray, np.ndarray]) -> None:
    _check_monotone(trained, *batch)


def test_price_matters_when_the_reference_is_known_and_not_otherwise(trained: TFDemandModel) -> None:
    x = np.tile(FEATURE_SPEC.defaults, (2, 1))
    x[0, LIST] = 2000.0
    grid = np.array([[1000.0, 2000.0, 4000.0]] * 2)
    p = trained.score(x, grid)
    assert p[0, 0] > p[0, 1] > p[0, 2]  # a trained slope is strictly positive here
    assert p[1, 0] == p[1, 1] == p[1, 2]  # list price unknown: the price is its own reference
    assert np.all(trained.price_slope(x) > 0)


_SUBPROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    path, inputs, out = sys.argv[1:4]
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    args, kwargs = fn.structured_input_signature
    outputs = fn.structured_outputs
    data = np.load(inputs)
    result = fn(features=tf.constant(data["features"]), prices=tf.constant(data["prices"]))
    np.save(out, result["probability"].numpy())
    print(json.dumps({
        "args": len(args),
        "inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in kwargs.items()},
        "outputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in outputs.items()},
    }))
    """
)


def test_saved_model_round_trips_in_a_fresh_process(trained: TFDemandModel, tmp_path: Path) -> None:
    data, _, _ = synthetic.trained()
    x = data.features[:64]
    prices = np.rint(np.maximum(x[:, LIST:LIST + 1], 100.0) * np.linspace(0.7, 1.5, 16)[None, :])
    expected = trained.score(x, prices)
    np.savez(tmp_path / "inputs.npz", features=x, prices=prices)
    run = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS, str(trained.path), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npy")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    signature = json.loads(run.stdout.strip().splitlines()[-1])
    assert signature == {
        "args": 0,
        "inputs": {"features": ["float64", [None, F]], "prices": ["float64", [None, None]]},
        "outputs": {"probability": ["float32", [None, None]]},
    }
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.float32 and got.shape == (64, 16)
    np.testing.assert_array_equal(got, expected)


def _fake_in_tensorflow(tmp_path: Path, fake: FakeDemandModel) -> TFDemandModel:
    """A DemandNet whose weights make it the fake's curve: zero kernels, level bias = intercept, slope biases."""
    from pricing_udfs.model.network import DemandNet

    net = DemandNet()
    net.adapt(synthetic.random_features(500, np.random.default_rng(0)))
    layers = [*net.level_layers, net.level_out, *net.slope_layers, net.slope_out, *net.competitor_slope_layers,
              net.competitor_slope_out]  # fmt: skip
    for layer in layers:
        layer.kernel.assign(np.zeros(layer.kernel.shape, np.float32))
        layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    net.level_out.bias.assign([fake.intercept])
    net.slope_out.bias.assign([math.log(math.expm1(fake.slope))])
    net.competitor_slope_out.bias.assign([math.log(math.expm1(fake.competitor_slope))])
    return TFDemandModel.load(net.export_saved_model(tmp_path / "fake-in-tf"))


@pytest.mark.parametrize("k", [1, 16])
def test_tf_handler_and_fake_agree_on_the_seam(tmp_path: Path, k: int) -> None:
    fake = FakeDemandModel(intercept=-0.8, slope=1.6, competitor_slope=0.7)
    fake_handler, tf_handler = FakeModelHandler(), TFModelHandler()
    fake_model = fake_handler.load(fake.save(tmp_path / "fake"))
    tf_model = tf_handler.load(_fake_in_tensorflow(tmp_path, fake).path)

    x = synthetic.random_features(7, np.random.default_rng(k))
    x[0, LIST] = 0.0  # cold start: no reference
    x[3:5, COMP_EVENTS], x[3:5, COMP_MIN] = [2.0, 0.0], [900.0, 0.0]  # a competitor known without events; none
    x[5, COMP_EVENTS], x[5, COMP_MIN] = 1.0, 1234.0  # known
    prices = np.sort(np.random.default_rng(k + 1).integers(1, 200_000, (7, k)), axis=1)  # ints
    prices[1, 0], prices[2, 0] = 0, -5  # scored as 1 minor unit by both
    outs = []
    for handler, model in ((fake_handler, fake_model), (tf_handler, tf_model)):
        for f, p in ((x, prices), (x.astype(np.float32), prices.astype(np.float64))):
            out = handler.score(model, f, p)
            assert out.shape == (7, k) and out.dtype == np.float32
            outs.append(out)
        assert handler.score(model, x[:0], prices[:0]).shape == (0, k)
        with pytest.raises(ValueError, match="columns"):
            handler.score(model, x[:, :-1], prices)
    np.testing.assert_allclose(outs[0], outs[2], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tf_model.price_slope(x), fake_model.price_slope(x), rtol=1e-5)


def test_competitor_term_lowers_demand_when_the_competitor_is_cheaper(tmp_path: Path) -> None:
    fake = FakeDemandModel(intercept=-0.8, slope=1.6, competitor_slope=0.7)
    model = _fake_in_tensorflow(tmp_path, fake)
    x = np.tile(FEATURE_SPEC.defaults, (4, 1))
    x[:, LIST] = 2000.0
    x[:, COMP_EVENTS] = [3.0, 3.0, 3.0, 0.0]
    x[:, COMP_MIN] = x[:, COMP_MEAN] = [1200.0, 2000.0, 2600.0, 1200.0]  # the last: no events, not known
    grid = np.array([[1000.0, 1500.0, 2000.0, 3000.0]] * 4)
    p = model.score(x, grid)
    assert np.all(p[0] < p[1]) and np.all(p[1] < p[2])  # cheaper competitor, fewer purchases at every price
    logit = np.log(p / (1 - p))
    np.testing.assert_allclose(logit[0] - logit[1], -0.7 * np.log(2000.0 / 1200.0), rtol=1e-4)
    np.testing.assert_allclose(p[3], fake.score(x[3:], grid[3:])[0], rtol=1e-5)  # = no competitor term
    np.testing.assert_allclose(model.price_slope(x), [2.3, 2.3, 2.3, 1.6], rtol=1e-5)  # total: a + known * b


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(row=feature_rows, mins=st.lists(st.integers(1, 10**8), min_size=3, max_size=3),
       events=st.lists(st.integers(1, 10**4), min_size=3, max_size=3))  # fmt: skip
def test_sensitivity_does_not_depend_on_the_competitor_price(untrained: TFDemandModel, row: np.ndarray,
                                                            mins: list[int], events: list[int]) -> None:  # fmt: skip
    """The slope MLPs see whether a competitor price is known, never its level or the event count: with
    random weights, rows that differ only there have the same total sensitivity."""
    x = np.tile(row, (3, 1))
    x[:, COMP_MIN] = mins
    x[:, COMP_MEAN] = np.array(mins) * 1.1
    x[:, COMP_EVENTS] = events
    slope = untrained.price_slope(x)
    assert slope[0] == slope[1] == slope[2]


def test_export_documents_its_signature_and_feature_layout(untrained: TFDemandModel) -> None:
    info = untrained.info
    assert info["feature_spec_version"] == FEATURE_SPEC.version
    assert info["feature_names"] == FEATURE_SPEC.names and info["n_features"] == F
    assert info["signature"]["name"] == "serving_default"
    assert info["temperature"] == 1.0
    assert info["competitor_features"] == {"minimum": "competitor_min_15m_minor", "events": "competitor_events_15m"}


def test_load_refuses_a_folder_that_is_not_a_demand_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a demand model"):
        TFDemandModel.load(tmp_path)
