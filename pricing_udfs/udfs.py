"""Flink SQL adapters: thin vectorized (pandas/Arrow) UDFs around serde and the scoring stage.

Every function here works on whole Arrow batches: one Python call per batch, not
per row. The decoders and encoders hold no state; the pricing UDF's stage holds its model
and per-product anchors (``pricing_udfs.scoring`` says what a restart does to them). What
Flink replays after a restart is decoded and priced again.

Bad input is data: the decoders return ``ok = FALSE`` with an error kind and
message instead of raising, and the job routes those rows to the dead-letter topic.
"""

from __future__ import annotations

import hashlib
import time
from functools import cache
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import ScalarFunction, udf

from pricing_udfs import serde
from pricing_udfs.avro_columns import encode_columns
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.policy import Policy, check_decisions
from pricing_udfs.policy.guardrails import LIMITS, NO_PRICE_POINT
from pricing_udfs.policy.trust_region import TRUST_CODES
from pricing_udfs.privacy import USER_FIELDS, PrivacyConfig, Pseudonymiser, digest_token, read_digest_token
from pricing_udfs.recommend.stage import (REASON_SEPARATOR, CandidateConfig, CandidateStage, RecommendConfig,
                                          RecommendStage, encode_recommendations, slate_frame)  # fmt: skip
from pricing_udfs.scoring import ScoringConfig, ScoringStage
from pricing_udfs.serde import Contract

_STATUS = [
    DataTypes.FIELD("ok", DataTypes.BOOLEAN()),
    DataTypes.FIELD("error_kind", DataTypes.STRING()),
    DataTypes.FIELD("error_message", DataTypes.STRING()),
    # Where the record came from, and its bytes when a dead letter may need them (rejected
    # rows, and every row of a decoder with ``keep_raw``), so the dead-letter branches need
    # nothing else from the source.
    DataTypes.FIELD("source_topic", DataTypes.STRING()),
    DataTypes.FIELD("source_partition", DataTypes.INT()),
    DataTypes.FIELD("source_offset", DataTypes.BIGINT()),
    DataTypes.FIELD("raw_value", DataTypes.BYTES()),
    # The Kafka record timestamp (epoch ms): a dead letter's record_time without reading the source's
    # rowtime column, which arrival mode's priced branch does not read (one shared decoder, see jobs.pricing_job).
    DataTypes.FIELD("record_time", DataTypes.BIGINT()),
]
# Avro type -> Flink type of a decoded column (timestamps arrive as epoch millis).
_FLINK_TYPES = {"string": DataTypes.STRING, "long": DataTypes.BIGINT, "int": DataTypes.INT,
                "boolean": DataTypes.BOOLEAN, "double": DataTypes.DOUBLE, "enum": DataTypes.STRING}


@cache
def _fields(contract: Contract) -> list[tuple[str, Any]]:
    """Decoded columns of a contract, derived from its schema: (name, Flink type), in schema order."""
    out = []
    for field in serde.published_schema(contract)["fields"]:
        avro = field["type"]
        if isinstance(avro, list):  # ["null", T]: nullable T
            avro = next(a for a in avro if a != "null")
        name = avro["type"] if isinstance(avro, dict) else avro
        if name == "array" and avro["items"] in _FLINK_TYPES:
            out.append((field["name"], DataTypes.ARRAY(_FLINK_TYPES[avro["items"]]())))
            continue
        if name == "map":  # free-form attributes (the catalogue's): not used by the job, not decoded
            continue
        if name not in _FLINK_TYPES:
            raise TypeError(f"{contract.value}.{field['name']}: no Flink column type for Avro {avro!r}")
        out.append((field["name"], _FLINK_TYPES[name]()))
    return out


def decoded_field_names(contract: Contract) -> list[str]:
    """Names of the decoder's ROW fields, for SQL projections (Flink SQL has no ``row.*``)."""
    return [f.name for f in decoded_type(contract).fields]


def decoded_type(contract: Contract) -> Any:
    """The Flink ROW type a decoder returns: status fields, then the record's fields."""
    return DataTypes.ROW(_STATUS + [DataTypes.FIELD(n, t) for n, t in _fields(contract)])


