"""The demand model seam: ``load(path) -> model`` and ``score(model, features[N,F], prices[N,K]) -> probs[N,K]``.

A demand model answers one question: the probability that this user buys this product
at each of K candidate prices. The policy multiplies it by money, so it must be monotone
non-increasing in price and calibrated; both are properties of the model, not of the
policy. Two implementations behind one seam (after Beam's ``ModelHandler``):

- :class:`TFModelHandler` / :class:`TFDemandModel`: the TensorFlow SavedModel that
  ``pricing.training`` exports and the registry stores. TensorFlow is imported only when
  a SavedModel is loaded, so ``import pricing_udfs`` (and this package) stays light.
- :class:`FakeModelHandler` / :class:`FakeDemandModel`: a numpy logistic curve in
  price / reference (and, optionally, price / competitor minimum), for tests where
  TensorFlow is not the point.
- :class:`EnsembleModelHandler` / :class:`EnsembleDemandModel`: B of the above in one folder
  (a bootstrap ensemble, ``pricing_udfs.model.ensemble``): ``score`` is the members' mean,
  ``score_members`` returns ``[B, N, K]`` for Thompson sampling.

Both score the same inputs and return the same thing:

``features``
    ``[N, F]`` raw feature vectors in the order of ``pricing_udfs.features.FEATURE_SPEC``
    (F = ``len(FEATURE_SPEC.names)``), exactly as the job serves them: the model
    normalises inside. Any float or int array; scored as float64.
``prices``
    ``[N, K]`` candidate prices in minor units, K >= 1 per row (the same K for all rows).
    Any float or int array; scored as float64.
returns
    ``[N, K]`` float32 purchase probabilities in [0, 1], non-increasing along each row's
    prices when that row's prices are sorted ascending.

The SavedModel's serving signature (``SIGNATURE_NAME`` = ``serving_default``)::

    serving_default(features: float64 [None, F], prices: float64 [None, None])
        -> {"probability": float32 [None, K]}

It scores all K candidates of all N rows in one graph call (no Python loop). A second
signature, ``price_slope(features: float64 [None, F]) -> {"slope": float32 [None]}``,
returns each row's total price sensitivity ``s = -d logit / d log(price) >= 0``, that is
``(a + known * b) / temperature`` below, for elasticity reports.

The model (``pricing_udfs.model.network``)::

    logit = (level(x) - softplus(a(x)) * log(price / reference)
             - known * softplus(b(x)) * log(price / competitor_min)) / temperature
    probability = sigmoid(logit)

``reference`` is the ``list_price_minor`` feature. When it is unknown (<= 0, the cold-start
default, or not finite) the reference is the price itself, so that term is 0: with no
reference the model has nothing to compare the price with. ``competitor_min`` is the
``competitor_min_15m_minor`` feature and ``known`` is 1 when a competitor price is known
(``competitor_events_15m > 0`` and ``competitor_min_15m_minor > 0``), else 0 and the
competitor term drops out. Both slopes are >= 0, so the probability never rises with the
price (flat when neither term applies, still monotone), and a cheaper competitor lowers it
at every price. ``a`` and ``b`` depend on the features except the competitor's price
level and event count (only on whether it is known). Prices are clipped to [1, 1e13]
minor units before the logs (so 0 or a negative price scores as 1 minor unit, the
cheapest possible); a NaN price gives a NaN probability, which the policy's output
checks turn into a fallback.
"""

from __future__ import annotations

from pricing_udfs.model.handler import (
    OUTPUT_KEY,
    PRICES_KEY,
    FEATURES_KEY,
    MAX_PRICE_MINOR,
    MIN_PRICE_MINOR,
    SIGNATURE_NAME,
    SLOPE_SIGNATURE_NAME,
    DemandModel,
    FakeDemandModel,
    FakeModelHandler,
    ModelHandler,
    check_inputs,
)
from pricing_udfs.model.ensemble import EnsembleDemandModel, EnsembleModelHandler
from pricing_udfs.model.tf_handler import TFDemandModel, TFModelHandler

__all__ = [
    "FEATURES_KEY",
    "MAX_PRICE_MINOR",
    "MIN_PRICE_MINOR",
    "OUTPUT_KEY",
    "PRICES_KEY",
    "SIGNATURE_NAME",
    "SLOPE_SIGNATURE_NAME",
    "DemandModel",
    "EnsembleDemandModel",
    "EnsembleModelHandler",
    "FakeDemandModel",
    "FakeModelHandler",
    "ModelHandler",
    "TFDemandModel",
    "TFModelHandler",
    "check_inputs",
]
