"""Candidate products for a shopper, from the behaviour stream: item-to-item co-occurrence (Linden, Smith
and York 2003), category and global popularity, and the shopper's own recent products.

Every score decays exponentially with event time (``half_life_ms``), so the state reflects recent
behaviour and needs no window bookkeeping: a score s stored at time t0 is worth
``s * 2 ** (-(t - t0) / half_life_ms)`` at t. State is bounded whatever the traffic:

- per product at most ``max_neighbours`` co-view and as many co-purchase neighbours. When a product has
  twice that many, the weakest (decayed) half is dropped: a dropped pair that comes back starts again
  from its new evidence, so the kept scores are exact for every pair never dropped and a lower bound
  otherwise (``tests/pricing_udfs/recommend/test_candidates.py`` compares both against its brute-force
  recount of the rule);
- per user the last ``recent_per_user`` products within ``co_window_ms``;
- per category the ``max_popular`` most popular products, kept as for the neighbours.

Two products co-occur when one user touches both within ``co_window_ms`` (a view or cart counts for
``co_view``, two purchases for ``co_purchase``); each such pair adds 1 (decayed from the later event).
Events must come in non-decreasing event time per user (the job's stages order them); an older event is
still counted, at its own time. The state is plain Python data (pickled into a checkpoint by the caller).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from pricing_udfs.serde import Contract, enum_symbols

VIEW_KINDS = frozenset({"view", "add_to_cart"})
PURCHASE = "purchase"
if not VIEW_KINDS | {PURCHASE} <= set(enum_symbols(Contract.BEHAVIOUR_EVENT, "type")):
    raise ImportError("behaviour_event.avsc no longer has the event types the candidate index counts")
# Reason codes of the candidate sources (Recommendation.items.reason_codes).
EXPLICIT, CO_VIEW, CO_PURCHASE, RECENT, CATEGORY_POPULAR, POPULAR = (
    "explicit", "co_view", "co_purchase", "recent", "category_popular", "popular")  # fmt: skip


@dataclass(frozen=True)
class CandidateSettings:
    half_life_ms: int = 24 * 3_600_000
    co_window_ms: int = 3_600_000
    max_neighbours: int = 50
    recent_per_user: int = 20
    max_popular: int = 200
    n_candidates: int = 100
    user_ttl_ms: int = 24 * 3_600_000  # a user silent this long (behind the newest event) is forgotten
    max_users: int = 1_000_000  # users with recent products a worker keeps (the silent longest go first)

    def __post_init__(self) -> None:
        for name in ("half_life_ms", "co_window_ms", "max_neighbours", "recent_per_user", "max_popular", "n_candidates",
                     "user_ttl_ms", "max_users"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class Decayed:
    """Scores by key, each stored with the time it was last updated; bounded to ``2 * keep`` keys."""

    half_life_ms: int
    keep: int
    scores: dict[str, tuple[float, int]] = field(default_factory=dict)

    def value(self, key: str, t: int) -> float:
        got = self.scores.get(key)
        return 0.0 if got is None else got[0] * _decay(t - got[1], self.half_life_ms)

    def add(self, key: str, amount: float, t: int) -> None:
        old, t0 = self.scores.get(key, (0.0, t))
        if t >= t0:
            self.scores[key] = (old * _decay(t - t0, self.half_life_ms) + amount, t)
        else:  # an older event: counted at its own time, the stored time stays
            self.scores[key] = (old + amount * _decay(t0 - t, self.half_life_ms), t0)
        if len(self.scores) > 2 * self.keep:
            self._prune(t)

    def top(self, n: int, t: int, *, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The ``n`` highest scores at ``t``, highest first (ties by key)."""
        skip = set(exclude)
        ranked = sorted(((k, self.value(k, t)) for k in self.scores if k not in skip), key=lambda kv: (-kv[1], kv[0]))
        return ranked[:n]

    def _prune(self, t: int) -> None:
        self.scores = {k: self.scores[k] for k, _ in self.top(self.keep, t)}


def _decay(dt_ms: int, half_life_ms: int) -> float:
    return math.pow(2.0, -max(dt_ms, 0) / half_life_ms)


@dataclass(frozen=True)
class Candidate:
    product_id: str
    score: float  # the strongest source's score, for the fallback's ranking
    reasons: tuple[str, ...]


