"""The demand network (Keras) and its SavedModel export. Imports TensorFlow: training side only.

Serving never imports this module: it loads the exported SavedModel through
``pricing_udfs.model.TFModelHandler``. Everything the SavedModel needs travels inside it:
the feature-to-tensor transform, the normalisation statistics, the weights and the
calibration temperature.

Architecture (small on purpose: one call scores N x K candidates, and K is ~16)::

    t      = transform(features)          # symlog of every raw feature + a few ratios (below)
    z      = clip(normalize(t), -10, 10)  # Keras Normalization, adapted on the training rows
    z_s    = z without the competitor price columns (see below)
    level  = MLP(z) -> 1                  # hidden (64, 32), relu
    a      = softplus(MLP(z_s) -> 1)      # hidden (16,), relu: sensitivity to the reference price, >= 0
    b      = softplus(MLP(z_s) -> 1)      # hidden (16,), relu: sensitivity to the competitor price, >= 0
    known  = competitor_events_15m > 0 and competitor_min_15m_minor > 0
    logit  = (level - a * log(price / reference) - known * b * log(price / competitor_min)) / temperature
    p      = sigmoid(logit)

The price never enters the MLPs, ``a`` and ``b`` are >= 0 and the temperature > 0, so
``p`` is non-increasing in price by construction, for any weights. The total price
sensitivity ``-d logit / d log(price)`` is ``(a + known * b) / temperature`` (the
``price_slope`` signature). The price arithmetic (the log ratios, the products with the
slopes, the sigmoid) runs in float64, so two distinct integer prices keep their order up
to the final float32 cast, which can only tie them.

The competitor term, like the simulated shoppers, compares the price with the cheapest
competitor's: a cheaper competitor lowers the purchase probability at every price. The
two slope MLPs do not see the competitor price columns (the raw minimum, mean and event
count and their ratios to the list price), only whether a competitor price is known:
a shopper's sensitivity is the user's and the product's, and slopes that could move with
the competitor's price (rarely known: within 15 minutes of a competitor event, and only
in a narrow range around the list price in the training data) learned to undo the
competitor effect outside that range, so that a cheaper competitor raised the optimal
price. Through the level the competitor price still informs the purchase rate.

The transform, beside ``sign(x) * log1p(|x|)`` of each raw feature, adds (when the spec
has the columns): ``log(competitor_min / list)``, ``log(competitor_mean / list)`` and
``log(unit_cost / list)`` (0 when either side is unknown), whether the list price is
known, whether a competitor price is known, whether the product is out of stock
(inventory == 0), ``log`` of the user's paid / list price ratio, and the hour and weekday
as points on a circle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pricing_udfs.features.spec import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.handler import (
    COMPETITOR_EVENTS_FEATURE,
    COMPETITOR_MIN_FEATURE,
    FEATURES_KEY,
    INFO_FILE,
    MAX_PRICE_MINOR,
    MIN_PRICE_MINOR,
    OUTPUT_KEY,
    PRICES_KEY,
    REFERENCE_FEATURE,
    SIGNATURE_NAME,
    SLOPE_KEY,
    SLOPE_SIGNATURE_NAME,
)

INITIAL_SLOPE = 1.0  # softplus(bias) at initialisation: a mild price sensitivity
INITIAL_COMPETITOR_SLOPE = 0.5
_CLIP = 10.0


@dataclass(frozen=True)
class Layout:
    """Where the transform finds its columns in the raw vector (None: the spec lacks it)."""

    n_features: int
    reference: int
    competitor_min: int | None
    competitor_mean: int | None
    competitor_events: int | None
    unit_cost: int | None
    inventory: int | None
    user_price_ratio: int | None
    hour: int | None
    weekday: int | None

    @classmethod
    def of(cls, spec: FeatureSpec) -> "Layout":
        def find(name: str) -> int | None:
            return spec.index(name) if name in spec.names else None

        return cls(
            n_features=len(spec.names), reference=spec.index(REFERENCE_FEATURE),
            competitor_min=find(COMPETITOR_MIN_FEATURE), competitor_mean=find("competitor_mean_15m_minor"),
            competitor_events=find(COMPETITOR_EVENTS_FEATURE),
            unit_cost=find("unit_cost_minor"), inventory=find("inventory"), user_price_ratio=find("user_price_ratio"),
            hour=find("hour_of_day"), weekday=find("day_of_week"),
        )  # fmt: skip


def _transform(features: tf.Tensor, layout: Layout, names: list[str]) -> tf.Tensor:
    """``transform``, appending each output column's name to ``names``."""
    x = tf.cast(features, tf.float64)
    names += [f"symlog:{i}" for i in range(layout.n_features)]
    cols = [tf.sign(x) * tf.math.log1p(tf.abs(x))]
    ref = x[:, layout.reference]
    ref_known = ref > 0
    extra = [tf.cast(ref_known, tf.float64)]
    names.append("reference_known")

    def log_ratio(i: int | None, name: str) -> None:
        if i is None:
            return
        v = x[:, i]
        ok = ref_known & (v > 0)
        extra.append(tf.where(ok, tf.math.log(tf.where(ok, v, 1.0) / tf.where(ok, ref, 1.0)), 0.0))
        names.append(name)

    log_ratio(layout.competitor_min, "log_competitor_min_vs_list")
    log_ratio(layout.competitor_mean, "log_competitor_mean_vs_list")
    log_ratio(layout.unit_cost, "log_unit_cost_vs_list")
    if layout.competitor_min is not None and layout.competitor_events is not None:
        extra.append(tf.cast(competitor_known(x, layout)[:, 0], tf.float64))
        names.append("competitor_known")
    if layout.inventory is not None:
        extra.append(tf.cast(tf.equal(x[:, layout.inventory], 0.0), tf.float64))
        names.append("out_of_stock")
    if layout.user_price_ratio is not None:
        extra.append(tf.math.log(tf.maximum(x[:, layout.user_price_ratio], 1e-3)))
        names.append("log_user_price_ratio")
    for i, period, name in ((layout.hour, 24.0, "hour"), (layout.weekday, 7.0, "weekday")):
        if i is not None:
            angle = x[:, i] * (2 * math.pi / period)
            extra += [tf.sin(angle), tf.cos(angle)]
            names += [f"{name}_sin", f"{name}_cos"]
    cols.append(tf.stack(extra, axis=1))
    return tf.cast(tf.concat(cols, axis=1), tf.float32)


