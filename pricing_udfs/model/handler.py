"""The model handler seam (no TensorFlow here): protocols, input checks and the numpy fake.

See the package docstring for the contract. A handler loads a model from a path and
scores batches with it; the loaded model also scores on its own (``model.score``), so
code that already holds a model needs no handler.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from pricing_udfs.features.spec import FEATURE_SPEC, FeatureSpec

SIGNATURE_NAME = "serving_default"
SLOPE_SIGNATURE_NAME = "price_slope"
FEATURES_KEY = "features"
PRICES_KEY = "prices"
OUTPUT_KEY = "probability"
SLOPE_KEY = "slope"
# What the model writes beside its graph: feature layout, temperature, training summary.
INFO_FILE = Path("assets.extra") / "demand_model.json"
FAKE_FILE = "fake_demand_model.json"
REFERENCE_FEATURE = "list_price_minor"
# The competitor price term: known when the window saw a competitor event and a positive minimum.
COMPETITOR_MIN_FEATURE = "competitor_min_15m_minor"
COMPETITOR_EVENTS_FEATURE = "competitor_events_15m"
# Prices are clipped into this range (minor units) before the log: 0 or a negative price
# scores as the cheapest possible price, never as an error; NaN stays NaN.
MIN_PRICE_MINOR = 1.0
MAX_PRICE_MINOR = 1e13


@runtime_checkable
class DemandModel(Protocol):
    """A loaded model: purchase probabilities for K candidate prices per row."""

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        """``features [N, F]``, ``prices [N, K]`` (minor units) -> float32 ``[N, K]``."""
        ...


M = TypeVar("M", bound=DemandModel)


class ModelHandler(Protocol[M]):
    """Beam-style: ``load`` once per worker, then ``score`` per batch."""

    def load(self, path: Path | str) -> M: ...

    def score(self, model: M, features: np.ndarray, prices: np.ndarray) -> np.ndarray: ...


def check_inputs(features: Any, prices: Any, *, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``features`` and ``prices`` as C-contiguous float64 ``[N, F]`` and ``[N, K]``; ValueError otherwise."""
    f = np.ascontiguousarray(features, dtype=np.float64)
    p = np.ascontiguousarray(prices, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be 2-D [N, F], got shape {f.shape}")
    if n_features is not None and f.shape[1] != n_features:
        raise ValueError(f"features must have {n_features} columns (the feature spec's), got {f.shape[1]}")
    if p.ndim != 2:
        raise ValueError(f"prices must be 2-D [N, K], got shape {p.shape}")
    if p.shape[0] != f.shape[0]:
        raise ValueError(f"features and prices must have the same rows, got {f.shape[0]} and {p.shape[0]}")
    return f, p


def log_price_ratio(features: np.ndarray, prices: np.ndarray, reference_index: int) -> np.ndarray:
    """``log(price / reference)`` ``[N, K]`` with the package's rules (numpy twin of the network's)."""
    ref = features[:, reference_index : reference_index + 1]
    p = np.clip(prices, MIN_PRICE_MINOR, MAX_PRICE_MINOR)
    known = np.isfinite(ref) & (ref > 0)
    log_ref = np.where(known, np.log(np.where(known, ref, 1.0)), np.log(p))
    return np.log(p) - log_ref


def competitor_known(features: np.ndarray, min_index: int | None, events_index: int | None) -> np.ndarray:
    """``[N, 1]`` bool: a competitor price is known (events > 0 and a positive, finite minimum)."""
    if min_index is None or events_index is None:
        return np.zeros((features.shape[0], 1), dtype=bool)
    comp = features[:, min_index : min_index + 1]
    events = features[:, events_index : events_index + 1]
    return (events > 0) & np.isfinite(comp) & (comp > 0)


def log_competitor_ratio(features: np.ndarray, prices: np.ndarray, min_index: int | None,
                         events_index: int | None) -> np.ndarray:  # fmt: skip
    """``log(price / competitor_min)`` ``[N, K]`` where a competitor price is known, else 0 (numpy twin)."""
    known = competitor_known(features, min_index, events_index)
    p = np.clip(prices, MIN_PRICE_MINOR, MAX_PRICE_MINOR)
    if min_index is None:
        return np.zeros_like(p)
    comp = np.where(known, features[:, min_index : min_index + 1], 1.0)
    return np.where(known, np.log(p) - np.log(comp), 0.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings


@dataclass(frozen=True)
class FakeDemandModel:
    """``p = sigmoid(intercept - slope * log(price / reference) - competitor_slope * log(price / competitor_min))``.

    In numpy, for tests. Same reference and competitor rules, price clipping, shapes and
    dtypes as the SavedModel (the competitor term only where a competitor price is known).
    ``slope`` and ``competitor_slope`` must be >= 0 (monotone non-increasing in price).
    ``save`` / ``FakeModelHandler.load`` round-trip it through a folder, so tests can stand
    it in for a registry version.
    """

    intercept: float = -1.0
    slope: float = 2.0
    n_features: int = len(FEATURE_SPEC.names)
    reference_index: int = FEATURE_SPEC.index(REFERENCE_FEATURE)
    feature_spec_version: str = FEATURE_SPEC.version
    competitor_slope: float = 0.0
    competitor_min_index: int | None = FEATURE_SPEC.index(COMPETITOR_MIN_FEATURE)
    competitor_events_index: int | None = FEATURE_SPEC.index(COMPETITOR_EVENTS_FEATURE)

    def __post_init__(self) -> None:
        if not (self.slope >= 0 and self.competitor_slope >= 0):
            raise ValueError("slope and competitor_slope must be >= 0: a demand model never sells more at a "
                             "higher price")

    @classmethod
    def for_spec(cls, spec: FeatureSpec, **kwargs: Any) -> "FakeDemandModel":
        def find(name: str) -> int | None:
            return spec.index(name) if name in spec.names else None

        return cls(n_features=len(spec.names), reference_index=spec.index(REFERENCE_FEATURE),
                   feature_spec_version=spec.version, competitor_min_index=find(COMPETITOR_MIN_FEATURE),
                   competitor_events_index=find(COMPETITOR_EVENTS_FEATURE), **kwargs)  # fmt: skip

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        f, p = check_inputs(features, prices, n_features=self.n_features)
        z = self.intercept - self.slope * log_price_ratio(f, p, self.reference_index)
        if self.competitor_slope:
            z = z - self.competitor_slope * log_competitor_ratio(f, p, self.competitor_min_index,
                                                                 self.competitor_events_index)  # fmt: skip
        return _sigmoid(z).astype(np.float32)

    def price_slope(self, features: np.ndarray) -> np.ndarray:
        """The total sensitivity ``-d logit / d log(price)``: ``slope`` plus ``competitor_slope`` where known."""
        f = np.asarray(features, dtype=np.float64)
        known = competitor_known(f, self.competitor_min_index, self.competitor_events_index)[:, 0]
        return (self.slope + self.competitor_slope * known).astype(np.float32)

    def save(self, path: Path | str) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / FAKE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")
        return out


class FakeModelHandler:
    """Loads a :class:`FakeDemandModel` saved with ``FakeDemandModel.save``."""

    def load(self, path: Path | str) -> FakeDemandModel:
        return FakeDemandModel(**json.loads((Path(path) / FAKE_FILE).read_text()))

    def score(self, model: FakeDemandModel, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        return model.score(features, prices)
