"""Features: one specification shared by the job, training and the model."""

from pricing_udfs.features.spec import FEATURE_SPEC, FeatureSpec

__all__ = ["FEATURE_SPEC", "FeatureSpec"]
