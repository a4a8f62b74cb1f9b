"""Scenarios: every knob of the simulated market in one validated, frozen model.

A scenario fully determines the simulated world (with its ``seed``): the catalogue,
the users, the ground-truth demand, the market dynamics and the historical pricing
policy whose logs the engine learns from. Keeping it a plain data model (no code)
means a scenario can be stored next to an evaluation result and replayed exactly.
Unknown fields are errors, so a typo in an override fails loudly.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pricing_udfs.serde import Contract, enum_symbols

_CHANNELS = enum_symbols(Contract.PRICE_REQUEST, "channel")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Span(_Frozen):
    """A closed interval ``[low, high]`` values are drawn from (uniformly unless a field says otherwise).

    Accepts ``[low, high]`` as input so TOML and overrides stay short.
    """

    low: float
    high: float

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)) and len(data) == 2:
            return {"low": data[0], "high": data[1]}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> "Span":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class DemandSpec(_Frozen):
    """The true purchase logit per view; the coefficients a pricing model should recover.

    ``u = intercept + appeal_j + s_uj * (log_price_vs_reference * log(p/ref)
    + log_price_vs_competitor * log(p/competitor_min)) + promotion * promo``,
    where ``s_uj`` = user sensitivity x product elasticity (both mean about 1).
    """

    intercept: float = -2.5
    log_price_vs_reference: float = Field(default=-2.5, lt=0)
    log_price_vs_competitor: float = Field(default=-1.5, le=0)
    promotion: float = Field(default=0.4, ge=0)
    product_appeal_sd: float = Field(default=0.3, ge=0, description="sd of each product's base utility")


class Category(_Frozen):
    """A product category: its share of the catalogue, price level and price elasticity."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    share: float = Field(gt=0, description="relative share of the catalogue")
    elasticity: float = Field(gt=0, description="multiplier of the price coefficients (1 = average)")
    list_price_minor: Span = Field(description="initial list price, drawn log-uniformly")
    cost_ratio: Span = Field(description="unit cost / list price")

    @model_validator(mode="after")
    def _sane(self) -> "Category":
        if self.list_price_minor.low < 1:
            raise ValueError("list prices must be at least 1 minor unit")
        if not 0 < self.cost_ratio.low <= self.cost_ratio.high < 1:
            raise ValueError("cost_ratio must lie in (0, 1): products sell above cost at list price")
        return self


class CatalogueSpec(_Frozen):
    """Products: categories, per-product noise, popularity and slow list-price / cost drift."""

    categories: tuple[Category, ...] = Field(min_length=1)
    elasticity_noise_sd: float = Field(default=0.15, ge=0, description="lognormal noise of product elasticity")
    popularity_zipf: float = Field(default=0.8, ge=0, description="Zipf exponent of views within a category")
    list_price_changes_per_day: float = Field(default=0.02, ge=0, description="per product")
    list_price_change_sd: float = Field(default=0.05, ge=0, description="sd of the log change")
    cost_changes_per_day: float = Field(default=0.01, ge=0, description="per product")
    cost_change_sd: float = Field(default=0.03, ge=0, description="sd of the log change")


class InventorySpec(_Frozen):
    """Stock: capacity covers days of expected sales at list price; periodic restocks top it up.

    Most products are stocked generously (stock-outs are not what pricing is about), but a
    ``short_supply_share`` of them run out regularly, so zero stock occurs in the data.
    """

    cover_days: Span = Span(low=10.0, high=20.0)
    short_supply_share: float = Field(default=0.05, ge=0, le=1)
    short_supply_cover_days: Span = Span(low=0.5, high=2.0)
    restock_every_days: Span = Span(low=2.0, high=5.0)
    min_units: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _positive(self) -> "InventorySpec":
        if min(self.cover_days.low, self.short_supply_cover_days.low, self.restock_every_days.low) <= 0:
            raise ValueError("cover days and restock_every_days must be positive")
        return self


class PromotionSpec(_Frozen):
    """Our own promotions: a discount in basis points for a few hours; buyers also like the banner."""

    starts_per_day: float = Field(default=0.05, ge=0, description="per product")
    depth_bp: Span = Span(low=500, high=2_500)
    duration_hours: Span = Span(low=6, high=48)

    @model_validator(mode="after")
    def _bounds(self) -> "PromotionSpec":
        if not 0 < self.depth_bp.low <= self.depth_bp.high < 10_000:
            raise ValueError("depth_bp must lie in (0, 10000)")
        if self.duration_hours.low <= 0:
            raise ValueError("duration_hours must be positive")
        return self


