import io
import json

import fastavro
import pytest

from pricing_udfs import serde
from pricing_udfs.serde import Contract, ErrorKind, Ok, Rejected

T = 1_764_000_000_123


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification writes it ("Schema Fingerprints"), independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def spec_header(schema: dict) -> bytes:
    """C3 01 and the fingerprint as 8 little-endian bytes (Avro specification, "Single object encoding")."""
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema))
    return b"\xc3\x01" + crc64_avro(canonical.encode()).to_bytes(8, "little")

SAMPLES = {
    Contract.PRICE_REQUEST: {"request_id": "r-1", "user_id": "u-1", "product_id": "p-1", "channel": "app", "event_time": T},
    Contract.BEHAVIOUR_EVENT: {
        "event_id": "e-1", "user_id": "u-1", "product_id": "p-1", "type": "purchase", "price_seen_minor": 1999,
        "currency": "EUR", "quantity": 2, "session_id": "s-1", "event_time": T, "request_id": "r-1",
    },
    Contract.MARKET_EVENT: {
        "product_id": "p-1", "kind": "competitor_price", "competitor_id": "c-9", "value": 1849, "currency": "EUR",
        "event_time": T,
    },
    Contract.PRICED_EVENT: {
        "request_id": "r-1", "user_id": "u-1", "product_id": "p-1", "price_minor": 2149, "reference_price_minor": 1999,
        "currency": "EUR", "model_version": "m/1", "expected_conversion": 0.25, "expected_profit_minor": 123,
        "reason_codes": ["a", "b"], "fallback_used": False, "request_time": T, "priced_time": T + 7,
        "feature_spec_version": "features/1", "features": [1.5, 0.0, -1.0], "explored": True, "propensity": 0.0125,
        "experiment_id": "exp-1", "arm": "challenger",
    },
    Contract.DEAD_LETTER: {
        "source_topic": "t", "partition": 3, "offset": 99, "record_time": T, "raw": b"\x00\xff", "error_kind": "bad_payload",
        "error_message": "boom", "time": T, "raw_size": 2, "raw_sha256": "ab" * 32, "raw_truncated": False,
    },
    Contract.RECOMMEND_REQUEST: {
        "request_id": "rr-1", "user_id": "u-1", "channel": "web", "event_time": T, "k": 5, "context_product_id": "p-1",
        "context_category": None, "candidate_product_ids": ["p-2", "p-3"],
    },
    Contract.RECOMMENDATION: {
        "request_id": "rr-1", "user_id": "u-1", "model_version": "m/1", "fallback_used": False, "request_time": T,
        "answered_time": T + 9, "feature_spec_version": "features/3",
        "items": [{"product_id": "p-2", "price_minor": 2149, "reference_price_minor": 1999, "currency": "EUR",
                   "expected_conversion": 0.125, "expected_profit_minor": 77, "reason_codes": ["co_view", "model"],
                   "explored": False, "propensity": 1.0}],
        "experiment_id": None, "arm": None,
    },
    Contract.CATALOGUE_ENTRY: {
        "product_id": "p-1", "category": "home/kitchen", "attributes": {"brand": "Zoë"}, "active": True, "event_time": T,
    },
}


@pytest.mark.parametrize(("record", "problem"), [
    ({"k": 0}, "k 0 is outside [1, 50]"),
    ({"k": 51}, "k 51 is outside [1, 50]"),
    ({"candidate_product_ids": [f"p{i}" for i in range(501)]}, "candidate_product_ids has 501 items, more than 500"),
    ({"candidate_product_ids": ["p1", ""]}, "candidate_product_ids[1] is empty"),
    ({"candidate_product_ids": ["x" * 257]}, "candidate_product_ids[0] has 257 characters, more than 256"),
    ({"context_product_id": ""}, "context_product_id is empty"),
])  # fmt: skip
def test_a_recommend_request_outside_its_constraints_is_rejected_with_the_reason(record: dict, problem: str) -> None:
    decoded = serde.decode(Contract.RECOMMEND_REQUEST, serde.encode(Contract.RECOMMEND_REQUEST,
                                                                   SAMPLES[Contract.RECOMMEND_REQUEST] | record))
    assert isinstance(decoded, Rejected) and decoded.kind is ErrorKind.INVALID_VALUE, decoded
    assert problem in decoded.message


