"""Scoring-stage benchmark: the engine's batched scoring against Beam, the per-event loop and model variants.

    .venv/bin/python benchmarks/scoring.py [--work DIR] [--model PATH] [--rows DIR]
        [--batch-sizes 64,256,1000,4096] [--seconds 1.5] [--threads 1] [--per-event 50]
        [--beam-requests 200000] [--beam-batch-sizes 256,1000] [--skip-beam] [--skip-variants]
        [--with-job [--job-requests 50000] [--job-repeat 2]]

Everything runs in one process, on the same requests (feature rows of a backfill) and the
same model (a SavedModel of the registry):

1. the scoring stage, features in, decisions out, as the pricing UDF runs it per Arrow batch:
   ``pricing_udfs.scoring.ScoringStage.decide`` (anchors, ``ModelPolicy`` with one
   ``model.score`` call over K candidates per row, the decision check, counts) plus the
   encoding (``pricing_udfs.udfs.encode_priced_events``), with the model and without one
   (every request priced by the fallback: the list price within the guardrails), at several
   batch sizes; ``decide`` and the model's ``score`` alone too;
   1b (``--with-job``): the whole job, with the model and with an empty registry, bounded,
   on ``benchmarks/feature_stage.py``'s load in a private broker (minutes, not seconds);
2. Beam ``RunInference`` with a ``ModelHandler`` over the same model, DirectRunner in this
   process, sustained rate from a full and a fifth-size run (start-up is left out), with
   Beam's batching and with elements that are already batches;
3. the seed's per-event approach: Keras ``model.predict`` per request with 16 candidates, on
   a Keras model around the SavedModel (``keras.layers.TFSMLayer``), briefly; and one
   signature call per request, for the overhead without Keras;
4. the SavedModel's ``serving_default`` against an XLA-compiled variant
   (``tf.function(jit_compile=True)`` around the signature), a dynamic-range quantized
   SavedModel (TensorFlow's quantizer, int8 weights) and TFLite with dynamic-range
   quantization (when this TensorFlow can run it; the script says why not), on the exact
   arrays the policy scores: requests/s, per-batch latency p50/p99, and whether the
   decisions match the plain SavedModel's (same argmax of ``(price - unit cost) * p`` over
   the same candidates per row; share of matching rows, max |probability difference|).

Then it checks the targets: the scoring stage adds at most 10% to the job's cost per event
(``--job-events-per-s`` and ``--job-requests-per-s`` set the job's rates; decoding per event
is measured here for comparison), and runs at least 1,000x the per-event loop.

Data: without ``--model``/``--rows`` it simulates ``--days`` of history, backfills it and
trains a model with the ``pricing`` command, caching each step in ``--work`` (a temporary
folder, removed at the end, when not given)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep its C++ logs out of the output

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pricing_udfs import serde, udfs
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model import FEATURES_KEY, OUTPUT_KEY, PRICES_KEY, SIGNATURE_NAME, TFDemandModel
from pricing_udfs.model.serving import ModelWatcher, ServedModel
from pricing_udfs.policy import ModelPolicy, PolicySettings
from pricing_udfs.scoring import ScoringConfig, ScoringStage
from pricing_udfs.serde import Contract

K = 16  # candidates per request, as the seed's loop and the policy's default grid
INFO_FILE = Path("assets.extra") / "demand_model.json"  # what TFDemandModel.load needs beside the graph


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# Data and model
# ----------------------------------------------------------------------------------------------
def _pricing(*args: str) -> None:
    """Run one ``pricing`` command in a child process (the same interpreter); its output is shown on failure."""
    cmd = [sys.executable, "-m", "pricing.cli", *args]
    log(f"  $ pricing {' '.join(args)}")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"pricing {args[0]} failed (exit {proc.returncode})")
    log(f"    done in {time.perf_counter() - t:.1f}s")


def _build(work: Path, *, days: int, scenario: str, need_model: bool) -> tuple[Path, Path | None]:
    """History -> backfilled rows -> trained registry in ``work``, each step skipped when cached."""
    history, rows, registry = work / "history", work / "rows", work / "registry"
    if not list(history.glob("*.avro")):
        _pricing("simulate", "history", "--scenario", scenario, "--days", str(days), "--out", str(history))
    if not list(rows.glob("*.parquet")):
        _pricing("backfill", "--history", str(history), "--out", str(rows), "--overwrite")
    if need_model and not (registry / "latest").is_file():
        _pricing("train", "--data", str(rows), "--registry", str(registry), "--promote")
    return rows, (registry if need_model else None)


def _registry_of(path: Path) -> Path | None:
    """The registry ``--model`` names, when it names one (a registry folder or one of its versions)."""
    if (path / "latest").is_file():
        return path
    if (path / "model" / "saved_model.pb").is_file() and path.parent.name == "versions":
        return path.parent.parent
    return None


def _resolve_model(path: Path) -> tuple[Path, str]:
    """A SavedModel folder, a registry version folder, or a registry (its ``latest``) -> (model dir, version)."""
    if (path / "saved_model.pb").is_file():
        return path, path.parent.name if path.name == "model" else path.name
    if (path / "model" / "saved_model.pb").is_file():
        return path / "model", path.name
    if (path / "latest").is_file():
        version = (path / "latest").read_text().strip()
        return path / "versions" / version / "model", version
    raise SystemExit(f"{path}: not a SavedModel, a registry version or a registry with 'latest'")


@dataclass
class Requests:
    """Feature rows of a backfill as price requests: the frame the policy takes, and the raw columns."""

    frame: pd.DataFrame  # REQUEST_COLUMNS + one column per feature
    features: np.ndarray  # [N, F] float64

    def batch(self, start: int, size: int) -> pd.DataFrame:
        return self.frame.iloc[start : start + size].reset_index(drop=True)


def _requests(rows_dir: Path, n: int, seed: int) -> Requests:
    table = pq.read_table(rows_dir)
    versions = set(table.column("feature_spec_version").unique().to_pylist())
    if versions != {FEATURE_SPEC.version}:
        raise SystemExit(f"{rows_dir}: rows of {sorted(versions)}, the code's spec is {FEATURE_SPEC.version}")
    pick = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=min(n, table.num_rows), replace=False))
    t = table.take(pick).to_pydict()
    features = np.asarray(t["features"], dtype=np.float64)
    request = {
        "request_id": pd.Series(t["request_id"], dtype=object),
        "user_id": pd.Series(t["user_id"], dtype=object),
        "product_id": pd.Series(t["product_id"], dtype=object),
        "channel": pd.Series(["web"] * len(pick), dtype=object),
        "event_time": pd.Series(t["event_time"], dtype=np.int64),
        "list_currency": pd.Series(t["currency"], dtype=object),
    }
    frame = udfs.request_batch({c: request[c] for c in udfs.REQUEST_COLUMNS}, pd.Series(list(features)), spec=FEATURE_SPEC)
    return Requests(frame=frame, features=features)


# ----------------------------------------------------------------------------------------------
# Policies
# ----------------------------------------------------------------------------------------------
class Recorder:
    """Wraps a model and keeps what the policy asks it to score, so the variants score the same arrays."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        self.calls.append((np.array(features, dtype=np.float64), np.array(prices, dtype=np.float64)))
        return self.model.score(features, prices)


