"""Training the demand model: it learns a known demand, it is deterministic, and its metrics are right."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.training import (
    TrainConfig,
    calibration_table,
    expected_calibration_error,
    fit_temperature,
    load_training_set,
    log_loss,
    marginal_price_slopes,
    roc_auc,
    save,
    sigmoid,
    split,
    train,
    train_on,
    trust_region_of,
)
from pricing_udfs.features.spec import FEATURE_SPEC
from pricing_udfs.model import TFDemandModel
from tests.pricing_udfs.model import synthetic

pytest.importorskip("tensorflow")


# ------------------------------------------------------------------------------ learning
def test_learns_a_known_demand_better_than_the_base_rate() -> None:
    data, trained, _ = synthetic.trained()
    m = trained.metrics
    print({k: round(v, 4) for k, v in m.items()})
    assert m["log_loss"] < 0.95 * m["base_rate_log_loss"]
    assert m["auc"] > 0.65
    assert m["calibration_error"] < 0.03

    # Close to the truth's own log-loss on the same (newest) rows.
    test_rows = slice(len(data.labels) - int(m["test_rows"]), None)
    truth = log_loss(data.labels[test_rows], data.true_probability[test_rows])
    assert m["log_loss"] < truth + 0.01
    # The base rate is the training rows' purchase rate, scored on the test rows.
    n_train = int(m["train_rows"])
    assert m["base_rate"] == pytest.approx(float(data.labels[:n_train].mean()))
    constant = np.full(int(m["test_rows"]), m["base_rate"])
    assert m["base_rate_log_loss"] == pytest.approx(log_loss(data.labels[test_rows], constant))

    # The fitted price sensitivity: right on average, and personal (it follows the user's paid/list ratio).
    model = TFDemandModel.load(trained.model_dir)
    slope = model.price_slope(data.features)
    print("slope: fitted mean", slope.mean(), "true mean", data.true_slope.mean(),
          "correlation", np.corrcoef(slope, data.true_slope)[0, 1])  # fmt: skip
    assert slope.mean() == pytest.approx(data.true_slope.mean(), rel=0.15)
    assert np.corrcoef(slope, data.true_slope)[0, 1] > 0.25
    assert m["price_slope_mean"] == pytest.approx(float(slope[test_rows].mean()), rel=1e-5)


def test_training_reports_progress_window_and_registry_metadata() -> None:
    data, trained, progress = synthetic.trained()
    epoch_lines = [line for line in progress.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == len(trained.epochs) == trained.metrics["epochs"]
    assert all("rows/s" in line for line in epoch_lines)
    assert trained.epochs and trained.metrics["epochs"] < 20  # early stopping ended it
    assert trained.training_window == (int(data.event_time.min()), int(data.event_time.max()))
    meta = trained.registry_metadata()
    assert meta["feature_spec_version"] == FEATURE_SPEC.version
    assert {"log_loss", "auc", "base_rate_log_loss", "calibration_error"} <= set(meta["metrics"])
    assert len(meta["extra"]["calibration"]) == 10
    assert "| demand model |" in trained.report()


def test_save_copies_the_model_with_its_report(tmp_path: Path) -> None:
    data, trained, _ = synthetic.trained()
    out = save(trained, tmp_path / "saved")
    assert (out / "saved_model.pb").is_file() and "log-loss" in (out / "training_report.md").read_text()
    x, p = data.features[:5], data.prices[:5, None]
    original = TFDemandModel.load(trained.model_dir).score(x, p)
    np.testing.assert_array_equal(TFDemandModel.load(out).score(x, p), original)
    info = TFDemandModel.load(out).info["training"]
    assert info["metrics"]["auc"] == trained.metrics["auc"]
    with pytest.raises(ValueError, match="not empty"):
        save(trained, out)


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    data = synthetic.generate(6_000, seed=5)
    rows = load_training_set(synthetic.write(data, tmp_path / "set"))
    config = TrainConfig(seed=3, epochs=2, batch_size=512)
    runs = [train_on(rows, config=c, out_dir=tmp_path / f"m{i}", progress=None)
            for i, c in enumerate([config, config, TrainConfig(seed=4, epochs=2, batch_size=512)])]  # fmt: skip
    scores = [TFDemandModel.load(r.model_dir).score(data.features[:200], data.prices[:200, None]) for r in runs]
    np.testing.assert_array_equal(scores[0], scores[1])
    assert runs[0].metrics["log_loss"] == runs[1].metrics["log_loss"]
    assert not np.array_equal(scores[0], scores[2])
    from tensorflow.python.framework import config as tf_config  # no public getter

    assert tf_config.is_op_determinism_enabled()


def test_early_stopping_stops_when_the_holdout_stops_improving(tmp_path: Path) -> None:
    data = synthetic.generate(4_000, seed=9)
    noise = np.random.default_rng(0).random(4_000) < 0.2  # labels unrelated to anything
    data = synthetic.Synthetic(data.features, data.prices, noise.astype(np.int8), data.event_time,
                               data.true_slope, data.true_probability)  # fmt: skip
    trained = train(synthetic.write(data, tmp_path / "set"), epochs=30, batch_size=256, patience=2,
                    learning_rate=1e-2, progress=None, out_dir=tmp_path / "m")  # fmt: skip
    assert trained.metrics["epochs"] < 30


# ------------------------------------------------------------------------ reading and splitting
def test_reads_rows_in_time_order_and_splits_holdout_by_time(tmp_path: Path) -> None:
    data = synthetic.generate(1_000, seed=1)
    rows = load_training_set(synthetic.write(data, tmp_path / "set", files=3))  # files hold shuffled rows
    assert len(rows) == 1_000 and np.all(np.diff(rows.event_time) >= 0)
    order = np.argsort(data.event_time, kind="stable")
    np.testing.assert_array_equal(rows.features, data.features[order])
    np.testing.assert_array_equal(rows.prices, data.prices[order])
    train_part, cal, test = split(rows, holdout="time", holdout_fraction=0.2)
    assert (len(train_part), len(cal), len(test)) == (800, 100, 100)
    assert train_part.event_time.max() <= cal.event_time.min() and cal.event_time.max() <= test.event_time.min()


def _write_rows(path: Path, vectors: list[list[float]], version: str = FEATURE_SPEC.version) -> Path:
    n = len(vectors)
    table = pa.table({
        "request_id": [f"r{i}" for i in range(n)], "user_id": ["u"] * n, "product_id": ["p"] * n,
        "event_time": list(range(1, n + 1)), "feature_spec_version": [version] * n,
        "features": pa.array(vectors, type=pa.list_(pa.float64())), "price_minor": [100] * n,
        "currency": ["EUR"] * n, "label": pa.array([i % 2 for i in range(n)], pa.int8()),
        "propensity": pa.nulls(n, pa.float64()), "source": ["history"] * n,
    })  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-00000.parquet")
    return path


def test_refuses_another_feature_layout(tmp_path: Path) -> None:
    good = list(FEATURE_SPEC.defaults)
    with pytest.raises(ValueError, match="feature spec versions"):
        load_training_set(_write_rows(tmp_path / "v", [good], version="features/0"))
    with pytest.raises(ValueError, match="must have"):
        load_training_set(_write_rows(tmp_path / "len", [good, good[:-1]]))
    with pytest.raises(ValueError, match="no Parquet"):
        load_training_set(tmp_path / "empty")


def test_a_missing_feature_value_takes_its_default(tmp_path: Path) -> None:
    row = list(FEATURE_SPEC.defaults)
    row[FEATURE_SPEC.index("inventory")] = None
    rows = load_training_set(_write_rows(tmp_path / "s", [row]))
    assert rows.features[0, FEATURE_SPEC.index("inventory")] == -1.0


# ------------------------------------------------------------------------------ trust region
def test_the_trust_region_is_computed_from_the_rows_the_model_was_fitted_on(tmp_path: Path) -> None:
    """An independent recompute: per feature, numpy quantiles of the train slice's non-default values
    (widened to the default where more than 0.5 % of the rows held it), and the traffic windows' quantiles."""
    data, trained, _ = synthetic.trained()
    rows = load_training_set(synthetic.write(data, tmp_path / "set"))
    fitted_on = split(rows)[0].features  # the default TrainConfig: time holdout of 20 %
    region = trained.trust_region
    assert region is not None and region.rows == len(fitted_on) == trained.metrics["train_rows"]
    assert list(region.features) == list(FEATURE_SPEC.names)  # every spec feature, nothing hand-kept
    for j, name in enumerate(FEATURE_SPEC.names):
        column, default = fitted_on[:, j], FEATURE_SPEC.defaults[j]
        other = np.sort(column[column != default])
        expected = [np.quantile(other, 0.005), np.quantile(other, 0.995)] if other.size else [default, default]
        if np.mean(column == default) > 0.005:
            expected = [min(expected[0], default), max(expected[1], default)]
        np.testing.assert_allclose(region.features[name], expected, rtol=1e-12, err_msg=name)
    levels = np.array(region.traffic_levels)
    assert levels[0] == 0.001 and levels[-1] == 0.995
    for name in ("views_24h", "views_1h", "user_views_24h"):
        np.testing.assert_allclose(region.traffic[name], np.quantile(fitted_on[:, FEATURE_SPEC.index(name)], levels))
    assert trained.registry_metadata()["trust_region"] == region