def decode_batch(
    contract: Contract,
    values: pd.Series,
    *,
    topics: pd.Series,
    partitions: pd.Series,
    offsets: pd.Series,
    timestamps: pd.Series,
    watermarks: pd.Series | None = None,
    keep_raw: bool = False,
    max_clock_skew_ms: int | None = None,
    now_ms: int | None = None,
    pseudonymise: Callable[[str | None], str | None] | None = None,
    digest: bool = False,
) -> pd.DataFrame:
    """Decode a batch of framed records into columns; rejects become ok=False rows.

    ``pseudonymise`` (``pricing_udfs.privacy``) replaces the user id of every decoded row; with ``digest`` the
    bytes kept (``raw_value``: a reject's, or every row's with ``keep_raw``) are only their SHA-256 and size.

    ``timestamps`` are the Kafka record timestamps (tz-aware datetimes): the engine's
    event time. A record whose payload ``event_time`` differs is rejected, because
    watermarks and joins would otherwise disagree with the payload. ``watermarks``
    (the source's current watermark per row, null before the first) mark a record
    ``late`` when its time is behind: event-time windows would drop it silently. A record
    stamped more than ``max_clock_skew_ms`` ahead of the wall clock (``now_ms``) is invalid: the
    source gives it no say in the watermark, which it would otherwise move into the future.
    """
    names = [n for n, _ in _fields(contract)]
    n_rows = len(values)
    ts_ms = _epoch_millis(timestamps)
    wm_ms = _epoch_millis(watermarks, missing=np.iinfo(np.int64).min) if watermarks is not None else None
    ok = np.zeros(n_rows, dtype=bool)
    kinds: list[str | None] = [None] * n_rows
    messages: list[str | None] = [None] * n_rows
    cols: dict[str, list[Any]] = {n: [None] * n_rows for n in names}
    horizon = None if max_clock_skew_ms is None else (now_ms or int(time.time() * 1000)) + max_clock_skew_ms
    for i, raw in enumerate(values):
        result = serde.decode(contract, raw)
        if result.ok and horizon is not None and ts_ms[i] > horizon:
            kinds[i] = serde.ErrorKind.INVALID_VALUE.value
            messages[i] = (
                f"{contract.value}: event_time {ts_ms[i]} is {ts_ms[i] - horizon + max_clock_skew_ms} ms ahead of "
                f"the engine's clock, more than max_clock_skew_ms ({max_clock_skew_ms})"
            )
        elif result.ok and result.record["event_time"] != ts_ms[i]:
            kinds[i] = serde.ErrorKind.INVALID_VALUE.value
            messages[i] = (
                f"{contract.value}: event_time {result.record['event_time']} differs from the Kafka record "
                f"timestamp {ts_ms[i]}; producers must set the record timestamp to event_time"
            )
        elif result.ok and wm_ms is not None and ts_ms[i] <= wm_ms[i]:  # Flink's event-time operators drop ts == watermark too
            kinds[i] = serde.ErrorKind.LATE.value
            messages[i] = (
                f"{contract.value}: event_time {ts_ms[i]} is not after the watermark (it is {wm_ms[i] - ts_ms[i]} ms behind) "
                f"{wm_ms[i]}; raise watermark_out_of_orderness_ms to accept such events"
            )
        elif result.ok:
            ok[i] = True
            rec = result.record
            for n in names:
                cols[n][i] = rec[n]
        else:
            kinds[i] = result.kind.value
            messages[i] = result.message
    out = pd.DataFrame({"ok": ok, "error_kind": kinds, "error_message": messages})
    out["source_topic"] = pd.Series(topics.to_numpy(dtype=object), dtype=object)
    out["source_partition"] = pd.Series(partitions.to_numpy(dtype=object), dtype=object)
    out["source_offset"] = pd.Series(offsets.to_numpy(dtype=object), dtype=object)
    raw = values.to_numpy(dtype=object)
    kept = raw if keep_raw else np.where(ok, None, raw)
    if digest:
        kept = np.array([None if r is None else digest_token(r) for r in kept], dtype=object)
    out["raw_value"] = pd.Series(kept, dtype=object)
    out["record_time"] = ts_ms
    if pseudonymise is not None and contract in USER_FIELDS:
        cols[USER_FIELDS[contract]] = [pseudonymise(v) for v in cols[USER_FIELDS[contract]]]
    for n in names:
        out[n] = pd.Series(cols[n], dtype=object)  # object keeps nulls as None for Arrow
    return out


