"""The pricing job graph: Kafka in, decode, features, price, Kafka out.

    price-requests ───┐                            ┌─> priced-events
    market-events ────┼─ decode (Arrow batch) ─────┤
    behaviour-events ─┘        │                   └─> dead-letters (bad bytes, bad values, late)
                               └─ feature stage (``jobs.features``: over-windows)
                                    └─ request rows with features ─> price + encode (Arrow batch)

Per-event work (watermarks, the feature windows) runs in the JVM as Flink SQL;
Python runs only in vectorized UDFs, once per Arrow batch (``pricing_udfs.udfs``).

Event time is the Kafka record timestamp, which producers must set to the payload's
``event_time``; a record where they differ is dead-lettered (``invalid_value``).
``serving_mode = "arrival"`` (default) prices a request as soon as it arrives, with
the event-time windows over every event processed before it (``jobs.features``): no
watermark wait, and a quiet input holds nothing back; with exactly-once the answer
becomes visible at the next checkpoint. ``"event-time"`` prices a request once the
watermark passes its event time, i.e. with a latency of about
``watermark_out_of_orderness_ms``; in exchange the context it sees is exactly the
market as of the request (replays and the backfill give the same answer). That holds
while traffic flows; an input that goes quiet is declared idle after ``idle_timeout_ms``,
and until then (or again, if a late record wakes it) it holds answers back (README, "Latency").

Guarantees:
  * ``exactly-once`` (default): sources read ``read_committed``; both sinks write in
    Kafka transactions committed on checkpoint completion, so after any failure and
    restart from a checkpoint each good request appears exactly once in
    priced-events and each bad record exactly once in dead-letters, to
    read_committed consumers. Output becomes visible at checkpoint intervals.
  * ``at-least-once``: no transactions; output is visible immediately; after a
    failure, records since the last checkpoint may be emitted again (usually at the same
    price: the policy is deterministic given the model and the worker's anchors, which a
    restart empties; ``pricing_udfs.scoring``). Consumers dedupe on request_id.
  * A start resumes from the deployment's latest retained checkpoint (after a crash,
    ``kill -9`` or a cancel) unless ``job.start = "fresh"`` or ``job.restore_from`` says
    otherwise (``pricing.checkpoints``): nothing read before the crash is lost.
  * Requests are idempotent: a request_id repeated for the same product within
    ``dedupe_window_ms`` of event time is dead-lettered as ``duplicate``, not priced again.
  * No input can fail a sink: dead letters carry at most ``dead_letter_max_raw_bytes`` of
    the bad record (with its size and SHA-256), ids are at most 256 characters.
  * On restore (a failover, or ``job.restore_from`` a savepoint) the Kafka offsets,
    the feature windows and the rows waiting for the watermark come back. Watermarks
    do not (Flink does not store them): until the sources emit the first one, a few
    records that would have been late are applied instead of dead-lettered.

Run it locally with ``pricing job run``; submit the same file to a cluster with
``flink run -py jobs/pricing_job.py`` (see README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pyflink.common import Configuration
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import EnvironmentSettings, Schema, StatementSet, StreamTableEnvironment, TableEnvironment, TableResult

from pricing.broker import free_port
from pricing.checkpoints import Start, checkpoint_root, plan_start
from pricing.config import Settings, load_settings, prepare_job_secrets, registry_dir
from pricing.topics import require_topics
from pricing.warm_start import WarmStart, plan_warm_start
from pricing.jars import connector_jars, flink_jars, flink_python_jar, project_jar, prometheus_reporter_jar
from jobs import recommendations
from jobs.features import arrival_allowance_ms, declare_feature_views
from pricing_udfs import serde, udfs
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.privacy import USER_FIELDS, PrivacyConfig
from pricing_udfs.scoring import ScoringConfig
from pricing_udfs.serde import Contract


# Arrival mode's Python bundle time and network buffer timeout (README, Latency). With the decoders in the JVM a
# request crosses into Python once; 5 ms bundles and 2 ms buffers put p50 near 75 ms, p99 near 200 ms at 50 to 300
# requests/s (1 ms / 2 ms: p99 0.8 s at 300/s; Flink's 100 ms buffers: p50 near 290 ms). (With the Python decoders,
# 5 ms bundles had stalled a start on a backlog; tests/jobs/test_backlog.py and the warm-start tests pass with 5.)
ARRIVAL_BUNDLE_TIME_MS = 5
ARRIVAL_BUFFER_TIMEOUT_MS = 2


def create_table_env(settings: Settings, *, jobmanager: str | None = None, start: Start | None = None) -> TableEnvironment:
    """A streaming TableEnvironment configured from ``settings`` (local MiniCluster by default).

    It also makes the secret files the job's workers read (the pseudonym key, Kafka secrets;
    ``pricing.config.prepare_job_secrets``, idempotent), so that any job built on it, a benchmark's
    included, finds them.
    """
    prepare_job_secrets(settings)
    # Submitted to a cluster, the Python workers run on its TaskManagers. Told nothing, PyFlink sees
    # its gateway's local target and starts a loopback server in this process, whose address it then
    # ships to the remote workers (which fail to reach it): "process" mode tells it they are remote.
    # On the MiniCluster, process mode (job.python_workers) starts them as worker processes too.
    mode = os.environ.get("_python_worker_execution_mode")
    process = bool(jobmanager) or settings.job.python_workers == "process"
    if process:
        os.environ["_python_worker_execution_mode"] = "process"
    flink_conf = _flink_conf(settings, jobmanager=jobmanager, start=start)
    configuration = Configuration()
    for key, value in flink_conf.items():
        configuration.set_string(key, value)
    try:
        # A StreamTableEnvironment (not a plain TableEnvironment): the sources need one DataStream step (_unchained).
        env = StreamExecutionEnvironment.get_execution_environment(configuration)
        t_env = StreamTableEnvironment.create(env, EnvironmentSettings.in_streaming_mode())
    finally:
        if process and mode is None:
            del os.environ["_python_worker_execution_mode"]
        elif process:
            os.environ["_python_worker_execution_mode"] = mode
    conf = t_env.get_config()
    for key, value in flink_conf.items():
        conf.set(key, value)
    return t_env


def _flink_conf(settings: Settings, *, jobmanager: str | None, start: Start | None = None) -> dict[str, str]:
    job = settings.job
    exactly_once = job.delivery_guarantee == "exactly-once"
    conf = {
        "pipeline.name": job.name,
        "parallelism.default": str(job.parallelism),
        "execution.checkpointing.interval": f"{job.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE" if exactly_once else "AT_LEAST_ONCE",
        "state.backend.type": job.state_backend,
        # RocksDB checkpoints only the files written since the last one: a full snapshot every interval costs
        # time in proportion to the whole state (24 h windows), and the job fell behind as its state grew.
        "execution.checkpointing.incremental": str(job.state_backend == "rocksdb").lower(),
        "table.exec.source.idle-timeout": f"{job.idle_timeout_ms} ms",
        "table.exec.state.ttl": f"{job.state_ttl_ms} ms",
        # SQL operators never hold on to input rows, so chained operators may pass them without copies.
        "pipeline.object-reuse": "true",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": str(job.restart_attempts),
        "restart-strategy.fixed-delay.delay": f"{job.restart_delay_ms} ms",
        # The workers' Python is a path on the TaskManagers (python3 in the images); the client's is ours.
        "python.executable": job.python_executable or sys.executable,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": str(job.python_bundle_size),
        "python.fn-execution.bundle.time": str(job.python_bundle_time_ms
                                               or (ARRIVAL_BUNDLE_TIME_MS if job.serving_mode == "arrival" else 200)),
        "python.fn-execution.arrow.batch.size": str(job.python_bundle_size),
    }
    buffer_timeout = job.buffer_timeout_ms if job.buffer_timeout_ms is not None else (
        ARRIVAL_BUFFER_TIMEOUT_MS if job.serving_mode == "arrival" else None)
    if buffer_timeout is not None:
        conf["execution.buffer-timeout.interval"] = f"{buffer_timeout} ms"
    # Without a directory Flink keeps checkpoints in JobManager memory, capped at 5 MB:
    # the feature windows outgrow that quickly, so default to a folder in state_dir. They
    # outlive a cancelled or crashed job, so that the next start resumes (pricing.checkpoints).
    conf["execution.checkpointing.dir"] = checkpoint_root(settings)
    conf["execution.checkpointing.externalized-checkpoint-retention"] = "RETAIN_ON_CANCELLATION"
    restore_from = start.restore_from if start else job.restore_from
    if restore_from:
        conf["execution.state-recovery.path"] = restore_from
        conf["execution.state-recovery.claim-mode"] = "CLAIM" if start and start.claim else "NO_CLAIM"
    if job.metrics_port:
        # A cluster loads the reporter from its plugins/ folder (every Flink distribution has it).
        conf["metrics.reporter.prom.factory.class"] = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
        conf["metrics.reporter.prom.port"] = job.metrics_port
    if jobmanager:
        host, port = _rest_address(settings, jobmanager)
        conf.update({"execution.target": "remote", "rest.address": host, "rest.port": port})
    elif job.rest_port is not None:
        conf["rest.port"] = str(job.rest_port)  # the local MiniCluster's web UI and REST API
    if jobmanager:
        # ship_jars = false: the cluster has the connector in lib/. The job's own jar travels with the
        # job all the same (it must match the job file), and so does the Python runtime's jar, which
        # every distribution keeps in opt/, not lib/ (`flink run -py` adds it the same way).
        jars = [*(connector_jars(settings.state_dir) if job.ship_jars else []), project_jar(settings.state_dir),
                flink_python_jar()]
    else:
        jars = flink_jars(settings.state_dir) if job.ship_jars else []
        if job.metrics_port:
            jars.append(prometheus_reporter_jar())  # the MiniCluster finds reporters on the class path only
    if jars:
        conf["pipeline.jars"] = ";".join(j.resolve().as_uri() for j in jars)
    return conf


def _kafka_props(settings: Settings, prefix: str = "properties.") -> str:
    return ",\n".join(f"'{prefix}{k}' = '{_q(v)}'" for k, v in settings.job_kafka_client().java_properties().items())


def _q(value: str) -> str:
    return value.replace("'", "''")


def _interval(ms: int) -> str:
    """A SQL interval literal of ``ms`` milliseconds (up to 99 days; SECOND alone stops at 99 s)."""
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}' DAY TO SECOND(3)"


def _source_ddl(settings: Settings, *, table: str, topic: str, from_ms: int | None = None) -> str:
    """A Kafka source of raw records. It starts as ``[job] startup_mode`` says, or at ``from_ms`` (event time)
    when given (a warm start; 0: the earliest record); with restored state its offsets come from the checkpoint."""
    job = settings.job
    if from_ms == 0:
        startup = "'scan.startup.mode' = 'earliest-offset',"
    elif from_ms is not None:
        startup = f"'scan.startup.mode' = 'timestamp', 'scan.startup.timestamp-millis' = '{from_ms}',"
    elif job.startup_mode == "timestamp":
        startup = f"'scan.startup.mode' = 'timestamp', 'scan.startup.timestamp-millis' = '{job.startup_timestamp_ms}',"
    else:
        startup = f"'scan.startup.mode' = '{job.startup_mode}',"
    bounded = "'scan.bounded.mode' = 'latest-offset'," if job.bounded else ""
    return f"""
