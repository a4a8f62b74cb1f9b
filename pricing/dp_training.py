"""Differentially private training of the demand model (DP-SGD), **per user**: ``pricing train --dp-epsilon E``.

The privacy unit is the user, not the row: a shopper contributes many offers, and a guarantee per row
would let a shopper's many rows add up. Every row of one ``user_id`` (pseudonymous, as the training rows
carry it) belongs to one unit; a row without a user (an empty ``user_id``) is a unit of its own. The
guarantee: the trained network weights are (epsilon, delta)-differentially private with respect to
adding or removing all of one user's rows of the train slice, with delta = 1 / (number of units) unless
given.

One step of the training loop (:func:`fit_private`, called by ``pricing.training.train_on`` in place of
Keras' ``fit`` when ``TrainConfig.dp`` is set; everything before and after is the same path):

1. **Poisson sampling of users**: each unit joins the step independently with probability
   ``q = units_per_step / units``;
2. a sampled unit contributes at most ``max_rows_per_unit`` (k) of its rows (its rows are shuffled once,
   and each time it is sampled it takes the next k of them, round robin);
3. the per-example gradients of its rows (binary cross-entropy of each row, ``tf.vectorized_map`` over
   the units of a GradientTape each) are **summed per unit, and the unit's total is clipped** to L2 norm
   ``clip_norm`` (C), over all trainable weights together;
4. the clipped unit totals are summed, Gaussian noise of standard deviation ``noise_multiplier * C`` is
   added to every coordinate, and the sum is divided by the expected number of units per step ``q * units``
   (a constant: the actual count would depend on the data); Adam takes that step.

So one user moves the noiseless sum by at most C (added or removed), whatever their number of rows.
The privacy loss of ``steps`` such steps is accounted with ``dp-accounting``'s RDP accountant as
``steps`` self-compositions of a Poisson-sampled Gaussian mechanism (add or remove one unit); the noise
multiplier is the smallest (bisection) whose epsilon after the **planned** steps (``epochs`` x
``ceil(1 / q)``) is at most the target. Early stopping may end training sooner; the epsilon reported is
the one of the planned steps (an upper bound that holds whatever the stopping rule did).

The users sampled and the noise come from fresh OS entropy, so a DP run is not repeatable (plain training
is, for a seed): a noise that anyone could regenerate from the recorded ``TrainConfig.seed`` could be
subtracted. ``DPConfig.noise_seed`` makes a run repeatable for tests and benchmarks; its value is never
recorded, and the manifest says the noise was seeded.

Not covered by the guarantee (computed from the rows without noise, as in the training without DP):
the normalisation statistics and the starting slopes and base rate (train slice), the temperature and
the early-stopping choice (calibration slice of the holdout), the reported metrics (test slice) and the
manifest's trust region (quantiles of the train slice's features). The per-epoch training loss is not
reported under DP (it would be a non-private statistic of the train slice).

The defaults (C = 10, about 2,048 users a step, k = 32) come from a small sweep at epsilon 1 on the
``default`` scenario's week (18,925 users, 29 rows each on average), judged by the calibration slice's
log-loss: more users a step (less noise per user's signal) and more rows a user (a user's summed
gradient is less noisy, and clipping bounds it anyway) helped most; a small clip norm hurt (0.3: far
worse, 1: worse, 10 and 30 about equal).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

if TYPE_CHECKING:
    from pricing.training import TrainConfig, TrainingSet

UNIT = "user"
ACCOUNTANT = "RDP (dp-accounting), Poisson-sampled Gaussian mechanism, add or remove one user"
_MIN_NOISE = 0.01  # the bisection's floor: an epsilon so large that less noise is needed is met with this
_MAX_NOISE = 1e4


@dataclass(frozen=True)
class DPConfig:
    """What ``pricing train --dp-epsilon`` sets; ``delta`` None: 1 / the number of units in the train slice."""

    epsilon: float
    delta: float | None = None
    clip_norm: float = 10.0  # C: bound on one unit's summed gradient (L2, all weights together)
    units_per_step: int = 2048  # expected units per step (Poisson sampling; q = units_per_step / units)
    max_rows_per_unit: int = 32  # k: rows one sampled unit contributes to a step
    chunk_units: int = 256  # units per vectorised gradient call (memory; no effect on the result)
    # None (the CLI's only choice): the users sampled and the noise come from fresh OS entropy, so nobody can
    # replay them. An int makes a run repeatable (tests, benchmarks); the guarantee then holds only while that
    # seed is secret, so it is never recorded (TrainConfig.seed, which is, draws only the initial weights).
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"the DP epsilon must be a positive number, got {self.epsilon!r}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"the DP delta must lie strictly between 0 and 1, got {self.delta!r}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"the DP clip norm must be a positive number, got {self.clip_norm!r}")
        for name in ("units_per_step", "max_rows_per_unit", "chunk_units"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class PrivacySpent:
    """The guarantee of one DP training run, for the manifest and the report."""

    epsilon: float  # achieved for the planned steps (<= epsilon_target)
    epsilon_target: float
    delta: float
    delta_is_default: bool  # True: 1 / units
    noise_seeded: bool  # True: sampling and noise drawn from DPConfig.noise_seed (repeatable), else OS entropy
    noise_multiplier: float
    clip_norm: float
    sampling_rate: float  # q
    steps: int  # planned and accounted
    steps_run: int  # taken before early stopping (<= steps)
    units: int  # users (plus anonymous rows) in the train slice
    anonymous_units: int  # of them: rows without a user
    max_rows_per_unit: int
    units_per_step: float  # expected: q * units

    def guarantee(self) -> str:
        delta = "1/number of users" if self.delta_is_default else f"{self.delta:.3g}"
        return (f"per {UNIT}: ({self.epsilon:.3f}, {self.delta:.3g})-DP with delta = {delta}, for adding or removing "
                f"all of one {UNIT}'s rows (a row without a user is its own unit)")

    def metrics(self) -> dict[str, float]:
        """Flat finite floats for the manifest's ``metrics``."""
        return {
            "dp_epsilon": self.epsilon, "dp_epsilon_target": self.epsilon_target, "dp_delta": self.delta,
            "dp_noise_multiplier": self.noise_multiplier, "dp_clip_norm": self.clip_norm,
            "dp_sampling_rate": self.sampling_rate, "dp_steps": float(self.steps),
            "dp_steps_run": float(self.steps_run), "dp_units": float(self.units),
            "dp_anonymous_units": float(self.anonymous_units), "dp_max_rows_per_unit": float(self.max_rows_per_unit),
            "dp_units_per_step": self.units_per_step,
        }  # fmt: skip

    def extra(self) -> dict[str, Any]:
        """The text fields, for the manifest's ``extra["privacy"]``."""
        return {"unit": UNIT, "guarantee": self.guarantee(), "accountant": ACCOUNTANT,
                "delta": "1/number of users" if self.delta_is_default else "given",
                "noise": ("seeded (repeatable; private only while the seed is secret)" if self.noise_seeded
                          else "fresh OS entropy"),
                "anonymous_rows": "each its own unit",
                "not_covered": "normalisation statistics, starting slopes and base rate (train slice); temperature "
                               "and early stopping (calibration slice); metrics (test slice); the trust region"}  # fmt: skip

    def report_lines(self) -> list[str]:
        delta = "1/number of users" if self.delta_is_default else "given"
        return [
            f"Differentially private (DP-SGD) per {UNIT}: epsilon {self.epsilon:.3f} (target {self.epsilon_target:g}), "
            f"delta {self.delta:.3g} ({delta}), for adding or removing all of one {UNIT}'s rows; {self.units:,} units "
            f"({self.anonymous_units:,} of them rows without a user, each its own unit). Noise multiplier "
            f"{self.noise_multiplier:.4f}, clip norm {self.clip_norm:g}, sampling rate {self.sampling_rate:.4f} (about "
            f"{self.units_per_step:,.0f} users a step, at most {self.max_rows_per_unit} rows each), {self.steps:,} steps "
            f"accounted, {self.steps_run:,} run. Not covered: normalisation statistics, starting slopes, temperature, "
            "trust region." + (" Noise seeded (repeatable): private only while the seed is secret."
                               if self.noise_seeded else ""),
        ]


