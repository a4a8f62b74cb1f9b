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
import datetime as _dt
import io
import json
import re
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, Mapping

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
    RECOMMEND_REQUEST = "recommend_request"
    RECOMMENDATION = "recommendation"
    CATALOGUE_ENTRY = "catalogue_entry"


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
    fast: Any  # parsed, logical types stripped: timestamps are epoch millis (int); for encoding
    read: Any  # ``fast`` with every enum read as its int index and every boolean as its byte (their binary forms)
    enums: dict[str, tuple[tuple[str, ...], str | None]]  # enum field -> (symbols, default)
    booleans: tuple[str, ...]  # boolean fields, read as one fixed byte so that decode can check it is 0 or 1
    ints: tuple[str, ...]  # int fields (plain or nullable), whose values decode checks fit 32 bits
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
    for published in frozen_schemas(contract):
        s = _build(published)
        out.setdefault(s.fingerprint, s)
    return out


def _build(published: dict[str, Any]) -> _Schema:
    stripped = _strip_logical_types(copy.deepcopy(published))
    read, enums = _enums_as_ints(stripped)
    read, booleans = _booleans_as_bytes(read)
    return _Schema(
        published=published,
        fast=fastavro.parse_schema(stripped),
        read=fastavro.parse_schema(read),
        enums=enums,
        booleans=booleans,
        ints=tuple(f["name"] for f in stripped["fields"] if "int" in (f["type"] if isinstance(f["type"], list) else [f["type"]])),
        fingerprint=schema_fingerprint(published),
    )


def _enums_as_ints(schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[tuple[str, ...], str | None]]]:
    """The record schema with each enum field typed ``int``, and the symbols of those fields.

    Avro writes an enum as the zig-zag int index of its symbol. fastavro indexes its symbol
    list with whatever int it reads, so a negative index silently becomes the last symbol
    where Java's reader fails; reading the index as an int lets ``decode`` check it.
    Enums are supported as top-level fields (plain or nullable), which is where the contracts
    have them; a deeper one is a schema change this function must learn first.
    """
    fields, enums = [], {}
    for field in schema["fields"]:
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        found = [b for b in branches if isinstance(b, dict) and b.get("type") == "enum"]
        for b in branches:
            if not (isinstance(b, dict) and b.get("type") == "enum") and "enum" in json.dumps(b):
                raise NotImplementedError(f"{schema['name']}.{field['name']}: nested enums are not supported")
        if not found:
            fields.append(field)
            continue
        enum = found[0]
        symbols = tuple(enum["symbols"])
        enums[field["name"]] = (symbols, enum.get("default"))
        as_int = [("int" if b is enum else b) for b in branches]
        new = {**field, "type": as_int if isinstance(field["type"], list) else "int"}
        if isinstance(field.get("default"), str):
            new["default"] = symbols.index(field["default"])
        fields.append(new)
    return {**schema, "fields": fields}, enums


