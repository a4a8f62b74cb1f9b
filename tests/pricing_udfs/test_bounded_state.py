"""Every structure a Python worker keeps per key or over time has a bound (README, "Bounded worker memory")."""

from __future__ import annotations

import pandas as pd

from pricing_udfs.anchors import HOUR_MS, Anchors, PricedKey
from pricing_udfs.model import serving
from pricing_udfs.privacy import Pseudonymiser
from pricing_udfs.recommend.candidates import CandidateIndex, CandidateSettings
from pricing_udfs.recommend.honoured import HonouredPrices


def test_anchors_forget_the_products_priced_longest_ago_beyond_the_cap() -> None:
    anchors = Anchors(max_products=10)
    for i in range(30):  # product i priced in hour i
        anchors.add(PricedKey(f"p{i}", i * HOUR_MS, 0, f"r{i}", 100 + i))
    assert len(anchors) <= 11
    assert anchors.anchor("p29", 40 * HOUR_MS) == 129 and anchors.anchor("p0", 40 * HOUR_MS) == 0
    anchors.record(pd.Series(["p0"]), pd.Series([41 * HOUR_MS]), [7])  # priced again: remembered again
    assert anchors.anchor("p0", 42 * HOUR_MS) == 7


def test_honoured_offers_expire_and_users_are_capped() -> None:
    offers = HonouredPrices(validity_ms=1_000, max_users=5)
    for i in range(20):
        offers.offer(f"u{i}", [("p", 100, "EUR")], shown_at_ms=i * 10, request_id=f"r{i}")
    assert len(offers._offers) == 5 and offers.lookup("u19", "p", 200) is not None and offers.lookup("u0", "p", 5) is None
    for i in range(10_000):  # a sweep: offers expired against the newest one are gone
        offers.offer("busy", [("p", 100, "EUR")], shown_at_ms=10_000_000 + i, request_id="b")
    assert list(offers._offers) == ["busy"]


def test_the_candidate_index_forgets_silent_users() -> None:
    index = CandidateIndex(CandidateSettings(user_ttl_ms=1_000, max_users=50))
    for i in range(100):
        index.observe(f"old{i}", "p1", "view", i)
    for i in range(10_000):
        index.observe(f"new{i % 40}", "p2", "view", 100_000 + i)
    assert set(index.recent) == {f"new{i}" for i in range(40)}


def test_a_watcher_remembers_only_the_newest_refused_versions(monkeypatch) -> None:
    monkeypatch.setattr(serving, "MAX_REJECTED", 3)
    watcher = serving.ModelWatcher(None)
    for i in range(10):
        watcher._reject(f"v{i}", "broken")
    assert list(watcher.rejected) == ["v7", "v8", "v9"] and watcher.rejected_total == 10


def test_the_pseudonym_cache_is_bounded(monkeypatch) -> None:
    from pricing_udfs import privacy

    monkeypatch.setattr(privacy, "_CACHE", 8)
    p = Pseudonymiser(b"x" * 32, "k1")
    for i in range(100):
        p(f"user{i}")
    assert len(p._cache) == 8
