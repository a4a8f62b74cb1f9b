"""``pricing models list|show|promote|rollback`` through ``pricing.cli.main``."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from pricing import cli
from pricing.config import load_settings
from pricing.config import registry_dir
from pricing_udfs.model.registry import Registry

T0 = dt.datetime(2026, 11, 29, 7, 15, tzinfo=dt.timezone.utc)
METRICS = {"log_loss": 0.41, "auc": 0.72, "base_rate_log_loss": 0.52, "calibration_error": 0.013}


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pricing.toml, no PRICING_* settings from the environment, state under tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRICING_CONFIG", raising=False)
    monkeypatch.delenv("PRICING_STATE_DIR", raising=False)
    monkeypatch.delenv("PRICING_MODELS__REGISTRY_DIR", raising=False)


def _publish(root: Path, n: int, *, salt: bytes = b"") -> list[str]:
    versions = []
    for i in range(n):
        model = root.parent / f"model-{i}"
        model.mkdir(parents=True)
        (model / "saved_model.pb").write_bytes(salt + bytes([i]) * 16)
        reg = Registry(root, clock=lambda i=i: T0 + dt.timedelta(hours=i))
        versions.append(
            reg.publish(
                model, feature_spec_version="features/1", training_window=(1_000, 2_000),
                metrics={**METRICS, "auc": 0.7 + i / 100}, extra={"seed": i},
            ).version
        )
    return versions


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _latest_line(out: str) -> str:
    [line] = [line for line in out.splitlines() if line.startswith("*")]
    return line


def test_list_show_promote_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "reg"
    a, b = _publish(root, 2)
    reg = ["--registry", str(root)]

    code, out, _ = run(capsys, "models", "list", *reg)
    assert code == 0
    assert a in out and b in out and "0.4100" in out and "0.7100" in out
    assert not any(line.startswith("*") for line in out.splitlines())
    assert "none promoted yet" in out

    code, out, _ = run(capsys, "models", "promote", a, *reg)
    assert (code, out.strip()) == (0, f"latest: none -> {a}")
    code, out, _ = run(capsys, "models", "list", *reg)
    assert a in _latest_line(out) and f"latest: {a}" in out

    code, out, _ = run(capsys, "models", "show", "latest", "--json", *reg)
    assert code == 0
    shown = json.loads(out)
    assert shown == Registry(root).manifest(a).to_dict()
    assert shown["version"] == a and shown["metrics"] == {**METRICS, "auc": 0.7}
    assert shown["training_window"] == {"start_ms": 1_000, "end_ms": 2_000} and shown["parent"] is None

    code, out, _ = run(capsys, "models", "promote", b, *reg)
    assert (code, out.strip()) == (0, f"latest: {a} -> {b}")
    code, out, _ = run(capsys, "models", "show", "latest", "--json", *reg)
    assert json.loads(out)["version"] == b
    code, out, _ = run(capsys, "models", "list", *reg)
    assert b in _latest_line(out)

    code, out, _ = run(capsys, "models", "show", b, *reg)
    assert code == 0
    assert f"version          {b}  (latest)" in out and "calibration_error" in out and "seed" in out

    code, out, _ = run(capsys, "models", "rollback", *reg)
    assert (code, out.strip()) == (0, f"rolled back latest: {b} -> {a}")
    code, out, _ = run(capsys, "models", "show", "latest", "--json", *reg)
    assert json.loads(out)["version"] == a

    code, out, err = run(capsys, "models", "rollback", *reg)
    assert code == 1 and out == ""
    assert err.startswith("pricing: error: nothing to roll back to") and "Traceback" not in err


def test_show_prints_the_trust_region_and_its_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pricing_udfs.model.registry import TrustRegion

    region = TrustRegion(feature_spec_version="features/2", rows=433_741, quantiles=(0.005, 0.995),
                         features={"views_24h": (3.0, 2195.0), "list_price_minor": (165.0, 68602.0)},
                         traffic_levels=(0.01, 0.5, 0.995), traffic={"views_24h": (5.0, 132.0, 2195.0)})  # fmt: skip
    root = tmp_path / "reg"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "saved_model.pb").write_bytes(b"x")
    version = Registry(root).publish(tmp_path / "m", feature_spec_version="features/2", training_window=(1, 2),
                                     metrics=METRICS, trust_region=region).version  # fmt: skip
    code, out, _ = run(capsys, "models", "show", version, "--registry", str(root))
    assert code == 0 and "trust region:   433,741 training rows (features/2)" in out
    lines = out.splitlines()
    # spec order (list price before views_24h), not the JSON's alphabetical order
    assert lines.index("  list_price_minor                      165        68602") \
        < lines.index("  views_24h                               3         2195")
    assert "  views_24h                          5     132    2195" in lines
    code, out, _ = run(capsys, "models", "show", version, "--json", "--registry", str(root))
    shown = json.loads(out)
    assert shown["manifest_version"] == 2 and shown["trust_region"] == region.to_dict()
    old = _publish(tmp_path / "old", 1)[0]  # published without one
    code, out, _ = run(capsys, "models", "show", old, "--registry", str(tmp_path / "old"))
    assert "trust region:   none (manifest version 2); the model prices without one" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "v20990101T000000Z-00000000"], "unknown version v20990101T000000Z-00000000"),
        (["show", "v20990101T000000Z-00000000", "--json"], "unknown version"),
        (["promote", "v20990101T000000Z-00000000"], "unknown version"),
        (["promote", "latest"], "not 'latest'"),
        (["show", "nonsense"], "not a version id"),
        (["show", "latest"], "no version of .* is promoted yet"),
        (["rollback"], "no version was promoted yet"),
    ],
)
def test_errors_exit_1_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    root = tmp_path / "reg"
    _publish(root, 1)
    code, out, err = run(capsys, "models", *argv, "--registry", str(root))
    assert code == 1 and out == ""
    assert err.startswith("pricing: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_an_empty_or_missing_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = ["--registry", str(tmp_path / "none")]
    code, out, err = run(capsys, "models", "list", *reg)
    assert (code, out) == (0, "") and "no model versions in" in err
    for argv in (["show", "latest"], ["rollback"], ["promote", "v20261129T071500Z-1a2b3c4d"]):
        code, out, err = run(capsys, "models", *argv, *reg)
        assert code == 1 and "pricing: error: " in err and "no model versions" in err
    assert not (tmp_path / "none").exists()


def test_the_default_registry_comes_from_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registry_dir(load_settings()) == Path(".pricing") / "models"
    [in_state] = _publish(tmp_path / "state" / "models", 1)
    monkeypatch.setenv("PRICING_STATE_DIR", str(tmp_path / "state"))
    code, out, _ = run(capsys, "models", "list")
    assert code == 0 and in_state in out

    elsewhere = _publish(tmp_path / "mounted" / "registry", 2, salt=b"other")
    (tmp_path / "pricing.toml").write_text(f'[models]\nregistry_dir = "{tmp_path / "mounted" / "registry"}"\n')
    code, out, _ = run(capsys, "models", "list")
    assert code == 0 and all(v in out for v in elsewhere) and in_state not in out

    monkeypatch.setenv("PRICING_MODELS__REGISTRY_DIR", str(tmp_path / "state" / "models"))
    code, out, _ = run(capsys, "models", "list")
    assert in_state in out and elsewhere[0] not in out

    code, out, _ = run(capsys, "models", "list", "--registry", str(tmp_path / "mounted" / "registry"))
    assert elsewhere[0] in out  # the flag wins


def test_os_errors_become_one_line_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "reg"
    [a] = _publish(root, 1)

    def read_only(self: Registry, version: str) -> None:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(Registry, "promote", read_only)
    code, _, err = run(capsys, "models", "promote", a, "--registry", str(root))
    assert code == 1 and err.startswith(f"pricing: error: registry {root}: ") and "Read-only" in err


def test_models_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["models"])
    assert exc.value.code == 2
    assert "ACTION" in capsys.readouterr().err


def test_show_prints_the_latest_gate_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "reg"
    a, b = _publish(root, 2)
    reg = Registry(root)
    figures = {"snips": {"value": 310.5, "low": 250.25, "high": 370.75, "n": 400, "effective_n": 33.0},
               "dr": {"value": 305.0, "low": 260.0, "high": 350.0, "n": 400, "effective_n": 33.0},
               "log_loss": 0.61, "calibration_error": 0.02}  # fmt: skip
    old = {"verdict": "refuse", "promote": False, "reasons": ["FAILED: an older run"], "checks": {"x": False},
           "challenger": {"version": b, **figures}, "champion": None, "holdout": {"rows_used": 100}}
    new = {"verdict": "refuse", "promote": False,
           "reasons": ["FAILED: SNIPS: the challenger's lower bound 250.25 is not above the champion's value 300.00"],
           "checks": {"beats_snips": False}, "challenger": {"version": b, **figures},
           "champion": {"version": a, **figures, "log_loss": 0.6}, "holdout": {"rows_used": 400, "logged_value": 280.0}}
    reg.record_evaluation(b, old)
    reg.record_evaluation(b, new)

    code, out, _ = run(capsys, "models", "show", b, "--registry", str(root))
    assert code == 0
    assert re.search(rf"gate: +refused at \S+Z against {a}, on 400 holdout rows; 1 earlier decision", out)
    assert "FAILED: SNIPS: the challenger's lower bound 250.25" in out and "an older run" not in out
    assert re.search(r"challenger +310\.50 \[250\.25, 370\.75\] +305\.00 \[260\.00, 350\.00\] +33\.0 +0\.6100", out)
    assert re.search(r"champion +310\.50 .* 0\.6000", out) and "logged      280.00" in out

    code, out, _ = run(capsys, "models", "show", b, "--json", "--registry", str(root))
    shown = json.loads(out)
    assert shown.pop("gate") == {"at": reg.evaluations(b)[-1]["at"], **new}
    assert shown == reg.manifest(b).to_dict()
    code, out, _ = run(capsys, "models", "show", a, "--registry", str(root))
    assert code == 0 and "gate:" not in out  # no decision about a