def test_a_recommend_request_with_500_candidates_is_accepted() -> None:
    record = SAMPLES[Contract.RECOMMEND_REQUEST] | {"candidate_product_ids": [f"p{i}" for i in range(500)]}
    assert serde.decode(Contract.RECOMMEND_REQUEST, serde.encode(Contract.RECOMMEND_REQUEST, record)) == Ok(record)


@pytest.mark.parametrize("contract", list(Contract))
def test_round_trip_is_exact(contract: Contract) -> None:
    decoded = serde.decode(contract, serde.encode(contract, SAMPLES[contract]))
    assert decoded == Ok(SAMPLES[contract])


@pytest.mark.parametrize("contract", list(Contract))
def test_stock_fastavro_decodes_the_wire_with_only_the_avsc(contract: Contract) -> None:
    """What a downstream service does: skip the 10-byte header, check the fingerprint, read the datum."""
    data = serde.encode(contract, SAMPLES[contract])
    schema = json.loads((serde.SCHEMA_DIR / f"{contract.value}.avsc").read_text())
    parsed = fastavro.parse_schema(schema)
    assert data[:10] == spec_header(schema)
    record = fastavro.schemaless_reader(io.BytesIO(data[10:]), parsed)
    for key, value in SAMPLES[contract].items():
        got = record[key]
        if hasattr(got, "timestamp"):  # stock readers apply timestamp-millis
            got = round(got.timestamp() * 1000)
        assert got == value, key


def test_the_crc_meets_the_specification_test_vectors() -> None:
    # The spec's EMPTY constant is the fingerprint of no bytes; Avro's schema-tests.txt
    # gives 7195948357588979594 for the canonical form of "null".
    assert crc64_avro(b"") == 0xC15D213AA4D7A795
    assert crc64_avro(b'"null"') == 7195948357588979594


def test_the_price_request_header_is_the_one_the_spec_gives() -> None:
    data = serde.encode(Contract.PRICE_REQUEST, SAMPLES[Contract.PRICE_REQUEST])
    assert data[:10].hex(" ") == "c3 01 53 7d af f4 95 bc c2 a2"


@pytest.mark.parametrize(
    ("data", "kind", "fragment"),
    [
        (None, ErrorKind.BAD_FRAMING, "null"),
        (b"", ErrorKind.BAD_FRAMING, "0 bytes"),
        (b'{"json": true}', ErrorKind.BAD_FRAMING, "marker"),
        (b"\xc3\x01" + b"\x00" * 8 + b"x", ErrorKind.UNKNOWN_SCHEMA, "fingerprint 0000000000000000"),
    ],
)
def test_bad_framing_is_rejected_with_a_reason(data: bytes | None, kind: ErrorKind, fragment: str) -> None:
    result = serde.decode(Contract.PRICE_REQUEST, data)
    assert isinstance(result, Rejected)
    assert result.kind is kind
    assert fragment in result.message


def test_truncated_and_padded_payloads_are_rejected() -> None:
    good = serde.encode(Contract.PRICE_REQUEST, SAMPLES[Contract.PRICE_REQUEST])
    truncated = serde.decode(Contract.PRICE_REQUEST, good[:-3])
    padded = serde.decode(Contract.PRICE_REQUEST, good + b"\x00")
    assert isinstance(truncated, Rejected) and truncated.kind is ErrorKind.BAD_PAYLOAD
    assert isinstance(padded, Rejected) and "trailing" in padded.message


def test_record_of_another_contract_is_unknown_schema() -> None:
    data = serde.encode(Contract.MARKET_EVENT, SAMPLES[Contract.MARKET_EVENT])
    result = serde.decode(Contract.PRICE_REQUEST, data)
    assert isinstance(result, Rejected) and result.kind is ErrorKind.UNKNOWN_SCHEMA