def _epoch_millis(timestamps: pd.Series, *, missing: int | None = None) -> np.ndarray:
    """Epoch millis of tz-aware (or UTC-naive) datetimes, independent of the session time zone.

    Nulls become ``missing``; without it a null is a bug (Kafka records always have a timestamp).
    """
    ts = pd.Series(pd.to_datetime(timestamps, utc=True))
    nulls = ts.isna().to_numpy()
    if nulls.any() and missing is None:
        raise ValueError("null timestamp")
    ms = ((ts.fillna(pd.Timestamp(0, tz="UTC")) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")).to_numpy(
        dtype=np.int64
    )
    if nulls.any():
        ms[nulls] = missing
    return ms


class _Decode(ScalarFunction):
    def __init__(self, contract: Contract, keep_raw: bool, max_clock_skew_ms: int | None, late: bool,
                 privacy: PrivacyConfig | None = None) -> None:  # fmt: skip
        self._contract = contract
        self._keep_raw = keep_raw
        self._max_clock_skew_ms = max_clock_skew_ms
        self._check_late = late
        self._privacy = privacy
        self._pseudonymise: Pseudonymiser | None = None
        self._late: Any = None
        self._rejected: Any = None

    def open(self, function_context: Any) -> None:
        if self._privacy is not None and self._contract in USER_FIELDS:
            self._pseudonymise = self._privacy.pseudonymiser()  # the key file, read here in the worker
        group = function_context.get_metric_group().add_group("contract", self._contract.value)
        self._late = group.counter("late_events")
        self._rejected = group.counter("rejected_records")

    def eval(
        self,
        values: pd.Series,
        topics: pd.Series,
        partitions: pd.Series,
        offsets: pd.Series,
        timestamps: pd.Series,
        watermarks: pd.Series,
    ) -> pd.DataFrame:
        out = decode_batch(
            self._contract, values, topics=topics, partitions=partitions, offsets=offsets,
            timestamps=timestamps, watermarks=watermarks if self._check_late else None, keep_raw=self._keep_raw,
            max_clock_skew_ms=self._max_clock_skew_ms, pseudonymise=self._pseudonymise,
            digest=self._privacy is not None and self._privacy.dead_letter_payload == "digest",
        )
        if self._late is not None:
            # A negative offset marks no record but a source turning idle (pricing.watermarks.IdleToMarker); the
            # job drops such rows after the decoder, so they are not counted.
            real = pd.to_numeric(offsets).to_numpy() >= 0
            self._late.inc(int(((out["error_kind"] == serde.ErrorKind.LATE.value).to_numpy() & real).sum()))
            self._rejected.inc(int((~out["ok"].to_numpy(dtype=bool) & real).sum()))
        return out


# The candidate columns the recommend-request decoder adds to the decoded request (parallel arrays, best first).
CANDIDATE_FIELDS = [
    DataTypes.FIELD("candidate_ids", DataTypes.ARRAY(DataTypes.STRING())),
    DataTypes.FIELD("candidate_scores", DataTypes.ARRAY(DataTypes.DOUBLE())),
    DataTypes.FIELD("candidate_reasons", DataTypes.ARRAY(DataTypes.STRING())),
]


class _DecodeRecommend(_Decode):
    """The recommend-request decoder, which also generates each good request's candidates from its worker's
    candidate index (``pricing_udfs.recommend.stage.CandidateStage``): one Python crossing for both."""

    def __init__(self, config: CandidateConfig, max_clock_skew_ms: int | None, late: bool) -> None:
        super().__init__(Contract.RECOMMEND_REQUEST, False, max_clock_skew_ms, late, config.privacy)
        self._config = config
        self._candidates: CandidateStage | None = None

    def open(self, function_context: Any) -> None:
        super().open(function_context)
        self._candidates = CandidateStage(self._config)
        self._candidates.open()
        index = self._candidates.index
        group = function_context.get_metric_group().add_group("recommend")
        group.gauge("candidate_index_products", lambda: len(index.co_view) + len(index.co_purchase))
        group.gauge("candidate_index_users", lambda: len(index.recent))

    def close(self) -> None:
        if self._candidates is not None:
            self._candidates.close()

    def eval(self, *columns: pd.Series) -> pd.DataFrame:
        out = super().eval(*columns)
        if self._candidates is None:
            raise RuntimeError("the recommend decoder was evaluated before open(): Flink opens every function first")
        found = self._candidates.candidates(out)
        out["candidate_ids"] = pd.Series([[c.product_id for c in f] for f in found], dtype=object)
        out["candidate_scores"] = pd.Series([[float(c.score) for c in f] for f in found], dtype=object)
        out["candidate_reasons"] = pd.Series([[REASON_SEPARATOR.join(c.reasons) for c in f] for f in found], dtype=object)
        return out


def recommend_decoder(config: CandidateConfig, *, max_clock_skew_ms: int | None = None, late: bool = True) -> Any:
    """A pandas UDF like :func:`decoder` for recommend requests, with the ``CANDIDATE_FIELDS`` appended."""
    result = DataTypes.ROW(list(decoded_type(Contract.RECOMMEND_REQUEST).fields) + CANDIDATE_FIELDS)
    return udf(_DecodeRecommend(config, max_clock_skew_ms, late), result_type=result, func_type="pandas")


class _RecommendAndEncode(ScalarFunction):
    """The recommend stage (``pricing_udfs.recommend.stage``) as a pandas UDF: one ``recommend`` (one model
    call for every candidate of every slate) per Arrow batch."""

    def __init__(self, config: RecommendConfig, spec: FeatureSpec) -> None:
        self._config = config
        self._spec = spec
        self._stage: RecommendStage | None = None
        self._answered: Any = None
        self._fallbacks: Any = None
        self._slate_size: Any = None

    def open(self, function_context: Any) -> None:
        self._stage = RecommendStage(self._config, spec=self._spec)
        self._stage.open()
        group = function_context.get_metric_group().add_group("recommend")
        self._answered = group.counter("recommendations")
        self._fallbacks = group.counter("fallbacks")
        self._slate_size = group.distribution("candidates")

    def close(self) -> None:
        if self._stage is not None:
            self._stage.close()

    def eval(self, request_id: pd.Series, user_id: pd.Series, channel: pd.Series, event_time: pd.Series, k: pd.Series,
             product_ids: pd.Series, currencies: pd.Series, scores: pd.Series, reasons: pd.Series,
             features: pd.Series) -> pd.Series:  # fmt: skip
        if self._stage is None:
            raise RuntimeError("the recommend UDF was evaluated before open(): Flink opens every function first")
        n = len(product_ids)
        requests = pd.DataFrame({"request_id": _column(request_id, n), "user_id": _column(user_id, n),
                                 "channel": _column(channel, n), "event_time": _column(event_time, n).astype(np.int64),
                                 "k": _column(k, n).astype(np.int64)})  # fmt: skip
        slates = [slate_frame(p, c, s, r, f, spec=self._spec) for p, c, s, r, f in
                  zip(product_ids, currencies, scores, reasons, features)]  # fmt: skip
        records = self._stage.recommend(requests, slates, answered_time_ms=int(time.time() * 1000))
        self._answered.inc(len(records))
        self._fallbacks.inc(sum(bool(r["fallback_used"]) for r in records))
        for sl in slates:
            self._slate_size.update(len(sl))
        return encode_recommendations(records)


def recommend_and_encode_udf(config: RecommendConfig, *, spec: FeatureSpec = FEATURE_SPEC) -> Any:
    """A pandas UDF ``(request_id, user_id, channel, event_time, k, slate arrays...) -> framed Recommendation``."""
    return udf(_RecommendAndEncode(config, spec), result_type=DataTypes.BYTES(), func_type="pandas")


def decoder(contract: Contract, *, keep_raw: bool = False, max_clock_skew_ms: int | None = None, late: bool = True,
            privacy: PrivacyConfig | None = None) -> Any:  # fmt: skip
    """A pandas UDF ``(value, topic, partition, offset, timestamp, watermark) -> ROW<status..., fields...>``.

    ``keep_raw`` keeps the bytes of good rows too (price requests: a later duplicate check may dead-letter them).
    Without ``late`` the watermark is ignored: no record is rejected as late. ``privacy``: user ids become
    pseudonyms, and in its ``digest`` mode kept bytes become their digest (``pricing_udfs.privacy``).
    """
    return udf(_Decode(contract, keep_raw, max_clock_skew_ms, late, privacy), result_type=decoded_type(contract),
               func_type="pandas")


# The pricing UDF's arguments, in order, before the feature array: the job builds its SQL call from this.
REQUEST_COLUMNS = ("request_id", "user_id", "product_id", "channel", "event_time", "list_currency")


# Counters and gauges of the scoring stage, as Flink metrics (group "pricing").
STAGE_COUNTERS = (
    "requests_priced", "fallbacks", "explored", "invalid_decisions", "rejected_model_versions",
    *(f"guardrail_{code}" for code in (*LIMITS, NO_PRICE_POINT)),
    *(f"fallback_{code}" for code in ("no_model", "model_error", "model_invalid_output", "no_unit_cost", "default_price")),
    "trust_narrowed", *(f"trust_{code}" for code in TRUST_CODES),
)  # fmt: skip


class _PriceAndEncode(ScalarFunction):
    """The scoring stage (``pricing_udfs.scoring``) as a pandas UDF: built and its model loaded in
    ``open()``, once per Python worker; one ``decide`` (one model call) per Arrow batch."""

    def __init__(self, config: ScoringConfig, spec: FeatureSpec) -> None:
        self._config = config
        self._spec = spec
        self._stage: ScoringStage | None = None
        self._counters: dict[str, Any] = {}
        self._reported: dict[str, int] = {}
        self._batch_size: Any = None
        self._inference_ms: Any = None

    def open(self, function_context: Any) -> None:
        self._stage = ScoringStage(self._config, spec=self._spec)
        self._stage.open()
        group = function_context.get_metric_group().add_group("pricing")
        self._counters = {name: group.counter(name) for name in STAGE_COUNTERS}
        self._batch_size = group.distribution("batch_size")
        self._inference_ms = group.distribution("inference_ms")
        stage = self._stage
        group.gauge("model_loaded", lambda: int(stage.model_version is not None))
        group.gauge("model_created_epoch_s",
                    lambda: stage.watcher.current.created_epoch_s if stage.watcher and stage.watcher.current else 0)
        group.gauge("model_age_s", lambda: int(time.time()) - stage.watcher.current.created_epoch_s
                    if stage.watcher and stage.watcher.current else -1)  # fmt: skip
        # What open() read to rebuild the anchors (pricing_udfs.anchors), and the products they hold now.
        seed = stage.seed_report
        group.gauge("anchor_seed_records", lambda: seed.records if seed else 0)
        group.gauge("anchor_seed_ms", lambda: int(seed.seconds * 1000) if seed else 0)
        group.gauge("anchor_seed_held_partitions", lambda: len(seed.held) if seed else 0)
        group.gauge("anchor_products", lambda: len(stage.anchors))

    def close(self) -> None:
        if self._stage is not None:
            self._stage.close()  # stops the model watcher's loader thread

    def eval(self, *columns: pd.Series) -> pd.Series:
        *request_cols, features = columns
        batch = request_batch(dict(zip(REQUEST_COLUMNS, request_cols)), features, spec=self._spec)
        if self._stage is None:
            raise RuntimeError("the pricing UDF was evaluated before open(): Flink opens every function first")
        priced_time_ms = int(time.time() * 1000)  # one priced_time for the anchors and the events
        decisions = self._stage.decide(batch, priced_time_ms=priced_time_ms)
        self._report()
        return encode_priced_events(batch, decisions, spec=self._spec, priced_time_ms=priced_time_ms)

    def _report(self) -> None:
        assert self._stage is not None
        for name, counter in self._counters.items():
            value = self._stage.counts.get(name, 0)
            delta = value - self._reported.get(name, 0)
            if delta:
                counter.inc(delta)
                self._reported[name] = value
        if self._batch_size is not None:
            self._batch_size.update(self._stage.last_batch_size)
            self._inference_ms.update(int(round(self._stage.last_inference_ms)))


def request_batch(request: dict[str, pd.Series], features: pd.Series, *, spec: FeatureSpec) -> pd.DataFrame:
    """The policy's input: request fields plus one column per feature, in spec order."""
    matrix = np.stack([np.asarray(v, dtype=np.float64) for v in features]) if len(features) else np.empty((0, len(spec.names)))
    frame = pd.DataFrame({k: _column(v, len(features)) for k, v in request.items()})
    return pd.concat([frame, pd.DataFrame(matrix, columns=spec.names)], axis=1)


def _column(value: Any, n: int) -> pd.Series:
    """A UDF argument as a column: the planner passes constants (e.g. a filtered-on ``user_id = ''``) as scalars."""
    if isinstance(value, pd.Series):
        return value.reset_index(drop=True)
    return pd.Series([value] * n, dtype=object)


def price_and_encode_batch(policy: Policy, batch: pd.DataFrame, *, spec: FeatureSpec, priced_time_ms: int) -> pd.Series:
    """Decide prices for a batch with ``policy``, check them, and encode each as a framed PricedEvent."""
    decisions, _ = check_decisions(policy, batch, policy.decide(batch))
    return encode_priced_events(batch, decisions, spec=spec, priced_time_ms=priced_time_ms)


def encode_priced_events(batch: pd.DataFrame, decisions: pd.DataFrame, *, spec: FeatureSpec, priced_time_ms: int) -> pd.Series:
    """One framed PricedEvent per (checked) decision, logging the served feature vector.

    Encoded column by column (``avro_columns``): the same bytes as ``serde.encode`` per row, without a
    Python dict and a record walk per request.
    """
    n = len(batch)
    propensity = decisions["propensity"].to_numpy(dtype=np.float64)
    columns = {
        "request_id": batch["request_id"].tolist(),
        "user_id": batch["user_id"].tolist(),
        "product_id": batch["product_id"].tolist(),
        "price_minor": decisions["price_minor"].to_numpy(dtype=np.int64),
        "reference_price_minor": decisions["reference_price_minor"].to_numpy(dtype=np.int64),
        "currency": decisions["currency"].tolist(),
        "model_version": decisions["model_version"].tolist(),
        "expected_conversion": decisions["expected_conversion"].to_numpy(dtype=np.float64),
        "expected_profit_minor": decisions["expected_profit_minor"].to_numpy(dtype=np.int64),
        "reason_codes": decisions["reason_codes"].tolist(),
        "fallback_used": decisions["fallback_used"].to_numpy(dtype=bool),
        "request_time": batch["event_time"].to_numpy(dtype=np.int64),
        "priced_time": int(priced_time_ms),
        "feature_spec_version": spec.version,
        "features": batch[list(spec.names)].to_numpy(dtype=np.float64),
        "explored": decisions["explored"].to_numpy(dtype=bool),
        "propensity": [None if np.isnan(p) else float(p) for p in propensity],
        # a live experiment's arm (ScoringStage with an experiment); null without one
        "experiment_id": decisions["experiment_id"].tolist() if "experiment_id" in decisions else None,
        "arm": decisions["arm"].tolist() if "arm" in decisions else None,
    }
    return pd.Series(encode_columns(Contract.PRICED_EVENT, columns, n), dtype=object)


def price_and_encode_udf(config: ScoringConfig, *, spec: FeatureSpec = FEATURE_SPEC) -> Any:
    """A pandas UDF ``(REQUEST_COLUMNS..., features ARRAY<DOUBLE>) -> framed PricedEvent``."""
    return udf(_PriceAndEncode(config, spec), result_type=DataTypes.BYTES(), func_type="pandas")


def encode_dead_letters(
    topic: Any, partition: Any, offset: Any, raw: Any, kind: Any, message: Any, record_ms: Any,
    *, max_raw_bytes: int, now_ms: int, digest: bool = False,
) -> pd.Series:
    """Framed DeadLetters whose size does not depend on the input: at most ``max_raw_bytes`` of
    the bad value (with its whole size and SHA-256) and a clipped message, so that no input can
    make the dead-letter sink fail with a record too large for the topic. With ``digest`` the decoders gave
    only each value's digest (``pricing_udfs.privacy.digest_token``): no byte of it is kept."""
    kinds = {k.value for k in serde.ErrorKind}
    out = []
    for t, p, o, r, k, m, rt in zip(topic, partition, offset, raw, kind, message, record_ms):
        value = bytes(r) if r is not None else b""
        known = read_digest_token(value) if digest else None
        sha, size = known if known is not None else (hashlib.sha256(value).hexdigest(), len(value))
        keep = b"" if digest else value[:max_raw_bytes]
        out.append(
            serde.encode(
                Contract.DEAD_LETTER,
                {
                    "source_topic": t,
                    "partition": int(p),
                    "offset": int(o),
                    "record_time": int(rt),
                    "raw": keep,
                    "error_kind": k if k in kinds else serde.ErrorKind.OTHER.value,
                    "error_message": (m or "")[:MAX_ERROR_MESSAGE_CHARS],
                    "time": now_ms,
                    "raw_size": size,
                    "raw_sha256": sha,
                    "raw_truncated": size > len(keep),
                },
            )
        )
    return pd.Series(out, dtype=object)


MAX_ERROR_MESSAGE_CHARS = 2_000
