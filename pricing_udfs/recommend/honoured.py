"""Prices a recommendation showed, honoured when the shopper then asks for the product.

A recommendation shows each product at a price; a price request for that product by the same user within
``validity_ms`` of the recommendation's request time gets the same price (reason code ``honoured``),
provided the price is still inside the guardrails at the new request (a cost that rose above the shown
price, for example, voids the offer: the request is priced afresh, reason ``honour_refused``). Anonymous
users ('') get no offers.

State is bounded: per user the newest ``max_per_user`` offers, and an offer is dropped once it expired.
The offers live beside the pricing stage's anchors, in the worker's memory: a restart forgets them, so
a shopper who asks again after a crash is priced afresh (still inside the guardrails).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

HONOURED = "honoured"
HONOUR_REFUSED = "honour_refused"


@dataclass(frozen=True)
class Offer:
    price_minor: int
    currency: str
    shown_at_ms: int  # the recommend request's event time
    request_id: str  # of the recommendation


class HonouredPrices:
    def __init__(self, validity_ms: int = 15 * 60_000, max_per_user: int = 100) -> None:
        if validity_ms <= 0 or max_per_user <= 0:
            raise ValueError("validity_ms and max_per_user must be positive")
        self.validity_ms = validity_ms
        self.max_per_user = max_per_user
        self._offers: dict[str, OrderedDict[str, Offer]] = {}

    def offer(self, user_id: str, items: Iterable[tuple[str, int, str]], *, shown_at_ms: int, request_id: str) -> None:
        """Record the (product, price, currency) items a recommendation showed ``user_id``."""
        if not user_id:
            return
        mine = self._offers.setdefault(user_id, OrderedDict())
        for product, price, currency in items:
            mine.pop(product, None)
            mine[product] = Offer(int(price), currency, shown_at_ms, request_id)
        while len(mine) > self.max_per_user:
            mine.popitem(last=False)

    def lookup(self, user_id: str, product_id: str, at_ms: int) -> Offer | None:
        """The offer valid for a request at ``at_ms`` (event time), if any: shown at or before it, within
        the validity."""
        mine = self._offers.get(user_id)
        if not mine:
            return None
        got = mine.get(product_id)
        if got is None:
            return None
        if at_ms - got.shown_at_ms > self.validity_ms:
            del mine[product_id]
            if not mine:
                del self._offers[user_id]
            return None
        return got if at_ms >= got.shown_at_ms else None

    def __len__(self) -> int:
        return sum(len(m) for m in self._offers.values())
