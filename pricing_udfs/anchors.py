"""Per-product anchors for the hourly-change guardrail (``max_change``), and their rebuild at start.

**The anchor rule.** For a request of product P whose event time lies in hour h (UTC hours of event
time, ``event_time // 3_600_000``), the anchor is the price of the *last* priced request of P in the
most recent hour g < h in which P was priced at all, "last" ordered by the request's event time,
then its ``priced_time``, then its ``request_id`` (a full tie, which the job never writes, goes to the
higher price). With no such hour there is no anchor (0) and
``max_change`` sets no limit. A request of an older hour (a backlog after an outage, a request that
arrives out of order) therefore gets the anchor of *its* hour, not the product's newest one.

"Priced" means: in a batch that this worker priced before the current one since it started, or in a
priced event read from the priced-events topic when it started (:func:`seed_from_topic`). The rows
of one batch get their anchors before any of them is recorded: a batch never anchors on itself.

**Bounded memory.** Per product the :class:`Anchors` keep the ``history_hours`` most recent hours up
to the product's newest priced hour n (``n - history_hours < hour <= n``), each with its last key
and price; older hours are dropped, and a price for such an hour changes nothing. So the rule holds
exactly except for a request whose hour g lies ``history_hours`` or more hours before n (a request
at least that much older than the product's newest price, with no price of the product in between),
which gets no anchor. The state is a function of the *set* of prices recorded, whatever their order
and however they were split into batches, so a worker that rebuilds it from the topic ends with the
state an uninterrupted worker would have, for the prices the topic holds (the property test
recomputes the rule by brute force).

Products are bounded too (``max_products``, :data:`MAX_PRODUCTS`): beyond it the products priced longest ago are
forgotten first, and get no anchor until they are priced again.

**The rebuild at start** (:func:`seed_from_topic`) reads the priced-events topic with a
``read_committed`` consumer; see its docstring for what it waits for and what it costs.
"""

from __future__ import annotations

import copy
import io
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable, NamedTuple

import fastavro
import numpy as np
import pandas as pd
from confluent_kafka import Consumer, KafkaException, TopicPartition

from pricing_udfs import serde
from pricing_udfs.kafka_retry import retried
from pricing_udfs.serde import Contract

log = logging.getLogger(__name__)
HOUR_MS = 3_600_000
DEFAULT_HISTORY_HOURS = 3
MAX_PRODUCTS = 2_000_000  # products with anchors a worker keeps (a catalogue bound; the rule is exact below it)

# (request event time, priced_time, request_id, price): "last" is the largest. The price only breaks a
# full tie, which the job never writes (one request id, one priced_time, one price), so that the state
# never depends on the order prices arrive in.
Key = tuple[int, int, str, int]


class PricedKey(NamedTuple):
    """What the anchors need of one priced event."""

    product_id: str
    request_time: int  # the request's event time (ms)
    priced_time: int  # when the worker priced it (ms)
    request_id: str
    price_minor: int


