"""The pricing job graph: Kafka in, decode, join context, price, Kafka out.

    price-requests ─┐                         ┌─> priced-events
                    ├─ decode (Arrow batch) ──┤
    market-events ──┘        │                └─> dead-letters (bad bytes, bad values)
                             └─ latest list price per product (versioned view)
                                  └─ event-time temporal join ─> price + encode (Arrow batch)

Per-event work (watermarks, the versioned view, the join) runs in the JVM as Flink
SQL; Python runs only in vectorized UDFs, once per Arrow batch (``pricing_udfs.udfs``).

Event time is the Kafka record timestamp, which producers must set to the payload's
``event_time``; a record where they differ is dead-lettered (``invalid_value``).
A request is priced once the watermark passes its event time, i.e. with a latency of
about ``watermark_out_of_orderness_ms``; in exchange the context it sees is exactly
the market as of the request (no future leakage, replays give the same answer).

Guarantees:
  * ``exactly-once`` (default): sources read ``read_committed``; both sinks write in
    Kafka transactions committed on checkpoint completion, so after any failure and
    restart from a checkpoint each good request appears exactly once in
    priced-events and each bad record exactly once in dead-letters, to
    read_committed consumers. Output becomes visible at checkpoint intervals.
  * ``at-least-once``: no transactions; output is visible immediately; after a
    failure, records since the last checkpoint may be emitted again (same price:
    the policy is deterministic). Consumers dedupe on request_id.

Run it locally with ``pricing job run``; submit the same file to a cluster with
``flink run -py jobs/pricing_job.py`` (see README).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from pyflink.table import EnvironmentSettings, StatementSet, TableEnvironment, TableResult

from pricing.config import Settings, load_settings
from pricing.jars import flink_jars
from pricing_udfs import udfs
from pricing_udfs.policy import BaselineListPrice, Policy
from pricing_udfs.serde import Contract


def create_table_env(settings: Settings, *, jobmanager: str | None = None) -> TableEnvironment:
    """A streaming TableEnvironment configured from ``settings`` (local MiniCluster by default)."""
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = t_env.get_config()
    for key, value in _flink_conf(settings, jobmanager=jobmanager).items():
        conf.set(key, value)
    return t_env


def _flink_conf(settings: Settings, *, jobmanager: str | None) -> dict[str, str]:
    job = settings.job
    exactly_once = job.delivery_guarantee == "exactly-once"
    conf = {
        "pipeline.name": job.name,
        "parallelism.default": str(job.parallelism),
        "execution.checkpointing.interval": f"{job.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE" if exactly_once else "AT_LEAST_ONCE",
        "state.backend.type": job.state_backend,
        "table.exec.source.idle-timeout": f"{job.idle_timeout_ms} ms",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.fn-execution.bundle.size": str(job.python_bundle_size),
        "python.fn-execution.bundle.time": str(job.python_bundle_time_ms),
        "python.fn-execution.arrow.batch.size": str(job.python_bundle_size),
    }
    if job.checkpoint_dir:
        conf["execution.checkpointing.dir"] = job.checkpoint_dir
    if jobmanager:
        host, _, port = jobmanager.partition(":")
        conf.update({"execution.target": "remote", "rest.address": host, "rest.port": port or "8081"})
    if job.ship_jars:
        conf["pipeline.jars"] = ";".join(j.resolve().as_uri() for j in flink_jars(settings.state_dir))
    return conf


def _kafka_props(settings: Settings, prefix: str = "properties.") -> str:
    return ",\n".join(f"'{prefix}{k}' = '{_q(v)}'" for k, v in settings.kafka.java_client_properties().items())


def _q(value: str) -> str:
    return value.replace("'", "''")


def _source_ddl(settings: Settings, *, table: str, topic: str) -> str:
    job = settings.job
    bounded = "'scan.bounded.mode' = 'latest-offset'," if job.bounded else ""
    return f"""
