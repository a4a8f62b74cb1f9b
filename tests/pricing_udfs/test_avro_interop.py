"""Java Avro's ``BinaryMessageEncoder`` -> ``serde.decode``, for every contract and writer version.

The vectors come from the Maven build (``AvroInteropTest``), which ``make`` runs after
writing the Python side's; see ``avro_interop.py`` for what the round trip proves.
"""

from __future__ import annotations

from pathlib import Path

import fastavro
import pytest

from pricing_udfs import serde
from pricing_udfs.serde import Contract, Ok
from tests.pricing_udfs.avro_interop import CURRENT, DEFAULT_DIR, parse, writer_schemas

PYTHON = DEFAULT_DIR / "python"
JAVA = DEFAULT_DIR / "java"
VERSIONS = [(contract, version) for contract in Contract for version in writer_schemas(contract)]


def java_dir() -> Path:
    if not JAVA.is_dir():
        pytest.skip(f"no Java-written interop vectors in {JAVA}: `make test` (or `make jars`) produces them")
    return JAVA


def written(root: Path) -> set[str]:
    return {str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*/*.bin")}


@pytest.mark.parametrize(("contract", "version"), VERSIONS, ids=[f"{c.value}-{v}" for c, v in VERSIONS])
def test_serde_decodes_what_java_wrote(contract: Contract, version: str) -> None:
    schemas = writer_schemas(contract)
    writer, current = parse(schemas[version]), parse(schemas[CURRENT])
    header = serde.MAGIC + serde.schema_fingerprint(serde.load_schema_file(schemas[version]))
    messages = sorted((java_dir() / contract.value / version).glob("*.bin"))
    assert messages, f"Java wrote no {contract.value} {version} messages"
    for path in messages:
        data = path.read_bytes()
        assert data[:10] == header, (
            f"{path}: Java's header {data[:10].hex(' ')} is not serde's {header.hex(' ')} for {schemas[version].name}"
            " (if a schema changed since the last `make jars`, run it again)"
        )
        with path.with_suffix(".json").open(encoding="utf-8") as f:
            (expected,) = fastavro.json_reader(f, writer, current)  # Java's JSON, resolved to the current schema
        assert serde.decode(contract, data) == Ok(expected), path


def test_every_message_python_wrote_came_back_from_java() -> None:
    java = java_dir()
    assert written(PYTHON), f"{PYTHON} holds no messages"
    assert written(java) == written(PYTHON)
    assert {tuple(name.split("/")[:2]) for name in written(PYTHON)} == {(c.value, v) for c, v in VERSIONS}