CREATE TEMPORARY TABLE {table} (
  `value` BYTES,
  `topic` STRING METADATA VIRTUAL,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',
  -- A record stamped further ahead of the wall clock than max_clock_skew_ms counts as the epoch
  -- for the watermark (the decoder dead-letters it), so it cannot drag the watermark into the
  -- future, which would make every later record late.
  WATERMARK FOR `ts` AS IF(`ts` > NOW() + {_interval(job.max_clock_skew_ms)}, TO_TIMESTAMP_LTZ(0, 3), `ts`)
    - {_interval(job.watermark_out_of_orderness_ms)}
) WITH (
  'connector' = 'kafka',
  'topic' = '{_q(topic)}',
  {_kafka_props(settings)},
  'properties.group.id' = '{_q(job.consumer_group)}',
  'properties.isolation.level' = 'read_committed',
  'properties.auto.offset.reset' = 'earliest',
  {startup}
  {bounded}
  'format' = 'raw'
)"""


def _sink_ddl(settings: Settings, *, table: str, topic: str, id_suffix: str) -> str:
    job = settings.job
    if job.delivery_guarantee == "exactly-once":
        guarantee = f"""'sink.delivery-guarantee' = 'exactly-once',
  'sink.transactional-id-prefix' = '{_q(job.transactional_id_prefix)}-{id_suffix}',
  'properties.transaction.timeout.ms' = '{job.transaction_timeout_ms}',"""
    else:
        guarantee = "'sink.delivery-guarantee' = 'at-least-once', 'properties.linger.ms' = '0',"
    return f"""
