"""The job's model: load it from the registry once per worker, watch ``latest``, validate a new
version on a canary batch, swap atomically.

:class:`ModelWatcher` runs inside the pricing UDF (``pricing_udfs.scoring``). Each check reads the
registry's ``latest`` pointer (or the pinned version); a version it has not seen is loaded
*beside* the serving one and validated on a canary batch:

* it loads (a SavedModel with the serving signature, or a saved fake in tests);
* its feature spec version is the job's;
* ``score`` returns ``[N, K]`` for the canary's ``[N, F]`` / ``[N, K]``;
* every probability is finite and in [0, 1];
* probabilities never rise with the price (monotone non-increasing along each row).

Only then does the watcher swap it in (one reference assignment: a batch is scored by the old
or the new model, never by a mix). A version that fails is remembered with its reason, counted,
logged, and never retried; the old model keeps serving. With no model at all, the policy prices
with its fallback until a version appears.

Guarantee: loading reads immutable registry versions only; a worker that restarts loads what
``latest`` names then. Different workers may serve different versions for up to one watch interval
after a promotion; every priced event names the version that scored it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.handler import FAKE_FILE, REFERENCE_FEATURE, FakeModelHandler
from pricing_udfs.model.registry import LATEST, Registry, RegistryError

log = logging.getLogger(__name__)
Device = Literal["auto", "cpu", "gpu"]
CANARY_MULTIPLIERS = np.array([0.25, 0.5, 0.8, 0.95, 1.0, 1.05, 1.25, 1.5, 2.0, 4.0])


def configure_device(device: Device) -> str:
    """Place TensorFlow on ``device`` before it initialises: ``cpu`` hides every GPU, ``gpu`` requires
    one, ``auto`` uses a GPU when there is one. GPUs get memory growth, so that several Python
    workers can share one GPU. Returns the device used ("cpu" or "gpu")."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu" or not gpus:
        if device == "gpu":
            raise RuntimeError("models.device = 'gpu' but TensorFlow sees no GPU on this worker")
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # already initialised by an earlier load in this process
            pass
        return "cpu"
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    return "gpu"


def load_model(path: Path, *, device: Device = "auto") -> Any:
    """The model in a registry version's ``model/`` folder: a saved fake (tests) or a TF SavedModel."""
    if (path / FAKE_FILE).is_file():
        return FakeModelHandler().load(path)
    from pricing_udfs.model.tf_handler import TFModelHandler

    configure_device(device)
    return TFModelHandler().load(path)


def canary_batch(spec: FeatureSpec, recent: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows (the spec's defaults with a list price and cost, plus ``recent`` served rows) and
    ascending candidate prices around each row's list price."""
    base = spec.vector({REFERENCE_FEATURE: 1_000.0, "unit_cost_minor": 600.0})
    rows = [spec.defaults[None, :], base[None, :]]
    if recent is not None and len(recent):
        rows.append(np.asarray(recent, dtype=np.float64)[:32])
    features = np.vstack(rows)
    ref = features[:, spec.index(REFERENCE_FEATURE)]
    ref = np.where(np.isfinite(ref) & (ref > 0), ref, 1_000.0)
    return features, np.rint(ref[:, None] * CANARY_MULTIPLIERS[None, :])


def validate(model: Any, spec: FeatureSpec, recent: np.ndarray | None = None) -> str | None:
    """None when ``model`` may serve; else why not (see the module docstring)."""
    version = getattr(model, "feature_spec_version", spec.version)
    if version != spec.version:
        return f"trained for feature spec {version}, the job serves {spec.version}"
    features, prices = canary_batch(spec, recent)
    try:
        probs = np.asarray(model.score(features, prices), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - a model that cannot score is rejected, not fatal
        return f"scoring the canary batch failed: {type(exc).__name__}: {exc}"[:500]
    if probs.shape != prices.shape:
        return f"returned shape {probs.shape} for prices {prices.shape}"
    if not np.all(np.isfinite(probs)):
        return "returned non-finite probabilities"
    if np.any(probs < 0) or np.any(probs > 1):
        return "returned probabilities outside [0, 1]"
    rise = np.diff(probs, axis=1).max(initial=0.0)
    if rise > 1e-6:
        return f"purchase probability rises with the price (by up to {rise:.3g}): not monotone"
    return None


@dataclass(frozen=True)
class ServedModel:
    version: str
    model: Any
    created_epoch_s: int  # when the version was published (manifest), for the model-age gauge


class ModelWatcher:
    """Loads, validates and swaps the serving model (see the module docstring)."""

    def __init__(
        self,
        registry_dir: Path | str | None,
        *,
        version: str = LATEST,
        interval_s: float = 10.0,
        device: Device = "auto",
        spec: FeatureSpec = FEATURE_SPEC,
        loader: Callable[..., Any] = load_model,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = Registry(registry_dir) if registry_dir is not None else None
        self.version = version
        self.interval_s = interval_s
        self.device = device
        self.spec = spec
        self._loader = loader
        self._clock = clock
        self._next_check = -float("inf")
        self.current: ServedModel | None = None
        self.rejected: dict[str, str] = {}
        self.loads = 0

    def check(self, recent: np.ndarray | None = None, *, force: bool = False) -> str | None:
        """Look for a new version when the interval has passed; returns what happened (for the log), or None."""
        now = self._clock()
        if not force and now < self._next_check:
            return None
        self._next_check = now + self.interval_s
        if self.registry is None:
            return None
        try:
            name = self.registry.latest_version() if self.version == LATEST else self.version
        except (RegistryError, OSError) as exc:
            return self._reject("latest", f"cannot read the registry: {exc}")
        if name is None or (self.current and self.current.version == name) or name in self.rejected:
            return None
        try:
            path = self.registry.model_dir(name)
            created = self.registry.manifest(name).created
            model = self._loader(path, device=self.device)
        except Exception as exc:  # noqa: BLE001 - an unloadable version is rejected, the old one serves
            return self._reject(name, f"unloadable: {type(exc).__name__}: {exc}"[:500])
        reason = validate(model, self.spec, recent)
        if reason is not None:
            return self._reject(name, reason)
        old = self.current.version if self.current else None
        self.current = ServedModel(name, model, _epoch_s(created))
        self.loads += 1
        message = f"serving model {name} (was {old or 'none'})"
        log.info(message)
        return message

    def _reject(self, name: str, reason: str) -> str:
        self.rejected[name] = reason
        message = f"rejected model version {name}: {reason}; still serving {self.current.version if self.current else 'the fallback'}"
        log.warning(message)
        return message


def _epoch_s(created: str) -> int:
    try:
        return int(dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp())
    except ValueError:
        return 0
