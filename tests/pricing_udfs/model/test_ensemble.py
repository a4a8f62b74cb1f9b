"""The ensemble model folder: score is the members' mean, score_members each member; load_model recognises the folder,
the registry stores it as one version, the canary checks every member. Fake members stand in for TensorFlow here
(a trained TF ensemble goes through the same path in tests/pricing/test_training_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.ensemble import (
    ENSEMBLE_FILE,
    EnsembleDemandModel,
    EnsembleModelHandler,
    is_ensemble,
    member_dir,
    write_ensemble_file,
)
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.model.serving import ModelWatcher, canary_batch, load_model, validate

MEMBERS = [FakeDemandModel(intercept=-1.0, slope=s) for s in (1.0, 2.5, 4.0)]


def save_ensemble(folder: Path, members: list[FakeDemandModel]) -> Path:
    for b, m in enumerate(members):
        m.save(member_dir(folder, b))
    write_ensemble_file(folder, len(members), feature_spec_version=FEATURE_SPEC.version)
    return folder


def publish_ensemble(registry: Registry, folder: Path, members: list[FakeDemandModel]) -> str:
    return registry.publish(save_ensemble(folder, members), feature_spec_version=FEATURE_SPEC.version,
                            training_window=(0, 1), metrics={}, promote=True).version  # fmt: skip


def test_score_is_the_members_mean_and_score_members_each_member() -> None:
    features, prices = canary_batch(FEATURE_SPEC)
    ens = EnsembleDemandModel(MEMBERS)
    each = ens.score_members(features, prices)
    assert each.shape == (3, *prices.shape) and each.dtype == np.float32
    for b, m in enumerate(MEMBERS):
        np.testing.assert_array_equal(each[b], m.score(features, prices))
    mean = ens.score(features, prices)
    assert mean.shape == prices.shape and mean.dtype == np.float32
    np.testing.assert_allclose(mean, np.mean([m.score(features, prices) for m in MEMBERS], axis=0), rtol=1e-6)
    assert EnsembleModelHandler().score(ens, features, prices).tolist() == mean.tolist()
    assert validate(ens, FEATURE_SPEC) is None


def test_published_loaded_and_validated_as_one_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    version = publish_ensemble(registry, tmp_path / "ens", MEMBERS)
    folder = registry.model_dir(version)
    assert is_ensemble(folder) and sorted(p.name for p in (folder / "members").iterdir()) == ["0", "1", "2"]
    assert json.loads((folder / ENSEMBLE_FILE).read_text())["members"] == ["members/0", "members/1", "members/2"]
    model = load_model(folder)
    assert isinstance(model, EnsembleDemandModel) and model.members == MEMBERS
    assert model.feature_spec_version == FEATURE_SPEC.version
    watcher = ModelWatcher(registry.root)
    watcher.check()
    assert watcher.current.version == version and isinstance(watcher.current.model, EnsembleDemandModel)


def test_a_broken_member_is_rejected_and_the_old_model_keeps_serving(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    good = publish_ensemble(registry, tmp_path / "good", MEMBERS)
    watcher = ModelWatcher(registry.root, interval_s=0)
    watcher.check()
    assert watcher.current.version == good
    nan = publish_ensemble(registry, tmp_path / "nan", [MEMBERS[0], FakeDemandModel(intercept=float("nan"))])
    assert "non-finite" in watcher.check() and nan in watcher.rejected
    unloadable = save_ensemble(tmp_path / "gone", MEMBERS)
    (member_dir(unloadable, 2) / "fake_demand_model.json").write_text("{not json")
    gone = registry.publish(unloadable, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                            metrics={}, promote=True).version  # fmt: skip
    assert "unloadable" in watcher.check() and gone in watcher.rejected
    assert watcher.current.version == good


class RisingWhereKnown:
    """A member whose curve rises (0.95x to 1.0x list price) on rows with a list price: a steep member hides it in
    the mean."""

    feature_spec_version = FEATURE_SPEC.version
    n_features = len(FEATURE_SPEC.names)

    def score(self, features: np.ndarray, prices: np.ndarray) -> np.ndarray:
        out = FakeDemandModel(slope=1.0).score(features, prices)
        known = features[:, FEATURE_SPEC.index("list_price_minor")] > 0
        out[known, 4] = out[known, 3] + 0.02  # canary prices: 0.25x, 0.5x, 0.8x, 0.95x, 1.0x, ...
        return out


def test_the_canary_checks_every_member_not_only_the_mean() -> None:
    ens = EnsembleDemandModel([FakeDemandModel(intercept=-1.0, slope=20.0), RisingWhereKnown()])
    features, prices = canary_batch(FEATURE_SPEC)
    mean = ens.score(features, prices)
    assert np.all(np.diff(mean, axis=1) <= 0)  # the mean alone looks fine
    reason = validate(ens, FEATURE_SPEC)
    assert reason is not None and reason.startswith("ensemble member 1 of 2") and "not monotone" in reason


def test_members_must_agree_and_the_folder_must_be_well_formed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="feature specs"):
        EnsembleDemandModel([FakeDemandModel(), FakeDemandModel(feature_spec_version="features/0")])
    with pytest.raises(ValueError, match="at least one"):
        EnsembleDemandModel([])
    folder = save_ensemble(tmp_path / "ens", MEMBERS)
    doc = json.loads((folder / ENSEMBLE_FILE).read_text())
    for broken in ({**doc, "members": ["members/0", "../../etc"], "size": 2}, {**doc, "size": 5},
                   {**doc, "format": "something-else/1"}):  # fmt: skip
        (folder / ENSEMBLE_FILE).write_text(json.dumps(broken))
        with pytest.raises(ValueError):
            load_model(folder)
    with pytest.raises(ValueError, match="not saved"):
        write_ensemble_file(tmp_path / "empty", 2, feature_spec_version=FEATURE_SPEC.version)
