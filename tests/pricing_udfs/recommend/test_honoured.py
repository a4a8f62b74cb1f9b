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
