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


def test_train_passes_ensemble_through_and_defaults_to_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def fake_train(data: Path, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise SystemExit("stop here")

    monkeypatch.setattr("pricing.training.train", fake_train)
    for extra, size in (([], 1), (["--ensemble", "4"], 4)):
        args = cli._parser().parse_args(["train", "--data", str(tmp_path), "--registry", str(tmp_path / "r"), *extra])
        with pytest.raises(SystemExit, match="stop here"):
            args.func(args, load_settings())
        assert seen[-1]["ensemble_size"] == size
    for bad, message in ((["--ensemble", "0"], "1 or more"), (["--ensemble", "2", "--dp-epsilon", "1"], "combined")):
        args = cli._parser().parse_args(["train", "--data", str(tmp_path), *bad])
        with pytest.raises(SystemExit, match=message):
            args.func(args, load_settings())
    assert len(seen) == 2


def test_train_ensemble_publishes_one_version_that_serves_and_passes_the_canary(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`pricing train --ensemble 3` on a tiny training set, for real (TensorFlow): one registry version holding three
    members; load_model reads it, the canary checks every member, its metrics are its mean's, a broken member is refused."""
    pytest.importorskip("tensorflow")
    import shutil

    import numpy as np

    from pricing.training import load_training_set, log_loss, split
    from pricing_udfs.features import FEATURE_SPEC
    from pricing_udfs.model.ensemble import EnsembleDemandModel, member_dir
    from pricing_udfs.model.registry import Registry
    from pricing_udfs.model.serving import ModelWatcher, validate
    from tests.pricing_udfs.model import synthetic

    reported: list[object] = []

    def light_report(model: object, data: object, out_dir: Path, **_: object) -> Path:  # the plots cost ~10 s
        reported.append(model)
        out_dir.mkdir(parents=True)
        (out_dir / "report.md").write_text(f"{np.asarray(model.score(data.features, data.prices[:, None])).mean()}")
        return out_dir / "report.md"

    monkeypatch.setattr("pricing.model_report.write_report", light_report)
    data_dir = synthetic.write(synthetic.generate(2_500, seed=2), tmp_path / "set")
    registry = Registry(tmp_path / "registry")
    args = cli._parser().parse_args(["train", "--data", str(data_dir), "--registry", str(registry.root), "--promote",
                                     "--ensemble", "3", "--epochs", "1"])  # fmt: skip
    assert args.func(args, load_settings()) == 0
    assert "An ensemble of 3 networks" in capsys.readouterr().out
    assert isinstance(reported[0], EnsembleDemandModel)  # the evaluation report scores the mean
    manifest = registry.manifest("latest")
    assert len(registry.versions()) == 1 and manifest.metrics["ensemble_size"] == 3
    assert manifest.extra["ensemble"]["size"] == 3 and manifest.trust_region is not None
    folder = registry.model_dir(manifest.version)
    assert sorted(p.name for p in (folder / "members").iterdir()) == ["0", "1", "2"]
    watcher = ModelWatcher(registry.root, device="cpu")  # load_model, then the canary on every member
    watcher.check()
    model = watcher.current.model
    assert watcher.current.version == manifest.version and isinstance(model, EnsembleDemandModel) and model.size == 3
    assert validate(model, FEATURE_SPEC) is None
    # the metrics are the ensemble mean's: its log-loss on the test slice, recomputed from the published version
    _, _, test = split(load_training_set(data_dir, progress=None))
    each = model.score_members(test.features, test.prices[:, None])[:, :, 0]
    mean = model.score(test.features, test.prices[:, None])[:, 0]
    np.testing.assert_allclose(mean, each.mean(axis=0), atol=1e-6)
    assert log_loss(test.labels, mean) == pytest.approx(manifest.metrics["log_loss"], abs=1e-5)
    assert np.ptp(each, axis=0).max() > 1e-3  # bootstrap members differ
    # a version whose member is broken (its graph gone) is refused; the good one keeps serving
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (member_dir(broken, 1) / "saved_model.pb").unlink()
    bad = registry.publish(broken, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1), metrics={},
                           promote=True).version  # fmt: skip
    assert "unloadable" in watcher.check(force=True) and bad in watcher.rejected
    assert watcher.current.version == manifest.version
