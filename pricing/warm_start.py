"""Warm start: where a job without state starts reading its inputs.

A job that starts without state (no checkpoint or savepoint: a first deploy, ``--fresh``, a release
that changes the feature plan) would otherwise price its first requests with empty windows: no
views in the last hour, no purchases in the last day, no list price for a product whose price was
set last week. With a warm start the behaviour input starts ``[job] warm_start_ms`` (default 24 h, the
longest window) of event time before the first request the job will read, and the market input
from its earliest retained record (or ``[job] warm_start_market_ms`` back: list prices, costs, stock
and promotions are latest values, published when they change, possibly weeks ago), so the first request is priced with the windows and the latest
values a job that had run through would hold (``jobs.features``). The all-history values of a user
(mean paid ratio, time since the last purchase, new user) then cover the warm start's history only.

Where the requests start is the configuration's (``[job] startup_mode``):

* ``group-offsets``: the consumer group's committed offset of each partition (the earliest offset
  where the group has none, as the source's ``auto.offset.reset`` says), so the first request read
  is the record there; a partition with nothing left to read counts as now;
* ``earliest-offset``: the first record of each partition;
* ``latest-offset``: now;
* ``timestamp``: ``startup_timestamp_ms``.

The warm start reads from the earliest of those, minus ``warm_start_ms`` (behaviour) or
the earliest retained market record. The behaviour topic must retain at least ``warm_start_ms`` and
the market topic every product's last value of each kind still in force, plus the longest outage the
job should recover from (README, "Warm start"); what they no longer hold is
simply not there (the windows then start later, a product without a known list price gets the fallback).

Guarantee: the computed start is a lower bound of every request's window start, so no context event
a request's windows need is skipped (unless retention deleted it). With a checkpoint or savepoint
the inputs resume from their restored offsets and this module is not used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from pricing.config import Settings
from pricing_udfs.kafka_retry import retried

_TIMEOUT_S = 30.0


class WarmStartError(RuntimeError):
    """The requests topic could not be read to find where the job starts; the message says what to do."""


@dataclass(frozen=True)
class WarmStart:
    """Where the requests input starts (epoch ms) and where the behaviour and market inputs start."""

    requests_from_ms: int
    context_from_ms: int
    market_from_ms: int

    def describe(self) -> str:
        market = ("their earliest retained record" if self.market_from_ms == 0 else
                  f"{_iso(self.market_from_ms)} ({(self.requests_from_ms - self.market_from_ms) / 3_600_000:g} h)")
        return (f"warm start: behaviour events from {_iso(self.context_from_ms)} "
                f"({(self.requests_from_ms - self.context_from_ms) / 3_600_000:g} h before the first request to read, "
                f"{_iso(self.requests_from_ms)}), market events from {market}")  # fmt: skip


def plan_warm_start(
    settings: Settings, *, now_ms: int | None = None, consumer_factory: Callable[[dict[str, Any]], Any] | None = None
) -> WarmStart | None:
    """The warm start of a job that starts without state, or None when ``warm_start_ms`` is 0."""
    job = settings.job
    if job.warm_start_ms <= 0:
        return None
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    first = requests_start_ms(settings, now_ms=now, consumer_factory=consumer_factory)
    market_from = 0 if job.warm_start_market_ms is None else first - max(job.warm_start_ms, job.warm_start_market_ms)
    return WarmStart(requests_from_ms=first, context_from_ms=max(first - job.warm_start_ms, 0),
                     market_from_ms=max(market_from, 0))


def requests_start_ms(
    settings: Settings, *, now_ms: int, consumer_factory: Callable[[dict[str, Any]], Any] | None = None
) -> int:
    """The event time of the first request a job without state reads (see the module docstring)."""
    job = settings.job
    if job.startup_mode == "timestamp":
        assert job.startup_timestamp_ms is not None  # the settings validate it
        return job.startup_timestamp_ms
    if job.startup_mode == "latest-offset":
        return now_ms
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    topic = settings.kafka.topics.requests.name
    conf = settings.kafka.client_config() | {
        # committed() reads this group's offsets; the consumer never subscribes, so it never joins the group
        "group.id": job.consumer_group, "enable.auto.commit": False, "isolation.level": "read_committed",
        "auto.offset.reset": "earliest", "log_level": 2, "error_cb": lambda _err: None,
    }  # fmt: skip
    consumer = (consumer_factory or Consumer)(conf)
    where = f"{topic} on {settings.kafka.bootstrap_servers}"
    try:
        try:
            meta = consumer.list_topics(topic, timeout=_TIMEOUT_S)
        except KafkaException as exc:
            raise WarmStartError(f"cannot reach Kafka to find where {topic} starts: {_one_line(exc)}") from None
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise WarmStartError(f"topic {where} not found; create the topics first (pricing topics create)")
        partitions = [TopicPartition(topic, p) for p in sorted(info.partitions)]
        if job.startup_mode == "group-offsets":
            offsets = {tp.partition: tp.offset for tp in _committed(consumer, partitions)}
        else:
            offsets = {}
        first = now_ms
        for tp in partitions:
            low, high = retried(lambda: consumer.get_watermark_offsets(tp, timeout=_TIMEOUT_S), timeout_s=_TIMEOUT_S)
            offset = offsets.get(tp.partition, -1)
            offset = low if offset is None or offset < 0 else max(offset, low)
            if offset >= high:
                continue  # nothing to read there: its first request arrives from now on
            stamp = _timestamp_at(consumer, TopicPartition(topic, tp.partition, offset))
            if stamp is not None:
                first = min(first, stamp)
        return first
    except KafkaException as exc:
        raise WarmStartError(f"cannot read {where} to find where the job starts: {_one_line(exc)}") from None
    finally:
        consumer.close()


def _committed(consumer: Any, partitions: list[Any]) -> list[Any]:
    """The group's committed offsets; retried while the group coordinator is not ready (a new broker or group)."""
    return retried(lambda: consumer.committed(partitions, timeout=_TIMEOUT_S), timeout_s=_TIMEOUT_S)


def _timestamp_at(consumer: Any, tp: Any) -> int | None:
    """The record timestamp at ``tp``'s offset (or of the next committed record), or None."""
    consumer.assign([tp])
    deadline = time.monotonic() + _TIMEOUT_S
    while time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1, timeout=1.0):
            if msg.error() is None:
                return int(msg.timestamp()[1])
    raise WarmStartError(f"no record read at {tp.topic}[{tp.partition}] offset {tp.offset} within {_TIMEOUT_S:g} s")


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
