"""``pricing experiments report``: each arm of a live champion/challenger split from the archive, the always-valid
interval of their difference and a verdict (``pricing.experiments``); ``--apply`` promotes a winning challenger.

::

    pricing experiments report --archive DIR                 # [experiment] id, everything archived so far
    pricing experiments report --archive DIR --experiment e7 --last 3d --json report.json
    pricing experiments report --archive DIR --apply         # promote the challenger on a 'promote' verdict

Exit status: 0 for promote and keep, 3 for stop (the challenger loses money), so a scheduler can alert on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pricing.config import Settings

STOP_EXIT = 3


def register(sub: Any) -> None:
    experiments = sub.add_parser("experiments", help="live champion/challenger experiments").add_subparsers(
        metavar="ACTION")
    report = experiments.add_parser(
        "report", help="each arm's profit, revenue and conversion per request from the archive, with a verdict",
        description="Joins the experiment's archived priced events with the purchases that answer them and compares "
        "the arms per request, clustered by user, with always-valid (mixture-SPRT) intervals: promote, keep or stop.")
    report.add_argument("--archive", required=True, metavar="DIR", help="the archive's root: a folder or a URI")
    report.add_argument("--experiment", default=None, metavar="ID", help="default: [experiment] id")
    report.add_argument("--last", default=None, metavar="DURATION", help="this long back from --until or now")
    report.add_argument("--since", default=None, metavar="TIME", help="ISO-8601 or epoch ms (inclusive)")
    report.add_argument("--until", default=None, metavar="TIME", help="ISO-8601 or epoch ms (exclusive)")
    report.add_argument("--attribution-window-min", type=float, default=30.0, metavar="MIN",
                        help="a purchase counts for a price within this many minutes after it (default 30)")
    report.add_argument("--alpha", type=float, default=0.05, help="error rate of the intervals (default 0.05)")
    report.add_argument("--mixture-effect", type=float, default=0.05, metavar="R",
                        help="the relative profit difference the sequential test is tuned to (default 0.05)")
    report.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    report.add_argument("--registry", type=Path, default=None, metavar="DIR", help="default: [models] registry_dir")
    report.add_argument("--apply", action="store_true",
                        help="on 'promote', make the challenger's version latest (recorded with the report)")
    report.set_defaults(func=_report)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.archive_layout import TimeRange
    from pricing.config import prepare_pseudonym_key, registry_dir
    from pricing.experiments import compare, load_outcomes, write_json

    experiment_id = args.experiment or (settings.experiment.id if settings.experiment else None)
    if experiment_id is None:
        raise ValueError("name the experiment: --experiment ID, or [experiment] id in the settings")
    time_range = TimeRange.of(args.since, args.until, args.last)
    topics = settings.kafka.topics
    pseudonymiser = prepare_pseudonym_key(settings).pseudonymiser()
    outcomes, versions = load_outcomes(args.archive, topics.priced.name, topics.behaviour.name, experiment_id,
                                       time_range, attribution_window_ms=int(args.attribution_window_min * 60_000),
                                       pseudonymise=pseudonymiser)  # fmt: skip
    report = compare(outcomes, experiment_id, alpha=args.alpha, mixture_effect=args.mixture_effect,
                     challenger_versions=versions)  # fmt: skip
    print(report.text())
    if args.json is not None:
        write_json(report, args.json)
    if args.apply and report.verdict == "promote":
        from pricing_udfs.model.registry import Registry

        if len(versions) != 1:
            raise ValueError(f"the challenger arm was served by {versions or 'no model'}: promote one by hand "
                             "(pricing models promote VERSION)")
        registry = Registry(args.registry or registry_dir(settings))
        evidence = {"experiment": experiment_id, "verdict": report.verdict,
                    "profit": report.to_dict()["differences"][0]}  # fmt: skip
        registry.record_evaluation(versions[0], {"source": "experiment", **report.to_dict()})
        change = registry.promote(versions[0], evidence=evidence)
        print(f"promoted {change.latest} (was {change.previous}); end the experiment ([experiment]) to serve it to all")
    return STOP_EXIT if report.verdict == "stop" else 0
