"""Avro encoding and decoding of every record on the wire, with fastavro.

Wire format: **Avro single-object encoding** (Avro specification, "Single object
encoding"): two marker bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary
datum. Any Avro library can decode it from the ``.avsc`` files in ``schemas/``
(Java: ``BinaryMessageDecoder``; elsewhere: skip 10 bytes, read the datum with the
schema whose fingerprint matches). We use it instead of the Confluent framing
because no Schema Registry runs here, and the fingerprint makes every record
self-describing even when copied out of Kafka (dead letters, files).

Decoding never raises on bad bytes: it returns ``Rejected`` with an error kind and
message, so that callers route the record to the dead-letter topic. Encoding a
record that does not match its schema is a bug in our code and raises.

Readers accept every schema version frozen under ``schemas/history/`` as a writer
schema and resolve it to the current one (Avro schema resolution), which is what
makes a backward-compatible change safe to roll out.
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, Mapping

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8


class Contract(str, Enum):
    """Each record type on the wire, named after its ``.avsc`` file."""

    BEHAVIOUR_EVENT = "behaviour_event"
    MARKET_EVENT = "market_event"
    PRICE_REQUEST = "price_request"
    PRICED_EVENT = "priced_event"
    DEAD_LETTER = "dead_letter"


class ErrorKind(str, Enum):
    """Mirrors the ``ErrorKind`` enum of ``dead_letter.avsc``."""

    BAD_FRAMING = "bad_framing"
    UNKNOWN_SCHEMA = "unknown_schema"
    BAD_PAYLOAD = "bad_payload"
    INVALID_VALUE = "invalid_value"
    LATE = "late"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Ok:
    record: dict[str, Any]
    ok: bool = True


@dataclass(frozen=True, slots=True)
class Rejected:
    kind: ErrorKind
    message: str
    ok: bool = False


Decoded = Ok | Rejected


@dataclass(frozen=True)
class _Schema:
    published: dict[str, Any]  # as in the .avsc file, for docs and compatibility checks
    fast: Any  # parsed, logical types stripped: timestamps are epoch millis (int)
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of the canonical form


def load_schema_file(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form as 8 little-endian bytes, as the spec frames it.

    fastavro's ``fingerprint`` already returns those bytes as hex (its value for the
    empty string is ``95a7d7a43a215dc1``: the spec's EMPTY constant ``0xc15d213aa4d7a795``
    written little-endian), so they are taken as they are, not re-packed.
    """
    canonical = to_parsing_canonical_form(fastavro.parse_schema(copy.deepcopy(dict(schema))))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


@cache
def _current(contract: Contract) -> _Schema:
    return _build(load_schema_file(SCHEMA_DIR / f"{contract.value}.avsc"))


@cache
def _writers(contract: Contract) -> dict[bytes, _Schema]:
    """Every writer schema a reader accepts: the current one and the frozen history."""
    out = {_current(contract).fingerprint: _current(contract)}
    for path in sorted((SCHEMA_DIR / "history" / contract.value).glob("*.avsc")):
        s = _build(load_schema_file(path))
        out.setdefault(s.fingerprint, s)
    return out


def _build(published: dict[str, Any]) -> _Schema:
    return _Schema(
        published=published,
        fast=fastavro.parse_schema(_strip_logical_types(copy.deepcopy(published))),
        fingerprint=schema_fingerprint(published),
    )


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("logicalType") in {"timestamp-millis", "timestamp-micros", "date", "time-millis"}:
            node = {k: v for k, v in node.items() if k != "logicalType"}
        return {k: _strip_logical_types(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def published_schema(contract: Contract) -> dict[str, Any]:
    return _current(contract).published


def encode(contract: Contract, record: Mapping[str, Any]) -> bytes:
    """Frame and encode one record (timestamps as epoch millis). Raises on a schema mismatch."""
    schema = _current(contract)
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(schema.fingerprint)
    fastavro.schemaless_writer(buf, schema.fast, record, strict_allow_default=True)
    return buf.getvalue()


def decode(contract: Contract, data: bytes | None) -> Decoded:
    """Decode one framed record; bad bytes give ``Rejected``, never an exception."""
    if data is None:
        return Rejected(ErrorKind.BAD_FRAMING, "record has no value (null)")
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        return Rejected(
            ErrorKind.BAD_FRAMING,
            f"not Avro single-object encoding: expected marker c301 and 10-byte header, got {bytes(data[:2]).hex() or 'nothing'} "
            f"({len(data)} bytes)",
        )
    writer = _writers(contract).get(bytes(data[2:HEADER_LEN]))
    if writer is None:
        return Rejected(
            ErrorKind.UNKNOWN_SCHEMA,
            f"writer schema fingerprint {bytes(data[2:HEADER_LEN]).hex()} is not a known version of {contract.value}",
        )
    buf = io.BytesIO(data)
    buf.seek(HEADER_LEN)
    reader = _current(contract)
    try:
        record = fastavro.schemaless_reader(buf, writer.fast, reader.fast if writer is not reader else None)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input, not a bug of ours
        return Rejected(ErrorKind.BAD_PAYLOAD, f"{contract.value}: {type(exc).__name__}: {exc}"[:500])
    if buf.tell() != len(data):
        return Rejected(ErrorKind.BAD_PAYLOAD, f"{contract.value}: {len(data) - buf.tell()} trailing bytes after the datum")
    problem = _VALIDATORS.get(contract, _no_check)(record)
    if problem:
        return Rejected(ErrorKind.INVALID_VALUE, f"{contract.value}: {problem}")
    return Ok(record)


def _no_check(record: dict[str, Any]) -> str | None:
    return None


def _check_ids(record: dict[str, Any], *fields: str) -> str | None:
    for f in fields:
        if not record[f]:
            return f"{f} is empty"
    if record["event_time"] <= 0:
        return f"event_time {record['event_time']} is not a positive epoch-millis timestamp"
    return None


def _check_request(record: dict[str, Any]) -> str | None:
    return _check_ids(record, "request_id", "product_id")


def _check_behaviour(record: dict[str, Any]) -> str | None:
    problem = _check_ids(record, "event_id", "user_id", "product_id")
    if problem:
        return problem
    if record["price_seen_minor"] < 0:
        return f"price_seen_minor {record['price_seen_minor']} is negative"
    if record["quantity"] < 0:
        return f"quantity {record['quantity']} is negative"
    return None


def _check_market(record: dict[str, Any]) -> str | None:
    problem = _check_ids(record, "product_id")
    if problem:
        return problem
    if record["value"] < 0:
        return f"value {record['value']} is negative"
    if record["kind"] in {"competitor_price", "list_price", "cost"} and len(record["currency"]) != 3:
        return f"{record['kind']} needs an ISO-4217 currency, got {record['currency']!r}"
    return None


_VALIDATORS = {
    Contract.PRICE_REQUEST: _check_request,
    Contract.BEHAVIOUR_EVENT: _check_behaviour,
    Contract.MARKET_EVENT: _check_market,
}


def read_container(path: Path, contract: Contract) -> list[dict[str, Any]]:
    """Read an Avro object container file written with one of the contract's schemas."""
    with path.open("rb") as f:
        return list(fastavro.reader(f, reader_schema=_current(contract).fast))


def write_container(path: Path, contract: Contract, records: Any, *, codec: str = "deflate") -> None:
    """Write records to an Avro object container file under the published schema."""
    with path.open("wb") as f:
        fastavro.writer(f, _current(contract).fast, records, codec=codec)
