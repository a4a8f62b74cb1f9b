"""Properties of the wire format for all inputs (hypothesis).

Records are drawn from each contract's ``.avsc`` itself (types, enum symbols and the
``constraints`` the engine enforces), so a new field or rule is covered without editing here.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_udfs import serde
from pricing_udfs.serde import Contract, ErrorKind, Ok, Rejected

TEXT = st.characters(codec="utf-8")
ISO_4217 = st.from_regex(r"\A[A-Z]{3}\Z")


def _value(avro: Any, rule: dict[str, Any], name: str) -> st.SearchStrategy:
    if isinstance(avro, list):  # ["null", T]
        return st.none() | _value(next(a for a in avro if a != "null"), rule, name)
    kind = avro["type"] if isinstance(avro, dict) else avro
    if name == "currency":
        return ISO_4217
    if kind == "string":
        return st.text(TEXT, min_size=rule.get("min_length", 0), max_size=rule.get("max_length", 40))
    if kind in ("long", "int"):
        bits = 63 if kind == "long" else 31
        return st.integers(rule.get("min", -(2**bits)), rule.get("max", 2**bits - 1))
    if kind == "double":
        return st.floats(allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "bytes":
        return st.binary(max_size=64)
    if kind == "enum":
        return st.sampled_from(avro["symbols"])
    if kind == "array":
        items = {"min_length": rule.get("item_min_length", 0), "max_length": rule.get("item_max_length", 40)}
        return st.lists(_value(avro["items"], items, name), max_size=min(5, rule.get("max_items", 5)))
    if kind == "map":
        return st.dictionaries(st.text(TEXT, max_size=10), _value(avro["values"], {}, name), max_size=3)
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: _value(f["type"], f.get("constraints", {}), f["name"])
                                      for f in avro["fields"]})
    raise NotImplementedError(f"{name}: {avro!r}")


@st.composite
def records(draw: st.DrawFn, contract: Contract) -> dict[str, Any]:
    """A record that obeys the contract's schema and its constraints."""
    fields = serde.published_schema(contract)["fields"]
    record: dict[str, Any] = {}
    for field in sorted(fields, key=lambda f: "by" in f.get("constraints", {})):  # rules that depend on others last
        rule = field.get("constraints", {})
        if "by" in rule:
            rule = rule["cases"].get(record[rule["by"]], {})
        record[field["name"]] = draw(_value(field["type"], rule, field["name"]))
    return {f["name"]: record[f["name"]] for f in fields}


@pytest.mark.parametrize("contract", list(Contract))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_valid_record_survives_the_round_trip(contract: Contract, data: st.DataObject) -> None:
    record = data.draw(records(contract))
    assert serde.decode(contract, serde.encode(contract, record)) == Ok(record)


def _verdict(result: serde.Decoded) -> None:
    assert isinstance(result, (Ok, Rejected))
    if isinstance(result, Rejected):
        assert isinstance(result.kind, ErrorKind) and result.message


@pytest.mark.parametrize("contract", list(Contract))
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_get_a_kind(contract: Contract, data: bytes) -> None:
    _verdict(serde.decode(contract, data))


@pytest.mark.parametrize("contract", list(Contract))
@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=300))
def test_arbitrary_payloads_behind_a_valid_header_never_raise(contract: Contract, tail: bytes) -> None:
    """The same with a known fingerprint, so that the datum decoder itself meets the garbage."""
    header = serde.MAGIC + serde.schema_fingerprint(serde.published_schema(contract))
    _verdict(serde.decode(contract, header + tail))