CREATE TEMPORARY TABLE {table} (
  `k` BYTES,
  `v` BYTES
) WITH (
  'connector' = 'kafka',
  'topic' = '{_q(topic)}',
  {_kafka_props(settings)},
  {guarantee}
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'
)"""


def _unchained(t_env: TableEnvironment, *, source: str, view: str) -> str:
    """``source`` behind a task boundary: the Kafka reader runs in a task of its own, not chained to the decoder.

    Flink decides per Kafka partition (split) whether it is idle: no record for ``idle_timeout_ms`` of
    processing time. Chained operators run in the source's thread, and the time they take counts
    (Flink 2.2 pauses that clock only while the task is back-pressured): with the Python decoder
    chained to the reader, a bundle that takes longer than the idle timeout while the reader holds one
    partition's batch marks the other partitions idle. The source's watermark then runs ahead with the
    first partition, and the others' records count as late: on a one-day backlog in two partitions,
    half of the behaviour events (and in some runs half of the requests) were dead-lettered as late
    instead of the 0.02% really late (``tests/jobs/test_backlog.py``). Behind a boundary the reader task
    only reads; when the decoder falls behind, the reader is back-pressured and its idle clock stops.

    The record timestamp and the source's watermarks (per split, with idleness) cross the boundary
    unchanged (one forward channel per subtask), so ``CURRENT_WATERMARK(ts)`` in the decoder is the
    source's watermark as before.
    """
    # A new chain: the conversion does not chain to the reader; the decoder chains to it. And the decoder must
    # never see an idle status: it travels through the decoder as a marker row (_idle_from_markers).
    _behind_java_operator(t_env, source=source, name="idle status to marker rows", view=f"{view}_stream",
                          operator=get_gateway().jvm.pricing.watermarks.IdleToMarker(), new_chain=True)  # fmt: skip
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW {view} AS
SELECT `value`, `topic`, `partition`, `offset`, `rowtime` AS `ts` FROM {view}_stream
""")
    return view


