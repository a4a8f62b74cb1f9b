"""The ground truth of the simulated market: who buys what at which price.

Everything here is known only to the simulator (and to the oracle policy). The
pricing engine sees none of it: it must learn demand from the logged events. That
is what makes the simulator a test of the engine: we can compare its prices with
the profit-maximising ones, because we know the true purchase probability.

The purchase model is a logit per view::

    u = intercept + appeal_j
        + s_uj * (b_ref * log(p / reference) + b_comp * log(p / competitor_min))
        + b_promo * promotion_active
    P(purchase | view) = sigmoid(u), and 0 when the product is out of stock

with ``s_uj`` = user's latent price sensitivity x product's elasticity. The
coefficients are ``MarketState.coefficients``; all arrays are indexed by the
integer user / product index (ids are ``user_ids[i]`` / ``product_ids[j]``).

With latent tastes on (``Scenario.tastes``, :class:`Tastes`), ``u`` also gains the shopper's
taste for the product, ``purchase_weight * t_uj``, and the same taste steers which products
the shopper views: personal history then predicts purchases. Tastes are opt-in, not on for
every scenario, because a taste that steers views changes what is viewed and bought (a shopper
views what they like, so conversion per view rises) even though ``t_uj`` has mean zero over
shoppers for every product: the pricing scenarios, the models trained on them and the figures
measured on them stay exactly as they were, and the recommendation evaluation, whose point is
personal fit, turns tastes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from pricing.sim.scenario import DemandSpec, Scenario
from pricing_udfs.policy.guardrails import Guardrails  # the engine's own: one implementation

COMPETITOR_IDS = ("rivalmart", "shopfast", "bargainbay", "megastore", "quickcart", "valuehub", "pricepoint", "dealdepot")

# Independent random streams (numpy SeedSequence entropy [seed, stream]): changing
# how much we draw from one (e.g. more days) never shifts the draws of another.
STREAM_CATALOGUE = 1
STREAM_USERS = 2
STREAM_DYNAMICS = 3
STREAM_DEMAND = 4
STREAM_HISTORICAL_POLICY = 5
STREAM_LATENESS = 6
STREAM_LIVE = 7
STREAM_TASTES = 8


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """A generator for one named stream of one seed, so components stay reproducible independently."""
    return np.random.default_rng([seed, stream])


@dataclass(frozen=True)
class TrueCoefficients:
    """The logit's true coefficients: what a demand model fitted on the logs should find."""

    intercept: float
    log_price_vs_reference: float
    log_price_vs_competitor: float
    promotion: float

    @classmethod
    def from_demand(cls, demand: DemandSpec) -> "TrueCoefficients":
        return cls(
            intercept=demand.intercept,
            log_price_vs_reference=demand.log_price_vs_reference,
            log_price_vs_competitor=demand.log_price_vs_competitor,
            promotion=demand.promotion,
        )


def purchase_probability(
    *,
    offered_price: ArrayLike,
    reference_price: ArrayLike,
    competitor_min: ArrayLike,
    sensitivity: ArrayLike,
    promotion_active: ArrayLike,
    inventory: ArrayLike,
    coefficients: TrueCoefficients,
    base_utility: ArrayLike = 0.0,
) -> np.ndarray:
    """True P(purchase | view) at ``offered_price``; inputs broadcast like numpy arrays.

    ``competitor_min`` <= 0 or NaN means "no competitor" (that term drops out).
    ``sensitivity`` multiplies both price terms (user sensitivity x product elasticity).
    Prices are in any one unit (minor units here); only ratios matter.
    """
    p, ref, comp, sens, promo, inv, base = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.float64) for x in (offered_price, reference_price, competitor_min, sensitivity,
                                                     promotion_active, inventory, base_utility))
    )  # fmt: skip
    if not np.all(p > 0) or not np.all(np.isfinite(p)):
        raise ValueError("offered_price must be positive and finite")
    if not np.all(ref > 0):
        raise ValueError("reference_price must be positive")
    has_comp = np.isfinite(comp) & (comp > 0)
    log_vs_ref = np.log(p / ref)
    log_vs_comp = np.where(has_comp, np.log(p / np.where(has_comp, comp, 1.0)), 0.0)
    c = coefficients
    u = (
        c.intercept
        + base
        + sens * (c.log_price_vs_reference * log_vs_ref + c.log_price_vs_competitor * log_vs_comp)
        + c.promotion * (promo != 0)
    )
    prob = 0.5 * (1.0 + np.tanh(0.5 * u))  # the logistic function, without overflow warnings
    return np.where(inv > 0, prob, 0.0)


