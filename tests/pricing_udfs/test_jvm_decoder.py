"""The job's JVM decoder (``pricing.decode.ContractDecoder``, Java Avro) against the Python reference decoder
(``pricing_udfs.serde.decode``, fastavro): both get the same bytes and must agree row for row and kind for kind.

The corpus: every input contract's valid records in every writer version (current and frozen), and hostile
variants of them: truncation at every byte (so at every header boundary), a bit flip in every byte, wrong and
foreign fingerprints, trailing bytes, huge and negative lengths, invalid UTF-8, enum indexes and booleans and
ints out of range, and values that break each contract's rules. Then hypothesis feeds both random bytes, random
payloads behind a valid header, valid records drawn from the schemas, and random mutations of those.

Then the job's whole row (``pricing.decode.DecodeFunction`` against ``pricing_udfs.udfs.decode_batch``): event time
against the Kafka timestamp, the clock skew, late against the watermark, the bytes kept, their digests and the
pseudonyms.

The JVM side runs as ``pricing.decode.DecodeCli`` on the class path the job uses (``tests/pricing_udfs/jvm_decoder.py``).
"""

from __future__ import annotations

import copy
import io
import random
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import fastavro
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.jars import JarsMissingError, flink_jars
from pricing_udfs import serde, udfs
from pricing_udfs.privacy import USER_FIELDS, PSEUDONYM_KEY_FILE, Pseudonymiser
from pricing_udfs.avro_columns import varints
from pricing_udfs.serde import Contract
from tests.conftest import JARS_STATE_DIR
from tests.pricing_udfs import avro_interop
from tests.pricing_udfs.jvm_decoder import JvmDecoder
from tests.pricing_udfs.test_serde_properties import records

# The contracts the job reads from Kafka.
INPUTS = (Contract.PRICE_REQUEST, Contract.MARKET_EVENT, Contract.BEHAVIOUR_EVENT, Contract.CATALOGUE_ENTRY,
          Contract.RECOMMEND_REQUEST)  # fmt: skip


@pytest.fixture(scope="module")
def jvm() -> Iterator[JvmDecoder]:
    try:
        flink_jars(JARS_STATE_DIR)
    except JarsMissingError as exc:
        pytest.fail(f"the JVM decoder is built by `make jars` ({exc})")
    decoder = JvmDecoder(JARS_STATE_DIR)
    yield decoder
    decoder.close()


def _columns(contract: Contract) -> list[str]:
    """The decoded columns: every top-level field but maps (as both decoders' row types have them)."""
    out = []
    for field in serde.published_schema(contract)["fields"]:
        avro = field["type"]
        avro = next(a for a in avro if a != "null") if isinstance(avro, list) else avro
        if not (isinstance(avro, dict) and avro.get("type") == "map"):
            out.append(field["name"])
    return out


def _agree(jvm: JvmDecoder, items: list[tuple[Contract, bytes | None]]) -> dict[str, int]:
    """Asserts that both decoders agree on every item; returns how many items had each verdict."""
    verdicts: dict[str, int] = {}
    for (contract, raw), java in zip(items, jvm.decode(items), strict=True):
        python = serde.decode(contract, raw)
        where = f"{contract.value} {raw!r}: python {python}, java {java}"
        assert java["ok"] == python.ok, where
        if python.ok:
            expected = {n: python.record[n] for n in _columns(contract)}
            assert java["values"] == expected, where
            verdicts["ok"] = verdicts.get("ok", 0) + 1
        else:
            assert java["kind"] == python.kind.value, where
            assert java["message"], where
            verdicts[java["kind"]] = verdicts.get(java["kind"], 0) + 1
    return verdicts


def _valid(contract: Contract) -> list[bytes]:
    """Messages of every writer version (``avro_interop``'s samples: every enum symbol and union branch)."""
    out = []
    for path in avro_interop.writer_schemas(contract).values():
        published = serde.load_schema_file(path)
        parsed = avro_interop.parse(path)
        out += [avro_interop.message(published, parsed, r) for r in avro_interop.samples(published)]
    return out


def _header(contract: Contract) -> bytes:
    return serde.MAGIC + serde.current_schema(contract).fingerprint


