"""The demand model seam: ``load(path) -> model`` and ``score(model, features[N,F], prices[N,K]) -> probs[N,K]``.

A demand model answers one question: the probability that this user buys this product
at each of K candidate prices. The policy multiplies it by money, so it must be monotone
non-increasing in price and calibrated; both are properties of the model, not of the
policy. Two implementations behind one seam (after Beam's ``ModelHandler``):

- :class:`TFModelHandler` / :class:`TFDemandModel`: the TensorFlow SavedModel that
  ``pricing.training`` exports and the registry stores. TensorFlow is imported only when
  a SavedModel is loaded, so ``import pricing_udfs`` (and this package) stays light.
- :class:`FakeModelHandler` / :class:`FakeDemandModel`: a numpy logistic curve in
  price / reference, for tests where TensorFlow is not the point.

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
returns each row's price sensitivity s >= 0 in ``logit = level - s * log(price / reference)``
(the temperature folded in), for elasticity reports.

The model (``pricing_udfs.model.network``)::

    logit = (level(x) - softplus(slope(x)) * log(price / reference)) / temperature
    probability = sigmoid(logit)

``reference`` is the ``list_price_minor`` feature. When it is unknown (<= 0, the cold-start
default, or not finite) the reference is the price itself, so the price term is 0 and the
probability is flat in price for that row: with no reference the model has nothing to
compare the price with, and flat is still monotone. Prices are clipped to
[1, 1e13] minor units before the log (so 0 or a negative price scores as 1 minor unit,
the cheapest possible); a NaN price gives a NaN probability, which the policy's output
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
    "FakeDemandModel",
    "FakeModelHandler",
    "ModelHandler",
    "TFDemandModel",
    "TFModelHandler",
    "check_inputs",
]