# A table over a DataStream whose record timestamps and watermarks become the ``rowtime`` attribute.
_ROWTIME = (Schema.new_builder().column_by_metadata("rowtime", "TIMESTAMP_LTZ(3)")
            .watermark("rowtime", "SOURCE_WATERMARK()").build())  # fmt: skip


def _behind_java_operator(t_env: TableEnvironment, *, source: str, name: str, operator: Any, view: str,
                          new_chain: bool = False) -> None:  # fmt: skip
    """``view``: the table ``source`` through a Java stream ``operator`` (rows in, the same rows type out), chained
    to what precedes it unless ``new_chain``; record times and watermarks come out as its ``rowtime``."""
    strategy = get_gateway().jvm.org.apache.flink.streaming.api.operators.ChainingStrategy
    j_stream = t_env.to_data_stream(t_env.from_path(source))._j_data_stream
    if new_chain:
        j_stream.getTransformation().setChainingStrategy(strategy.HEAD)
    out = j_stream.transform(name, j_stream.getType(), operator)
    out.getTransformation().setChainingStrategy(strategy.ALWAYS)
    t_env.create_temporary_view(view, t_env.from_data_stream(DataStream(out), _ROWTIME))


def _shared(t_env: TableEnvironment, *, source: str, view: str) -> str:
    """``source`` (with its ``ts`` rowtime) through a DataStream: the queries that read ``view`` share one copy of
    everything before it. Two queries reading one event-time view are otherwise planned apart when they read
    different columns of it (measured: the feature stages' over-windows twice, 12 instead of 3, when the
    recommendation branch reads the featured rows beside the priced branch)."""
    columns = [c for c in t_env.from_path(source).get_schema().get_field_names() if c != "ts"]
    stream = t_env.to_data_stream(t_env.from_path(source))
    t_env.create_temporary_view(f"{view}_stream", t_env.from_data_stream(stream, _ROWTIME))
    t_env.execute_sql(f"CREATE TEMPORARY VIEW {view} AS SELECT {', '.join(f'`{c}`' for c in columns)}, `rowtime` AS `ts` "
                      f"FROM {view}_stream")
    return view


def _idle_from_markers(t_env: TableEnvironment, *, source: str, view: str, columns: list[str]) -> None:
    """``view``: the decoded ``source`` behind ``pricing.watermarks.IdleFromMarker``, which turns the marker rows
    that ``_unchained`` put in place of the reader's idle status back into the status.

    PyFlink's Python operators hold records and watermarks back until their bundle is finished but pass an
    idle status on at once. Flink drops a watermark emitted while the output is idle: an input that went
    idle while its decoder held its last watermark lost it, and the catch-up gate (or the event-time
    windows) waited for the input's next record, on a quiet topic for ever; and records that left the
    decoder after the status could fall behind a watermark the other inputs had advanced, where the
    event-time windows drop them (``tests/jobs/test_arrival_mode.py``, README "Warm start"). The marker
    travels through the decoder in order with the records, so the status follows them as it would
    without a Python operator.
    """
    marker = get_gateway().jvm.pricing.watermarks.IdleFromMarker(columns.index("source_offset"))
    _behind_java_operator(t_env, source=source, name="idle status from marker rows", operator=marker, view=f"{view}_marked")
    others = ", ".join(f"`{c}`" for c in columns if c != "ts")
    t_env.execute_sql(f"CREATE TEMPORARY VIEW {view} AS SELECT `rowtime` AS `ts`, {others} FROM {view}_marked")


def _jvm_decoded_view(*, view: str, source: str, decoder: str, fields: list[str]) -> str:
    """Decode once, in the JVM: the decoder is a table function (``_jvm_decoder``) whose one row per record joins
    its record laterally, so the planner calls it once per record whatever reads its fields, and both the priced
    and the dead-letter branch read one decoded stream (``tests/jobs/test_job_plan.py``)."""
    return f"""
CREATE TEMPORARY VIEW {view} AS
SELECT s.`ts`, {", ".join(f"d.`{n}` AS `{n}`" for n in fields)}
FROM {source} AS s,
  LATERAL TABLE({decoder}(s.`value`, s.`topic`, s.`partition`, s.`offset`, s.`ts`, CURRENT_WATERMARK(s.`ts`))) AS d
"""


