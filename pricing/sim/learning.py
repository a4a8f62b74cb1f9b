"""The learning loop in the simulator: does an engine that retrains from its own logs recover from a market shift?

One world (``Scenario``, e.g. ``market-shift``: sensitivity up by half and competitors 15% cheaper from its day) is
replayed under four pricers, with the same shoppers and the same random draws (common random numbers):

* **frozen**: the job's scoring stage (``pricing.sim.engine``) with the first model, trained on the history before
  the evaluation (the historical policy's logs, as ``pricing backfill`` builds them) and never replaced;
  a Thompson arm starts from the same history's bootstrap ensemble (``[learn] ensemble_size``), so that it explores
  from its first request;
* **learning**: the same start, but every ``cycle_hours`` of simulated time the loop runs one cycle of
  ``pricing learn``'s own code (``pricing.learn.loop.run_cycle``) on the engine's own logs: the priced events and
  the purchases so far are written into an archive in the archive's layout, the cycle builds the training set
  (Beam), trains a challenger, gates it off-policy against the served model and promotes it when it wins; the
  stage's registry watcher then swaps it in, as in the job. One such arm per exploration setting (``[policy]``:
  epsilon-greedy, or Thompson sampling with ``[learn] ensemble_size`` > 1);
* **oracle**: knows every shopper's true demand (``OraclePolicy``), under the same guardrails.

Each day's profit is the *expected* profit of the prices served, at the true purchase probabilities
(``Outcome.probability x (price - unit cost)``), so that days compare without the purchases' own noise; the
realised profit is reported beside it.

Limits, stated: the engine's features come from the backfill of the world's history (the historical policy's
behaviour, as in ``pricing.sim.engine``), so behaviour-derived features do not react to the engine's own prices;
the market's features (list price, cost, stock, competitors) are the replay's. The first days of the world are
the history the first model learns from; they are priced by the historical policy in every arm.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pricing import archive_layout
from pricing.archive_layout import TimeRange
from pricing.config import Settings, prepare_pseudonym_key
from pricing.sim.engine import EngineStage, backfill
from pricing.sim.history import generate_history
from pricing.sim.market import build_market
from pricing.sim.policies import OraclePolicy
from pricing.sim.scenario import Scenario
from pricing.sim.world import DAY_MS, World, build_world, replay
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.registry import Registry
from pricing_udfs.scoring import ScoringConfig, ScoringStage
from pricing_udfs.serde import Contract

HOUR_MS = 3_600_000


@dataclass
class ArmResult:
    name: str
    expected_profit_by_day: list[float]
    realised_profit_by_day: list[float]
    promotions: list[str] = field(default_factory=list)  # per cycle: the line pricing learn printed
    models_by_day: list[str] = field(default_factory=list)


class LearningPricer:
    """A pricer for ``replay``: the job's scoring stage around a registry it watches, learning every cycle."""

    def __init__(self, world: World, features: np.ndarray, registry: Registry, settings: Settings, archive: Path, *,
                 eval_start_ms: int, cycle_ms: int | None, window_ms: int, fallback: Any,
                 progress: TextIO | None = None) -> None:  # fmt: skip
        self.world, self.registry, self.settings, self.archive = world, registry, settings, archive
        self.eval_start_ms, self.cycle_ms, self.window_ms = eval_start_ms, cycle_ms, window_ms
        self.fallback = fallback  # prices the history days before the evaluation
        self.progress = progress
        config = ScoringConfig(registry_dir=str(registry.root), policy=settings.policy, watch_interval_s=0.001,
                               default_price_minor=settings.job.default_price_minor, currency=settings.job.currency)
        self.stage = ScoringStage(config)
        self.stage.open()
        self.engine = EngineStage(self.stage, features, seed=world.market.scenario.seed)
        self.next_cycle_ms = eval_start_ms + cycle_ms if cycle_ms else None
        self.pseudonym = prepare_pseudonym_key(settings).pseudonymiser()
        self.lines: list[str] = []
        self._pending: list[tuple[pd.DataFrame, pd.DataFrame]] = []  # the step just priced: requests, decisions
        self._priced: list[dict[str, Any]] = []
        self._bought: list[dict[str, Any]] = []
        self._flushes = 0
        v = world.views
        self._purchase_time = v.time_ms + v.cart_delay_ms + v.purchase_delay_ms

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        now = int(batch["state_time_ms"].iloc[0])
        if now < self.eval_start_ms:
            self._pending = []
            return self.fallback(batch)
        if self.next_cycle_ms is not None and now >= self.next_cycle_ms:
            self._learn(now)
            while self.next_cycle_ms <= now:
                self.next_cycle_ms += self.cycle_ms
        requests = self.engine.requests(batch)
        decisions = self.stage.decide(requests)
        self._pending = [(requests, decisions)]
        return decisions["price_minor"].to_numpy(dtype=np.int64)

    def on_step(self, a: int, b: int, prices: np.ndarray, bought: np.ndarray) -> None:
        if not self._pending:
            return
        requests, d = self._pending.pop()
        features = requests[list(FEATURE_SPEC.names)].to_numpy(dtype=np.float64)
        users = requests["user_id"].to_numpy(object)
        for i in range(b - a):
            self._priced.append({
                "request_id": requests["request_id"].iat[i], "user_id": self.pseudonym(users[i]),
                "product_id": requests["product_id"].iat[i], "price_minor": int(prices[i]),
                "reference_price_minor": int(d["reference_price_minor"].iat[i]), "currency": "EUR",
                "model_version": str(d["model_version"].iat[i]),
                "expected_conversion": float(np.nan_to_num(d["expected_conversion"].iat[i])),
                "expected_profit_minor": int(d["expected_profit_minor"].iat[i]), "reason_codes": list(d["reason_codes"].iat[i]),
                "fallback_used": bool(d["fallback_used"].iat[i]), "request_time": int(requests["event_time"].iat[i]),
                "priced_time": int(requests["event_time"].iat[i]) + 5, "feature_spec_version": FEATURE_SPEC.version,
                "features": features[i].tolist(), "explored": bool(d["explored"].iat[i]),
                "propensity": None if np.isnan(d["propensity"].iat[i]) else float(d["propensity"].iat[i]),
                "experiment_id": None, "arm": None})  # fmt: skip
            if bought[i]:
                view = a + i
                self._bought.append({
                    "event_id": f"buy-{view}", "user_id": str(users[i]), "product_id": requests["product_id"].iat[i],
                    "type": "purchase", "price_seen_minor": int(prices[i]), "currency": "EUR", "quantity": 1,
                    "session_id": "s", "event_time": int(self._purchase_time[view]),
                    "request_id": requests["request_id"].iat[i]})  # fmt: skip

    def _flush(self, now_ms: int) -> None:
        """The logs so far into the archive (what the archive job would hold): purchases only once they happened."""
        topics = self.settings.kafka.topics
        due = [r for r in self._bought if r["event_time"] < now_ms]
        self._bought = [r for r in self._bought if r["event_time"] >= now_ms]
        self._flushes += 1
        for topic, contract, records, time_field in ((topics.priced.name, Contract.PRICED_EVENT, self._priced,
                                                      "request_time"),
                                                     (topics.behaviour.name, Contract.BEHAVIOUR_EVENT, due, "event_time")):
            by_hour: dict[Path, list[dict[str, Any]]] = {}
            for r in records:
                by_hour.setdefault(archive_layout.partition_path(self.archive, topic, r[time_field]), []).append(r)
            for folder, rows in by_hour.items():
                folder.mkdir(parents=True, exist_ok=True)
                serde.write_container(folder / f"part-{self._flushes}", contract, rows)
        self._priced = []

    def _learn(self, now_ms: int) -> None:
        from pricing.learn.loop import LearnError, run_cycle

        self._flush(now_ms)
        t0 = time.perf_counter()
        try:
            result = run_cycle(self.archive, self.registry, self.settings, TimeRange(now_ms - self.window_ms, now_ms),
                               progress=None)  # fmt: skip
            line = result.line()
        except LearnError as exc:
            line = f"skipped: {exc}"
        day = (now_ms - self.eval_start_ms) / DAY_MS
        self.lines.append(f"day {day:4.2f}: {line}")
        if self.progress is not None:
            print(f"  [{time.perf_counter() - t0:5.1f} s] day {day:4.2f}: {line}", file=self.progress, flush=True)
        assert self.stage.watcher is not None
        self.stage.watcher.look_now(timeout_s=120)  # the next batch serves what was promoted, as the job would

    def close(self) -> None:
        self.stage.close()


