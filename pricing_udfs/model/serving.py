"""The job's model: load it from the registry once per worker, watch ``latest``, validate a new
version on a canary batch, swap atomically.

:class:`ModelWatcher` runs inside the pricing UDF (``pricing_udfs.scoring``). Each look reads the
registry's ``latest`` pointer (or the pinned version); a version it has not seen is loaded
*beside* the serving one and validated on a canary batch (the spec's defaults plus a copy of the
worker's recent rows, taken on the hot path):

* it loads (a SavedModel with the serving signature, or a saved fake in tests);
* its feature spec version is the job's;
* ``score`` returns ``[N, K]`` for the canary's ``[N, F]`` / ``[N, K]``;
* every probability is finite and in [0, 1];
* probabilities never rise with the price (monotone non-increasing along each row);
* for an ensemble (``pricing_udfs.model.ensemble``): all of the above for every member too.

Only then does the watcher swap it in (one reference assignment: a batch is scored by the old
or the new model, never by a mix). A version that fails is remembered with its reason, counted,
logged, and never retried; the old model keeps serving. With no model at all, the policy prices
with its fallback until a version appears.

**Off the hot path.** Only the first load is synchronous (:meth:`ModelWatcher.check`), in the UDF's
``open()``: PyFlink calls it when the worker's first batch arrives, before that batch is priced. After it (:meth:`ModelWatcher.start`) a background thread
reads the registry, loads and validates; the batch path calls :meth:`ModelWatcher.poll`, which wakes
that thread at most every ``interval_s`` and swaps in a candidate only once it is loaded and validated:
a batch never waits for a load (a TensorFlow load takes seconds). That holds also for a version that
appears after ``open()`` found the registry empty. Anything that goes wrong in the thread becomes a
rejection with its reason; if the thread itself dies, the next ``poll`` raises (Flink restarts the task).
TensorFlow's thread pools are capped per worker (``[models] intra_op_threads`` / ``inter_op_threads``,
:func:`configure_threads`) before it initialises.

Guarantee: loading reads immutable registry versions only; a worker that restarts loads what
``latest`` names then. Different workers may serve different versions for up to one watch interval
plus the load after a promotion; every priced event names the version that scored it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.ensemble import MEMBERS_DIR, EnsembleDemandModel, is_ensemble
from pricing_udfs.model.handler import FAKE_FILE, REFERENCE_FEATURE, FakeModelHandler
from pricing_udfs.model.registry import LATEST, Registry, RegistryError, TrustRegion

log = logging.getLogger(__name__)
Device = Literal["auto", "cpu", "gpu"]
MAX_REJECTED = 1_000  # refused versions a watcher remembers
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


def configure_threads(intra_op_threads: int, inter_op_threads: int) -> None:
    """Cap TensorFlow's thread pools before it initialises: ``intra_op_threads`` threads inside one op,
    ``inter_op_threads`` ops at once (0: TensorFlow's default, about one per core). A Python worker
    runs in one Flink slot, so the defaults (1 and 1) keep it to one core instead of one pool per core
    per worker. Once TensorFlow has initialised in this process the pools are fixed; a different
    request is then logged, not applied."""
    import tensorflow as tf

    threading_config = tf.config.threading
    for name, setter, getter, value in (
        ("intra_op_threads", threading_config.set_intra_op_parallelism_threads,
         threading_config.get_intra_op_parallelism_threads, intra_op_threads),
        ("inter_op_threads", threading_config.set_inter_op_parallelism_threads,
         threading_config.get_inter_op_parallelism_threads, inter_op_threads),
    ):  # fmt: skip
        try:
            setter(value)
        except RuntimeError:  # already initialised by an earlier load in this process
            if getter() != value:
                log.warning("TensorFlow is already initialised in this process with %s = %s; %s not applied", name,
                            getter(), value)  # fmt: skip


def load_model(path: Path, *, device: Device = "auto", intra_op_threads: int = 1, inter_op_threads: int = 1) -> Any:
    """The model in a registry version's ``model/`` folder: a saved fake (tests), a TF SavedModel, or an ensemble
    of either (``ensemble.json``, ``pricing_udfs.model.ensemble``: its members loaded one by one)."""
    path = Path(path)
    ensemble = is_ensemble(path)
    if not ensemble and (path / FAKE_FILE).is_file():
        return FakeModelHandler().load(path)
    needs_tf = not ensemble or any(not (member / FAKE_FILE).is_file()
                                   for member in (path / MEMBERS_DIR).glob("*") if member.is_dir())  # fmt: skip
    if needs_tf:
        configure_threads(intra_op_threads, inter_op_threads)
        configure_device(device)
    if ensemble:
        return EnsembleDemandModel.load(path)
    from pricing_udfs.model.tf_handler import TFModelHandler

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
    reason = _check_probabilities(probs, prices)
    if reason is not None or not hasattr(model, "score_members"):
        return reason
    # An ensemble: every member must pass too (a member's rising curve can hide in the mean; Thompson sampling
    # prices by single members).
    try:
        members = np.asarray(model.score_members(features, prices), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        return f"scoring the canary batch member by member failed: {type(exc).__name__}: {exc}"[:500]
    if members.ndim != 3 or members.shape[1:] != prices.shape or members.shape[0] < 1:
        return f"score_members returned shape {members.shape} for prices {prices.shape}"
    for b, member in enumerate(members):
        reason = _check_probabilities(member, prices)
        if reason is not None:
            return f"ensemble member {b} of {len(members)}: {reason}"
    return None


def _check_probabilities(probs: np.ndarray, prices: np.ndarray) -> str | None:
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
    trust_region: TrustRegion | None = None  # what the model saw in training (manifest); None: an older model


class ModelWatcher:
    """Loads, validates and swaps the serving model (see the module docstring).

    Two ways to use it: :meth:`check` looks, loads, validates and swaps synchronously (the first load
    in ``open()``, before any batch; tests; tools). After :meth:`start`, a background thread does the
    looking and loading, and the hot path calls only :meth:`poll`, which never waits on a load; call
    :meth:`close` to stop the thread. ``loader`` and ``clock`` may be injected (tests).
    """

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
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        self.registry = Registry(registry_dir) if registry_dir is not None else None
        self.version = version
        self.interval_s = interval_s
        self.device = device
        self.spec = spec
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self._loader = loader
        self._clock = clock
        self._next_check = -float("inf")
        self.current: ServedModel | None = None
        # version -> why it was refused; the newest MAX_REJECTED (an older one is not tried again unless `latest`
        # points back at it: then it is checked, and refused, once more)
        self.rejected: OrderedDict[str, str] = OrderedDict()
        self.rejected_total = 0
        self.loads = 0
        # The background loader (start()): it hands a loaded, validated candidate to poll() through
        # _ready under _lock; poll() swaps it in. _wake asks it to look; _looks counts finished looks.
        self._lock = threading.Condition()
        self._ready: ServedModel | None = None
        self._messages: list[str] = []
        self._recent: np.ndarray | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._looks = 0
        self._busy = False
        self._died: str | None = None

    def check(self, recent: np.ndarray | None = None, *, force: bool = False) -> str | None:
        """Look for a new version when the interval has passed and, if there is one, load, validate and
        swap it in now; returns what happened (for the log), or None. Synchronous: for the first load
        before any batch (and tests, tools); never call it on the hot path after :meth:`start`."""
        now = self._clock()
        if not force and now < self._next_check:
            return None
        self._next_check = now + self.interval_s
        candidate, message = self._look(recent)
        if candidate is not None:
            message = self._swap(candidate)
        return message

    def start(self) -> None:
        """Start the background loader: from now on versions load off the hot path (see :meth:`poll`)."""
        if self.registry is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="pricing-model-watcher", daemon=True)
        self._thread.start()

    def poll(self, recent: np.ndarray | None = None) -> list[str]:
        """The hot path, once per batch; never reads the registry, loads or validates.

        ``recent`` (a copy of the worker's latest rows) becomes the next canary's traffic. When the
        interval has passed it wakes the loader; when the loader has a candidate ready (loaded and
        validated), it swaps it in: one reference assignment, so a batch is scored by the old or the
        new model, never a mix. Returns what happened since the last poll (swaps, rejections)."""
        if recent is not None:
            self._recent = recent
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self.interval_s
            self._wake.set()
        with self._lock:
            ready, self._ready = self._ready, None
            messages, self._messages = self._messages, []
        if ready is not None:
            messages.append(self._swap(ready))
        if self._died is not None:
            raise RuntimeError(f"the model watcher's loader thread died: {self._died}")
        return messages

    def look_now(self, timeout_s: float = 60.0) -> bool:
        """Wake the loader and wait until it has finished a look that started after this call (tests and
        tools; never the hot path). True when it did within ``timeout_s``."""
        if self._thread is None:
            return False
        with self._lock:
            target = self._looks + (2 if self._busy else 1)  # a look in progress started before this call
            self._wake.set()
            return self._lock.wait_for(lambda: self._looks >= target or self._died is not None, timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the loader thread (a load in progress finishes first, up to ``timeout_s``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the model watcher's loader thread did not stop within %.0f s", timeout_s)

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._busy = True
                    self._wake.clear()
                try:
                    candidate, message = self._look(self._recent)
                except Exception as exc:  # noqa: BLE001 - any other failure is a rejection too, never a dead loader
                    candidate, message = None, self._reject(LATEST, f"watcher error: {type(exc).__name__}: {exc}"[:500])
                with self._lock:
                    if candidate is not None:
                        self._ready = candidate
                    if message:
                        self._messages.append(message)
                    self._looks += 1
                    self._busy = False
                    self._lock.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported by the next poll(), which raises
            self._died = f"{type(exc).__name__}: {exc}"
            log.exception("the model watcher's loader thread died")
            with self._lock:
                self._lock.notify_all()

    def _look(self, recent: np.ndarray | None) -> tuple[ServedModel | None, str | None]:
        """Read the registry; load and validate a version not seen yet. Returns the candidate (not yet
        serving) and what happened, or (None, a rejection), or (None, None) when there is nothing new."""
        if self.registry is None:
            return None, None
        try:
            name = self.registry.latest_version() if self.version == LATEST else self.version
        except (RegistryError, OSError) as exc:
            return None, self._reject("latest", f"cannot read the registry: {exc}")
        current = self.current
        if name is not None and current is not None and current.version == name:
            with self._lock:
                self._ready = None  # latest went back to what serves: a candidate not swapped in yet is moot
            return None, None
        pending = self._ready
        if name is None or name in self.rejected or (pending is not None and pending.version == name):
            return None, None
        try:
            path = self.registry.model_dir(name)
            manifest = self.registry.manifest(name)
            model = self._loader(path, device=self.device, intra_op_threads=self.intra_op_threads,
                                 inter_op_threads=self.inter_op_threads)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - an unloadable version is rejected, the old one serves
            return None, self._reject(name, f"unloadable: {type(exc).__name__}: {exc}"[:500])
        try:
            reason = validate(model, self.spec, recent)
        except Exception as exc:  # noqa: BLE001 - validate guards the model's calls; anything else rejects it too
            reason = f"validation failed: {type(exc).__name__}: {exc}"[:500]
        if reason is not None:
            return None, self._reject(name, reason)
        if manifest.trust_region is None:  # once per version: a version is loaded once
            log.warning("model %s has no trust region (manifest version %s): it prices without one", name,
                        manifest.manifest_version)  # fmt: skip
        return ServedModel(name, model, _epoch_s(manifest.created), manifest.trust_region), None

    def _swap(self, candidate: ServedModel) -> str:
        old = self.current.version if self.current else None
        self.current = candidate  # one reference assignment
        self.loads += 1
        message = f"serving model {candidate.version} (was {old or 'none'})"
        log.info(message)
        return message

    @classmethod
    def serving(cls, served: ServedModel, *, spec: FeatureSpec = FEATURE_SPEC) -> "ModelWatcher":
        """A watcher that serves ``served`` and never reads a registry (offline evaluation, tests)."""
        watcher = cls(None, spec=spec)
        watcher.current = served
        return watcher

    def _reject(self, name: str, reason: str) -> str:
        self.rejected_total += name not in self.rejected  # a version (or "latest") counts once, as before the bound
        self.rejected[name] = reason
        while len(self.rejected) > MAX_REJECTED:
            self.rejected.popitem(last=False)
        message = f"rejected model version {name}: {reason}; still serving {self.current.version if self.current else 'the fallback'}"
        log.warning(message)
        return message


def _epoch_s(created: str) -> int:
    try:
        return int(dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp())
    except ValueError:
        return 0
