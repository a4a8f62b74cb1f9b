"""``pricing learn`` end to end on a small archive written in the archive's layout, no Kafka, no Flink.

The archive holds two hours of the simulated market of ``market.py``: priced events as the job logs them (the served
vector, the price and its propensity; users as pseudonyms) and the purchases answering them (raw user ids, with the
request id). The registry's champion is the weak fake model. One cycle builds the training set (Beam), trains a small
TensorFlow challenger, publishes it, judges it on the newest 40 % and promotes it; ``pricing models show`` then prints
the decision. The failures a person can meet (nothing archived in the range, no propensities) are one clear line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from pricing import archive_layout
from pricing.cli import main
from pricing.config import load_settings, prepare_pseudonym_key
from pricing.learn.loop import CycleResult, LearnError, run_every
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.serde import Contract
from tests.pricing.learn.market import START_MS, WEAK, Logs, simulate

N = 6_000  # one request a second: 100 minutes, two archive hours
PURCHASE_DELAY_MS = 60_000
SINCE, UNTIL = "2026-01-01T00:00Z", "2026-01-01T02:00Z"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pricing.toml, no PRICING_* settings from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in ("PRICING_CONFIG", "PRICING_STATE_DIR", "PRICING_MODELS__REGISTRY_DIR"):
        monkeypatch.delenv(name, raising=False)


def _config(tmp: Path, **learn: object) -> Path:
    values = {"epochs": 3, "min_rows": 1_000, "min_holdout_rows": 500, "holdout_fraction": 0.4, **learn}
    lines = [f'state_dir = "{tmp / "state"}"', "[policy]", "grid_size = 6", "exploration_rate = 0.2", "[learn]"]
    lines += [f"{k} = {v}" for k, v in values.items()]
    path = tmp / "pricing.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_archive(root: Path, logs: Logs, pseudonym, *, propensity: bool = True) -> None:  # noqa: ANN001
    topics = load_settings(None).kafka.topics
    d = logs.decisions
    users = [f"u{i % 400}" for i in range(len(logs.request_ids))]
    priced, purchases = {}, {}
    for i, rid in enumerate(logs.request_ids):
        t = int(logs.event_time[i])
        price = int(d["price_minor"].iat[i])
        priced.setdefault(archive_layout.partition_path(root, topics.priced.name, t), []).append({
            "request_id": rid, "user_id": pseudonym(users[i]), "product_id": f"p{i % 37}", "price_minor": price,
            "reference_price_minor": int(d["reference_price_minor"].iat[i]), "currency": "EUR",
            "model_version": "logging", "expected_conversion": float(d["expected_conversion"].iat[i]),
            "expected_profit_minor": int(d["expected_profit_minor"].iat[i]), "reason_codes": list(d["reason_codes"].iat[i]),
            "fallback_used": False, "request_time": t, "priced_time": t + 3,
            "feature_spec_version": FEATURE_SPEC.version, "features": [float(v) for v in logs.features[i]],
            "explored": bool(d["explored"].iat[i]), "propensity": float(d["propensity"].iat[i]) if propensity else None,
        })  # fmt: skip
        if logs.labels[i]:
            when = t + PURCHASE_DELAY_MS
            purchases.setdefault(archive_layout.partition_path(root, topics.behaviour.name, when), []).append({
                "event_id": f"b-{rid}", "user_id": users[i], "product_id": f"p{i % 37}", "type": "purchase",
                "price_seen_minor": price, "currency": "EUR", "quantity": 1, "session_id": f"s{i}", "event_time": when,
                "request_id": rid,
            })  # fmt: skip
    for contract, parts in ((Contract.PRICED_EVENT, priced), (Contract.BEHAVIOUR_EVENT, purchases)):
        for folder, records in parts.items():
            folder.mkdir(parents=True, exist_ok=True)
            serde.write_container(folder / "part-0.avro", contract, records)
            (folder / ".part-1.avro.inprogress").write_bytes(b"not yet committed")  # readers skip it


def _registry_with_champion(root: Path, tmp: Path) -> str:
    model = WEAK.save(tmp / "weak-model")
    return Registry(root).publish(model, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                                  metrics={"log_loss": 0.9}, promote=True).version  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("learn")
    config = _config(tmp)
    settings = load_settings(config)
    pseudonym = prepare_pseudonym_key(settings).pseudonymiser()  # the key `pricing learn` will use
    archive = tmp / "archive"
    _write_archive(archive, simulate(N, seed=3), pseudonym)
    registry = tmp / "registry"
    champion = _registry_with_champion(registry, tmp)
    return {"tmp": tmp, "config": config, "archive": archive, "registry": registry, "champion": champion}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_one_cycle_publishes_judges_records_and_promotes(world: dict, capsys: pytest.CaptureFixture[str]) -> None:
    reg = Registry(world["registry"])
    code, out, err = _run(capsys, "--config", str(world["config"]), "learn", "--archive", str(world["archive"]),
                          "--registry", str(world["registry"]), "--since", SINCE, "--until", UNTIL)  # fmt: skip
    assert code == 0, err
    versions = reg.versions()
    assert len(versions) == 2 and versions[0] == world["champion"]
    challenger = versions[1]
    assert reg.latest_version() == challenger, out
    assert f"{challenger} promoted over {world['champion']}" in out
    # the registry recorded the decision with its figures, and the promotion with its evidence
    (evaluation,) = reg.evaluations(challenger)
    decision = evaluation["decision"]
    assert decision["verdict"] == "promote" and all(decision["checks"].values())
    assert decision["champion"]["version"] == world["champion"] and decision["challenger"]["version"] == challenger
    assert decision["challenger"]["snips"]["low"] > decision["champion"]["snips"]["value"]
    assert decision["challenger"]["dr"]["low"] > decision["champion"]["dr"]["value"]
    assert decision["data"]["holdout_rows"] == round(0.4 * N) and decision["data"]["rows"] == N
    assert decision["holdout"]["start_ms"] >= START_MS + (N - round(0.4 * N)) * 1000  # the newest rows
    promotion = reg.history()[-1]
    assert promotion["action"] == "promote" and promotion["version"] == challenger
    assert promotion["evidence"]["against"] == world["champion"]
    manifest = reg.manifest(challenger)
    assert manifest.extra["learn"]["train_rows"] == N - round(0.4 * N) and manifest.trust_region is not None

    code, out, _ = _run(capsys, "models", "show", challenger, "--registry", str(world["registry"]))
    assert code == 0 and f"gate:            promoted at {evaluation['at']} against {world['champion']}" in out
    assert "challenger" in out and "champion" in out and "SNIPS" in out
    code, out, _ = _run(capsys, "models", "show", challenger, "--json", "--registry", str(world["registry"]))
    assert json.loads(out)["gate"]["verdict"] == "promote"

    # the rollback stack ignores gate decisions: back to the weak champion
    assert reg.rollback().latest == world["champion"]


def test_no_archived_files_in_the_range_is_one_clear_error(world: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "--config", str(world["config"]), "learn", "--archive", str(world["archive"]),
                          "--registry", str(world["registry"]), "--since", "2025-06-01", "--until", "2025-06-02")
    assert code == 1 and out == ""
    assert err.startswith("pricing: error: ") and "no archived files of topic priced-events" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_logs_without_propensities_are_refused_before_training(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    config = _config(tmp_path)
    pseudonym = prepare_pseudonym_key(load_settings(config)).pseudonymiser()
    _write_archive(tmp_path / "archive", simulate(1_500, seed=4), pseudonym, propensity=False)
    code, _, err = _run(capsys, "--config", str(config), "learn", "--archive", str(tmp_path / "archive"),
                        "--registry", str(tmp_path / "registry"), "--since", SINCE, "--until", UNTIL)  # fmt: skip
    assert code == 1 and "0 of the 600 holdout rows carry a propensity" in err
    assert not (tmp_path / "registry" / "versions").exists()  # nothing trained, nothing published


def test_every_needs_a_moving_window(world: dict, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "--config", str(world["config"]), "learn", "--archive", str(world["archive"]),
                        "--since", SINCE, "--every", "6h")  # fmt: skip
    assert code == 1 and "--every moves the window" in err


def test_run_every_reports_each_cycle_and_stops_on_ctrl_c() -> None:
    calls, out = [], io.StringIO()

    def cycle() -> CycleResult:
        calls.append(1)
        raise LearnError("no archived priced events in x for y")

    def sleep(seconds: float) -> None:
        assert 0 <= seconds <= 3600
        if len(calls) == 2:
            raise KeyboardInterrupt

    assert run_every(3_600_000, cycle, out=out, sleep=sleep) == 2
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("cycle 1 (") and "skipped: no archived priced events" in lines[0]
    assert lines[1].startswith("cycle 2 (") and lines[-1] == "stopped (Ctrl-C) after 2 cycle(s)"


def test_run_every_stops_on_a_bug() -> None:
    def cycle() -> CycleResult:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_every(1_000, cycle, out=io.StringIO(), sleep=lambda s: None)


def test_fake_champion_round_trips(tmp_path: Path) -> None:
    """The fake model the registry's champion holds loads back as the same model (the test's premise)."""
    from pricing_udfs.model.serving import load_model

    assert load_model(WEAK.save(tmp_path / "m")) == WEAK and isinstance(WEAK, FakeDemandModel)
    assert np.isfinite(WEAK.score(np.tile(FEATURE_SPEC.defaults, (1, 1)), np.array([[100.0]]))).all()