class CandidateIndex:
    """The behaviour-derived state and the candidate generation over it (see the module docstring)."""

    def __init__(self, settings: CandidateSettings | None = None) -> None:
        self.settings = s = settings or CandidateSettings()
        self.co_view: dict[str, Decayed] = {}
        self.co_purchase: dict[str, Decayed] = {}
        self.recent: dict[str, deque[tuple[str, int, str]]] = {}  # user -> (product, time, kind), oldest first
        self.category_popular: dict[str, Decayed] = {}
        self.popular = Decayed(s.half_life_ms, s.max_popular)
        self.category: dict[str, str] = {}
        self.inactive: set[str] = set()
        self._newest_ms = 0
        self._since_sweep = 0

    # -- updates ---------------------------------------------------------------------------------
    def catalogue(self, product_id: str, category: str, *, active: bool = True) -> None:
        """A catalogue entry: the product's category (its latest), and whether it may be recommended."""
        self.category[product_id] = category
        (self.inactive.discard if active else self.inactive.add)(product_id)

    def observe(self, user_id: str, product_id: str, kind: str, t: int) -> None:
        """One behaviour event (``view``, ``add_to_cart`` or ``purchase``); anonymous users ('') add popularity only."""
        s = self.settings
        weight = 1.0 if kind in VIEW_KINDS else 3.0 if kind == PURCHASE else 0.0
        if weight == 0.0:
            return
        self.popular.add(product_id, weight, t)
        category = self.category.get(product_id)
        if category is not None:
            self.category_popular.setdefault(category, Decayed(s.half_life_ms, s.max_popular)).add(product_id, weight, t)
        if not user_id:
            return
        recent = self.recent.setdefault(user_id, deque())
        while recent and recent[0][1] < t - s.co_window_ms:
            recent.popleft()
        pairs = self.co_purchase if kind == PURCHASE else self.co_view
        seen: set[str] = set()
        for other, t_other, other_kind in recent:
            if other == product_id or other in seen or t - t_other > s.co_window_ms:
                continue
            if kind == PURCHASE and other_kind != PURCHASE:
                continue
            if kind != PURCHASE and other_kind not in VIEW_KINDS:
                continue
            seen.add(other)
            pairs.setdefault(product_id, Decayed(s.half_life_ms, s.max_neighbours)).add(other, 1.0, t)
            pairs.setdefault(other, Decayed(s.half_life_ms, s.max_neighbours)).add(product_id, 1.0, t)
        recent.append((product_id, t, kind))
        while len(recent) > s.recent_per_user:
            recent.popleft()
        self._newest_ms = max(self._newest_ms, t)
        self._since_sweep += 1
        if self._since_sweep >= 10_000:
            self._sweep()

    def _sweep(self) -> None:
        """Bounded memory: a user whose newest event is older than ``user_ttl_ms`` before the newest event seen is
        forgotten (their recent products would be a day old); then the oldest beyond ``max_users``."""
        self._since_sweep = 0
        s = self.settings
        horizon = self._newest_ms - s.user_ttl_ms
        for user in [u for u, r in self.recent.items() if not r or r[-1][1] < horizon]:
            del self.recent[user]
        if len(self.recent) > s.max_users:
            for user in sorted(self.recent, key=lambda u: self.recent[u][-1][1])[: len(self.recent) - s.max_users]:
                del self.recent[user]

    # -- queries ---------------------------------------------------------------------------------
    def neighbours(self, product_id: str, t: int, *, purchases: bool = False) -> list[tuple[str, float]]:
        table = self.co_purchase if purchases else self.co_view
        got = table.get(product_id)
        return [] if got is None else got.top(self.settings.max_neighbours, t)

    def recent_products(self, user_id: str) -> list[str]:
        """The user's recent products, newest first, each once."""
        out: list[str] = []
        for product, _, _ in reversed(self.recent.get(user_id, ())):
            if product not in out:
                out.append(product)
        return out

    def candidates(self, user_id: str, t: int, *, context_product_id: str | None = None,
                   context_category: str | None = None, explicit: Iterable[str] = (),
                   n: int | None = None) -> list[Candidate]:  # fmt: skip
        """Up to ``n`` (default ``n_candidates``) distinct products for one request, strongest evidence first.

        Explicit candidates, when given, are the whole set (the caller chose it; kept in its order). Otherwise,
        in order: neighbours of the context product, neighbours of the user's recent products, the recent
        products themselves, the popular products of the context category (or of the user's recent
        categories), then globally popular products. The context product and inactive products are never
        candidates; with a context category only its products are.
        """
        limit = self.settings.n_candidates if n is None else n
        found: dict[str, list] = {}  # product -> [score, reasons]

        def add(product: str, score: float, reason: str) -> None:
            if product == context_product_id or product in self.inactive:
                return
            if context_category is not None and self.category.get(product) != context_category:
                return
            entry = found.setdefault(product, [0.0, []])
            entry[0] = max(entry[0], score)
            if reason not in entry[1]:
                entry[1].append(reason)

        def result() -> list[Candidate]:
            return [Candidate(p, score, tuple(reasons)) for p, (score, reasons) in list(found.items())[:limit]]

        explicit = list(explicit)
        if explicit:
            for product in explicit:
                add(product, 0.0, EXPLICIT)
            return result()
        recent = self.recent_products(user_id) if user_id else []
        seeds = ([context_product_id] if context_product_id else []) + recent
        for seed in seeds:
            for product, score in self.neighbours(seed, t, purchases=True):
                add(product, score, CO_PURCHASE)
            for product, score in self.neighbours(seed, t):
                add(product, score, CO_VIEW)
        for product in recent:
            add(product, 0.0, RECENT)
        categories = [context_category] if context_category else _distinct(self.category.get(p) for p in seeds)
        for category in categories:
            table = self.category_popular.get(category) if category else None
            for product, score in table.top(limit, t) if table else []:
                add(product, score, CATEGORY_POPULAR)
        for product, score in self.popular.top(limit + len(self.inactive) + 1, t):
            add(product, score, POPULAR)
        return result()


def _distinct(values: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out
