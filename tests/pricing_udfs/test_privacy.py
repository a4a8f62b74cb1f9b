"""Pseudonymous users and digest-only dead letters (``pricing_udfs.privacy``): no services needed."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricing_udfs import serde, udfs
from pricing_udfs.privacy import (
    PSEUDONYM_KEY_FILE,
    PrivacyConfig,
    PrivacyError,
    Pseudonymiser,
    digest_token,
    read_digest_token,
)
from pricing_udfs.serde import Contract

# RFC 4231, test case 6: a 131-byte key and its published HMAC-SHA-256 (an independent reference).
RFC4231_KEY = b"\xaa" * 131
RFC4231_DATA = "Test Using Larger Than Block-Size Key - Hash Key First"
RFC4231_MAC = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"


def test_a_pseudonym_is_the_key_id_and_the_first_128_bits_of_the_published_hmac() -> None:
    expected = "k7:" + base64.urlsafe_b64encode(bytes.fromhex(RFC4231_MAC)[:16]).decode().rstrip("=")
    assert Pseudonymiser(RFC4231_KEY, "k7")(RFC4231_DATA) == expected


@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_pseudonyms_are_stable_distinct_and_hide_the_id(a: str, b: str) -> None:
    p = Pseudonymiser(b"x" * 32, "k1")
    assert p(a) == p(a) == Pseudonymiser(b"x" * 32, "k1")(a)
    assert (p(a) == p(b)) == (a == b)
    assert a not in p(a)[3:] or len(a) < 4  # base64 of a MAC, not the id (a short id may occur by chance)
    rotated = Pseudonymiser(b"y" * 32, "k2")(a)
    assert rotated.startswith("k2:") and rotated != p(a)  # a new key: new pseudonyms, named by the key id


def test_anonymous_and_missing_users_stay_so() -> None:
    p = Pseudonymiser(b"x" * 32, "k1")
    assert (p(""), p(None)) == ("", None)


def test_the_key_file_is_read_by_the_worker_and_a_short_or_missing_key_is_refused(tmp_path: Path) -> None:
    config = PrivacyConfig(secrets_dir=str(tmp_path), key_id="k1")
    with pytest.raises(PrivacyError, match="cannot read"):
        config.pseudonymiser()
    (tmp_path / PSEUDONYM_KEY_FILE).write_text("short")
    with pytest.raises(PrivacyError, match="fewer than 32"):
        config.pseudonymiser()
    (tmp_path / PSEUDONYM_KEY_FILE).write_text("k" * 64)
    assert config.pseudonymiser()("u1") == Pseudonymiser(b"k" * 64, "k1")("u1")
    assert "k" * 64 not in repr(config) and "k" * 64 not in config.model_dump_json()


def _decode(values: list[bytes], *, digest: bool, keep_raw: bool) -> pd.DataFrame:
    n = len(values)
    ts = [serde.decode(Contract.PRICE_REQUEST, v).record["event_time"] if serde.decode(Contract.PRICE_REQUEST, v).ok
          else 1 for v in values]  # fmt: skip
    return udfs.decode_batch(
        Contract.PRICE_REQUEST, pd.Series(values, dtype=object), topics=pd.Series(["t"] * n),
        partitions=pd.Series([0] * n), offsets=pd.Series(range(n)), timestamps=pd.to_datetime(ts, unit="ms", utc=True),
        keep_raw=keep_raw, pseudonymise=Pseudonymiser(b"s" * 32, "k1"), digest=digest,
    )  # fmt: skip


def test_the_decoder_pseudonymises_and_in_digest_mode_keeps_no_byte_of_a_record() -> None:
    good = serde.encode(Contract.PRICE_REQUEST, {"request_id": "r1", "user_id": "alice@example.com", "product_id": "p1",
                                                 "channel": "web", "event_time": 1_000})  # fmt: skip
    bad = b"alice@example.com wrote this"
    out = _decode([good, bad], digest=True, keep_raw=True)
    assert out["ok"].tolist() == [True, False]
    assert out["user_id"][0] == Pseudonymiser(b"s" * 32, "k1")("alice@example.com")
    for raw, kept in zip([good, bad], out["raw_value"]):
        assert b"alice" not in kept and read_digest_token(kept) == (hashlib.sha256(raw).hexdigest(), len(raw))
    plain = _decode([good, bad], digest=False, keep_raw=True)
    assert plain["raw_value"].tolist() == [good, bad] and plain["user_id"][0] == out["user_id"][0]

    letters = udfs.encode_dead_letters(["t"] * 2, [0, 0], [0, 1], out["raw_value"], ["duplicate", "bad_framing"],
                                       ["m", "m"], [1, 1], max_raw_bytes=1_000, now_ms=5, digest=True)  # fmt: skip
    for raw, framed in zip([good, bad], letters):
        letter = serde.decode(Contract.DEAD_LETTER, framed).record
        assert b"alice" not in framed
        assert (letter["raw"], letter["raw_size"], letter["raw_sha256"], letter["raw_truncated"]) == (
            b"", len(raw), hashlib.sha256(raw).hexdigest(), True)


def test_a_raw_record_that_looks_like_a_digest_is_kept_as_bytes_outside_digest_mode() -> None:
    forged = digest_token(b"something else")
    letter = serde.decode(Contract.DEAD_LETTER, udfs.encode_dead_letters(
        ["t"], [0], [0], [forged], ["bad_framing"], ["m"], [1], max_raw_bytes=1_000, now_ms=5)[0]).record  # fmt: skip
    assert (letter["raw"], letter["raw_sha256"]) == (forged, hashlib.sha256(forged).hexdigest())