def _stages(model: TFDemandModel, version: str, settings: PolicySettings) -> tuple[ScoringStage, ScoringStage]:
    """The job's scoring stage (``pricing_udfs.scoring.ScoringStage``, what the pricing UDF runs per worker)
    serving ``model``, and the same stage with no model: the job when the registry is empty, where every
    request gets the rule-based fallback (the list price within the guardrails), the list-price job."""
    config = ScoringConfig(registry_dir=None, device="cpu", policy=settings)
    watcher = ModelWatcher(None, device="cpu")
    watcher.current = ServedModel(version, model, 0)  # the loaded model, as the watcher holds it after open()
    with_model = ScoringStage(config, watcher=watcher)
    with_model.open()
    without = ScoringStage(config)
    without.open()
    return with_model, without


def _stage_call(stage: ScoringStage, batch: pd.DataFrame) -> pd.Series:
    """What the pricing UDF does per Arrow batch: the stage's checked decisions, encoded as PricedEvents."""
    decisions = stage.decide(batch)
    return udfs.encode_priced_events(batch, decisions, spec=FEATURE_SPEC, priced_time_ms=1_767_225_600_000)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Per-call wall times of one path; requests/s from the median call (robust on a shared machine)."""

    seconds: np.ndarray  # per call
    batch: int

    @property
    def rps(self) -> float:
        return self.batch / float(np.median(self.seconds))

    @property
    def us_per_request(self) -> float:
        return 1e6 / self.rps

    def ms(self, q: float) -> float:
        return float(np.percentile(self.seconds, q)) * 1e3


def measure(fn: Callable[[Any], Any], inputs: list[Any], batch: int, *, seconds: float, warmup: int | None = None,
            min_repeat: int = 5, max_repeat: int = 400) -> Timing:  # fmt: skip
    """Call ``fn`` on the inputs in turn: ``warmup`` calls (default: each input once, at least twice: XLA
    compiles per shape), then for about ``seconds`` (at least ``min_repeat`` calls)."""
    cycle = itertools.cycle(inputs)
    for _ in range(max(2, len(inputs)) if warmup is None else warmup):
        fn(next(cycle))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeat or (time.perf_counter() - start < seconds and len(times) < max_repeat):
        x = next(cycle)
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return Timing(np.asarray(times), batch)


def measure_interleaved(fns: dict[str, Callable[[Any], Any]], inputs: list[Any], batch: int, *, seconds: float,
                        max_rounds: int = 400) -> dict[str, Timing]:  # fmt: skip
    """Time several paths on the same inputs in rounds (each path once per round, the same input), so that
    a change in the machine's load hits all of them alike: about ``seconds`` per path, at least 5 rounds.
    Each path first runs once on every input (at least twice: XLA compiles per shape)."""
    for fn in fns.values():
        for x in itertools.islice(itertools.cycle(inputs), max(2, len(inputs))):
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    cycle = itertools.cycle(inputs)
    start = time.perf_counter()
    rounds = 0
    while rounds < 5 or (time.perf_counter() - start < seconds * len(fns) and rounds < max_rounds):
        x = next(cycle)
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return {name: Timing(np.asarray(v), batch) for name, v in times.items()}


@contextlib.contextmanager
def _quiet_stderr():  # noqa: ANN202
    """Silence native stderr (converter and quantizer dumps) for a block; Python errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# ----------------------------------------------------------------------------------------------
# Model variants (part 4)
# ----------------------------------------------------------------------------------------------
class XLAModel:
    """The serving signature inside ``tf.function(jit_compile=True)``: XLA compiles once per input shape."""

    def __init__(self, model: TFDemandModel) -> None:
        import tensorflow as tf

        serve = model._serve  # noqa: SLF001 - the loaded signature; the benchmark wraps it, the handler is unchanged
        self._tf = tf
        self._fn = tf.function(lambda f, p: serve(**{FEATURES_KEY: f, PRICES_KEY: p})[OUTPUT_KEY], jit_compile=True)
        self.compile_s: dict[tuple[int, int], float] = {}

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        shape = (features.shape[0], prices.shape[1])
        t = time.perf_counter()
        out = self._fn(self._tf.constant(features, self._tf.float64), self._tf.constant(prices, self._tf.float64)).numpy()
        if shape not in self.compile_s:
            self.compile_s[shape] = time.perf_counter() - t
        return out


def _quantized_savedmodel(src: Path, dst: Path) -> Path:
    """TensorFlow's post-training dynamic-range quantizer (int8 weights of the MatMuls it takes), as a
    SavedModel with the same signature; the model's info file is copied so ``TFDemandModel.load`` takes it."""
    import tensorflow as tf

    qm = tf.quantization.experimental.QuantizationMethod
    options = tf.quantization.experimental.QuantizationOptions(
        quantization_method=qm(preset_method=qm.PresetMethod.METHOD_DYNAMIC_RANGE_INT8),
        signature_keys=[SIGNATURE_NAME], tags={"serve"},
    )  # fmt: skip
    with _quiet_stderr():
        tf.quantization.experimental.quantize_saved_model(str(src), str(dst), quantization_options=options,
                                                          overwrite_output_directory=True)  # fmt: skip
    (dst / INFO_FILE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / INFO_FILE, dst / INFO_FILE)
    return dst


