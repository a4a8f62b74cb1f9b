"""A bootstrap ensemble of demand models in one folder: its mean for everything, its members for Thompson sampling.

``pricing.training`` (``ensemble_size`` B > 1) fits B demand networks, each on a bootstrap resample of the
training rows, and saves them as ONE model folder, which the registry stores as one version::

    <model>/ensemble.json       {"format": "pricing-demand-ensemble/1", "members": ["members/0", ...], ...}
    <model>/members/0/          a demand SavedModel (``TFDemandModel``), or a saved fake in tests
    ...
    <model>/members/B-1/

:class:`EnsembleDemandModel` loads each member with the existing handler (the TF handler for a SavedModel, the
fake's for a saved :class:`~pricing_udfs.model.handler.FakeDemandModel`) and exposes

* ``score(features [N, F], prices [N, K]) -> [N, K]``: the members' **mean** probability (float32). Everything
  that scores through ``score`` (the policy's greedy price, the learning loop's gate, recommendations, reports,
  the canary) sees one model, the mean; a mean of monotone non-increasing curves in [0, 1] is one too;
* ``score_members(features, prices) -> [B, N, K]``: each member's probabilities, for Thompson sampling in
  ``pricing_udfs.policy.model_policy`` (``exploration = "thompson"``).

Cost: one TF call per member per batch (B calls, B small: 5 in the docs), for ``score`` and ``score_members``
alike; the policy calls ``score_members`` once and averages itself, so a batch costs B calls, not 2B.
There is no ``price_slope``: the mean of sigmoids has no single slope signature (reports fall back to finite
differences of ``score``).

:func:`pricing_udfs.model.serving.load_model` recognises the folder by its ``ensemble.json``, and the canary
(:func:`pricing_udfs.model.serving.validate`) checks every member, not only the mean (a member's curve that rises
with the price can hide in the mean, and Thompson sampling prices by single members).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pricing_udfs.model.handler import FAKE_FILE, FakeModelHandler, check_inputs

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "pricing-demand-ensemble/1"
MEMBERS_DIR = "members"


def is_ensemble(path: Path | str) -> bool:
    """True when ``path`` is an ensemble folder (it holds ``ensemble.json``)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def member_dir(path: Path | str, index: int) -> Path:
    """Where member ``index`` of the ensemble in ``path`` lives (``members/<index>``)."""
    return Path(path) / MEMBERS_DIR / str(index)


def write_ensemble_file(path: Path | str, size: int, *, feature_spec_version: str,
                        extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write ``ensemble.json`` for members ``members/0 .. members/size-1`` (already saved there)."""
    if size < 1:
        raise ValueError("an ensemble has at least one member")
    root = Path(path)
    missing = [i for i in range(size) if not member_dir(root, i).is_dir()]
    if missing:
        raise ValueError(f"{root}: members {missing} are not saved under {MEMBERS_DIR}/")
    doc = {"format": ENSEMBLE_FORMAT, "size": size, "members": [f"{MEMBERS_DIR}/{i}" for i in range(size)],
           "feature_spec_version": feature_spec_version, "score": "mean of the members' probabilities",
           **(extra or {})}  # fmt: skip
    out = root / ENSEMBLE_FILE
    out.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return out


def load_member(path: Path) -> Any:
    """One member folder: a saved fake (tests) or a demand SavedModel (TF handler, TensorFlow imported here)."""
    if (path / FAKE_FILE).is_file():
        return FakeModelHandler().load(path)
    from pricing_udfs.model.tf_handler import TFModelHandler

    return TFModelHandler().load(path)


class EnsembleDemandModel:
    """B demand models scored together: ``score`` is their mean, ``score_members`` each one (module docstring)."""

    def __init__(self, members: Sequence[Any], *, path: Path | None = None, info: dict[str, Any] | None = None) -> None:
        if not members:
            raise ValueError("an ensemble has at least one member")
        self.members = list(members)
        self.path = path
        self.info = dict(info or {})
        versions = {getattr(m, "feature_spec_version", None) for m in self.members}
        if len(versions) != 1:
            raise ValueError(f"the ensemble's members read different feature specs: {sorted(map(str, versions))}")
        widths = {getattr(m, "n_features", None) for m in self.members}
        if len(widths) != 1:
            raise ValueError(f"the ensemble's members read different numbers of features: {sorted(map(str, widths))}")
        self.feature_spec_version: str | None = versions.pop()
        self.n_features: int | None = widths.pop()
        declared = self.info.get("feature_spec_version")
        if declared is not None and self.feature_spec_version is not None and declared != self.feature_spec_version:
            raise ValueError(f"{ENSEMBLE_FILE} says feature spec {declared}, the members read "
                             f"{self.feature_spec_version}")  # fmt: skip

    @property
    def size(self) -> int:
        return len(self.members)

    def __len__(self) -> int:
        return len(self.members)

    @classmethod
    def load(cls, path: Path | str, *, member_loader: Callable[[Path], Any] = load_member) -> "EnsembleDemandModel":
        """The ensemble in folder ``path`` (with ``ensemble.json``); each member through ``member_loader``."""
        root = Path(path)
        file = root / ENSEMBLE_FILE
        if not file.is_file():
            raise ValueError(f"{root} is not a demand model ensemble (no {ENSEMBLE_FILE})")
        info = json.loads(file.read_text())
        if info.get("format") != ENSEMBLE_FORMAT:
            raise ValueError(f"{file}: format {info.get('format')!r}, expected {ENSEMBLE_FORMAT!r}")
        names = info.get("members")
        if not isinstance(names, list) or not names or info.get("size") != len(names):
            raise ValueError(f"{file}: 'members' must list the size ({info.get('size')!r}) member folders")
        members = []
        base = root.resolve()
        for name in names:
            folder = (root / str(name)).resolve()
            if base not in folder.parents or not folder.is_dir():
                raise ValueError(f"{file}: member {name!r} is not a folder inside the ensemble")
            members.append(member_loader(folder))
        return cls(members, path=root, info=info)

    def score_members(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        """``features [N, F]``, ``prices [N, K]`` -> float32 ``[B, N, K]``: member b's probabilities in ``[b]``.
        One call per member; a member that raises, or returns another shape, raises."""
        f, p = check_inputs(features, prices, n_features=self.n_features)
        out = np.empty((self.size, *p.shape), dtype=np.float32)
        for b, member in enumerate(self.members):
            probs = np.asarray(member.score(f, p))
            if probs.shape != p.shape:
                raise ValueError(f"ensemble member {b} returned shape {probs.shape} for prices {p.shape}")
            out[b] = probs
        return out

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        """The members' mean probability, float32 ``[N, K]`` (averaged in float64)."""
        return mean_probability(self.score_members(features, prices))


def mean_probability(member_probs: np.ndarray) -> np.ndarray:
    """``[B, N, K]`` -> the mean over members as float32 ``[N, K]`` (summed in float64): what ``score`` returns."""
    return np.asarray(member_probs, dtype=np.float64).mean(axis=0).astype(np.float32)


class EnsembleModelHandler:
    """Beam-style handler over :class:`EnsembleDemandModel`."""

    def load(self, path: Path | str) -> EnsembleDemandModel:
        return EnsembleDemandModel.load(path)

    def score(self, model: EnsembleDemandModel, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        return model.score(features, prices)
