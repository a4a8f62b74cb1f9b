"""Offline evaluation of price-aware recommendations against the known ground truth (``pricing evaluate
--recommend``; no Kafka, no Flink).

The world is the scenario's with latent shopper tastes on (``Scenario.tastes``; the scenario's own when it
sets them, else ``TasteSpec()``): shoppers view and buy what they like, so their history predicts their
purchases. Its history under the historical pricing policy is what every ranker learns from. Recommendation
requests are drawn from the views of the last ``request_days`` days: the shopper asks, at the view's request
time, for ``k`` products to go with the product they are viewing (the request's context product, never
recommended itself). Every ranker answers the same requests, and the slate model
(``pricing.sim.slate``) decides with the same draws (common random numbers: one examination draw per
request and position, one purchase draw per request and product) which item, if any, the shopper buys at
the price shown, with the true purchase probability (``MarketState.probability``, taste included, every
product in stock).

The rows:

* ``random``: k products of the catalogue drawn uniformly, at list price;
* ``popularity``: the most popular products (the candidate index's decayed global popularity), at list price;
* ``category-popularity``: the most popular products of the context product's category, at list price;
* ``item-to-item``: the candidate index's candidates in their evidence order (co-purchase and co-view
  neighbours of the context and of the shopper's recent products, the recent products, then popularity;
  Linden, Smith and York 2003), at list price;
* ``model-list-price``: the same candidates ranked by the job's recommend stage
  (:class:`pricing_udfs.recommend.stage.RecommendStage`, ranking by ``pricing_udfs.recommend.ranking.rank``) on
  the demand model's expected profit at list price (the job's scoring stage with the price pinned to the list price:
  personal through the candidates and the user's features, margin-aware, not price-aware);
* ``model-price-aware``: ours: the same candidates priced by the job's scoring stage (its policy, guardrails
  and trust region: :class:`pricing_udfs.scoring.ScoringStage`, the object each job worker runs, inside the
  job's ``RecommendStage``) and ranked on the expected profit at those prices; the only difference from ``model-list-price`` is the
  price the policy chose;
* ``oracle``: the whole catalogue ranked by the true expected profit of each product at its
  profit-maximising price under the same guardrails (``MarketState.oracle``), shown at those prices: the
  ceiling. It is the item-wise ceiling (each item's best price and value, ranked); under the cascade it is the
  exact optimum for k = 1 and a slight underestimate of the best slate otherwise.

The rankers' candidates come from :class:`pricing_udfs.recommend.candidates.CandidateIndex` (the job's),
fed the simulated catalogue (``catalogue_entries``) and every behaviour event of the history before each
request, in event-time order. The model rows' features are the backfill's (``jobs.training_set``, the job's
feature semantics; ``pricing.sim.engine.backfilled_features``) composed per candidate by
:class:`CandidateFeatures`; the limit of that composition is stated there.The demand model they serve is, by default, one trained
on this world's history before the requests (``pricing.sim.recommend_model``, no leakage, cached).

Metrics per row, money in minor units per request: realised profit and revenue (the simulated purchases)
and their expectations under the slate model, conversion (share of requests with a purchase), NDCG@k
against the oracle's order (gain of a shown product: its true expected profit at its best price for that
shopper; the oracle scores 1 by construction), catalogue coverage (share of the catalogue shown at least
once), and the share of the fairness cap used: the mean over shown items of ``|price / list - 1|`` over the
allowed deviation on that side (the guardrails' ``max_personal_deviation`` when set, else the band of
``min_multiplier`` .. ``max_multiplier``), 0 at list price, 1 at the edge. Also a paired bootstrap interval
of the per-request profit difference ``model-price-aware - model-list-price``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence, TextIO

import numpy as np
import pandas as pd

from pricing.sim._progress import Progress
from pricing.sim.history import History, generate_history
from pricing.sim.market import MarketState, build_market, catalogue_entries
from pricing.sim.scenario import Scenario, TasteSpec
from pricing.sim.slate import NO_PURCHASE, PositionBias, purchase_probabilities, simulate
from pricing.sim.world import CHANNELS, DAY_MS, World, build_world
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.policy import Guardrails, PolicySettings
from pricing_udfs.recommend.candidates import Candidate, CandidateIndex, CandidateSettings
from pricing_udfs.recommend.ranking import RankingSettings
from pricing_udfs.recommend.stage import RecommendConfig, RecommendStage
from pricing_udfs.scoring import ScoringStage

STREAM_RECOMMEND = 9  # pricing.sim.market's streams end at 8
RANDOM, POPULARITY, CATEGORY_POPULARITY, ITEM_TO_ITEM = "random", "popularity", "category-popularity", "item-to-item"
MODEL_LIST_PRICE, MODEL_PRICE_AWARE, ORACLE = "model-list-price", "model-price-aware", "oracle"
ROWS = (RANDOM, POPULARITY, CATEGORY_POPULARITY, ITEM_TO_ITEM, MODEL_LIST_PRICE, MODEL_PRICE_AWARE, ORACLE)
# The list-price ranking's stage: every guardrail but the list price itself switched off.
LIST_PRICE_ONLY = Guardrails(min_multiplier=1.0, max_multiplier=1.0, min_margin=0.0, max_change=None,
                             max_personal_deviation=None, price_ending=None)  # fmt: skip
_SHIFT = 1 << 42  # product * _SHIFT + time (ms) orders views by product, then time


@dataclass(frozen=True)
class RecommendSetup:
    """The evaluation's knobs (sane defaults: a few minutes at most on two cores)."""

    k: int = 10
    requests: int = 2_000
    request_days: int = 1  # requests are drawn from the views of the history's last days
    candidates: CandidateSettings = CandidateSettings()
    position_bias: PositionBias = PositionBias()
    ranking: RankingSettings = RankingSettings()
    bootstrap: int = 2_000
    oracle_grid: int = 41
    batch_requests: int = 50  # requests per model call

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 50:
            raise ValueError("k must lie in 1..50 (RecommendRequest.k)")
        if self.requests < 1 or self.request_days < 1 or self.bootstrap < 1 or self.batch_requests < 1:
            raise ValueError("requests, request_days, bootstrap and batch_requests must be positive")
        if self.oracle_grid < 2:
            raise ValueError("oracle_grid must be at least 2")