class TFLiteModel:
    """TFLite with dynamic-range quantization (``Optimize.DEFAULT``), through the signature runner, which
    resizes the inputs to each call's N and K (the signature keeps dynamic shapes)."""

    def __init__(self, blob: bytes, threads: int | None, how: str) -> None:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            self._interp = tf.lite.Interpreter(model_content=blob, num_threads=threads)
        self._run = self._interp.get_signature_runner(SIGNATURE_NAME)
        self.how = how
        self.size = len(blob)

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        return self._run(**{FEATURES_KEY: features, PRICES_KEY: prices})[OUTPUT_KEY]


def _tflite(src: Path, threads: int | None, probe: tuple[np.ndarray, np.ndarray]) -> tuple[TFLiteModel | None, str]:
    """Convert and load the TFLite variant; (None, why) when it does not convert or run here."""
    import tensorflow as tf

    def convert(select_ops: bool) -> bytes:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(src), signature_keys=[SIGNATURE_NAME])
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if select_ops:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
            conv._experimental_allow_all_select_tf_ops = True  # noqa: SLF001 - Log1p is not on the select-ops allow-list
        with _quiet_stderr():
            return conv.convert()

    def short(err: Exception) -> str:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip().startswith(("Custom ops:", "Flex ops:", "TF Select ops:"))]
        return "; ".join(lines) or str(err).splitlines()[0][:200]

    notes = []
    try:
        blob, how = convert(False), "TFLite builtins"
    except Exception as err:  # noqa: BLE001 - reported
        notes.append(f"builtins-only conversion fails ({short(err)}): the graph computes in float64, which TFLite builtins lack")
        try:
            blob, how = convert(True), "TFLite builtins + TF select ops"
        except Exception as err2:  # noqa: BLE001 - reported
            return None, "; ".join(notes + [f"with TF select ops it fails too: {short(err2)}"])
    try:
        model = TFLiteModel(blob, threads, how)
        model.score(*probe)
    except Exception as err:  # noqa: BLE001 - reported
        first = str(err).splitlines()[0][:160]
        return None, "; ".join(notes + [f"{how} converts ({len(blob):,} bytes) but this TensorFlow's interpreter cannot run it: {first}"])
    return model, "; ".join(notes + [f"{how}, {len(blob):,} bytes"])


