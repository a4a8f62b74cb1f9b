"""The Flink adapters' batch logic, without Flink."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_udfs import serde, udfs
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.policy import ModelPolicy, PolicySettings
from pricing_udfs.serde import Contract

T = 1_764_000_000_000


def _request(i: int, ts: int = T) -> bytes:
    return serde.encode(
        Contract.PRICE_REQUEST,
        {"request_id": f"r{i}", "user_id": "u", "product_id": "p", "channel": "web", "event_time": ts},
    )


def _decode(values: list, timestamps: list[int]) -> pd.DataFrame:
    n = len(values)
    return udfs.decode_batch(
        Contract.PRICE_REQUEST,
        pd.Series(values, dtype=object),
        topics=pd.Series(["req"] * n),
        partitions=pd.Series(range(n)),
        offsets=pd.Series([100 + i for i in range(n)]),
        timestamps=pd.Series(pd.to_datetime(timestamps, unit="ms", utc=True)).dt.tz_convert("Asia/Kolkata"),
    )


def test_decode_batch_splits_good_and_bad_rows_and_keeps_bad_bytes() -> None:
    out = _decode([_request(0), b"junk", _request(2, ts=T + 5)], [T, T, T])
    assert out["ok"].tolist() == [True, False, False]
    assert out.loc[0, "request_id"] == "r0" and out.loc[0, "event_time"] == T
    assert out.loc[0, "raw_value"] is None  # good rows do not carry their bytes onward
    assert out.loc[1, "error_kind"] == "bad_framing" and out.loc[1, "raw_value"] == b"junk"
    assert (out.loc[1, "source_topic"], out.loc[1, "source_partition"], out.loc[1, "source_offset"]) == ("req", 1, 101)
    assert out.loc[2, "error_kind"] == "invalid_value"
    assert "differs from the Kafka record timestamp" in out.loc[2, "error_message"]


def test_a_record_stamped_too_far_ahead_of_the_clock_is_invalid() -> None:
    skew = 600_000
    values = [_request(0, ts=T + skew), _request(1, ts=T + skew + 1)]
    out = udfs.decode_batch(
        Contract.PRICE_REQUEST, pd.Series(values, dtype=object), topics=pd.Series(["req"] * 2),
        partitions=pd.Series([0, 0]), offsets=pd.Series([1, 2]),
        timestamps=pd.Series(pd.to_datetime([T + skew, T + skew + 1], unit="ms", utc=True)),
        max_clock_skew_ms=skew, now_ms=T,
    )
    assert out["ok"].tolist() == [True, False]
    assert out.loc[1, "error_kind"] == "invalid_value"
    assert f"is {skew + 1} ms ahead of the engine's clock" in out.loc[1, "error_message"]


def test_decoded_columns_match_the_declared_row_type() -> None:
    out = _decode([_request(0)], [T])
    assert list(out.columns) == udfs.decoded_field_names(Contract.PRICE_REQUEST)


def test_price_and_encode_logs_the_decision_and_the_served_feature_vector() -> None:
    policy = ModelPolicy.create(FakeDemandModel(), "v-test", PolicySettings(), default_price_minor=500, currency="EUR")
    vectors = [FEATURE_SPEC.vector({"list_price_minor": 1234.0, "unit_cost_minor": 600.0, "views_1h": 7.0}),
               FEATURE_SPEC.vector({})]  # fmt: skip
    batch = udfs.request_batch(
        {
            "request_id": pd.Series(["a", "b"]), "user_id": pd.Series(["u1", "u2"]),
            "product_id": pd.Series(["p1", "p2"]), "channel": pd.Series(["web", "app"]),
            "event_time": pd.Series([T, T + 1]), "list_currency": pd.Series(["EUR", None]),
        },
        pd.Series(vectors),
        spec=FEATURE_SPEC,
    )
    decisions = policy.decide(batch)
    encoded = udfs.price_and_encode_batch(policy, batch, spec=FEATURE_SPEC, priced_time_ms=T + 10)
    records = [serde.decode(Contract.PRICED_EVENT, b).record for b in encoded]
    a, b = records
    assert (a["request_id"], a["price_minor"], a["fallback_used"], a["model_version"]) == (
        "a", int(decisions.loc[0, "price_minor"]), False, "v-test")
    assert a["expected_conversion"] == pytest.approx(decisions.loc[0, "expected_conversion"])
    assert a["expected_profit_minor"] == round((a["price_minor"] - 600) * a["expected_conversion"])
    assert (a["explored"], a["propensity"], a["reason_codes"][0]) == (False, 1.0, "model")
    assert (b["price_minor"], b["fallback_used"], b["propensity"], b["reason_codes"]) == (500, True, None, ["default_price"])
    assert b["request_time"] == T + 1 and b["priced_time"] == T + 10
    assert a["feature_spec_version"] == FEATURE_SPEC.version
    assert a["features"] == vectors[0].tolist()
    assert b["features"][FEATURE_SPEC.index("is_new_user")] == 1.0  # the spec default


def test_late_rows_are_rejected_with_their_bytes() -> None:
    n = 4
    values = [_request(0, ts=T), _request(1, ts=T - 5_000), _request(2, ts=T), _request(3, ts=T - 1_000)]
    out = udfs.decode_batch(
        Contract.PRICE_REQUEST,
        pd.Series(values, dtype=object),
        topics=pd.Series(["req"] * n), partitions=pd.Series([0] * n), offsets=pd.Series(range(n)),
        timestamps=pd.Series(pd.to_datetime([T, T - 5_000, T, T - 1_000], unit="ms", utc=True)),
        watermarks=pd.Series(pd.to_datetime([None, T - 1_000, T - 1_000, T - 1_000], unit="ms", utc=True)),
    )
    assert out["ok"].tolist() == [True, False, True, False]  # at the watermark is late: Flink's windows drop it
    assert out.loc[1, "error_kind"] == "late" and out.loc[1, "raw_value"] == values[1]
    assert "not after the watermark (it is 4000 ms behind)" in out.loc[1, "error_message"]


@pytest.mark.parametrize("late", [True, False])
def test_a_decoder_without_the_late_check_ignores_the_watermark(late: bool) -> None:
    """Arrival mode's request decoder: the SQL call is the same in both modes (one shared Python operator),
    the function itself drops the watermark."""
    function = udfs.decoder(Contract.PRICE_REQUEST, late=late)._func
    out = function.eval(pd.Series([_request(0, ts=T - 5_000)], dtype=object), pd.Series(["req"]), pd.Series([0]),
                        pd.Series([7]), pd.Series(pd.to_datetime([T - 5_000], unit="ms", utc=True)),
                        pd.Series(pd.to_datetime([T], unit="ms", utc=True)))  # fmt: skip
    assert out["ok"].tolist() == [not late]


def test_a_dead_letter_carries_a_capped_prefix_with_the_whole_size_and_digest() -> None:
    import hashlib

    huge = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than any Kafka record may hold
    small = b"\x00junk"
    encoded = udfs.encode_dead_letters(
        ["t", "t"], [0, 1], [5, 6], [huge, small], ["bad_framing", "made-up-kind"], ["x" * 10_000, None],
        [T, T], max_raw_bytes=1_000, now_ms=T + 1,
    )
    big, little = (serde.decode(Contract.DEAD_LETTER, b).record for b in encoded)
    assert len(encoded[0]) < 1_000 + 3_000  # the prefix, a clipped message and a few fixed fields
    assert (big["raw"], big["raw_size"], big["raw_truncated"]) == (huge[:1_000], len(huge), True)
    assert big["raw_sha256"] == hashlib.sha256(huge).hexdigest()
    assert len(big["error_message"]) == udfs.MAX_ERROR_MESSAGE_CHARS
    assert (little["raw"], little["raw_size"], little["raw_truncated"]) == (small, len(small), False)
    assert little["raw_sha256"] == hashlib.sha256(small).hexdigest()
    assert little["error_kind"] == "other" and little["error_message"] == ""
    assert (little["partition"], little["offset"], little["record_time"], little["time"]) == (1, 6, T, T + 1)


def _encode_row_by_row(batch: pd.DataFrame, decisions: pd.DataFrame, *, priced_time_ms: int) -> list[bytes]:
    """The encoder before the columnar one (a dict and ``serde.encode`` per request): the reference."""
    vectors = batch[list(FEATURE_SPEC.names)].to_numpy(dtype=np.float64)
    out = []
    for req, dec, vec in zip(batch.itertuples(index=False), decisions.itertuples(index=False), vectors):
        propensity = float(dec.propensity)
        out.append(serde.encode(Contract.PRICED_EVENT, {
            "request_id": req.request_id, "user_id": req.user_id, "product_id": req.product_id,
            "price_minor": int(dec.price_minor), "reference_price_minor": int(dec.reference_price_minor),
            "currency": dec.currency, "model_version": dec.model_version,
            "expected_conversion": float(dec.expected_conversion), "expected_profit_minor": int(dec.expected_profit_minor),
            "reason_codes": list(dec.reason_codes), "fallback_used": bool(dec.fallback_used),
            "request_time": int(req.event_time), "priced_time": priced_time_ms,
            "feature_spec_version": FEATURE_SPEC.version, "features": vec.tolist(), "explored": bool(dec.explored),
            "propensity": None if np.isnan(propensity) else propensity,
        }))  # fmt: skip
    return out


_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_DOUBLE = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({
    "request_id": _TEXT, "user_id": _TEXT, "product_id": _TEXT, "event_time": st.integers(0, 2**62),
    "features": st.lists(_DOUBLE, min_size=len(FEATURE_SPEC.names), max_size=len(FEATURE_SPEC.names)),
    "price_minor": st.integers(-(2**63), 2**63 - 1), "reference_price_minor": st.integers(0, 2**40),
    "currency": st.sampled_from(["EUR", "USD", "€uro"]), "model_version": st.sampled_from(["v1", "fallback/reference-price"]),
    "expected_conversion": _DOUBLE, "expected_profit_minor": st.integers(-(2**50), 2**50),
    "reason_codes": st.lists(st.sampled_from(["model", "explore", "floor_margin", "ceiling", "no_model"]), max_size=4),
    "fallback_used": st.booleans(), "explored": st.booleans(), "propensity": st.none() | st.floats(0, 1),
}), max_size=12), priced_time=st.integers(0, 2**62))  # fmt: skip
def test_the_columnar_priced_event_encoder_writes_the_row_encoders_bytes(rows: list[dict], priced_time: int) -> None:
    """Random decisions (any money, NaN and infinite doubles, unicode ids, empty batches), as the policy's frames hold
    them: the bytes equal the former row-by-row encoder's."""
    names = list(FEATURE_SPEC.names)
    batch = pd.DataFrame({"request_id": [r["request_id"] for r in rows], "user_id": [r["user_id"] for r in rows],
                          "product_id": [r["product_id"] for r in rows],
                          "event_time": pd.Series([r["event_time"] for r in rows], dtype="int64")})  # fmt: skip
    batch = pd.concat([batch, pd.DataFrame([r["features"] for r in rows], columns=names, dtype=np.float64)], axis=1)
    decisions = pd.DataFrame({key: pd.Series([r[key] for r in rows], dtype=object if key in ("reason_codes", "propensity") else None)
                              for key in ("price_minor", "reference_price_minor", "currency", "model_version",
                                          "expected_conversion", "expected_profit_minor", "reason_codes",
                                          "fallback_used", "explored", "propensity")})  # fmt: skip
    decisions["propensity"] = decisions["propensity"].astype(np.float64)
    encoded = udfs.encode_priced_events(batch, decisions, spec=FEATURE_SPEC, priced_time_ms=priced_time)
    assert encoded.tolist() == _encode_row_by_row(batch, decisions, priced_time_ms=priced_time)