def with_tastes(scenario: Scenario) -> Scenario:
    """The scenario with latent tastes on (its own when it sets them, else ``TasteSpec()``)."""
    return scenario if scenario.tastes is not None else scenario.with_overrides(tastes=TasteSpec().model_dump())


@dataclass(frozen=True, eq=False)
class Requests:
    """The recommendation requests (columnar, in time order): each at one view's request time."""

    view: np.ndarray  # the view it was drawn from (World.views index)
    user: np.ndarray
    context: np.ndarray  # the product being viewed
    time_ms: np.ndarray  # the request's event time (the view's request time)
    step: np.ndarray  # the market state step the view sees
    channel: np.ndarray  # index into CHANNELS

    def __len__(self) -> int:
        return int(self.view.size)


def draw_requests(world: World, setup: RecommendSetup, rng: np.random.Generator) -> Requests:
    """``setup.requests`` views of the last ``request_days`` days drawn without replacement (all, if fewer)."""
    v = world.views
    t = v.time_ms - v.request_lead_ms
    pool = np.flatnonzero(t >= world.end_ms - setup.request_days * DAY_MS)
    if pool.size == 0:
        raise ValueError("no views in the request days: simulate more traffic")
    picked = np.sort(rng.choice(pool, size=min(setup.requests, pool.size), replace=False))
    picked = picked[np.argsort(t[picked], kind="stable")]
    return Requests(view=picked, user=v.user[picked], context=v.product[picked], time_ms=t[picked],
                    step=v.state_step[picked], channel=v.channel[picked])  # fmt: skip


@dataclass(frozen=True, eq=False)
class IndexAnswers:
    """What the candidate index answered per request, at the request's time."""

    candidates: list[list[Candidate]]
    popular: list[list[str]]
    category_popular: list[list[str]]


def index_answers(market: MarketState, history: History, requests: Requests, *, settings: CandidateSettings,
                  k: int, progress: TextIO | None = None) -> IndexAnswers:  # fmt: skip
    """Feed a :class:`CandidateIndex` the catalogue and the history's behaviour in event-time order; before
    each request, exactly the events of earlier event time. Then its candidates, popular and category-popular
    products (the context product excluded from all three)."""
    index = CandidateIndex(settings)
    for entry in catalogue_entries(market, event_time_ms=history.start_ms):
        index.catalogue(entry["product_id"], entry["category"], active=entry["active"])
    b = history.behaviour.sort_values("event_time", kind="stable")
    users, products, kinds = b["user_id"].to_numpy(), b["product_id"].to_numpy(), b["type"].to_numpy()
    times = b["event_time"].to_numpy(dtype=np.int64)
    status = Progress(progress)
    names = np.asarray(market.category_names, dtype=object)
    out = IndexAnswers([], [], [])
    e = 0
    for r in range(len(requests)):
        t = int(requests.time_ms[r])
        stop = int(np.searchsorted(times, t, side="left"))
        for i in range(e, stop):
            index.observe(str(users[i]), str(products[i]), str(kinds[i]), int(times[i]))
        e = stop
        status.update(f"candidate index: request {r + 1:,}/{len(requests):,} ({e:,} behaviour events)")
        user = str(market.user_ids[requests.user[r]])
        context = str(market.product_ids[requests.context[r]])
        out.candidates.append(index.candidates(user, t, context_product_id=context))
        out.popular.append([p for p, _ in index.popular.top(k + 1, t, exclude=(context,))][:k])
        table = index.category_popular.get(str(names[market.product_category[requests.context[r]]]))
        out.category_popular.append([p for p, _ in table.top(k + 1, t, exclude=(context,))][:k] if table else [])
    status.clear()
    return out


