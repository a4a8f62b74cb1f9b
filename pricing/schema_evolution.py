"""Schema evolution rules for ``schemas/``, checked in CI (``pricing schemas check``).

Every published version of a contract is frozen under ``schemas/history/<contract>/vN.avsc``.
The current ``schemas/<contract>.avsc`` must be **fully transitively compatible** with
all of them: a new reader reads data of every old writer (backward), and every old
reader reads data of the new writer (forward). That is what lets producers and
consumers (storefronts, the job, training) upgrade in any order. Adding a field
with a default passes; removing a field without default, renaming, or changing a
type fails. The check uses the Apache Avro reference implementation's rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from pricing_udfs.serde import SCHEMA_DIR, Contract, schema_fingerprint


def history_dir(contract: Contract, *, schema_dir: Path = SCHEMA_DIR) -> Path:
    return schema_dir / "history" / contract.value


def check_compatible(*, reader: dict, writer: dict) -> str | None:
    """None if data written with ``writer`` can be read with ``reader``, else the reason."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    return "; ".join(sorted(str(m) for m in result.messages)) or "incompatible"


def check_all(*, schema_dir: Path = SCHEMA_DIR) -> list[str]:
    """Every incompatibility between a current schema and a frozen version, as text."""
    problems = []
    for contract in Contract:
        current = json.loads((schema_dir / f"{contract.value}.avsc").read_text())
        for frozen_path in sorted(history_dir(contract, schema_dir=schema_dir).glob("v*.avsc")):
            frozen = json.loads(frozen_path.read_text())
            for direction, reader, writer in (("backward", current, frozen), ("forward", frozen, current)):
                reason = check_compatible(reader=reader, writer=writer)
                if reason:
                    problems.append(f"{contract.value} vs {frozen_path.name} ({direction}): {reason}")
    return problems


def freeze(*, schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    """Freeze each current schema as the next version if it differs from the latest frozen one."""
    written = []
    for contract in Contract:
        text = (schema_dir / f"{contract.value}.avsc").read_text()
        folder = history_dir(contract, schema_dir=schema_dir)
        versions = sorted(folder.glob("v*.avsc"), key=lambda p: int(p.stem[1:]))
        if versions and schema_fingerprint(json.loads(versions[-1].read_text())) == schema_fingerprint(json.loads(text)):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"v{int(versions[-1].stem[1:]) + 1 if versions else 1}.avsc"
        path.write_text(text)
        written.append(path)
    return written
