"""``pricing backfill`` and ``pricing training-set`` make a training set (Beam, ``jobs/training_set.py``);
``pricing train`` trains the demand model on one and publishes it to the registry.

The late-event allowance and the dedupe window come from the job's settings (``[job]``),
so the backfill applies the rules the running job applies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pricing.config import Settings

_MINUTE_MS = 60_000


def register(sub: Any) -> None:
    backfill = sub.add_parser(
        "backfill",
        help="training set from event history (Avro files as `pricing simulate history` writes them)",
        description="For every price request, the feature vector the job would have served, the offered price "
        "and whether the user bought within the attribution window; Parquet (pricing.training_rows).",
    )
    source = backfill.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", type=Path, help="a history folder (`pricing simulate history --out`)")
    source.add_argument("--archive", type=Path, help="the archive (`pricing archive run`; [archive] path): the "
                        "requests of --since/--until/--last, with the context and purchases around them")
    _range(backfill)
    _common(backfill)
    backfill.set_defaults(func=_backfill)

    serving = sub.add_parser(
        "training-set",
        help="training set from serving logs: priced events joined with the purchases that answer them",
    )
    serving.add_argument("--priced", type=Path, nargs="+", help="PricedEvent Avro files or folders")
    serving.add_argument("--behaviour", type=Path, nargs="+", help="BehaviourEvent Avro files or folders")
    serving.add_argument("--archive", type=Path, help="read both from the archive instead (`pricing archive run`)")
    _range(serving)
    _common(serving)
    serving.set_defaults(func=_serving)


    train = sub.add_parser(
        "train",
        help="train the demand model on a training set and publish it to the model registry",
        description="Time-based holdout, deterministic for a seed; prints progress per epoch, then the metrics "
        "against the base rate and the calibration table, and publishes a new registry version.",
    )
    train.add_argument("--data", type=Path, required=True, help="training set folder (pricing backfill --out)")
    train.add_argument("--registry", type=Path, default=None, help="registry folder (default from [models])")
    train.add_argument("--promote", action="store_true", help="make the new version latest")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--epochs", type=int, default=20, help="at most this many epochs (early stopping)")
    train.add_argument("--ensemble", type=int, default=1, metavar="N",
                       help="a bootstrap ensemble of N networks, published as one version (for [policy] exploration = "
                       "'thompson'); default 1: a single network")  # fmt: skip
    train.add_argument("--threads", type=int, default=0, metavar="N",
                       help="TensorFlow's intra- and inter-op threads (0: its default, one per core); 1 makes a run "
                       "repeatable on one machine, whatever else runs beside it")  # fmt: skip
    train.add_argument("--scenario", default=None, metavar="NAME",
                       help="the simulator scenario the data came from: the evaluation report then compares the "
                       "model's price sensitivity and demand curves with the simulator's truth")
    dp = train.add_argument_group(
        "differential privacy (DP-SGD)",
        "per user: the epsilon bounds what the weights reveal about all of one user's rows (a row without a user "
        "is its own unit); the manifest and the report record epsilon, delta, noise, clipping and steps")
    dp.add_argument("--dp-epsilon", type=float, default=None, metavar="E",
                    help="train with DP-SGD to (E, delta)-DP per user (E > 0; smaller is more private, costs accuracy)")
    dp.add_argument("--dp-delta", type=float, default=None, metavar="D",
                    help="delta of the guarantee, 0 < D < 1 (default 1/number of users)")
    dp.add_argument("--dp-clip", type=float, default=None, metavar="C",
                    help="L2 bound on one user's summed gradient in a step (default 10)")
    train.set_defaults(func=_train)


def _range(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("time range (event time of the requests; UTC)")
    group.add_argument("--since", default=None, metavar="TIME", help="ISO-8601 (2026-12-05T10:00Z) or epoch ms")
    group.add_argument("--until", default=None, metavar="TIME", help="exclusive; ISO-8601 or epoch ms")
    group.add_argument("--last", default=None, metavar="DURATION", help="this much before --until (or now): 6h, 7d")


def _time_range(args: argparse.Namespace, command: str) -> Any:
    from pricing.archive_layout import TimeRange

    try:
        return TimeRange.of(args.since, args.until, args.last)
    except ValueError as exc:
        raise SystemExit(f"pricing {command}: {exc}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for the Parquet files")
    parser.add_argument("--attribution-window-min", type=float, default=30.0, metavar="MIN",
                        help="a purchase counts for an offer within this many minutes after it (default 30)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing training set in --out")
    parser.add_argument("--runner", default="DirectRunner", help="Beam runner (default DirectRunner)")


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.training_set import archive_files, run_backfill
    from pricing.config import prepare_pseudonym_key
    from pricing_udfs.serde import Contract

    time_range = _time_range(args, "backfill")
    attribution_ms = int(args.attribution_window_min * _MINUTE_MS)
    if args.archive is not None:
        topics = settings.kafka.topics
        names = {Contract.BEHAVIOUR_EVENT: topics.behaviour.name, Contract.MARKET_EVENT: topics.market.name,
                 Contract.PRICE_REQUEST: topics.requests.name, Contract.CATALOGUE_ENTRY: topics.catalogue.name}
        try:
            history: Any = archive_files(args.archive, names, time_range, attribution_window_ms=attribution_ms)
        except FileNotFoundError as exc:
            raise SystemExit(f"pricing backfill: {exc}") from None
    else:
        history = args.history
    summary = run_backfill(
        history, args.out, allowance_ms=settings.job.watermark_out_of_orderness_ms,
        attribution_window_ms=attribution_ms, dedupe_window_ms=settings.job.dedupe_window_ms, runner=args.runner,
        overwrite=args.overwrite, rows_range=time_range,
        privacy=prepare_pseudonym_key(settings),  # the history's shoppers as the job knows them
    )
    print(summary.text())
    return 0 if summary.rows else 1


def _serving(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.training_set import run_from_serving_logs, serving_archive_files
    from pricing.config import prepare_pseudonym_key

    time_range = _time_range(args, "training-set")
    attribution_ms = int(args.attribution_window_min * _MINUTE_MS)
    if args.archive is not None:
        if args.priced or args.behaviour:
            raise SystemExit("pricing training-set: give --archive, or --priced and --behaviour, not both")
        topics = settings.kafka.topics
        try:
            priced, behaviour = serving_archive_files(args.archive, topics.priced.name, topics.behaviour.name,
                                                      time_range, attribution_window_ms=attribution_ms)  # fmt: skip
        except FileNotFoundError as exc:
            raise SystemExit(f"pricing training-set: {exc}") from None
    elif args.priced and args.behaviour:
        priced, behaviour = args.priced, args.behaviour
    else:
        raise SystemExit("pricing training-set: give --archive DIR, or --priced and --behaviour")
    summary = run_from_serving_logs(
        priced, behaviour, args.out, attribution_window_ms=attribution_ms, runner=args.runner,
        overwrite=args.overwrite, privacy=prepare_pseudonym_key(settings), rows_range=time_range,
    )
    print(summary.text(), file=sys.stdout)
    return 0 if summary.rows else 1


def _train(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from pricing.config import registry_dir
    from pricing_udfs.model.registry import Registry
    from pricing.training import train

    if args.scenario:
        from pricing.sim.scenario import get_scenario

        get_scenario(args.scenario)  # an unknown name fails before training
    if args.threads < 0:
        raise SystemExit("pricing train: --threads must be 0 or more")
    dp = _dp_config(args)
    if args.ensemble < 1:
        raise SystemExit("pricing train: --ensemble must be 1 or more")
    if args.ensemble > 1 and dp is not None:
        raise SystemExit("pricing train: --ensemble and --dp-epsilon cannot be combined")
    if args.threads:
        from pricing_udfs.model.serving import configure_threads

        configure_threads(args.threads, args.threads)
    with tempfile.TemporaryDirectory(prefix="pricing-train-") as scratch:  # the registry keeps its own copy
        trained = train(args.data, seed=args.seed, epochs=args.epochs, dp=dp, ensemble_size=args.ensemble,
                        out_dir=Path(scratch) / "model")  # fmt: skip
        report = _write_report(args, trained)  # inside the model folder, so the version holds it (immutable)
        manifest = Registry(args.registry or registry_dir(settings)).publish(
            trained.model_dir, **trained.registry_metadata(), promote=args.promote
        )
    print(trained.report())
    print(f"evaluation report: model/report/{report.name} in the version")
    print(f"published {manifest.version}{' (latest)' if args.promote else ''}")
    return 0


def _dp_config(args: argparse.Namespace) -> Any:
    """The ``DPConfig`` of ``--dp-epsilon/--dp-delta/--dp-clip`` (None without ``--dp-epsilon``); one line on bad values."""
    import math

    from pricing.dp_training import DPConfig

    if args.dp_epsilon is None:
        if args.dp_delta is not None or args.dp_clip is not None:
            raise SystemExit("pricing train: --dp-delta and --dp-clip need --dp-epsilon")
        return None
    if not (math.isfinite(args.dp_epsilon) and args.dp_epsilon > 0):
        raise SystemExit(f"pricing train: --dp-epsilon must be a positive number, got {args.dp_epsilon:g}")
    if args.dp_delta is not None and not 0 < args.dp_delta < 1:
        raise SystemExit(f"pricing train: --dp-delta must lie strictly between 0 and 1, got {args.dp_delta:g}")
    if args.dp_clip is not None and not (math.isfinite(args.dp_clip) and args.dp_clip > 0):
        raise SystemExit(f"pricing train: --dp-clip must be a positive number, got {args.dp_clip:g}")
    clip = {} if args.dp_clip is None else {"clip_norm": args.dp_clip}
    return DPConfig(epsilon=args.dp_epsilon, delta=args.dp_delta, **clip)


def _write_report(args: argparse.Namespace, trained: Any) -> Path:
    """The evaluation report (``pricing.model_report``) in ``<model>/report/``, on the same test rows as the metrics."""
    from pricing.model_report import load_row_ids, write_report
    from pricing.sim.scenario import get_scenario
    from pricing.training import load_training_set, split
    from pricing_udfs.model.ensemble import EnsembleDemandModel, is_ensemble
    from pricing_udfs.model.tf_handler import TFDemandModel

    scenario = get_scenario(args.scenario) if args.scenario else None
    config = trained.config
    data = load_training_set(args.data)
    train_rows, _, test = split(data, holdout=config.holdout, holdout_fraction=config.holdout_fraction,
                                seed=config.seed)  # fmt: skip
    products = users = None
    if scenario is not None:
        products, users = load_row_ids(args.data, test)
    loader = EnsembleDemandModel.load if is_ensemble(trained.model_dir) else TFDemandModel.load  # --ensemble: the mean
    model = loader(trained.model_dir)
    return write_report(model, test, trained.model_dir / "report", scenario=scenario, trained=trained,
                        baseline_data=train_rows, product_ids=products, user_ids=users)