@pytest.mark.parametrize(
    ("contract", "change", "fragment"),
    [
        (Contract.PRICE_REQUEST, {"product_id": ""}, "product_id is empty"),
        (Contract.PRICE_REQUEST, {"event_time": 0}, "event_time"),
        (Contract.BEHAVIOUR_EVENT, {"price_seen_minor": -1}, "price_seen_minor -1 is outside [0, "),
        (Contract.BEHAVIOUR_EVENT, {"quantity": 0}, "quantity 0 is outside [1, 1000]"),
        (Contract.BEHAVIOUR_EVENT, {"quantity": 2**31 - 1}, "quantity 2147483647 is outside [1, 1000]"),
        (Contract.BEHAVIOUR_EVENT, {"currency": "eur"}, "ISO-4217"),
        (Contract.MARKET_EVENT, {"currency": "euro"}, "needs an ISO-4217 currency, got 'euro'"),
        (Contract.MARKET_EVENT, {"kind": "inventory", "value": 5, "currency": "euro"}, "currency has 4 characters"),
        (Contract.MARKET_EVENT, {"currency": "EU"}, "ISO-4217"),
        (Contract.MARKET_EVENT, {"kind": "promotion", "value": 50_000, "currency": ""},
         "value 50000 is outside [0, 10000] for kind promotion"),
        (Contract.MARKET_EVENT, {"kind": "list_price", "value": 0}, "value 0 is outside [1, "),
        (Contract.PRICE_REQUEST, {"request_id": "r" * 257}, "request_id has 257 characters, more than 256"),
    ],
)
def test_invalid_values_are_rejected(contract: Contract, change: dict, fragment: str) -> None:
    data = serde.encode(contract, SAMPLES[contract] | change)
    result = serde.decode(contract, data)
    assert isinstance(result, Rejected) and result.kind is ErrorKind.INVALID_VALUE
    assert fragment in result.message


def test_values_on_the_edges_of_their_ranges_are_accepted() -> None:
    edges = [
        (Contract.BEHAVIOUR_EVENT, {"quantity": 1}), (Contract.BEHAVIOUR_EVENT, {"quantity": 1000}),
        (Contract.BEHAVIOUR_EVENT, {"price_seen_minor": 0}),
        (Contract.MARKET_EVENT, {"kind": "promotion", "value": 10_000, "currency": ""}),
        (Contract.MARKET_EVENT, {"kind": "inventory", "value": 0, "currency": ""}),
        (Contract.PRICE_REQUEST, {"request_id": "r" * 256, "user_id": ""}),
    ]
    for contract, change in edges:
        assert serde.decode(contract, serde.encode(contract, SAMPLES[contract] | change)).ok, change


def _with_enum_index(contract: Contract, field: str, index: int) -> bytes:
    """A record whose enum ``field`` is written as ``index`` (zig-zag varint), any other bytes as serde writes them."""
    schema = json.loads((serde.SCHEMA_DIR / f"{contract.value}.avsc").read_text())
    for f in schema["fields"]:
        if f["name"] == field:
            f["type"] = "int"
    record = SAMPLES[contract] | {field: index}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return serde.encode(contract, SAMPLES[contract])[: serde.HEADER_LEN] + buf.getvalue()


@pytest.mark.parametrize("index", [-1, -2, 4, 2**31 - 1])
def test_an_enum_index_outside_the_symbols_is_a_bad_payload(index: int) -> None:
    """Java's reader fails on these; fastavro alone would read -1 as the last symbol."""
    result = serde.decode(Contract.PRICE_REQUEST, _with_enum_index(Contract.PRICE_REQUEST, "channel", index))
    assert isinstance(result, Rejected) and result.kind is ErrorKind.BAD_PAYLOAD
    assert f"channel: enum index {index} is outside the 4 symbols" in result.message


def test_every_valid_enum_index_reads_as_its_symbol() -> None:
    for index, symbol in enumerate(serde.enum_symbols(Contract.PRICE_REQUEST, "channel")):
        decoded = serde.decode(Contract.PRICE_REQUEST, _with_enum_index(Contract.PRICE_REQUEST, "channel", index))
        assert decoded == Ok(SAMPLES[Contract.PRICE_REQUEST] | {"channel": symbol})


def _retyped(contract: Contract, field: str, avro_type: str, value: object) -> bytes:
    """A sample with ``field`` written as another Avro type (a boolean's byte as an int, an int as a long)."""
    schema = json.loads(json.dumps(serde.current_schema(contract).fast))
    for f in schema["fields"]:
        if f["name"] == field:
            f["type"] = avro_type
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), SAMPLES[contract] | {field: value})
    return serde.encode(contract, SAMPLES[contract])[: serde.HEADER_LEN] + buf.getvalue()


