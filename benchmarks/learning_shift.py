"""The learning loop against a market shift, offline (``pricing.sim.learning``): daily profit of the frozen first
model, the engine retraining every few simulated hours through ``pricing learn``'s own code (one arm per
exploration setting), and the oracle. Writes a Markdown report and the cycles' lines. Run by hand:

    .venv/bin/python benchmarks/learning_shift.py --out benchmarks/learning_shift_$(date +%F).md
    .venv/bin/python benchmarks/learning_shift.py --users 1000 --products 40 --eval-days 3   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

from pricing.config import load_settings
from pricing.sim.learning import LoopSetup, run
from pricing.sim.scenario import get_scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="market-shift")
    parser.add_argument("--users", type=int, default=4_000)
    parser.add_argument("--products", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--history-days", type=int, default=4, help="days the first model learns from")
    parser.add_argument("--eval-days", type=int, default=7)
    parser.add_argument("--shift-day", type=float, default=3.0, help="evaluation day the shift starts")
    parser.add_argument("--cycle-hours", type=float, default=6.0)
    parser.add_argument("--window-hours", type=float, default=24.0, help="each cycle learns from this much of the logs")
    parser.add_argument("--exploration-rate", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--arms", nargs="+", default=["epsilon-greedy", "thompson"],
                        help="learning arms: epsilon-greedy and/or thompson")
    parser.add_argument("--ensemble", type=int, default=5, help="Thompson's bootstrap ensemble size")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report")
    args = parser.parse_args(argv)
    base = get_scenario(args.scenario)
    shift = base.shift.model_copy(update={"start_day": args.history_days + args.shift_day}) if base.shift else None
    scenario = base.with_overrides(n_users=args.users, n_products=args.products, seed=args.seed,
                                   shift=shift.model_dump() if shift else None)  # fmt: skip
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="pricing-learning-") as tmp:
        arms = {}
        for arm in args.arms:
            policy = {"exploration_rate": args.exploration_rate} if arm == "epsilon-greedy" else {
                "exploration": "thompson"}
            learn = {"epochs": args.epochs, **({"ensemble_size": args.ensemble} if arm == "thompson" else {})}
            arms[arm] = load_settings(state_dir=Path(tmp) / "state", policy=policy, learn=learn)
        setup = LoopSetup(scenario, args.history_days, args.eval_days, args.cycle_hours, args.window_hours,
                          epochs=args.epochs)  # fmt: skip
        results = run(setup, arms, Path(tmp), progress=sys.stdout)
    minutes = (time.time() - t0) / 60
    oracle = results[-1].expected_profit_by_day
    lines = [f"# The learning loop against a market shift ({dt.date.today()})", "",
             f"Scenario `{args.scenario}` ({args.users:,} shoppers, {args.products} products, seed {args.seed}): "
             f"shift on evaluation day {args.shift_day:g} (sensitivity x{scenario.shift.sensitivity_factor:g}, "
             f"competitors x{scenario.shift.competitor_factor:g}) " if scenario.shift else "no shift; ",
             f"first model trained on {args.history_days} days of history; a cycle every {args.cycle_hours:g} "
             f"simulated hours on the last {args.window_hours:g} h of the engine's own logs "
             f"(epsilon {args.exploration_rate:g}; Thompson: {args.ensemble} bootstrap models). One run on "
             f"{platform.machine()} / {platform.python_version()}, {minutes:.0f} min.", "",
             "Expected profit per day at the true purchase probabilities (major units), and its share of the oracle's:",
             "", "| day | " + " | ".join(r.name for r in results) + " |",
             "|---:|" + "---:|" * len(results)]
    for d in range(args.eval_days):
        cells = [f"{r.expected_profit_by_day[d]:,.0f} ({r.expected_profit_by_day[d] / oracle[d]:.0%})"
                 for r in results]  # fmt: skip
        mark = " (shift)" if scenario.shift and d == int(args.shift_day) else ""
        lines.append(f"| {d}{mark} | " + " | ".join(cells) + " |")
    lines += ["", "Realised profit per day (the purchases that happened):", "",
              "| day | " + " | ".join(r.name for r in results) + " |", "|---:|" + "---:|" * len(results)]
    for d in range(args.eval_days):
        lines.append(f"| {d} | " + " | ".join(f"{r.realised_profit_by_day[d]:,.0f}" for r in results) + " |")
    for r in results:
        if r.promotions:
            lines += ["", f"Cycles of `{r.name}`:", "", "```", *r.promotions, "```"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