def _decoded_view(*, view: str, source: str, decoder: str, fields: list[str]) -> str:
    """Decode once. Both the priced and the dead-letter branch read only ``ts`` and ``d``, so the
    planner shares one Python decode operator between them (if one branch read another source
    column, or the call differed, the planner would split it in two and decode every record twice:
    ``tests/jobs/test_job_plan.py``)."""
    return f"""
CREATE TEMPORARY VIEW {view} AS
SELECT `ts`, {", ".join(f"x.d.`{n}` AS `{n}`" for n in fields)}
FROM (
  SELECT `ts`, {decoder}(`value`, `topic`, `partition`, `offset`, `ts`, CURRENT_WATERMARK(`ts`)) AS d FROM {source}
) AS x
"""


def _jvm_decoder(contract: Contract, *, keep_raw: bool, max_clock_skew_ms: int | None, late: bool,
                 privacy: PrivacyConfig) -> Any:  # fmt: skip
    """``pricing.decode.DecodeFunction`` (deploy/jvm) for one input: the decoder the job runs, in the JVM, so that
    context events never cross into Python. It returns the row ``udfs.decoded_type`` describes, with the same
    rules as ``udfs.decode_batch``, the reference (``tests/pricing_udfs/test_jvm_decoder.py`` feeds both decoders
    the same bytes). The schemas travel as JSON from ``pricing_udfs.serde``, the one reader of the ``.avsc`` files."""
    jvm = get_gateway().jvm
    frozen = jvm.java.util.ArrayList()
    for published in serde.frozen_schemas(contract):
        frozen.add(json.dumps(published))
    user_field = USER_FIELDS.get(contract)
    return jvm.pricing.decode.DecodeFunction(
        contract.value, json.dumps(serde.published_schema(contract)), frozen, keep_raw,
        -1 if max_clock_skew_ms is None else max_clock_skew_ms, late, user_field, privacy.secrets_dir,
        privacy.key_id, privacy.dead_letter_payload == "digest")


def declare_inputs(t_env: TableEnvironment, settings: Settings, warm: WarmStart | None = None) -> list[str]:
    """Kafka sources and their decoded views (``requests``, ``market``, ``behaviour``, ``catalogue``); with
    ``warm`` the behaviour source starts at its ``context_from_ms``, the market source at its ``market_from_ms``
    (``pricing.warm_start``) and the catalogue at its earliest offset."""
    topics = settings.kafka.topics
    inputs = [
        ("requests", topics.requests.name, Contract.PRICE_REQUEST, "decode_price_request"),
        ("market", topics.market.name, Contract.MARKET_EVENT, "decode_market_event"),
        ("behaviour", topics.behaviour.name, Contract.BEHAVIOUR_EVENT, "decode_behaviour_event"),
        # Each product's category (features/4); bad entries are dead-lettered like every input's.
        ("catalogue", topics.catalogue.name, Contract.CATALOGUE_ENTRY, "decode_catalogue_entry"),
    ]
    if settings.recommend.enabled:
        inputs.append(("recommend", topics.recommend_requests.name, Contract.RECOMMEND_REQUEST, "decode_recommend_request"))
    requests = (Contract.PRICE_REQUEST, Contract.RECOMMEND_REQUEST)
    for view, topic, contract, decoder in inputs:
        # Requests keep their bytes: a duplicate is dead-lettered after decoding (see _first_copies).
        keep_raw = contract is Contract.PRICE_REQUEST
        # Arrival mode answers a request on arrival, whatever the watermark, so a request is never late there.
        late = not (contract in requests and settings.job.serving_mode == "arrival")
        # The catalogue is read from its earliest entry, stamped at the history's start: never late-checked.
        late = late and contract is not Contract.CATALOGUE_ENTRY
        skew = settings.job.max_clock_skew_ms
        fields = udfs.decoded_field_names(contract)
        if contract is Contract.RECOMMEND_REQUEST:  # decodes and finds each request's candidates
            function = udfs.recommend_decoder(recommendations.candidate_config(settings), max_clock_skew_ms=skew, late=late)
            fields += [f.name for f in udfs.CANDIDATE_FIELDS]
            t_env.create_temporary_system_function(decoder, function)
        else:
            function = _jvm_decoder(contract, keep_raw=keep_raw, max_clock_skew_ms=skew, late=late,
                                    privacy=settings.privacy_config())  # fmt: skip
            t_env._j_tenv.createTemporarySystemFunction(decoder, function)
        from_ms = None
        if contract is Contract.CATALOGUE_ENTRY:
            from_ms = 0  # every product's entry, however old, on any start (restored state: the checkpoint's offsets)
        elif warm is not None and contract not in requests:
            from_ms = warm.market_from_ms if contract is Contract.MARKET_EVENT else warm.context_from_ms
        t_env.execute_sql(_source_ddl(settings, table=f"{view}_src", topic=topic, from_ms=from_ms))
        read = _unchained(t_env, source=f"{view}_src", view=f"{view}_read")
        make_view = _decoded_view if contract is Contract.RECOMMEND_REQUEST else _jvm_decoded_view
        t_env.execute_sql(make_view(view=f"{view}_decoded", source=read, decoder=decoder, fields=fields))
        _idle_from_markers(t_env, source=f"{view}_decoded", view=view, columns=["ts", *fields])
    return [view for view, *_ in inputs]


