"""``pricing experiments report``: the always-valid interval against simulated markets with a known truth, its
validity under repeated looks, the cluster-robust variance, and the command end to end on a small archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing import archive_layout
from pricing.cli import main
from pricing.config import load_settings, prepare_pseudonym_key
from pricing.experiments import _arm_mean, always_valid_interval, compare
from pricing.sim.market import build_market
from pricing.sim.scenario import get_scenario
from pricing.sim.world import build_world, replay
from pricing_udfs import serde
from pricing_udfs.experiment import CHALLENGER, CHAMPION, ExperimentConfig, challenger_rows
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.serde import Contract

SEEDS = range(10)


def _world(seed: int):  # noqa: ANN202
    scenario = get_scenario("default").with_overrides(n_users=2_000, n_products=40, seed=seed)
    market = build_market(scenario)
    return market, build_world(market, days=2)


def _ab(seed: int, challenger_multiplier: float) -> tuple[pd.DataFrame, float]:
    """One simulated experiment (half the users see the list price x ``challenger_multiplier``), and the true
    difference of expected profit per request between serving everyone by one arm or the other."""
    market, world = _world(seed)
    experiment = ExperimentConfig(id=f"e{seed}", challenger_version="v20261205T000000Z-00000000", share=0.5)

    def pricer(multiplier_a: float, multiplier_b: float):  # noqa: ANN202
        def price(batch: pd.DataFrame) -> np.ndarray:
            chal = challenger_rows(batch["user_id"].tolist(), experiment)
            return np.rint(batch["reference_price_minor"].to_numpy() * np.where(chal, multiplier_b, multiplier_a))
        return price

    cost = world.at_views(world.unit_cost)
    truth = [float(np.mean(o.probability * (o.price - cost)))
             for o in (replay(world, pricer(m, m)) for m in (1.0, challenger_multiplier))]  # fmt: skip
    split = replay(world, pricer(1.0, challenger_multiplier))
    users = market.user_ids[world.views.user]
    label = split.purchased.astype(np.float64)
    frame = pd.DataFrame({
        "user_id": users, "arm": np.where(challenger_rows(list(users), experiment), CHALLENGER, CHAMPION),
        "profit": label * (split.price - cost), "revenue": label * split.price, "conversion": label})  # fmt: skip
    return frame, truth[1] - truth[0]


def test_the_interval_covers_the_true_difference_between_the_arms() -> None:
    covered = []
    for seed in SEEDS:
        frame, truth = _ab(seed, 0.85)
        profit = compare(frame, "e").differences[0]
        covered.append(profit.low <= truth <= profit.high)
    assert sum(covered) >= 9, f"covered the truth in {sum(covered)} of {len(covered)} markets"


def test_a_losing_challenger_is_stopped_and_an_equal_one_is_never_called() -> None:
    stopped = sum(compare(_ab(seed, 0.6)[0], "e").verdict == "stop" for seed in SEEDS)
    called = [compare(_ab(seed, 1.0)[0], "e").verdict for seed in SEEDS]
    assert stopped >= 9, f"a 40% price cut was stopped in {stopped} of 10 markets"
    assert called == ["keep"] * 10  # an A/A test never ends with a verdict


def test_looking_after_every_batch_keeps_the_error_rate() -> None:
    """500 A/A streams, looked at after each of 40 batches: the always-valid interval excludes 0 at some look in at
    most about alpha of them; the fixed-sample 95% interval read the same way does so far more often."""
    rng = np.random.default_rng(7)
    runs, looks, batch = 500, 40, 50
    a = rng.normal(100, 30, (runs, looks * batch)).cumsum(axis=1)
    b = rng.normal(100, 30, (runs, looks * batch)).cumsum(axis=1)
    n = np.arange(1, looks + 1) * batch
    diff = (b[:, n - 1] - a[:, n - 1]) / n
    var = 2 * 30.0**2 / n
    ever = np.zeros(runs, dtype=bool)
    naive = np.zeros(runs, dtype=bool)
    for j in range(looks):
        for r in range(runs):
            low, high = always_valid_interval(diff[r, j], var[j], tau=5.0, alpha=0.05)
            ever[r] |= not low <= 0 <= high
        naive |= np.abs(diff[:, j]) > 1.96 * np.sqrt(var[j])
    assert ever.mean() <= 0.07 and naive.mean() >= 0.15, (ever.mean(), naive.mean())


def test_the_variance_is_clustered_by_user() -> None:
    """Users differ (each has their own conversion rate) and ask many times: the spread of the arm's mean over
    repeated draws of users matches the delta method's cluster variance, not the per-request one."""
    rng = np.random.default_rng(3)
    means, estimates = [], []
    for _ in range(300):
        rates = rng.beta(0.5, 4.5, 200)
        counts = rng.integers(1, 60, 200)
        users = np.repeat(np.arange(200), counts)
        frame = pd.DataFrame({"user_id": users, "profit": (rng.random(len(users)) < rates[users]).astype(float)})
        mean, variance = _arm_mean(frame, "profit")
        means.append(mean)
        estimates.append(variance)
    per_request = float(np.var(frame["profit"]) / len(frame))
    assert 0.75 < np.mean(estimates) / np.var(means) < 1.3
    assert per_request < 0.5 * np.var(means)  # the naive variance would be far too small here


# ---------------------------------------------------------------------------------------------
# The command, on a small archive
# ---------------------------------------------------------------------------------------------