class Anchors:
    """The anchor of each product per hour (see the module docstring for the rule and the bound)."""

    def __init__(self, history_hours: int = DEFAULT_HISTORY_HOURS, max_products: int = MAX_PRODUCTS) -> None:
        if history_hours < 2:
            raise ValueError("history_hours must be at least 2 (the request's hour and the one before)")
        self.history_hours = history_hours
        self.max_products = max_products
        # product -> hour -> (last key, its price); and product -> its newest hour
        self._hours: dict[str, dict[int, tuple[Key, int]]] = {}
        self._newest: dict[str, int] = {}

    def __len__(self) -> int:
        """Products with at least one kept hour."""
        return len(self._hours)

    def anchor(self, product: str, event_time_ms: int) -> int:
        """The anchor of one request (0: none)."""
        hours = self._hours.get(product)
        if not hours:
            return 0
        hour = event_time_ms // HOUR_MS
        earlier = [h for h in hours if h < hour]
        return hours[max(earlier)][1] if earlier else 0

    def for_batch(self, products: pd.Series, event_time: pd.Series) -> np.ndarray:
        """Each row's anchor (0: none), from the prices recorded before this call."""
        times = pd.to_numeric(event_time).to_numpy(dtype=np.int64).tolist()
        return np.fromiter((self.anchor(p, t) for p, t in zip(products.tolist(), times)), dtype=np.int64, count=len(times))

    def record(
        self,
        products: pd.Series,
        event_time: pd.Series,
        prices: np.ndarray | Sequence[int],
        *,
        priced_time: int | Sequence[int] = 0,
        request_ids: pd.Series | Sequence[str] | None = None,
    ) -> None:
        """Remember a batch's prices (``priced_time`` and ``request_ids`` break ties of equal event times)."""
        times = pd.to_numeric(event_time).to_numpy(dtype=np.int64).tolist()
        n = len(times)
        priced = [int(priced_time)] * n if np.ndim(priced_time) == 0 else [int(t) for t in priced_time]  # type: ignore[arg-type]
        ids = [""] * n if request_ids is None else [str(r) for r in request_ids]
        for p, t, pt, rid, price in zip(products.tolist(), times, priced, ids, np.asarray(prices).tolist()):
            self.add(PricedKey(p, t, pt, rid, int(price)))

    def add(self, event: PricedKey) -> None:
        """Remember one price."""
        product = event.product_id
        hour = event.request_time // HOUR_MS
        newest = self._newest.get(product)
        if newest is not None and hour <= newest - self.history_hours:
            return  # older than the kept hours: it could never be an anchor here
        hours = self._hours.setdefault(product, {})
        key = (event.request_time, event.priced_time, event.request_id, event.price_minor)
        kept = hours.get(hour)
        if kept is None or key > kept[0]:
            hours[hour] = (key, event.price_minor)
        if newest is None or hour > newest:
            self._newest[product] = hour
            for old in [h for h in hours if h <= hour - self.history_hours]:
                del hours[old]
        if len(self._hours) > self.max_products * 1.1:
            self._evict()

    def _evict(self) -> None:
        """Down to ``max_products``: the products whose newest priced hour is oldest go first (amortised: a tenth
        at a time). Below the cap the anchor rule holds exactly; above it those products have no anchor."""
        for product in sorted(self._newest, key=self._newest.__getitem__)[: len(self._hours) - self.max_products]:
            del self._hours[product], self._newest[product]

    def seed(self, events: Iterable[PricedKey]) -> int:
        """Remember every priced event of ``events`` (any order); returns how many were given."""
        n = 0
        for event in events:
            self.add(event)
            n += 1
        return n


# ---------------------------------------------------------------------------------------------------
# Reading the priced-events topic
# ---------------------------------------------------------------------------------------------------
_NEEDED = ("request_id", "product_id", "price_minor", "request_time", "priced_time")


@cache
def _prefix_readers() -> dict[bytes, Any]:
    """Per writer-schema fingerprint of PricedEvent, the writer schema cut after the last field the
    anchors need: Avro's binary form has no field markers, so reading with it decodes those leading
    fields and stops (the feature vector and the rest are never decoded). None where a writer lacks
    a needed field (then the whole record is decoded and resolved)."""
    out: dict[bytes, Any] = {}
    for fp, writer in serde._writers(Contract.PRICED_EVENT).items():  # every accepted writer version
        schema = serde._strip_logical_types(copy.deepcopy(writer.published))
        names = [f["name"] for f in schema["fields"]]
        if not set(_NEEDED) <= set(names):
            out[fp] = None
            continue
        schema["fields"] = schema["fields"][: max(names.index(n) for n in _NEEDED) + 1]
        out[fp] = fastavro.parse_schema(schema)
    return out


