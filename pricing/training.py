"""Train the demand model on a training set (Parquet, ``pricing.training_rows``) and evaluate it.

::

    trained = train(Path("training-set"), seed=0)          # prints one line per epoch
    trained.metrics["log_loss"], trained.metrics["auc"]     # on the time holdout's test slice
    save(trained, Path("model"))                            # the SavedModel folder, info included
    registry.publish(trained.model_dir, **trained.registry_metadata())

The rows are ordered by ``event_time``; the last ``holdout_fraction`` (default 20 %) is the
holdout, split in time into two halves:

- the **calibration** half: early stopping watches its log-loss, then a temperature is
  fitted on it (one scalar dividing the logit, found by minimising its log-loss) and
  folded into the exported model. A temperature keeps the model monotone in price;
- the **test** half, the newest rows, never seen by any fitting step: every reported
  metric comes from it: ``log_loss``, ``auc``, ``base_rate_log_loss`` (a constant
  predictor at the training rows' purchase rate), ``calibration_error`` (expected
  calibration error, 10 equal-width bins, after the temperature) and
  ``calibration_error_uncalibrated`` (before it), plus the calibration table.

Deterministic for a seed: ``keras.utils.set_random_seed`` seeds the initial weights and
the batch shuffling, and TensorFlow's op determinism is switched on (process-wide, for
the rest of the process). ``propensity`` is read but not used: a demand model conditions
on the offered price, so exploration gives it price variation and needs no reweighting.

The training window is the ``event_time`` range (ms) of every row used (train and holdout).

An **ensemble** (``ensemble_size`` B > 1; ``pricing train --ensemble B``, ``[learn] ensemble_size``): B networks,
each fitted on its own bootstrap resample of the train slice (rows drawn with replacement, seeded by the seed and
the member: ``bootstrap_rows``, ``member_seed``), each with its own early stopping and temperature, saved as one
model folder (``ensemble.json`` and ``members/0..B-1``, ``pricing_udfs.model.ensemble``) that the registry stores
as one version. Its metrics and trust region are those of the ensemble's mean (the members' mean probability),
what ``score`` serves; the members' spread is what Thompson sampling explores with
(``pricing_udfs.policy.model_policy``). B = 1 (the default) is the single model, exactly as before.

The **trust region** (``trust_region_of``, published as the manifest's ``trust_region``) records what
the model saw, from the rows it was fitted on (the train slice): each spec feature's range, and the
traffic windows' quantiles; the serving policy narrows prices outside it
(``pricing_udfs.policy.trust_region``).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pricing.dp_training import DPConfig, PrivacySpent
from pricing.training_rows import SCHEMA
from pricing_udfs.features.spec import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.registry import TrustRegion
from pricing_udfs.policy.trust_region import PRODUCT_TRAFFIC, RANGE_QUANTILES, TRAFFIC_LEVELS, USER_TRAFFIC

HoldoutKind = Literal["time", "random"]
_EPS = 1e-7
CALIBRATION_BINS = 10


# ------------------------------------------------------------------------------------ data
@dataclass(frozen=True, eq=False)
class TrainingSet:
    """Rows of a training set as arrays, in event-time order."""

    features: np.ndarray  # float64 [N, F], spec order
    prices: np.ndarray  # float64 [N], minor units
    labels: np.ndarray  # float32 [N], 0/1
    event_time: np.ndarray  # int64 [N], epoch ms
    feature_spec_version: str
    user_ids: np.ndarray | None = None  # object [N], pseudonymous ("": anonymous); the privacy unit of DP training
    # float64 [N]: the probability the serving policy chose the price (NaN: not logged); the gate's, not training's
    propensity: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.size)

    def take(self, index: np.ndarray | slice) -> "TrainingSet":
        return TrainingSet(self.features[index], self.prices[index], self.labels[index], self.event_time[index],
                           self.feature_spec_version,
                           None if self.user_ids is None else self.user_ids[index],
                           None if self.propensity is None else self.propensity[index])  # fmt: skip


def load_training_set(
    data_dir: Path | str, *, spec: FeatureSpec = FEATURE_SPEC, progress: TextIO | None = None
) -> TrainingSet:
    """Read every ``*.parquet`` under ``data_dir`` (schema ``pricing.training_rows``), ordered by event time.

    Rows must carry ``spec``'s version and length; a missing (null) feature value takes the
    spec's default, as serving does. ValueError when there is nothing to read or the layout differs.
    """
    root = Path(data_dir)
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    if not files or not files[0].exists():
        raise ValueError(f"no Parquet files in {root}: make a training set with `pricing backfill` first")
    columns = ["event_time", "feature_spec_version", "features", "price_minor", "label", "user_id", "propensity"]
    t0 = time.perf_counter()
    tables = []
    for path in files:
        table = pq.read_table(path, columns=columns)
        for name in columns:
            expected = SCHEMA.field(name).type
            if not table.schema.field(name).type.equals(expected):
                raise ValueError(f"{path}: column {name} is {table.schema.field(name).type}, expected {expected}")
        tables.append(table)
    table = pa.concat_tables(tables)
    n, width = table.num_rows, len(spec.names)
    if n == 0:
        raise ValueError(f"the training set in {root} has no rows")
    versions = pc.unique(table.column("feature_spec_version")).to_pylist()
    if versions != [spec.version]:
        raise ValueError(f"training rows have feature spec versions {versions}; this model reads {spec.version!r}")
    feats = table.column("features").combine_chunks()
    if feats.null_count:
        raise ValueError(f"{feats.null_count} training rows have no feature vector")
    lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
    if np.any(lengths != width):
        raise ValueError(f"feature vectors must have {width} values ({spec.version}), "
                         f"found lengths {np.unique(lengths)}")
    values = feats.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False).reshape(n, width)
    missing = ~np.isfinite(values)
    if missing.any():
        values = np.where(missing, spec.defaults[None, :], values)
    event_time = table.column("event_time").to_numpy()
    order = np.argsort(event_time, kind="stable")
    out = TrainingSet(
        features=np.ascontiguousarray(values[order]),
        prices=table.column("price_minor").to_numpy().astype(np.float64)[order],
        labels=table.column("label").to_numpy().astype(np.float32)[order],
        event_time=event_time[order].astype(np.int64),
        feature_spec_version=spec.version,
        user_ids=table.column("user_id").to_numpy(zero_copy_only=False)[order],
        propensity=table.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64)[order],
    )
    note = f" ({int(missing.sum()):,} missing feature values took their defaults)" if missing.any() else ""
    _say(progress, f"read {n:,} rows from {len(files)} file(s) in {time.perf_counter() - t0:.1f} s{note}")
    return out


def split(data: TrainingSet, *, holdout: HoldoutKind = "time", holdout_fraction: float = 0.2,
          seed: int = 0) -> tuple[TrainingSet, TrainingSet, TrainingSet]:  # fmt: skip
    """(train, calibration, test). ``time``: the newest ``holdout_fraction`` of rows, older half
    calibration, newest half test. ``random``: the same sizes drawn at random (for tests of i.i.d. data)."""
    if not 0 < holdout_fraction < 1:
        raise ValueError("holdout_fraction must be between 0 and 1")
    n = len(data)
    n_hold = int(round(n * holdout_fraction))
    n_cal = n_hold // 2
    if n_hold < 2 or n - n_hold < 1:
        raise ValueError(f"{n} rows are too few to hold out {holdout_fraction:.0%} in two slices")
    if holdout == "time":
        index = np.arange(n)
    elif holdout == "random":
        index = np.random.default_rng([seed, 1]).permutation(n)
    else:
        raise ValueError(f"holdout must be 'time' or 'random', got {holdout!r}")
    cut_train, cut_cal = n - n_hold, n - n_hold + n_cal
    return (data.take(np.sort(index[:cut_train])), data.take(np.sort(index[cut_train:cut_cal])),
            data.take(np.sort(index[cut_cal:])))  # fmt: skip


# ----------------------------------------------------------------------------------- metrics
def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to [1e-7, 1 - 1e-7]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN without both classes."""
    y = np.asarray(labels) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg_rank = first + (counts + 1) / 2.0  # 1-based average rank of each distinct score
    ranks = np.empty_like(s)
    ranks[order] = np.repeat(avg_rank, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    count: int
    mean_predicted: float | None  # None for an empty bin
    observed_rate: float | None


def calibration_table(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> list[CalibrationBin]:
    """Equal-width bins of the predicted probability on [0, 1] (the last bin includes 1)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        out.append(CalibrationBin(
            lower=b / bins, upper=(b + 1) / bins, count=count,
            mean_predicted=float(p[mask].mean()) if count else None,
            observed_rate=float(y[mask].mean()) if count else None,
        ))  # fmt: skip
    return out


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Sum over bins of (share of rows) x |mean predicted - observed rate|."""
    n = len(np.asarray(labels))
    return float(sum(b.count / n * abs(b.mean_predicted - b.observed_rate)
                     for b in calibration_table(labels, probs, bins) if b.count))  # fmt: skip


def marginal_price_slopes(features: np.ndarray, prices: np.ndarray, labels: np.ndarray, *,
                          spec: FeatureSpec = FEATURE_SPEC) -> tuple[float, float]:  # fmt: skip
    """``(a, b)``: minus the price coefficients of the logistic regression
    ``label ~ c0 + c1 * known + -a * log(price / reference) + -b * known * log(price / competitor_min)``
    on the rows with a known reference (``known``: a competitor price is known, the network's rule).

    Where prices were randomised these are unconfounded, if attenuated, estimates of the two
    price sensitivities: the network starts its slopes there. 1.0 (``a``) and 0.5 (``b``) when
    they cannot be fitted; ``b`` is 0.5 too when fewer than 10 rows know a competitor price.
    """
    from pricing_udfs.model.handler import (
        COMPETITOR_EVENTS_FEATURE,
        COMPETITOR_MIN_FEATURE,
        REFERENCE_FEATURE,
        competitor_known,
        log_competitor_ratio,
        log_price_ratio,
    )

    def find(name: str) -> int | None:
        return spec.index(name) if name in spec.names else None

    default = (1.0, 0.5)
    ref = features[:, spec.index(REFERENCE_FEATURE)]
    ok = (ref > 0) & (prices > 0)
    if ok.sum() < 10:
        return default
    f, p = features[ok], prices[ok, None].astype(np.float64)
    cmin, events = find(COMPETITOR_MIN_FEATURE), find(COMPETITOR_EVENTS_FEATURE)
    known = competitor_known(f, cmin, events)[:, 0].astype(np.float64)
    columns = [np.ones(len(f)), log_price_ratio(f, p, spec.index(REFERENCE_FEATURE))[:, 0]]
    with_comp = known.sum() >= 10
    if with_comp:
        columns += [known, log_competitor_ratio(f, p, cmin, events)[:, 0]]
    design = np.stack(columns, axis=1)
    y = labels[ok].astype(np.float64)
    beta = np.zeros(design.shape[1])
    beta[0] = math.log(max(y.mean(), 1e-6) / max(1 - y.mean(), 1e-6))
    for _ in range(25):  # Newton
        q = sigmoid(design @ beta)
        w = q * (1 - q) + 1e-9
        step = np.linalg.solve(design.T @ (design * w[:, None]) + 1e-6 * np.eye(len(beta)), design.T @ (y - q))
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            break
    a = -float(beta[1])
    b = -float(beta[3]) if with_comp else default[1]
    return (a if math.isfinite(a) else default[0], b if math.isfinite(b) else default[1])


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the log-loss of ``sigmoid(logits / T)`` (golden section on 1/T in [0.05, 20]).

    The log-loss is convex in 1/T, so the search finds the minimum within the bracket.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def loss(a: float) -> float:
        u = a * z
        return float(np.mean(np.logaddexp(0.0, u) - y * u))  # exact binary cross-entropy of sigmoid(u)

    lo, hi = 0.05, 20.0
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = loss(c), loss(d)
    for _ in range(80):
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = loss(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = loss(d)
    return 1.0 / ((lo + hi) / 2)


# ------------------------------------------------------------------------------ trust region
def trust_region_of(features: np.ndarray, *, spec: FeatureSpec = FEATURE_SPEC,
                    quantiles: tuple[float, float] = RANGE_QUANTILES,
                    traffic_levels: tuple[float, ...] = TRAFFIC_LEVELS) -> TrustRegion:  # fmt: skip
    """What a model fitted on these rows (``[N, F]``, spec order) saw: the manifest's ``trust_region``.

    * each feature's range: the ``quantiles`` (0.5 % and 99.5 %) of its values **other than the spec
      default** (an empty window, an unknown price), widened to include the default when more than
      ``quantiles[0]`` of the rows held it. Many windows are mostly empty (a competitor price is
      known in about 7 % of rows): quantiles over all rows would call their ordinary non-empty values
      unseen. A feature that only ever held its default gets ``(default, default)``;
    * the traffic windows (``PRODUCT_TRAFFIC``, ``USER_TRAFFIC``, those in the spec): their quantiles
      at ``traffic_levels`` over all rows.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(spec.names) or len(x) == 0:
        raise ValueError(f"need rows of {len(spec.names)} features, got shape {x.shape}")
    ranges: dict[str, tuple[float, float]] = {}
    for i, name in enumerate(spec.names):
        column, default = x[:, i], float(spec.defaults[i])
        other = column[column != default]
        lo, hi = (float(v) for v in np.quantile(other, quantiles)) if other.size else (default, default)
        if other.size < len(column) and (len(column) - other.size) / len(column) > quantiles[0]:
            lo, hi = min(lo, default), max(hi, default)
        ranges[name] = (lo, hi)
    traffic = {name: tuple(float(v) for v in np.quantile(x[:, spec.index(name)], traffic_levels))
               for name in (*PRODUCT_TRAFFIC, *USER_TRAFFIC) if name in spec.names}  # fmt: skip
    return TrustRegion(feature_spec_version=spec.version, rows=len(x), quantiles=tuple(quantiles), features=ranges,
                       traffic_levels=tuple(traffic_levels), traffic=traffic)  # fmt: skip


# ---------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 20
    batch_size: int = 2048
    learning_rate: float = 3e-3
    patience: int = 3  # epochs without a better calibration-slice log-loss before stopping
    holdout: HoldoutKind = "time"
    holdout_fraction: float = 0.2
    hidden: tuple[int, ...] = (64, 32)
    slope_hidden: tuple[int, ...] = (16,)
    dp: DPConfig | None = None  # differentially private per user (pricing.dp_training); None: plain training
    # B > 1: a bootstrap ensemble of B networks, saved as one model folder (pricing_udfs.model.ensemble)
    ensemble_size: int = 1


@dataclass(frozen=True)
class TrainedModel:
    """What ``train`` produced: the exported SavedModel folder and how good it is."""

    model_dir: Path
    metrics: dict[str, float]  # flat, finite: registry-ready
    calibration: list[CalibrationBin]  # the test slice, after the temperature
    training_window: tuple[int, int]  # (start_ms, end_ms): min and max event_time of the rows used
    feature_spec_version: str
    config: TrainConfig
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, holdout_loss, seconds
    trust_region: TrustRegion | None = None  # what the model saw (the train slice): the manifest's trust_region
    privacy: PrivacySpent | None = None  # the DP guarantee (per user), when trained with TrainConfig.dp
    # an ensemble (config.ensemble_size > 1): per member its temperature, epochs and own test log-loss; else empty
    members: list[dict[str, float]] = field(default_factory=list)

    def registry_metadata(self) -> dict[str, Any]:
        """Keyword arguments for ``Registry.publish(model_dir, ...)``. Under DP the metrics hold the ``dp_*``
        figures (epsilon, delta, noise multiplier, clip norm, sampling rate, steps) and ``extra["privacy"]``
        the unit and the guarantee in words."""
        extra = {"calibration": [asdict(b) for b in self.calibration], "config": _config_json(self.config),
                 "epochs": self.epochs}  # fmt: skip
        if self.privacy is not None:
            extra["privacy"] = self.privacy.extra()
        if self.members:
            extra["ensemble"] = {"size": len(self.members), "members": self.members,
                                 "score": "mean of the members' probabilities"}  # fmt: skip
        return {
            "feature_spec_version": self.feature_spec_version,
            "training_window": self.training_window,
            "metrics": dict(self.metrics),
            "trust_region": self.trust_region,
            "extra": json_safe(extra),
        }

    def report(self) -> str:
        """Markdown: the metrics against the base rate and the calibration table."""
        m = self.metrics
        lines = [
            f"Demand model ({self.feature_spec_version}), trained on {int(m['train_rows']):,} rows, "
            f"evaluated on the newest {int(m['test_rows']):,}.",
            "",
            "| model | log-loss | AUC |",
            "| --- | --- | --- |",
            f"| demand model | {m['log_loss']:.4f} | {m['auc']:.3f} |",
            f"| base rate ({m['base_rate']:.4f}) | {m['base_rate_log_loss']:.4f} | 0.500 |",
            "",
            f"Calibration error (ECE, {CALIBRATION_BINS} bins): {m['calibration_error']:.4f} after temperature "
            f"{m['temperature']:.3f} (before: {m['calibration_error_uncalibrated']:.4f}).",
            "",
            "| predicted | rows | mean predicted | observed |",
            "| --- | --- | --- | --- |",
        ]
        if self.privacy is not None:
            lines[2:2] = [*self.privacy.report_lines(), ""]
        if self.members:
            lines[2:2] = [f"An ensemble of {len(self.members)} networks, each fitted on a bootstrap resample of the "
                          "training rows; every figure here is the mean model's (the members' mean probability; the "
                          "temperature is the members' mean).", ""]  # fmt: skip
        for b in self.calibration:
            mp = "" if b.mean_predicted is None else f"{b.mean_predicted:.4f}"
            ob = "" if b.observed_rate is None else f"{b.observed_rate:.4f}"
            lines.append(f"| {b.lower:.1f}-{b.upper:.1f} | {b.count:,} | {mp} | {ob} |")
        return "\n".join(lines) + "\n"


def train(
    data_dir: Path | str,
    *,
    seed: int = 0,
    epochs: int = 20,
    batch_size: int = 2048,
    learning_rate: float = 3e-3,
    patience: int = 3,
    holdout: HoldoutKind = "time",
    holdout_fraction: float = 0.2,
    hidden: tuple[int, ...] = (64, 32),
    slope_hidden: tuple[int, ...] = (16,),
    dp: DPConfig | None = None,
    ensemble_size: int = 1,
    out_dir: Path | str | None = None,
    spec: FeatureSpec = FEATURE_SPEC,
    progress: TextIO | None = sys.stdout,
) -> TrainedModel:
    """Train, calibrate, evaluate and export the demand model on the training set in ``data_dir``.

    The SavedModel goes to ``out_dir`` (created; must not hold anything yet), else to a new
    temporary folder; ``TrainedModel.model_dir`` says where. ``progress`` gets one line per
    epoch (None: quiet). ``dp``: differentially private training, per user (``pricing.dp_training``).
    ``ensemble_size`` B > 1: a bootstrap ensemble of B networks in one folder (``train_on``).
    """
    config = TrainConfig(seed=seed, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                         patience=patience, holdout=holdout, holdout_fraction=holdout_fraction,
                         hidden=tuple(hidden), slope_hidden=tuple(slope_hidden), dp=dp,
                         ensemble_size=ensemble_size)  # fmt: skip
    data = load_training_set(data_dir, spec=spec, progress=progress)
    return train_on(data, config=config, out_dir=out_dir, spec=spec, progress=progress)


def train_on(
    data: TrainingSet,
    *,
    config: TrainConfig = TrainConfig(),
    out_dir: Path | str | None = None,
    spec: FeatureSpec = FEATURE_SPEC,
    progress: TextIO | None = sys.stdout,
) -> TrainedModel:
    """``train`` on rows already in memory. With ``config.dp`` the weights are fitted by DP-SGD per user
    (``pricing.dp_training.fit_private``) instead of Keras' ``fit``; everything else is the same.

    With ``config.ensemble_size`` B > 1: B networks, member b fitted on :func:`bootstrap_rows` of the train slice
    (its own seed for the resample and the initial weights), each with its own early stopping and temperature on
    the (shared) calibration slice, exported as one ensemble folder (``pricing_udfs.model.ensemble``); the metrics
    and the trust region are the ensemble's mean's (the ``temperature`` metric is the members' mean temperature)."""
    import tensorflow as tf

    from pricing_udfs.model.ensemble import EnsembleDemandModel, member_dir, write_ensemble_file
    from pricing_udfs.model.tf_handler import TFDemandModel

    if data.feature_spec_version != spec.version:
        raise ValueError(f"rows are {data.feature_spec_version}, the spec is {spec.version}")
    size = config.ensemble_size
    if size < 1:
        raise ValueError(f"ensemble_size must be at least 1, got {size}")
    if size > 1 and config.dp is not None:
        raise ValueError("differentially private training of an ensemble is not supported (B members on the same "
                         "users would spend B times the privacy budget): use ensemble_size 1 with dp")  # fmt: skip
    target = _prepare_out_dir(out_dir)
    t_start = time.perf_counter()
    train_set, cal, test = split(data, holdout=config.holdout, holdout_fraction=config.holdout_fraction,
                                 seed=config.seed)  # fmt: skip
    for name, part in (("calibration", cal), ("test", test)):
        if len(np.unique(part.labels)) < 2:
            raise ValueError(f"the {name} slice of the holdout has only one label value: too few rows or purchases")
    base_rate = float(train_set.labels.mean())
    _say(progress, f"training on {len(train_set):,} rows (purchase rate {base_rate:.4f}), "
                   f"holdout {len(cal):,} calibration + {len(test):,} test rows, by {config.holdout}")  # fmt: skip

    tf.config.experimental.enable_op_determinism()
    if size == 1:
        fits = [_fit_member(train_set, cal, test, config=config, seed=config.seed, spec=spec, progress=progress)]
    else:
        fits = []
        for b in range(size):
            rows = bootstrap_rows(len(train_set), seed=config.seed, member=b)
            _say(progress, f"ensemble member {b + 1}/{size}: a bootstrap resample of the {len(train_set):,} train "
                           f"rows ({np.unique(rows).size:,} distinct)")  # fmt: skip
            fits.append(_fit_member(train_set.take(rows), cal, test, config=config, seed=member_seed(config.seed, b),
                                    spec=spec, progress=progress))  # fmt: skip
    privacy = fits[0].privacy
    epochs = fits[0].epochs if size == 1 else [{**e, "member": float(b)} for b, f in enumerate(fits) for e in f.epochs]
    fit_seconds = sum(e["seconds"] for e in epochs)
    if size == 1:
        fit = fits[0]
        raw, probs, slope, temperature = fit.raw, fit.probs, fit.slope, fit.temperature
    else:
        # the mean model: the mean of the members' (calibrated) probabilities, float32 as it serves
        member_probs = np.stack([f.probs for f in fits])
        probs = member_probs.astype(np.float32).mean(axis=0, dtype=np.float64).astype(np.float32).astype(np.float64)
        raw = np.mean([f.raw for f in fits], axis=0)
        temperature = float(np.mean([f.temperature for f in fits]))
        # -d logit(mean p) / d log(price) = mean_b(s_b p_b (1 - p_b)) / (p (1 - p)), exact at the test prices
        spread = np.clip(probs * (1 - probs), 1e-12, None)
        slope = np.mean([f.slope * f.probs * (1 - f.probs) for f in fits], axis=0) / spread

    metrics = {
        "log_loss": log_loss(test.labels, probs),
        "auc": roc_auc(test.labels, probs),
        "base_rate_log_loss": log_loss(test.labels, np.full(len(test), base_rate)),
        "calibration_error": expected_calibration_error(test.labels, probs),
        "calibration_error_uncalibrated": expected_calibration_error(test.labels, raw),
        "log_loss_uncalibrated": log_loss(test.labels, raw),
        "temperature": temperature,
        "base_rate": base_rate,
        "test_purchase_rate": float(test.labels.mean()),
        "mean_predicted": float(probs.mean()),
        "price_slope_mean": float(slope.mean()),
        "price_slope_p10": float(np.percentile(slope, 10)),
        "price_slope_p90": float(np.percentile(slope, 90)),
        "train_rows": float(len(train_set)),
        "calibration_rows": float(len(cal)),
        "test_rows": float(len(test)),
        "epochs": float(len(epochs)),
        "fit_seconds": fit_seconds,
        "train_rows_per_second": len(train_set) * len(epochs) / fit_seconds if fit_seconds > 0 else 0.0,
    }
    if size > 1:
        metrics["ensemble_size"] = float(size)
    if privacy is not None:
        metrics.update(privacy.metrics())
    metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
    table = calibration_table(test.labels, probs)
    window = (int(data.event_time.min()), int(data.event_time.max()))
    members = [] if size == 1 else [f.summary(test.labels) | {"member": b} for b, f in enumerate(fits)]
    trained = TrainedModel(model_dir=target, metrics=metrics, calibration=table, training_window=window,
                           feature_spec_version=spec.version, config=config, epochs=epochs,
                           trust_region=trust_region_of(train_set.features, spec=spec), privacy=privacy,
                           members=members)  # fmt: skip
    info = {"metrics": metrics, "training_window": {"start_ms": window[0], "end_ms": window[1]},
            "calibration": [asdict(b) for b in table], "config": _config_json(config), "epochs": epochs}  # fmt: skip
    if privacy is not None:
        info["privacy"] = privacy.extra()
    sample = slice(0, min(len(test), 2048))
    if size == 1:
        fits[0].net.export_saved_model(target, extra_info={"training": json_safe(info)})
        exported = TFDemandModel.load(target).score(test.features[sample], test.prices[sample, None])[:, 0]
    else:
        for b, f in enumerate(fits):
            member_info = {**info, "ensemble_member": members[b], "bootstrap_seed": config.seed}
            f.net.export_saved_model(member_dir(target, b), extra_info={"training": json_safe(member_info)})
        write_ensemble_file(target, size, feature_spec_version=spec.version, extra={
            "bootstrap": "each member fitted on n rows of the train slice drawn with replacement "
                         "(pricing.training.bootstrap_rows)",
            "training": json_safe({**info, "members": members})})  # fmt: skip
        exported = EnsembleDemandModel.load(target).score(test.features[sample], test.prices[sample, None])[:, 0]

    # The export must score exactly what was evaluated.
    worst = float(np.max(np.abs(exported - probs[sample].astype(np.float32)), initial=0.0))
    if worst > 1e-6:
        raise RuntimeError(f"the exported model differs from the trained one by {worst:.2e} on the test rows")
    metrics_line = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("log_loss", "base_rate_log_loss", "auc",
                                                              "calibration_error", "temperature"))  # fmt: skip
    what = "SavedModel" if size == 1 else f"ensemble of {size} SavedModels"
    _say(progress, f"done in {time.perf_counter() - t_start:.1f} s: {metrics_line}; {what} in {target}")
    return trained


def bootstrap_rows(n: int, *, seed: int, member: int) -> np.ndarray:
    """Ensemble member ``member``'s bootstrap resample of ``n`` rows: ``n`` row indices drawn uniformly with
    replacement (seeded by ``seed`` and ``member``; about 63 % of the rows distinct), sorted (time order kept)."""
    return np.sort(np.random.default_rng([seed, member, 0xB007]).integers(0, n, n))


def member_seed(seed: int, member: int) -> int:
    """The training seed (initial weights, batch shuffling) of ensemble member ``member``."""
    return int(np.random.SeedSequence([seed, member]).generate_state(1)[0])


@dataclass(frozen=True, eq=False)
class _MemberFit:
    """One network fitted and calibrated: its scores on the test slice."""

    net: Any
    epochs: list[dict[str, float]]
    temperature: float
    raw: np.ndarray  # test slice, before the temperature
    probs: np.ndarray  # test slice, after it
    slope: np.ndarray  # effective price slope on the test slice (temperature in)
    privacy: PrivacySpent | None

    def summary(self, labels: np.ndarray) -> dict[str, float]:
        return {"temperature": self.temperature, "epochs": float(len(self.epochs)),
                "log_loss": log_loss(labels, self.probs)}  # fmt: skip


def _fit_member(rows: TrainingSet, cal: TrainingSet, test: TrainingSet, *, config: TrainConfig, seed: int,
                spec: FeatureSpec, progress: TextIO | None) -> _MemberFit:  # fmt: skip
    """Seed, build, fit (early stopping on ``cal``), calibrate a temperature on ``cal``, score ``test``."""
    import keras
    import tensorflow as tf

    from pricing_udfs.model.network import DemandNet

    base_rate = float(rows.labels.mean())
    keras.utils.set_random_seed(seed)
    net = DemandNet(spec, hidden=config.hidden, slope_hidden=config.slope_hidden)
    start_a, start_b = marginal_price_slopes(rows.features, rows.prices, rows.labels, spec=spec)
    net.adapt(rows.features, base_rate=base_rate, slope=max(start_a, 0.05), competitor_slope=max(start_b, 0.05))
    _say(progress, f"marginal price sensitivity {start_a:.3f} to the list price, {start_b:.3f} to the cheapest "
                   "competitor's where known (the slopes start there)")  # fmt: skip
    log = _epoch_log(progress, config.epochs, len(rows))
    privacy = None
    if config.dp is None:
        net.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                    loss=keras.losses.BinaryCrossentropy(from_logits=True))  # fmt: skip
        net.fit(
            x=(rows.features, rows.prices[:, None]), y=rows.labels[:, None],
            batch_size=config.batch_size, epochs=config.epochs, shuffle=True, verbose=0,
            validation_data=((cal.features, cal.prices[:, None]), cal.labels[:, None]),
            callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                     restore_best_weights=True), log],
        )  # fmt: skip
    else:
        from pricing.dp_training import fit_private

        privacy = fit_private(net, rows, cal, config=config, log=log, progress=progress)

    def logits(part: TrainingSet) -> np.ndarray:  # in float64 like serving (Keras' predict would cast to float32)
        chunks = [net((tf.constant(part.features[i:i + 65536]), tf.constant(part.prices[i:i + 65536, None])))
                  for i in range(0, len(part), 65536)]  # fmt: skip
        return np.concatenate([c.numpy()[:, 0] for c in chunks])

    temperature = fit_temperature(logits(cal), cal.labels)
    z_test = logits(test)
    raw = sigmoid(z_test)
    probs = sigmoid(z_test / temperature)
    net.set_temperature(temperature)
    slope = net.effective_slope(tf.constant(test.features)).numpy()
    return _MemberFit(net=net, epochs=log.epochs, temperature=temperature, raw=raw, probs=probs, slope=slope,
                      privacy=privacy)