def oracle_prices(
    *,
    reference_price: ArrayLike,
    competitor_min: ArrayLike,
    unit_cost: ArrayLike,
    sensitivity: ArrayLike,
    promotion_active: ArrayLike,
    inventory: ArrayLike,
    coefficients: TrueCoefficients,
    guardrails: Guardrails,
    base_utility: ArrayLike = 0.0,
    anchor_price: ArrayLike | None = None,
    grid_size: int = 81,
    chunk: int = 20_000,
) -> np.ndarray:
    """The expected-profit-maximising integer price per row under ``guardrails``.

    Grid search over ``grid_size`` multipliers of the reference price spanning the
    guardrail band, each candidate clipped into the row's allowed range (so the range
    ends are candidates too). Out-of-stock rows get the clamped reference price.
    """
    arrays = [reference_price, competitor_min, unit_cost, sensitivity, promotion_active, inventory, base_utility]
    if anchor_price is not None:
        arrays.append(anchor_price)
    flat = [np.ravel(a) for a in np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in arrays))]
    ref, comp, cost, sens, promo, inv, base = flat[:7]
    anchor = flat[7] if anchor_price is not None else None
    lo, hi = guardrails.bounds(reference_price=ref, unit_cost=cost, anchor_price=anchor)
    grid = np.linspace(guardrails.min_multiplier, guardrails.max_multiplier, grid_size)
    out = np.clip(np.rint(ref), lo, hi)
    for start in range(0, ref.size, chunk):
        s = slice(start, start + chunk)
        cand = np.clip(np.rint(ref[s, None] * grid[None, :]), lo[s, None], hi[s, None]).astype(np.int64)
        cand = guardrails.to_price_points(cand, lo[s, None], hi[s, None])[0].astype(np.float64)
        prob = purchase_probability(
            offered_price=cand, reference_price=ref[s, None], competitor_min=comp[s, None], sensitivity=sens[s, None],
            promotion_active=promo[s, None], inventory=np.ones(1), coefficients=coefficients,
            base_utility=base[s, None],
        )  # fmt: skip
        best = np.argmax(prob * (cand - cost[s, None]), axis=1)
        out[s] = np.where(inv[s] > 0, cand[np.arange(cand.shape[0]), best], out[s])
    return out.astype(np.int64).reshape(np.broadcast_shapes(*(np.shape(a) for a in arrays)))


@dataclass(frozen=True, eq=False)
class Tastes:
    """Each shopper's latent taste for each product (ground truth): ``t_uj = category_affinity[u, c(j)]
    + user_factors[u] . product_factors[j]``, in logit units.

    Both terms have mean exactly zero over the market's shoppers for every product (the affinities and
    the user factors are centred over users), so the taste moves no product's average appeal; it moves
    who likes what. Deterministic in the scenario seed (its own random stream, ``STREAM_TASTES``, so
    turning tastes on shifts no other draw of the market).
    """

    category_affinity: np.ndarray  # (users, categories)
    user_factors: np.ndarray  # (users, dimensions)
    product_factors: np.ndarray  # (products, dimensions)
    product_category: np.ndarray  # (products,)
    view_weight: float
    purchase_weight: float

    def affinity(self, user_idx: ArrayLike, product_idx: ArrayLike) -> np.ndarray:
        """``t_uj`` for these users and products (broadcast like numpy arrays)."""
        u, j = np.broadcast_arrays(np.asarray(user_idx, dtype=np.int64), np.asarray(product_idx, dtype=np.int64))
        cat = self.category_affinity[u, self.product_category[j]]
        return cat + np.einsum("...d,...d->...", self.user_factors[u], self.product_factors[j])

    def utility(self, user_idx: ArrayLike, product_idx: ArrayLike) -> np.ndarray:
        """What the taste adds to the purchase logit: ``purchase_weight * t_uj``."""
        return self.purchase_weight * self.affinity(user_idx, product_idx)