def _varint(n: int) -> bytes:
    return varints([n])[0]  # one Avro long: zig-zag varint


def _written(contract: Contract, record: dict[str, Any], retype: dict[str, Any] | None = None) -> bytes:
    """``record`` written under the current schema, with the fields in ``retype`` written as another Avro type
    (an enum as its raw int index, a boolean as an int, an int as a long), behind the current header."""
    schema = copy.deepcopy(serde.current_schema(contract).fast)
    for field in schema["fields"]:
        if retype and field["name"] in retype:
            field["type"] = retype[field["name"]]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return _header(contract) + buf.getvalue()


def _record(contract: Contract) -> dict[str, Any]:
    """A valid record of the current schema."""
    decoded = serde.decode(contract, _valid(contract)[0])
    assert decoded.ok
    return dict(decoded.record)


def _hostile(contract: Contract) -> list[bytes | None]:
    valid = _valid(contract)
    first = valid[0]
    out: list[bytes | None] = [None, b"", first[:1], serde.MAGIC]
    out += [first[:k] for k in range(len(first))]  # truncated at every byte
    for i in range(len(first)):  # a flipped bit in every byte, low and high
        for bit in (0x01, 0x80):
            out.append(first[:i] + bytes([first[i] ^ bit]) + first[i + 1 :])
    body = first[serde.HEADER_LEN :]
    out += [serde.MAGIC + bytes(8) + body, serde.MAGIC + b"\xff" * 8 + body, first + b"\x00", first + first]
    out += [first[:-1] + b"\x01\x00", first[:-1] + b"\x03\x00"]  # a last union's index -1 or -2 (if it ends in one)
    out += [_header(other) + body for other in INPUTS if other is not contract]  # another contract's fingerprint
    h = _header(contract)
    for length in (2**31, 2**31 - 1, 2**40, 2**62, -1, -(2**31), 10**9):  # the first field's length (a string)
        out += [h + _varint(length) + b"abc", h + _varint(length) + body]
    out += [h + b"\xff" * 11, h + b"\x80" * 10 + b"\x01"]  # a varint longer than any long
    out += [h + _varint(2) + b"\xff\xfe" + body[1:], h + _varint(3) + b"\xed\xa0\x80" + body[1:]]  # invalid UTF-8
    out += [h + _varint(2) + b"\xc0\xaf" + body[1:]]  # an overlong encoding of '/'
    record = _record(contract)
    for name in serde.current_schema(contract).enums:
        for index in (-1, 99, 2**31 - 1):
            out.append(_written(contract, {**record, name: index}, {name: "int"}))
    for field in serde.published_schema(contract)["fields"]:
        if field["type"] == "boolean":
            out += [_written(contract, {**record, field["name"]: v}, {field["name"]: "int"}) for v in (1, -1, 64)]
        if field["type"] == "int":
            out += [_written(contract, {**record, field["name"]: v}, {field["name"]: "long"})
                    for v in (2**31, -(2**31) - 1, 2**40)]  # fmt: skip
    return out


def _rule_breakers(contract: Contract) -> list[bytes]:
    """Records that are valid Avro but break a value rule of the contract (one at a time), or sit on its edge."""
    record = _record(contract)
    out = []
    for name, rule in serde.field_constraints(contract).items():
        cases = rule["cases"].values() if "by" in rule else [rule]
        for case in cases:
            values: list[Any] = []
            if "min_length" in case or "max_length" in case:
                lo, hi = case.get("min_length", 0), case.get("max_length", 300)
                values += ["", "x" * max(lo - 1, 0), "x" * lo, "x" * hi, "é" * hi, "𝄞" * hi, "x" * (hi + 1), "𝄞" * (hi + 1)]
            if "min" in case or "max" in case:
                lo, hi = case.get("min", -(2**40)), case.get("max", 2**40)
                values += [lo - 1, lo, hi, hi + 1, -(2**62), 2**62]
            for value in values:
                if record.get(name) is None and value == "":
                    continue
                changed = {**record, name: value}
                for kind in ([None] if "by" not in rule else list(rule["cases"])):
                    if kind is not None:
                        changed = {**changed, rule["by"]: kind}
                    try:
                        out.append(_written(contract, changed))
                    except (ValueError, TypeError, OverflowError):
                        pass  # not writable with this field's Avro type (an int past 32 bits)
    if "currency" in record:
        for currency in ("", "usd", "US", "USDX", "USD\n", "ÜSD", "EUR"):
            out.append(_written(contract, {**record, "currency": currency}))
    return out


