"""The ``simulate`` and ``evaluate`` commands, attached to the ``pricing`` CLI by ``register()``.

Handlers take the parsed ``argparse.Namespace`` and, optionally, the project
``Settings`` (``pricing.cli`` passes them): when given, live mode takes its Kafka
client config and topic names from them (``--bootstrap`` still wins) and evaluate
writes under their ``state_dir``. Without settings, the defaults are the local
broker 127.0.0.1:9092, the default topic names of ``pricing.config`` and ``.pricing/``.

Handlers return an exit code and turn expected failures (unknown scenario, broker
unreachable, bad arguments) into one ``error: ...`` line on stderr, not a traceback:
0 = success, 1 = the run failed, 2 = bad input, 130 = interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import ValidationError

from pricing.sim.scenario import SCENARIOS, Scenario, UnknownScenarioError, get_scenario
from pricing_udfs.features import FEATURE_SPEC

if TYPE_CHECKING:
    from pricing.config import Settings
    from pricing.sim.engine import EngineStage
    from pricing.sim.live import LiveTopics
    from pricing.sim.policies import PricingPolicy

Handler = Callable[..., int]  # (args) or (args, settings) -> exit code
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
CONNECT_TIMEOUT_S = 10.0  # to reach the broker before giving up


class _UsageError(ValueError):
    """Bad input from the command line (exit code 2)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate history``, ``simulate live`` and ``evaluate`` to the ``pricing`` command."""
    names = ", ".join(SCENARIOS)
    simulate = subparsers.add_parser(
        "simulate", help="generate simulated market traffic", description="Simulate the market with a known ground truth."
    )
    sim_sub = simulate.add_subparsers(dest="simulate_command", metavar="{history,live}", required=True)

    hist = sim_sub.add_parser(
        "history",
        help="write N days of historical logs as Avro files and/or into the Kafka topics",
        description="Simulate N days of the scenario's market under the historical pricing policy. --out writes "
        "behaviour_events.avro, market_events.avro, price_requests.avro (and market_end_state.npz, which "
        "'simulate live --continue-from' continues). --to-kafka moves the history to end now and produces it into "
        "the behaviour, market and request topics in arrival order (record timestamp = event time), so that a job "
        "started on them warms its windows up on it.",
    )
    hist.add_argument("--days", type=_positive_int, required=True, help="days of history to simulate")
    hist.add_argument("--out", type=Path, default=None, help="folder for the Avro files (created if missing)")
    hist.add_argument("--to-kafka", action="store_true",
                      help="produce the history, ending now, into the input topics (they must exist: pricing topics create)")  # fmt: skip
    hist.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                      help=f"Kafka bootstrap servers for --to-kafka (default: from the settings, else {DEFAULT_BOOTSTRAP})")  # fmt: skip
    _scenario_args(hist, names)
    hist.set_defaults(func=_guarded(_cmd_history))

    live = sim_sub.add_parser(
        "live",
        help="produce the scenario's market live to Kafka and close the loop on priced answers",
        description="Produce the behaviour, market and price-request events of the scenario's market as they happen, "
        "in wall-clock time: shoppers arrive at their own rates x the hour-of-day and weekday seasonality of now, "
        "market changes at the scenario's daily rates. One copy of the market has the traffic of "
        "'pricing simulate history' (its natural rate, printed at start); --rate R runs round(R / natural rate) "
        "copies of it side by side (more shoppers and products, the same traffic per shopper and per product, "
        "never a faster clock). Shoppers react to the engine's priced answers with the true purchase probability.",
    )
    size = live.add_mutually_exclusive_group()
    size.add_argument("--rate", type=_positive_float, default=None, metavar="EVENTS_PER_S",
                      help="events/s to aim for, averaged over the week: picks the number of copies of the market "
                      "(at least 1); the actual rate follows the time of day (default: one copy)")  # fmt: skip
    size.add_argument("--copies", type=_positive_int, default=None, metavar="N", help="copies of the market side by side")
    live.add_argument("--intensity", type=_positive_float, default=1.0, metavar="X",
                      help="every shopper's session rate x X: a quieter (0.1) or busier (10) market per product and "
                      "per shopper than the history's (default 1)")  # fmt: skip
    live.add_argument("--duration", type=_positive_float, default=60.0, metavar="S", help="seconds of traffic (default 60)")
    live.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                      help=f"Kafka bootstrap servers (default: from the settings, else {DEFAULT_BOOTSTRAP})")  # fmt: skip
    live.add_argument("--no-loop", action="store_true", help="open loop: do not read priced answers")
    live.add_argument("--answer-timeout", type=_non_negative_float, default=30.0, metavar="S", help="seconds to wait for a priced answer (default 30)")
    live.add_argument("--late-share", type=_share, default=None, help="share of behaviour/market events produced late (default: the scenario's)")
    live.add_argument("--continue-from", type=Path, default=None, metavar="DIR",
                      help="continue the market a 'simulate history --out DIR' ended with (its market_end_state.npz) "
                      "instead of starting from the scenario's initial state; no initial snapshot for it")  # fmt: skip
    live.add_argument("--recommend-share", type=_unit_share, default=0.0, metavar="X",
                      help="share of the price requests whose shopper also asks for recommendations (recommend-requests; "
                      "closed loop): the shopper examines the job's slate with the slate model and buys at most one "
                      "item at its shown price; reported beside the category-popularity slate at list price on the "
                      "same draws (default 0: none)")  # fmt: skip
    live.add_argument("--recommend-k", type=_slate_size, default=10, metavar="K", help="items per recommendation (default 10)")
    _scenario_args(live, names)
    live.set_defaults(func=_guarded(_cmd_live))

    evaluate = subparsers.add_parser(
        "evaluate",
        help="offline policy evaluation against the ground truth",
        description="Replay baseline policies (and --policy ones) through the same simulated market; "
        "write evaluation.md, evaluation.csv and cumulative_profit.png. With --recommend, evaluate "
        "recommendations instead: random, popularity, category-popularity, item-to-item, the model's ranking at "
        "list price and price-aware, and the oracle, on the same shoppers (with latent tastes); write "
        "recommendation.md, recommendation.csv and recommendation_profit.png (pricing.sim.recommend_eval).",
    )
    evaluate.add_argument("--days", type=_positive_int, default=7, help="days to simulate (default 7)")
    evaluate.add_argument("--out", type=Path, default=None, help="output folder (default <state_dir>/eval/<scenario>, state_dir .pricing)")
    evaluate.add_argument("--policy", action="append", default=[], metavar="MODULE:ATTR",
                          help="extra PricingPolicy object or no-argument class to evaluate (repeatable)")  # fmt: skip
    evaluate.add_argument("--model", default=None, metavar="VERSION",
                          help="also evaluate the engine's policy with this registry version (or latest), fed the "
                          "backfilled features of the same requests; shown as model-<version>. With --recommend: serve "
                          "this version instead of a model trained on the evaluated world's history (the default)")  # fmt: skip
    evaluate.add_argument("--registry", type=Path, default=None, help="registry folder (default from [models])")
    rec = evaluate.add_argument_group("recommendations (--recommend)")
    rec.add_argument("--recommend", action="store_true",
                     help="evaluate price-aware recommendations with a demand model trained on the taste world's history "
                     "before the requests (cached under <state_dir>/eval/<scenario>-recommend; --model VERSION: a "
                     "registry version instead)")  # fmt: skip
    rec.add_argument("--requests", type=_positive_int, default=2_000, metavar="N",
                     help="recommendation requests, drawn from the last day's views (default 2000)")  # fmt: skip
    rec.add_argument("--k", type=_slate_size, default=10, help="items per recommendation (1-50, default 10)")
    rec.add_argument("--position-bias", choices=("log", "geometric"), default="log",
                     help="P(examine position i): 1/log2(i+1) (log, default) or 0.7^(i-1) (geometric)")  # fmt: skip
    _scenario_args(evaluate, names)
    evaluate.set_defaults(func=_guarded(_cmd_evaluate))


def _scenario_args(parser: argparse.ArgumentParser, names: str) -> None:
    parser.add_argument("--scenario", default="default", metavar="NAME", help=f"one of: {names} (default: default)")
    parser.add_argument("--seed", type=_non_negative_int, default=None, help="override the scenario's seed")
    parser.add_argument("--users", type=_positive_int, default=None, help="override the number of users")
    parser.add_argument("--products", type=_positive_int, default=None, help="override the number of products")


def _guarded(handler: Handler) -> Handler:
    """Expected failures become one line on stderr and an exit code."""

    def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
        from pricing.sim.live import LiveError

        try:
            return handler(args, settings)
        except (UnknownScenarioError, _UsageError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except ValidationError as exc:
            first = exc.errors()[0]
            print(f"error: invalid scenario override {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
            return 2
        except LiveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _scenario(args: argparse.Namespace) -> Scenario:
    scenario = get_scenario(args.scenario)
    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.users is not None:
        overrides["n_users"] = args.users
    if args.products is not None:
        overrides["n_products"] = args.products
    return scenario.with_overrides(**overrides) if overrides else scenario


def _cmd_history(args: argparse.Namespace, settings: Settings | None) -> int:
    """Generate the history; write the Avro files and/or produce it to Kafka; print what was done, with throughput."""
    import time

    from pricing.sim.history import END_STATE_FILE, generate_history, history_ending_at, write_history

    scenario = _scenario(args)
    if args.out is None and not args.to_kafka:
        raise _UsageError("say where the history goes: --out DIR, --to-kafka, or both")
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            raise _UsageError(f"--out {args.out} exists and is not a folder")
        args.out.mkdir(parents=True, exist_ok=True)  # fail before minutes of simulation, not after
    if args.to_kafka:
        from pricing.sim.live import LiveError
        from pricing.sim.publish import publish_history

        kafka_config, topics = _live_kafka(args, settings)
        check = _connect_check(kafka_config, topics)
        if check:
            raise LiveError(check)
        scenario = history_ending_at(scenario, days=args.days, end_ms=time.time_ns() // 1_000_000)
    t0 = time.perf_counter()
    history = generate_history(scenario, days=args.days, progress=sys.stderr)
    print(f"simulated {history.n_events:,} events from {_utc(history.start_ms)} to {_utc(history.end_ms)} in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    if args.out is not None:
        t0 = time.perf_counter()
        write_history(history, args.out, progress=sys.stderr)
        history.end_state.save(args.out / END_STATE_FILE, scenario=scenario)
        seconds = time.perf_counter() - t0
        parts = ", ".join(f"{name.removesuffix('.avro')} {n:,}" for name, n in history.counts().items())
        print(f"wrote {history.n_events:,} events ({parts}) and {END_STATE_FILE} to {args.out} in {seconds:.1f} s "
              f"({history.n_events / max(seconds, 1e-9):,.0f} events/s)")  # fmt: skip
    if args.to_kafka:
        t0 = time.perf_counter()
        counts = publish_history(history, kafka_config=kafka_config, topics=topics, progress=sys.stderr,
                                 connect_timeout_s=CONNECT_TIMEOUT_S)  # fmt: skip
        seconds = time.perf_counter() - t0
        sent = sum(counts.values())
        print(f"produced {sent:,} events ({', '.join(f'{t} {n:,}' for t, n in counts.items())}) to "
              f"{kafka_config.get('bootstrap.servers')} in {seconds:.1f} s ({sent / max(seconds, 1e-9):,.0f} events/s); "
              f"{history.n_events - sent:,} events that arrive after now (reviews, late arrivals) left out")  # fmt: skip
    return 0


def _connect_check(kafka_config: dict[str, Any], topics: LiveTopics) -> str | None:
    """Fail in seconds, before minutes of simulation, when the broker or a topic is missing (the message, or None)."""
    from confluent_kafka import Producer

    from pricing.sim.live import LiveError, check_topics

    producer = Producer({"log_level": 2, "error_cb": lambda err: None, **kafka_config})
    try:
        check_topics(producer, [topics.behaviour, topics.market, topics.requests],
                     bootstrap=str(kafka_config.get("bootstrap.servers")), timeout_s=CONNECT_TIMEOUT_S)  # fmt: skip
    except LiveError as exc:
        return str(exc)
    return None


def _utc(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _live_kafka(args: argparse.Namespace, settings: Settings | None) -> tuple[dict[str, Any], LiveTopics]:
    """Client config and topic names: the settings' if given, ``--bootstrap`` overriding the address."""
    from pricing.sim.live import LiveTopics

    if settings is None:
        return {"bootstrap.servers": args.bootstrap or DEFAULT_BOOTSTRAP}, LiveTopics.of()
    conf: dict[str, Any] = dict(settings.kafka.client_config())
    if args.bootstrap:
        conf["bootstrap.servers"] = args.bootstrap
    return conf, LiveTopics.of(settings.kafka.topics)


