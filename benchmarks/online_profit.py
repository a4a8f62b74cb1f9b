"""Online check that the model policy earns more than the list price, through the real job.

Starts a local broker and the pricing job (MiniCluster) with the registry's latest model
(`make demo` trains one when there is none), then runs the closed-loop market simulator
against it ``--runs`` times with different seeds. Each run reports the expected profit of
the engine's prices and of the list price for the very same shoppers, both at the
simulator's true purchase probabilities; the script prints each run's gain and the mean
with a 95% t-interval. Run by hand:

    .venv/bin/python benchmarks/online_profit.py --runs 5 --duration 90 --rate 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import uuid

from jobs.pricing_job import run, wait_until_running
from pricing.broker import LocalBroker, free_port
from pricing.config import load_settings
from pricing.demo import DEMO_SCENARIO, ensure_model
from pricing.sim.live import LiveSimulator, LiveTopics
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics

# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of traffic per run")
    parser.add_argument("--rate", type=float, default=5.0, help="events per second")
    parser.add_argument("--seed-base", type=int, default=1_000, help="run i uses seed seed_base + i")
    args = parser.parse_args(argv)
    settings = load_settings()
    broker = LocalBroker(state_dir=settings.state_dir, port=free_port(), name="online-profit-kafka", die_with_parent=True)
    broker.start(fresh=True, timeout_s=90)
    result = None
    try:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
        job = settings.job.model_copy(update={"checkpoint_interval_ms": 1_000, "consumer_group": f"online-{uuid.uuid4().hex[:8]}"})
        settings = settings.model_copy(update={"kafka": kafka, "job": job})
        create_topics(kafka)
        version = ensure_model(settings)
        result = run(settings, wait=False)
        wait_until_running(result)
        gains = []
        for i in range(args.runs):
            sim = LiveSimulator(get_scenario(DEMO_SCENARIO), kafka_config=kafka.client_config(), topics=LiveTopics.of(kafka.topics),
                                rate=args.rate, duration_s=args.duration, answer_timeout_s=60.0, seed=args.seed_base + i,
                                progress=sys.stderr)  # fmt: skip
            report = sim.run()
            gain = report.expected_profit_minor / report.expected_profit_at_list_minor - 1
            gains.append(gain)
            print(f"run {i + 1}: {report.answered}/{report.requests} answered; expected profit {report.expected_profit_minor / 100:,.2f} "
                  f"vs {report.expected_profit_at_list_minor / 100:,.2f} at list price: {gain:+.1%}", flush=True)  # fmt: skip
        mean = statistics.fmean(gains)
        half = _T95.get(len(gains) - 1, 1.96) * statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else float("nan")
        print(f"model {version}: mean {mean:+.1%} expected profit per request against the list price, "
              f"95% interval [{mean - half:+.1%}, {mean + half:+.1%}] over {len(gains)} runs of {args.duration:.0f} s at {args.rate:g} events/s")
        return 0
    finally:
        if result is not None:
            result.get_job_client().cancel().result()
        broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
