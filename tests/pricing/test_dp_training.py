"""Differentially private training per user: the accounting, the per-user bound, the noise, the record of it."""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("tensorflow")
dp_accounting = pytest.importorskip("dp_accounting")

from pricing import cli  # noqa: E402
from pricing.config import load_settings  # noqa: E402
from pricing.dp_training import (  # noqa: E402
    DPConfig,
    PrivateGradient,
    UnitSampler,
    calibrate_noise,
    epsilon_spent,
    fit_private,
    privacy_units,
)
from pricing.training import TrainConfig, TrainingSet, load_training_set, split, train_on  # noqa: E402
from pricing_udfs.features.spec import FEATURE_SPEC  # noqa: E402
from pricing_udfs.model import TFDemandModel  # noqa: E402
from tests.pricing_udfs.model import synthetic  # noqa: E402


def _rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting itself, without the module under test."""
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))  # fmt: skip
    return accountant.get_epsilon(delta)


# ------------------------------------------------------------------------------- accounting
@pytest.mark.parametrize("target,q,steps,delta", [(1.0, 0.05, 400, 1 / 20_000), (4.0, 0.0256, 1_560, 1e-5),
                                                  (16.0, 0.1, 60, 1e-3), (0.5, 1.0, 3, 1e-4)])  # fmt: skip
def test_the_calibrated_noise_meets_the_target_epsilon_and_no_less_noise_would(
    target: float, q: float, steps: int, delta: float
) -> None:
    sigma = calibrate_noise(target, q, steps, delta)
    achieved = _rdp_epsilon(sigma, q, steps, delta)
    assert achieved <= target and achieved > 0.97 * target  # within budget, and close to it
    assert epsilon_spent(sigma, q, steps, delta) == pytest.approx(achieved, rel=1e-12)
    assert _rdp_epsilon(0.99 * sigma, q, steps, delta) > target  # the smallest such noise, to 1 %
    assert _rdp_epsilon(1.5 * sigma, q, steps, delta) < achieved  # more noise, less privacy loss
    assert _rdp_epsilon(sigma, q, 2 * steps, delta) > achieved  # more steps, more loss


def test_an_unreachable_target_is_refused() -> None:
    with pytest.raises(ValueError, match="out of reach"):
        calibrate_noise(1e-9, 1.0, 10_000, 1e-9)
    with pytest.raises(ValueError, match="positive"):
        DPConfig(epsilon=0.0)
    with pytest.raises(ValueError, match="delta"):
        DPConfig(epsilon=1.0, delta=1.0)


# ------------------------------------------------------------------------------------ units
def test_a_user_is_one_unit_and_an_anonymous_row_is_a_unit_of_its_own() -> None:
    codes = privacy_units(np.array(["b", "a", "", "b", None, "a", ""], dtype=object))
    assert codes[0] == codes[3] and codes[1] == codes[5] and codes[0] != codes[1]
    assert len({codes[2], codes[4], codes[6], codes[0], codes[1]}) == 5  # three anonymous rows, three units
    assert len(np.unique(codes)) == 5


def test_the_sampler_draws_users_and_at_most_k_rows_of_each() -> None:
    users = np.array([f"u{i % 7}" for i in range(100)] + [""] * 5, dtype=object)
    units = privacy_units(users)
    sampler = UnitSampler(units, max_rows=4, rng=np.random.default_rng(0))
    assert sampler.n_units == 12
    seen: dict[int, set[int]] = {}
    for _ in range(10):
        picked = np.arange(sampler.n_units)
        rows = sampler.rows(picked)
        assert rows.shape == (12, 4)
        for r in rows:
            real = r[r >= 0]
            assert len(set(real)) == len(real) and len(np.unique(units[real])) == 1  # one unit's distinct rows
            seen.setdefault(int(units[real[0]]), set()).update(real.tolist())
    for unit, rows_seen in seen.items():  # round robin: every row of a unit gets its turn
        assert rows_seen == set(np.flatnonzero(units == unit).tolist())
    drawn = [len(sampler.sample(0.25)) for _ in range(2_000)]
    assert np.mean(drawn) == pytest.approx(12 * 0.25, rel=0.05)


# ------------------------------------------------------------------- one user's influence
def _user_rows(n_users: int = 30, rows_each: int = 20, seed: int = 4) -> TrainingSet:
    data = synthetic.generate(n_users * rows_each, seed=seed)
    users = np.array([f"u{i % n_users}" for i in range(n_users * rows_each)], dtype=object)
    return TrainingSet(data.features, data.prices.astype(np.float64), data.labels.astype(np.float32),
                       data.event_time, FEATURE_SPEC.version, users)  # fmt: skip


@functools.cache
def _private(clip: float) -> PrivateGradient:
    return PrivateGradient(_net(), clip_norm=clip, chunk_units=16)


@functools.cache
def _net() -> Any:
    import keras

    from pricing_udfs.model.network import DemandNet

    keras.utils.set_random_seed(11)
    net = DemandNet()
    net.adapt(synthetic.random_features(2_000, np.random.default_rng(3)), base_rate=0.2)
    return net


def _mean_gradient(data: TrainingSet, *, clip: float, k: int, noise: float = 0.0, expected: float = 30.0,
                   seed: int = 0) -> np.ndarray:  # fmt: skip
    """One step's gradient estimate over every user of ``data`` (each with all of its rows: k >= rows each)."""
    private = _private(clip)
    sampler = UnitSampler(privacy_units(data.user_ids), max_rows=k, rng=np.random.default_rng(seed))
    rows = sampler.rows(sampler.sample(1.0))
    grads = private.noisy_mean(data, rows, noise_multiplier=noise, expected_units=expected,
                               rng=np.random.default_rng(seed))  # fmt: skip
    return np.concatenate([g.ravel() for g in grads]).astype(np.float64)