class CompetitorSpec(_Frozen):
    """Competitor prices: a mean-reverting log random walk with level shifts and price wars."""

    count_min: int = Field(default=1, ge=0)
    count_max: int = Field(default=4, ge=0, le=8)
    price_ratio: Span = Span(low=0.85, high=1.15)
    updates_per_day: float = Field(default=3.0, gt=0, description="per competitor and product")
    volatility_daily: float = Field(default=0.03, ge=0, description="sd of the daily log-price change")
    mean_reversion_daily: float = Field(default=0.2, ge=0, le=1)
    step_changes_per_day: float = Field(default=0.02, ge=0, description="permanent level shifts, per competitor")
    step_change_sd: float = Field(default=0.08, ge=0)
    price_war_per_day: float = Field(default=0.01, ge=0, description="war starts per product and day")
    price_war_depth: Span = Span(low=0.10, high=0.30)
    price_war_duration_hours: Span = Span(low=12, high=72)

    @model_validator(mode="after")
    def _counts(self) -> "CompetitorSpec":
        if self.count_min > self.count_max:
            raise ValueError("count_min must not exceed count_max")
        if not 0 <= self.price_war_depth.low <= self.price_war_depth.high < 1:
            raise ValueError("price_war_depth must lie in [0, 1)")
        if self.price_ratio.low <= 0 or self.price_war_duration_hours.low <= 0:
            raise ValueError("price_ratio and price_war_duration_hours must be positive")
        return self


