"""Write a simulated history into the engine's input topics, as its consumers would have seen it.

``publish_history`` produces the three input contracts of a ``History`` (behaviour,
market and price-request events) to Kafka, after the catalogue (one ``CatalogueEntry`` per product,
stamped at the history's start, when the topics name a catalogue topic), so that a job started on those topics warms
its windows up on the history (typically one made by ``history.history_ending_at`` to end
now, followed by a live run continuing it from ``History.end_state``).

Guarantees:

* every record is framed and encoded by ``pricing_udfs.serde.encode`` (the wire format),
  with key = ``product_id`` and Kafka timestamp = ``event_time`` (the engine requires it);
* records go out in arrival order, merged across the three topics (ties: market, then
  requests, then behaviour, as a tick of the simulated market has them), so within each
  topic late events stay late exactly as in the history, and no topic runs ahead of the
  others by more than the history's own lateness (a job reading while it publishes does not
  see one input go idle and the others' events turn late);
* the producer is idempotent (``acks=all``), so a retried batch is not duplicated; any
  record not delivered makes it raise ``LiveError`` (one line), as do an unreachable broker
  and a missing topic;
* it returns how many records went to each topic, which equals the history's counts.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Mapping, TextIO

import numpy as np

from confluent_kafka import KafkaError

from pricing.config import TopicsSettings
from pricing.sim._progress import Progress
from pricing.sim.history import History, _fields
from pricing.sim.live import LiveError, LiveTopics, ProducerLike, _one_line, check_topics
from pricing.sim.market import build_market, catalogue_entries
from pricing_udfs.serde import Contract, encode

# Large batches: the history is a bulk load, latency does not matter; lz4 keeps the network and the log small.
PRODUCER_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 100,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "delivery.report.only.error": True,
    "log_level": 2,
}


def publish_history(
    history: History,
    *,
    kafka_config: Mapping[str, Any],
    topics: LiveTopics | TopicsSettings | None = None,
    progress: TextIO | None = None,
    producer: ProducerLike | None = None,
    connect_timeout_s: float = 10.0,
    flush_timeout_s: float = 300.0,
    until_ms: int | None = None,
) -> dict[str, int]:
    """Produce ``history`` to the behaviour, market and request topics; returns records per topic name.

    Only what had arrived by ``until_ms`` (default: the wall clock now) goes out: a history that ends now
    has a few events after its end (reviews up to a day after the view, purchases minutes after it, late
    arrivals), which nobody could have seen yet (and brokers refuse timestamps far ahead of their clock).
    For a history in the past, that is all of it.
    """
    names = topics if isinstance(topics, LiveTopics) else LiveTopics.of(topics)
    bootstrap = str(kafka_config.get("bootstrap.servers", "?"))
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            return
        if err.code() == KafkaError._INVALID_DIFFERENT_RECORD:
            errors.append(str(err))  # failed with its batch: another record of it is the cause
        else:
            errors.insert(0, str(err))

    if producer is None:
        from confluent_kafka import Producer

        producer = Producer({**PRODUCER_CONFIG, "error_cb": lambda err: None, **kafka_config})
    needed = [names.behaviour, names.market, names.requests] + ([names.catalogue] if names.catalogue else [])
    check_topics(producer, needed, bootstrap=bootstrap, timeout_s=connect_timeout_s)
    counts: dict[str, int] = {}
    if names.catalogue:  # what the products are, before anything happens to them
        entries = catalogue_entries(build_market(history.scenario), event_time_ms=history.start_ms)
        for rec in entries:
            producer.produce(names.catalogue, value=encode(Contract.CATALOGUE_ENTRY, rec), key=rec["product_id"].encode(),
                             timestamp=rec["event_time"], on_delivery=on_delivery)  # fmt: skip
        counts[names.catalogue] = len(entries)

    # market first on ties, then requests, then behaviour (a tick's changes go out before its shoppers)
    plan = [(Contract.MARKET_EVENT, names.market), (Contract.PRICE_REQUEST, names.requests),
            (Contract.BEHAVIOUR_EVENT, names.behaviour)]  # fmt: skip
    until = time.time_ns() // 1_000_000 if until_ms is None else until_ms
    frames = {c: f[f["arrival_time"] <= until] for c, f in history.frames().items()}
    arrival = [frames[c]["arrival_time"].to_numpy(np.int64) for c, _ in plan]
    source = np.repeat(np.arange(len(plan), dtype=np.int8), [a.size for a in arrival])
    order = np.lexsort((source, np.concatenate(arrival)))  # stable: each topic keeps its own (arrival) order
    sources = source[order].tolist()
    streams = [_records(c, frames[c]) for c, _ in plan]
    total = len(sources)
    counts |= {topic: 0 for _, topic in plan}
    status = Progress(progress)
    t0 = time.perf_counter()
    produce = producer.produce
    for i, s in enumerate(sources):
        topic = plan[s][1]
        key, timestamp, value = next(streams[s])
        while True:
            try:
                produce(topic, value=value, key=key, timestamp=timestamp, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        counts[topic] += 1
        if not i % 20_000:
            producer.poll(0)
            if errors:
                break
            elapsed = time.perf_counter() - t0
            status.update(f"publishing the history: {i:,}/{total:,} events ({i / elapsed if elapsed else 0:,.0f} events/s)")
    left = producer.flush(flush_timeout_s)
    status.clear()
    if errors:
        raise LiveError(f"{len(errors):,} history records were not delivered to {bootstrap}; first: {_one_line(Exception(errors[0]))}")
    if left:
        raise LiveError(f"{left:,} history records were still undelivered to {bootstrap} after {flush_timeout_s:g} s")
    return counts


def _records(contract: Contract, frame: Any) -> Iterator[tuple[bytes, int, bytes]]:
    """(key, timestamp, value) per row of ``frame`` in its order: the encoded record, keyed by product."""
    fields = _fields(contract, frame)
    columns = [frame[c].tolist() for c in fields]
    at_product, at_time = fields.index("product_id"), fields.index("event_time")
    for values in zip(*columns):
        yield values[at_product].encode(), values[at_time], encode(contract, dict(zip(fields, values)))
