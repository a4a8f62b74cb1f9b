"""The columnar encoder writes exactly the bytes of ``serde.encode`` (the reference, itself checked against Java
Avro in ``test_avro_interop``), record by record, for every contract and all inputs (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_udfs import serde
from pricing_udfs.avro_columns import encode_columns, encode_records, varints
from pricing_udfs.serde import Contract
from tests.pricing_udfs.test_serde_properties import records


def _columns(contract: Contract, rows: list[dict]) -> dict[str, list]:
    return {f["name"]: [r[f["name"]] for r in rows] for f in serde.published_schema(contract)["fields"]}


@pytest.mark.parametrize("contract", list(Contract))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_contract_encodes_as_the_record_encoder(contract: Contract, data: st.DataObject) -> None:
    rows = data.draw(st.lists(records(contract), max_size=8))
    assert encode_columns(contract, _columns(contract, rows), len(rows)) == [serde.encode(contract, r) for r in rows]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50))
def test_varints_are_avro_longs(values: list[int]) -> None:
    assert varints(np.array(values, dtype=np.int64)) == [_long(v) for v in values]


def _long(v: int) -> bytes:
    """A zig-zag varint the slow, obvious way."""
    z, out = (v << 1) ^ (v >> 63), b""
    while True:
        out += bytes([(z & 0x7F) | (0x80 if z > 0x7F else 0)])
        z >>= 7
        if not z:
            return out


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(records(Contract.PRICED_EVENT), min_size=1, max_size=8), k=st.integers(0, 6),
       doubles=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=48, max_size=48))  # fmt: skip
def test_priced_events_from_arrays_constants_and_a_feature_matrix(rows: list[dict], k: int, doubles: list[float]) -> None:
    """The shapes the job passes: numpy columns, one value for every row, the features as an (n, k) matrix; doubles
    include NaN, infinities and -0.0."""
    n = len(rows)
    matrix = np.array(doubles[: n * k], dtype=np.float64).reshape(n, k)
    for i, row in enumerate(rows):
        row |= {"features": matrix[i].tolist(), "expected_conversion": doubles[i], "priced_time": rows[0]["priced_time"],
                "feature_spec_version": "features/2"}  # fmt: skip
    columns = _columns(Contract.PRICED_EVENT, rows) | {
        "features": matrix, "priced_time": rows[0]["priced_time"], "feature_spec_version": "features/2",
        "expected_conversion": np.array(doubles[:n]), "price_minor": np.array([r["price_minor"] for r in rows]),
    }  # fmt: skip
    assert encode_columns(Contract.PRICED_EVENT, columns, n) == [serde.encode(Contract.PRICED_EVENT, r) for r in rows]


def test_a_missing_or_unknown_column_or_a_wrong_type_raises() -> None:
    row = {"request_id": "r1", "user_id": "u", "product_id": "p", "channel": "web", "event_time": 5}
    columns = {k: [v] for k, v in row.items()}
    assert encode_columns(Contract.PRICE_REQUEST, columns, 1) == [serde.encode(Contract.PRICE_REQUEST, row)]
    with pytest.raises(ValueError, match="missing"):
        encode_columns(Contract.PRICE_REQUEST, {k: v for k, v in columns.items() if k != "channel"}, 1)
    with pytest.raises(ValueError, match="unknown"):
        encode_columns(Contract.PRICE_REQUEST, columns | {"colour": ["red"]}, 1)
    with pytest.raises(TypeError):
        encode_columns(Contract.PRICE_REQUEST, columns | {"event_time": [5.5]}, 1)
    with pytest.raises(ValueError, match="not a symbol"):
        encode_columns(Contract.PRICE_REQUEST, columns | {"channel": ["fax"]}, 1)
    with pytest.raises(ValueError, match="2 values for 1 rows"):
        encode_columns(Contract.PRICE_REQUEST, columns | {"user_id": ["a", "b"]}, 1)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(records(Contract.RECOMMENDATION), max_size=6), drop=st.booleans())
def test_records_with_fields_left_to_their_defaults_encode_as_the_record_encoder(rows: list[dict], drop: bool) -> None:
    """``encode_records`` (what the recommend stage calls): a field left out takes its default, as in ``serde.encode``."""
    defaults = {f["name"] for f in serde.published_schema(Contract.RECOMMENDATION)["fields"] if "default" in f}
    if drop:
        rows = [{k: v for k, v in r.items() if k not in defaults} for r in rows]
    assert encode_records(Contract.RECOMMENDATION, rows) == [serde.encode(Contract.RECOMMENDATION, r) for r in rows]
    if rows:
        with pytest.raises(ValueError, match="without a default"):
            encode_records(Contract.RECOMMENDATION, [{k: v for k, v in rows[0].items() if k != "request_id"}])
