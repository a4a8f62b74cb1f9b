"""A synthetic training set with a known logistic demand, written with the training-rows schema.

The truth, per row::

    logit = -2.2 + 0.9 * promotion_active - 1.5 * log(competitor_min / list)   (with a competitor)
            + 0.25 * log1p(views_1h) - 4 * (inventory == 0) + 0.3 * channel_app
            - slope * log(price / list)                                          (list known)
    slope = 2.5 * exp(-2 * (user_price_ratio - 1))                               (personal sensitivity)

Offered prices are the list price times exp(U(-0.3, 0.3)), so the slope is identifiable.
"""

from __future__ import annotations

import atexit
import functools
import io
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pricing.training_rows import SCHEMA
from pricing_udfs.features.spec import FEATURE_SPEC

BASE_SLOPE = 2.5
START_MS = 1_780_000_000_000


@dataclass(frozen=True, eq=False)
class Synthetic:
    features: np.ndarray  # [N, F]
    prices: np.ndarray  # [N] int64
    labels: np.ndarray  # [N] int8
    event_time: np.ndarray  # [N] int64
    true_slope: np.ndarray  # [N]
    true_probability: np.ndarray  # [N]


def true_logit(features: np.ndarray, prices: np.ndarray) -> np.ndarray:
    """The truth for rows ``features [N, F]`` at prices ``[N, K]`` -> ``[N, K]``."""
    col = {name: features[:, i] for i, name in enumerate(FEATURE_SPEC.names)}
    lst, comp = col["list_price_minor"], col["competitor_min_15m_minor"]
    has_comp = (comp > 0) & (lst > 0)
    level = (-2.2 + 0.9 * col["promotion_active"]
             + np.where(has_comp, -1.5 * np.log(np.where(has_comp, comp, 1) / np.where(has_comp, lst, 1)), 0.0)
             + 0.25 * np.log1p(col["views_1h"]) - 4.0 * (col["inventory"] == 0) + 0.3 * col["channel_app"])  # fmt: skip
    known = lst > 0
    ratio = np.where(known[:, None], np.log(prices / np.where(known, lst, 1.0)[:, None]), 0.0)
    return level[:, None] - true_slope(features)[:, None] * ratio


def true_slope(features: np.ndarray) -> np.ndarray:
    upr = features[:, FEATURE_SPEC.index("user_price_ratio")]
    return BASE_SLOPE * np.exp(-2.0 * (upr - 1.0))