@pytest.mark.parametrize(("value", "ok"), [(0, True), (-1, True), (1, False), (-64, False)])  # zig-zag: bytes 00 01 02 7f
def test_a_boolean_byte_other_than_0_or_1_is_a_bad_payload(value: int, ok: bool) -> None:
    """fastavro alone reads any byte but 0 as true, Java Avro any byte but 1 as false; the JVM decoder rejects both."""
    result = serde.decode(Contract.CATALOGUE_ENTRY, _retyped(Contract.CATALOGUE_ENTRY, "active", "int", value))
    if ok:
        assert result == Ok(SAMPLES[Contract.CATALOGUE_ENTRY] | {"active": value == -1})
    else:
        assert isinstance(result, Rejected) and result.kind is ErrorKind.BAD_PAYLOAD and "not 0 or 1" in result.message


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**40])
def test_an_int_wider_than_32_bits_is_a_bad_payload(value: int) -> None:
    """fastavro reads an int's varint as a long; Java Avro keeps its low 32 bits (2**32 + 5 would read as 5)."""
    result = serde.decode(Contract.BEHAVIOUR_EVENT, _retyped(Contract.BEHAVIOUR_EVENT, "quantity", "long", value))
    assert isinstance(result, Rejected) and result.kind is ErrorKind.BAD_PAYLOAD and "does not fit 32 bits" in result.message
    edge = serde.decode(Contract.BEHAVIOUR_EVENT, _retyped(Contract.BEHAVIOUR_EVENT, "quantity", "long", 1000))
    assert edge.ok


def test_a_negative_union_index_is_a_bad_payload() -> None:
    """fastavro alone reads union index -1 as the last branch (here: the string of request_id); Java's reader fails.
    Found by the differential test's hypothesis run."""
    raw = serde.encode(Contract.BEHAVIOUR_EVENT, SAMPLES[Contract.BEHAVIOUR_EVENT] | {"request_id": None})
    assert raw.endswith(b"\x00")  # request_id is the last field: branch 0, null
    result = serde.decode(Contract.BEHAVIOUR_EVENT, raw[:-1] + b"\x01\x00")  # branch -1, then an empty string
    assert isinstance(result, Rejected) and result.kind is ErrorKind.BAD_PAYLOAD
    assert "union branch index -1" in result.message


def test_the_enums_and_money_kinds_come_from_the_schemas() -> None:
    kinds = serde.enum_symbols(Contract.MARKET_EVENT, "kind")
    assert kinds == ("competitor_price", "inventory", "promotion", "list_price", "cost")
    assert serde.money_kinds() == {"competitor_price", "list_price", "cost"}


def test_encoding_a_wrong_record_is_a_bug_and_raises() -> None:
    with pytest.raises(ValueError, match="user_id is specified in the schema but missing"):
        serde.encode(Contract.PRICE_REQUEST, {"request_id": "x"})


def test_money_is_integer_minor_units_on_the_wire() -> None:
    schema = serde.published_schema(Contract.PRICED_EVENT)
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert types["price_minor"] == "long" and types["reference_price_minor"] == "long"
    assert types["currency"] == "string"


def test_container_files_round_trip(tmp_path) -> None:
    path = tmp_path / "requests.avro"
    rows = [SAMPLES[Contract.PRICE_REQUEST] | {"request_id": f"r-{i}"} for i in range(100)]
    serde.write_container(path, Contract.PRICE_REQUEST, rows)
    assert serde.read_container(path, Contract.PRICE_REQUEST) == rows


def test_a_container_written_with_the_published_schema_reads_timestamps_as_millis() -> None:
    """The archive's files are written by Java Avro with the published schema (timestamp-millis declared):
    read_container must give epoch millis, as decode does, not fastavro's datetimes."""
    import io

    import fastavro

    record = {"request_id": "r", "user_id": "u", "product_id": "p", "channel": "web", "event_time": 1_796_514_721_549}
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(serde.published_schema(Contract.PRICE_REQUEST)), [record])
    buffer.seek(0)
    assert serde.read_container(buffer, Contract.PRICE_REQUEST) == [record]
