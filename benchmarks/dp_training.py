"""What differential privacy per user costs the demand model: log-loss, AUC and offline profit at several epsilons.

Run by hand (minutes on 2 cores; about half of it the evaluation's replays):

    .venv/bin/python benchmarks/dp_training.py --out benchmarks/dp_training_2026-12-05.md

1. The scenario's history (``pricing simulate history``) and its backfill (``pricing backfill``, the job's
   feature semantics) once: the training set, with every row's pseudonymous ``user_id``, and every view's
   served vector (``pricing.sim.engine.backfill``);
2. the demand model trained on it without DP and with ``--dp-epsilon`` each of ``--epsilons``
   (``pricing.training.train_on``, the same seed, epochs and holdout as ``pricing train``), each published to
   a registry of its own in ``--work``;
3. all of them evaluated on the same world as ``pricing evaluate --model VERSION`` evaluates one: the job's
   scoring stage around each version, beside the best static price and the oracle
   (``pricing.sim.evaluate.evaluate_policies``), in-sample (the same shoppers, counterfactual prices).

Log-loss and AUC are the test slice's (the newest 10 % of rows, as the training report's); profit is over the
best static price of the same replay, and its share of the oracle's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pricing.config import load_settings  # noqa: E402
from pricing.dp_training import DPConfig  # noqa: E402
from pricing.sim.engine import EngineStage, backfill, offline_stage, served_version  # noqa: E402
from pricing.sim.evaluate import evaluate_policies  # noqa: E402
from pricing.sim.scenario import get_scenario  # noqa: E402
from pricing.training import TrainConfig, load_training_set, train_on  # noqa: E402
from pricing_udfs.features import FEATURE_SPEC  # noqa: E402
from pricing_udfs.model.registry import Registry  # noqa: E402
from pricing_udfs.model.serving import configure_threads  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--days", type=int, default=7, help="days of history, trained and evaluated on (default 7)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[16.0, 4.0, 1.0])
    parser.add_argument("--seed", type=int, default=7, help="training seed (default 7, as the README's runs)")
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
            config = TrainConfig(seed=args.seed, epochs=args.epochs, dp=None if epsilon is None else DPConfig(epsilon))
            print(f"--- training {label}", file=sys.stderr)
            t0 = time.perf_counter()
            trained = train_on(data, config=config, out_dir=work / f"model-{len(runs)}", progress=sys.stderr)
            seconds = time.perf_counter() - t0
            manifest = registry.publish(trained.model_dir, **trained.registry_metadata())
            served = served_version(registry, manifest.version, device=settings.models.device, spec=FEATURE_SPEC)
            stage = offline_stage(served, settings.policy, default_price_minor=settings.job.default_price_minor,
                                  currency=settings.job.currency, spec=FEATURE_SPEC)  # fmt: skip
            runs.append((label, trained, seconds, EngineStage(stage, features, seed=scenario.seed, name=label)))

        t0 = time.perf_counter()
        evaluation = evaluate_policies(scenario, days=args.days, policies={r[0]: r[3] for r in runs},
                                       guardrails=settings.policy.guardrails, progress=sys.stderr)  # fmt: skip
        eval_seconds = time.perf_counter() - t0
        for run in runs:
            run[3].stage.close()

    best = evaluation.result("best-static").profit_minor
    oracle = evaluation.result("oracle").profit_minor
    m0 = runs[0][1].metrics
    lines = [
        f"Scenario `{scenario.name}` (seed {scenario.seed}), {args.days} days: {int(m0['train_rows'] + m0['calibration_rows'] + m0['test_rows']):,} "
        f"training rows of {users:,} users; trained on the oldest {int(m0['train_rows']):,}, scored on the newest "
        f"{int(m0['test_rows']):,}; training seed {args.seed}, at most {args.epochs} epochs (early stopping). "
        f"Profit: in-sample replay of the same {args.days} days, the job's scoring stage around each version; the "
        f"oracle earns {oracle / max(best, 1) - 1:+.1%} over the best static price ({evaluation.result('best-static').name}).",
        "",
        "| model | epsilon (per user) | delta | noise multiplier | steps run / accounted | log-loss | AUC | "
        "profit over best static | of the oracle's profit | training |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, trained, seconds, engine in runs:
        m = trained.metrics
        profit = evaluation.result(label).profit_minor
        if trained.privacy is None:
            privacy = "| none | | | |"
        else:
            p = trained.privacy
            privacy = (f"| {p.epsilon:.3f} | {p.delta:.2e} | {p.noise_multiplier:.3f} | "
                       f"{p.steps_run:,} / {p.steps:,} |")  # fmt: skip
        lines.append(f"| {label} {privacy} {m['log_loss']:.4f} | {m['auc']:.3f} | {profit / max(best, 1) - 1:+.1%} | "
                     f"{profit / max(oracle, 1):.1%} | {seconds:.0f} s |")  # fmt: skip
    lines.append(f"| base rate ({m0['base_rate']:.4f}) | | | | | {m0['base_rate_log_loss']:.4f} | 0.500 | | | |")
    p = next((r[1].privacy for r in runs if r[1].privacy is not None), None)
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
