"""``pricing backfill`` applies the running job's rules: its late-event allowance and dedupe window come from [job]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pricing import cli
from pricing.config import load_settings


def test_backfill_takes_the_jobs_rules_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class _Summary:
        rows = 3

        def text(self) -> str:
            return "3 rows"

    def fake_run_backfill(history: Path, out: Path, **kwargs: Any) -> _Summary:
        seen.update(kwargs, history=history, out=out)
        return _Summary()

    monkeypatch.setattr("jobs.training_set.run_backfill", fake_run_backfill)
    settings = load_settings(job={"watermark_out_of_orderness_ms": 7_000, "dedupe_window_ms": 120_000})
    args = cli._parser().parse_args(
        ["backfill", "--history", str(tmp_path / "h"), "--out", str(tmp_path / "o"), "--attribution-window-min", "45"]
    )
    assert args.func(args, settings) == 0
    assert (seen["allowance_ms"], seen["dedupe_window_ms"], seen["attribution_window_ms"]) == (7_000, 120_000, 2_700_000)
    assert seen["history"] == tmp_path / "h"


def test_train_publishes_the_trained_model_to_the_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pricing_udfs.model.registry import Registry

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "saved_model.pb").write_bytes(b"model")

    class _Trained:
        def __init__(self) -> None:
            self.model_dir = model_dir

        def registry_metadata(self) -> dict[str, Any]:
            return {"feature_spec_version": "features/1", "training_window": (1, 2), "metrics": {"log_loss": 0.25}}

        def report(self) -> str:
            return "report"

    monkeypatch.setattr("pricing.training.train", lambda data, **kwargs: _Trained())  # ignores its scratch out_dir
    monkeypatch.setattr("pricing.training_cli._write_report", lambda args, trained: model_dir / "report.md")
    registry = tmp_path / "registry"
    args = cli._parser().parse_args(["train", "--data", str(tmp_path), "--registry", str(registry), "--promote"])
    assert args.func(args, load_settings()) == 0
    manifest = Registry(registry).manifest("latest")
    assert (manifest.feature_spec_version, dict(manifest.metrics)) == ("features/1", {"log_loss": 0.25})
    assert (Registry(registry).resolve("latest") / "model" / "saved_model.pb").read_bytes() == b"model"