def _extreme(data: TrainingSet, user: str) -> TrainingSet:
    """``data`` with all of ``user``'s rows replaced by one extreme row: bought at 20x the list price."""
    mine = data.user_ids == user
    features, prices, labels = data.features.copy(), data.prices.copy(), data.labels.copy()
    row = features[np.flatnonzero(features[:, FEATURE_SPEC.index("list_price_minor")] > 0)[0]]
    features[mine] = row
    prices[mine] = 20 * row[FEATURE_SPEC.index("list_price_minor")]
    labels[mine] = 1.0
    return TrainingSet(features, prices, labels, data.event_time, data.feature_spec_version, data.user_ids)


def test_one_user_moves_the_noiseless_step_by_at_most_the_clip_norm() -> None:
    """With noise 0, adding or removing all of one user's (20, identical, extreme) rows moves the summed gradient
    by at most C, and replacing them by at most 2 C: the bound is per user. Clipping each row instead (20 rows:
    up to 20 C) or not clipping fails this, and so does making each row its own unit."""
    clip, k, expected = 0.05, 20, 30.0
    data = _extreme(_user_rows(), "u0")
    without = data.take(np.flatnonzero(data.user_ids != "u0"))
    g_with = _mean_gradient(data, clip=clip, k=k, expected=expected)
    g_without = _mean_gradient(without, clip=clip, k=k, expected=expected)
    moved = np.linalg.norm(g_with - g_without) * expected
    assert moved <= clip * (1 + 1e-4)
    assert moved > 0.99 * clip  # the extreme user is clipped to exactly C: the bound is tight, not vacuous

    # the extreme user's gradient is far above C, and so is each of its rows': clipping was binding
    private = _private(clip)
    mine = np.flatnonzero(data.user_ids == "u0")
    _, norms = private.clipped_sum(data, mine[None, :])
    _, row_norms = private.clipped_sum(data, mine[:, None])
    assert norms[0] > 20 * clip and row_norms.min() > clip

    # replacement: the same users, u0's rows ordinary instead of extreme
    ordinary = _user_rows()
    g_ordinary = _mean_gradient(ordinary, clip=clip, k=k, expected=expected)
    assert np.linalg.norm(g_with - g_ordinary) * expected <= 2 * clip * (1 + 1e-4)
    # and a learning rate lr turns it into an update that moves by at most lr * 2 C / expected
    lr = 3e-3
    assert np.linalg.norm(lr * g_with - lr * g_ordinary) <= lr * 2 * clip / expected * (1 + 1e-4)