def build_tastes(scenario: Scenario, product_category: np.ndarray) -> Tastes | None:
    """The scenario's latent tastes (None when ``scenario.tastes`` is off)."""
    spec = scenario.tastes
    if spec is None:
        return None
    rng = rng_for(scenario.seed, STREAM_TASTES)
    n_users, n_cats, d = scenario.n_users, len(scenario.catalogue.categories), spec.dimensions
    affinity = rng.normal(0.0, spec.category_sd, (n_users, n_cats))
    users = rng.normal(0.0, 1.0, (n_users, d))
    products = rng.normal(0.0, spec.product_sd / np.sqrt(d), (product_category.size, d))
    if n_users > 1:  # centred over shoppers: zero mean taste for every product
        affinity -= affinity.mean(axis=0, keepdims=True)
        users -= users.mean(axis=0, keepdims=True)
    return Tastes(category_affinity=affinity, user_factors=users, product_factors=products,
                  product_category=product_category, view_weight=spec.view_weight,
                  purchase_weight=spec.purchase_weight)  # fmt: skip


@dataclass(frozen=True, eq=False)
class MarketState:
    """Static ground truth of one scenario: catalogue, users and their hidden traits (numpy arrays).

    Products are grouped by category (``category_start[c]:category_start[c+1]``).
    The time-varying market (competitors, promotions, stock) lives in ``pricing.sim.world``.
    """

    scenario: Scenario
    coefficients: TrueCoefficients
    category_names: tuple[str, ...]
    category_start: np.ndarray
    product_ids: np.ndarray
    product_category: np.ndarray
    list_price_minor: np.ndarray
    unit_cost_minor: np.ndarray
    elasticity: np.ndarray
    appeal: np.ndarray
    popularity: np.ndarray  # share of its category's views
    view_share: np.ndarray  # expected share of all views
    n_competitors: np.ndarray
    competitor_ratio: np.ndarray  # (products, max competitors): initial price / list price, NaN if absent
    capacity: np.ndarray
    restock_period_days: np.ndarray
    restock_phase_days: np.ndarray
    segment_names: tuple[str, ...]
    user_ids: np.ndarray
    user_segment: np.ndarray
    user_sensitivity: np.ndarray
    user_sessions_per_day: np.ndarray
    user_category_cdf: np.ndarray  # (users, categories)
    tastes: Tastes | None = None  # latent tastes (Scenario.tastes); None: off

    @property
    def n_products(self) -> int:
        return int(self.product_ids.size)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def competitor_ids(self) -> tuple[str, ...]:
        return COMPETITOR_IDS[: self.competitor_ratio.shape[1]]

    def price_sensitivity(self, user_idx: ArrayLike, product_idx: ArrayLike) -> np.ndarray:
        """s_uj: the multiplier of the price coefficients for this user and product."""
        return self.user_sensitivity[np.asarray(user_idx)] * self.elasticity[np.asarray(product_idx)]

    def base_utility(self, user_idx: ArrayLike, product_idx: ArrayLike) -> np.ndarray:
        """The price-free part of the purchase logit beyond the intercept: the product's appeal, plus the
        shopper's taste for it when tastes are on."""
        appeal = self.appeal[np.asarray(product_idx)]
        if self.tastes is None:
            return appeal
        return appeal + self.tastes.utility(user_idx, product_idx)

    def probability(
        self,
        *,
        user_idx: ArrayLike,
        product_idx: ArrayLike,
        offered_price: ArrayLike,
        reference_price: ArrayLike,
        competitor_min: ArrayLike,
        promotion_active: ArrayLike,
        inventory: ArrayLike,
        sensitivity_scale: ArrayLike = 1.0,
    ) -> np.ndarray:
        """True purchase probability for these users and products (``sensitivity_scale``: the scenario's shift
        at the moment, ``Scenario.sensitivity_scale``)."""
        return purchase_probability(
            offered_price=offered_price, reference_price=reference_price, competitor_min=competitor_min,
            sensitivity=self.price_sensitivity(user_idx, product_idx) * np.asarray(sensitivity_scale, dtype=np.float64),
            promotion_active=promotion_active,
            inventory=inventory, coefficients=self.coefficients, base_utility=self.base_utility(user_idx, product_idx),
        )  # fmt: skip

    def oracle(
        self,
        *,
        user_idx: ArrayLike,
        product_idx: ArrayLike,
        reference_price: ArrayLike,
        competitor_min: ArrayLike,
        unit_cost: ArrayLike,
        promotion_active: ArrayLike,
        inventory: ArrayLike,
        guardrails: Guardrails,
        anchor_price: ArrayLike | None = None,
        grid_size: int = 81,
        sensitivity_scale: ArrayLike = 1.0,
    ) -> np.ndarray:
        """The profit-maximising price per (user, product) row, knowing the ground truth."""
        return oracle_prices(
            reference_price=reference_price, competitor_min=competitor_min, unit_cost=unit_cost,
            sensitivity=self.price_sensitivity(user_idx, product_idx) * np.asarray(sensitivity_scale, dtype=np.float64),
            promotion_active=promotion_active,
            inventory=inventory, coefficients=self.coefficients, guardrails=guardrails,
            base_utility=self.base_utility(user_idx, product_idx), anchor_price=anchor_price, grid_size=grid_size,
        )  # fmt: skip