def random_features(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` plausible raw feature rows in spec order (cold-start defaults included)."""
    x = np.tile(FEATURE_SPEC.defaults, (n, 1))

    def put(name: str, values: np.ndarray) -> None:
        x[:, FEATURE_SPEC.index(name)] = values

    lst = np.rint(np.exp(rng.uniform(np.log(150), np.log(80_000), n)))
    lst[rng.random(n) < 0.03] = 0.0  # list price not seen yet
    put("list_price_minor", lst)
    put("unit_cost_minor", np.rint(lst * rng.uniform(0.35, 0.8, n)))
    events = rng.poisson(3.0, n) * (rng.random(n) < 0.8)
    cmin = np.where(events > 0, np.rint(lst * rng.uniform(0.8, 1.2, n)), 0.0)
    put("competitor_events_15m", events)
    put("competitor_min_15m_minor", cmin)
    put("competitor_mean_15m_minor", np.where(events > 0, np.rint(cmin * rng.uniform(1.0, 1.15, n)), 0.0))
    put("inventory", np.where(rng.random(n) < 0.05, 0, np.where(rng.random(n) < 0.05, -1, rng.integers(1, 500, n))))
    put("promotion_active", (rng.random(n) < 0.15).astype(float))
    views_1h = rng.poisson(rng.gamma(1.0, 20.0, n))
    put("views_1h", views_1h)
    put("views_5m", rng.binomial(views_1h, 0.08))
    put("carts_1h", rng.binomial(views_1h, 0.2))
    put("purchases_1h", rng.binomial(views_1h, 0.08))
    put("conversion_1h", np.where(views_1h > 0, x[:, FEATURE_SPEC.index("purchases_1h")] / np.maximum(views_1h, 1), 0))
    put("demand_velocity", rng.gamma(1.0, 2.0, n))
    put("user_views_24h", rng.poisson(5.0, n))
    put("user_views_30m", rng.poisson(1.0, n))
    put("user_price_ratio", np.clip(rng.normal(1.0, 0.1, n), 0.75, 1.2))
    put("user_secs_since_purchase", np.minimum(rng.exponential(500_000, n), 2_592_000.0))
    put("hour_of_day", rng.integers(0, 24, n))
    put("day_of_week", rng.integers(0, 7, n))
    channel = rng.integers(0, 3, n)
    for i, name in enumerate(("channel_web", "channel_app", "channel_marketplace")):
        put(name, (channel == i).astype(float))
    put("is_new_user", (rng.random(n) < 0.1).astype(float))
    put("is_new_product", (lst == 0).astype(float))
    return x


def generate(n: int, *, seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    x = random_features(n, rng)
    lst = x[:, FEATURE_SPEC.index("list_price_minor")]
    base = np.where(lst > 0, lst, np.exp(rng.uniform(np.log(150), np.log(80_000), n)))
    prices = np.maximum(1, np.rint(base * np.exp(rng.uniform(-0.3, 0.3, n)))).astype(np.int64)
    prob = 1.0 / (1.0 + np.exp(-true_logit(x, prices[:, None].astype(float))[:, 0]))
    labels = (rng.random(n) < prob).astype(np.int8)
    event_time = START_MS + np.sort(rng.integers(0, 7 * 86_400_000, n))
    return Synthetic(x, prices, labels, event_time, true_slope(x), prob)


def write(data: Synthetic, out_dir: Path, *, files: int = 2) -> Path:
    """The rows as Parquet files with ``pricing.training_rows.SCHEMA``, shuffled across ``files`` files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = data.labels.size
    order = np.random.default_rng(1).permutation(n)  # files need not be in time order
    for part, idx in enumerate(np.array_split(order, files)):
        table = pa.table({
            "request_id": [f"r{i}" for i in idx],
            "user_id": [f"u{i % 997}" for i in idx],
            "product_id": [f"p{i % 211}" for i in idx],
            "event_time": data.event_time[idx],
            "feature_spec_version": [FEATURE_SPEC.version] * idx.size,
            "features": pa.array(list(data.features[idx]), type=pa.list_(pa.float64())),
            "price_minor": data.prices[idx],
            "currency": ["EUR"] * idx.size,
            "label": data.labels[idx],
            "propensity": pa.nulls(idx.size, pa.float64()),
            "source": ["history"] * idx.size,
        }, schema=SCHEMA)  # fmt: skip
        pq.write_table(table, out_dir / f"part-{part:05d}.parquet")
    return out_dir


# --------------------------------------------------------------- models shared by the test modules
_ROOT: Path | None = None


def _scratch(name: str) -> Path:
    """A folder that lives until the test process ends (the models below are built once per process)."""
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="pricing-model-tests-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_ROOT))


@functools.cache
def trained(n: int = 60_000, *, seed: int = 0) -> tuple[Synthetic, Any, str]:
    """The synthetic set of ``n`` rows, a ``TrainedModel`` on it (early stopping) and its progress output."""
    from pricing.training import train

    data = generate(n, seed=seed)
    root = _scratch(f"trained-{n}-{seed}")
    out = io.StringIO()
    model = train(write(data, root / "set"), seed=seed, epochs=20, out_dir=root / "model", progress=out)
    return data, model, out.getvalue()


@functools.cache
def untrained_export() -> Path:
    """A DemandNet with random initial weights (normalisation adapted on synthetic rows), exported."""
    import keras

    from pricing_udfs.model.network import DemandNet

    keras.utils.set_random_seed(7)
    net = DemandNet()
    net.adapt(random_features(2_000, np.random.default_rng(3)), base_rate=0.1)
    return net.export_saved_model(_scratch("untrained") / "model")