class Segment(_Frozen):
    """A user segment: latent price sensitivity, activity and category tastes."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    share: float = Field(gt=0)
    sensitivity_mean: float = Field(gt=0, description="mean multiplier of the price coefficients")
    sensitivity_sd: float = Field(default=0.2, ge=0, description="lognormal sd within the segment")
    sessions_per_day: float = Field(gt=0, description="mean; users vary around it (gamma, shape 2)")
    category_preference: dict[str, float] = Field(default_factory=dict, description="missing categories weigh 1")


class SeasonalitySpec(_Frozen):
    """Relative traffic by UTC hour of day and by weekday (Monday first)."""

    hourly: tuple[float, ...] = (
        0.25, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.1, 1.2, 1.2, 1.25,
        1.3, 1.25, 1.2, 1.2, 1.25, 1.4, 1.6, 1.8, 1.8, 1.5, 1.0, 0.5,
    )  # fmt: skip
    weekly: tuple[float, ...] = (0.95, 0.9, 0.9, 0.95, 1.05, 1.15, 1.1)

    @model_validator(mode="after")
    def _shapes(self) -> "SeasonalitySpec":
        if len(self.hourly) != 24 or len(self.weekly) != 7:
            raise ValueError("hourly needs 24 values and weekly 7")
        if min(self.hourly + self.weekly) < 0 or sum(self.hourly) <= 0 or sum(self.weekly) <= 0:
            raise ValueError("seasonality weights must be non-negative and not all zero")
        return self


class FunnelSpec(_Frozen):
    """The session funnel around the ground-truth purchase decision (view -> cart -> purchase -> review)."""

    views_per_session: float = Field(default=4.0, ge=1)
    view_gap_s: float = Field(default=40.0, gt=0, description="mean seconds between views of a session")
    request_lead_ms: Span = Span(low=20, high=250)
    cart_abandon: float = Field(default=0.08, ge=0, le=1, description="P(add to cart | view, no purchase)")
    cart_delay_s: Span = Span(low=5, high=120)
    purchase_delay_s: Span = Span(low=10, high=600)
    review_rate: float = Field(default=0.1, ge=0, le=1, description="P(review | purchase)")
    review_delay_hours: Span = Span(low=1, high=24)
    channels: dict[str, float] = Field(default_factory=lambda: {"web": 0.55, "app": 0.35, "marketplace": 0.07, "other": 0.03})

    @model_validator(mode="after")
    def _channels(self) -> "FunnelSpec":
        unknown = set(self.channels) - set(_CHANNELS)
        if unknown or not self.channels or min(self.channels.values()) < 0 or sum(self.channels.values()) <= 0:
            raise ValueError(f"channels must weigh {'/'.join(_CHANNELS)} non-negatively, got {self.channels}")
        return self


class HistoricalPolicySpec(_Frozen):
    """How logged prices were set: list price x a random multiplier, so elasticity is identifiable."""

    multiplier: Span = Span(low=0.85, high=1.15)
    apply_promotion_discount: bool = True

    @model_validator(mode="after")
    def _positive(self) -> "HistoricalPolicySpec":
        if self.multiplier.low <= 0:
            raise ValueError("multiplier must be positive")
        return self


class TasteSpec(_Frozen):
    """Latent shopper tastes (``pricing.sim.market.Tastes``): what each shopper likes, beyond price.

    A shopper's taste for product j is ``t_uj = a_u,c(j) + z_u . w_j``: a normal affinity per (user,
    category) with sd ``category_sd`` plus an idiosyncratic low-rank term (``dimensions`` factors per user
    and product) with sd ``product_sd``, both centred over shoppers. The purchase logit gains
    ``purchase_weight * t_uj``; views pick a category with their weight x ``exp(view_weight * a_uc)`` and a
    product in it with its popularity x ``exp(view_weight * z_u . w_j)``. So what a shopper viewed before
    predicts what they buy. Off (None) in the pricing scenarios; ``pricing evaluate --recommend`` turns it on.
    """

    category_sd: float = Field(default=0.8, ge=0, description="sd of the per-(user, category) affinity (logit units)")
    product_sd: float = Field(default=0.6, ge=0, description="sd of the per-(user, product) low-rank term (logit units)")
    dimensions: int = Field(default=4, ge=1, le=64, description="latent factors per user and product")
    view_weight: float = Field(default=1.0, ge=0, description="how strongly tastes steer views (0: not at all)")
    purchase_weight: float = Field(default=1.0, ge=0, description="how strongly tastes move the purchase logit")


class LatenessSpec(_Frozen):
    """Share of behaviour/market events that arrive late (out of order), and how late."""

    share: float = Field(default=0.03, ge=0, lt=1)
    mean_ms: float = Field(default=20_000, ge=0)
    max_ms: int = Field(default=300_000, ge=0)


class ShiftSpec(_Frozen):
    """A market shift from ``start_day`` on (days after the scenario's start): shoppers' price sensitivity is
    multiplied by ``sensitivity_factor`` and every competitor price by ``competitor_factor`` (below 1: they
    undercut). The ground truth of the replayed world (histories, evaluations, the learning benchmark) follows it;
    the live simulator does not (it has no calendar of its own)."""

    start_day: float = Field(default=3.0, ge=0)
    sensitivity_factor: float = Field(default=1.5, gt=0)
    competitor_factor: float = Field(default=0.85, gt=0)


class Scenario(_Frozen):
    """One simulated market, complete and reproducible from its ``seed``."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    description: str
    seed: int = Field(default=7, ge=0)
    n_products: int = Field(default=800, ge=1)
    n_users: int = Field(default=20_000, ge=1)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    start_time_ms: int = Field(default=1_767_225_600_000, gt=0, description="2026-01-01T00:00Z; a Thursday")
    step_minutes: int = Field(default=60, ge=1, le=1440, description="market state changes on this grid")
    demand: DemandSpec = DemandSpec()
    catalogue: CatalogueSpec
    inventory: InventorySpec = InventorySpec()
    promotions: PromotionSpec = PromotionSpec()
    competitors: CompetitorSpec = CompetitorSpec()
    segments: tuple[Segment, ...] = Field(min_length=1)
    seasonality: SeasonalitySpec = SeasonalitySpec()
    funnel: FunnelSpec = FunnelSpec()
    historical_policy: HistoricalPolicySpec = HistoricalPolicySpec()
    lateness: LatenessSpec = LatenessSpec()
    tastes: TasteSpec | None = Field(
        default=None, description="latent shopper tastes (None: off, every shopper likes every product alike beyond price)")
    shift: ShiftSpec | None = Field(default=None, description="a market shift at a given day (None: no shift)")

    def sensitivity_scale(self, time_ms: Any) -> Any:
        """The shift's multiplier of the price sensitivity at ``time_ms`` (1 before the shift or without one)."""
        import numpy as np

        t = np.asarray(time_ms, dtype=np.int64)
        if self.shift is None:
            return np.ones(t.shape)
        start = self.start_time_ms + int(self.shift.start_day * 86_400_000)
        return np.where(t >= start, self.shift.sensitivity_factor, 1.0)

    @model_validator(mode="after")
    def _consistent(self) -> "Scenario":
        if 1440 % self.step_minutes:
            raise ValueError("step_minutes must divide a day (1440)")
        cats = [c.name for c in self.catalogue.categories]
        if len(set(cats)) != len(cats):
            raise ValueError(f"category names must be distinct, got {cats}")
        segs = [s.name for s in self.segments]
        if len(set(segs)) != len(segs):
            raise ValueError(f"segment names must be distinct, got {segs}")
        for seg in self.segments:
            unknown = set(seg.category_preference) - set(cats)
            if unknown:
                raise ValueError(f"segment {seg.name} prefers unknown categories {sorted(unknown)}")
            if any(w < 0 for w in seg.category_preference.values()):
                raise ValueError(f"segment {seg.name} has a negative category preference")
        return self

    def with_overrides(self, **changes: Any) -> "Scenario":
        """A validated copy with some top-level fields replaced (``model_copy`` would skip validation)."""
        return Scenario.model_validate({**self.model_dump(), **changes})


class UnknownScenarioError(ValueError):
    """Raised by ``get_scenario``; its message lists the known names."""


_CATEGORIES = (
    Category(name="electronics", share=0.25, elasticity=1.3, list_price_minor=Span(low=2_000, high=80_000), cost_ratio=Span(low=0.6, high=0.8)),
    Category(name="fashion", share=0.25, elasticity=1.0, list_price_minor=Span(low=1_500, high=15_000), cost_ratio=Span(low=0.35, high=0.55)),
    Category(name="home", share=0.2, elasticity=0.9, list_price_minor=Span(low=1_000, high=30_000), cost_ratio=Span(low=0.45, high=0.65)),
    Category(name="grocery", share=0.2, elasticity=0.7, list_price_minor=Span(low=150, high=2_500), cost_ratio=Span(low=0.6, high=0.8)),
    Category(name="toys", share=0.1, elasticity=1.1, list_price_minor=Span(low=800, high=8_000), cost_ratio=Span(low=0.4, high=0.6)),
)  # fmt: skip

_SEGMENTS = (
    Segment(name="bargain-hunters", share=0.3, sensitivity_mean=1.5, sensitivity_sd=0.25, sessions_per_day=1.2,
            category_preference={"grocery": 1.5, "electronics": 1.2}),
    Segment(name="mainstream", share=0.5, sensitivity_mean=1.0, sensitivity_sd=0.2, sessions_per_day=0.9),
    Segment(name="premium", share=0.2, sensitivity_mean=0.5, sensitivity_sd=0.2, sessions_per_day=0.8,
            category_preference={"fashion": 1.6, "home": 1.3, "grocery": 0.6}),
)  # fmt: skip

_DEFAULT = Scenario(
    name="default",
    description=(
        "A calm multi-category retailer: three user segments (bargain hunters, mainstream, premium), "
        "1-4 competitors per product drifting slowly, rare price wars, a few promotions, and logged "
        "prices randomised +-15% around list price so elasticity is identifiable."
    ),
    catalogue=CatalogueSpec(categories=_CATEGORIES),
    segments=_SEGMENTS,
)

_PRICE_WAR = _DEFAULT.with_overrides(
    name="price-war",
    description=(
        "Aggressive competitors: 2-6 per product, volatile prices, frequent deep price wars and step "
        "changes, and shoppers who compare more (stronger competitor-price coefficient). Rewards "
        "policies that watch competitor prices."
    ),
    demand=DemandSpec(log_price_vs_competitor=-3.0, log_price_vs_reference=-1.8),
    competitors=CompetitorSpec(
        count_min=2, count_max=6, volatility_daily=0.08, updates_per_day=8.0, step_changes_per_day=0.1,
        price_war_per_day=0.15, price_war_depth=Span(low=0.15, high=0.40), price_war_duration_hours=Span(low=6, high=48),
    ),
)

_HIGH_SENSITIVITY = _DEFAULT.with_overrides(
    name="high-sensitivity",
    description=(
        "Price-sensitive shoppers in a downturn: most users are bargain hunters with a wide spread of "
        "sensitivities, and the base price coefficient is steeper. High prices lose most sales; "
        "personalisation has more to gain and more to lose."
    ),
    demand=DemandSpec(log_price_vs_reference=-3.5, log_price_vs_competitor=-2.0, intercept=-2.3),
    segments=(
        Segment(name="bargain-hunters", share=0.6, sensitivity_mean=1.6, sensitivity_sd=0.4, sessions_per_day=1.3,
                category_preference={"grocery": 1.6}),
        Segment(name="mainstream", share=0.35, sensitivity_mean=1.1, sensitivity_sd=0.3, sessions_per_day=0.9),
        Segment(name="premium", share=0.05, sensitivity_mean=0.6, sensitivity_sd=0.2, sessions_per_day=0.7),
    ),
)  # fmt: skip

_MARKET_SHIFT = _DEFAULT.with_overrides(
    name="market-shift",
    description=(
        "The default market until day 3, then a downturn: shoppers' price sensitivity rises by half and "
        "competitors undercut by 15%. A model trained on the first days overprices from then on; a pricing "
        "engine that keeps learning from its own logs should notice (README, 'The learning loop')."
    ),
    shift=ShiftSpec(),
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (_DEFAULT, _PRICE_WAR, _HIGH_SENSITIVITY, _MARKET_SHIFT)}


def get_scenario(name: str) -> Scenario:
    """The named scenario; an unknown name raises with the list of known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UnknownScenarioError(f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}") from None