def build_market(scenario: Scenario) -> MarketState:
    """Draw the static ground truth of ``scenario`` (deterministic in its seed)."""
    rng = rng_for(scenario.seed, STREAM_CATALOGUE)
    cats = scenario.catalogue.categories
    counts = _largest_remainder(np.array([c.share for c in cats]), scenario.n_products)
    category_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    product_category = np.repeat(np.arange(len(cats)), counts)
    n = scenario.n_products

    lo = np.array([c.list_price_minor.low for c in cats])[product_category]
    hi = np.array([c.list_price_minor.high for c in cats])[product_category]
    list_price = np.maximum(1, np.rint(np.exp(rng.uniform(np.log(lo), np.log(hi))))).astype(np.int64)
    ratio = rng.uniform([c.cost_ratio.low for c in cats], [c.cost_ratio.high for c in cats], size=(n, len(cats)))
    unit_cost = np.maximum(1, np.rint(list_price * ratio[np.arange(n), product_category])).astype(np.int64)

    noise = scenario.catalogue.elasticity_noise_sd
    elasticity = np.array([c.elasticity for c in cats])[product_category] * np.exp(
        rng.normal(-0.5 * noise**2, noise, n)
    )
    appeal = rng.normal(0.0, scenario.demand.product_appeal_sd, n)

    popularity = np.empty(n)
    for c in range(len(cats)):
        a, b = category_start[c], category_start[c + 1]
        weights = 1.0 / np.arange(1, b - a + 1) ** scenario.catalogue.popularity_zipf
        popularity[a:b] = rng.permutation(weights) / weights.sum() if b > a else weights

    comp = scenario.competitors
    n_comp = rng.integers(comp.count_min, comp.count_max + 1, n)
    max_comp = max(comp.count_max, 1)
    competitor_ratio = rng.uniform(comp.price_ratio.low, comp.price_ratio.high, (n, max_comp))
    competitor_ratio[np.arange(max_comp)[None, :] >= n_comp[:, None]] = np.nan

    urng = rng_for(scenario.seed, STREAM_USERS)
    segs = scenario.segments
    shares = np.array([s.share for s in segs])
    user_segment = urng.choice(len(segs), size=scenario.n_users, p=shares / shares.sum())
    sd = np.array([s.sensitivity_sd for s in segs])[user_segment]
    user_sensitivity = np.array([s.sensitivity_mean for s in segs])[user_segment] * np.exp(
        urng.normal(-0.5 * sd**2, sd)
    )
    user_sessions = np.array([s.sessions_per_day for s in segs])[user_segment] * urng.gamma(2.0, 0.5, scenario.n_users)
    pref = np.array([[s.category_preference.get(c.name, 1.0) for c in cats] for s in segs])
    weights = pref[user_segment] * np.array([c.share for c in cats]) * (counts > 0)
    weights = weights * urng.gamma(5.0, 0.2, weights.shape)
    tastes = build_tastes(scenario, product_category)
    if tastes is not None:
        weights = weights * np.exp(tastes.view_weight * tastes.category_affinity)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)
    user_category_cdf = np.cumsum(weights, axis=1)
    user_category_cdf[:, -1] = 1.0

    activity = user_sessions / user_sessions.sum()
    view_share = (activity @ weights)[product_category] * popularity
    views_per_day = user_sessions.sum() * scenario.funnel.views_per_session
    base_conversion = 1.0 / (1.0 + np.exp(-(scenario.demand.intercept + appeal)))
    daily_sales = views_per_day * view_share * base_conversion
    inv = scenario.inventory
    short = rng.random(n) < inv.short_supply_share
    cover = np.where(
        short,
        rng.uniform(inv.short_supply_cover_days.low, inv.short_supply_cover_days.high, n),
        rng.uniform(inv.cover_days.low, inv.cover_days.high, n),
    )
    capacity = np.maximum(inv.min_units, np.ceil(daily_sales * cover)).astype(np.int64)
    period = rng.uniform(inv.restock_every_days.low, inv.restock_every_days.high, n)
    phase = rng.uniform(0, period)

    width = len(str(max(n - 1, 1)))
    uwidth = len(str(max(scenario.n_users - 1, 1)))
    return MarketState(
        scenario=scenario,
        coefficients=TrueCoefficients.from_demand(scenario.demand),
        category_names=tuple(c.name for c in cats),
        category_start=category_start,
        product_ids=np.array([f"p{j:0{width}d}" for j in range(n)], dtype=object),
        product_category=product_category,
        list_price_minor=list_price,
        unit_cost_minor=unit_cost,
        elasticity=elasticity,
        appeal=appeal,
        popularity=popularity,
        view_share=view_share,
        n_competitors=n_comp,
        competitor_ratio=competitor_ratio,
        capacity=capacity,
        restock_period_days=period,
        restock_phase_days=phase,
        segment_names=tuple(s.name for s in segs),
        user_ids=np.array([f"u{i:0{uwidth}d}" for i in range(scenario.n_users)], dtype=object),
        user_segment=user_segment,
        user_sensitivity=user_sensitivity,
        user_sessions_per_day=user_sessions,
        user_category_cdf=user_category_cdf,
        tastes=tastes,
    )