def decode_priced_key(data: bytes | None) -> PricedKey | None:
    """The anchor's fields of one framed PricedEvent, decoding only the fields up to ``priced_time``;
    None when the bytes are not a PricedEvent this code can read."""
    if data is None or len(data) < serde.HEADER_LEN or data[:2] != serde.MAGIC:
        return None
    readers = _prefix_readers()
    fp = bytes(data[2 : serde.HEADER_LEN])
    if fp not in readers:
        return None
    prefix = readers[fp]
    try:
        if prefix is None:
            decoded = serde.decode(Contract.PRICED_EVENT, data)
            if not decoded.ok:
                return None
            rec = decoded.record
        else:
            buf = io.BytesIO(data)
            buf.seek(serde.HEADER_LEN)
            rec = fastavro.schemaless_reader(buf, prefix, None)
        key = PricedKey(rec["product_id"], int(rec["request_time"]), int(rec["priced_time"]), rec["request_id"],
                        int(rec["price_minor"]))  # fmt: skip
    except Exception:  # noqa: BLE001 - bytes that are not a PricedEvent are skipped (and counted)
        return None
    return key if key.price_minor > 0 else None


class AnchorSeedError(RuntimeError):
    """The anchors could not be rebuilt from the priced-events topic in time: the worker must not price."""


@dataclass(frozen=True)
class SeedReport:
    """What a rebuild read."""

    records: int  # priced events read and recorded
    skipped: int  # records that were not readable PricedEvents (not recorded)
    bytes: int  # value bytes read
    partitions: int  # partitions that had something to read
    seconds: float
    since_ms: int  # Kafka timestamp the read started from
    products: int  # products with an anchor history afterwards
    # partition -> (position, high watermark at start) where the read stopped at a transaction still open
    # after ``grace_s`` (see seed_from_topic); empty when every partition reached its watermark
    held: dict[int, tuple[int, int]] = field(default_factory=dict)


