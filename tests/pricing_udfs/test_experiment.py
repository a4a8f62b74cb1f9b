"""The live split: which users the challenger serves, and the scoring stage serving each arm with its own model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricing_udfs import serde
from pricing_udfs.experiment import CHALLENGER, CHAMPION, ExperimentConfig, challenger_rows, user_unit
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.model.registry import Registry
from pricing_udfs.recommend.stage import encode_recommendations
from pricing_udfs.scoring import ScoringConfig, ScoringStage
from pricing_udfs.serde import Contract
from pricing_udfs.udfs import encode_priced_events
from tests.pricing_udfs.test_scoring import T, requests

USERS = [f"user-{i}" for i in range(20_000)]


def _experiment(share: float = 0.3, id: str = "exp-1", version: str = "v20261205T000000Z-00000000") -> ExperimentConfig:
    return ExperimentConfig(id=id, challenger_version=version, share=share)


@pytest.mark.parametrize("share", [0.05, 0.3, 0.5])
def test_the_challengers_share_of_users_is_the_configured_one(share: float) -> None:
    got = challenger_rows(USERS, _experiment(share)).mean()
    assert abs(got - share) < 4 * np.sqrt(share * (1 - share) / len(USERS))


def test_a_user_stays_in_one_arm_and_a_new_experiment_reshuffles() -> None:
    a = challenger_rows(USERS, _experiment(0.5, "exp-1"))
    again = challenger_rows(list(reversed(USERS)), _experiment(0.5, "exp-1"))[::-1]
    assert (a == again).all()  # sticky, whatever the batch around the user
    b = challenger_rows(USERS, _experiment(0.5, "exp-2"))
    assert 0.4 < (a == b).mean() < 0.6  # independent of the first split
    assert (challenger_rows(USERS, _experiment(0.2, "exp-1")) <= challenger_rows(USERS, _experiment(0.4, "exp-1"))).all()


@given(st.lists(st.text(max_size=20), max_size=50))
def test_points_are_in_the_unit_interval_and_anonymous_requests_are_champions(users: list[str]) -> None:
    units = user_unit(users, "e")
    assert ((units >= 0) & (units < 1)).all()
    rows = challenger_rows(users, _experiment(0.5))
    assert not rows[[u == "" for u in users]].any() if users else True


def _publish(registry: Registry, tmp_path: Path, name: str, *, promote: bool, **fake: float) -> str:
    FakeDemandModel(**fake).save(tmp_path / name)
    return registry.publish(tmp_path / name, feature_spec_version=FEATURE_SPEC.version, training_window=(0, 1),
                            metrics={}, promote=promote).version  # fmt: skip


def test_each_arm_is_priced_by_its_own_model_and_logged(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    champion = _publish(registry, tmp_path, "a", promote=True, slope=4.0)  # price-sensitive: a low price
    challenger = _publish(registry, tmp_path, "b", promote=False, slope=0.5)  # insensitive: a high price
    experiment = _experiment(0.5, version=challenger)
    stage = ScoringStage(ScoringConfig(registry_dir=str(registry.root), watch_interval_s=0.001,
                                       experiment=experiment))  # fmt: skip
    stage.open()
    try:
        batch = requests(400)
        batch["user_id"] = [f"user-{i % 40}" if i % 10 else "" for i in range(len(batch))]
        decisions = stage.decide(batch)
    finally:
        stage.close()
    chal = challenger_rows(batch["user_id"].tolist(), experiment)
    assert 0 < chal.sum() < len(batch)
    assert (decisions["arm"] == np.where(chal, CHALLENGER, CHAMPION)).all()
    assert (decisions.loc[chal, "model_version"] == challenger).all()
    assert (decisions.loc[~chal, "model_version"] == champion).all()
    assert decisions.loc[chal, "price_minor"].min() > decisions.loc[~chal, "price_minor"].max()
    assert stage.counts["experiment_challenger"] == chal.sum()
    events = [serde.decode(Contract.PRICED_EVENT, b).record for b in
              encode_priced_events(batch, decisions, spec=FEATURE_SPEC, priced_time_ms=T + 5)]  # fmt: skip
    assert [e["arm"] for e in events] == decisions["arm"].tolist()
    assert {e["experiment_id"] for e in events} == {"exp-1"}
    assert [e["request_id"] for e in events] == batch["request_id"].tolist()  # the rows keep their order


def test_until_the_challenger_loads_the_champion_serves_everyone_and_says_so(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    _publish(registry, tmp_path, "a", promote=True, slope=4.0)
    stage = ScoringStage(ScoringConfig(registry_dir=str(registry.root), watch_interval_s=0.001,
                                       experiment=_experiment(0.5)))  # a version the registry does not have
    stage.open()
    try:
        batch = requests(50)
        batch["user_id"] = [f"user-{i}" for i in range(len(batch))]
        decisions = stage.decide(batch)
    finally:
        stage.close()
    assert (decisions["arm"] == CHAMPION).all() and stage.counts["experiment_challenger_unavailable"] == 50


def test_without_an_experiment_the_fields_are_null(tmp_path: Path) -> None:
    batch = requests(2)
    batch["user_id"] = ["u1", "u2"]
    stage = ScoringStage(ScoringConfig(registry_dir=str(tmp_path / "none")))
    stage.open()
    decisions = stage.decide(batch)
    stage.close()
    events = [serde.decode(Contract.PRICED_EVENT, b).record for b in
              encode_priced_events(batch, decisions, spec=FEATURE_SPEC, priced_time_ms=T + 5)]  # fmt: skip
    assert all(e["arm"] is None and e["experiment_id"] is None for e in events)
    rec = {"request_id": "r", "user_id": "u", "items": [], "model_version": "none", "fallback_used": True,
           "request_time": T, "answered_time": T + 1, "feature_spec_version": FEATURE_SPEC.version}  # fmt: skip
    assert serde.decode(Contract.RECOMMENDATION, encode_recommendations([rec])[0]).record["arm"] is None
