"""``pricing``: the single command-line entry point.

Every sub-command takes the global ``--config FILE`` (TOML) and reads its settings
through ``pricing.config``; flags only override individual settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from pricing.config import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "needs_settings", True):
            settings = _with_local_broker(load_settings(args.config))
            return args.func(args, settings)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        print(f"pricing: error: {exc}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from pricing.broker import BrokerError
    from pricing.cluster import ClusterError
    from pricing.jars import JarsMissingError

    return (BrokerError, ClusterError, JarsMissingError, FileNotFoundError, ValidationError, ValueError)


_USER_ERRORS = _user_errors()


def _with_local_broker(settings: Settings) -> Settings:
    """Point at the local broker of ``state_dir`` unless bootstrap servers were set explicitly."""
    if "bootstrap_servers" in settings.kafka.model_fields_set:
        return settings
    status = _broker(settings).status()
    if status.running and status.bootstrap:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": status.bootstrap})
        return settings.model_copy(update={"kafka": kafka})
    return settings


def _broker(settings: Settings, *, port: int | None = None, secure: bool = False):  # noqa: ANN202 - local import keeps start-up fast
    from pricing.broker import LocalBroker

    b = settings.broker
    return LocalBroker(
        state_dir=settings.state_dir,
        host=b.host,
        port=port or b.port,
        controller_port=b.controller_port if port is None else None,
        heap=b.heap,
        secure=secure,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pricing", description="Real-time personalised pricing engine")
    p.add_argument("--config", type=Path, default=None, help="TOML settings file (default: ./pricing.toml if present)")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    jars = sub.add_parser("jars", help="the JVM jars (Kafka connector, broker)").add_subparsers(metavar="ACTION")
    jars.add_parser("fetch", help="fetch pinned jars from Maven Central").set_defaults(func=_jars_fetch)

    kafka = sub.add_parser("kafka", help="the local single-node KRaft broker").add_subparsers(metavar="ACTION")
    start = kafka.add_parser("start", help="start it and wait until it serves metadata")
    start.add_argument("--port", type=int, default=None, help="listener port (default 9092; controller uses port+1)")
    start.add_argument("--fresh", action="store_true", help="wipe its data first")
    start.add_argument("--secure", action="store_true",
                       help="TLS, SCRAM users and ACLs (pricing.local_security): the principals of pricing.acls")
    start.set_defaults(func=_kafka_start)
    kafka.add_parser("stop", help="stop it; no process is left").set_defaults(func=_kafka_stop)
    kafka.add_parser("status", help="print whether it runs and its bootstrap address").set_defaults(func=_kafka_status)

    cluster = sub.add_parser("cluster", help="a standalone Flink session cluster on this machine").add_subparsers(
        metavar="ACTION")
    cstart = cluster.add_parser("start", help="start a JobManager and the TaskManagers; wait until all registered")
    cstart.add_argument("--rest-port", type=int, default=None, help="REST API and web UI port (default 8081)")
    cstart.set_defaults(func=_cluster_start)
    cluster.add_parser("stop", help="stop it and its jobs; no process is left").set_defaults(func=_cluster_stop)
    cluster.add_parser("status", help="its processes and whether its REST API answers").set_defaults(
        func=_cluster_status)

    topics = sub.add_parser("topics", help="the engine's topics").add_subparsers(metavar="ACTION")
    topics.add_parser("create", help="create missing topics (idempotent)").set_defaults(func=_topics_create)

    job = sub.add_parser("job", help="the streaming job").add_subparsers(metavar="ACTION")
    run = job.add_parser(
        "run", help="run the job (local MiniCluster unless --jobmanager, which returns once the job runs there)")
    run.add_argument("--bounded", action="store_true", help="stop after the offsets that are latest now")
    run.add_argument("--jobmanager", default=None, metavar="HOST:PORT", help="submit to a remote cluster's REST endpoint")
    run.add_argument("--at-least-once", action="store_true", help="low-latency mode: no Kafka transactions")
    run.add_argument(
        "--serving-mode", choices=("arrival", "event-time"), default=None,
        help="arrival: price on arrival with the latest features; event-time: wait for the watermark (exact replays)",
    )
    run.add_argument("--restore-from", default=None, metavar="PATH", help="start from this savepoint or retained checkpoint")
    run.add_argument(
        "--fresh", action="store_true",
        help="start with empty state instead of resuming from the latest checkpoint (which is moved aside, not deleted)",
    )
    run.set_defaults(func=_job_run)

    archive = sub.add_parser("archive", help="the archive job: every topic to files, exactly once").add_subparsers(
        metavar="ACTION")
    arun = archive.add_parser(
        "run", help="run it (local MiniCluster unless --jobmanager); files under [archive] path, by topic, date, hour")
    arun.add_argument("--bounded", action="store_true", help="stop after the offsets that are latest now")
    arun.add_argument("--jobmanager", default=None, metavar="HOST:PORT", help="submit to a remote cluster's REST endpoint")
    arun.add_argument("--fresh", action="store_true",
                      help="start from the topics' earliest records instead of the archive's latest checkpoint")
    arun.set_defaults(func=_archive_run)

    schemas = sub.add_parser("schemas", help="the Avro contracts").add_subparsers(metavar="ACTION")
    schemas.add_parser("check", help="check every schema against its frozen versions").set_defaults(func=_schemas_check)
    freeze = schemas.add_parser("freeze", help="freeze the current schemas as new versions (after a release)")
    freeze.set_defaults(func=_schemas_freeze)

    demo = sub.add_parser("demo", help="Kafka, a first model, the job and a closed-loop market simulation; a summary; stop")
    demo.add_argument("--duration", type=float, default=90.0, help="seconds of simulated traffic (default 90)")
    demo.add_argument("--rate", type=float, default=None,
                      help="simulated events per second, as copies of the same market side by side, each at the "
                      "market's own intensity (default: one copy, about 2 events/s; the copies beyond the first have no "
                      "history in the topics, so their first requests see cold windows)")  # fmt: skip
    demo.add_argument("--intensity", type=float, default=1.0,
                      help="multiply every live shopper's session rate: a quieter (0.1) or busier (10) market per shopper "
                      "and product than the week the model learned from (default 1)")  # fmt: skip
    demo.add_argument("--recommend-share", type=float, default=0.25,
                      help="share of the live shoppers who also ask for recommendations (the viewed product as context) "
                      "and may buy from the slate (default 0.25; 0: none)")  # fmt: skip
    demo.add_argument("--port", type=int, default=None, help="broker port (default from settings: 9092)")
    demo.set_defaults(func=_demo)

    try:
        from pricing.sim.cli import register as register_sim
    except ImportError:
        pass
    else:
        register_sim(sub)
    from pricing.models_cli import register as register_models
    register_models(sub)
    from pricing.training_cli import register as register_training
    register_training(sub)
    from pricing.learn.cli import register as register_learn
    register_learn(sub)
    from pricing.experiments_cli import register as register_experiments
    register_experiments(sub)
    return p


def _jars_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.jars import fetch

    print(f"jars in {fetch(settings.state_dir)}")
    return 0


def _kafka_start(args: argparse.Namespace, settings: Settings) -> int:
    broker = _broker(settings, port=args.port, secure=args.secure)
    print(f"starting Kafka (KRaft) at {broker.bootstrap}, data in {broker.home} ...", file=sys.stderr)
    status = broker.start(fresh=args.fresh, timeout_s=settings.broker.start_timeout_s)
    print(f"Kafka is up at {status.bootstrap} (pid {status.pid})")
    if broker.security is not None:
        from pricing.acls import apply_acls, principal_acls
        from pricing.local_security import ADMIN

        sec = broker.security
        apply_acls(sec.admin_config(status.bootstrap or broker.bootstrap), principal_acls(settings))
        users = ", ".join(u for u in sec.passwords if u != ADMIN)
        print(f"secure: SASL_SSL with SCRAM-SHA-512 (and -256); CA certificate {sec.ca_pem}; users {ADMIN} (super user) "
              f"and {users} with the ACLs of their roles (pricing.acls, for this configuration's topics); their "
              f"passwords are in {sec.folder / 'users.json'}. A client's settings:\n"
              f'  [kafka]\n  bootstrap_servers = "{status.bootstrap}"\n  security_protocol = "SASL_SSL"\n'
              f'  sasl_mechanism = "SCRAM-SHA-512"\n  sasl_username = "pricing-job"\n  ssl_ca_location = "{sec.ca_pem}"\n'
              "  and the password in PRICING_KAFKA__SASL_PASSWORD (or the file kafka.password in [secrets] dir)")  # fmt: skip
    return 0


def _kafka_stop(args: argparse.Namespace, settings: Settings) -> int:
    stopped = _broker(settings).stop()
    print("Kafka stopped" if stopped else "Kafka was not running")
    return 0


def _kafka_status(args: argparse.Namespace, settings: Settings) -> int:
    status = _broker(settings).status()
    if status.running:
        print(f"running at {status.bootstrap} (pid {status.pid})")
        return 0
    print("not running")
    return 3


def _topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.topics import create_topics

    for name, state in create_topics(settings.kafka).items():
        print(f"{name}: {state}")
    return 0


def _archive_run(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.archive import run

    job = settings.job.model_copy(update={"bounded": args.bounded or settings.job.bounded,
                                          **({"start": "fresh"} if args.fresh else {})})  # fmt: skip
    settings = settings.model_copy(update={"job": job})
    print(f"archiving to {settings.archive.root(settings.state_dir)} from {settings.kafka.bootstrap_servers} ("
          + ("bounded" if job.bounded else f"submitted to {args.jobmanager}" if args.jobmanager
             else "unbounded: Ctrl-C to stop") + ")", file=sys.stderr)  # fmt: skip
    if args.jobmanager and not job.bounded:  # like `pricing job run`: never a second copy on the cluster
        from pricing.cluster import running_job

        rest_url = args.jobmanager if "://" in args.jobmanager else f"http://{args.jobmanager}"
        already = running_job(rest_url, f"{job.name}-archive")
        if already is not None:
            print(f"job {already['jid']} runs on {args.jobmanager} already ({job.name}-archive, {already['state']}): "
                  "not submitted again; cancel it first to replace it")  # fmt: skip
            return 0
    run(settings, jobmanager=args.jobmanager, wait=not args.jobmanager)
    return 0


def _job_run(args: argparse.Namespace, settings: Settings) -> int:
    job = settings.job.model_copy(
        update={
            "bounded": args.bounded or settings.job.bounded,
            **({"delivery_guarantee": "at-least-once"} if args.at_least_once else {}),
            **({"serving_mode": args.serving_mode} if args.serving_mode else {}),
            **({"restore_from": args.restore_from} if args.restore_from else {}),
            **({"start": "fresh"} if args.fresh else {}),
        }
    )
    settings = settings.model_copy(update={"job": job})
    print(
        f"running {job.name} against {settings.kafka.bootstrap_servers} ({job.delivery_guarantee}, {job.serving_mode}, "
        + ("bounded" if job.bounded else f"submitted to {args.jobmanager}" if args.jobmanager else "unbounded: Ctrl-C to stop")
        + ")",
        file=sys.stderr,
    )
    if args.jobmanager and not job.bounded:
        # Submitted to a cluster, the job outlives this command (like `flink run -d`). Run again (after a
        # crash of this command, or by a retrying deploy script) it must not start a second copy, which would
        # read the same input and fence the first one's transactions.
        from pricing.cluster import running_job

        rest_url = args.jobmanager if "://" in args.jobmanager else f"http://{args.jobmanager}"
        already = running_job(rest_url, job.name)
        if already is not None:
            print(f"job {already['jid']} runs on {args.jobmanager} already ({job.name}, {already['state']}): "
                  "not submitted again; cancel it first to replace it")  # fmt: skip
            return 0
        from jobs.pricing_job import run, wait_until_running  # PyFlink starts its gateway: only when it is needed

        result = run(settings, jobmanager=args.jobmanager, wait=False)
        wait_until_running(result)
        print(f"job {result.get_job_client().get_job_id()} runs on {args.jobmanager}")
        return 0
    from jobs.pricing_job import run

    run(settings, jobmanager=args.jobmanager, wait=True)
    return 0


def _cluster(settings: Settings, *, rest_port: int | None = None):  # noqa: ANN202 - local import keeps start-up fast
    from pricing.cluster import LocalCluster

    cluster = settings.cluster
    if rest_port is not None:
        cluster = cluster.model_validate(cluster.model_dump() | {"rest_port": rest_port})
    return LocalCluster(state_dir=settings.state_dir, settings=cluster)  # its Python workers run this venv's Python


def _cluster_start(args: argparse.Namespace, settings: Settings) -> int:
    cluster = _cluster(settings, rest_port=args.rest_port)
    before = cluster.status()
    status = cluster.start()
    if before.running and before.jobmanager_pid == status.jobmanager_pid and before.taskmanager_pids == status.taskmanager_pids:
        print(f"the cluster is already running at {status.rest_url}: {status.describe()}")
    else:
        print(f"Flink is up at {status.rest_url}: {status.describe()}")
    return 0


def _cluster_stop(args: argparse.Namespace, settings: Settings) -> int:
    print("Flink cluster stopped" if _cluster(settings).stop() else "the Flink cluster was not running")
    return 0


def _cluster_status(args: argparse.Namespace, settings: Settings) -> int:
    status = _cluster(settings).status()
    print(status.describe())
    return 0 if status.running else 3


def _schemas_check(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.schema_evolution import check_all

    problems = check_all()
    for p in problems:
        print(p, file=sys.stderr)
    print("schemas compatible" if not problems else f"{len(problems)} incompatibilities")
    return 1 if problems else 0


def _schemas_freeze(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.schema_evolution import freeze

    for path in freeze():
        print(f"froze {path}")
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pricing.demo import run_demo

    if args.intensity <= 0:
        raise SystemExit("pricing demo: --intensity must be positive")
    return run_demo(settings, duration_s=args.duration, rate=args.rate, port=args.port, intensity=args.intensity,
                    recommend_share=args.recommend_share)


if __name__ == "__main__":
    sys.exit(main())