@pytest.mark.parametrize("contract", INPUTS)
def test_both_decoders_agree_on_every_writer_version(jvm: JvmDecoder, contract: Contract) -> None:
    valid = _valid(contract)
    verdicts = _agree(jvm, [(contract, raw) for raw in valid])
    assert verdicts == {"ok": len(valid)}  # the samples are all valid: a decoder rejecting one fails here


@pytest.mark.parametrize("contract", INPUTS)
def test_both_decoders_agree_on_hostile_bytes(jvm: JvmDecoder, contract: Contract) -> None:
    verdicts = _agree(jvm, [(contract, raw) for raw in _hostile(contract)])
    for kind in ("bad_framing", "unknown_schema", "bad_payload"):
        assert verdicts.get(kind, 0) > 0, verdicts  # the corpus reaches every kind of reject


@pytest.mark.parametrize("contract", INPUTS)
def test_both_decoders_agree_on_the_value_rules(jvm: JvmDecoder, contract: Contract) -> None:
    breakers = _rule_breakers(contract)
    verdicts = _agree(jvm, [(contract, raw) for raw in breakers])
    if serde.field_constraints(contract):
        assert verdicts.get("invalid_value", 0) > 0 and verdicts.get("ok", 0) > 0, verdicts


def test_random_bytes_in_bulk(jvm: JvmDecoder) -> None:
    """Many random blobs at once, most behind a valid header, some mutated from a valid record."""
    rng = random.Random(20261205)
    items: list[tuple[Contract, bytes | None]] = []
    for contract in INPUTS:
        valid = _valid(contract)
        for _ in range(400):
            base = rng.choice(valid)
            choice = rng.random()
            if choice < 0.3:
                raw = _header(contract) + rng.randbytes(rng.randrange(0, 80))
            elif choice < 0.4:
                raw = rng.randbytes(rng.randrange(0, 40))
            else:
                raw = bytearray(base)
                for _ in range(rng.randrange(1, 4)):
                    i = rng.randrange(serde.HEADER_LEN, len(raw))
                    raw[i] = rng.randrange(256)
                raw = bytes(raw[: rng.randrange(serde.HEADER_LEN, len(raw) + 1)]) if rng.random() < 0.3 else bytes(raw)
            items.append((contract, raw))
    verdicts = _agree(jvm, items)
    assert verdicts.get("ok", 0) > 0 and verdicts.get("bad_payload", 0) > 0, verdicts


@pytest.mark.parametrize("contract", INPUTS)
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_property_random_bytes(jvm: JvmDecoder, contract: Contract, data: bytes) -> None:
    _agree(jvm, [(contract, data)])


@pytest.mark.parametrize("contract", INPUTS)
@settings(max_examples=100, deadline=None)
@given(tail=st.binary(max_size=200))
def test_property_random_payload_behind_a_valid_header(jvm: JvmDecoder, contract: Contract, tail: bytes) -> None:
    _agree(jvm, [(contract, _header(contract) + tail)])


@pytest.mark.parametrize("contract", INPUTS)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_property_valid_records_and_their_mutations(jvm: JvmDecoder, contract: Contract, data: st.DataObject) -> None:
    raw = serde.encode(contract, data.draw(records(contract)))
    i = data.draw(st.integers(serde.HEADER_LEN, len(raw) - 1))
    byte = data.draw(st.integers(0, 255))
    mutated = raw[:i] + bytes([byte]) + raw[i + 1 :]
    verdicts = _agree(jvm, [(contract, raw), (contract, mutated), (contract, raw[:i])])
    assert verdicts.get("ok", 0) >= 1  # the drawn record itself


SKEW_MS = 600_000


