"""The labelled training rows: one schema for every source that makes them and for training.

A row is one offer: the feature vector served (or backfilled) for a price request, the
price offered, and whether that user bought that product within the attribution window.
The Beam pipeline (``jobs/training_set.py``) writes them as Parquet, from event history
(backfill) or from serving logs (priced events joined with purchases); ``pricing train``
reads them. Nothing else defines these columns.
"""

from __future__ import annotations

import pyarrow as pa

# Column -> Arrow type, in file order.
COLUMNS: dict[str, pa.DataType] = {
    "request_id": pa.string(),
    "user_id": pa.string(),
    "product_id": pa.string(),
    "event_time": pa.int64(),  # the request's event time, epoch millis
    "feature_spec_version": pa.string(),  # e.g. "features/1": the layout of `features`
    "features": pa.list_(pa.float64()),  # the spec's vector, in spec order
    "price_minor": pa.int64(),  # the price offered, minor units
    "currency": pa.string(),
    "label": pa.int8(),  # 1: the user bought the product within the attribution window after the offer
    "propensity": pa.float64(),  # probability that the serving policy chose this price (1.0 without exploration); null: unknown (history, fallback)
    "source": pa.string(),  # "history" (backfill) or "serving" (priced events)
}

SCHEMA = pa.schema([pa.field(name, type_, nullable=(name == "propensity")) for name, type_ in COLUMNS.items()])