CREATE TEMPORARY TABLE {table} (
  `value` BYTES,
  `topic` STRING METADATA VIRTUAL,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',
  WATERMARK FOR `ts` AS `ts` - INTERVAL '{job.watermark_out_of_orderness_ms / 1000:.3f}' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '{_q(topic)}',
  {_kafka_props(settings)},
  'properties.group.id' = '{_q(job.consumer_group)}',
  'properties.isolation.level' = 'read_committed',
  'properties.auto.offset.reset' = 'earliest',
  'scan.startup.mode' = '{job.startup_mode}',
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


def _decoded_view(*, view: str, source: str, decoder: str, contract: Contract) -> str:
    """Decode once. Both the priced and the dead-letter branch read only ``ts`` and ``d``,
    so the planner shares one Python decode operator between them."""
    return f"""
CREATE TEMPORARY VIEW {view} AS
SELECT `ts`, {", ".join(f"x.d.`{n}` AS `{n}`" for n in udfs.decoded_field_names(contract))}
FROM (SELECT `ts`, {decoder}(`value`, `topic`, `partition`, `offset`, `ts`) AS d FROM {source}) AS x
"""


def build(t_env: TableEnvironment, settings: Settings, *, policy: Policy | None = None) -> StatementSet:
    """Declare sources, views and sinks on ``t_env``; return the statements to execute as one job."""
    topics = settings.kafka.topics
    policy = policy or BaselineListPrice(
        default_price_minor=settings.job.default_price_minor, currency=settings.job.currency
    )
    t_env.create_temporary_system_function("decode_price_request", udfs.decoder(Contract.PRICE_REQUEST))
    t_env.create_temporary_system_function("decode_market_event", udfs.decoder(Contract.MARKET_EVENT))
    t_env.create_temporary_system_function("price_and_encode", udfs.pricer(policy))
    t_env.create_temporary_system_function("encode_dead_letter", udfs.dead_letter_encoder())

    for ddl in (
        _source_ddl(settings, table="requests_src", topic=topics.requests.name),
        _source_ddl(settings, table="market_src", topic=topics.market.name),
        _sink_ddl(settings, table="priced_sink", topic=topics.priced.name, id_suffix="priced"),
        _sink_ddl(settings, table="dead_letter_sink", topic=topics.dead_letters.name, id_suffix="dlq"),
        _decoded_view(view="requests", source="requests_src", decoder="decode_price_request", contract=Contract.PRICE_REQUEST),
        _decoded_view(view="market", source="market_src", decoder="decode_market_event", contract=Contract.MARKET_EVENT),
        # Versioned view: the latest list price per product, as of any event time.
        """
CREATE TEMPORARY VIEW list_prices AS
SELECT product_id, list_price_minor, list_currency, ts FROM (
  SELECT product_id, `value` AS list_price_minor, currency AS list_currency, ts,
    ROW_NUMBER() OVER (PARTITION BY product_id ORDER BY ts DESC) AS rn
  FROM (SELECT product_id, `value`, currency, ts FROM market WHERE ok AND kind = 'list_price')
) WHERE rn = 1
""",
    ):
        t_env.execute_sql(ddl)

    statements = t_env.create_statement_set()
    statements.add_insert_sql(
        """
INSERT INTO priced_sink
SELECT CAST(r.request_id AS BYTES),
  price_and_encode(r.request_id, r.user_id, r.product_id, r.channel, r.event_time,
                   lp.list_price_minor, lp.list_currency)
FROM (SELECT * FROM requests WHERE ok) AS r
LEFT JOIN list_prices FOR SYSTEM_TIME AS OF r.ts AS lp ON r.product_id = lp.product_id
"""
    )
    statements.add_insert_sql(
        """
INSERT INTO dead_letter_sink
SELECT CAST(source_topic AS BYTES),
  encode_dead_letter(source_topic, source_partition, source_offset, raw_value, error_kind, error_message, ts)
FROM (
  SELECT source_topic, source_partition, source_offset, raw_value, error_kind, error_message, ts FROM requests WHERE NOT ok
  UNION ALL
  SELECT source_topic, source_partition, source_offset, raw_value, error_kind, error_message, ts FROM market WHERE NOT ok
)
"""
    )
    return statements


def run(settings: Settings, *, jobmanager: str | None = None, wait: bool = True) -> TableResult:
    """Build and submit the job; with ``wait`` block until it ends (bounded runs, or Ctrl-C)."""
    t_env = create_table_env(settings, jobmanager=jobmanager)
    result = build(t_env, settings).execute()
    if wait:
        result.wait()
    return result


def wait_until_running(result: TableResult, *, timeout_s: float = 120.0, settle_s: float = 2.0) -> None:
    """Block until a submitted job reports RUNNING (plus ``settle_s`` for its Kafka readers to open)."""
    client = result.get_job_client()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status().result().name
        if status == "RUNNING":
            time.sleep(settle_s)
            return
        if status in {"FAILED", "CANCELED", "FINISHED"}:
            raise RuntimeError(f"the job stopped while starting: {status}")
        time.sleep(0.5)
    raise RuntimeError(f"the job was not running after {timeout_s:.0f}s")


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
