"""Offline policy evaluation against the known ground truth (no Kafka, no Flink).

Every policy is replayed through the *same* simulated world: the same shoppers
view the same products at the same times with the same random draws, so profit
differences come from prices alone (common random numbers). Baselines:

* ``static-reference``: charge the list price;
* ``best-static``: the single multiplier of the list price with the highest profit,
  found by grid search on this very replay (an in-hindsight upper bound for any
  non-personalised, non-dynamic policy);
* ``competitor-match``: match the cheapest competitor within guardrails;
* ``oracle``: knows each shopper's true demand; the profit-maximising price under
  the same guardrails (the ceiling a learned policy can approach);
* ``always-2x``: twice the list price, a deliberately bad policy (and it breaks
  the guardrails, which the report shows).

Any object implementing ``PricingPolicy`` can be added. Metrics: revenue, profit,
conversion, guardrail violations, the fairness spread of personalised prices
(for the same product in the same time bucket: (max - min) / list price), and the
share of views that found the product out of stock (the oracle is myopic about stock).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence, TextIO

import numpy as np
import pandas as pd

from pricing.sim._progress import Progress
from pricing.sim.market import MarketState, build_market
from pricing_udfs.policy import Guardrails
from pricing.sim.policies import (
    CompetitorMatchPolicy,
    OraclePolicy,
    PricingPolicy,
    StaticMultiplierPolicy,
    policy_name,
)
from pricing.sim.scenario import Scenario
from pricing.sim.world import Outcome, World, build_world, replay

DEFAULT_STATIC_GRID = tuple(round(0.7 + 0.05 * i, 2) for i in range(17))  # 0.70 .. 1.50


@dataclass(frozen=True, eq=False)
class PolicyResult:
    """Realised metrics of one policy over the replay."""

    name: str  # as reported; may add a detail to the key, as in "best-static (x0.85)"
    revenue_minor: int
    profit_minor: int
    views: int
    purchases: int
    conversion: float
    price_index: float  # mean offered price / list price
    guardrail_violations: int
    violation_rate: float
    price_spread_mean: float  # over (product, bucket) groups with >= 2 offers
    price_spread_p95: float
    stockout_rate: float  # share of views that found the product out of stock
    cumulative_profit_minor: np.ndarray = field(repr=False)  # per time step
    key: str  # what ``Evaluation.result`` finds it by: the name without its detail


@dataclass(frozen=True, eq=False)
class Evaluation:
    """All policies' results on one scenario, with writers for the report files."""

    scenario: Scenario
    days: int
    guardrails: Guardrails
    step_start_ms: np.ndarray
    results: tuple[PolicyResult, ...]
    best_static_multiplier: float

    def result(self, name: str) -> PolicyResult:
        """The result whose key or full name is ``name`` (``"best-static"`` finds ``"best-static (x0.85)"``)."""
        for r in self.results:
            if name in (r.key, r.name):
                return r
        raise KeyError(f"no policy named {name!r}; have {[r.name for r in self.results]}")

    def table(self) -> pd.DataFrame:
        """One row per policy; money in minor units (``currency`` column)."""
        return pd.DataFrame(
            [
                {
                    "policy": r.name,
                    "revenue_minor": r.revenue_minor,
                    "profit_minor": r.profit_minor,
                    "currency": self.scenario.currency,
                    "views": r.views,
                    "purchases": r.purchases,
                    "conversion": r.conversion,
                    "price_index": r.price_index,
                    "guardrail_violations": r.guardrail_violations,
                    "violation_rate": r.violation_rate,
                    "price_spread_mean": r.price_spread_mean,
                    "price_spread_p95": r.price_spread_p95,
                    "stockout_rate": r.stockout_rate,
                }
                for r in self.results
            ]
        )

    def markdown(self) -> str:
        """The table for humans: money in major units, rates in percent."""
        cur = self.scenario.currency
        lines = [
            f"Scenario `{self.scenario.name}`, {self.days} days, seed {self.scenario.seed}, "
            f"{self.results[0].views:,} views. Guardrails: price in [{self.guardrails.min_multiplier:g}, "
            f"{self.guardrails.max_multiplier:g}] x list, >= cost x {1 + self.guardrails.min_margin:g}, "
            f"max change {self.guardrails.max_change if self.guardrails.max_change is not None else 'none'}.",
            "",
            f"| policy | revenue ({cur}) | profit ({cur}) | conversion | purchases | price index "
            "| guardrail violations | price spread mean / p95 | stock-outs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.results:
            lines.append(
                f"| {r.name} | {r.revenue_minor / 100:,.0f} | {r.profit_minor / 100:,.0f} | {r.conversion:.2%} "
                f"| {r.purchases:,} | {r.price_index:.3f} | {r.guardrail_violations:,} ({r.violation_rate:.1%}) "
                f"| {r.price_spread_mean:.1%} / {r.price_spread_p95:.1%} | {r.stockout_rate:.1%} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Write ``evaluation.md``, ``evaluation.csv`` and ``cumulative_profit.png`` into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            "markdown": out_dir / "evaluation.md",
            "csv": out_dir / "evaluation.csv",
            "plot": out_dir / "cumulative_profit.png",
        }
        paths["markdown"].write_text(f"# Policy evaluation: {self.scenario.name}\n\n" + self.markdown())
        self.table().to_csv(paths["csv"], index=False)
        self._plot(paths["plot"])
        return paths

    def _plot(self, path: Path) -> None:
        with warnings.catch_warnings():  # matplotlib 3.9 calls pyparsing APIs that pyparsing 3.3 deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            self._draw(path)

    def _draw(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
        from matplotlib.ticker import StrMethodFormatter

        times = pd.to_datetime(self.step_start_ms, unit="ms", utc=True)
        fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
        try:
            for r in self.results:
                ax.plot(times, r.cumulative_profit_minor / 100, label=r.name, linewidth=1.6)
            ax.set_title(f"Cumulative profit, scenario {self.scenario.name}")
            ax.set_ylabel(f"profit ({self.scenario.currency})")
            ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
            ax.set_xlabel("simulated time (UTC)")
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left", fontsize=8)
            fig.autofmt_xdate()
            fig.tight_layout()
            fig.savefig(path)
        finally:
            plt.close(fig)


def evaluate_policies(
    scenario: Scenario,
    *,
    days: int = 7,
    guardrails: Guardrails | None = None,
    policies: Mapping[str, PricingPolicy] | Sequence[PricingPolicy] = (),
    static_grid: Sequence[float] = DEFAULT_STATIC_GRID,
    market: MarketState | None = None,
    progress: TextIO | None = None,
) -> Evaluation:
    """Replay the baselines and ``policies`` through one simulated world and measure each."""
    if not static_grid:
        raise ValueError("static_grid must hold at least one multiplier (best-static is chosen from it)")
    guardrails = guardrails if guardrails is not None else Guardrails()
    market = market or build_market(scenario)
    world = build_world(market, days=days, progress=progress)
    extra = dict(policies) if isinstance(policies, Mapping) else _unique_names(policies)
    for name, p in extra.items():
        if not isinstance(p, PricingPolicy):
            raise TypeError(f"policy {name!r} has no price(batch) method")
    status = Progress(progress)
    total = len(static_grid) + 4 + len(extra)
    done = 0

    def run(name: str, policy: PricingPolicy) -> Outcome:
        nonlocal done
        done += 1
        status.update(f"evaluating {name} ({done}/{total})")
        return replay(world, policy.price, label=name)

    # the first multiplier of the highest profit; one replay held at a time besides the best
    statics = ((float(m), run(f"static-x{m:g}", StaticMultiplierPolicy(m, guardrails=guardrails))) for m in static_grid)
    best_m, best_outcome = max(statics, key=lambda m_outcome: _profit(world, m_outcome[1]).sum())
    results = [
        _measure(world, "static-reference", run("static-reference", StaticMultiplierPolicy(1.0, guardrails=guardrails)), guardrails),
        _measure(world, f"best-static (x{best_m:.2f})", best_outcome, guardrails, key="best-static"),
        _measure(world, "competitor-match", run("competitor-match", CompetitorMatchPolicy(guardrails=guardrails)), guardrails),
        _measure(world, "oracle", run("oracle", OraclePolicy(market, guardrails=guardrails)), guardrails),
        _measure(world, "always-2x", run("always-2x", StaticMultiplierPolicy(2.0)), guardrails),
    ]  # fmt: skip
    results += [_measure(world, name, run(name, p), guardrails) for name, p in extra.items()]
    status.clear()
    step_start = world.start_ms + np.arange(world.n_steps, dtype=np.int64) * world.step_ms
    return Evaluation(
        scenario=scenario, days=days, guardrails=guardrails, step_start_ms=step_start, results=tuple(results),
        best_static_multiplier=best_m,
    )  # fmt: skip


def _unique_names(policies: Sequence[PricingPolicy]) -> dict[str, PricingPolicy]:
    """Name policies by ``policy_name``; clashes (with each other or a baseline) get ``#2``, ``#3``..."""
    taken = {"static-reference", "best-static", "competitor-match", "oracle", "always-2x"}
    out: dict[str, PricingPolicy] = {}
    for p in policies:
        base = name = policy_name(p)
        k = 2
        while name in taken:
            name, k = f"{base}#{k}", k + 1
        taken.add(name)
        out[name] = p
    return out


def _profit(world: World, outcome: Outcome) -> np.ndarray:
    return np.where(outcome.purchased, outcome.price - world.at_views(world.unit_cost), 0)


def _measure(world: World, name: str, outcome: Outcome, guardrails: Guardrails, *, key: str | None = None) -> PolicyResult:
    v = world.views
    ref = world.at_views(world.list_price)
    cost = world.at_views(world.unit_cost)
    price = outcome.price
    profit = _profit(world, outcome)
    violations = guardrails.violations(price, reference_price=ref, unit_cost=cost, anchor_price=outcome.anchor)
    spread = _spread(v.state_step, v.product, price, ref, world.market.n_products)
    n = len(v)
    return PolicyResult(
        name=name,
        revenue_minor=int(np.where(outcome.purchased, price, 0).sum()),
        profit_minor=int(profit.sum()),
        views=n,
        purchases=int(outcome.purchased.sum()),
        conversion=float(outcome.purchased.mean()) if n else 0.0,
        price_index=float((price / ref).mean()) if n else 0.0,
        guardrail_violations=int(violations.sum()),
        violation_rate=float(violations.mean()) if n else 0.0,
        price_spread_mean=float(spread.mean()) if spread.size else 0.0,
        price_spread_p95=float(np.quantile(spread, 0.95)) if spread.size else 0.0,
        stockout_rate=float((outcome.inventory_at_view == 0).mean()) if n else 0.0,
        cumulative_profit_minor=np.cumsum(np.bincount(v.step, weights=profit, minlength=world.n_steps)),
        key=key or name,
    )


def _spread(bucket: np.ndarray, product: np.ndarray, price: np.ndarray, ref: np.ndarray, n_products: int) -> np.ndarray:
    """(max - min) / list price of the offers per (bucket, product) group with at least two offers."""
    if price.size == 0:
        return np.zeros(0)
    key = bucket * n_products + product
    order = np.argsort(key, kind="stable")
    k, p, r = key[order], price[order], ref[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sizes = np.diff(np.r_[starts, k.size])
    hi = np.maximum.reduceat(p, starts)
    lo = np.minimum.reduceat(p, starts)
    rel = (hi - lo) / r[starts]
    return rel[sizes >= 2]
