"""The learning loop: from the archive's serving logs to a judged, recorded and (when it wins) promoted model.

One cycle (:func:`run_cycle`), for an event-time range of the archive (``pricing.archive_layout``):

1. list the archived priced events (``[kafka.topics.priced]``) in the range, and the behaviour events
   (``[kafka.topics.behaviour]``) in the range extended by the attribution window, so a purchase just after the
   range still labels its offer (``jobs.training_set.serving_archive_files``; the archive is a folder or a URI);
2. build the training set with ``jobs.training_set.run_from_serving_logs`` (Beam; the purchases' user ids become
   the job's pseudonyms, as the priced events carry them) in a scratch folder: rows for the priced events whose
   request time lies in the range;
3. split by time: the newest ``[learn] holdout_fraction`` of the rows is the gate's holdout, never trained on;
   the challenger is trained on the older rows (``pricing.training.train_on``, which holds out its own newest
   slice for early stopping, calibration and its metrics);
4. publish the challenger unpromoted; judge it against the registry's ``latest`` (the champion) on the holdout
   (``pricing.learn.gate.judge``); record the decision, promoted or not (``Registry.record_evaluation``); promote
   when the gate says so and ``latest`` is still the champion it was judged against (the job hot-swaps ``latest``).

Clear errors, as :class:`LearnError` (a ``ValueError``), before anything is trained when the range holds no
archived priced or behaviour events, fewer than ``[learn] min_rows`` labelled rows, or fewer than ``[learn]
min_holdout_rows`` holdout rows with a propensity. :func:`run_every` repeats cycles (``pricing learn --every``),
one progress line per cycle, until Ctrl-C; a cycle that fails for one of those reasons is reported and skipped.
Interrupted between publishing and recording, a cycle leaves an unpromoted version without a decision.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from pricing.archive_layout import TimeRange
from pricing.config import Settings
from pricing.learn.gate import Contestant, GateDecision, GateError, LoggedDecisions, judge
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.model.registry import Registry, RegistryError

class LearnError(ValueError):
    """A cycle cannot run on what the archive holds; the message says what is missing."""


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did: the challenger it published, the champion it was judged against, the decision."""

    challenger: str
    champion: str | None
    promoted: bool
    decision: GateDecision
    rows: int  # labelled rows in the range
    train_rows: int
    holdout_rows: int
    seconds: float
    note: str = ""  # e.g. why a winning challenger was not promoted after all

    def line(self) -> str:
        verdict = "promoted" if self.promoted else "refused" if not self.decision.promote else "not promoted"
        against = f"over {self.champion}" if self.champion else "(no champion)"
        c = self.decision.challenger
        figures = f"SNIPS {c.snips['value']:.2f} [{c.snips['low']:.2f}, {c.snips['high']:.2f}]"
        if self.decision.champion is not None:
            figures += f" vs {self.decision.champion.snips['value']:.2f}"
        failed = [r for r, ok in zip(self.decision.reasons, self.decision.checks.values()) if not ok]
        why = f"; {failed[0].removeprefix('FAILED: ')}" if failed and not self.promoted else ""
        note = f"; {self.note}" if self.note else ""
        return (f"{self.challenger} {verdict} {against}: {figures}; {self.rows:,} rows ({self.train_rows:,} trained, "
                f"{self.holdout_rows:,} holdout) in {self.seconds:.0f} s{why}{note}")  # fmt: skip


def describe_range(r: TimeRange) -> str:
    def fmt(ms: int | None, open_: str) -> str:
        return open_ if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    return f"{fmt(r.since_ms, 'the beginning')} .. {fmt(r.until_ms, 'now')}"


