"""Interop vectors between our wire format and Java Avro, the reference implementation.

What is proven, for every contract (``serde.Contract``) and every writer schema version
(the current ``schemas/<contract>.avsc`` and every frozen
``schemas/history/<contract>/vN.avsc``, found by globbing, so a new version is covered
without touching this file):

1. Python -> Java: messages framed here with ``serde.MAGIC`` and
   ``serde.schema_fingerprint`` (C3 01, 8-byte little-endian CRC-64-AVRO of the Parsing
   Canonical Form, Avro binary datum) are decoded by Java's ``BinaryMessageDecoder`` over
   the current schema (frozen versions added with ``addSchema``) into exactly the datum
   that Java reads independently from the same record's Avro JSON encoding, and their
   8 header bytes are ``SchemaNormalization.parsingFingerprint64`` in little-endian order
   (``deploy/jvm/src/test/java/pricing/interop/AvroInteropTest.java``).
2. Java -> Python: Java re-encodes each record with ``BinaryMessageEncoder`` for its
   writer version, and ``serde.decode`` returns the record that the Java-written JSON
   resolves to under the current schema (``test_avro_interop.py``).

Layout (``make`` writes it to ``.pricing/interop`` before Maven runs)::

    DIR/python/<contract>/<version>/<n>.bin   single-object message written here
    DIR/python/<contract>/<version>/<n>.json  the same datum, Avro JSON encoding
    DIR/java/...                              the same layout, written by the Java test

``<version>`` is ``current`` or the frozen file's stem (``v1``, ``v2``, ...); the writer
schema is the ``.avsc`` that name points to.

    python -m tests.pricing_udfs.avro_interop write DIR
"""

from __future__ import annotations

import copy
import io
import shutil
import sys
from pathlib import Path
from typing import Any

import fastavro

from pricing_udfs import serde
from pricing_udfs.serde import Contract

DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".pricing" / "interop"
CURRENT = "current"
T = 1_764_000_000_123  # a timestamp-millis
STRINGS = ("plain-ascii", "Zoë Ærøskøbing ß", "東京 €10 𝄞")  # the last one needs a UTF-16 surrogate pair in Java
LONGS = (1999, 1, 9_999)  # inside the value constraints of every contract (serde checks them on decode)
DOUBLES = (0.25, -1.5e-300, 1e300)
# Fields that serde's validators need in a format their schema type does not state.
DOMAIN = {"currency": ("EUR", "JPY", "CHF")}


def writer_schemas(contract: Contract) -> dict[str, Path]:
    """Every writer schema of a contract by version name: the current one and each frozen version."""
    out = {CURRENT: serde.SCHEMA_DIR / f"{contract.value}.avsc"}
    for path in sorted((serde.SCHEMA_DIR / "history" / contract.value).glob("*.avsc")):
        out[path.stem] = path
    return out


def parse(path: Path) -> Any:
    """The schema as serde reads and writes it: logical types stripped (timestamps are epoch-millis ints)."""
    return fastavro.parse_schema(serde._strip_logical_types(copy.deepcopy(serde.load_schema_file(path))))


def samples(published: dict[str, Any]) -> list[Any]:
    """Records for one schema: every enum symbol and every union branch appears; arrays empty and not."""
    schema = fastavro.parse_schema(copy.deepcopy(published))  # full names, logical types kept
    named = schema["__named_schemas"]
    return [_value(schema, n, "", named) for n in range(max(3, _widest(schema)))]


def _value(node: Any, n: int, field: str, named: dict[str, Any]) -> Any:
    if isinstance(node, list):  # a union
        return _value(node[n % len(node)], n, field, named)
    if isinstance(node, str):
        node = named.get(node, {"type": node})
    kind = node["type"]
    if kind == "record":
        return {f["name"]: _value(f["type"], n, f["name"], named) for f in node["fields"]}
    if kind == "enum":
        return node["symbols"][n % len(node["symbols"])]
    if kind == "array":
        return [_value(node["items"], n + i, field, named) for i in range(n)]
    if kind == "map":
        return {f"k{i}-{STRINGS[(n + i) % 3]}": _value(node["values"], n + i, field, named) for i in range(n)}
    if kind == "fixed":
        return bytes((n + i) % 256 for i in range(node["size"]))
    if kind == "long" and node.get("logicalType", "").startswith("timestamp"):
        return T + n * 1_001
    return {
        "null": None,
        "boolean": n % 2 == 1,
        "int": 7 + n,
        "long": LONGS[n % 3],
        "float": 0.5 * n,
        "double": DOUBLES[n % 3],
        "bytes": bytes([0, 255, n % 256]) + "é".encode(),
        "string": DOMAIN[field][n % 3] if field in DOMAIN else f"{field}:{STRINGS[n % 3]}",
    }[kind]


def _widest(node: Any) -> int:
    """The most choices that any enum or union in the (parsed) schema offers."""
    if isinstance(node, list):
        return max([len(node), *map(_widest, node)])
    if not isinstance(node, dict):
        return 0  # a primitive, or a named type defined elsewhere in the schema
    children = [node.get("items"), node.get("values"), *(f["type"] for f in node.get("fields", []))]
    return max([len(node.get("symbols", [])), *map(_widest, children)])


def message(published: dict[str, Any], parsed: Any, record: Any) -> bytes:
    """One single-object message, framed exactly as serde frames it."""
    buf = io.BytesIO()
    buf.write(serde.MAGIC)
    buf.write(serde.schema_fingerprint(published))
    fastavro.schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def json_datum(parsed: Any, record: Any) -> str:
    buf = io.StringIO()
    fastavro.json_writer(buf, parsed, [record])
    return buf.getvalue()


def write(out: Path) -> int:
    """Write ``out/python`` afresh; returns the number of messages."""
    root = out / "python"
    shutil.rmtree(root, ignore_errors=True)
    count = 0
    for contract in Contract:
        for version, path in writer_schemas(contract).items():
            folder = root / contract.value / version
            folder.mkdir(parents=True)
            published, parsed = serde.load_schema_file(path), parse(path)
            for n, record in enumerate(samples(published)):
                (folder / f"{n}.bin").write_bytes(message(published, parsed, record))
                (folder / f"{n}.json").write_text(json_datum(parsed, record), encoding="utf-8")
                count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "write":
        print("usage: python -m tests.pricing_udfs.avro_interop write DIR", file=sys.stderr)
        return 2
    print(f"avro interop: {write(Path(argv[1]))} messages in {Path(argv[1]) / 'python'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