def save(trained: TrainedModel, out_dir: Path | str) -> Path:
    """Copy the exported SavedModel (its info file holds metrics, window and calibration) to ``out_dir``.

    ``out_dir`` must not exist or be empty. Returns ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: save into a new folder")
    if out.exists():
        out.rmdir()
    shutil.copytree(trained.model_dir, out)
    (out / "training_report.md").write_text(trained.report())
    return out


# ----------------------------------------------------------------------------------- helpers
def _prepare_out_dir(out_dir: Path | str | None) -> Path:
    if out_dir is None:
        return Path(tempfile.mkdtemp(prefix="pricing-model-"))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _config_json(config: TrainConfig) -> dict[str, Any]:
    out = json.loads(json.dumps(asdict(config)))
    if out["ensemble_size"] == 1:  # a single model is described as before ensembles existed
        del out["ensemble_size"]
    if out["dp"] is None:  # a model trained without DP is described as before DP existed
        del out["dp"]
    elif out["dp"]["noise_seed"] is not None:
        out["dp"]["noise_seed"] = "set, not recorded"  # whoever knows it could replay the noise
    return out


def _say(progress: TextIO | None, line: str) -> None:
    if progress is not None:
        print(line, file=progress, flush=True)


def _epoch_log(progress: TextIO | None, epochs: int, rows: int) -> Any:
    """A Keras callback that prints one line per epoch and keeps them in ``.epochs``."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[dict[str, float]] = []
            self._t0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            secs = time.perf_counter() - self._t0
            entry = {"epoch": float(epoch + 1), "loss": float(logs.get("loss", math.nan)),
                     "holdout_loss": float(logs.get("val_loss", math.nan)), "seconds": secs}  # fmt: skip
            self.epochs.append(entry)
            loss = f"loss {entry['loss']:.4f}, " if math.isfinite(entry["loss"]) else ""  # not reported under DP
            _say(progress, f"epoch {epoch + 1}/{epochs}: {loss}holdout "
                           f"{entry['holdout_loss']:.4f}, {secs:.1f} s ({rows / max(secs, 1e-9):,.0f} rows/s)")

    return EpochLog()
