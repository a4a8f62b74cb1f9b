"""The archive: every topic the engine reads and writes, copied to files, exactly once.

    behaviour-events, market-events, price-requests, catalogue,      ┐
    priced-events, dead-letters, recommend-requests, recommendations ┴─ FileSystem sink ('contract-avro')
        -> <archive>/<topic>/dt=YYYY-MM-DD/hour=HH/part-*.avro

A companion job on the same cluster as the pricing job (``pricing archive run``, or ``flink run -py
jobs/archive.py``), with its own consumer group and checkpoints: it can be stopped, upgraded or started again
without touching pricing. No Python runs per record: the job is Flink SQL, and the format
(``pricing.archive.ContractAvroFormatFactory``, deploy/jvm) decodes each Kafka value with Java Avro, resolves it to
the contract's current schema and appends it to an Avro object container file. The layout and how to read it back
are in ``pricing.archive_layout``; ``pricing backfill --archive``, ``pricing training-set --archive`` and
``pricing learn`` read it.

Guarantees:
  * Exactly once in the visible files, across any crash (``kill -9`` included): the sources read
    ``read_committed`` (an aborted transaction of the pricing job is never archived) and their offsets are in the
    checkpoint; the sink keeps a file hidden (``.part-...``) until the checkpoint that covers its records completes,
    then renames it. A restart resumes from the latest retained checkpoint (``pricing.checkpoints``, the archive's
    own consumer group), commits the files that checkpoint had pending and re-reads from its offsets; the hidden
    leftovers of the crashed run are never made visible. ``tests/jobs/test_archive.py`` kills the job and counts.
  * Visibility: a record shows up in the archive at the first checkpoint after it was read
    (``[archive] checkpoint_interval_ms``, a minute by default).
  * What is left out: a record that does not decode or breaks its contract's rules (the pricing job dead-letters it,
    and the dead letter is archived), counted in the task manager's log.
  * A fresh start (no checkpoint) reads every topic from its earliest retained record, so the archive holds what the
    topics still retain; ``--fresh`` on an existing archive writes those records again beside the old files.
  * Shoppers' ids are archived as the topics hold them: raw on the input topics, pseudonyms on the engine's
    outputs. Protect the archive like the topics (README, Privacy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pyflink.table import StatementSet, TableEnvironment, TableResult

from jobs.pricing_job import _q, _source_ddl, create_table_env
from pricing.broker import free_port
from pricing.checkpoints import plan_start
from pricing.config import Settings, TopicsSettings, load_settings
from pricing.topics import require_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract

# Each topic of [kafka.topics] (by its key there) and the contract its records follow.
CONTRACTS: dict[str, Contract] = {
    "behaviour": Contract.BEHAVIOUR_EVENT,
    "market": Contract.MARKET_EVENT,
    "requests": Contract.PRICE_REQUEST,
    "priced": Contract.PRICED_EVENT,
    "dead_letters": Contract.DEAD_LETTER,
    "recommend_requests": Contract.RECOMMEND_REQUEST,
    "recommendations": Contract.RECOMMENDATION,
    "catalogue": Contract.CATALOGUE_ENTRY,
}
if set(CONTRACTS) != set(TopicsSettings.model_fields):  # a new topic must say what it holds
    raise AssertionError(f"jobs.archive.CONTRACTS covers {sorted(CONTRACTS)}, the topics are "
                         f"{sorted(TopicsSettings.model_fields)}")  # fmt: skip


def archived_topics(settings: Settings) -> list[tuple[str, str, Contract]]:
    """``(key, topic name, contract)`` of each topic the archive copies (``[archive] topics``, default all; the
    recommendation topics only while ``[recommend] enabled``)."""
    keys = settings.archive.topics
    if keys is None:
        keys = [k for k in CONTRACTS if settings.recommend.enabled or k not in ("recommend_requests", "recommendations")]
    topics = settings.kafka.topics
    return [(k, getattr(topics, k).name, CONTRACTS[k]) for k in dict.fromkeys(keys)]


def archive_settings(settings: Settings) -> Settings:
    """The settings the archive job runs with: the pricing job's Kafka and state, its own name, consumer group
    (which also keeps its checkpoints apart) and checkpoint interval; exactly-once checkpoints."""
    archive = settings.archive
    job = settings.job.model_copy(update={
        "name": f"{settings.job.name}-archive",
        "consumer_group": archive.consumer_group,
        "checkpoint_interval_ms": archive.checkpoint_interval_ms,
        "delivery_guarantee": "exactly-once",
        "serving_mode": "event-time",  # no arrival knobs: nothing here waits for anything
        "buffer_timeout_ms": None,
    })  # fmt: skip
    return settings.model_copy(update={"job": job})


def _sink_ddl(settings: Settings, *, table: str, topic: str, contract: Contract) -> str:
    archive = settings.archive
    path = f"{archive.root(settings.state_dir).rstrip('/')}/{topic}"
    writers = "\n".join(json.dumps(s) for s in serde.frozen_schemas(contract))
    return f"""
