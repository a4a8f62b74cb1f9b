"""The feature specification: names, order, defaults, constants and normalisation slot.

``feature_spec.json`` beside this module is the single source: the job builds its
SQL from it, training reads the logged vectors by its order, and every priced event
records its ``version``. Change the version whenever a name, order, default or
semantic changes, so that models never read vectors of another layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

SPEC_FILE = Path(__file__).with_name("feature_spec.json")


@dataclass(frozen=True)
class Feature:
    name: str
    group: str
    default: float
    doc: str


@dataclass(frozen=True)
class FeatureSpec:
    version: str
    features: tuple[Feature, ...]
    constants: dict[str, float]
    normalization: dict[str, list[float]] | None = None

    @classmethod
    def load(cls, path: Path = SPEC_FILE) -> "FeatureSpec":
        raw: dict[str, Any] = json.loads(path.read_text())
        features = tuple(Feature(**f) for f in raw["features"])
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in {path}")
        return cls(version=raw["version"], features=features, constants=raw["constants"],
                   normalization=raw.get("normalization"))

    @cached_property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @cached_property
    def defaults(self) -> np.ndarray:
        return np.array([f.default for f in self.features], dtype=np.float64)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def vector(self, values: dict[str, float | None]) -> np.ndarray:
        """One vector in spec order; missing or None values take their defaults."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise KeyError(f"not in feature spec {self.version}: {sorted(unknown)}")
        out = self.defaults.copy()
        for i, name in enumerate(self.names):
            v = values.get(name)
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                out[i] = float(v)
        return out


FEATURE_SPEC = FeatureSpec.load()