def test_the_noise_has_the_calibrated_scale() -> None:
    """The noisy mean minus the noiseless one: Gaussian, sd = noise multiplier x C / expected units per coordinate."""
    data = _user_rows(10, 5)
    clean = _mean_gradient(data, clip=1.0, k=5, expected=10.0)
    noisy = _mean_gradient(data, clip=1.0, k=5, expected=10.0, noise=2.0, seed=1)
    diff = noisy - clean
    assert diff.size > 5_000
    assert np.std(diff) == pytest.approx(2.0 * 1.0 / 10.0, rel=0.05)
    assert abs(np.mean(diff)) < 4 * 0.2 / math.sqrt(diff.size)


# -------------------------------------------------------------------------- training, end to end
@functools.cache
def _trained(epsilon: float = 8.0) -> tuple[Path, Any, str]:
    root = synthetic._scratch(f"dp-{epsilon}")
    data = synthetic.generate(20_000, seed=6)
    folder = synthetic.write(data, root / "set")
    out = io.StringIO()
    config = TrainConfig(seed=2, epochs=6, dp=DPConfig(epsilon=epsilon, units_per_step=200, noise_seed=3))
    trained = train_on(load_training_set(folder), config=config, out_dir=root / "model", progress=out)
    return folder, trained, out.getvalue()


def test_dp_training_learns_and_records_its_guarantee_per_user(tmp_path: Path) -> None:
    from pricing_udfs.model.registry import Registry

    folder, trained, progress = _trained()
    m = trained.metrics
    assert m["log_loss"] < 0.98 * m["base_rate_log_loss"] and m["auc"] > 0.6  # noisy, but it learned

    # the units: the train slice's distinct users, counted here from the files
    table = pq.read_table(folder, columns=["user_id", "event_time"]).sort_by([("event_time", "ascending")])
    n_train = int(m["train_rows"])
    rows = load_training_set(folder)
    assert np.array_equal(split(rows)[0].event_time, table.column("event_time").to_numpy()[:n_train])
    users = len(set(table.column("user_id").to_pylist()[:n_train]))
    q = 200 / users
    steps = 6 * math.ceil(1 / q)
    assert (m["dp_units"], m["dp_delta"], m["dp_sampling_rate"], m["dp_steps"]) == (users, 1 / users, q, steps)
    assert m["dp_epsilon"] <= 8.0 and m["dp_epsilon"] == pytest.approx(
        _rdp_epsilon(m["dp_noise_multiplier"], q, steps, 1 / users), rel=1e-9)  # fmt: skip
    defaults = DPConfig(epsilon=8.0)
    assert 1 <= m["dp_steps_run"] <= steps
    assert (m["dp_clip_norm"], m["dp_max_rows_per_unit"]) == (defaults.clip_norm, defaults.max_rows_per_unit)
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())

    # the record: metrics, extra, exported info, report, the manifest once published
    meta = trained.registry_metadata()
    assert meta["extra"]["privacy"]["unit"] == "user"
    assert "per user" in meta["extra"]["privacy"]["guarantee"] and "1/number of users" in meta["extra"]["privacy"]["guarantee"]
    assert meta["extra"]["config"]["dp"]["epsilon"] == 8.0
    assert meta["extra"]["config"]["dp"]["noise_seed"] == "set, not recorded"  # who knows it could replay the noise
    assert meta["extra"]["privacy"]["noise"].startswith("seeded")
    info = TFDemandModel.load(trained.model_dir).info["training"]
    assert info["privacy"]["unit"] == "user" and info["metrics"]["dp_epsilon"] == m["dp_epsilon"]
    report = trained.report()
    assert "per user" in report and f"epsilon {m['dp_epsilon']:.3f}" in report and f"delta {1 / users:.3g}" in report
    manifest = Registry(tmp_path / "registry").publish(trained.model_dir, **meta)
    assert manifest.metrics["dp_epsilon"] == m["dp_epsilon"] and manifest.metrics["dp_delta"] == 1 / users
    assert manifest.extra["privacy"]["unit"] == "user"

    # the training loss of the private rows is not reported, the holdout's is
    epochs = [line for line in progress.splitlines() if line.startswith("epoch ")]
    assert epochs and all("holdout" in line and "loss" not in line.split("holdout")[0] for line in epochs)
    assert "DP-SGD per user" in progress