def transform(features: tf.Tensor, layout: Layout) -> tf.Tensor:
    """Raw float64 ``[N, F]`` -> float32 ``[N, D]``, before normalisation."""
    return _transform(features, layout, [])


def slope_columns(layout: Layout) -> list[int]:
    """The columns of ``transform``'s output that the slope MLPs see: all but the competitor price columns."""
    names: list[str] = []
    _transform(tf.zeros((1, layout.n_features), tf.float64), layout, names)
    raw = {layout.competitor_min, layout.competitor_mean, layout.competitor_events} - {None}
    hidden = {f"symlog:{i}" for i in raw} | {"log_competitor_min_vs_list", "log_competitor_mean_vs_list"}
    return [i for i, name in enumerate(names) if name not in hidden]


def competitor_known(features: tf.Tensor, layout: Layout) -> tf.Tensor:
    """bool ``[N, 1]``: a competitor price is known (events > 0 and a positive, finite minimum)."""
    x = tf.cast(features, tf.float64)
    if layout.competitor_min is None or layout.competitor_events is None:
        return tf.zeros_like(x[:, :1], dtype=tf.bool)
    comp = x[:, layout.competitor_min : layout.competitor_min + 1]
    events = x[:, layout.competitor_events : layout.competitor_events + 1]
    return (events > 0) & (comp > 0) & tf.math.is_finite(comp)


def log_competitor_ratio(features: tf.Tensor, prices: tf.Tensor, layout: Layout) -> tf.Tensor:
    """``log(price / competitor_min)`` float64 ``[N, K]`` where a competitor price is known, else 0."""
    p = tf.clip_by_value(tf.cast(prices, tf.float64), MIN_PRICE_MINOR, MAX_PRICE_MINOR)
    known = competitor_known(features, layout)
    if layout.competitor_min is None:
        return tf.zeros_like(p)
    comp = tf.cast(features, tf.float64)[:, layout.competitor_min : layout.competitor_min + 1]
    log_comp = tf.math.log(tf.where(known, comp, 1.0))
    return tf.where(known, tf.math.log(p) - log_comp, tf.zeros_like(p))


