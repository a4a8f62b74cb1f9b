"""The TensorFlow handler: score with the exported SavedModel through its serving signature.

TensorFlow is imported inside :meth:`TFDemandModel.load`, never at module import, so the
runtime package imports without it (a worker that only runs the fallback, the fake, or
the simulator does not pay TensorFlow's start-up).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pricing_udfs.model.handler import (
    FEATURES_KEY,
    INFO_FILE,
    OUTPUT_KEY,
    PRICES_KEY,
    SIGNATURE_NAME,
    SLOPE_KEY,
    SLOPE_SIGNATURE_NAME,
    check_inputs,
)


class TFDemandModel:
    """A loaded demand SavedModel. ``score`` is one call of the ``serving_default`` signature."""

    def __init__(self, loaded: Any, path: Path, info: dict[str, Any]) -> None:
        # Keep the loaded object alive: its signatures only hold weak references to its variables.
        self._loaded = loaded
        self._serve = loaded.signatures[SIGNATURE_NAME]
        self._slope = loaded.signatures.get(SLOPE_SIGNATURE_NAME)
        self.path = path
        self.info = info
        self.n_features: int = int(info["n_features"])
        self.feature_spec_version: str = str(info["feature_spec_version"])
        self.feature_names: list[str] = list(info["feature_names"])

    @classmethod
    def load(cls, path: Path | str) -> "TFDemandModel":
        """Load the SavedModel at ``path`` (a folder with ``saved_model.pb``)."""
        import tensorflow as tf  # lazily: see the module docstring

        path = Path(path)
        info_file = path / INFO_FILE
        if not info_file.is_file():
            raise ValueError(f"{path} is not a demand model export (no {INFO_FILE})")
        info = json.loads(info_file.read_text())
        loaded = tf.saved_model.load(str(path))
        if SIGNATURE_NAME not in loaded.signatures:
            raise ValueError(f"{path} has no {SIGNATURE_NAME!r} signature")
        return cls(loaded, path, info)

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        """``features [N, F]``, ``prices [N, K]`` (minor units) -> float32 probabilities ``[N, K]``."""
        import tensorflow as tf

        f, p = check_inputs(features, prices, n_features=self.n_features)
        out = self._serve(**{FEATURES_KEY: tf.constant(f), PRICES_KEY: tf.constant(p)})[OUTPUT_KEY]
        return out.numpy()

    def price_slope(self, features: np.ndarray) -> np.ndarray:
        """Each row's total price sensitivity ``s = -d logit / d log(price) >= 0`` (both terms, temperature in)."""
        import tensorflow as tf

        if self._slope is None:
            raise ValueError(f"{self.path} has no {SLOPE_SIGNATURE_NAME!r} signature")
        f, _ = check_inputs(features, np.zeros((len(features), 1)), n_features=self.n_features)
        return self._slope(**{FEATURES_KEY: tf.constant(f)})[SLOPE_KEY].numpy()


class TFModelHandler:
    """Beam-style handler over :class:`TFDemandModel`."""

    def load(self, path: Path | str) -> TFDemandModel:
        return TFDemandModel.load(path)

    def score(self, model: TFDemandModel, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        return model.score(features, prices)