def _fit_twice(noise_seed: int | None) -> list[list[np.ndarray]]:
    """The private loop alone (sampling, rows, noise, Adam) twice from the same initial weights."""
    import keras

    from pricing.training import _epoch_log
    from pricing_udfs.model.network import DemandNet

    data = _user_rows(200, 10, seed=8)
    train, cal = data.take(slice(0, 1_600)), data.take(slice(1_600, None))
    config = TrainConfig(seed=1, epochs=2, dp=DPConfig(epsilon=2.0, units_per_step=100, noise_seed=noise_seed))
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(config.seed)
        net = DemandNet()
        net.adapt(train.features, base_rate=0.2)
        spent = fit_private(net, train, cal, config=config, log=_epoch_log(None, config.epochs, len(train)))
        assert spent.steps_run >= 2 and spent.noise_seeded == (noise_seed is not None)
        weights.append(net.get_weights())
    return weights


def test_dp_noise_is_fresh_unless_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a noise seed two runs with the same training seed differ (nobody can replay the noise from the
    recorded seed); with one they are identical."""
    monkeypatch.setattr("pricing.dp_training.calibrate_noise", lambda *args, **kwargs: 1.0)  # not the point here
    seeded = _fit_twice(5)
    for a, b in zip(*seeded):
        np.testing.assert_array_equal(a, b)
    fresh = _fit_twice(None)
    assert any(not np.array_equal(a, b) for a, b in zip(*fresh))


def test_dp_training_needs_the_users() -> None:
    data = synthetic.generate(2_000, seed=3)
    rows = TrainingSet(data.features, data.prices.astype(np.float64), data.labels.astype(np.float32),
                       data.event_time, FEATURE_SPEC.version)  # fmt: skip
    with pytest.raises(ValueError, match="user_id"):
        train_on(rows, config=TrainConfig(epochs=1, dp=DPConfig(epsilon=1.0)), progress=None)


# ------------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("flags,message", [
    (["--dp-epsilon", "0"], "--dp-epsilon must be a positive number, got 0"),
    (["--dp-epsilon", "-1"], "--dp-epsilon must be a positive number, got -1"),
    (["--dp-epsilon", "nan"], "--dp-epsilon must be a positive number"),
    (["--dp-epsilon", "1", "--dp-delta", "1.5"], "--dp-delta must lie strictly between 0 and 1"),
    (["--dp-epsilon", "1", "--dp-clip", "0"], "--dp-clip must be a positive number"),
    (["--dp-delta", "1e-5"], "--dp-delta and --dp-clip need --dp-epsilon"),
])  # fmt: skip
def test_the_cli_refuses_bad_dp_flags_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  flags: list[str], message: str) -> None:  # fmt: skip
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trained despite a bad flag")

    monkeypatch.setattr("pricing.training.train", no_training)
    args = cli._parser().parse_args(["train", "--data", str(tmp_path), "--registry", str(tmp_path / "r"), *flags])
    with pytest.raises(SystemExit) as exc:
        args.func(args, load_settings())
    text = str(exc.value.code)
    assert text.startswith("pricing train: ") and message in text and "\n" not in text


def test_the_cli_passes_the_dp_settings_to_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_train(data: Path, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr("pricing.training.train", fake_train)
    for flags, expected in ((["--dp-epsilon", "4", "--dp-delta", "1e-6", "--dp-clip", "0.5"],
                             DPConfig(epsilon=4.0, delta=1e-6, clip_norm=0.5)), ([], None)):  # fmt: skip
        args = cli._parser().parse_args(["train", "--data", str(tmp_path), *flags])
        with pytest.raises(RuntimeError, match="stop here"):
            args.func(args, load_settings())
        assert seen["dp"] == expected
