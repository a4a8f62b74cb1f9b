import numpy as np
import pandas as pd

from pricing_udfs.policy import DECISION_COLUMNS, BaselineListPrice


def test_baseline_charges_list_price_and_falls_back_to_default() -> None:
    policy = BaselineListPrice(default_price_minor=1999, currency="EUR")
    batch = pd.DataFrame(
        {"list_price_minor": [1250, None, 0], "list_currency": ["USD", None, "EUR"]}
    )
    out = policy.decide(batch)
    assert list(out.columns) == list(DECISION_COLUMNS)
    assert out["price_minor"].tolist() == [1250, 1999, 1999]
    assert out["currency"].tolist() == ["USD", "EUR", "EUR"]
    assert out["fallback_used"].tolist() == [False, True, True]
    assert out["reason_codes"].tolist() == [["list_price"], ["default_price"], ["default_price"]]
    assert out["price_minor"].dtype == np.int64
