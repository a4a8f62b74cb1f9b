"""The job's dead-letter encoder in the JVM (``pricing.deadletter.EncodeDeadLetter``) writes exactly the bytes of the
Python reference (``pricing_udfs.udfs.encode_dead_letters``) on random dead letters: raw values long and short,
missing, or already replaced by their digest; known, unknown and missing error kinds; messages past the clip, with
characters outside the BMP; both privacy modes."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.jars import JarsMissingError, flink_distribution, flink_jars, project_jar
from pricing_udfs import serde, udfs
from pricing_udfs.privacy import digest_token
from tests.conftest import JARS_STATE_DIR

MAX_RAW = 64
TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


class _JvmEncoder:
    def __init__(self, digest: bool) -> None:
        classpath = f"{project_jar(JARS_STATE_DIR)}:{flink_distribution() / 'lib'}/*"
        schema = serde.SCHEMA_DIR / "dead_letter.avsc"
        self._process = subprocess.Popen(["java", "-Xmx256m", "-cp", classpath, "pricing.deadletter.EncodeCli",
                                          str(schema), str(MAX_RAW), str(digest).lower()],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip

    def encode(self, letters: list[tuple]) -> list[bytes]:
        def chunk(value: bytes | str | None) -> bytes:
            if value is None:
                return struct.pack(">i", -1)
            raw = value.encode() if isinstance(value, str) else value
            return struct.pack(">i", len(raw)) + raw

        buf = bytearray(struct.pack(">i", len(letters)))
        for topic, partition, offset, raw, kind, message, record_ms, now_ms in letters:
            buf += chunk(topic) + chunk(raw) + chunk(kind) + chunk(message)
            buf += struct.pack(">iqqq", partition, offset, record_ms, now_ms)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(buf)
        self._process.stdin.flush()
        return [bytes.fromhex(self._process.stdout.readline().decode().strip()) for _ in letters]

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=30)


@pytest.fixture(scope="module", params=[False, True], ids=["raw", "digest"])
def jvm(request: pytest.FixtureRequest) -> Iterator[tuple[_JvmEncoder, bool]]:
    try:
        flink_jars(JARS_STATE_DIR)
    except JarsMissingError as exc:
        pytest.fail(f"the JVM encoder is built by `make jars` ({exc})")
    encoder = _JvmEncoder(request.param)
    yield encoder, request.param
    encoder.close()


def _python(letter: tuple, digest: bool) -> bytes:
    topic, partition, offset, raw, kind, message, record_ms, now_ms = letter
    return udfs.encode_dead_letters([topic], [partition], [offset], [raw], [kind], [message], [record_ms],
                                    max_raw_bytes=MAX_RAW, now_ms=now_ms, digest=digest)[0]  # fmt: skip


letters = st.tuples(
    TEXT.filter(bool),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**62),
    st.one_of(st.none(), st.binary(max_size=3 * MAX_RAW), st.binary(max_size=500).map(digest_token)),
    st.one_of(st.none(), st.sampled_from([k.value for k in serde.ErrorKind]), TEXT),
    st.one_of(st.none(), TEXT, st.text(st.characters(codec="utf-8"), min_size=1_990, max_size=2_010),
              st.just("𝄞" * 2_001)),
    st.integers(0, 2**45),
    st.integers(0, 2**45),
)


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(letters, min_size=1, max_size=8))
def test_the_jvm_writes_the_bytes_of_the_python_encoder(jvm: tuple[_JvmEncoder, bool], batch: list[tuple]) -> None:
    encoder, digest = jvm
    assert encoder.encode(batch) == [_python(letter, digest) for letter in batch]


def test_the_corner_cases_decode_as_the_contract_says(jvm: tuple[_JvmEncoder, bool]) -> None:
    encoder, digest = jvm
    value = bytes(range(200))
    letters = [("t", 1, 2, value, "no-such-kind", "m" * 2_500, 5, 6), ("t", 0, 0, None, None, None, 1, 1),
               ("t", 0, 0, digest_token(value), "late", "x", 1, 1)]
    for letter, framed in zip(letters, encoder.encode(letters), strict=True):
        assert framed == _python(letter, digest)
        record = serde.decode(serde.Contract.DEAD_LETTER, framed).record
        assert record["error_kind"] in {k.value for k in serde.ErrorKind} and len(record["error_message"]) <= 2_000
        assert len(record["raw"]) <= (0 if digest else MAX_RAW)
    first = serde.decode(serde.Contract.DEAD_LETTER, encoder.encode(letters[:1])[0]).record
    assert first["error_kind"] == "other" and first["raw_size"] == 200 and first["raw_truncated"]