CREATE TEMPORARY TABLE {table} (
  `value` BYTES,
  `dt` STRING,
  `hour` STRING
) PARTITIONED BY (`dt`, `hour`) WITH (
  'connector' = 'filesystem',
  'path' = '{_q(path)}',
  'format' = 'contract-avro',
  'contract-avro.contract' = '{contract.value}',
  'contract-avro.schema' = '{_q(json.dumps(serde.published_schema(contract)))}',
  'contract-avro.writer-schemas' = '{_q(writers)}',
  'contract-avro.codec' = '{archive.codec}',
  'sink.rolling-policy.file-size' = '{archive.max_file_bytes}b'
)"""


def build(t_env: TableEnvironment, settings: Settings) -> StatementSet:
    """One Kafka source and one file sink per archived topic, all in one statement set (one job)."""
    # Partitions are UTC hours: DATE_FORMAT renders a TIMESTAMP_LTZ in the session's time zone.
    t_env.get_config().set("table.local-time-zone", "UTC")
    statements = t_env.create_statement_set()
    for key, topic, contract in archived_topics(settings):
        source, sink = f"archive_in_{key}", f"archive_out_{key}"
        t_env.execute_sql(_source_ddl(settings, table=source, topic=topic, from_ms=0))
        t_env.execute_sql(_sink_ddl(settings, table=sink, topic=topic, contract=contract))
        statements.add_insert_sql(
            f"INSERT INTO {sink} SELECT `value`, DATE_FORMAT(`ts`, 'yyyy-MM-dd'), DATE_FORMAT(`ts`, 'HH') FROM {source}")
    return statements


def run(settings: Settings, *, jobmanager: str | None = None, wait: bool = True) -> TableResult:
    """Build and submit the archive job (the pricing job's settings; ``[archive]`` for its own); with ``wait``
    block until it ends (``[job] bounded``, or Ctrl-C). It resumes from its latest retained checkpoint unless
    ``job.start`` is ``fresh`` (``pricing.checkpoints.plan_start``)."""
    settings = archive_settings(settings)
    if jobmanager is None and settings.job.rest_port is None:  # the MiniCluster's REST API, on a free port
        settings = settings.model_copy(update={"job": settings.job.model_copy(update={"rest_port": free_port()})})
    topics = archived_topics(settings)
    require_topics(settings.kafka, [name for _, name, _ in topics])
    start = plan_start(settings)
    print(f"archive job: {start.note}; {len(topics)} topics to {settings.archive.root(settings.state_dir)}",
          file=sys.stderr, flush=True)  # fmt: skip
    t_env = create_table_env(settings, jobmanager=jobmanager, start=start)
    result = build(t_env, settings).execute()
    if wait:
        result.wait()
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``flink run -py jobs/archive.py [--config FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.add_argument("--jobmanager", default=None, help="HOST:PORT of a remote Flink REST endpoint")
    parser.add_argument("--fresh", action="store_true", help="start without the archive's earlier checkpoints")
    parser.add_argument("--bounded", action="store_true", help="stop after the offsets that are latest now")
    args, _ = parser.parse_known_args(argv)
    settings = load_settings(args.config)
    update: dict[str, Any] = {}
    if args.fresh:
        update["start"] = "fresh"
    if args.bounded:
        update["bounded"] = True
    if update:
        settings = settings.model_copy(update={"job": settings.job.model_copy(update=update)})
    run(settings, jobmanager=args.jobmanager, wait=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