# ------------------------------------------------------------------------------- accounting
def epsilon_spent(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` Poisson-sampled Gaussian steps (RDP accountant)."""
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    with _quiet_absl():  # at small noise a few fractional orders do not converge and are left out (still a bound)
        accountant.compose(event, int(steps))
        return float(accountant.get_epsilon(delta))


@contextlib.contextmanager
def _quiet_absl() -> Any:
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def calibrate_noise(target_epsilon: float, sampling_rate: float, steps: int, delta: float, *,
                    rel_tol: float = 1e-3) -> float:  # fmt: skip
    """The smallest noise multiplier (within ``rel_tol``) whose epsilon after ``steps`` is <= ``target_epsilon``.

    Bisection: epsilon falls as the noise grows. ValueError when even ``_MAX_NOISE`` cannot reach the target.
    """
    if not (target_epsilon > 0 and 0 < sampling_rate <= 1 and steps >= 1 and 0 < delta < 1):
        raise ValueError(f"cannot calibrate: epsilon {target_epsilon}, sampling rate {sampling_rate}, "
                         f"steps {steps}, delta {delta}")  # fmt: skip

    def ok(sigma: float) -> bool:
        return epsilon_spent(sigma, sampling_rate, steps, delta) <= target_epsilon

    if ok(_MIN_NOISE):
        return _MIN_NOISE
    lo, hi = _MIN_NOISE, 1.0
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > _MAX_NOISE:
            raise ValueError(f"epsilon {target_epsilon} is out of reach for {steps} steps at sampling rate "
                             f"{sampling_rate:.4g} (noise multiplier above {_MAX_NOISE:g}): allow a larger epsilon")
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


# ------------------------------------------------------------------------------------ units
def privacy_units(user_ids: np.ndarray) -> np.ndarray:
    """int64 unit code per row: one code per distinct non-empty ``user_id``, a code of its own for each row
    without one (empty or None)."""
    ids = np.asarray(user_ids, dtype=object)
    anonymous = np.array([u is None or u == "" for u in ids], dtype=bool)
    codes = np.empty(len(ids), dtype=np.int64)
    if (~anonymous).any():
        _, codes[~anonymous] = np.unique(ids[~anonymous].astype(str), return_inverse=True)
    n_named = int(codes[~anonymous].max()) + 1 if (~anonymous).any() else 0
    codes[anonymous] = n_named + np.arange(int(anonymous.sum()))
    return codes


class UnitSampler:
    """Poisson sampling of units and at most ``max_rows`` rows of each sampled unit (round robin over its
    rows, shuffled once)."""

    def __init__(self, units: np.ndarray, *, max_rows: int, rng: np.random.Generator) -> None:
        codes = np.asarray(units, dtype=np.int64)
        _, dense = np.unique(codes, return_inverse=True)
        shuffled = rng.permutation(len(dense))
        self.rows_by_unit = shuffled[np.argsort(dense[shuffled], kind="stable")]  # grouped by unit, shuffled within
        self.counts = np.bincount(dense)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.next = np.zeros(len(self.counts), dtype=np.int64)  # round-robin position per unit
        self.max_rows = int(max_rows)
        self.rng = rng

    @property
    def n_units(self) -> int:
        return int(self.counts.size)

    def sample(self, rate: float) -> np.ndarray:
        """Unit indices drawn independently with probability ``rate``."""
        return np.flatnonzero(self.rng.random(self.n_units) < rate)

    def rows(self, units: np.ndarray) -> np.ndarray:
        """``[len(units), max_rows]`` row indices of these units' next rows; -1 pads a unit with fewer rows."""
        units = np.asarray(units, dtype=np.int64)
        n = self.counts[units][:, None]
        j = np.arange(self.max_rows)[None, :]
        pos = (self.next[units][:, None] + j) % n
        out = np.where(j < n, self.rows_by_unit[self.offsets[units][:, None] + pos], -1)
        self.next[units] = (self.next[units] + self.max_rows) % self.counts[units]
        return out


# ------------------------------------------------------------------------------ the gradients
class PrivateGradient:
    """Per-unit clipped gradient sums of a ``DemandNet`` (the per-example gradients of a unit's rows
    summed, the total clipped to ``clip_norm``), and the noisy mean DP-SGD steps with."""

    def __init__(self, net: Any, *, clip_norm: float, chunk_units: int) -> None:
        import tensorflow as tf

        self.net = net
        self.variables = list(net.trainable_variables)
        self.clip_norm = float(clip_norm)
        self.chunk = int(chunk_units)
        clip = tf.constant(self.clip_norm, tf.float32)
        variables = self.variables

        def one_unit(args: tuple[Any, ...]) -> tuple[list[Any], Any]:
            x, p, y, w = args  # [k, F], [k, 1], [k], [k] (w: 1 a row of the unit, 0 padding)
            with tf.GradientTape() as tape:
                z = net((x, p), training=True)[:, 0]
                loss = tf.reduce_sum(w * tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z))
            grads = tape.gradient(loss, variables)
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads]))
            scale = tf.minimum(1.0, clip / tf.maximum(norm, 1e-12))
            return [g * scale for g in grads], norm

        @tf.function(reduce_retracing=True)
        def chunk_sum(x: Any, p: Any, y: Any, w: Any) -> tuple[list[Any], Any]:
            grads, norms = tf.vectorized_map(one_unit, (x, p, y, w))
            return [tf.reduce_sum(g, axis=0) for g in grads], norms

        self._chunk_sum = chunk_sum

    def clipped_sum(self, data: "TrainingSet", rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """The sum over units (the rows of ``rows [B, k]``, -1 padding) of each unit's clipped gradient, and
        each unit's norm before clipping ``[B]``."""
        import tensorflow as tf

        total = [np.zeros(v.shape, dtype=np.float32) for v in self.variables]
        norms = []
        for start in range(0, len(rows), self.chunk):
            part = rows[start:start + self.chunk]
            pad = np.full((self.chunk - len(part), rows.shape[1]), -1, dtype=np.int64)
            part = np.concatenate([part, pad]) if len(pad) else part
            w = (part >= 0).astype(np.float64)
            at = np.where(part >= 0, part, 0)
            grads, unit_norms = self._chunk_sum(tf.constant(data.features[at]), tf.constant(data.prices[at][..., None]),
                                                tf.constant(data.labels[at].astype(np.float64)), tf.constant(w))  # fmt: skip
            total = [t + g.numpy() for t, g in zip(total, grads)]
            norms.append(unit_norms.numpy()[: self.chunk - len(pad)])
        return total, np.concatenate(norms) if norms else np.zeros(0, np.float32)

    def noisy_mean(self, data: "TrainingSet", rows: np.ndarray, *, noise_multiplier: float, expected_units: float,
                   rng: np.random.Generator) -> list[np.ndarray]:  # fmt: skip
        """(clipped sum + N(0, (noise_multiplier * C)^2) per coordinate) / expected_units: what a step applies."""
        total, _ = self.clipped_sum(data, rows)
        sd = noise_multiplier * self.clip_norm
        return [((t + rng.normal(0.0, sd, t.shape)) / expected_units).astype(np.float32) if sd > 0
                else (t / expected_units).astype(np.float32) for t in total]  # fmt: skip


# ------------------------------------------------------------------------------ the loop
def fit_private(net: Any, train: "TrainingSet", cal: "TrainingSet", *, config: "TrainConfig", log: Any,
                progress: TextIO | None = None) -> PrivacySpent:  # fmt: skip
    """DP-SGD on ``train`` (see the module doc) with early stopping on ``cal``'s log-loss (best weights kept).

    ``log`` is the training's epoch callback (``on_epoch_begin`` / ``on_epoch_end``); the epoch's
    training loss is not reported (NaN). ValueError when the rows carry no ``user_id``.
    """
    import keras
    import tensorflow as tf

    from pricing.training import _say

    dp = config.dp
    assert dp is not None, "fit_private needs TrainConfig.dp"
    if train.user_ids is None:
        raise ValueError("DP training needs each row's user_id (the privacy unit): these rows carry none")
    units = privacy_units(train.user_ids)
    rng = np.random.default_rng([dp.noise_seed, 0xD9]) if dp.noise_seed is not None else np.random.default_rng()
    sampler = UnitSampler(units, max_rows=dp.max_rows_per_unit, rng=rng)
    n_units = sampler.n_units
    anonymous = int(sum(1 for u in train.user_ids if u is None or u == ""))
    rate = min(1.0, dp.units_per_step / n_units)
    steps_per_epoch = math.ceil(1.0 / rate)
    steps = config.epochs * steps_per_epoch
    delta = dp.delta if dp.delta is not None else 1.0 / n_units
    if not 0 < delta < 1:
        raise ValueError(f"delta 1/{n_units} units is not below 1: DP training needs at least 2 users")
    sigma = calibrate_noise(dp.epsilon, rate, steps, delta)
    epsilon = epsilon_spent(sigma, rate, steps, delta)
    expected = rate * n_units
    _say(progress, f"DP-SGD per {UNIT}: {n_units:,} units, sampling rate {rate:.4f} (~{expected:,.0f} a step, at most "
                   f"{dp.max_rows_per_unit} rows each), {steps:,} steps planned, noise multiplier {sigma:.4f}, clip norm "
                   f"{dp.clip_norm:g}: epsilon {epsilon:.3f} at delta {delta:.3g}")  # fmt: skip

    private = PrivateGradient(net, clip_norm=dp.clip_norm, chunk_units=dp.chunk_units)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    best, best_weights, waited, steps_run = math.inf, net.get_weights(), 0, 0
    cal_x, cal_p = tf.constant(cal.features), tf.constant(cal.prices[:, None])
    for epoch in range(config.epochs):
        log.on_epoch_begin(epoch)
        for _ in range(steps_per_epoch):
            rows = sampler.rows(sampler.sample(rate))
            grads = private.noisy_mean(train, rows, noise_multiplier=sigma, expected_units=expected, rng=rng)
            optimizer.apply_gradients(zip([tf.constant(g) for g in grads], private.variables))
            steps_run += 1
        z = net((cal_x, cal_p)).numpy()[:, 0]
        holdout = float(np.mean(np.logaddexp(0.0, z) - cal.labels * z))  # binary cross-entropy from logits
        log.on_epoch_end(epoch, {"loss": math.nan, "val_loss": holdout})
        if holdout < best:
            best, best_weights, waited = holdout, net.get_weights(), 0
        else:
            waited += 1
            if waited >= config.patience:
                break
    net.set_weights(best_weights)
    return PrivacySpent(epsilon=epsilon, epsilon_target=float(dp.epsilon), delta=float(delta),
                        delta_is_default=dp.delta is None, noise_seeded=dp.noise_seed is not None, noise_multiplier=float(sigma), clip_norm=float(dp.clip_norm),
                        sampling_rate=float(rate), steps=int(steps), steps_run=steps_run, units=n_units,
                        anonymous_units=anonymous, max_rows_per_unit=int(dp.max_rows_per_unit),
                        units_per_step=float(expected))  # fmt: skip