def _timed_items(rng: random.Random) -> list[tuple[Contract, bytes | None, int, int | None, int]]:
    """(contract, value, Kafka timestamp, watermark, offset): good records on time, with a timestamp that differs
    from their event time, stamped far ahead of the clock, at or behind the watermark; and hostile bytes."""
    now = int(time.time() * 1000)
    items = []
    offset = 0
    for contract in (Contract.PRICE_REQUEST, Contract.MARKET_EVENT, Contract.BEHAVIOUR_EVENT, Contract.CATALOGUE_ENTRY):
        record = _record(contract)
        for case in range(8):
            t = now - rng.randrange(1, 3_600_000)
            raw = serde.encode(contract, {**record, "event_time": t})
            ts, watermark = t, rng.choice([None, t - 1_000, t + 5_000])
            if case == 1:
                ts = t + 1  # the payload's event time differs from the record timestamp
            if case == 2:
                raw = serde.encode(contract, {**record, "event_time": now + 3 * SKEW_MS})
                ts = now + 3 * SKEW_MS  # far ahead of the clock
            if case == 3:
                watermark = ts  # at the watermark: late
            if case == 4:
                raw = b"\x00" + raw[1:]  # a broken marker: bad_framing
            if case == 6:
                raw = rng.choice(_hostile(contract))
            offset += 1
            items.append((contract, raw, ts, watermark, -1 if case == 5 else offset))
    return items


def _python_rows(items: list[tuple], *, keep_raw: bool, late: bool, digest: bool,
                 pseudonymise: Pseudonymiser) -> list[list]:  # fmt: skip
    rows = []
    for contract, raw, ts, watermark, offset in items:
        utc = lambda ms: pd.Timestamp(ms, unit="ms", tz="UTC")  # noqa: E731
        frame = udfs.decode_batch(
            contract, pd.Series([raw], dtype=object), topics=pd.Series([f"topic-{contract.value}"]),
            partitions=pd.Series([0]), offsets=pd.Series([offset]), timestamps=pd.Series([utc(ts)]),
            watermarks=pd.Series([pd.NaT if watermark is None else utc(watermark)]) if late else None,
            keep_raw=keep_raw, max_clock_skew_ms=SKEW_MS, pseudonymise=pseudonymise if contract in USER_FIELDS else None,
            digest=digest,
        )
        row = [None if (isinstance(v, float) and pd.isna(v)) else v for v in frame.iloc[0].tolist()]
        rows.append([v.hex() if isinstance(v, (bytes, bytearray)) else v for v in row])
    return rows


@pytest.mark.parametrize(("keep_raw", "late", "digest"), [(True, True, False), (False, True, True), (False, False, False)])
def test_the_jobs_rows_agree_with_the_python_decoder(tmp_path: Path, keep_raw: bool, late: bool, digest: bool) -> None:
    """The whole row the job's decoder emits (status, source, bytes kept or their digest, record time, fields with
    pseudonyms) equals ``udfs.decode_batch``'s, but for the error message's wording."""
    try:
        flink_jars(JARS_STATE_DIR)
    except JarsMissingError as exc:
        pytest.fail(f"the JVM decoder is built by `make jars` ({exc})")
    key = bytes(range(40))
    (tmp_path / PSEUDONYM_KEY_FILE).write_bytes(key)
    users = ",".join(f"{c.value}:{f}" for c, f in USER_FIELDS.items())
    options = {"keep_raw": str(keep_raw).lower(), "skew_ms": str(SKEW_MS), "late": str(late).lower(),
               "secrets_dir": str(tmp_path), "key_id": "k1", "digest": str(digest).lower(), "users": users}
    items = _timed_items(random.Random(7))
    jvm = JvmDecoder(JARS_STATE_DIR, rows=options)
    try:
        java = [line["row"] for line in jvm.decode(items)]
    finally:
        jvm.close()
    python = _python_rows(items, keep_raw=keep_raw, late=late, digest=digest, pseudonymise=Pseudonymiser(key, "k1"))
    kinds: dict[str | None, int] = {}
    for item, j, p in zip(items, java, python, strict=True):
        assert j[:2] == p[:2] and j[3:] == p[3:], f"{item}:\njava   {j}\npython {p}"  # [2] is the message
        assert (j[2] is None) == (p[2] is None)
        kinds[j[1]] = kinds.get(j[1], 0) + 1
    expected = {None, "invalid_value", "bad_framing", "bad_payload"} | ({"late"} if late else set())
    assert expected <= kinds.keys(), kinds  # the items reach every rule
