"""Candidate generation against a brute-force recount of the same rule (``brute_force_pairs``) and
against hand-built behaviour."""

from __future__ import annotations

import random
from typing import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing_udfs.recommend.candidates import (
    CATEGORY_POPULAR, CO_PURCHASE, CO_VIEW, EXPLICIT, POPULAR, PURCHASE, RECENT, VIEW_KINDS, CandidateIndex,
    CandidateSettings, Decayed,
)  # fmt: skip

H = 3_600_000


def decay(dt_ms: int, half_life_ms: int) -> float:
    return 0.5 ** (max(dt_ms, 0) / half_life_ms)


def brute_force_pairs(events: Iterable[Mapping], settings: CandidateSettings, t: int, *,
                      purchases: bool = False) -> dict[tuple[str, str], float]:  # fmt: skip
    """Every co-occurrence pair's decayed score at ``t``, recounted from all events without any bound
    (the reference the bounded index is tested against; also a readable statement of the rule)."""
    kinds = {PURCHASE} if purchases else VIEW_KINDS
    by_user: dict[str, list[Mapping]] = {}
    for e in events:
        if e["user_id"] and (e["type"] in VIEW_KINDS or e["type"] == PURCHASE):  # what the index remembers
            by_user.setdefault(e["user_id"], []).append(e)
    out: dict[tuple[str, str], float] = {}
    for evs in by_user.values():
        for i, later in enumerate(evs):
            if later["type"] not in kinds:
                continue
            counted: set[str] = set()
            window = [e for e in evs[:i] if later["event_time"] - e["event_time"] <= settings.co_window_ms]
            window = window[-settings.recent_per_user:]  # what the index remembers of this user
            for earlier in window:
                other = earlier["product_id"]
                if earlier["type"] not in kinds or other == later["product_id"] or other in counted:
                    continue
                counted.add(other)
                w = decay(t - later["event_time"], settings.half_life_ms)
                for pair in ((later["product_id"], other), (other, later["product_id"])):
                    out[pair] = out.get(pair, 0.0) + w
    return out