def _cmd_live(args: argparse.Namespace, settings: Settings | None) -> int:
    """Run the live simulator against the broker and print its report."""
    from pricing.sim.history import END_STATE_FILE
    from pricing.sim.live import LiveSimulator
    from pricing.sim.world import MarketSnapshot

    scenario = _scenario(args)
    start_state = None
    if args.recommend_share > 0 and args.no_loop:
        raise _UsageError("--recommend-share needs the closed loop (drop --no-loop)")
    if args.continue_from is not None:
        path = args.continue_from / END_STATE_FILE
        if not path.is_file():
            raise _UsageError(f"--continue-from {args.continue_from}: no {END_STATE_FILE} (write it with simulate history --out)")
        try:
            start_state = MarketSnapshot.load(path, scenario=scenario)
        except ValueError as exc:
            raise _UsageError(f"--continue-from: {exc}") from None
    kafka_config, topics = _live_kafka(args, settings)
    sim = LiveSimulator(
        scenario,
        kafka_config=kafka_config,
        topics=topics,
        rate=args.rate,
        copies=args.copies,
        intensity=args.intensity,
        duration_s=args.duration,
        closed_loop=not args.no_loop,
        answer_timeout_s=args.answer_timeout,
        late_share=args.late_share,
        progress=sys.stderr,
        start_state=start_state,
        connect_timeout_s=CONNECT_TIMEOUT_S,
        recommend_share=args.recommend_share,
        recommend_k=args.recommend_k,
    )
    report = sim.run()
    print(report.summary())
    return 1 if report.interrupted else 0


