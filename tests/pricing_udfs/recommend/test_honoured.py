from __future__ import annotations

import pytest

from pricing_udfs.recommend.honoured import HonouredPrices, Offer


def test_an_offer_is_honoured_for_its_user_and_product_within_the_validity_only() -> None:
    h = HonouredPrices(validity_ms=1_000)
    h.offer("u", [("p", 990, "EUR"), ("q", 500, "EUR")], shown_at_ms=10_000, request_id="rr1")
    assert h.lookup("u", "p", 10_500) == Offer(990, "EUR", 10_000, "rr1")
    assert h.lookup("u", "p", 11_000) is not None  # the validity's last millisecond
    assert h.lookup("u", "p", 11_001) is None  # expired, and dropped
    assert h.lookup("u", "q", 9_999) is None  # a request before the recommendation
    assert h.lookup("other", "q", 10_500) is None
    assert h.lookup("u", "nothing", 10_500) is None
    assert len(h) == 1


def test_a_newer_recommendation_replaces_the_offer_and_anonymous_users_get_none() -> None:
    h = HonouredPrices()
    h.offer("u", [("p", 990, "EUR")], shown_at_ms=1, request_id="a")
    h.offer("u", [("p", 950, "EUR")], shown_at_ms=2, request_id="b")
    assert h.lookup("u", "p", 3).price_minor == 950
    h.offer("", [("p", 1, "EUR")], shown_at_ms=1, request_id="c")
    assert h.lookup("", "p", 3) is None


def test_offers_per_user_are_bounded_oldest_first() -> None:
    h = HonouredPrices(max_per_user=3)
    h.offer("u", [(f"p{i}", 100 + i, "EUR") for i in range(5)], shown_at_ms=1, request_id="a")
    assert len(h) == 3
    assert h.lookup("u", "p1", 2) is None and h.lookup("u", "p4", 2).price_minor == 104


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        HonouredPrices(validity_ms=0)


# -- the rule in the pricing stage: honour(), record_offers() ------------------------------------------

def _priced(tmp_path, n_products: list[str], *, cost: float = 300.0):
    import pandas as pd

    from tests.pricing_udfs.test_scoring import T, publish, requests, settle, stage_for

    stage, registry = stage_for(tmp_path)
    publish(registry, tmp_path, "m", intercept=0.0, slope=2.0)
    settle(stage)
    batch = pd.concat([requests(1, product=p, cost=cost) for p in n_products], ignore_index=True)
    batch["user_id"] = "u"
    batch["event_time"] = T + 60_000
    return stage, batch


def _recommendation(items: list[tuple[str, int, str]], *, user: str = "u", at: int) -> bytes:
    from pricing_udfs import serde
    from pricing_udfs.serde import Contract

    return serde.encode(Contract.RECOMMENDATION, {
        "request_id": "rr", "user_id": user, "model_version": "m", "fallback_used": False, "request_time": at,
        "answered_time": at, "feature_spec_version": None,
        "items": [{"product_id": p, "price_minor": price, "reference_price_minor": 1_000, "currency": currency,
                   "expected_conversion": 0.5, "expected_profit_minor": 1, "reason_codes": [], "explored": False,
                   "propensity": 1.0} for p, price, currency in items]})  # fmt: skip


def test_the_pricing_stage_charges_a_valid_offer_and_refuses_one_outside_the_guardrails(tmp_path) -> None:
    from tests.pricing_udfs.test_scoring import T

    from pricing_udfs.recommend.honoured import HONOUR_REFUSED, HONOURED, record_offers

    stage, batch = _priced(tmp_path, ["p", "q", "r", "s"])
    stage.offers = HonouredPrices(validity_ms=900_000)
    assert not record_offers(stage.offers, b"not a recommendation")
    # p: inside the guardrails; q: below the cost floor (300 * 1.05); r: another currency; s: no offer
    assert record_offers(stage.offers, _recommendation([("p", 1_234, "EUR"), ("q", 301, "EUR"), ("r", 1_100, "USD")], at=T))
    out = stage.decide(batch)
    by = dict(zip(batch["product_id"], out.itertuples(index=False)))
    assert by["p"].price_minor == 1_234 and HONOURED in by["p"].reason_codes
    assert 0 < by["p"].expected_conversion < 1
    assert abs(by["p"].expected_profit_minor - by["p"].expected_conversion * (1_234 - 300)) <= 1
    assert by["q"].price_minor != 301 and HONOUR_REFUSED in by["q"].reason_codes
    assert by["r"].price_minor != 1_100 and HONOUR_REFUSED in by["r"].reason_codes
    assert HONOURED not in by["s"].reason_codes and HONOUR_REFUSED not in by["s"].reason_codes
    later = batch.assign(event_time=T + 900_001, request_id=batch["request_id"] + "-later")
    assert not any(HONOURED in c for c in stage.decide(later)["reason_codes"]), "an expired offer is not honoured"
    stage.close()
