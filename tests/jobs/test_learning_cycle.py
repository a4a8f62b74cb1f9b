"""One whole turn of the learning loop through the real parts, with no restart: serve, archive, learn, gate,
promote, hot swap.

The pricing job serves a deliberately bad champion (a fake demand model that believes shoppers do not mind the price,
so the engine charges the ceiling, 3x the list price here) with exploration on, while the closed-loop live simulator shops at its prices. The archive
job (its own process, as ``pricing archive run``) copies the topics to files. One ``pricing learn`` (the command, in its own
process, as the CronJob runs it) then builds the training set from the archive, trains a TensorFlow challenger, judges it off-policy against the
champion on the newest logs, records the decision and promotes it; the running job's model watcher swaps it in and
the next requests are priced by it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import pricing_job
from pricing import archive_layout
from pricing.config import Settings
from pricing.sim.live import LiveSimulator, LiveTopics
from pricing.sim.scenario import get_scenario
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.policy import Guardrails, PolicySettings
from pricing_udfs.serde import Contract
from tests.helpers import command_env, read_topic, write_config_file

pytestmark = pytest.mark.integration

SCENARIO = get_scenario("default").with_overrides(n_users=100_000, n_products=25,
                                                  seasonality={"hourly": [1.0] * 24, "weekly": [1.0] * 7})


def _traffic(settings: Settings, seconds: float, seed: int):  # noqa: ANN202
    return LiveSimulator(SCENARIO, kafka_config=settings.kafka.client_config(), topics=LiveTopics.of(settings.kafka.topics),
                         rate=300, duration_s=seconds, answer_timeout_s=90, seed=seed).run()  # fmt: skip


def _archived_priced(root: Path, settings: Settings) -> set[str]:
    out: set[str] = set()
    for path in archive_layout.files(root, settings.kafka.topics.priced.name):
        with archive_layout.open_file(path) as f:
            out |= {r["request_id"] for r in serde.read_container(f, Contract.PRICED_EVENT)}
    return out


def test_the_loop_learns_from_its_own_logs_and_the_running_job_serves_the_winner(kafka_settings: Settings,
                                                                                  tmp_path: Path) -> None:  # fmt: skip
    # The same in the config file for pricing learn. A ceiling at 3x the list price and no hourly limit to speak of:
    # the champion below charges it and hardly sells; a challenger that learned anything from the logs beats it.
    policy = PolicySettings(exploration_rate=0.2, grid_size=4,
                            guardrails=Guardrails(max_multiplier=3.0, max_change=10.0))
    settings = kafka_settings.model_copy(update={
        "job": kafka_settings.job.model_copy(update={"checkpoint_interval_ms": 1_000}),
        "models": kafka_settings.models.model_copy(update={"registry_dir": tmp_path / "models", "watch_interval_s": 1.0}),
        "policy": policy,
        "learn": kafka_settings.learn.model_copy(update={"min_rows": 300, "min_holdout_rows": 100, "epochs": 40,
                                                         "min_effective_rows": 5.0, "holdout_fraction": 0.5}),
        "recommend": kafka_settings.recommend.model_copy(update={"enabled": False}),
    })  # fmt: skip
    create_topics(settings.kafka)
    registry = Registry(tmp_path / "models")
    # a champion that thinks shoppers do not mind the price: it charges the ceiling and hardly sells
    FakeDemandModel(intercept=-1.0, slope=0.0).save(tmp_path / "weak")
    champion = registry.publish(tmp_path / "weak", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                                metrics={}, promote=True).version  # fmt: skip
    root = tmp_path / "archive"
    config = write_config_file(settings, tmp_path / "pricing.toml", job=[], extra=[
        "[archive]", f'path = "{root}"', "checkpoint_interval_ms = 1000",
        f'consumer_group = "{settings.job.consumer_group}-archive"',  # its own checkpoints, not another test's
        "[recommend]", "enabled = false",
        "[models]", f'registry_dir = "{tmp_path / "models"}"', "[policy]", "exploration_rate = 0.2", "grid_size = 4",
        "[policy.guardrails]", "max_multiplier = 3.0", "max_change = 10.0",
        "[learn]", "min_rows = 300", "min_holdout_rows = 100", "epochs = 40", "min_effective_rows = 5.0",
        "holdout_fraction = 0.5"])  # fmt: skip
    archive = subprocess.Popen([sys.executable, "-m", "pricing.cli", "--config", str(config), "archive", "run"],
                               stdout=(tmp_path / "archive.log").open("ab"), stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True, env=command_env())  # fmt: skip
    result = pricing_job.run(settings, wait=False)
    try:
        pricing_job.wait_until_running(result)
        report = _traffic(settings, 45, seed=5)
        assert report.answered == report.requests > 1_000, report.summary()
        served = {serde.decode(Contract.PRICED_EVENT, m.value()).record["request_id"]
                  for m in read_topic(settings, settings.kafka.topics.priced.name, quiet_s=1)}  # fmt: skip
        deadline = time.monotonic() + 60
        while not served <= _archived_priced(root, settings):  # the archive has committed what was served
            assert archive.poll() is None, (tmp_path / "archive.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the archive did not catch up with the priced events"
            time.sleep(1)
        time.sleep(3)  # the last purchases (they follow their views by seconds) into the archive too

        # pricing learn, as the CronJob runs it (its own process: Beam cannot run where a PyFlink job ran)
        learn = subprocess.run([sys.executable, "-m", "pricing.cli", "--config", str(config), "learn", "--archive",
                                str(root), "--last", "2h"], capture_output=True, text=True, env=command_env(),
                               timeout=300)  # fmt: skip
        print(learn.stdout[-2000:])
        assert learn.returncode == 0, learn.stdout[-2000:] + learn.stderr[-3000:]
        challenger = registry.latest_version()
        assert challenger != champion, learn.stdout[-2000:]
        decision = registry.evaluations(challenger)[-1]["decision"]
        assert decision["promote"] is True and f"{challenger} promoted over {champion}" in learn.stdout

        # No restart: the running job's watcher swaps the promoted model in, and serves it.
        # (the watcher loads and checks the new SavedModel in the background: a few seconds on a busy machine)
        deadline, seed = time.monotonic() + 120, 6
        while True:
            _traffic(settings, 8, seed=seed)
            versions = [serde.decode(Contract.PRICED_EVENT, m.value()).record
                        for m in read_topic(settings, settings.kafka.topics.priced.name, quiet_s=1)]  # fmt: skip
            by_new = [r for r in versions if r["model_version"] == challenger]
            if by_new:
                break
            assert time.monotonic() < deadline, "the job never served the promoted challenger"
            seed += 1
        first_new = min(r["request_time"] for r in by_new)
        assert all(r["model_version"] != champion for r in versions if r["request_time"] > first_new + 5_000)
    finally:
        result.get_job_client().cancel().result()
        if archive.poll() is None:
            os.killpg(archive.pid, signal.SIGKILL)
        archive.wait(30)