def test_the_trust_region_of_constant_and_mostly_default_features() -> None:
    x = np.tile(FEATURE_SPEC.defaults, (1_000, 1))
    i, j, k = (FEATURE_SPEC.index(n) for n in ("competitor_min_15m_minor", "is_new_product", "views_1h"))
    x[:50, i] = np.arange(1, 51) * 100.0  # known in 5 % of rows: the range spans the known values and the default 0
    x[:, j] = 0.0  # never new: the default (1) was never seen
    x[:, k] = np.arange(1_000)  # never the default 0... except once
    region = trust_region_of(x)
    assert region.features["competitor_min_15m_minor"] == (0.0, pytest.approx(np.quantile(x[:50, i], 0.995)))
    assert region.features["is_new_product"] == (0.0, 0.0)
    assert region.features["views_1h"] == (pytest.approx(np.quantile(np.arange(1, 1_000), 0.005)),
                                           pytest.approx(np.quantile(np.arange(1, 1_000), 0.995)))  # fmt: skip
    with pytest.raises(ValueError, match="features"):
        trust_region_of(x[:, :3])


# ------------------------------------------------------------------------------- metrics
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.sampled_from([0.1, 0.2, 0.5, 0.7, 0.9])),
                min_size=2, max_size=40))
def test_auc_equals_the_pairwise_definition(pairs: list[tuple[int, float]]) -> None:
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        assert np.isnan(roc_auc(y, s))
        return
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)])
    assert roc_auc(y, s) == pytest.approx(brute)