def _events(seed: int, n: int, *, users: int = 6, products: int = 8, span_ms: int = 6 * H) -> list[dict]:
    rng = random.Random(seed)
    t = 1_000_000
    out = []
    for i in range(n):
        t += rng.randint(0, span_ms // n * 2)
        out.append({"user_id": rng.choice([f"u{j}" for j in range(users)] + [""]),
                    "product_id": f"p{rng.randrange(products)}",
                    "type": rng.choice(["view", "view", "add_to_cart", "purchase", "review"]), "event_time": t})
    return out


def _index(events: list[dict], s: CandidateSettings) -> CandidateIndex:
    index = CandidateIndex(s)
    for e in events:
        index.observe(e["user_id"], e["product_id"], e["type"], e["event_time"])
    return index


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 120), recent=st.integers(1, 6),
       window=st.sampled_from([H // 6, H, 3 * H]), purchases=st.booleans())  # fmt: skip
def test_unbounded_scores_equal_the_brute_force_recount(seed: int, n: int, recent: int, window: int, purchases: bool) -> None:
    s = CandidateSettings(half_life_ms=2 * H, co_window_ms=window, recent_per_user=recent, max_neighbours=1_000)
    events = _events(seed, n)
    index = _index(events, s)
    t = events[-1]["event_time"] + H
    expected = brute_force_pairs(events, s, t, purchases=purchases)
    got = {(p, q): v for p in {e["product_id"] for e in events}
           for q, v in index.neighbours(p, t, purchases=purchases)}  # fmt: skip
    assert got.keys() == expected.keys()
    for pair, value in expected.items():
        assert got[pair] == pytest.approx(value, rel=1e-9), pair


def test_bounded_neighbours_keep_the_strongest_pairs_exactly_and_stay_bounded() -> None:
    """Forty products, each user views a "home" product then one of many others: the pairs with the few
    products that most users pair with must survive pruning with their exact scores."""
    rng = random.Random(3)
    events, t = [], 1_000_000
    for i in range(3_000):
        t += 1_000
        user = f"u{i}"
        strong = rng.choice(["p1", "p2", "p3"]) if rng.random() < 0.6 else f"p{rng.randrange(4, 40)}"
        events += [{"user_id": user, "product_id": "p0", "type": "view", "event_time": t},
                   {"user_id": user, "product_id": strong, "type": "view", "event_time": t + 10}]
    s = CandidateSettings(half_life_ms=10 * H, max_neighbours=5)
    index = _index(events, s)
    now = t + 20
    assert len(index.co_view["p0"].scores) <= 2 * s.max_neighbours
    expected = brute_force_pairs(events, s, now)
    top = index.neighbours("p0", now)[:3]
    assert [p for p, _ in top] == sorted(["p1", "p2", "p3"], key=lambda p: -expected[("p0", p)])
    for product, score in top:
        assert score == pytest.approx(expected[("p0", product)], rel=1e-9)
    for product, score in index.neighbours("p0", now):  # dropped and re-counted pairs: never above the truth
        assert score <= expected[("p0", product)] + 1e-9


def test_decay_halves_a_score_every_half_life() -> None:
    d = Decayed(half_life_ms=1_000, keep=10)
    d.add("a", 8.0, 0)
    assert d.value("a", 1_000) == pytest.approx(4.0)
    assert d.value("a", 3_000) == pytest.approx(1.0)
    d.add("a", 1.0, 3_000)
    assert d.value("a", 3_000) == pytest.approx(2.0)


def test_candidates_come_from_the_context_history_category_and_popularity_in_that_order() -> None:
    s = CandidateSettings(half_life_ms=24 * H, co_window_ms=H)
    index = CandidateIndex(s)
    for p, c in {"shoe": "shoes", "sock": "shoes", "boot": "shoes", "hat": "hats", "cap": "hats", "gone": "shoes"}.items():
        index.catalogue(p, c)
    index.catalogue("gone", "shoes", active=False)
    t = 10 * H
    for u in ("a", "b", "c"):  # shoe and sock are co-viewed, and bought together once
        index.observe(u, "shoe", "view", t)
        index.observe(u, "sock", "view", t + 1)
    index.observe("a", "shoe", "purchase", t + 2)
    index.observe("a", "sock", "purchase", t + 3)
    for i in range(5):  # cap is the most popular product; gone is popular but inactive
        index.observe("", "cap", "view", t + 10 + i)
        index.observe("", "gone", "view", t + 10 + i)
    index.observe("", "boot", "view", t + 50)  # popular in its category only through this view
    index.observe("me", "hat", "view", t + 100)

    got = index.candidates("me", t + 200, context_product_id="shoe")
    ids = [c.product_id for c in got]
    assert ids[0] == "sock" and got[0].reasons[:2] == (CO_PURCHASE, CO_VIEW)
    assert "shoe" not in ids and "gone" not in ids  # the context product itself, an inactive product
    assert next(c for c in got if c.product_id == "hat").reasons[0] == RECENT
    assert ids.index("hat") < ids.index("boot")  # history before category popularity
    assert CATEGORY_POPULAR in next(c for c in got if c.product_id == "boot").reasons
    assert POPULAR in next(c for c in got if c.product_id == "cap").reasons

    in_hats = index.candidates("me", t + 200, context_product_id="shoe", context_category="hats")
    assert {c.product_id for c in in_hats} == {"hat", "cap"}
    assert [c.product_id for c in index.candidates("me", t, explicit=["boot", "gone", "x"])] == ["boot", "x"]
    assert index.candidates("me", t, explicit=["boot"])[0].reasons == (EXPLICIT,)
    assert len(index.candidates("nobody", t, n=2)) == 2


def test_user_history_is_bounded_and_forgets_what_left_the_window() -> None:
    s = CandidateSettings(co_window_ms=1_000, recent_per_user=3)
    index = CandidateIndex(s)
    for i in range(10):
        index.observe("u", f"p{i}", "view", i * 100)
    assert index.recent_products("u") == ["p9", "p8", "p7"]
    index.observe("u", "late", "view", 10_000)
    assert index.recent_products("u") == ["late"]
    assert "p9" not in {q for q, _ in index.neighbours("late", 10_000)}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_neighbours must be positive"):
        CandidateSettings(max_neighbours=0)
