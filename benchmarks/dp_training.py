"""What differential privacy per user costs the demand model: log-loss, AUC and offline profit at several epsilons.

Run by hand (minutes on 2 cores; about half of it the evaluation's replays):

    .venv/bin/python benchmarks/dp_training.py --seeds 7 8 9 --out benchmarks/dp_training_2026-12-05.md

1. The scenario's history (``pricing simulate history``) and its backfill (``pricing backfill``, the job's
   feature semantics) once: the training set, with every row's pseudonymous ``user_id``, and every view's
   served vector (``pricing.sim.engine.backfill``);
2. the demand model trained on it without DP and with ``--dp-epsilon`` each of ``--epsilons``
   (``pricing.training.train_on``, the epochs and holdout of ``pricing train``) with each training seed of
   ``--seeds`` (the seed draws the initial weights, the batches and, under DP, the users sampled and the
   noise: ``DPConfig.noise_seed``, so that a run can be repeated; ``pricing train`` draws those from OS
   entropy), each published to a registry of its own in ``--work``;
3. all of them evaluated on the same world as ``pricing evaluate --model VERSION`` evaluates one: the job's
   scoring stage around each version, beside the best static price and the oracle
   (``pricing.sim.evaluate.evaluate_policies``), in-sample (the same shoppers, counterfactual prices).

Log-loss and AUC are the test slice's (the newest 10 % of rows, as the training report's); profit is over the
best static price of the same replay, and its share of the oracle's. The table gives the mean over the seeds
and, in brackets, the lowest and highest; every run follows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pricing.config import load_settings  # noqa: E402
from pricing.dp_training import DPConfig  # noqa: E402
from pricing.sim.engine import EngineStage, backfill, offline_stage, served_version  # noqa: E402
from pricing.sim.evaluate import evaluate_policies  # noqa: E402
from pricing.sim.scenario import get_scenario  # noqa: E402
from pricing.training import TrainConfig, TrainedModel, load_training_set, train_on  # noqa: E402
from pricing_udfs.features import FEATURE_SPEC  # noqa: E402
from pricing_udfs.model.registry import Registry  # noqa: E402
from pricing_udfs.model.serving import configure_threads  # noqa: E402


@dataclass
class Run:
    label: str  # "without DP", "epsilon 4"
    seed: int
    trained: TrainedModel
    seconds: float
    engine: EngineStage
    over_static: float = math.nan  # profit over the best static price's, minus 1
    of_oracle: float = math.nan  # share of the oracle's profit


def _span(values: list[float], fmt: str) -> str:
    """``mean [lowest, highest]``, or the one value."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(sum(values) / len(values), fmt)} [{format(min(values), fmt)}, {format(max(values), fmt)}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--days", type=int, default=7, help="days of history, trained and evaluated on (default 7)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[16.0, 4.0, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7], help="training seeds (default 7, as the README's runs)")
    parser.add_argument("--epochs", type=int, default=20, help="at most this many epochs (early stopping)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow's intra-op threads (default 2)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the rows and the registry (default temporary)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here too")
    args = parser.parse_args(argv)
    if any(not (e > 0 and math.isfinite(e)) for e in args.epsilons):
        parser.error("every epsilon must be a positive number")
    configure_threads(args.threads, 1)
    settings = load_settings()
    scenario = get_scenario(args.scenario)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as scratch:
        work = args.work or Path(scratch)
        t0 = time.perf_counter()
        features, table = backfill(scenario, days=args.days, progress=sys.stderr)
        rows_dir = work / "rows"
        rows_dir.mkdir(parents=True, exist_ok=False)
        pq.write_table(table.drop_columns(["view_index"]), rows_dir / "part-00000.parquet")
        data = load_training_set(rows_dir, progress=sys.stderr)
        users = len(set(table.column("user_id").to_pylist()))
        data_seconds = time.perf_counter() - t0

        registry = Registry(work / "registry")
        runs = []
        for epsilon in (None, *args.epsilons):
            label = "without DP" if epsilon is None else f"epsilon {epsilon:g}"
            for seed in args.seeds:
                dp = None if epsilon is None else DPConfig(epsilon, noise_seed=seed)  # repeatable, for a benchmark
                config = TrainConfig(seed=seed, epochs=args.epochs, dp=dp)
                name = f"{label}, seed {seed}"
                print(f"--- training {name}", file=sys.stderr)
                t0 = time.perf_counter()
                trained = train_on(data, config=config, out_dir=work / f"model-{len(runs)}", progress=sys.stderr)
                seconds = time.perf_counter() - t0
                manifest = registry.publish(trained.model_dir, **trained.registry_metadata())
                served = served_version(registry, manifest.version, device=settings.models.device, spec=FEATURE_SPEC)
                stage = offline_stage(served, settings.policy, default_price_minor=settings.job.default_price_minor,
                                      currency=settings.job.currency, spec=FEATURE_SPEC)  # fmt: skip
                runs.append(Run(label, seed, trained, seconds, EngineStage(stage, features, seed=scenario.seed, name=name)))

        t0 = time.perf_counter()
        evaluation = evaluate_policies(scenario, days=args.days, policies={r.engine.name: r.engine for r in runs},
                                       guardrails=settings.policy.guardrails, progress=sys.stderr)  # fmt: skip
        eval_seconds = time.perf_counter() - t0
        for run in runs:
            run.engine.stage.close()

    best = evaluation.result("best-static").profit_minor
    oracle = evaluation.result("oracle").profit_minor
    for run in runs:
        profit = evaluation.result(run.engine.name).profit_minor
        run.over_static, run.of_oracle = profit / max(best, 1) - 1, profit / max(oracle, 1)
    m0 = runs[0].trained.metrics
    seeds = ", ".join(str(s) for s in args.seeds)
    lines = [
        f"Scenario `{scenario.name}` (seed {scenario.seed}), {args.days} days: "
        f"{int(m0['train_rows'] + m0['calibration_rows'] + m0['test_rows']):,} training rows of {users:,} users; trained "
        f"on the oldest {int(m0['train_rows']):,}, scored on the newest {int(m0['test_rows']):,}; at most {args.epochs} "
        f"epochs (early stopping), training seeds {seeds}. Profit: in-sample replay of the same {args.days} days, the "
        f"job's scoring stage around each version; the oracle earns {oracle / max(best, 1) - 1:+.1%} over the best "
        f"static price ({evaluation.result('best-static').name}).",
        "",
        f"Mean over the {len(args.seeds)} seed(s) [lowest, highest]:",
        "",
        "| model | epsilon per user | log-loss | AUC | profit over best static | of the oracle's profit | training |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in dict.fromkeys(r.label for r in runs):
        group = [r for r in runs if r.label == label]
        eps = [r.trained.privacy.epsilon for r in group if r.trained.privacy is not None]
        lines.append(
            f"| {label} | {f'{max(eps):.3f}' if eps else ''} | {_span([r.trained.metrics['log_loss'] for r in group], '.4f')} | "
            f"{_span([r.trained.metrics['auc'] for r in group], '.3f')} | {_span([r.over_static for r in group], '+.1%')} | "
            f"{_span([r.of_oracle for r in group], '.1%')} | {_span([r.seconds for r in group], '.0f')} s |")  # fmt: skip
    lines.append(f"| base rate ({m0['base_rate']:.4f}) | | {m0['base_rate_log_loss']:.4f} | 0.500 | | | |")
    lines += ["", "Every run:", "",
              "| model | seed | epsilon | delta | noise multiplier | steps run / accounted | log-loss | AUC | "
              "profit over best static | of the oracle's |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in runs:
        m, p = r.trained.metrics, r.trained.privacy
        privacy = ("| | | | |" if p is None else
                   f"| {p.epsilon:.3f} | {p.delta:.2e} | {p.noise_multiplier:.3f} | {p.steps_run:,} / {p.steps:,} |")
        lines.append(f"| {r.label} | {r.seed} {privacy} {m['log_loss']:.4f} | {m['auc']:.3f} | {r.over_static:+.1%} | "
                     f"{r.of_oracle:.1%} |")  # fmt: skip
    p = next((r.trained.privacy for r in runs if r.trained.privacy is not None), None)
    if p is not None:
        lines += ["", f"DP settings (defaults of `pricing train --dp-epsilon`): clip norm {p.clip_norm:g}, about "
                      f"{p.units_per_step:,.0f} of {p.units:,} users a step (sampling rate {p.sampling_rate:.4f}), at most "
                      f"{p.max_rows_per_unit} rows of a user a step, delta = 1/number of users."]  # fmt: skip
    lines += ["", f"Run {dt.date.today().isoformat()}: history and backfill {data_seconds:.0f} s, evaluation "
                  f"{eval_seconds:.0f} s, {time.perf_counter() - started:.0f} s in all, TensorFlow intra-op threads "
                  f"{args.threads}."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
