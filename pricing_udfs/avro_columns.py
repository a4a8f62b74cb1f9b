"""Avro single-object encoding of a whole batch at once, column by column.

``encode_columns(contract, columns, n)`` gives the same bytes as ``serde.encode`` called on each
of the ``n`` records, but builds each field's bytes for the whole column in one step (numpy for
numbers, a memo for repeated strings, one ``tobytes`` for a matrix of doubles) and joins each
row's pieces once. The field order and types come from the contract's ``.avsc`` (through
``serde``), never from a list kept here.

A column is a sequence of ``n`` values, a numpy array, or one value for every row (a constant,
encoded once). Nullable fields take ``None`` for null. Supported types are those the contracts
use: string, bytes, long/int (timestamps as epoch millis), double, boolean, enum, unions with
null, arrays, maps and nested records (an array of doubles may be an ``(n, k)`` matrix). Any other
type (a named-type reference, a union of two non-null types), a missing column or a value of the
wrong type raises: encoding is our code's job, so a
mismatch is a bug to see at once, as with ``serde.encode``.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, Mapping, Sequence

import numpy as np

from pricing_udfs import serde
from pricing_udfs.serde import Contract

_Piece = bytes | list[bytes]  # one field's bytes: the same for every row, or one per row


def encode_columns(contract: Contract, columns: Mapping[str, Any], n: int) -> list[bytes]:
    """The ``n`` framed records whose fields are ``columns`` (field name -> column), as ``serde.encode`` writes them."""
    schema = serde.current_schema(contract)
    fields = schema.fast["fields"]
    missing = [f["name"] for f in fields if f["name"] not in columns]
    extra = sorted(set(columns) - {f["name"] for f in fields})
    if missing or extra:
        raise ValueError(f"{contract.value}: columns missing {missing}, unknown {extra}")
    if n == 0:
        return []
    pieces: list[_Piece] = [serde.MAGIC + schema.fingerprint]
    for field in fields:
        pieces.append(_encode(field["type"], columns[field["name"]], n, field["name"]))
    merged: list[_Piece] = []
    for piece in pieces:  # adjacent constants become one
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    if len(merged) == 1:
        return [merged[0]] * n
    return [b"".join(row) for row in zip(*(repeat(p, n) if isinstance(p, bytes) else p for p in merged))]


def encode_records(contract: Contract, records: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """``serde.encode`` of each record, column by column: a missing field takes its schema default (else raises)."""
    columns = {}
    for field in serde.current_schema(contract).fast["fields"]:
        key = field["name"]
        if "default" not in field and any(key not in r for r in records):
            raise ValueError(f"{contract.value}.{key}: missing and without a default")
        columns[key] = [r.get(key, field.get("default")) for r in records]
    return encode_columns(contract, columns, len(records))


def _is_constant(column: Any) -> bool:
    return column is None or isinstance(column, (str, bytes, bool, int, float, np.generic))


def _encode(type_: Any, column: Any, n: int, name: str) -> _Piece:  # noqa: C901, PLR0911 - one branch per Avro type
    if _is_constant(column):
        return _encode(type_, [column], 1, name)[0]
    if not isinstance(column, np.ndarray) and len(column) != n:
        raise ValueError(f"{name}: {len(column)} values for {n} rows")
    if isinstance(type_, list):
        return _union(type_, column, n, name)
    kind = type_ if isinstance(type_, str) else type_["type"]
    if kind == "string":
        return _strings(column, name)
    if kind in ("long", "int"):
        return varints(column, name, bits=64 if kind == "long" else 32)
    if kind == "double":
        values = np.ascontiguousarray(column, dtype="<f8")
        raw = values.tobytes()
        return [raw[i : i + 8] for i in range(0, 8 * len(values), 8)]
    if kind == "boolean":
        out = []
        for v in column:
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name}: {v!r} is not a boolean")
            out.append(b"\x01" if v else b"\x00")
        return out
    if kind == "enum":
        index = {s: i for i, s in enumerate(type_["symbols"])}
        try:
            return varints([index[v] for v in column], name, bits=32)
        except KeyError as exc:
            raise ValueError(f"{name}: {exc.args[0]!r} is not a symbol of {type_['name']}") from None
    if kind == "bytes":
        out = []
        for v in column:
            if not isinstance(v, (bytes, bytearray, memoryview)):
                raise TypeError(f"{name}: {v!r} is not bytes")
            out.append(_varint(len(v)) + bytes(v))
        return out
    if kind == "array":
        return _arrays(type_["items"], column, n, name)
    if kind == "map":
        return _maps(type_["values"], column, name)
    if kind == "record":
        return _records(type_, column, n, name)
    raise NotImplementedError(f"{name}: Avro type {type_!r} is not supported by the columnar encoder")


def _union(branches: list[Any], column: Any, n: int, name: str) -> list[bytes]:
    if len(branches) != 2 or "null" not in branches:
        raise NotImplementedError(f"{name}: only unions of null and one type are supported, not {branches}")
    null_index = branches.index("null")
    other = branches[1 - null_index]
    null_tag, value_tag = _varint(null_index), _varint(1 - null_index)
    if isinstance(column, np.ndarray) and column.dtype != object:
        present = list(range(n))  # a numeric array has no null
    else:
        present = [i for i, v in enumerate(column) if v is not None]
    out = [null_tag] * n
    if present:
        values = column[present] if isinstance(column, np.ndarray) else [column[i] for i in present]
        for i, encoded in zip(present, _encode(other, values, len(present), name), strict=True):
            out[i] = value_tag + encoded
    return out


def _strings(column: Sequence[Any], name: str) -> list[bytes]:
    memo: dict[str, bytes] = {}
    out = []
    for v in column:
        encoded = memo.get(v)
        if encoded is None:
            if not isinstance(v, str):
                raise TypeError(f"{name}: {v!r} is not a string")
            raw = v.encode()
            encoded = memo[v] = _varint(len(raw)) + raw
        out.append(encoded)
    return out


def _arrays(items: Any, column: Any, n: int, name: str) -> list[bytes]:
    if items == "double" and isinstance(column, np.ndarray) and column.ndim == 2:
        k = column.shape[1]
        if k == 0:
            return [b"\x00"] * n
        head = _varint(k)
        raw = np.ascontiguousarray(column, dtype="<f8").tobytes()
        width = 8 * k
        return [head + raw[i : i + width] + b"\x00" for i in range(0, width * n, width)]
    memo: dict[tuple, bytes] = {}
    out = []
    for row in column:
        if row is None or isinstance(row, (str, bytes)):
            raise TypeError(f"{name}: {row!r} is not an array")
        key = tuple(row) if items == "string" else None
        encoded = memo.get(key) if key is not None else None
        if encoded is None:
            values = list(row)
            encoded = b"\x00" if not values else (
                _varint(len(values)) + b"".join(_encode(items, values, len(values), name)) + b"\x00")
            if key is not None:
                memo[key] = encoded
        out.append(encoded)
    return out


def _maps(values_type: Any, column: Sequence[Any], name: str) -> list[bytes]:
    out = []
    for row in column:
        if not isinstance(row, Mapping):
            raise TypeError(f"{name}: {row!r} is not a map")
        if not row:
            out.append(b"\x00")
            continue
        keys = _strings(list(row), name)
        values = _encode(values_type, list(row.values()), len(row), name)
        out.append(_varint(len(row)) + b"".join(k + v for k, v in zip(keys, values, strict=True)) + b"\x00")
    return out


def _records(type_: Mapping[str, Any], column: Sequence[Any], n: int, name: str) -> list[bytes]:
    """Nested records (dicts): a missing field takes its schema default, as ``serde.encode`` allows."""
    pieces = []
    for field in type_["fields"]:
        key = field["name"]
        if any(key not in row for row in column) and "default" not in field:
            raise ValueError(f"{name}.{key}: missing and without a default")
        values = [row.get(key, field.get("default")) for row in column]
        piece = _encode(field["type"], values, n, f"{name}.{key}")
        pieces.append(piece)
    return [b"".join(row) for row in zip(*pieces)] if pieces else [b""] * n


def _varint(value: int) -> bytes:
    """One zig-zag varint (Avro int and long)."""
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def varints(column: Any, name: str = "value", *, bits: int = 64) -> list[bytes]:
    """Zig-zag varints of a whole column of integers, computed with numpy (an Avro long per value)."""
    values = np.asarray(column)
    if values.size == 0:
        return []
    if values.dtype.kind not in "iu" or values.dtype == np.uint64:
        if values.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in column):
            values = np.array([int(v) for v in column], dtype=np.int64)  # raises OverflowError past 64 bits
        else:
            raise TypeError(f"{name}: {values.dtype} values are not integers")
    values = values.astype(np.int64)
    if bits == 32 and len(values) and (values.min() < -(2**31) or values.max() >= 2**31):
        raise ValueError(f"{name}: a value is out of the range of an Avro int")
    rest = ((values << 1) ^ (values >> 63)).view(np.uint64)
    n = len(rest)
    out = np.zeros((n, 10), dtype=np.uint8)
    length = np.ones(n, dtype=np.int64)
    for i in range(10):
        low = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest = rest >> np.uint64(7)
        more = rest != 0
        out[:, i] = low | (more.astype(np.uint8) << 7)
        if not more.any():
            break
        length += more
    raw = out.tobytes()
    return [raw[10 * i : 10 * i + k] for i, k in enumerate(length.tolist())]
