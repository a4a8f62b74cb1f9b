"""Pricing policies: given a batch of requests with their features, choose prices.

One seam for the job and for offline evaluation: ``decide(batch) -> decisions`` (a pandas
DataFrame in, one row of ``DECISION_COLUMNS`` per request out). The Flink UDF in
``pricing_udfs.udfs`` is a thin adapter around it that checks every decision
(``check_decisions``) before encoding; ``pricing evaluate`` runs the same object.

* ``guardrails``: the hard limits and their reason codes (also used by the simulator);
* ``decisions``: the decision columns, the ``Policy`` protocol, the rule-based fallback, the check;
* ``model_policy``: expected-profit maximisation with the demand model, exploration;
* ``trust_region``: how far a request lies from what the model saw in training, and what follows.
"""

from pricing_udfs.policy.decisions import (
    DECISION_COLUMNS,
    FALLBACK_VERSION,
    Policy,
    ReferencePriceFallback,
    check_decisions,
)
from pricing_udfs.policy.guardrails import LIMITS, Bounds, Guardrails
from pricing_udfs.policy.model_policy import ModelPolicy, PolicySettings
from pricing_udfs.policy.trust_region import TrustRegion, TrustRegionSettings

__all__ = [
    "DECISION_COLUMNS", "FALLBACK_VERSION", "LIMITS", "Bounds", "Guardrails", "ModelPolicy", "Policy",
    "PolicySettings", "ReferencePriceFallback", "TrustRegion", "TrustRegionSettings", "check_decisions",
]  # fmt: skip