T0 = int(pd.Timestamp("2026-01-01T00:00Z").timestamp() * 1000)


def _archive(root: Path, settings, challenger: str, *, winner: str) -> None:  # noqa: ANN001
    """400 users, 10 requests each; the ``winner`` arm's users buy half the time, the other's a tenth."""
    topics = settings.kafka.topics
    pseudonym = prepare_pseudonym_key(settings).pseudonymiser()
    experiment = ExperimentConfig(id="exp-9", challenger_version=challenger, share=0.5)
    raw = [f"shopper-{i}" for i in range(400)]
    arms = np.where(challenger_rows([pseudonym(u) for u in raw], experiment), CHALLENGER, CHAMPION)
    rng = np.random.default_rng(1)
    priced, bought = [], []
    features = FEATURE_SPEC.vector({"list_price_minor": 1000, "unit_cost_minor": 600}).tolist()
    for i in range(4_000):
        u, t = i % 400, T0 + 900 * i
        rid, arm = f"r{i}", arms[i % 400]
        priced.append({"request_id": rid, "user_id": pseudonym(raw[u]), "product_id": "p1", "price_minor": 1000,
                       "reference_price_minor": 1000, "currency": "EUR",
                       "model_version": challenger if arm == CHALLENGER else "v20260101T000000Z-00000000",
                       "expected_conversion": 0.2, "expected_profit_minor": 80, "reason_codes": [],
                       "fallback_used": False, "request_time": t, "priced_time": t + 3,
                       "feature_spec_version": FEATURE_SPEC.version, "features": features, "explored": False,
                       "propensity": 1.0, "experiment_id": "exp-9", "arm": arm})  # fmt: skip
        if rng.random() < (0.5 if arm == winner else 0.1):
            bought.append({"event_id": f"b{i}", "user_id": raw[u], "product_id": "p1", "type": "purchase",
                           "price_seen_minor": 1000, "currency": "EUR", "quantity": 1, "session_id": "s",
                           "event_time": t + 60_000, "request_id": rid})  # fmt: skip
    priced.append(priced[0] | {"request_id": "other", "experiment_id": "another"})  # another experiment's
    for topic, contract, records, field in ((topics.priced.name, Contract.PRICED_EVENT, priced, "request_time"),
                                            (topics.behaviour.name, Contract.BEHAVIOUR_EVENT, bought, "event_time")):
        frame = pd.DataFrame(records)
        for hour, part in frame.groupby(frame[field] // archive_layout.HOUR_MS):
            folder = archive_layout.partition_path(root, topic, int(hour) * archive_layout.HOUR_MS)
            folder.mkdir(parents=True, exist_ok=True)
            serde.write_container(folder / "part-0", contract, part.to_dict("records"))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Registry, str]:
    monkeypatch.chdir(tmp_path)
    for name in ("PRICING_CONFIG", "PRICING_STATE_DIR", "PRICING_MODELS__REGISTRY_DIR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "pricing.toml").write_text(f'state_dir = "{tmp_path / "state"}"\n')
    registry = Registry(tmp_path / "state" / "models")
    for name in ("a", "b"):
        FakeDemandModel().save(tmp_path / name)
    registry.publish(tmp_path / "a", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1), metrics={},
                     promote=True)  # fmt: skip
    challenger = registry.publish(tmp_path / "b", feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                                  metrics={}).version  # fmt: skip
    return tmp_path, registry, challenger


def test_the_report_promotes_a_winning_challenger_with_apply(workspace, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    tmp, registry, challenger = workspace
    _archive(tmp / "archive", load_settings(tmp / "pricing.toml"), challenger, winner=CHALLENGER)
    rc = main(["--config", str(tmp / "pricing.toml"), "experiments", "report", "--archive", str(tmp / "archive"),
               "--experiment", "exp-9", "--json", str(tmp / "r.json"), "--apply"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "verdict PROMOTE" in out, out
    report = json.loads((tmp / "r.json").read_text())
    arms = {a["arm"]: a for a in report["arms"]}
    assert arms[CHAMPION]["requests"] + arms[CHALLENGER]["requests"] == 4_000  # not the other experiment's
    assert 0.4 < arms[CHALLENGER]["conversion"] < 0.6 and 0.05 < arms[CHAMPION]["conversion"] < 0.15
    assert arms[CHALLENGER]["profit_per_request"] == pytest.approx(400 * arms[CHALLENGER]["conversion"])
    assert report["challenger_versions"] == [challenger]
    assert registry.latest_version() == challenger
    assert registry.evaluations(challenger)[-1]["decision"]["verdict"] == "promote"


def test_the_report_stops_a_losing_challenger_and_changes_nothing(workspace, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    tmp, registry, challenger = workspace
    latest = registry.latest_version()
    _archive(tmp / "archive", load_settings(tmp / "pricing.toml"), challenger, winner=CHAMPION)
    rc = main(["--config", str(tmp / "pricing.toml"), "experiments", "report", "--archive", str(tmp / "archive"),
               "--experiment", "exp-9", "--apply"])  # fmt: skip
    assert rc == 3 and "verdict STOP" in capsys.readouterr().out
    assert registry.latest_version() == latest
    rc = main(["--config", str(tmp / "pricing.toml"), "experiments", "report", "--archive", str(tmp / "archive"),
               "--experiment", "nope"])  # fmt: skip
    assert rc == 1 and "no priced events of experiment nope" in capsys.readouterr().err