def _booleans_as_bytes(schema: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The record schema with each top-level plain ``boolean`` field read as a one-byte ``fixed``, and their names.

    Avro writes a boolean as one byte, 0 or 1. fastavro reads any other byte as true, Java Avro as false; reading
    the byte lets ``decode`` reject it, as the job's JVM decoder does (``pricing.decode.StrictDecoder``). Nested
    booleans (in the output contracts' sub-records, which only tools decode) are read as fastavro reads them.
    """
    fields, names = [], []
    for field in schema["fields"]:
        if field["type"] != "boolean":
            fields.append(field)
            continue
        names.append(field["name"])
        new = {**field, "type": {"type": "fixed", "name": f"boolean_byte_{field['name']}", "size": 1}}
        if "default" in field:
            new["default"] = "\u0001" if field["default"] else "\u0000"
        fields.append(new)
    return {**schema, "fields": fields}, tuple(names)


def _strict_values(record: dict[str, Any], *, writer: _Schema, reader: _Schema) -> str | None:
    """Booleans from their bytes (0 or 1, else an error) and ints that fit 32 bits (fastavro reads an int's
    varint as a long; Avro's int is 32 bits, and Java Avro's reader fails on a longer varint)."""
    for name in reader.booleans:
        value = record.get(name)
        if isinstance(value, str):  # the reader's default, for a writer without the field (fastavro keeps it a str)
            value = value.encode("latin-1")
        if isinstance(value, (bytes, bytearray)):
            if value not in (b"\x00", b"\x01"):
                return f"{name}: a boolean byte of {value[0]}, not 0 or 1"
            record[name] = value == b"\x01"
    for name in writer.ints:
        value = record.get(name)
        if isinstance(value, int) and not -(2**31) <= value < 2**31:
            return f"{name}: an int of {value} does not fit 32 bits"
    return None


def _union_problem(schema: Any, data: bytes) -> str | None:
    """A union branch index outside the union, else None: one walk over the datum that fastavro has just read.

    fastavro indexes a union's branches with whatever it reads, so a negative index silently picks a branch from the
    end (-1: the last), where Java Avro's reader fails; this walk finds such indexes. It runs only on bytes that
    fastavro read in full, so every length in them is in range.
    """
    named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}
    pos = HEADER_LEN

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return (value >> 1) ^ -(value & 1)
            shift += 7

    def skip(t: Any) -> str | None:  # noqa: C901, PLR0911, PLR0912 - one branch per Avro type
        nonlocal pos
        if isinstance(t, list):
            index = varint()
            if not 0 <= index < len(t):
                return f"union branch index {index} is outside its {len(t)} branches"
            return skip(t[index])
        if isinstance(t, str):
            if t in named:
                return skip(named[t])
            if t in ("int", "long", "enum"):
                varint()
            elif t in ("bytes", "string"):
                length = varint()  # read before pos is (``pos += varint()`` would add to the old pos)
                pos += length
            else:
                pos += {"null": 0, "boolean": 1, "float": 4, "double": 8}[t]
            return None
        kind = t["type"]
        if kind == "record":
            for field in t["fields"]:
                problem = skip(field["type"])
                if problem:
                    return problem
        elif kind == "fixed":
            pos += t["size"]
        elif kind in ("array", "map"):
            while (count := varint()) != 0:
                if count < 0:
                    count = -count
                    varint()  # the block's size in bytes
                for _ in range(count):
                    if kind == "map":
                        length = varint()  # the key
                        pos += length
                    problem = skip(t["items"] if kind == "array" else t["values"])
                    if problem:
                        return problem
        else:  # enum, or a primitive written as {"type": ...}
            return skip("enum" if kind == "enum" else kind)
        return None

    try:
        return skip(schema)
    except (IndexError, KeyError):
        return "the datum does not follow its writer schema"


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("logicalType") in {"timestamp-millis", "timestamp-micros", "date", "time-millis"}:
            node = {k: v for k, v in node.items() if k != "logicalType"}
        return {k: _strip_logical_types(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


# The error kinds of dead letters, from the ``ErrorKind`` enum of ``dead_letter.avsc``
# (``ErrorKind.LATE.value == "late"``).
ErrorKind = Enum(  # type: ignore[misc]
    "ErrorKind", {symbol.upper(): symbol for symbol in _current(Contract.DEAD_LETTER).enums["error_kind"][0]}, type=str
)


def current_schema(contract: Contract) -> _Schema:
    """The contract's current schema as this module encodes it (``fast``: parsed, logical types stripped)."""
    return _current(contract)


def published_schema(contract: Contract) -> dict[str, Any]:
    return _current(contract).published


def frozen_schemas(contract: Contract) -> list[dict[str, Any]]:
    """The contract's frozen writer versions (``schemas/history/<contract>/*.avsc``) as published, oldest first."""
    return [load_schema_file(p) for p in sorted((SCHEMA_DIR / "history" / contract.value).glob("*.avsc"))]


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
        record = fastavro.schemaless_reader(buf, writer.read, reader.read if writer is not reader else None)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input, not a bug of ours
        return Rejected(ErrorKind.BAD_PAYLOAD, _clip(f"{contract.value}: {type(exc).__name__}: {exc}"))
    if buf.tell() != len(data):
        return Rejected(ErrorKind.BAD_PAYLOAD, f"{contract.value}: {len(data) - buf.tell()} trailing bytes after the datum")
    problem = (_union_problem(writer.fast, data) or _resolve_enums(record, writer=writer, reader=reader)
               or _strict_values(record, writer=writer, reader=reader))
    if problem:
        return Rejected(ErrorKind.BAD_PAYLOAD, f"{contract.value}: {problem}")
    problem = _constraints(contract).check(record)
    if problem:
        return Rejected(ErrorKind.INVALID_VALUE, _clip(f"{contract.value}: {problem}"))
    return Ok(record)


def _resolve_enums(record: dict[str, Any], *, writer: _Schema, reader: _Schema) -> str | None:
    """Turn enum indexes into symbols, as Avro's reference reader does: an index outside the
    writer's symbols is an error; a symbol the reader lacks takes the reader's default."""
    for name, (symbols, default) in reader.enums.items():
        index = record.get(name)
        if index is None:
            continue
        # A field the writer lacks holds the reader's default, as an index into the reader's symbols.
        written = writer.enums.get(name, (symbols, default))[0]
        if not 0 <= index < len(written):
            return f"{name}: enum index {index} is outside the {len(written)} symbols of the writer schema"
        symbol = written[index]
        if symbol not in symbols:
            if default is None:
                return f"{name}: symbol {symbol!r} is unknown to the reader schema, which has no default"
            symbol = default
        record[name] = symbol
    return None


def _clip(message: str, limit: int = 500) -> str:
    """Error messages quote input; keep them short enough for any dead letter."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


_ISO_4217 = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class _Rule:
    """The ``constraints`` of one field in a ``.avsc`` file (a custom attribute: Avro ignores it,
    and it is not part of the Parsing Canonical Form, so it never changes a fingerprint).

    Keys: ``min``/``max`` (numbers, inclusive), ``min_length``/``max_length`` (strings; of each item too,
    with ``max_items`` and ``item_min_length``/``item_max_length``, for an array of strings), ``unit``
    (``"minor"``: money in minor units, so the record's ``currency`` must be an ISO-4217 code), and
    ``by`` + ``cases``: the rule depends on another field's value (``cases`` maps it to a rule; a
    value without a case is unconstrained).
    """

    field: str
    spec: Mapping[str, Any]

    def check(self, record: dict[str, Any]) -> str | None:
        spec = self.spec
        if "by" in spec:
            spec = spec["cases"].get(record[spec["by"]], {})
        value = record[self.field]
        if value is None:
            return None
        if isinstance(value, list):
            if len(value) > spec.get("max_items", len(value)):
                return f"{self.field} has {len(value)} items, more than {spec['max_items']}"
            lo, hi = spec.get("item_min_length", 0), spec.get("item_max_length")
            for i, item in enumerate(value):
                if isinstance(item, str) and len(item) < lo:
                    return f"{self.field}[{i}] is empty" if not item else f"{self.field}[{i}] is shorter than {lo}"
                if hi is not None and isinstance(item, str) and len(item) > hi:
                    return f"{self.field}[{i}] has {len(item)} characters, more than {hi}"
            return None
        if isinstance(value, str):
            if len(value) < spec.get("min_length", 0):
                return f"{self.field} is empty" if not value else f"{self.field} is shorter than {spec['min_length']}"
            if len(value) > spec.get("max_length", len(value)):
                return f"{self.field} has {len(value)} characters, more than {spec['max_length']}"
            return None
        lo, hi = spec.get("min"), spec.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            where = f" for {self.spec['by']} {record[self.spec['by']]}" if "by" in self.spec else ""
            return f"{self.field} {value} is outside [{lo}, {hi}]{where}"
        if spec.get("unit") == "minor" and not _ISO_4217.fullmatch(record.get("currency") or ""):
            return f"{self.field} is money and needs an ISO-4217 currency, got {record.get('currency')!r}"
        return None


@dataclass(frozen=True)
class _Constraints:
    rules: tuple[_Rule, ...]

    def check(self, record: dict[str, Any]) -> str | None:
        for rule in self.rules:
            problem = rule.check(record)
            if problem:
                return problem
        return None


@cache
def _constraints(contract: Contract) -> _Constraints:
    """The value rules of a contract, read from its current ``.avsc`` (the one place they are written)."""
    fields = published_schema(contract)["fields"]
    return _Constraints(tuple(_Rule(f["name"], f["constraints"]) for f in fields if "constraints" in f))


def field_constraints(contract: Contract) -> dict[str, Mapping[str, Any]]:
    """``{field: constraints}`` as the schema states them, for docs and generators."""
    return {r.field: r.spec for r in _constraints(contract).rules}


def enum_symbols(contract: Contract, field: str) -> tuple[str, ...]:
    """The symbols of an enum field of the current schema, in their Avro order (index = position)."""
    return _current(contract).enums[field][0]


def money_kinds() -> frozenset[str]:
    """Market event kinds whose ``value`` is money in minor units (``unit: minor`` in market_event.avsc)."""
    cases = field_constraints(Contract.MARKET_EVENT)["value"]["cases"]
    return frozenset(kind for kind, rule in cases.items() if rule.get("unit") == "minor")


def read_container(path: Path | BinaryIO, contract: Contract) -> list[dict[str, Any]]:
    """Read an Avro object container file (a path, or a binary file open for reading) written with one of the
    contract's schemas. Timestamps are epoch millis, as ``decode`` gives them, also where the file's writer schema
    declares ``timestamp-millis`` (fastavro would make datetimes of them: the archive's files, which Java writes
    with the published schema)."""
    if not isinstance(path, Path):
        return [_epoch_millis(r) for r in fastavro.reader(path, reader_schema=_current(contract).fast)]
    with path.open("rb") as f:
        return [_epoch_millis(r) for r in fastavro.reader(f, reader_schema=_current(contract).fast)]


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _epoch_millis(record: dict[str, Any]) -> dict[str, Any]:
    for key, value in record.items():
        if isinstance(value, _dt.datetime):
            aware = value if value.tzinfo is not None else value.replace(tzinfo=_dt.timezone.utc)
            record[key] = (aware - _EPOCH) // _dt.timedelta(milliseconds=1)
    return record


def write_container(path: Path, contract: Contract, records: Any, *, codec: str = "deflate") -> None:
    """Write records to an Avro object container file under the published schema."""
    with path.open("wb") as f:
        fastavro.writer(f, _current(contract).fast, records, codec=codec)