def test_log_loss_ece_and_calibration_table_by_hand() -> None:
    y = np.array([1, 0, 0, 1])
    p = np.array([0.9, 0.15, 0.05, 0.95])
    assert log_loss(y, p) == pytest.approx(-np.mean(np.log([0.9, 0.85, 0.95, 0.95])))
    table = calibration_table(y, p)
    assert [b.count for b in table] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 1 + 1]
    assert table[9].mean_predicted == pytest.approx(0.925) and table[9].observed_rate == 1.0
    assert table[2].mean_predicted is None
    # bins: 0.05 (y 0), 0.15 (y 0), {0.9, 0.95} (y 1, 1)
    assert expected_calibration_error(y, p) == pytest.approx(0.25 * 0.05 + 0.25 * 0.15 + 0.5 * 0.075)
    assert calibration_table(np.array([1]), np.array([1.0]))[9].count == 1  # 1.0 falls in the last bin


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 200_000)
    y = (rng.random(z.size) < sigmoid(z / 2.0)).astype(float)
    assert fit_temperature(z, y) == pytest.approx(2.0, rel=0.03)
    assert fit_temperature(z / 2.0, y) == pytest.approx(1.0, rel=0.03)


def test_marginal_price_slopes_recover_both_price_terms() -> None:
    """The slopes' starting values: the two price coefficients of a logistic demand with randomised prices."""
    rng = np.random.default_rng(3)
    n = 200_000
    x = np.tile(FEATURE_SPEC.defaults, (n, 1))
    lst = np.rint(np.exp(rng.uniform(np.log(500), np.log(50_000), n)))
    known = rng.random(n) < 0.4
    comp = np.where(known, np.rint(lst * rng.uniform(0.7, 1.3, n)), 0.0)
    x[:, FEATURE_SPEC.index("list_price_minor")] = lst
    x[:, FEATURE_SPEC.index("competitor_min_15m_minor")] = comp
    x[:, FEATURE_SPEC.index("competitor_events_15m")] = np.where(known, rng.integers(1, 4, n), 0)
    x[known & (rng.random(n) < 0.2), FEATURE_SPEC.index("competitor_events_15m")] = 0  # a stale minimum: unknown
    seen = (x[:, FEATURE_SPEC.index("competitor_events_15m")] > 0) & (comp > 0)
    prices = np.rint(lst * np.exp(rng.uniform(-0.4, 0.4, n)))
    logit = -2.0 - 2.5 * np.log(prices / lst) - np.where(seen, 1.5 * np.log(prices / np.where(seen, comp, 1.0)), 0.0)
    labels = (rng.random(n) < sigmoid(logit)).astype(np.float32)
    a, b = marginal_price_slopes(x, prices, labels)
    assert a == pytest.approx(2.5, abs=0.25) and b == pytest.approx(1.5, abs=0.25)
    # no competitor price known anywhere: the competitor slope starts at its default
    x[:, FEATURE_SPEC.index("competitor_events_15m")] = 0
    assert marginal_price_slopes(x, prices, labels)[1] == 0.5