def _cmd_evaluate(args: argparse.Namespace, settings: Settings | None) -> int:
    """Evaluate the baselines (and --policy ones), write the report files, print the table."""
    from pricing.sim.evaluate import evaluate_policies

    if args.recommend:
        return _cmd_recommend(args, settings)
    scenario = _scenario(args)
    extra = [_load_policy(spec) for spec in args.policy]
    state_dir = settings.state_dir if settings is not None else Path(".pricing")
    out = args.out if args.out is not None else state_dir / "eval" / scenario.name
    from pricing.config import load_settings

    settings = settings if settings is not None else load_settings()
    engine = _engine_policy(args, settings, scenario) if args.model else None
    if engine is not None:
        extra.append(engine)
    evaluation = evaluate_policies(scenario, days=args.days, policies=extra, guardrails=settings.policy.guardrails,
                                   progress=sys.stderr)  # fmt: skip
    paths = evaluation.write(out)
    print(evaluation.markdown())
    if engine is not None:
        share = evaluation.result(engine.name).profit_minor / max(evaluation.result("oracle").profit_minor, 1)
        vs_static = evaluation.result(engine.name).profit_minor / max(evaluation.result("best-static").profit_minor, 1) - 1
        counts = engine.stage.counts
        print(f"{engine.name}: {vs_static:+.1%} profit vs the best static price, {share:.1%} of the oracle's; "
              f"{engine.fallbacks:,} of {engine.priced:,} requests priced by the fallback; the trust region narrowed "
              f"{counts['trust_narrowed']:,} ({counts['trust_out_of_range']:,} out of range, "
              f"{counts['trust_cold_product']:,} cold product); {counts['explored']:,} explored, "
              f"{counts['invalid_decisions']:,} invalid decisions replaced")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_recommend(args: argparse.Namespace, settings: Settings | None) -> int:
    """``evaluate --recommend``: the recommendation rows on the same shoppers, the report files, the table."""
    from pricing.config import load_settings, registry_dir
    from pricing.sim.engine import ModelNotServable, backfilled_features, offline_stage, served_version
    from pricing.sim.recommend_eval import (
        CandidateFeatures,
        RecommendSetup,
        evaluate_recommendations,
        model_rankers,
        recommend_world,
        with_tastes,
    )
    from pricing.sim.slate import PositionBias
    from pricing_udfs.model.registry import Registry, RegistryError

    if args.policy:
        raise _UsageError("--policy prices single products; it does not apply to --recommend")
    days = args.days
    scenario = with_tastes(_scenario(args))
    settings = settings if settings is not None else load_settings()
    out = args.out if args.out is not None else settings.state_dir / "eval" / f"{scenario.name}-recommend"
    setup = RecommendSetup(k=args.k, requests=args.requests, candidates=settings.recommend.candidate_settings(),
                           ranking=settings.recommend.ranking, position_bias=PositionBias(kind=args.position_bias))  # fmt: skip
    if args.model is not None:  # a registry version, as named
        registry = Registry(args.registry or registry_dir(settings))
        try:  # before minutes of simulation
            served = served_version(registry, args.model, device=settings.models.device, spec=FEATURE_SPEC)
        except (ModelNotServable, RegistryError) as exc:
            raise _UsageError(f"--recommend --model {args.model}: no servable model in {registry.root}: {exc}") from None
        rec = recommend_world(scenario, days=days, setup=setup, progress=sys.stderr)
        features = backfilled_features(scenario, days=days, progress=sys.stderr, history=rec.history)
        trained_note = None
    else:  # a model trained on this world's history before the requests (cached)
        from pricing.sim.recommend_model import world_model

        rec = recommend_world(scenario, days=days, setup=setup, progress=sys.stderr)
        cache = settings.state_dir / "eval" / f"{scenario.name}-recommend"
        got = world_model(scenario, rec, days=days, setup=setup, cache_dir=cache, device=settings.models.device,
                          spec=FEATURE_SPEC, progress=sys.stderr)  # fmt: skip
        served, features, trained_note = got.served, got.features, got.summary()
        print(trained_note, file=sys.stderr)
    stages = []

    def stage_for(policy: Any) -> Any:
        stages.append(offline_stage(served, policy, default_price_minor=settings.job.default_price_minor,
                                    currency=settings.job.currency, spec=FEATURE_SPEC))  # fmt: skip
        return stages[-1]

    candidate_features = CandidateFeatures(rec.world, features, spec=FEATURE_SPEC, behaviour=rec.history.behaviour)
    rankers = model_rankers(stage_for, candidate_features, settings.policy)
    try:
        evaluation = evaluate_recommendations(scenario, days=days, guardrails=settings.policy.guardrails,
                                              rankers=rankers, setup=setup, rec=rec, progress=sys.stderr)  # fmt: skip
    finally:
        for stage in stages:
            stage.close()
    if trained_note is not None:
        evaluation = dataclasses.replace(evaluation, notes=(*evaluation.notes, trained_note))
    paths = evaluation.write(out)
    print(evaluation.markdown())
    for name, ranker in rankers.items():
        c = ranker.stage.counts
        print(f"{name}: {c['requests_priced']:,} candidates priced by model {served.version}, {c['fallbacks']:,} by the "
              f"fallback ({c['trust_narrowed']:,} narrowed by the trust region)")  # fmt: skip
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _engine_policy(args: argparse.Namespace, settings: Settings, scenario: Scenario) -> EngineStage:
    """The job's scoring stage around the registry's version, fed backfilled features (``pricing.sim.engine``)."""
    from pricing.config import registry_dir
    from pricing.sim.engine import EngineStage, ModelNotServable, backfilled_features, offline_stage, served_version
    from pricing_udfs.model.registry import Registry

    registry = Registry(args.registry or registry_dir(settings))
    try:
        served = served_version(registry, args.model, device=settings.models.device, spec=FEATURE_SPEC)
    except ModelNotServable as exc:
        raise _UsageError(str(exc)) from None
    stage = offline_stage(served, settings.policy, default_price_minor=settings.job.default_price_minor,
                          currency=settings.job.currency, spec=FEATURE_SPEC)  # fmt: skip
    features = backfilled_features(scenario, days=args.days, progress=sys.stderr)
    return EngineStage(stage, features, seed=scenario.seed, spec=FEATURE_SPEC)


def _load_policy(spec: str) -> PricingPolicy:
    """``module:attr`` -> a PricingPolicy (an object with ``price``, or a class built with no arguments)."""
    from pricing.sim.policies import PricingPolicy

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise _UsageError(f"--policy {spec!r} must look like module.path:attribute")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise _UsageError(f"--policy {spec!r}: {exc}") from None
    if isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, PricingPolicy):
        raise _UsageError(f"--policy {spec!r} is not a PricingPolicy (no price(batch) method)")
    return obj


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {text}")
    return value


def _slate_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 50:
        raise argparse.ArgumentTypeError(f"must lie in 1..50, got {text}")
    return value


def _unit_share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value