def daily(world: World, outcome: Any, eval_start_ms: int, days: int) -> tuple[list[float], list[float]]:
    """Expected (at the true probabilities) and realised profit per evaluation day, in major units."""
    cost = world.at_views(world.unit_cost)
    margin = outcome.price - cost
    day = (world.views.time_ms - eval_start_ms) // DAY_MS
    expected, realised = [], []
    for d in range(days):
        m = day == d
        expected.append(float((outcome.probability[m] * margin[m]).sum()) / 100)
        realised.append(float((outcome.purchased[m] * margin[m]).sum()) / 100)
    return expected, realised


@dataclass(frozen=True)
class LoopSetup:
    scenario: Scenario
    history_days: int  # the world's first days: the first model's training history (historical policy)
    eval_days: int
    cycle_hours: float
    window_hours: float
    epochs: int = 8


def first_model(scenario: Scenario, days: int, history_days: int, registry: Registry, *, epochs: int,
                progress: TextIO | None, ensemble_sizes: tuple[int, ...] = (1,)) -> tuple[np.ndarray, dict[int, str]]:  # fmt: skip
    """The backfilled features of every view of the world, and the first model trained on the history's days
    (published to ``registry``, the single one promoted), one per ensemble size the arms need (Thompson sampling
    explores only with an ensemble)."""
    from pricing.training import train

    history = generate_history(scenario, days=days, progress=None)
    features, table = backfill(scenario, days=days, history=history)
    cut = scenario.start_time_ms + history_days * DAY_MS
    first = table.filter(pa.array(table.column("event_time").to_numpy() < cut))
    versions: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="pricing-first-") as tmp:
        pq.write_table(first.drop(["view_index"]), Path(tmp) / "rows.parquet")
        for size in sorted(set(ensemble_sizes) | {1}):
            trained = train(tmp, seed=0, epochs=epochs, out_dir=Path(tmp) / f"model-{size}", progress=None,
                            ensemble_size=size)  # fmt: skip
            versions[size] = registry.publish(trained.model_dir, **trained.registry_metadata(),
                                              promote=size == 1).version  # fmt: skip
    if progress is not None:
        print(f"first model(s) {versions}: trained on {first.num_rows:,} history rows before day {history_days}",
              file=progress, flush=True)  # fmt: skip
    return features, versions


