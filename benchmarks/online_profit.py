"""Online check that the engine earns more than the list price from its first request, through the real job.

Each run is one ``make demo`` from an empty job (``pricing.demo.demo_once``): a fresh local broker, the
simulated week of ``default`` ending now written into the topics, the registry's model (trained on such a
week when there is none), the job started without state and warm-started from the topics, then the
closed-loop market simulator against it for ``--duration`` seconds: the first seconds of a fresh job.
Each run compares the expected profit of the engine's prices with that of the list price for the very
same shoppers, both at the simulator's true purchase probabilities, and reports its own 95% interval,
the fallbacks and the trust region's share. ``--intensity`` makes the live shoppers quieter or busier
than the week the model learned from (several values: one batch of runs each). Run by hand:

    .venv/bin/python benchmarks/online_profit.py --runs 5
    .venv/bin/python benchmarks/online_profit.py --runs 1 --intensity 0.1 10 30
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

from pricing.config import load_settings
from pricing.demo import demo_once

# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per intensity")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of live traffic per run")
    parser.add_argument("--intensity", type=float, nargs="+", default=[1.0], help="live shoppers' session rate x this")
    parser.add_argument("--rate", type=float, default=None, help="events/s as copies of the market (default one copy)")
    parser.add_argument("--seed-base", type=int, default=1_000, help="run i uses live seed seed_base + i")
    args = parser.parse_args(argv)
    settings = load_settings()
    print("| intensity | run | requests answered | fallbacks (reasons) | trust region | gain over list price | 95% interval |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | --- |")
    failed = 0
    for intensity in args.intensity:
        gains = []
        for i in range(args.runs):
            out = demo_once(settings, duration_s=args.duration, rate=args.rate, port=None, intensity=intensity,
                            seed=args.seed_base + i)  # fmt: skip
            failed += out.exit_code != 0
            r, c = out.report, out.counters
            uplift = r.profit_uplift()
            reasons = ", ".join(f"{k.removeprefix('fallback_')} {v}" for k, v in sorted(c.items()) if k.startswith("fallback_") and v)
            priced = c.get("requests_priced", 0)
            trust = f"{c.get('trust_narrowed', 0) / priced:.1%}" if priced else "n/a"
            gain, interval = ("n/a", "n/a") if uplift is None else (f"{uplift[0]:+.1%}", f"[{uplift[1]:+.1%}, {uplift[2]:+.1%}]")
            print(f"| {intensity:g} | {i + 1} | {r.answered} / {r.requests} | {c.get('fallbacks', 0)}"
                  f"{f' ({reasons})' if reasons else ''} | {trust} | {gain} | {interval} |", flush=True)  # fmt: skip
            if uplift is not None:
                gains.append(uplift[0])
        if len(gains) > 1:
            mean = statistics.fmean(gains)
            half = _T95.get(len(gains) - 1, 1.96) * statistics.stdev(gains) / math.sqrt(len(gains))
            print(f"intensity {intensity:g}: mean {mean:+.1%}, 95% t-interval [{mean - half:+.1%}, {mean + half:+.1%}] "
                  f"over {len(gains)} runs of {args.duration:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