def scoring_config(settings: Settings) -> ScoringConfig:
    """What each Python worker needs to build its scoring stage; the model itself is loaded there.

    It includes the Kafka client settings without secret values (the worker reads them from the secret files,
    ``pricing_udfs.kafka_client``): the anchors are rebuilt from the priced-events topic in each worker
    (``pricing_udfs.anchors``), so they travel in the pickled UDF."""
    m, job = settings.models, settings.job
    lookback = job.anchor_lookback_ms if job.anchor_lookback_ms is not None else 2 * 3_600_000 + job.max_clock_skew_ms
    return ScoringConfig(
        registry_dir=str(registry_dir(settings).absolute()), model_version=m.version,
        watch_interval_s=m.watch_interval_s, device=m.device, policy=settings.policy,
        default_price_minor=settings.job.default_price_minor, currency=settings.job.currency,
        intra_op_threads=m.intra_op_threads, inter_op_threads=m.inter_op_threads,
        kafka=settings.job_kafka_client(), priced_topic=settings.kafka.topics.priced.name,
        anchor_lookback_ms=lookback, anchor_seed_timeout_s=job.anchor_seed_timeout_ms / 1000,
        anchor_history_hours=job.anchor_history_hours,
        recommendations_topic=settings.kafka.topics.recommendations.name if settings.recommend.enabled else None,
        honour_validity_ms=settings.recommend.honour_validity_ms, experiment=settings.experiment,
        # only the job's own exactly-once sinks leave transactions that another worker's wait could hold open
        anchor_seed_grace_s=(job.anchor_seed_grace_ms / 1000 if job.anchor_seed_grace_ms is not None
                             and job.delivery_guarantee == "exactly-once" else None),
    )  # fmt: skip