def _decisions(probs: np.ndarray, prices: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The policy's choice per row: argmax of (price - unit cost) * p (the first on ties)."""
    return np.argmax((prices - cost[:, None]) * np.asarray(probs, dtype=np.float64), axis=1)


# ----------------------------------------------------------------------------------------------
# Beam RunInference (part 2)
# ----------------------------------------------------------------------------------------------
def _beam_module() -> Any:
    """This file as an importable module, so that Beam pickles the handler by reference: a class of
    ``__main__`` would be pickled by value, with the main module's globals."""
    if __name__ != "__main__":
        return sys.modules[__name__]
    import importlib

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    return importlib.import_module(Path(__file__).stem)


class DemandModelHandler(ModelHandler):
    """Beam's handler over the TF demand model: one ``score`` call per batch of (id, features, prices, ...)."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self._path, self._size = path, size

    def load_model(self) -> TFDemandModel:
        return TFDemandModel.load(self._path)

    def run_inference(self, batch, model, inference_args=None):  # noqa: ANN001, ANN201, ARG002
        probs = model.score(np.stack([e[1] for e in batch]), np.stack([e[2] for e in batch]))
        return [PredictionResult(e, p) for e, p in zip(batch, probs)]

    def get_num_bytes(self, batch) -> int:  # noqa: ANN001 - the default pickles every batch for a metric
        return sum(8 * (len(e[1]) + len(e[2])) for e in batch)

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": self._size, "max_batch_size": self._size}


@functools.cache
def _beam_source(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _emit_examples(start: int, path: str, chunk: int, total: int, as_batch: bool) -> Any:
    """Beam source step: the examples ``start .. start + chunk`` (ids wrap around the saved rows), as
    ``(id, features[F], prices[K], unit cost, the plain model's choice)``, one element each or, with
    ``as_batch``, one list. The rows come from a file, so neither ``Create``'s type inference nor the
    pipeline proto carries them."""
    d = _beam_source(path)
    n = len(d["choice"])
    rows = ((i, d["features"][i % n], d["prices"][i % n], float(d["cost"][i % n]), int(d["choice"][i % n]))
            for i in range(start, min(start + chunk, total)))  # fmt: skip
    if as_batch:
        yield list(rows)
    else:
        yield from rows


def _count_matching(r: Any) -> None:
    """Beam step after RunInference: count rows whose choice equals the plain model's."""
    import apache_beam as beam

    _, _, prices, cost, choice = r.example
    if int(np.argmax((prices - cost) * r.inference.astype(np.float64))) == choice:
        beam.metrics.Metrics.counter("scoring_bench", "matching").inc()


def _beam(model_dir: Path, source: Path, total: int, batch: int, *, check: bool = False,
          prebatched: bool = False) -> tuple[float, int]:  # fmt: skip
    """One DirectRunner pipeline in this process: source -> RunInference (batches of ``batch``).

    The source (``_emit_examples``) yields ``total`` examples from ``source`` (an .npz), one element per
    request; with ``prebatched`` it yields lists of ``batch`` examples and the handler skips Beam's
    batching (``ModelHandler.with_no_batching``), as a source of ready batches (Arrow) would. Timed runs end at RunInference; with ``check`` a step after it
    counts the rows whose choice (argmax of ``(price - cost) * p``) equals the plain model's, read back from
    Beam's metrics. Returns the pipeline's wall time (start-up included) and, with ``check``, that count.
    """
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    mod = _beam_module()
    options = PipelineOptions(flags=[], runner="DirectRunner", direct_num_workers=1, direct_running_mode="in_memory")
    t = time.perf_counter()
    p = beam.Pipeline(options=options)
    chunk = batch if prebatched else 1_000
    examples = (p | beam.Create(list(range(0, total, chunk)), reshuffle=False)
                  | beam.FlatMap(mod._emit_examples, str(source), chunk, total, prebatched).with_output_types(Any))  # noqa: SLF001  # fmt: skip
    handler = mod.DemandModelHandler(str(model_dir), batch)
    scored = examples | RunInference(handler.with_no_batching() if prebatched else handler)
    if check:
        _ = scored | beam.Map(mod._count_matching)  # noqa: SLF001
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - t
    if not check:
        return seconds, 0
    counters = result.metrics().query(MetricsFilter().with_name("matching"))["counters"]
    return seconds, int(sum(c.committed or 0 for c in counters))


# ----------------------------------------------------------------------------------------------
# The seed's per-event loop (part 3)
# ----------------------------------------------------------------------------------------------
def _keras_per_event(model_dir: Path, n_features: int) -> Any:
    """A Keras model around the SavedModel's signature (``keras.layers.TFSMLayer``), for ``model.predict``."""
    import keras

    class SignatureLayer(keras.layers.TFSMLayer):
        # The signature takes two keyword tensors; TFSMLayer's own call passes one positional input.
        def call(self, inputs, training=False):  # noqa: ANN001, ANN201, ARG002
            return self.call_endpoint_fn(**{FEATURES_KEY: inputs[0], PRICES_KEY: inputs[1]})[OUTPUT_KEY]

    layer = SignatureLayer(str(model_dir), call_endpoint=SIGNATURE_NAME, dtype="float64")  # float32 would cast the inputs
    f_in = keras.Input((n_features,), dtype="float64")
    p_in = keras.Input((K,), dtype="float64")
    return keras.Model([f_in, p_in], layer([f_in, p_in]))


# ----------------------------------------------------------------------------------------------
# Part 1b: the whole job
# ----------------------------------------------------------------------------------------------
def _catalogue(settings: Any, n_products: int = 2_000, seed: int = 3) -> int:
    """A list price and a unit cost for each of the harness's products, one minute before its load starts,
    as a shop's catalogue would have them: without, most early requests lack one and get the fallback."""
    from confluent_kafka import Producer

    rng = np.random.default_rng(seed)
    producer = Producer(settings.kafka.client_config() | {"linger.ms": 50})
    t0 = 1_767_225_600_000 - 60_000  # feature_stage._load starts at 1_767_225_600_000
    topic = settings.kafka.topics.market.name
    for i in range(n_products):
        price = int(rng.integers(500, 5_000))
        for j, (kind, value) in enumerate((("list_price", price), ("cost", int(price * rng.uniform(0.4, 0.7))))):
            ts = t0 + 2 * i + j
            rec = {"product_id": f"p{i}", "kind": kind, "competitor_id": None, "value": value, "currency": "EUR",
                   "event_time": ts}  # fmt: skip
            producer.produce(topic, serde.encode(Contract.MARKET_EVENT, rec), key=f"p{i}".encode(), timestamp=ts)
    producer.flush()
    return 2 * n_products


def _job(args: argparse.Namespace, registry: Path | None, version: str) -> list[str]:
    """Part 1b: the whole job (``jobs.pricing_job.build``: decode, features, scoring stage, Kafka sinks) with
    the model against the list-price job (the same job with an empty registry: every request gets the
    fallback price), bounded, on ``benchmarks/feature_stage.py``'s load in a private broker. Each job runs
    over the full load and its first fifth; sustained = extra events (requests) / extra seconds."""
    if registry is None:
        return ["not measured: --model is not a registry (the job loads its model from one)"]
    import uuid

    from confluent_kafka import Consumer

    from jobs import pricing_job
    from pricing.broker import LocalBroker, free_port
    from pricing.config import load_settings
    from pricing.jars import PROJECT_ROOT
    from pricing.topics import create_topics

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import feature_stage  # noqa: PLC0415 - the harness beside this file

    sizes = {"full": args.job_requests, "fifth": args.job_requests // 5}
    modes = ("list-price", "model")
    seconds: dict[tuple[str, str], list[float]] = {(m, z): [] for m in modes for z in sizes}
    events: dict[str, int] = {}
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scoring-job-") as tmp:
        state = Path(tmp)
        (state / "jars").symlink_to(PROJECT_ROOT / ".pricing" / "jars")
        (state / "empty-registry").mkdir()
        broker = LocalBroker(state_dir=state, port=free_port(), die_with_parent=True)
        broker.start(fresh=True)
        try:
            job = {"bounded": True, "delivery_guarantee": "at-least-once", "startup_mode": "earliest-offset",
                   "watermark_out_of_orderness_ms": 5_000, "python_bundle_size": args.job_batch,
                   "python_bundle_time_ms": 1_000, "restart_attempts": 0}  # fmt: skip
            settings: dict[tuple[str, str], Any] = {}
            for size, requests in sizes.items():
                for mode in modes:
                    topics = {key: {"name": f"{key}-{size}", "partitions": 2}
                              for key in ("behaviour", "market", "requests", "dead_letters")}  # fmt: skip
                    topics["priced"] = {"name": f"priced-{size}-{mode}", "partitions": 2}
                    reg = registry if mode == "model" else state / "empty-registry"
                    settings[mode, size] = load_settings(
                        state_dir=state, job=job, kafka={"bootstrap_servers": broker.bootstrap, "topics": topics},
                        models={"registry_dir": str(reg), "version": version, "device": "cpu"},
                        policy={"grid_size": K},
                    )  # fmt: skip
                    create_topics(settings[mode, size].kafka)
                t = time.perf_counter()
                catalogue = _catalogue(settings["model", size])
                events[size] = catalogue + feature_stage._load(settings["model", size], requests=requests,  # noqa: SLF001
                                                               hours=6 * requests / args.job_requests, popularity=0.8)  # fmt: skip
                log(f"  loaded {events[size]:,} events ({requests:,} requests) in {time.perf_counter() - t:.1f}s")
            warm = settings["list-price", "fifth"]
            warm = warm.model_copy(update={"job": warm.job.model_copy(update={"consumer_group": uuid.uuid4().hex})})
            t = time.perf_counter()
            pricing_job.build(pricing_job.create_table_env(warm), warm).execute().wait()
            log(f"  warm-up job (not counted) {time.perf_counter() - t:6.1f}s")
            for _ in range(args.job_repeat):
                for mode in modes:
                    for size in sizes:
                        base = settings[mode, size]
                        s = base.model_copy(update={"job": base.job.model_copy(update={"consumer_group": uuid.uuid4().hex})})
                        t = time.perf_counter()
                        pricing_job.build(pricing_job.create_table_env(s), s).execute().wait()
                        seconds[mode, size].append(time.perf_counter() - t)
                        log(f"  {mode:10} {size:5} {seconds[mode, size][-1]:6.1f}s")
            # Which version priced the model job's answers (a model that failed to load would price by fallback).
            consumer = Consumer(settings["model", "fifth"].kafka.client_config()
                                | {"group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})  # fmt: skip
            consumer.subscribe([settings["model", "fifth"].kafka.topics.priced.name])
            served: dict[str, int] = {}
            reasons: dict[str, int] = {}
            deadline = time.time() + 20
            while sum(served.values()) < sizes["fifth"] and time.time() < deadline:
                msg = consumer.poll(1.0)
                if msg is None or msg.error():
                    continue
                rec = serde.decode(Contract.PRICED_EVENT, msg.value())
                if rec.ok:
                    served[rec.record["model_version"]] = served.get(rec.record["model_version"], 0) + 1
                    if rec.record["fallback_used"]:
                        why = ",".join(rec.record["reason_codes"][:2])
                        reasons[why] = reasons.get(why, 0) + 1
            consumer.close()
        finally:
            broker.stop()
    best = {k: min(v) for k, v in seconds.items()}
    d_events = events["full"] - events["fifth"]
    d_requests = sizes["full"] - sizes["fifth"]
    rows = ["| job | sustained events/s | sustained priced requests/s | events/s with fixed costs | runs (s), full / fifth |",
            "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    rate = {}
    for mode in modes:
        dt = best[mode, "full"] - best[mode, "fifth"]
        if dt < 1.0:
            log(f"  warning: {mode}: the full load took only {dt:.1f}s more than its fifth; raise --job-requests")
        dt = max(dt, 1e-9)
        rate[mode] = d_events / dt
        runs = " / ".join(", ".join(f"{x:.1f}" for x in seconds[mode, z]) for z in sizes)
        rows.append(f"| {mode} | {d_events / dt:,.0f} | {d_requests / dt:,.0f} | {events['full'] / best[mode, 'full']:,.0f} | {runs} |")
    per_repeat = [
        (seconds["list-price", "full"][i] - seconds["list-price", "fifth"][i])
        / max(seconds["model", "full"][i] - seconds["model", "fifth"][i], 1e-9)
        for i in range(args.job_repeat)
    ]
    total = sum(served.values())
    out += rows + ["", f"Ratio model / list-price job, sustained, best of {args.job_repeat}: "
                       f"{rate['model'] / rate['list-price']:.2f} (per repeat: {', '.join(f'{r:.2f}' for r in per_repeat)}); "
                       f"the model job's answers read back: {total:,}, by model version: "
                       + ", ".join(f"{v} {n / max(total, 1):.1%}" for v, n in sorted(served.items()))
                       + "; fallbacks by first reason codes: "
                       + (", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none")]  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------
def _fmt_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> None:  # noqa: C901, PLR0912, PLR0915 - one benchmark, top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))  # fmt: skip
    parser.add_argument("--work", type=Path, help="cache for history, rows and model (default: a temporary folder)")
    parser.add_argument("--model", type=Path, help="SavedModel, registry version or registry (skips training)")
    parser.add_argument("--rows", type=Path, help="backfill Parquet folder to take requests from (skips the backfill)")
    parser.add_argument("--days", type=int, default=2, help="days of simulated history to build (default 2)")
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--requests", type=int, default=20_000, help="requests sampled from the rows (default 20000)")
    parser.add_argument("--batch-sizes", default="64,256,1000,4096")
    parser.add_argument("--job-batch", type=int, default=1000,
                        help="the batch size the targets are judged at (the job's python_bundle_size default)")
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement (default 1.5)")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra- and inter-op threads; 0: TF's default")
    parser.add_argument("--per-event", type=int, default=50, help="requests for the per-event Keras loop")
    parser.add_argument("--beam-requests", type=int, default=200_000, help="requests per Beam run (and a fifth of it)")
    parser.add_argument("--beam-batch-sizes", default="256,1000")
    parser.add_argument("--beam-repeat", type=int, default=2, help="runs per Beam load; the fastest counts")
    parser.add_argument("--skip-beam", action="store_true")
    parser.add_argument("--skip-variants", action="store_true")
    parser.add_argument("--job-events-per-s", type=float, default=24_000, help="the job's events/s, for the 10%% target")
    parser.add_argument("--job-requests-per-s", type=float, default=2_000, help="of which priced requests/s")
    parser.add_argument("--with-job", action="store_true",
                        help="part 1b: also run the whole job with the model and without (private broker; minutes)")
    parser.add_argument("--job-requests", type=int, default=50_000, help="part 1b load (x12 events; and a fifth)")
    parser.add_argument("--job-repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    beam_sizes = [int(s) for s in args.beam_batch_sizes.split(",")]
    if args.job_batch not in sizes:
        sizes = sorted({*sizes, args.job_batch})

    tmp = None
    work = args.work
    if work is None and (args.model is None or args.rows is None):
        tmp = tempfile.TemporaryDirectory(prefix="scoring-bench-")
        work = Path(tmp.name)
    try:
        with tempfile.TemporaryDirectory(prefix="scoring-scratch-") as scratch:  # quantized model, Beam's input
            _run(args, work, Path(scratch), sizes, beam_sizes)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(args: argparse.Namespace, work: Path | None, scratch: Path, sizes: list[int], beam_sizes: list[int]) -> None:  # noqa: C901, PLR0912, PLR0915
    t_all = time.perf_counter()
    log("== data and model")
    rows_dir, registry = args.rows, None
    if rows_dir is None or args.model is None:
        assert work is not None
        work.mkdir(parents=True, exist_ok=True)
        built_rows, registry = _build(work, days=args.days, scenario=args.scenario, need_model=args.model is None)
        rows_dir = rows_dir or built_rows
    model_dir, version = _resolve_model(args.model or registry)
    reqs = _requests(rows_dir, max(args.requests, 2 * max(sizes)), args.seed)
    log(f"  {len(reqs.frame):,} requests sampled from {rows_dir.name}/, model version {version}")

    import tensorflow as tf

    if args.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    threads = f"{args.threads} intra-op + {args.threads} inter-op thread(s)" if args.threads > 0 else "TF's default threads"
    log(f"  TensorFlow {tf.__version__}, {threads}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    plain = TFDemandModel.load(model_dir)
    if plain.n_features != reqs.features.shape[1]:
        raise SystemExit(f"model takes {plain.n_features} features, rows have {reqs.features.shape[1]}")

    settings = PolicySettings(grid_size=K)
    rec = Recorder(plain)
    recording_policy = ModelPolicy.create(rec, version, settings, default_price_minor=1_999, currency="EUR")
    stage_model, stage_list = _stages(plain, version, settings)
    log(f"  scoring stage: ScoringStage with ModelPolicy (grid {K}, default guardrails) vs the same stage without a model")
    cost_idx = FEATURE_SPEC.index("unit_cost_minor")

    # Inputs per batch size: a few distinct batches, and the arrays the policy hands the model for each.
    batches: dict[int, list[pd.DataFrame]] = {}
    arrays: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for b in sizes:
        n = max(1, min(4, len(reqs.frame) // b))
        batches[b] = [reqs.batch(i * b, b) for i in range(n)]
        arrays[b] = []
        for batch in batches[b]:
            rec.calls.clear()
            recording_policy.decide(batch)
            arrays[b].extend(rec.calls)
    scored_share = np.mean([a[0].shape[0] / b for b in sizes for a in arrays[b]])
    log(f"  {scored_share:.0%} of requests have a list price and a unit cost and are scored by the model")

    results: list[tuple[str, str, Timing | None, str]] = []  # (path, batch label, timing, note)
    notes: list[str] = []

    # ---- part 3 first: the reference for the ratios --------------------------------------------
    log(f"== per-event loop: Keras model.predict per request, {K} candidates, {args.per_event} requests")
    f1, p1 = arrays[args.job_batch][0]
    keras_model = _keras_per_event(model_dir, plain.n_features)
    singles = [(f1[i : i + 1], p1[i : i + 1]) for i in range(min(args.per_event, len(f1)))]
    loop = measure(lambda x: keras_model.predict([x[0], x[1]], verbose=0), singles, 1, seconds=0,
                   min_repeat=len(singles), warmup=2)  # fmt: skip
    keras_probs = np.concatenate([keras_model.predict([f, p], verbose=0) for f, p in singles[:20]])
    sig = measure(lambda x: plain.score(*x), singles, 1, seconds=args.seconds, min_repeat=len(singles))
    results.append(("per-event loop: Keras `model.predict` (TFSMLayer), 1 request per call", "1", loop, ""))
    results.append(("per-event loop: one signature call per request", "1", sig, ""))
    log(f"  keras predict {loop.rps:,.1f} req/s, signature call {sig.rps:,.0f} req/s")
    ref_probs = plain.score(np.concatenate([s[0] for s in singles[:20]]), np.concatenate([s[1] for s in singles[:20]]))
    keras_dp = float(np.max(np.abs(keras_probs - ref_probs)))

    # ---- part 4: variants on the policy's arrays ------------------------------------------------
    variants: dict[str, Any] = {"plain SavedModel (`serving_default`)": plain}
    if not args.skip_variants:
        log("== variants: XLA, dynamic-range quantized SavedModel, TFLite")
        t = time.perf_counter()
        variants["XLA (`tf.function(jit_compile=True)` around the signature)"] = XLAModel(plain)
        qdir = _quantized_savedmodel(model_dir, scratch / "quantized")
        variants["quantized SavedModel (TF dynamic-range int8 weights)"] = TFDemandModel.load(qdir)
        log(f"  quantized SavedModel built in {time.perf_counter() - t:.1f}s")
        lite, why = _tflite(model_dir, args.threads or None, arrays[sizes[0]][0])
        notes.append(f"TFLite (`TFLiteConverter.from_saved_model`, `Optimize.DEFAULT`): {why}.")
        log(f"  TFLite: {why}")
        if lite is not None:
            variants[f"TFLite dynamic-range ({lite.how})"] = lite

    timings: dict[tuple[str, int], Timing] = {}
    match: dict[tuple[str, int], tuple[float, float]] = {}
    for b in sizes:
        fns = {name: (lambda x, m=model: m.score(*x)) for name, model in variants.items()}
        timings.update({(name, b): t for name, t in measure_interleaved(fns, arrays[b], b, seconds=args.seconds).items()})
        for name, model in variants.items():
            if name.startswith("plain"):
                continue
            same, dp, total = 0, 0.0, 0
            for f, p in arrays[b]:
                base, other = plain.score(f, p), np.asarray(model.score(f, p))
                cost = f[:, cost_idx]
                same += int(np.sum(_decisions(base, p, cost) == _decisions(other, p, cost)))
                total += len(f)
                dp = max(dp, float(np.max(np.abs(base.astype(np.float64) - other))))
            match[name, b] = (same / total, dp)
        log(f"  batch {b}: " + ", ".join(f"{n.split(' (')[0]} {timings[n, b].rps:,.0f} req/s" for n in variants))
    xla = next((m for n, m in variants.items() if n.startswith("XLA")), None)
    if xla is not None:
        notes.append("XLA compiles once per input shape (N, K): first calls took "
                     + ", ".join(f"{s[0]}x{s[1]}: {v:.2f}s" for s, v in sorted(xla.compile_s.items()))
                     + "; the job's batches vary in size, so it would recompile unless batches are padded to fixed sizes.")  # fmt: skip

    # ---- part 1: the scoring stage ------------------------------------------------------------
    log("== scoring stage: decide + encode, with the model vs without (list price within the guardrails)")
    stage: dict[tuple[str, int], Timing] = {}
    for b in sizes:
        fns = {"model": lambda x: _stage_call(stage_model, x), "list": lambda x: _stage_call(stage_list, x),
               "decide": stage_model.decide, "decide-list": stage_list.decide}  # fmt: skip
        stage.update({(k, b): t for k, t in measure_interleaved(fns, batches[b], b, seconds=args.seconds).items()})
        log(f"  batch {b}: model stage {stage['model', b].rps:,.0f} req/s, list-price stage "
            f"{stage['list', b].rps:,.0f} req/s; decide alone {stage['decide', b].rps:,.0f} / "
            f"{stage['decide-list', b].rps:,.0f} req/s")
    fallback_share = stage_model.counts["fallbacks"] / max(stage_model.counts["requests_priced"], 1)

    # Decode per event, for the job's cost per event (price requests, the job's decoder on Arrow-sized batches).
    b = args.job_batch
    frame = reqs.batch(0, b)
    raw = pd.Series([serde.encode(Contract.PRICE_REQUEST, {"request_id": r.request_id, "user_id": r.user_id,
                                                            "product_id": r.product_id, "channel": "web",
                                                            "event_time": int(r.event_time)})
                     for r in frame.itertuples()])  # fmt: skip
    ts = pd.Series(pd.to_datetime(frame["event_time"], unit="ms", utc=True))
    meta = {"topics": pd.Series(["requests"] * b), "partitions": pd.Series([0] * b), "offsets": pd.Series(range(b)),
            "timestamps": ts}  # fmt: skip
    decode = measure(lambda _: udfs.decode_batch(Contract.PRICE_REQUEST, raw, **meta), [None], b, seconds=args.seconds)

    # ---- part 2: Beam RunInference ------------------------------------------------------------
    beam_rows: list[tuple[int, bool, float, float, float]] = []  # batch, pre-batched, full s, sustained, match
    if not args.skip_beam:
        log(f"== Beam RunInference, DirectRunner in-process, {args.beam_requests:,} and {args.beam_requests // 5:,} requests")
        f_all = np.concatenate([a[0] for a in arrays[max(sizes)]] + [a[0] for a in arrays[args.job_batch]])
        p_all = np.concatenate([a[1] for a in arrays[max(sizes)]] + [a[1] for a in arrays[args.job_batch]])
        cost_all = f_all[:, cost_idx]
        choice = _decisions(plain.score(f_all, p_all), p_all, cost_all)
        source = scratch / "beam-examples.npz"
        np.savez(source, features=f_all, prices=p_all, cost=cost_all, choice=choice)
        n_check = min(4096, args.beam_requests)
        for bb in beam_sizes:
            for pre in (False, True):
                full = min(_beam(model_dir, source, args.beam_requests, bb, prebatched=pre)[0] for _ in range(args.beam_repeat))
                fifth = min(_beam(model_dir, source, args.beam_requests // 5, bb, prebatched=pre)[0]
                            for _ in range(args.beam_repeat))  # fmt: skip
                _, matching = _beam(model_dir, source, n_check, bb, check=True, prebatched=pre)
                if full - fifth < 0.5:
                    log(f"  warning: the full Beam load took only {full - fifth:.1f}s more than its fifth; raise --beam-requests")
                sustained = (args.beam_requests - args.beam_requests // 5) / max(full - fifth, 1e-9)
                same = matching / n_check
                beam_rows.append((bb, pre, full, sustained, same))
                log(f"  batch {bb}{', pre-batched' if pre else ''}: best of {args.beam_repeat}: full {full:.1f}s, "
                    f"fifth {fifth:.1f}s, sustained {sustained:,.0f} req/s, with start-up "
                    f"{args.beam_requests / full:,.0f} req/s; decisions match {same:.2%} of {n_check:,}")

    job_lines: list[str] = []
    if args.with_job:  # last: a local Flink job's Python worker takes over Beam's ParDo handler in this process
        log(f"== whole job (part 1b): {args.job_requests:,} requests x {args.job_repeat} repeats, model vs list price")
        job_lines = _job(args, registry if args.model is None else _registry_of(args.model), version)

    # ---- report -------------------------------------------------------------------------------
    seed_rps = loop.rps
    plain_name = next(iter(variants))

    def ratios(t: Timing, b: int) -> list[str]:
        vs_plain = t.rps / timings[plain_name, b].rps if (plain_name, b) in timings else float("nan")
        return [f"{t.rps / seed_rps:,.0f}x", f"{vs_plain:.2f}" if np.isfinite(vs_plain) else ""]

    lines = ["", f"Requests/s and per-batch latency (K = {K} candidates per request; {threads}; requests/s and "
                 f"µs/request from the median call; p50/p99 over the repeats of each row; the paths of one "
                 f"group and batch size ran interleaved)", ""]  # fmt: skip
    head = ["path", "batch", "requests/s", "p50 ms", "p99 ms", "µs/request", "repeats", "x per-event loop", "x plain SavedModel"]
    lines += [_fmt_row(head), _fmt_row(["---"] + ["---:"] * (len(head) - 1))]
    for name, bl, t, _ in results:
        lines.append(_fmt_row([name, bl, f"{t.rps:,.1f}", f"{t.ms(50):.2f}", f"{t.ms(99):.2f}", f"{t.us_per_request:,.1f}",
                               str(len(t.seconds)), f"{t.rps / seed_rps:,.1f}x", ""]))  # fmt: skip
    for name in variants:
        for b in sizes:
            t = timings[name, b]
            lines.append(_fmt_row([f"model only: {name}", str(b), f"{t.rps:,.0f}", f"{t.ms(50):.2f}", f"{t.ms(99):.2f}",
                                   f"{t.us_per_request:.2f}", str(len(t.seconds)), *ratios(t, b)]))  # fmt: skip
    for key, label in (("decide", "`ScoringStage.decide` with the model"),
                       ("decide-list", "`ScoringStage.decide` without a model (list price)"),
                       ("model", "scoring stage with the model: `decide` + encode"),
                       ("list", "list-price stage (no model): `decide` + encode")):  # fmt: skip
        for b in sizes:
            t = stage[key, b]
            lines.append(_fmt_row([label, str(b), f"{t.rps:,.0f}", f"{t.ms(50):.2f}", f"{t.ms(99):.2f}",
                                   f"{t.us_per_request:.2f}", str(len(t.seconds)), *ratios(t, b)]))  # fmt: skip
    for bb, pre, full, sustained, _ in beam_rows:
        per_batch = bb / sustained * 1e3
        vs_plain = sustained / timings[plain_name, bb].rps if (plain_name, bb) in timings else float("nan")
        how = "elements pre-batched, `with_no_batching`" if pre else "one element per request, Beam batches"
        lines.append(_fmt_row([f"Beam RunInference, {how} (sustained; {args.beam_requests / full:,.0f} req/s with start-up)",
                               str(bb), f"{sustained:,.0f}", f"{per_batch:.2f} (mean)", "", f"{1e6 / sustained:.2f}",
                               f"best of {args.beam_repeat} per load", f"{sustained / seed_rps:,.0f}x",
                               f"{vs_plain:.3f}" if np.isfinite(vs_plain) else ""]))  # fmt: skip
    lines += ["", "Decisions against the plain SavedModel (same candidates; argmax of (price - unit cost) * p per row)", ""]
    lines += [_fmt_row(["variant", "batch", "matching decisions", "max |p difference|"]), _fmt_row(["---", "---:", "---:", "---:"])]
    for (name, b), (share, dp) in match.items():
        lines.append(_fmt_row([name, str(b), f"{share:.4%}", f"{dp:.2e}"]))
    lines.append(_fmt_row(["per-event Keras `model.predict`", "1", "", f"{keras_dp:.2e} (20 requests)"]))
    for bb, pre, _, _, same in beam_rows:
        lines.append(_fmt_row([f"Beam RunInference{' (pre-batched)' if pre else ''}", str(bb), f"{same:.4%}", ""]))

    # Fastest variant with matching decisions, judged at the job's batch size.
    jb = args.job_batch
    ok = [n for n in variants if n == plain_name or match.get((n, jb), (0.0, 0.0))[0] == 1.0
          and all(match[n, b][0] == 1.0 for b in sizes)]  # fmt: skip
    best = max(ok, key=lambda n: timings[n, jb].rps)
    fastest = max(variants, key=lambda n: timings[n, jb].rps)
    by_size = ", ".join(f"{b}: {timings[best, b].rps / timings[plain_name, b].rps:.2f}" for b in sizes)
    lines += ["", f"Fastest variant at batch {jb}: {fastest} ({timings[fastest, jb].rps:,.0f} req/s); "
                  f"fastest whose decisions all match: **{best}** ({timings[best, jb].rps:,.0f} req/s; "
                  f"x plain SavedModel by batch size: {by_size})."]  # fmt: skip

    # Targets.
    per_event_budget_us = 1e6 / args.job_events_per_s
    events_per_request = args.job_events_per_s / args.job_requests_per_s
    def added(b: int) -> tuple[float, float, float]:
        """Scoring's added µs per request at batch ``b``: from the whole stage (decide + encode), from
        ``decide`` alone (the encoding is the same work either way; less noise), and the larger of the two."""
        whole = stage["model", b].us_per_request - stage["list", b].us_per_request
        decide = stage["decide", b].us_per_request - stage["decide-list", b].us_per_request
        return whole, decide, max(whole, decide)

    whole_us, decide_us, added_us = added(jb)
    added_per_event = added_us / events_per_request
    share = added_per_event / per_event_budget_us
    allowed = 0.1 * per_event_budget_us * events_per_request
    speedup = stage["model", jb].rps / seed_rps
    lines += ["", "Targets (at the job's batch size, "
              f"{jb}; job at {args.job_events_per_s:,.0f} events/s with {args.job_requests_per_s:,.0f} priced requests/s, "
              f"i.e. {per_event_budget_us:.1f} µs per event and {events_per_request:.0f} events per request):", "",
              f"- scoring adds {added_us:.1f} µs per request, the larger of two estimates: the whole stage "
              f"{whole_us:.1f} µs (with the model {stage['model', jb].us_per_request:.1f} µs - without "
              f"{stage['list', jb].us_per_request:.1f} µs) and `decide` alone {decide_us:.1f} µs "
              f"({stage['decide', jb].us_per_request:.1f} - {stage['decide-list', jb].us_per_request:.1f} µs; "
              f"the model call itself {timings[plain_name, jb].us_per_request:.2f} µs); that is {added_per_event:.2f} µs "
              f"per event = {share:.1%} of the job's cost per event (target <= 10%, i.e. <= {allowed:.0f} µs per "
              f"request): **{'met' if share <= 0.1 else 'missed'}**;",
              f"- for comparison, measured here per event: decoding a price request {decode.us_per_request:.1f} µs, "
              f"the list-price stage (decide + encode) {stage['list', jb].us_per_request:.1f} µs per request;",
              f"- scoring stage {stage['model', jb].rps:,.0f} req/s = {speedup:,.0f}x the per-event Keras loop "
              f"({seed_rps:.1f} req/s) (target >= 1,000x): **{'met' if speedup >= 1000 else 'missed'}**.",
              ]  # fmt: skip
    if job_lines:
        lines += ["", f"Whole job (part 1b; feature_stage.py's load, {args.job_requests:,} requests and a fifth, "
                      f"bounded, parallelism 1, at-least-once, Python bundle {args.job_batch}):", ""] + job_lines
    lines += ["", "Scoring's added cost by batch size (with the model minus without; judged on the larger estimate):", "",
              _fmt_row(["batch", "whole stage µs/request", "`decide` µs/request", "added µs/event",
                        "share of job cost per event", "<= 10%", "stage x per-event loop", ">= 1,000x"]),
              _fmt_row(["---:", "---:", "---:", "---:", "---:", "---", "---:", "---"])]  # fmt: skip
    for b in sizes:
        w, d, add = added(b)
        sh = add / events_per_request / per_event_budget_us
        x = stage["model", b].rps / seed_rps
        lines.append(_fmt_row([str(b), f"{w:.1f}", f"{d:.1f}", f"{add / events_per_request:.2f}", f"{sh:.1%}",
                               "met" if sh <= 0.1 else "missed", f"{x:,.0f}x", "met" if x >= 1000 else "missed"]))
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines.append(f"- {scored_share:.0%} of the sampled requests had a list price and a unit cost and were scored; "
                 f"in the stage with the model, {fallback_share:.1%} of decisions were fallbacks.")
    log("\n".join(lines))
    log(f"\ntotal {time.perf_counter() - t_all:.0f}s; load average at the end {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