def test_an_overconfident_model_gets_calibrated() -> None:
    """Temperature scaling fixes a model that is confident beyond its evidence."""
    rng = np.random.default_rng(1)
    z = rng.normal(-1, 2, 50_000)
    y = rng.random(z.size) < sigmoid(z / 3.0)  # the model's logits are 3x too sharp
    t = fit_temperature(z[:25_000], y[:25_000])
    before = expected_calibration_error(y[25_000:], sigmoid(z[25_000:]))
    after = expected_calibration_error(y[25_000:], sigmoid(z[25_000:] / t))
    assert before > 0.05 and after < 0.01


def test_progress_goes_where_it_is_told(tmp_path: Path) -> None:
    data = synthetic.generate(3_000, seed=2)
    out = io.StringIO()
    train(synthetic.write(data, tmp_path / "set"), epochs=1, progress=out, out_dir=tmp_path / "m")
    text = out.getvalue()
    assert "read 3,000 rows" in text and "epoch 1/1" in text and "log_loss" in text


def test_the_temperature_is_folded_into_the_export() -> None:
    _, trained, _ = synthetic.trained()
    model = TFDemandModel.load(trained.model_dir)
    assert model.info["temperature"] == pytest.approx(trained.metrics["temperature"])
    assert trained.metrics["temperature"] != 1.0


# ------------------------------------------------------------------------------ ensembles
def test_bootstrap_rows_are_seeded_resamples_with_replacement() -> None:
    from pricing.training import bootstrap_rows, member_seed

    rows = bootstrap_rows(10_000, seed=3, member=1)
    assert rows.shape == (10_000,) and np.all(np.diff(rows) >= 0) and rows.min() >= 0 and rows.max() < 10_000
    np.testing.assert_array_equal(rows, bootstrap_rows(10_000, seed=3, member=1))  # deterministic
    assert np.unique(rows).size / 10_000 == pytest.approx(1 - np.exp(-1), abs=0.02)  # with replacement: ~63 % distinct
    others = [bootstrap_rows(10_000, seed=s, member=m) for s, m in ((3, 0), (3, 2), (4, 1))]
    assert all(not np.array_equal(rows, o) for o in others)
    assert len({member_seed(3, m) for m in range(5)} | {member_seed(4, 0)}) == 6


def test_an_ensemble_is_recorded_in_the_config_and_refused_with_dp(tmp_path: Path) -> None:
    from pricing.dp_training import DPConfig
    from pricing.training import _config_json

    assert "ensemble_size" not in _config_json(TrainConfig())  # a single model is described as before
    assert _config_json(TrainConfig(ensemble_size=3))["ensemble_size"] == 3
    rows = load_training_set(synthetic.write(synthetic.generate(200, seed=1), tmp_path / "set"), progress=None)
    with pytest.raises(ValueError, match="at least 1"):
        train_on(rows, config=TrainConfig(ensemble_size=0), progress=None)
    with pytest.raises(ValueError, match="ensemble"):
        train_on(rows, config=TrainConfig(ensemble_size=2, dp=DPConfig(epsilon=1.0)), progress=None)