def seed_from_topic(
    anchors: Anchors,
    client_config: dict[str, str],
    topic: str,
    *,
    lookback_ms: int,
    timeout_s: float,
    grace_s: float | None = None,
    now_ms: int | None = None,
    consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
) -> SeedReport:
    """Rebuild ``anchors`` from every priced event written in the last ``lookback_ms``.

    A ``read_committed`` consumer (assigned, not subscribed: no group, no offset commits) seeks each
    partition of ``topic`` to the first offset whose Kafka timestamp (the time the sink wrote the
    record) is at or after ``now - lookback_ms`` and reads until its position reaches the
    partition's **high watermark taken at the start** (the log end, open transactions included,
    queried with a ``read_uncommitted`` consumer). A read_committed position cannot pass a record
    of an open transaction, so reaching that watermark means every transaction that had written to
    the partition before the start was committed or aborted: after a crash, the restored Kafka sink
    aborts the killed run's open transactions (and commits the ones of its last checkpoint) in its
    ``initializeState``, which runs before this worker sees its first request. The anchors then
    hold exactly the prices read_committed consumers see (with at-least-once output, every price
    ever written: there are no transactions).

    Priced events are keyed by request id, so every partition is read and every product seeded.
    Only the fields up to ``priced_time`` of each record are decoded.

    Fails loudly: if the watermarks are not reached within ``timeout_s`` (a transaction that stays
    open: a killed run whose transactions nobody aborts, another writer's), or the topic cannot be
    read, it raises :class:`AnchorSeedError` so that Flink restarts the task, rather than letting
    the worker price without anchors.

    ``grace_s`` (None: never) is for exactly-once with parallelism above 1. PyFlink opens a worker
    when its first request arrives, so a worker may open after another worker of the *same* job
    attempt has written prices into a transaction that is still open. That transaction commits at
    the next checkpoint, which needs this worker's acknowledgement, which it cannot give while it
    waits here: without a grace the wait would always end in the timeout (measured: a worker whose
    first request came 5 s after another's). So after ``grace_s``, a partition whose position has
    reached its last stable offset, still short of the watermark, counts as read: what lies beyond
    is such a transaction, as long as the killed run's transactions were resolved within the grace
    (the restored sinks do it when their tasks start, before requests flow). Those partitions are
    reported (:attr:`SeedReport.held`) and logged as a warning. The records beyond are this
    attempt's prices of other workers' products, which this worker never needs: only a transaction
    of an earlier run still open after the grace (a sink task that starts that late, or another
    writer's) would hide prices it needs.
    """
    make = consumer_factory or Consumer
    started = time.monotonic()
    deadline = started + timeout_s
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since_ms = max(0, now_ms - lookback_ms)
    base = {**client_config, "group.id": f"pricing-anchor-seed-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "enable.partition.eof": False}  # fmt: skip

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AnchorSeedError(f"rebuilding the anchors from {topic!r} took longer than {timeout_s:.0f} s")
        return left

    try:
        probe = make({**base, "isolation.level": "read_uncommitted"})
        try:
            meta = retried(lambda: probe.list_topics(topic, timeout=remaining()), timeout_s=remaining()).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise AnchorSeedError(f"cannot read the priced-events topic {topic!r}: "
                                      f"{meta.error if meta is not None else 'not in the metadata'}")  # fmt: skip
            partitions = sorted(meta.partitions)
            targets = {p: retried(lambda p=p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=remaining(),
                                                                          cached=False), timeout_s=remaining())[1]
                       for p in partitions}  # fmt: skip
            # Also read_uncommitted: a read_committed lookup by time stops at the last stable offset, so it
            # would find nothing in a partition whose records after the lookback are all behind an open
            # transaction, and the wait for that transaction would be skipped.
            found = probe.offsets_for_times([TopicPartition(topic, p, since_ms) for p in partitions], timeout=remaining())
        finally:
            probe.close()
        consumer = make({**base, "isolation.level": "read_committed"})
    except KafkaException as exc:
        raise AnchorSeedError(f"cannot read the priced-events topic {topic!r}: {exc}") from exc
    records = skipped = size = 0
    held: dict[int, tuple[int, int]] = {}
    try:
        starts = {tp.partition: tp.offset for tp in found}
        pending = {p: targets[p] for p in partitions if 0 <= starts.get(p, -1) < targets[p]}
        if pending:
            consumer.assign([TopicPartition(topic, p, starts[p]) for p in pending])
        reading = len(pending)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                positions = {tp.partition: max(tp.offset, starts[tp.partition])
                             for tp in consumer.position([TopicPartition(topic, p) for p in pending])}  # fmt: skip
                behind = {p: f"at {positions.get(p)} of {t}" for p, t in pending.items()}
                raise AnchorSeedError(
                    f"rebuilding the anchors from {topic!r}: after {timeout_s:.0f} s ({records} records read) the "
                    f"read_committed position has not reached the high watermark taken at start in partitions "
                    f"{behind}: a transaction that wrote there is still open (a killed run's that no restored sink "
                    f"aborted, or another writer's); refusing to price without anchors"
                )
            for msg in consumer.consume(10_000, min(0.5, left)):
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise AnchorSeedError(f"reading {topic!r}: {err}")
                    continue  # informational (e.g. a transient broker error): the client retries
                value = msg.value()
                size += len(value or b"")
                key = decode_priced_key(value)
                if key is None:
                    skipped += 1
                    continue
                anchors.add(key)
                records += 1
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                # (no position yet, before the first record arrives: the assigned start offset)
                position = max(tp.offset, starts[tp.partition])
                if position >= pending[tp.partition]:
                    del pending[tp.partition]
                elif grace_s is not None and time.monotonic() - started >= grace_s:
                    stable = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=remaining(),
                                                            cached=False)[1]  # read_committed: the last stable offset
                    if 0 <= stable <= position:
                        held[tp.partition] = (position, pending.pop(tp.partition))
    finally:
        consumer.close()
    if held:
        log.warning("anchors: after the %.0f s grace, partitions %s of %s were read up to a transaction still open, "
                    "short of the high watermark taken at start (position, watermark): taken as another worker's of "
                    "this job attempt (see pricing_udfs.anchors.seed_from_topic)", grace_s, held, topic)  # fmt: skip
    report = SeedReport(records=records, skipped=skipped, bytes=size, partitions=reading,
                        seconds=round(time.monotonic() - started, 3), since_ms=since_ms, products=len(anchors),
                        held=held)  # fmt: skip
    log.info("anchors rebuilt from %s: %s", topic, report)
    return report