def log_price_ratio(features: tf.Tensor, prices: tf.Tensor, layout: Layout) -> tf.Tensor:
    """``log(price / reference)`` float64 ``[N, K]``; reference = the price itself when unknown (term 0)."""
    p = tf.clip_by_value(tf.cast(prices, tf.float64), MIN_PRICE_MINOR, MAX_PRICE_MINOR)
    ref = tf.cast(features, tf.float64)[:, layout.reference : layout.reference + 1]
    known = ref > 0  # False for NaN too
    log_p = tf.math.log(p)
    log_ref = tf.where(known, tf.math.log(tf.where(known, ref, 1.0)), log_p)
    return log_p - log_ref


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for large y


class DemandNet(keras.Model):
    """Purchase logits ``[N, K]`` from raw features ``[N, F]`` and prices ``[N, K]`` (see the module doc).

    ``slope_out`` / ``slope_layers`` make ``a`` (reference price), ``competitor_slope_out`` /
    ``competitor_slope_layers`` make ``b`` (competitor price; built only when the spec has the
    competitor minimum and event count).
    """

    def __init__(self, spec: FeatureSpec = FEATURE_SPEC, *, hidden: tuple[int, ...] = (64, 32),
                 slope_hidden: tuple[int, ...] = (16,), **kwargs: Any) -> None:  # fmt: skip
        super().__init__(autocast=False, **kwargs)  # float64 prices stay float64
        self.layout = Layout.of(spec)
        self.feature_spec_version = spec.version
        self.feature_names = list(spec.names)
        self.hidden = tuple(hidden)
        self.slope_hidden = tuple(slope_hidden)
        self.norm = keras.layers.Normalization(axis=-1, name="normalize")
        self.level_layers = [keras.layers.Dense(n, activation="relu", name=f"level_{i}") for i, n in enumerate(hidden)]
        self.level_out = keras.layers.Dense(1, name="level")
        self.slope_layers = [
            keras.layers.Dense(n, activation="relu", name=f"slope_{i}") for i, n in enumerate(slope_hidden)
        ]
        self.slope_out = keras.layers.Dense(
            1, name="slope", bias_initializer=keras.initializers.Constant(_softplus_inverse(INITIAL_SLOPE))
        )
        self.has_competitor_term = self.layout.competitor_min is not None and self.layout.competitor_events is not None
        self.slope_columns = np.asarray(slope_columns(self.layout), dtype=np.int32)
        self.competitor_slope_layers = [
            keras.layers.Dense(n, activation="relu", name=f"competitor_slope_{i}") for i, n in enumerate(slope_hidden)
        ] if self.has_competitor_term else []  # fmt: skip
        self.competitor_slope_out = keras.layers.Dense(
            1, name="competitor_slope",
            bias_initializer=keras.initializers.Constant(_softplus_inverse(INITIAL_COMPETITOR_SLOPE)),
        ) if self.has_competitor_term else None  # fmt: skip
        self.temperature = self.add_weight(
            name="temperature", shape=(), dtype="float64", initializer="ones", trainable=False
        )

    # -- set-up ---------------------------------------------------------------------------------
    def adapt(self, features: np.ndarray, *, base_rate: float | None = None, slope: float | None = None,
              competitor_slope: float | None = None) -> None:  # fmt: skip
        """Fit the normalisation to these raw rows and build the net.

        ``base_rate`` starts the level at its logit, ``slope`` the reference price sensitivity
        ``a`` (default ``INITIAL_SLOPE``) and ``competitor_slope`` the competitor price
        sensitivity ``b`` (default ``INITIAL_COMPETITOR_SLOPE``) at those values: Adam moves a
        bias by about one learning rate per step, so a good start saves many epochs on small
        training sets.
        """
        t = transform(tf.constant(np.asarray(features, dtype=np.float64)), self.layout).numpy()
        self.norm.adapt(t)
        self(
            (tf.zeros((1, self.layout.n_features), tf.float64), tf.ones((1, 1), tf.float64))
        )  # build every layer
        if base_rate is not None:
            rate = min(max(base_rate, 1e-6), 1 - 1e-6)
            self.level_out.bias.assign([math.log(rate / (1 - rate))])
        if slope is not None:
            self.slope_out.bias.assign([_softplus_inverse(min(max(slope, 0.05), 50.0))])
        if competitor_slope is not None and self.competitor_slope_out is not None:
            self.competitor_slope_out.bias.assign([_softplus_inverse(min(max(competitor_slope, 0.05), 50.0))])

    def set_temperature(self, value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"temperature must be positive and finite, got {value}")
        self.temperature.assign(value)

    # -- forward --------------------------------------------------------------------------------
    def heads(self, features: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Level, ``a`` and ``b``: ``[N, 1]`` float64 each, before the temperature (``b`` 0 without the term)."""
        z = tf.clip_by_value(self.norm(transform(features, self.layout)), -_CLIP, _CLIP)
        h = z
        for layer in self.level_layers:
            h = layer(h, training=training)
        level = self.level_out(h)
        z_slope = tf.gather(z, self.slope_columns, axis=1)

        def tower(layers: list[keras.layers.Layer], out: keras.layers.Layer) -> tf.Tensor:
            s = z_slope
            for layer in layers:
                s = layer(s, training=training)
            return tf.cast(tf.nn.softplus(out(s)), tf.float64)

        a = tower(self.slope_layers, self.slope_out)
        if self.competitor_slope_out is None:
            b = tf.zeros_like(a)
        else:
            b = tower(self.competitor_slope_layers, self.competitor_slope_out)
        return tf.cast(level, tf.float64), a, b

    def call(self, inputs: tuple[tf.Tensor, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Logits ``[N, K]`` float64 (temperature applied)."""
        features, prices = inputs
        features = tf.cast(features, tf.float64)
        level, a, b = self.heads(features, training=training)
        logit = level - a * log_price_ratio(features, prices, self.layout)
        if self.has_competitor_term:
            logit -= b * log_competitor_ratio(features, prices, self.layout)
        return logit / self.temperature

    def probability(self, features: tf.Tensor, prices: tf.Tensor) -> tf.Tensor:
        """float32 ``[N, K]``: the sigmoid in float64, cast at the end."""
        return tf.cast(tf.sigmoid(self((features, prices))), tf.float32)

    def effective_slope(self, features: tf.Tensor) -> tf.Tensor:
        """float32 ``[N]``: ``(a + known * b) / temperature``, the total ``-d logit / d log(price)`` exported."""
        features = tf.cast(features, tf.float64)
        _, a, b = self.heads(features)
        known = tf.cast(competitor_known(features, self.layout), tf.float64)
        return tf.cast((a + known * b)[:, 0] / self.temperature, tf.float32)

    # -- export ---------------------------------------------------------------------------------
    def export_saved_model(self, path: Path | str, *, extra_info: dict[str, Any] | None = None) -> Path:
        """Write the SavedModel with the ``serving_default`` and ``price_slope`` signatures, plus its info file."""
        path = Path(path)
        n = self.layout.n_features
        features_spec = tf.TensorSpec([None, n], tf.float64, name=FEATURES_KEY)
        prices_spec = tf.TensorSpec([None, None], tf.float64, name=PRICES_KEY)

        def serve(features: tf.Tensor, prices: tf.Tensor) -> dict[str, tf.Tensor]:
            return {OUTPUT_KEY: self.probability(features, prices)}

        def slope(features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {SLOPE_KEY: self.effective_slope(features)}

        archive = keras.export.ExportArchive()
        archive.track(self)
        archive.add_endpoint(SIGNATURE_NAME, serve, input_signature=[features_spec, prices_spec])
        archive.add_endpoint(SLOPE_SIGNATURE_NAME, slope, input_signature=[features_spec])
        archive.write_out(str(path), verbose=False)
        info = {
            "format": "pricing-demand-model/1",
            "signature": {
                "name": SIGNATURE_NAME,
                "inputs": {FEATURES_KEY: f"float64 [None, {n}]", PRICES_KEY: "float64 [None, None] minor units"},
                "outputs": {OUTPUT_KEY: "float32 [None, K]"},
            },
            "feature_spec_version": self.feature_spec_version,
            "feature_names": self.feature_names,
            "n_features": n,
            "reference_feature": REFERENCE_FEATURE,
            "competitor_features": (
                {"minimum": COMPETITOR_MIN_FEATURE, "events": COMPETITOR_EVENTS_FEATURE}
                if self.has_competitor_term else None
            ),
            "logit": ("(level - a * log(price / reference) - known * b * log(price / competitor_min)) / temperature"
                      if self.has_competitor_term else "(level - a * log(price / reference)) / temperature"),
            "temperature": float(self.temperature.numpy()),
            "hidden": list(self.hidden),
            "slope_hidden": list(self.slope_hidden),
            **(extra_info or {}),
        }
        (path / INFO_FILE).parent.mkdir(parents=True, exist_ok=True)
        (path / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return path