def run_cycle(archive: Path | str, registry: Registry, settings: Settings, time_range: TimeRange, *,
              spec: FeatureSpec = FEATURE_SPEC, progress: TextIO | None = sys.stdout) -> CycleResult:  # fmt: skip
    """One cycle of the loop (module docstring); ``[learn]`` settings from ``settings``."""
    from jobs.training_set import DEFAULT_ATTRIBUTION_WINDOW_MS, run_from_serving_logs, serving_archive_files
    from pricing.config import prepare_pseudonym_key
    from pricing.training import TrainConfig, load_training_set, train_on

    t0 = time.perf_counter()
    learn = settings.learn
    topics = settings.kafka.topics
    try:
        priced, behaviour = serving_archive_files(archive, topics.priced.name, topics.behaviour.name, time_range,
                                                  attribution_window_ms=DEFAULT_ATTRIBUTION_WINDOW_MS)  # fmt: skip
    except FileNotFoundError as exc:
        raise LearnError(str(exc)) from None
    _say(progress, f"{describe_range(time_range)}: {len(priced)} priced-event and {len(behaviour)} behaviour-event "
                   f"file(s) in {archive}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pricing-learn-") as scratch:
        summary = run_from_serving_logs(priced, behaviour, Path(scratch) / "training-set",
                                        attribution_window_ms=DEFAULT_ATTRIBUTION_WINDOW_MS,
                                        privacy=prepare_pseudonym_key(settings), rows_range=time_range,
                                        show_progress=progress is not None)  # fmt: skip
        if summary.rows == 0:
            raise LearnError(f"the priced events of {describe_range(time_range)} gave no training rows "
                             "(none logged its feature vector)")  # fmt: skip
        try:
            rows = load_training_set(Path(scratch) / "training-set", spec=spec, progress=progress)
        except ValueError as exc:
            raise LearnError(str(exc)) from None
        if len(rows) < learn.min_rows:
            raise LearnError(f"{len(rows):,} labelled rows in {describe_range(time_range)}; a challenger needs at "
                             f"least {learn.min_rows:,} ([learn] min_rows): widen the range (--last, --since)")
        n_hold = int(round(len(rows) * learn.holdout_fraction))
        train_rows, holdout_rows = rows.take(slice(0, len(rows) - n_hold)), rows.take(slice(len(rows) - n_hold, None))
        holdout = LoggedDecisions.of(holdout_rows, spec)
        usable = int(holdout.usable().sum())
        if usable < learn.min_holdout_rows:
            raise LearnError(
                f"{usable:,} of the {n_hold:,} holdout rows carry a propensity (and a list price and unit cost); "
                f"the gate needs {learn.min_holdout_rows:,} ([learn] min_holdout_rows). Priced events log one from "
                "PricedEvent v3 on, when the model (not the fallback) priced them: run the job with a model and "
                "[policy] exploration_rate > 0, or widen the range")  # fmt: skip
        config = TrainConfig(seed=learn.seed, epochs=learn.epochs, ensemble_size=learn.ensemble_size)
        try:
            trained = train_on(train_rows, config=config, out_dir=Path(scratch) / "model", spec=spec,
                               progress=progress)  # fmt: skip
        except ValueError as exc:  # too few rows or purchases for the training's own slices
            raise LearnError(f"training the challenger failed: {exc}") from None
        metadata = trained.registry_metadata()
        data = {"archive": str(archive), "since_ms": time_range.since_ms, "until_ms": time_range.until_ms,
                "rows": len(rows), "train_rows": len(train_rows), "holdout_rows": len(holdout_rows),
                "training_set": summary.counts}  # fmt: skip
        metadata["extra"] = {**metadata["extra"], "learn": data}
        manifest = registry.publish(trained.model_dir, **metadata)
    _say(progress, f"published {manifest.version} (not promoted); judging it on {len(holdout_rows):,} holdout rows")
    challenger = _contestant(registry, manifest.version, settings)
    champion_version = registry.latest_version()
    champion, note = None, ""
    if champion_version is not None:
        champion_manifest = registry.manifest(champion_version)
        if champion_manifest.feature_spec_version != spec.version:
            note = (f"champion {champion_version} reads {champion_manifest.feature_spec_version}, the logs hold "
                    f"{spec.version}: judged as with no champion")  # fmt: skip
            champion_version = None
        else:
            champion = _contestant(registry, champion_version, settings)
    decision = judge(holdout, challenger, champion, settings=settings)
    record = {**decision.to_dict(), "data": data, **({"note": note} if note else {})}
    registry.record_evaluation(manifest.version, record)
    promoted = False
    if decision.promote:
        if registry.latest_version() != champion_version:
            note = (f"latest changed to {registry.latest_version()} while the gate judged against "
                    f"{champion_version}: not promoted")  # fmt: skip
        else:
            c = decision.challenger
            registry.promote(manifest.version, evidence={
                "gate": "promote", "against": champion_version, "snips": c.snips["value"], "dr": c.dr["value"],
                "snips_low": c.snips["low"], "dr_low": c.dr["low"], "log_loss": c.log_loss,
                "holdout_rows": decision.holdout["rows_used"]})  # fmt: skip
            promoted = True
    return CycleResult(challenger=manifest.version, champion=champion_version, promoted=promoted, decision=decision,
                       rows=len(rows), train_rows=len(train_rows), holdout_rows=len(holdout_rows),
                       seconds=time.perf_counter() - t0, note=note)  # fmt: skip


def run_every(interval_ms: int, cycle: Callable[[], CycleResult], *, out: TextIO = sys.stdout,
              sleep: Callable[[float], Any] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> int:  # fmt: skip
    """Run ``cycle`` every ``interval_ms`` (from one cycle's start to the next's) until Ctrl-C; one line per cycle.
    A cycle that fails for want of data (LearnError, GateError, RegistryError) is reported and the loop goes on;
    any other error stops it. Returns the number of cycles started."""
    started = 0
    try:
        while True:
            started += 1
            t0 = clock()
            try:
                line = cycle().line()
            except (LearnError, GateError, RegistryError) as exc:
                line = f"skipped: {exc}"
            wait = max(0.0, interval_ms / 1000 - (clock() - t0))
            print(f"cycle {started} ({_now()}): {line}; next in {wait:.0f} s", file=out, flush=True)
            sleep(wait)
    except KeyboardInterrupt:
        print(f"stopped (Ctrl-C) after {started} cycle(s)", file=out, flush=True)
    return started


def _contestant(registry: Registry, version: str, settings: Settings) -> Contestant:
    from pricing_udfs.model.serving import load_model

    # TensorFlow's own thread defaults: this is a batch process (training ran in it already), not a pricing worker
    model = load_model(registry.model_dir(version), device=settings.models.device, intra_op_threads=0,
                       inter_op_threads=0)  # fmt: skip
    return Contestant(version=version, model=model, trust_region=registry.manifest(version).trust_region)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(progress: TextIO | None, line: str) -> None:
    if progress is not None:
        print(line, file=progress, flush=True)
