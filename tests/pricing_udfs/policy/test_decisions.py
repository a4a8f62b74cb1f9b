"""The adapter's check: a bad decision never reaches the encoder."""

import numpy as np
import pandas as pd
import pytest

from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.policy import DECISION_COLUMNS, check_decisions
from tests.pricing_udfs.policy.test_model_policy import batch, policy


@pytest.mark.parametrize("bad_price", [np.nan, np.inf, -5, 0, 999_999_999, 1000.5])
def test_a_bad_price_is_replaced_by_the_fallback(bad_price: float) -> None:
    p = policy(FakeDemandModel())
    b = batch(3, ref=1000, cost=500)
    d = p.decide(b).astype({"price_minor": object})
    d.loc[1, "price_minor"] = bad_price
    out, replaced = check_decisions(p, b, d)
    assert replaced == 1
    assert out.loc[1, "price_minor"] == 1000 and out.loc[1, "reason_codes"][0] == "invalid_decision"
    assert out.loc[1, "fallback_used"] and not out.loc[0, "fallback_used"]
    assert out["price_minor"].dtype == np.int64


@pytest.mark.parametrize("result", [None, "prices", pd.DataFrame({"price_minor": [1, 2]})])
def test_a_malformed_result_reprices_the_whole_batch(result: object) -> None:
    p = policy(FakeDemandModel())
    b = batch(3, ref=1000, cost=500)
    out, replaced = check_decisions(p, b, result)
    assert replaced == 3 and list(out.columns) == list(DECISION_COLUMNS)
    assert (out["price_minor"] == 1000).all()


def test_the_fallback_uses_the_default_price_without_a_list_price() -> None:
    p = policy(FakeDemandModel())
    b = batch(2, ref=0, cost=500)
    d = p.fallback.decide(b)
    assert d["price_minor"].tolist() == [1999, 1999] and d["currency"].tolist() == ["EUR", "EUR"]
    assert d["reason_codes"].tolist() == [["default_price"], ["default_price"]]
