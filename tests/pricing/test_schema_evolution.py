"""Schema evolution: compatible changes pass old and new readers; incompatible ones fail the check."""

import io
import json
import shutil
from pathlib import Path

import fastavro
import pytest

from pricing import schema_evolution
from pricing_udfs import serde
from pricing_udfs.serde import Contract, Ok

T = 1_764_000_000_000
REQUEST = {"request_id": "r-1", "user_id": "u-1", "product_id": "p-1", "channel": "web", "event_time": T}


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    """A copy of the repo's schemas/ (current + frozen history) to change freely."""
    target = tmp_path / "schemas"
    shutil.copytree(serde.SCHEMA_DIR, target)
    return target


def _edit(schema_dir: Path, contract: Contract, change) -> dict:
    path = schema_dir / f"{contract.value}.avsc"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))
    return schema


def _add_optional_field(schema: dict) -> None:
    schema["fields"].append({"name": "locale", "type": ["null", "string"], "default": None, "doc": "new"})


def test_repo_schemas_are_compatible_with_their_history() -> None:
    assert schema_evolution.check_all() == []
    for contract in Contract:
        assert list(schema_evolution.history_dir(contract).glob("v*.avsc")), f"{contract.value} has no frozen version"


def test_optional_field_with_default_is_read_by_old_and_new_readers(schema_dir: Path, monkeypatch) -> None:
    old = json.loads((schema_dir / "price_request.avsc").read_text())
    new = _edit(schema_dir, Contract.PRICE_REQUEST, _add_optional_field)
    assert schema_evolution.check_all(schema_dir=schema_dir) == []

    # New reader, old data: the serde of a deployment whose current schema is `new` and
    # whose history holds `old` decodes old-framed records, filling the default.
    old_bytes = serde.encode(Contract.PRICE_REQUEST, REQUEST)  # the repo's current (= old) schema
    monkeypatch.setattr(serde, "SCHEMA_DIR", schema_dir)
    serde._current.cache_clear()
    serde._writers.cache_clear()
    try:
        assert serde.decode(Contract.PRICE_REQUEST, old_bytes) == Ok(REQUEST | {"locale": None})
        new_bytes = serde.encode(Contract.PRICE_REQUEST, REQUEST | {"locale": "de-DE"})
    finally:
        serde._current.cache_clear()
        serde._writers.cache_clear()

    # Old reader, new data: Avro resolution with the writer schema drops the unknown field.
    datum = io.BytesIO(new_bytes[serde.HEADER_LEN:])
    record = fastavro.schemaless_reader(datum, fastavro.parse_schema(new), fastavro.parse_schema(old))
    assert record["request_id"] == "r-1" and "locale" not in record


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda s: s["fields"].append({"name": "locale", "type": "string"}), "locale"),  # no default
        (lambda s: s["fields"].pop(0), "request_id"),  # removed required field
        (lambda s: next(f for f in s["fields"] if f["name"] == "event_time").update(type="string"), "not compatible"),
    ],
    ids=["new-field-without-default", "removed-field", "type-change"],
)
def test_incompatible_changes_are_caught(schema_dir: Path, change, fragment: str) -> None:
    _edit(schema_dir, Contract.PRICE_REQUEST, change)
    problems = schema_evolution.check_all(schema_dir=schema_dir)
    assert problems, "the check let an incompatible change through"
    assert all(p.startswith("price_request vs v1.avsc") for p in problems)
    assert any(fragment in p for p in problems), problems


def test_freeze_adds_a_version_only_when_the_schema_changed(schema_dir: Path) -> None:
    assert schema_evolution.freeze(schema_dir=schema_dir) == []
    _edit(schema_dir, Contract.PRICE_REQUEST, _add_optional_field)
    written = schema_evolution.freeze(schema_dir=schema_dir)
    assert [p.name for p in written] == ["v2.avsc"]
    assert schema_evolution.freeze(schema_dir=schema_dir) == []