def sample_products(market: MarketState, user_idx: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Which product each viewing user looks at: category by taste, then product by popularity (times
    ``exp(view_weight * z_u . w_j)``, the shopper's own taste within the category, when tastes are on)."""
    cdf = market.user_category_cdf[user_idx]
    cat = np.minimum((cdf < rng.random(user_idx.size)[:, None]).sum(axis=1), cdf.shape[1] - 1)
    start = market.category_start
    if market.tastes is not None and market.tastes.view_weight > 0:
        return _sample_by_taste(market, market.tastes, np.asarray(user_idx, dtype=np.int64), cat, rng)
    within = np.zeros(market.n_products)
    for c in range(len(start) - 1):
        a, b = start[c], start[c + 1]
        within[a:b] = c + np.cumsum(market.popularity[a:b])
        if b > a:
            within[b - 1] = c + 1.0
    target = cat + rng.random(user_idx.size) * (1 - 1e-12)
    prod = np.searchsorted(within, target, side="right")
    return np.clip(prod, start[cat], start[cat + 1] - 1).astype(np.int64)


def _sample_by_taste(market: MarketState, tastes: Tastes, user_idx: np.ndarray, cat: np.ndarray,
                     rng: np.random.Generator, chunk: int = 20_000) -> np.ndarray:  # fmt: skip
    """A product of each view's category ``cat`` drawn with weight popularity x exp(view_weight * z_u . w_j)
    (the Gumbel-max trick), ``chunk`` views at a time."""
    out = np.empty(user_idx.size, np.int64)
    start = market.category_start
    for c in range(len(start) - 1):
        a, b = int(start[c]), int(start[c + 1])
        rows = np.flatnonzero(cat == c)
        if rows.size == 0 or b == a:
            out[rows] = a
            continue
        log_pop = np.log(np.maximum(market.popularity[a:b], 1e-300))
        w = tastes.product_factors[a:b]
        for s in range(0, rows.size, chunk):
            r = rows[s : s + chunk]
            logits = log_pop[None, :] + tastes.view_weight * (tastes.user_factors[user_idx[r]] @ w.T)
            out[r] = a + np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    return out


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to ``shares`` that sum exactly to ``total``."""
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def catalogue_entries(market: MarketState, *, event_time_ms: int, product_ids: np.ndarray | None = None,
                      slots: np.ndarray | None = None) -> list[dict]:  # fmt: skip
    """``CatalogueEntry`` records (the catalogue topic's contract): each product's category. ``product_ids``
    and ``slots`` name copies of the market (slot ``c * n + j`` is a copy of product ``j``); by default the
    market's own products."""
    ids = market.product_ids if product_ids is None else product_ids
    at = np.arange(len(ids)) if slots is None else np.asarray(slots)
    names = np.asarray(market.category_names, dtype=object)[market.product_category[at % market.n_products]]
    return [{"product_id": str(p), "category": str(c), "attributes": {}, "active": True, "event_time": int(event_time_ms)}
            for p, c in zip(ids, names)]