def build(t_env: TableEnvironment, settings: Settings, warm: WarmStart | None = None) -> StatementSet:
    """Declare sources, views and sinks on ``t_env``; return the statements to execute as one job."""
    topics = settings.kafka.topics
    inputs = declare_inputs(t_env, settings, warm)
    t_env.create_temporary_system_function("price_and_encode", udfs.price_and_encode_udf(scoring_config(settings)))
    # In the JVM (deploy/jvm pricing.deadletter), the same bytes as udfs.encode_dead_letters, so that rejected
    # records never cross into Python (tests/pricing_udfs/test_dead_letter_encoder.py).
    t_env._j_tenv.createTemporarySystemFunction("encode_dead_letter", get_gateway().jvm.pricing.deadletter.EncodeDeadLetter(
        json.dumps(serde.published_schema(Contract.DEAD_LETTER)), settings.job.dead_letter_max_raw_bytes,
        settings.privacy.dead_letter_payload == "digest"))
    t_env.execute_sql(_sink_ddl(settings, table="priced_sink", topic=topics.priced.name, id_suffix="priced"))
    t_env.execute_sql(_sink_ddl(settings, table="dead_letter_sink", topic=topics.dead_letters.name, id_suffix="dlq"))
    job = settings.job
    allowance = arrival_allowance_ms(max_clock_skew_ms=job.max_clock_skew_ms,
                                     watermark_out_of_orderness_ms=job.watermark_out_of_orderness_ms)
    recommend = "recommend" in inputs
    candidates = recommendations.declare_candidate_rows(t_env, recommend="recommend") if recommend else None
    featured = declare_feature_views(t_env, requests="requests", market="market", behaviour="behaviour",
                                     catalogue="catalogue",
                                     mode=job.serving_mode, allowance_ms=allowance, horizon_ms=job.arrival_horizon,
                                     candidates=candidates)  # fmt: skip
    if recommend and job.serving_mode == "event-time":
        featured = _shared(t_env, source=featured, view="featured_shared")
    t_env.execute_sql(f"CREATE TEMPORARY VIEW featured_prices AS SELECT * FROM {featured} WHERE slate_size IS NULL")
    copies = _first_copies(t_env, requests="featured_prices", window_ms=job.dedupe_window_ms,
                           arrival_allowance_ms=allowance if job.serving_mode == "arrival" else None)

    statements = t_env.create_statement_set()
    if recommend:
        t_env.execute_sql(_sink_ddl(settings, table="recommendations_sink", topic=topics.recommendations.name,
                                    id_suffix="recommend"))  # fmt: skip
        statements.add_insert_sql(recommendations.recommendations_sql(
            t_env, settings, recommend="recommend", featured=featured, scoring=scoring_config(settings),
            sink="recommendations_sink"))  # fmt: skip
    arguments = ", ".join((*udfs.REQUEST_COLUMNS, f"ARRAY[{', '.join(FEATURE_SPEC.names)}]"))
    statements.add_insert_sql(
        f"""
INSERT INTO priced_sink
SELECT CAST(request_id AS BYTES), price_and_encode({arguments})
FROM {copies} WHERE repeats = 0
"""
    )
    # The record time as the priced branch reads it: the rowtime in event-time mode, the decoder's record_time in
    # arrival mode (whose stages order by arrival). Reading another column would split the shared Python decoder.
    record = "ts" if job.serving_mode == "event-time" else "record_time"
    letter = f"SELECT source_topic, source_partition, source_offset, raw_value, error_kind, error_message, {record}"
    rejected = "\n  UNION ALL\n  ".join([*(f"{letter} FROM {view} WHERE NOT ok" for view in inputs), f"""{letter}
  FROM (SELECT request_topic AS source_topic, request_partition AS source_partition,
      request_offset AS source_offset, request_bytes AS raw_value,
      {"ts" if record == "ts" else "event_time AS record_time"},  -- equal: the decoder enforces it
      -- (a constant here, even cast to STRING, reached the Python encoder cut to its first
      -- character in Flink 2.2; an expression over a column is not folded into one)
      IF(repeats > 0, '{serde.ErrorKind.DUPLICATE.value}', request_id) AS error_kind,
      CONCAT('price_request: request_id ', request_id, ' was already requested for product ', product_id,
             ' within dedupe_window_ms ({settings.job.dedupe_window_ms}) of event time; the first copy is priced')
        AS error_message
    FROM {copies} WHERE repeats > 0)"""])
    statements.add_insert_sql(
        f"""
INSERT INTO dead_letter_sink
SELECT CAST(source_topic AS BYTES),
  encode_dead_letter(source_topic, source_partition, source_offset, raw_value, error_kind, error_message, {record})
FROM (
  {rejected}
)
"""
    )
    return statements


