from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing.sim.evaluate import Evaluation, evaluate_policies
from pricing.sim.policies import BATCH_COLUMNS, PricingPolicy, StaticMultiplierPolicy
from pricing.sim.scenario import get_scenario


class _ListPrice:
    """A policy written against the protocol only: the list price, like static-reference."""

    name = "my-list-price"

    def __init__(self) -> None:
        self.columns: set[str] = set()

    def price(self, batch: pd.DataFrame) -> np.ndarray:
        self.columns |= set(batch.columns)
        return batch["reference_price_minor"].to_numpy()


@pytest.fixture(scope="module")
def evaluation() -> tuple[Evaluation, _ListPrice]:
    custom = _ListPrice()
    scenario = get_scenario("default").with_overrides(n_users=2_500, n_products=150)
    return evaluate_policies(scenario, days=3, policies=[custom]), custom


def test_oracle_beats_static_reference_beats_always_2x(evaluation: tuple[Evaluation, _ListPrice]) -> None:
    ev, _ = evaluation
    oracle, static, bad = ev.result("oracle"), ev.result("static-reference"), ev.result("always-2x")
    assert oracle.profit_minor > static.profit_minor > bad.profit_minor > 0
    best = ev.result("best-static")
    assert oracle.profit_minor > best.profit_minor >= static.profit_minor
    assert bad.conversion < static.conversion


def test_guardrails_and_fairness_metrics(evaluation: tuple[Evaluation, _ListPrice]) -> None:
    ev, _ = evaluation
    for name in ("static-reference", "best-static", "competitor-match", "oracle"):
        assert ev.result(name).guardrail_violations == 0, name
    bad = ev.result("always-2x")
    assert bad.guardrail_violations == bad.views and bad.violation_rate == 1.0
    assert ev.result("static-reference").price_spread_mean == 0.0
    assert ev.result("oracle").price_spread_mean > 0.02  # it personalises
    assert ev.result("always-2x").price_index == pytest.approx(2.0, abs=0.01)


def test_protocol_policies_face_the_same_draws(evaluation: tuple[Evaluation, _ListPrice]) -> None:
    ev, custom = evaluation
    assert isinstance(custom, PricingPolicy)
    assert set(BATCH_COLUMNS) <= custom.columns
    mine, static = ev.result("my-list-price"), ev.result("static-reference")
    # same prices + same shoppers and random draws = exactly the same outcome
    assert (mine.profit_minor, mine.purchases) == (static.profit_minor, static.purchases)
    assert np.array_equal(mine.cumulative_profit_minor, static.cumulative_profit_minor)


def test_report_files(tmp_path: Path, evaluation: tuple[Evaluation, _ListPrice]) -> None:
    ev, _ = evaluation
    paths = ev.write(tmp_path / "eval")
    table = pd.read_csv(paths["csv"])
    assert table["policy"].tolist()[:5] == ["static-reference", ev.result("best-static").name, "competitor-match",
                                            "oracle", "always-2x"]  # fmt: skip
    assert table.loc[table["policy"] == "oracle", "profit_minor"].item() == ev.result("oracle").profit_minor
    md = paths["markdown"].read_text()
    assert "| oracle |" in md and "| always-2x |" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_policy_output_is_reported() -> None:
    class Broken:
        def price(self, batch: pd.DataFrame) -> np.ndarray:
            return np.zeros(len(batch) + 1)

    scenario = get_scenario("default").with_overrides(n_users=200, n_products=20)
    with pytest.raises(ValueError, match="policy Broken returned shape"):
        evaluate_policies(scenario, days=1, policies=[Broken()], static_grid=[1.0])
    with pytest.raises(TypeError, match="no price"):
        evaluate_policies(scenario, days=1, policies={"x": object()}, static_grid=[1.0])  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="static_grid must hold at least one multiplier"):
        evaluate_policies(scenario, days=1, static_grid=[])
    assert StaticMultiplierPolicy(1.2).name == "static-x1.2"


def test_results_are_found_by_their_key_or_full_name_only() -> None:
    scenario = get_scenario("default").with_overrides(n_users=200, n_products=20)
    ev = evaluate_policies(scenario, days=1, policies={"my policy": StaticMultiplierPolicy(1.0)}, static_grid=[0.9, 1.0])
    assert ev.result("my policy").name == "my policy"
    best = ev.result("best-static")
    assert best.name == f"best-static (x{ev.best_static_multiplier:.2f})" and ev.result(best.name) is best
    with pytest.raises(KeyError, match="no policy named 'my'"):
        ev.result("my")  # a name's first word is not its key