def run(setup: LoopSetup, arms: dict[str, Settings], work: Path, *, progress: TextIO | None = sys.stdout) -> list[ArmResult]:
    """The frozen model, one learning arm per entry of ``arms`` (name -> settings: [policy] and [learn]) and the
    oracle over ``setup``'s evaluation days; every arm starts from the same first model."""
    sc = setup.scenario
    days = setup.history_days + setup.eval_days
    market = build_market(sc)
    world = build_world(market, days=days)
    eval_start = sc.start_time_ms + setup.history_days * DAY_MS
    seed_registry = Registry(work / "first-model")
    sizes = tuple(a.learn.ensemble_size for a in arms.values())
    features, firsts = first_model(sc, days, setup.history_days, seed_registry, epochs=setup.epochs,
                                   progress=progress, ensemble_sizes=sizes)  # fmt: skip

    def historical(batch: pd.DataFrame) -> np.ndarray:  # the days before the evaluation: the list price, every arm
        return batch["reference_price_minor"].to_numpy(dtype=np.int64)

    results = []

    def pricer_arm(name: str, settings: Settings, learn: bool) -> ArmResult:
        registry = Registry(work / name / "models")
        first = firsts[settings.learn.ensemble_size if learn else 1]  # frozen: the single first model
        registry.publish(seed_registry.model_dir(first), **_metadata(seed_registry, first), promote=True)
        pricer = LearningPricer(world, features, registry, settings, work / name / "archive", eval_start_ms=eval_start,
                                cycle_ms=int(setup.cycle_hours * HOUR_MS) if learn else None,
                                window_ms=int(setup.window_hours * HOUR_MS), fallback=historical,
                                progress=progress)  # fmt: skip
        try:
            outcome = replay(world, pricer.price, on_step=pricer.on_step, label=name)
        finally:
            pricer.close()
        expected, realised = daily(world, outcome, eval_start, setup.eval_days)
        return ArmResult(name, expected, realised, pricer.lines)

    base = next(iter(arms.values()))
    if progress is not None:
        print("frozen first model ...", file=progress, flush=True)
    results.append(pricer_arm("frozen", base, learn=False))
    for name, settings in arms.items():
        if progress is not None:
            print(f"learning ({name}) ...", file=progress, flush=True)
        results.append(pricer_arm(name, settings, learn=True))
    oracle = OraclePolicy(market, guardrails=base.policy.guardrails)

    def oracle_price(batch: pd.DataFrame) -> np.ndarray:
        if int(batch["state_time_ms"].iloc[0]) < eval_start:
            return historical(batch)
        return oracle.price(batch)

    outcome = replay(world, oracle_price, label="oracle")
    results.append(ArmResult("oracle", *daily(world, outcome, eval_start, setup.eval_days)))
    return results


def _metadata(registry: Registry, version: str) -> dict[str, Any]:
    m = registry.manifest(version)
    return {"feature_spec_version": m.feature_spec_version, "training_window": m.training_window,
            "metrics": m.metrics, "trust_region": m.trust_region}