def _first_copies(
    t_env: TableEnvironment, *, requests: str, window_ms: int, arrival_allowance_ms: int | None = None
) -> str:
    """The featured requests, each with ``repeats``: how often its request_id was already requested
    for the same product within ``window_ms`` of event time before it (0: the first copy).

    A ``ROWS`` frame gives every row its own answer in event-time order (ties: arrival order),
    and the window function keeps only the window's ids, so the state per product stays bounded.
    It runs on the rows the feature stage releases, downstream of its watermark, so it adds no
    waiting (placed before the feature union instead, requests silently went missing: the
    stage's own requests-only watermark ran ahead of the union's). ``windowed_repeats`` is
    one of the Java window functions the feature stage declares.

    In arrival mode (``arrival_allowance_ms`` given) the rows are taken in arrival order and
    ``arrival_repeats`` counts the copies that arrived earlier with an event time within
    ``window_ms`` either side: the first copy to arrive is priced, nothing waits for a watermark.
    """
    if arrival_allowance_ms is not None:
        t_env.execute_sql(f"""
CREATE TEMPORARY VIEW request_copies AS
SELECT *,
  arrival_repeats(event_time, request_id, CAST({window_ms} AS BIGINT), CAST({arrival_allowance_ms} AS BIGINT)) OVER (
    PARTITION BY product_id ORDER BY pt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS repeats
FROM (SELECT *, PROCTIME() AS pt FROM {requests})
""")
        return "request_copies"
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW request_copies AS
SELECT *,
  windowed_repeats(event_time, request_id, CAST({window_ms} AS BIGINT)) OVER (
    PARTITION BY product_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS repeats
FROM {requests}
""")
    return "request_copies"


def _rest_address(settings: Settings, jobmanager: str | None) -> tuple[str, str]:
    """Host and port of the REST API the job is submitted to: the remote JobManager's, else the local MiniCluster's."""
    if jobmanager:
        host, _, port = jobmanager.partition(":")
        return host, port or "8081"
    return "127.0.0.1", str(settings.job.rest_port)


_PORT_ATTEMPTS = 3
# Job id -> the REST address of the cluster it runs on (see wait_until_running).
_REST_URLS: dict[str, str] = {}


def run(settings: Settings, *, jobmanager: str | None = None, wait: bool = True) -> TableResult:
    """Build and submit the job; with ``wait`` block until it ends (bounded runs, or Ctrl-C).

    It resumes from the deployment's latest retained checkpoint unless ``job.start`` is
    ``fresh`` or ``job.restore_from`` names a savepoint (``pricing.checkpoints.plan_start``).
    """
    topics = settings.kafka.topics
    used = [topics.requests, topics.market, topics.behaviour, topics.catalogue, topics.priced, topics.dead_letters]
    if settings.recommend.enabled:
        used += [topics.recommend_requests, topics.recommendations]
    require_topics(settings.kafka, [t.name for t in used])
    prepare_job_secrets(settings)
    start = plan_start(settings)
    print(f"pricing job: {start.note}", file=sys.stderr, flush=True)
    # Without restored state the behaviour and market inputs start early enough to fill the windows.
    warm = plan_warm_start(settings) if start.restore_from is None else None
    if warm is not None:
        print(f"pricing job: {warm.describe()}", file=sys.stderr, flush=True)
    if jobmanager:
        flink_jars(settings.state_dir)  # the job's own jar ships to the cluster: fail here, saying how to fetch it
    pick_port = jobmanager is None and settings.job.rest_port is None  # the MiniCluster's REST API on a free port
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        if pick_port:
            settings = settings.model_copy(update={"job": settings.job.model_copy(update={"rest_port": free_port()})})
        t_env = create_table_env(settings, jobmanager=jobmanager, start=start)
        try:
            result = build(t_env, settings, warm).execute()
            break
        except Exception as exc:  # noqa: BLE001 - only a lost race for the free port is retried
            # A port found free can be taken before the MiniCluster binds it (any process's outgoing connection
            # may get it from the same ephemeral range): pick another one.
            if not (pick_port and attempt < _PORT_ATTEMPTS and "Could not start rest endpoint" in str(exc)):
                raise
            print(f"pricing job: REST port {settings.job.rest_port} was taken meanwhile; another one", file=sys.stderr)
    host, port = _rest_address(settings, jobmanager)
    _REST_URLS[str(result.get_job_client().get_job_id())] = f"http://{host}:{port}"
    if wait:
        result.wait()
    return result


def wait_until_running(result: TableResult, *, timeout_s: float = 120.0) -> None:
    """Block until every task of a submitted job runs (its Kafka readers are open), as Flink's REST API says.

    The job's own status turns RUNNING while its tasks are still being deployed, so it
    is not enough; each vertex of ``/jobs/<id>`` must be RUNNING.
    """
    job_id = str(result.get_job_client().get_job_id())
    url = f"{_REST_URLS[job_id]}/jobs/{job_id}"
    deadline = time.monotonic() + timeout_s
    last = "no answer from the REST API"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                job = json.load(response)
        except OSError as exc:
            last = str(exc)
        else:
            if job["state"] in {"FAILED", "CANCELED", "FINISHED"}:
                raise RuntimeError(f"the job stopped while starting: {job['state']}")
            pending = [v["name"] for v in job["vertices"] if v["status"] != "RUNNING"]
            if job["state"] == "RUNNING" and not pending:
                return
            last = f"job {job['state']}, tasks not running yet: {pending}"
        time.sleep(0.3)
    raise RuntimeError(f"the job was not running after {timeout_s:.0f}s ({last})")


def stop_with_savepoint(result: TableResult, *, directory: str, drain: bool = False, timeout_s: float = 120.0) -> str:
    """Stop a submitted job with a savepoint in ``directory`` (URI) and return the savepoint's path.

    ``drain`` first advances event time to its end, which flushes every request still
    waiting for the watermark (use it when nothing more will arrive, not for an upgrade).
    The output of everything before the savepoint is committed, so a job restored from it
    (``job.restore_from``) continues exactly once. PyFlink 2.2's ``JobClient.stop_with_savepoint``
    calls a Java signature that no longer exists, hence the direct call.
    """
    from pyflink.java_gateway import get_gateway

    fmt = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    future = result.get_job_client()._j_job_client.stopWithSavepoint(drain, directory, fmt)
    return str(future.get(int(timeout_s * 1000), get_gateway().jvm.java.util.concurrent.TimeUnit.MILLISECONDS))


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``flink run -py jobs/pricing_job.py [--config FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.add_argument("--jobmanager", default=None, help="HOST:PORT of a remote Flink REST endpoint")
    args, _ = parser.parse_known_args(argv)
    run(load_settings(args.config), jobmanager=args.jobmanager, wait=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
