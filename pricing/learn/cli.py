"""``pricing learn``: train a challenger on the archive's serving logs, gate it against ``latest``, record the
decision in the registry, promote when it wins (``pricing.learn.loop``); once, or every ``--every``.

::

    pricing learn --archive DIR                          # the last 24 h, one cycle
    pricing learn --archive DIR --since 2026-12-01 --until 2026-12-02
    pricing learn --archive DIR --last 7d --every 6h     # a cycle every 6 h over the last 7 days, until Ctrl-C

Thresholds and training settings come from ``[learn]`` (``pricing.config.LearnSettings``); the flags override
the holdout fraction and the epochs. Errors (nothing archived in the range, too few rows, no propensities) print
one ``pricing: error:`` line and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pricing.config import Settings


def register(sub: Any) -> None:
    learn = sub.add_parser(
        "learn",
        help="train a challenger on the archived serving logs, judge it off-policy against latest, promote if it wins",
        description="Reads the archive's priced and behaviour events in the range, builds the training set, trains a "
        "challenger on all but the newest rows, publishes it, and judges it against the registry's latest on the "
        "newest rows (SNIPS and doubly robust off-policy values, log-loss, calibration); records the decision in "
        "the registry (pricing models show VERSION) and promotes the challenger when it wins.",
    )
    learn.add_argument("--archive", required=True, metavar="DIR",
                       help="the archive's root: a folder or a URI such as s3://bucket/prefix "
                       "(<DIR>/<topic>/dt=YYYY-MM-DD/hour=HH/*.avro)")
    learn.add_argument("--registry", type=Path, default=None, metavar="DIR",
                       help="registry folder (default: [models] registry_dir, else <state_dir>/models)")
    learn.add_argument("--last", default=None, metavar="DURATION",
                       help="the range: this long back from --until or now (e.g. 24h, 7d; default 24h)")
    learn.add_argument("--since", default=None, metavar="TIME", help="range start, ISO-8601 or epoch ms (inclusive)")
    learn.add_argument("--until", default=None, metavar="TIME", help="range end, ISO-8601 or epoch ms (exclusive)")
    learn.add_argument("--holdout-fraction", type=float, default=None, metavar="F",
                       help="the newest share of rows the gate judges on, never trained on (default [learn], 0.2)")
    learn.add_argument("--epochs", type=int, default=None, metavar="N",
                       help="at most this many training epochs (default [learn] epochs)")
    learn.add_argument("--every", default=None, metavar="DURATION",
                       help="repeat: a cycle every DURATION (e.g. 6h) over the moving --last window, until Ctrl-C")
    learn.set_defaults(func=_learn)


def _learn(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.archive_layout import TimeRange, parse_duration_ms
    from pricing.config import LearnSettings, registry_dir
    from pricing.learn.loop import run_cycle, run_every
    from pricing.models_cli import describe_gate
    from pricing_udfs.model.registry import Registry

    overrides = {k: v for k, v in (("holdout_fraction", args.holdout_fraction), ("epochs", args.epochs))
                 if v is not None}  # fmt: skip
    learn = LearnSettings(**{**settings.learn.model_dump(), **overrides})  # validated like the file's values
    settings = settings.model_copy(update={"learn": learn})
    last = args.last if args.last is not None or args.since is not None else "24h"
    interval = None
    if args.every is not None:
        interval = parse_duration_ms(args.every)
        if args.since is not None or args.until is not None:
            raise ValueError("--every moves the window with the clock: give --last (and no --since or --until)")
    TimeRange.of(args.since, args.until, last)  # a bad range fails before anything runs
    registry = Registry(args.registry or registry_dir(settings))

    def cycle() -> Any:
        return run_cycle(args.archive, registry, settings, TimeRange.of(args.since, args.until, last))

    if interval is None:
        result = cycle()
        print("\n".join(describe_gate(result.decision.to_dict())))
        print(result.line())
        return 0
    print(f"pricing learn: a cycle every {args.every} over the last {last}; Ctrl-C stops", file=sys.stdout, flush=True)
    run_every(interval, cycle)
    return 0
