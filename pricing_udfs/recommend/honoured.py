"""Prices a recommendation showed, honoured when the shopper then asks for the product.

A recommendation shows each product at a price; a price request for that product by the same user within
``validity_ms`` of the recommendation's request time gets the same price (reason code ``honoured``),
provided the price is still inside the guardrails at the new request (a cost that rose above the shown
price, for example, voids the offer: the request is priced afresh, reason ``honour_refused``). Anonymous
users ('') get no offers.

State is bounded: per user the newest ``max_per_user`` offers, and an offer is dropped once it expired.
The offers live beside the pricing stage's anchors, in each pricing worker's memory, read from the
recommendations topic (``record_offers``; every worker follows every partition, read_committed:
``pricing_udfs.recommend.tail``). After a restart the worker reads the offers of the last validity
again, so a promise survives a crash; an offer the worker has not read yet when the request comes (the
recommendation still in an open transaction under exactly-once, or written a few milliseconds before)
is not honoured: the request is priced afresh, inside the guardrails.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from pricing_udfs import serde
from pricing_udfs.serde import Contract

HONOURED = "honoured"
HONOUR_REFUSED = "honour_refused"


@dataclass(frozen=True)
class Offer:
    price_minor: int
    currency: str
    shown_at_ms: int  # the recommend request's event time
    request_id: str  # of the recommendation


class HonouredPrices:
    def __init__(self, validity_ms: int = 15 * 60_000, max_per_user: int = 100, max_users: int = 500_000) -> None:
        if validity_ms <= 0 or max_per_user <= 0 or max_users <= 0:
            raise ValueError("validity_ms, max_per_user and max_users must be positive")
        self.validity_ms = validity_ms
        self.max_per_user = max_per_user
        self.max_users = max_users
        # user -> product -> offer; users in the order of their last offer (oldest first)
        self._offers: OrderedDict[str, OrderedDict[str, Offer]] = OrderedDict()
        self._newest_ms = 0
        self._since_sweep = 0

    def offer(self, user_id: str, items: Iterable[tuple[str, int, str]], *, shown_at_ms: int, request_id: str) -> None:
        """Record the (product, price, currency) items a recommendation showed ``user_id``."""
        if not user_id:
            return
        mine = self._offers.setdefault(user_id, OrderedDict())
        self._offers.move_to_end(user_id)
        for product, price, currency in items:
            mine.pop(product, None)
            mine[product] = Offer(int(price), currency, shown_at_ms, request_id)
        while len(mine) > self.max_per_user:
            mine.popitem(last=False)
        self._newest_ms = max(self._newest_ms, shown_at_ms)
        self._since_sweep += 1
        if self._since_sweep >= 10_000 or len(self._offers) > self.max_users:
            self._sweep()

    def _sweep(self) -> None:
        """Bounded memory: offers expired against the newest one seen go, then the users offered to longest ago
        beyond ``max_users``."""
        self._since_sweep = 0
        horizon = self._newest_ms - self.validity_ms
        for user in [u for u, mine in self._offers.items() if max(o.shown_at_ms for o in mine.values()) < horizon]:
            del self._offers[user]
        while len(self._offers) > self.max_users:
            self._offers.popitem(last=False)

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


def record_offers(offers: HonouredPrices, value: bytes | None) -> bool:
    """Record the items of one framed ``Recommendation`` (a record of the recommendations topic); False when
    the bytes are not one (skipped). A fallback ranking's items are offers too: their price is the price shown."""
    got = serde.decode(Contract.RECOMMENDATION, value)
    if not got.ok:
        return False
    r = got.record
    offers.offer(r["user_id"], [(i["product_id"], i["price_minor"], i["currency"]) for i in r["items"]],
                 shown_at_ms=int(r["request_time"]), request_id=r["request_id"])  # fmt: skip
    return True


def honour(offers: HonouredPrices, policy: Any, batch: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """``decisions`` (checked) with each row that has a valid offer priced at it (reason ``honoured``), when the
    offer's price is inside ``policy``'s guardrails for the row (its cost, list price and anchor now) and in
    the same currency; otherwise the row keeps its price, reason ``honour_refused``. An honoured row's expected
    conversion is the model's at the offer's price (one model call for all of them; NaN without a model)."""
    found = [offers.lookup(str(u), str(p), int(t)) if u else None
             for u, p, t in zip(batch["user_id"], batch["product_id"], batch["event_time"])]  # fmt: skip
    at = np.flatnonzero([o is not None for o in found])
    if not at.size:
        return decisions
    out = decisions.copy()
    out["reason_codes"] = out["reason_codes"].astype(object)
    price = np.array([found[i].price_minor for i in at], dtype=np.int64)
    rows = batch.iloc[at]
    cost = pd.to_numeric(rows.get("unit_cost_minor"), errors="coerce").to_numpy(dtype=np.float64)
    bad = policy.guardrails.violations(
        price, reference_price=pd.to_numeric(rows["list_price_minor"], errors="coerce").to_numpy(dtype=np.float64),
        unit_cost=cost, anchor_price=pd.to_numeric(rows.get("anchor_price_minor", 0), errors="coerce"))  # fmt: skip
    bad |= np.array([found[i].currency != out["currency"].iat[i] for i in at], dtype=bool)
    good = at[~bad]
    for i in at[bad]:
        out.at[out.index[i], "reason_codes"] = [*out["reason_codes"].iat[i], HONOUR_REFUSED]
    if not good.size:
        return out
    conv = np.full(good.size, np.nan)
    if policy.model is not None:
        try:
            features = batch.iloc[good][list(policy.spec.names)].to_numpy(dtype=np.float64)
            conv = np.asarray(policy.model.score(features, price[~bad][:, None].astype(np.float64)), dtype=np.float64)[:, 0]
        except Exception:  # noqa: BLE001 - no estimate is not a reason to break a promise
            conv = np.full(good.size, np.nan)
    margin = price[~bad] - cost[~bad]
    for j, i in enumerate(good):
        idx = out.index[i]
        out.at[idx, "price_minor"] = int(price[~bad][j])
        out.at[idx, "expected_conversion"] = float(conv[j])
        out.at[idx, "expected_profit_minor"] = int(round(conv[j] * margin[j])) if np.isfinite(conv[j] * margin[j]) else 0
        out.at[idx, "reason_codes"] = [*out["reason_codes"].iat[i], HONOURED]
    return out