class CandidateFeatures:
    """The served feature vector of a (request, candidate product) row, from the backfilled vectors of the
    history's price requests (``features[view]``, ``[n_views, F]``, NaN rows: none).

    The user, context and ``is_new_user`` features are those of the request's own view (the same user at the
    same time: exact). The product features (and ``is_new_product``) are those of the candidate's latest
    request before the request's time, by any shopper; a product never requested before gets the spec's
    defaults. List price, unit cost and the promotion flag are the market's at the request's step. The
    user's own history with the candidate (the ``user_product`` group: views, carts, purchases in the 24 h
    up to the request's time, both ends included) is counted from ``behaviour`` (the history's behaviour
    events: ``user_id``, ``product_id``, ``type``, ``event_time``; late ones included, which the backfill
    and the job leave out), and so is the user's history with the candidate's category (the ``user_category``
    group, features/4: any product of the world's category of the candidate, which the simulator's catalogue
    never changes); without ``behaviour`` those features take their defaults. Limit, stated: the product's
    windowed counts are those of its latest request, not of the recommend request's time (a product
    requested an hour ago shows its counts of an hour ago).
    """

    def __init__(self, world: World, features: np.ndarray | None, *, spec: FeatureSpec = FEATURE_SPEC,
                 behaviour: pd.DataFrame | None = None) -> None:
        v = world.views
        n, f = len(v), len(spec.names)
        self.world = world
        self.spec = spec
        self.features = np.full((n, f), np.nan) if features is None else np.asarray(features, dtype=np.float64)
        if self.features.shape != (n, f):
            raise ValueError(f"features {self.features.shape} for {n} views and {f} features")
        known = np.flatnonzero(~np.isnan(self.features).all(axis=1))
        key = v.product[known].astype(np.int64) * _SHIFT + (v.time_ms - v.request_lead_ms)[known]
        order = np.argsort(key, kind="stable")
        self._key, self._view = key[order], known[order]
        groups = {ft.name: ft.group for ft in spec.features}
        self._product = np.array([groups[n] == "product" or n == "is_new_product" for n in spec.names])
        self._affinity = {n: _AFFINITY_KINDS.get(n) for n in spec.names if groups[n] in ("user_product", "user_category")}
        if set(self._affinity.values()) & {None}:
            raise ValueError(f"unknown affinity features: {sorted(n for n, k in self._affinity.items() if k is None)}")
        self._by_category = {n for n in self._affinity if groups[n] == "user_category"}
        m = world.market
        self._history = None if behaviour is None else _PairHistory(world, behaviour)
        self._category_history = None if behaviour is None else _PairHistory(
            world, behaviour, group=np.asarray(m.product_category, np.int64), n_groups=len(m.category_names))

    def vectors(self, view: np.ndarray, product: np.ndarray, step: np.ndarray) -> np.ndarray:
        """``[rows, F]`` for rows of (request view, candidate product index, market step)."""
        w, d = self.world, self.spec.defaults
        v = w.views
        t = (v.time_ms - v.request_lead_ms)[view]
        own = self.features[view]
        own = np.where(np.isnan(own), d[None, :], own)
        pos = np.searchsorted(self._key, product.astype(np.int64) * _SHIFT + t, side="left") - 1
        safe = np.maximum(pos, 0)
        has = (pos >= 0) & (self._key[safe] // _SHIFT == product) if self._key.size else np.zeros(len(view), bool)
        theirs = self.features[self._view[safe]] if self._key.size else np.tile(d, (len(view), 1))
        theirs = np.where(has[:, None] & ~np.isnan(theirs), theirs, d[None, :])
        out = np.where(self._product[None, :], theirs, own)
        for name, value in (("list_price_minor", w.list_price[step, product]), ("unit_cost_minor", w.unit_cost[step, product]),
                            ("promotion_active", (w.promotion_bp[step, product] > 0).astype(np.float64))):  # fmt: skip
            if name in self.spec.names:
                out[:, self.spec.index(name)] = value
        for name, (kind, window_ms) in self._affinity.items():  # the user's own history with the candidate (category)
            i = self.spec.index(name)
            history = self._category_history if name in self._by_category else self._history
            out[:, i] = d[i] if history is None else history.count(kind, v.user[view], product, t, window_ms)
        return out


# The ``user_product`` (features/3) and ``user_category`` (features/4) features: the behaviour type each counts, over
# the 24 h up to the request.
_AFFINITY_KINDS: dict[str, tuple[str, int] | None] = {
    "user_product_views_24h": ("view", DAY_MS), "user_product_carts_24h": ("add_to_cart", DAY_MS),
    "user_product_purchases_24h": ("purchase", DAY_MS),
    "user_category_views_24h": ("view", DAY_MS), "user_category_carts_24h": ("add_to_cart", DAY_MS),
    "user_category_purchases_24h": ("purchase", DAY_MS),
}


class _PairHistory:
    """Behaviour events sorted by (user, product group, time) per type: counts in a window by binary search.
    ``group`` maps each product index to its group (the world's categories; default: the product itself)."""

    def __init__(self, world: World, behaviour: pd.DataFrame, *, group: np.ndarray | None = None,
                 n_groups: int | None = None) -> None:  # fmt: skip
        m = world.market
        self._group = np.arange(m.n_products, dtype=np.int64) if group is None else np.asarray(group, np.int64)
        users = {u: i for i, u in enumerate(m.user_ids)}
        products = {p: int(self._group[j]) for j, p in enumerate(m.product_ids)}
        user = behaviour["user_id"].map(users)
        product = behaviour["product_id"].map(products)
        known = (user.notna() & product.notna()).to_numpy()
        self._n_products = max(m.n_products if n_groups is None else n_groups, 1)
        times = behaviour["event_time"].to_numpy(np.int64)
        self._base = (int(times.min()) if times.size else world.start_ms) - 2 * DAY_MS
        self._span = max(int(times.max()) if times.size else world.end_ms, world.end_ms) - self._base + 1
        if m.n_users * self._n_products * self._span >= 2**62:
            raise OverflowError("too many (user, product) pairs x milliseconds for one int64 key")
        pair = user[known].to_numpy(np.int64) * self._n_products + product[known].to_numpy(np.int64)
        kinds = behaviour["type"].to_numpy(object)[known]
        keys = pair * self._span + (times[known] - self._base)
        self._keys = {kind: np.sort(keys[kinds == kind]) for kind in ("view", "add_to_cart", "purchase")}

    def count(self, kind: str, user: np.ndarray, product: np.ndarray, t: np.ndarray, window_ms: int) -> np.ndarray:
        """Events of ``kind`` of each (user, product's group) with t - window <= event time <= t."""
        pair = np.asarray(user, np.int64) * self._n_products + self._group[np.asarray(product, np.int64)]
        at = pair * self._span + (np.asarray(t, np.int64) - self._base)
        keys = self._keys[kind]
        return (np.searchsorted(keys, at, side="right") - np.searchsorted(keys, at - window_ms, side="left")).astype(np.float64)


@dataclass(frozen=True, eq=False)
class Slates:
    """One ranker's answers: ``product[r, i]`` (-1: empty slot) shown at ``price[r, i]`` (minor units)."""

    product: np.ndarray
    price: np.ndarray


class StageRanker:
    """A recommender around one :class:`ScoringStage` (the job's), run by the job's own
    :class:`pricing_udfs.recommend.stage.RecommendStage` (the scoring stage injected): per batch of requests,
    every candidate of every slate priced in one ``decide`` (``record=False``: offers are not sales) and ranked
    by ``rank``, exactly as each job worker answers a batch of gathered slates."""

    def __init__(self, stage: ScoringStage, features: CandidateFeatures, *, name: str) -> None:
        self.stage = stage
        self.features = features
        self.name = name

    def recommend_stage(self, ranking: RankingSettings) -> RecommendStage:
        """The job's recommend stage around this ranker's (already open) scoring stage."""
        return RecommendStage(RecommendConfig(scoring=self.stage.config, ranking=ranking), spec=self.features.spec,
                              scoring=self.stage)  # fmt: skip

    def batch(self, market: MarketState, requests: Requests, candidates: Sequence[Sequence[Candidate]],
              rows: range, k: int) -> tuple[pd.DataFrame, list[pd.DataFrame]]:  # fmt: skip
        """``RecommendStage.recommend``'s input for ``rows`` of the requests: the request frame and one slate frame
        per request (its candidates, their evidence and their served feature vectors, as the job gathers them)."""
        spec = self.features.spec
        index = {str(p): j for j, p in enumerate(market.product_ids)}
        frame = pd.DataFrame({
            "request_id": [f"rec{market.scenario.seed}-{r}" for r in rows],
            "user_id": [str(market.user_ids[requests.user[r]]) for r in rows],
            "channel": [CHANNELS[int(requests.channel[r])] for r in rows],
            "event_time": requests.time_ms[list(rows)].astype(np.int64),
            "k": k,
        })  # fmt: skip
        slates = []
        for r in rows:
            found = candidates[r]
            prod = np.array([index[c.product_id] for c in found], dtype=np.int64)
            x = self.features.vectors(np.full(prod.size, requests.view[r]), prod, np.full(prod.size, requests.step[r]))
            slate = pd.DataFrame(x.reshape(prod.size, len(spec.names)), columns=list(spec.names))
            slate.insert(0, "product_id", [c.product_id for c in found])
            slate.insert(1, "list_currency", market.scenario.currency)
            slate.insert(2, "candidate_score", np.array([c.score for c in found], dtype=np.float64))
            slate.insert(3, "candidate_reasons", [tuple(c.reasons) for c in found])
            slates.append(slate)
        return frame, slates

    def slates(self, market: MarketState, requests: Requests, candidates: Sequence[Sequence[Candidate]],
               setup: RecommendSetup, *, progress: TextIO | None = None) -> Slates:  # fmt: skip
        product_index = {str(p): j for j, p in enumerate(market.product_ids)}
        n, k = len(requests), setup.k
        out_product = np.full((n, k), -1, np.int64)
        out_price = np.zeros((n, k), np.int64)
        status = Progress(progress)
        stage = self.recommend_stage(setup.ranking)
        for a in range(0, n, setup.batch_requests):
            b = min(a + setup.batch_requests, n)
            status.update(f"ranking {self.name}: request {b:,}/{n:,}")
            frame, slates = self.batch(market, requests, candidates, range(a, b), k)
            answers = stage.recommend(frame, slates, answered_time_ms=int(time.time() * 1000))
            for r, answer in zip(range(a, b), answers, strict=True):
                for i, item in enumerate(answer["items"][:k]):
                    out_product[r, i] = product_index[item["product_id"]]
                    out_price[r, i] = int(item["price_minor"])
        status.clear()
        return Slates(out_product, out_price)


def model_rankers(stage_for: Callable[[PolicySettings], ScoringStage], features: CandidateFeatures, policy: PolicySettings) -> dict[str, StageRanker]:
    """``model-list-price`` and ``model-price-aware`` around stages ``stage_for(policy settings)`` builds (the
    same served model): the price-aware one with ``policy`` as configured, the list-price one with the price
    pinned to the list price (``LIST_PRICE_ONLY``, no exploration, two identical candidate prices)."""
    pinned = policy.model_copy(update={"guardrails": LIST_PRICE_ONLY, "exploration_rate": 0.0, "grid_size": 2})
    return {
        MODEL_LIST_PRICE: StageRanker(stage_for(pinned), features, name=MODEL_LIST_PRICE),
        MODEL_PRICE_AWARE: StageRanker(stage_for(policy), features, name=MODEL_PRICE_AWARE),
    }


@dataclass(frozen=True, eq=False)
class Interval:
    """A paired bootstrap interval of a mean difference per request (minor units)."""

    mean: float
    low: float
    high: float
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(diff: np.ndarray, *, resamples: int, rng: np.random.Generator, level: float = 0.95) -> Interval:
    """Percentile interval of the mean of ``diff`` (one paired difference per request) over resampled requests."""
    diff = np.asarray(diff, dtype=np.float64)
    means = np.empty(resamples)
    for s in range(0, resamples, 256):
        e = min(s + 256, resamples)
        means[s:e] = diff[rng.integers(0, diff.size, (e - s, diff.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return Interval(float(diff.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail)), level)


@dataclass(frozen=True, eq=False)
class RowResult:
    """One ranker's metrics (money in minor units per request) and its per-request outcomes."""

    policy: str
    profit_per_request: float
    revenue_per_request: float
    conversion: float
    expected_profit_per_request: float
    expected_revenue_per_request: float
    expected_conversion: float
    ndcg_at_k: float
    coverage: float
    fairness_cap_used: float
    price_index: float  # mean shown price / list price
    profit: np.ndarray = field(repr=False)  # realised, per request
    expected_profit: np.ndarray = field(repr=False)
    shown: np.ndarray = field(repr=False)  # [requests, k] product indices, -1: empty slot


@dataclass(frozen=True, eq=False)
class RecommendEvaluation:
    """Every row's results on one scenario's requests, the headline comparisons and the report writers."""

    scenario: Scenario
    days: int
    setup: RecommendSetup
    guardrails: Guardrails
    rows: tuple[RowResult, ...]
    price_aware_vs_list: Interval | None  # realised profit; None without the model rows
    price_aware_vs_list_expected: Interval | None
    seconds: float
    notes: tuple[str, ...] = ()

    def row(self, policy: str) -> RowResult:
        for r in self.rows:
            if r.policy == policy:
                return r
        raise KeyError(f"no row {policy!r}; have {[r.policy for r in self.rows]}")

    def ratio(self, policy: str, baseline: str, *, expected: bool = False) -> float:
        """``policy``'s profit per request over ``baseline``'s (NaN when the baseline's is not positive)."""
        a, b = self.row(policy), self.row(baseline)
        num, den = (a.expected_profit_per_request, b.expected_profit_per_request) if expected else (
            a.profit_per_request, b.profit_per_request)  # fmt: skip
        return num / den if den > 0 else float("nan")

    def table(self) -> pd.DataFrame:
        """One row per ranker; money in minor units per request (``currency`` column)."""
        return pd.DataFrame(
            [
                {
                    "policy": r.policy,
                    "requests": int(r.profit.size),
                    "profit_per_request": r.profit_per_request,
                    "revenue_per_request": r.revenue_per_request,
                    "conversion": r.conversion,
                    "expected_profit_per_request": r.expected_profit_per_request,
                    "expected_revenue_per_request": r.expected_revenue_per_request,
                    "expected_conversion": r.expected_conversion,
                    "ndcg_at_k": r.ndcg_at_k,
                    "coverage": r.coverage,
                    "fairness_cap_used": r.fairness_cap_used,
                    "price_index": r.price_index,
                    "currency": self.scenario.currency,
                    "k": self.setup.k,
                }
                for r in self.rows
            ]
        )

    def headline(self) -> list[str]:
        """The comparisons the issue asks for, one line each."""
        lines = []
        names = {r.policy for r in self.rows}
        if MODEL_PRICE_AWARE in names:
            for base in (CATEGORY_POPULARITY, ORACLE):
                lines.append(f"{MODEL_PRICE_AWARE} / {base}: {self.ratio(MODEL_PRICE_AWARE, base):.3f} realised, "
                             f"{self.ratio(MODEL_PRICE_AWARE, base, expected=True):.3f} expected profit per request")  # fmt: skip
        cur = self.scenario.currency
        for label, iv in (("realised", self.price_aware_vs_list), ("expected", self.price_aware_vs_list_expected)):
            if iv is not None:
                lines.append(f"{MODEL_PRICE_AWARE} - {MODEL_LIST_PRICE}, {label} profit per request: "
                             f"{iv.mean / 100:+.3f} {cur}, {iv.level:.0%} paired bootstrap interval "
                             f"[{iv.low / 100:+.3f}, {iv.high / 100:+.3f}] ({'excludes' if iv.excludes_zero else 'includes'} zero)")  # fmt: skip
        return lines

    def markdown(self) -> str:
        """The table for humans (money in major units per request, rates in percent) and the headline."""
        cur = self.scenario.currency
        g = self.guardrails
        cap = (f"max personal deviation {g.max_personal_deviation:g}" if g.max_personal_deviation is not None
               else f"no personal cap: the band [{g.min_multiplier:g}, {g.max_multiplier:g}] x list")  # fmt: skip
        s = self.setup
        lines = [
            f"Scenario `{self.scenario.name}` with latent tastes, seed {self.scenario.seed}, {self.days} days of history, "
            f"{self.rows[0].profit.size:,} recommendation requests from the last {s.request_days} day(s), k = {s.k}, "
            f"up to {s.candidates.n_candidates} candidates, position bias {s.position_bias.kind}"
            f"{f' (decay {s.position_bias.decay:g})' if s.position_bias.kind == 'geometric' else ''}. "
            f"Fairness cap: {cap}. {self.seconds:.0f} s.",
            "",
            f"| policy | profit / request ({cur}) | revenue / request ({cur}) | conversion | expected profit / request "
            f"| expected conversion | NDCG@{s.k} | coverage | fairness cap used | price index |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.policy} | {r.profit_per_request / 100:,.3f} | {r.revenue_per_request / 100:,.3f} | {r.conversion:.2%} "
                f"| {r.expected_profit_per_request / 100:,.3f} | {r.expected_conversion:.2%} | {r.ndcg_at_k:.3f} "
                f"| {r.coverage:.1%} | {r.fairness_cap_used:.1%} | {r.price_index:.3f} |"
            )
        extra = self.headline() + list(self.notes)
        return "\n".join(lines + ([""] + [f"- {x}" for x in extra] if extra else [])) + "\n"

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write ``recommendation.md``, ``recommendation.csv`` and ``recommendation_profit.png`` into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"markdown": out_dir / "recommendation.md", "csv": out_dir / "recommendation.csv",
                 "plot": out_dir / "recommendation_profit.png"}  # fmt: skip
        paths["markdown"].write_text(f"# Recommendation evaluation: {self.scenario.name}\n\n" + self.markdown())
        self.table().to_csv(paths["csv"], index=False)
        with warnings.catch_warnings():  # matplotlib 3.9 calls pyparsing APIs that pyparsing 3.3 deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            self._draw(paths["plot"])
        return paths

    def _draw(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt

        names = [r.policy for r in self.rows]
        y = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
        try:
            ax.barh(y - 0.2, [r.profit_per_request / 100 for r in self.rows], height=0.4, label="realised")
            ax.barh(y + 0.2, [r.expected_profit_per_request / 100 for r in self.rows], height=0.4, label="expected")
            ax.set_yticks(y, names)
            ax.invert_yaxis()
            ax.set_xlabel(f"profit per recommendation request ({self.scenario.currency})")
            ax.set_title(f"Recommendation profit, scenario {self.scenario.name} (k = {self.setup.k})")
            ax.grid(alpha=0.3, axis="x")
            ax.legend(loc="lower right", fontsize=8)
            fig.tight_layout()
            fig.savefig(path)
        finally:
            plt.close(fig)


@dataclass(frozen=True, eq=False)
class RecommendWorld:
    """The evaluation's world: the tasteful market, its history, the requests and the slate model's draws."""

    market: MarketState
    world: World
    history: History
    requests: Requests
    u_examine: np.ndarray  # [requests, k]
    u_buy: np.ndarray  # [requests, products]
    rng: np.random.Generator  # for the random ranker and the bootstrap (after the draws above)


def recommend_world(scenario: Scenario, *, days: int, setup: RecommendSetup, progress: TextIO | None = None) -> RecommendWorld:
    """Build the tasteful world and its history (deterministic in the scenario seed) and draw the requests."""
    scenario = with_tastes(scenario)
    market = build_market(scenario)
    world = build_world(market, days=days, progress=progress)
    history = generate_history(scenario, days=days, world=world, progress=progress)
    rng = np.random.default_rng([scenario.seed, STREAM_RECOMMEND])
    requests = draw_requests(world, setup, rng)
    u_examine = rng.random((len(requests), setup.k))
    u_buy = rng.random((len(requests), market.n_products))
    return RecommendWorld(market, world, history, requests, u_examine, u_buy, rng)


def evaluate_recommendations(
    scenario: Scenario,
    *,
    days: int = 3,
    guardrails: Guardrails | None = None,
    rankers: Mapping[str, StageRanker] | None = None,
    setup: RecommendSetup | None = None,
    rec: RecommendWorld | None = None,
    progress: TextIO | None = None,
) -> RecommendEvaluation:
    """Every row of the module docstring on the same requests. ``rankers``: the model rows (``model_rankers``;
    None: without them). ``rec``: a world ``recommend_world`` built for the same arguments (the model rows'
    features are computed from its history), else built here."""
    t0 = time.perf_counter()
    setup = setup or RecommendSetup()
    guardrails = guardrails if guardrails is not None else Guardrails()
    rec = rec or recommend_world(scenario, days=days, setup=setup, progress=progress)
    m, w, q = rec.market, rec.world, rec.requests
    status = Progress(progress)
    status.update("oracle: best prices and values of the whole catalogue", force=True)
    gain, oracle_price = _oracle(m, w, q, guardrails, grid=setup.oracle_grid)
    answers = index_answers(m, rec.history, q, settings=setup.candidates, k=setup.k, progress=progress)
    ids = {str(p): j for j, p in enumerate(m.product_ids)}
    k = setup.k
    at_list = lambda s: Slates(s, _list_prices(w, q, s))  # noqa: E731

    slates: dict[str, Slates] = {
        RANDOM: at_list(_random_slates(rec.rng, q, m.n_products, k)),
        POPULARITY: at_list(_slates_of(answers.popular, ids, k)),
        CATEGORY_POPULARITY: at_list(_slates_of(answers.category_popular, ids, k)),
        ITEM_TO_ITEM: at_list(_slates_of([[c.product_id for c in cs] for cs in answers.candidates], ids, k)),
    }
    for name, ranker in (rankers or {}).items():
        slates[name] = ranker.slates(m, q, answers.candidates, setup, progress=progress)
    top = np.argsort(-gain, axis=1, kind="stable")[:, :k]
    slates[ORACLE] = Slates(top, np.take_along_axis(oracle_price, top, axis=1))
    order = [r for r in ROWS if r in slates] + [r for r in slates if r not in ROWS]
    status.update("measuring", force=True)
    rows = tuple(_measure(name, slates[name], rec, gain, guardrails, setup) for name in order)
    status.clear()
    by = {r.policy: r for r in rows}
    realised = expected = None
    if MODEL_PRICE_AWARE in by and MODEL_LIST_PRICE in by:
        a, b = by[MODEL_PRICE_AWARE], by[MODEL_LIST_PRICE]
        realised = paired_bootstrap(a.profit - b.profit, resamples=setup.bootstrap, rng=rec.rng)
        expected = paired_bootstrap(a.expected_profit - b.expected_profit, resamples=setup.bootstrap, rng=rec.rng)
    return RecommendEvaluation(scenario=m.scenario, days=days, setup=setup, guardrails=guardrails, rows=rows,
                               price_aware_vs_list=realised, price_aware_vs_list_expected=expected,
                               seconds=time.perf_counter() - t0)  # fmt: skip


def _oracle(m: MarketState, w: World, q: Requests, guardrails: Guardrails, *, grid: int,
            chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``[requests, products]``: each product's true expected profit at its best price for the shopper (the
    context product -inf, never shown), and that price."""
    n, p = len(q), m.n_products
    gain = np.empty((n, p))
    price = np.empty((n, p), np.int64)
    prods = np.arange(p)[None, :]
    for a in range(0, n, chunk):
        s = slice(a, min(a + chunk, n))
        user, step = q.user[s, None], q.step[s, None]
        ctx = dict(reference_price=w.list_price[step, prods], competitor_min=w.competitor_min[step, prods],
                   promotion_active=w.promotion_bp[step, prods] > 0)  # fmt: skip
        cost = w.unit_cost[step, prods]
        best = m.oracle(user_idx=user, product_idx=prods, unit_cost=cost, inventory=1, guardrails=guardrails,
                        grid_size=grid, **ctx)  # fmt: skip
        prob = m.probability(user_idx=user, product_idx=prods, offered_price=best, inventory=1, **ctx)
        gain[s] = prob * (best - cost)
        price[s] = best
    gain[np.arange(n), q.context] = -np.inf
    return gain, price


def _list_prices(w: World, q: Requests, product: np.ndarray) -> np.ndarray:
    return np.where(product >= 0, w.list_price[q.step[:, None], np.maximum(product, 0)], 0)


def _random_slates(rng: np.random.Generator, q: Requests, n_products: int, k: int) -> np.ndarray:
    """k distinct products per request drawn uniformly from the catalogue without the context product."""
    keys = rng.random((len(q), n_products))
    keys[np.arange(len(q)), q.context] = np.inf
    top = np.argsort(keys, axis=1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(keys, top, axis=1)), top, -1)


def _slates_of(lists: Sequence[Sequence[str]], ids: Mapping[str, int], k: int) -> np.ndarray:
    out = np.full((len(lists), k), -1, np.int64)
    for r, products in enumerate(lists):
        got = [ids[p] for p in products[:k]]
        out[r, : len(got)] = got
    return out


def _measure(name: str, s: Slates, rec: RecommendWorld, gain: np.ndarray, guardrails: Guardrails,
             setup: RecommendSetup) -> RowResult:  # fmt: skip
    m, w, q = rec.market, rec.world, rec.requests
    n, k = s.product.shape
    shown = s.product >= 0
    j = np.maximum(s.product, 0)
    step = q.step[:, None]
    ref = w.list_price[step, j].astype(np.float64)
    cost = w.unit_cost[step, j]
    price = np.where(shown, s.price, ref).astype(np.float64)
    if np.any(shown & (price < 1)):
        raise ValueError(f"{name} showed a non-positive price")
    prob = m.probability(user_idx=q.user[:, None], product_idx=j, offered_price=price, reference_price=ref,
                         competitor_min=w.competitor_min[step, j], promotion_active=w.promotion_bp[step, j] > 0,
                         inventory=1)  # fmt: skip
    prob = np.where(shown, prob, 0.0)
    e = setup.position_bias.examination(k)
    margin = np.where(shown, price - cost, 0.0)
    p_buy = purchase_probabilities(prob, e)
    bought = simulate(prob, e, rec.u_examine, np.take_along_axis(rec.u_buy, j, axis=1))
    hit = bought != NO_PURCHASE
    at = np.maximum(bought, 0)
    profit = np.where(hit, margin[np.arange(n), at], 0.0)
    revenue = np.where(hit, price[np.arange(n), at], 0.0)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    g = np.where(shown, np.take_along_axis(gain, j, axis=1), 0.0)
    g = np.where(np.isfinite(g), g, 0.0)
    ideal = np.sort(np.where(np.isfinite(gain), gain, 0.0), axis=1)[:, ::-1][:, :k]
    idcg = ideal @ discount[: ideal.shape[1]]
    ndcg = np.where(idcg > 0, (g @ discount) / np.where(idcg > 0, idcg, 1.0), np.nan)
    return RowResult(
        policy=name,
        profit_per_request=float(profit.mean()),
        revenue_per_request=float(revenue.mean()),
        conversion=float(hit.mean()),
        expected_profit_per_request=float((p_buy * margin).sum(axis=1).mean()),
        expected_revenue_per_request=float((p_buy * np.where(shown, price, 0.0)).sum(axis=1).mean()),
        expected_conversion=float(p_buy.sum(axis=1).mean()),
        ndcg_at_k=float(np.nanmean(ndcg)) if np.isfinite(ndcg).any() else float("nan"),
        coverage=float(np.unique(s.product[shown]).size / m.n_products),
        fairness_cap_used=float(fairness_share(price[shown], ref[shown], guardrails).mean()) if shown.any() else 0.0,
        price_index=float((price[shown] / ref[shown]).mean()) if shown.any() else float("nan"),
        profit=profit,
        expected_profit=(p_buy * margin).sum(axis=1),
        shown=s.product,
    )


def fairness_share(price: np.ndarray, reference: np.ndarray, guardrails: Guardrails) -> np.ndarray:
    """Per price, ``|price / list - 1|`` over the deviation allowed on its side: the guardrails'
    ``max_personal_deviation`` when set, else the band ``max_multiplier - 1`` above and ``1 - min_multiplier``
    below (0: at list price; 1: at the cap; NaN-free, 0 where the side allows no deviation)."""
    rel = np.asarray(price, dtype=np.float64) / np.asarray(reference, dtype=np.float64) - 1.0
    d = guardrails.max_personal_deviation
    up = d if d is not None else guardrails.max_multiplier - 1.0
    down = d if d is not None else 1.0 - guardrails.min_multiplier
    allowed = np.where(rel >= 0, up, down)
    return np.where(allowed > 0, np.abs(rel) / np.where(allowed > 0, allowed, 1.0), 0.0)
