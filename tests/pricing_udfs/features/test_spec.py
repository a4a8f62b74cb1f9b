import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs import features as feature_sql
from pricing_udfs.features.spec import FEATURE_SPEC, SPEC_FILE, FeatureSpec


def test_spec_has_a_version_groups_and_defaults() -> None:
    assert FEATURE_SPEC.version.startswith("features/")
    assert {f.group for f in FEATURE_SPEC.features} == {"product", "user", "user_product", "user_category", "context", "flags"}
    assert FEATURE_SPEC.defaults[FEATURE_SPEC.index("is_new_user")] == 1.0


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(FEATURE_SPEC.names),
                       st.none() | st.floats(allow_nan=True, allow_infinity=False) | st.integers(-10**9, 10**9)))
def test_vector_puts_each_value_in_its_place_and_defaults_elsewhere(values: dict) -> None:
    v = FEATURE_SPEC.vector(values)
    assert v.shape == (len(FEATURE_SPEC.names),) and v.dtype == np.float64
    for i, feature in enumerate(FEATURE_SPEC.features):
        given_value = values.get(feature.name)
        missing = given_value is None or (isinstance(given_value, float) and np.isnan(given_value))
        assert v[i] == (feature.default if missing else float(given_value))


def test_features_3_adds_the_users_history_with_the_product() -> None:
    """features/3: the user's own views, carts and purchases of the product priced, after the user features."""
    affinity = [f for f in FEATURE_SPEC.features if f.group == "user_product"]
    assert [f.name for f in affinity] == ["user_product_views_24h", "user_product_carts_24h",
                                          "user_product_purchases_24h"]
    assert all(f.default == 0.0 for f in affinity)
    at = FEATURE_SPEC.index("user_product_views_24h")
    assert FEATURE_SPEC.names[at - 1] == "user_distinct_products_30m"


def test_features_4_adds_the_users_history_with_the_category() -> None:
    """features/4: the user's views, carts and purchases of any product of the priced product's category."""
    assert FEATURE_SPEC.version == "features/4"
    affinity = [f for f in FEATURE_SPEC.features if f.group == "user_category"]
    assert [f.name for f in affinity] == ["user_category_views_24h", "user_category_carts_24h",
                                          "user_category_purchases_24h"]
    assert all(f.default == 0.0 for f in affinity)
    at = FEATURE_SPEC.index("user_category_views_24h")
    assert FEATURE_SPEC.names[at - 1] == "user_product_purchases_24h" and len(FEATURE_SPEC.names) == 40


def test_vector_fills_defaults_and_rejects_unknown_names() -> None:
    v = FEATURE_SPEC.vector({"views_1h": 4, "inventory": None, "conversion_1h": float("nan")})
    assert v[FEATURE_SPEC.index("views_1h")] == 4.0
    assert v[FEATURE_SPEC.index("inventory")] == -1.0
    assert v[FEATURE_SPEC.index("conversion_1h")] == 0.0
    assert v.dtype == np.float64
    with pytest.raises(KeyError, match="nope"):
        FEATURE_SPEC.vector({"nope": 1.0})


def test_duplicate_names_are_rejected(tmp_path) -> None:
    raw = json.loads(SPEC_FILE.read_text())
    raw["features"].append(dict(raw["features"][0]))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSpec.load(path)


def test_job_sql_covers_exactly_the_spec(tmp_path) -> None:
    """The job refuses to build when the spec and its SQL disagree (a renamed or added feature)."""
    raw = json.loads(SPEC_FILE.read_text())
    raw["features"].append({"name": "brand_new", "group": "product", "default": 0.0, "doc": "x"})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(raw))

    class _Env:
        def execute_sql(self, sql: str) -> None:
            pass

    with pytest.raises(ValueError, match="brand_new"):
        feature_sql.declare_feature_views(_Env(), requests="r", market="m", behaviour="b", catalogue="c",
                                          spec=FeatureSpec.load(path))
