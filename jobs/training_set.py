"""The training set: labelled offers as Parquet (``pricing.training_rows.SCHEMA``), in Apache Beam.

One pipeline, two sources, one output. The runner is an option (``DirectRunner`` by
default; the same transforms run on Flink or Dataflow).

**Backfill from event history** (``build_backfill`` / ``run_backfill``): a folder with
``behaviour_events.avro``, ``market_events.avro``, ``price_requests.avro`` and ``catalogue.avro``, Avro
container files in the topics' format and in arrival order (what ``pricing simulate
history`` writes), or the archive (``jobs/archive.py``; :func:`archive_files` picks each topic's files for a time
range, in the layout ``pricing.archive_layout`` describes; a topic's files are read as one sequence, hour by hour,
so the late rule sees an event that arrived in a later hour before the ones that arrived earlier in its own hour
and may call fewer events late than the job did)::

    read each topic in file order: value rules, late rule (not for the catalogue)
      -> by product (bucket): latest values, 5 min / 15 min / 1 h windows, velocity,
                              the offered price and the label of each request,
                              the list price in force at each purchase,
                              the category (latest catalogue entry) at each behaviour event and request
      -> by user (bucket):    30 min / 24 h windows, all-history values, and per (user, product)
                              and per (user, category) the user's 24 h funnel of the requested product
                              and of its category
      -> by request:          the vector in spec order (defaults applied) -> Parquet

Every request gets the feature vector the streaming job (``jobs/features.py``) serves
for it, from the same ``FEATURE_SPEC``:

* a window of length W at a request with event time t holds the events with
  t - W <= event_time <= t (events at the request's own time count; nothing later);
* "latest" values (list price, cost, stock, promotion) are the last by event time, ties
  by arrival order (file order);
* the demand velocity is the job's hour-parity form of sum(q exp(-(t - t_i)/tau)) over
  the last hour; the user price ratio is paid / list price in force at each purchase,
  shrunk to the prior; anonymous requests (empty ``user_id``) get the user defaults;
* records that break a field rule of their schema (``constraints``) are left out, as
  the job dead-letters them; so is a request whose ``request_id`` was already requested
  for the same product within ``dedupe_window_ms`` (the job does not price it again).

**Late events.** The job dead-letters an event that is behind its source's watermark,
the newest event time read on that topic minus ``watermark_out_of_orderness_ms``. The
backfill applies that rule deterministically: per topic, in file (arrival) order, each
event against the watermark of the events before it (``allowance_ms``, default the
job's setting). A late market or behaviour event is left out of the features, a late
request gets no row. The live job emits watermarks periodically (and per partition,
the smallest wins), so its watermark trails this one: it may keep a few events the
backfill calls late, never the other way round. Late behaviour still counts for the
offered price and the label: those are facts about the offer, not served features.

**Offer and label.** The offered price is the price seen in the view that carries the
request's ``request_id`` (history and live traffic write it); without one, the first
view of the same user and product within the attribution window after the request.
A request with no such view has no known offer and gives no row (counted as
``requests_without_offer``). The label is 1 when the same user bought the same product
within ``attribution_window_ms`` after the offer (t <= purchase time <= t + window):
a purchase carrying a ``request_id`` counts for that request only (same product; same
user unless the request was anonymous); a purchase without one counts for the same
user's latest offer of that product at or before it (last touch). Never a purchase
before the offer, never another product. Late purchases count (lateness is about
features). ``propensity`` is null: the historical policy logs none.

**From serving logs** (``build_from_serving_logs`` / ``run_from_serving_logs``): priced
events (Avro container files of ``PricedEvent``: they log ``features``,
``feature_spec_version`` and the price) joined with the purchases that answer them,
labelled by the same rule. ``propensity`` is the priced event's (PricedEvent v3: the
probability that the policy chose that price, 1.0 without exploration; null when the fallback
priced it or the event predates v3); a priced event without ``features`` (schema v1) is
skipped, a repeated ``request_id`` is taken once.

Not reproduced: the job's state TTL (processing time; a product or user silent for
``state_ttl_ms`` starts over in the job) and its clock-skew rule (a wall-clock check).

At scale: keys are coarse buckets of products and users (``--buckets``), each stage
sorts its bucket once with numpy (O(n log n)); a file is read by one worker because the
late rule needs its order (archive topics one file per partition to spread reading).

    python -m jobs.training_set backfill --history DIR --out DIR
    python -m jobs.training_set serving --priced FILE_OR_DIR --behaviour FILE_OR_DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquetBatched
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pricing import archive_layout
from pricing.archive_layout import TimeRange
from pricing.config import JobSettings
from pricing.sim.history import CATALOGUE_FILE
from pricing.sim.history import FILES as HISTORY_FILES
from pricing.training_rows import SCHEMA
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC, FeatureSpec
from pricing_udfs.privacy import USER_FIELDS, PrivacyConfig, Pseudonymiser
from pricing_udfs.serde import Contract

_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
DEFAULT_ATTRIBUTION_WINDOW_MS = 30 * _MINUTE_MS
DEFAULT_BUCKETS = 8
_NAMESPACE = "training_set"
_PRODUCT_FEATURES = (
    "list_price_minor", "unit_cost_minor", "competitor_min_15m_minor", "competitor_mean_15m_minor",
    "competitor_events_15m", "inventory", "promotion_active", "views_5m", "carts_5m", "purchases_5m", "views_1h",
    "carts_1h", "purchases_1h", "conversion_1h", "views_24h", "purchases_24h", "conversion_24h", "demand_velocity", "hour_of_day", "day_of_week", "channel_web",
    "channel_app", "channel_marketplace", "is_new_product",
)  # fmt: skip
_USER_FEATURES = (
    "user_views_30m", "user_carts_30m", "user_purchases_30m", "user_views_24h", "user_carts_24h",
    "user_purchases_24h", "user_price_ratio", "user_secs_since_purchase", "user_distinct_products_30m", "is_new_user",
    "user_product_views_24h", "user_product_carts_24h", "user_product_purchases_24h",
    "user_category_views_24h", "user_category_carts_24h", "user_category_purchases_24h",
)  # fmt: skip


def _check_spec(spec: FeatureSpec) -> None:
    """This pipeline computes features/4's semantics; a new spec must be taught here (as in jobs/features.py)."""
    missing = set(spec.names) ^ set(_PRODUCT_FEATURES + _USER_FEATURES)
    if missing:
        raise ValueError(f"training_set and feature spec {spec.version} disagree on: {sorted(missing)}")
    if spec.constants["demand_velocity_horizon_ms"] != _HOUR_MS:
        raise ValueError("the demand velocity is computed over a one-hour window")


_check_spec(FEATURE_SPEC)


class TrainingSetOptions(PipelineOptions):
    """The pipeline's own options (``--allowance_ms`` etc. on a Beam command line)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        job = JobSettings()
        parser.add_argument("--allowance_ms", type=int, default=job.watermark_out_of_orderness_ms,
                            help="late rule: an event behind (newest event time read on its topic - this) is late")
        parser.add_argument("--attribution_window_ms", type=int, default=DEFAULT_ATTRIBUTION_WINDOW_MS,
                            help="a purchase this long after the offer (inclusive) still labels it")
        parser.add_argument("--dedupe_window_ms", type=int, default=job.dedupe_window_ms,
                            help="a request_id repeated for the same product within this much event time is not priced")
        parser.add_argument("--buckets", type=int, default=DEFAULT_BUCKETS,
                            help="product and user keys are hashed into this many buckets (the unit of parallel work)")
        parser.add_argument("--show_progress", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                            help="print progress lines to stderr")  # fmt: skip
        parser.add_argument("--pseudonym_secrets_dir", default=None,
                            help="the folder of the pseudonym key (pricing_udfs.privacy): raw user ids are replaced "
                                 "as the job replaces them; unset: user ids are kept as read")  # fmt: skip
        parser.add_argument("--pseudonym_key_id", default="k1", help="the key's id ([privacy] pseudonym_key_id)")
        parser.add_argument("--since_ms", type=int, default=None,
                            help="rows only for requests (priced events) at or after this event time (epoch ms)")
        parser.add_argument("--until_ms", type=int, default=None,
                            help="rows only for requests (priced events) before this event time (epoch ms)")


@dataclass(frozen=True)
class _Opts:
    """The plain values DoFns need (picklable, no PipelineOptions inside workers)."""

    allowance_ms: int
    attribution_window_ms: int
    dedupe_window_ms: int
    buckets: int
    show_progress: bool
    t0: float
    privacy: PrivacyConfig | None = None  # user ids of raw inputs become the job's pseudonyms
    rows_range: TimeRange = TimeRange()  # rows only for requests in this event-time range (context from anywhere)

    @classmethod
    def of(cls, options: PipelineOptions) -> "_Opts":
        o = options.view_as(TrainingSetOptions)
        for name in ("allowance_ms", "attribution_window_ms", "dedupe_window_ms"):
            if getattr(o, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if o.buckets < 1:
            raise ValueError("buckets must be >= 1")
        privacy = (PrivacyConfig(secrets_dir=o.pseudonym_secrets_dir, key_id=o.pseudonym_key_id)
                   if o.pseudonym_secrets_dir else None)  # fmt: skip
        return cls(o.allowance_ms, o.attribution_window_ms, o.dedupe_window_ms, o.buckets, o.show_progress,
                   time.time(), privacy, TimeRange(o.since_ms, o.until_ms))  # fmt: skip

    def pseudonymise(self, contract: Contract, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the user ids of a raw input replaced by the job's pseudonyms (no privacy: as it is)."""
        if self.privacy is None or contract not in USER_FIELDS or frame.empty:
            return frame
        field = USER_FIELDS[contract]
        pseudonym = _pseudonymiser(self.privacy)
        return frame.assign(**{field: [pseudonym(u) for u in frame[field].to_numpy(object)]})

    def say(self, text: str) -> None:
        if self.show_progress:
            sys.stderr.write(f"[{time.time() - self.t0:7.1f} s] {text}\n")
            sys.stderr.flush()


@cache
def _pseudonymiser(privacy: PrivacyConfig) -> Pseudonymiser:
    """One per worker process and key: the key file is read once."""
    return privacy.pseudonymiser()


# --------------------------------------------------------------------------------------------
# Reading: file order, value rules, the late rule
# --------------------------------------------------------------------------------------------


def read_events(path: Path | str, contract: Contract) -> pd.DataFrame:
    """A container file (a path, or a URI of the archive's object store) as a DataFrame with the contract's fields
    and ``seq`` (file, i.e. arrival, order)."""
    fields = [f["name"] for f in serde.published_schema(contract)["fields"]]
    with archive_layout.open_file(path) as f:
        records = serde.read_container(f, contract)
    frame = pd.DataFrame.from_records(records, columns=fields)
    if "event_time" in frame:
        frame["event_time"] = frame["event_time"].astype(np.int64)
    frame["seq"] = np.arange(len(frame), dtype=np.int64)
    return frame


def read_topic(paths: Sequence[Path | str], contract: Contract) -> pd.DataFrame:
    """Several container files of one topic, in the order given, as one frame (``seq`` runs on across them)."""
    frames = [read_events(p, contract) for p in paths]
    if len(frames) == 1:
        return frames[0]
    frame = pd.concat(frames, ignore_index=True)
    frame["seq"] = np.arange(len(frame), dtype=np.int64)
    return frame


def late_mask(event_time: np.ndarray, allowance_ms: int) -> np.ndarray:
    """Per event, in arrival order: behind the watermark (newest event time before it - allowance)?"""
    t = np.asarray(event_time, dtype=np.int64)
    if t.size == 0:
        return np.zeros(0, dtype=bool)
    watermark = np.empty_like(t)
    watermark[0] = np.iinfo(np.int64).min
    watermark[1:] = np.maximum.accumulate(t)[:-1] - allowance_ms
    return t <= watermark  # as the job: Flink's event-time operators drop an event at the watermark too


def invalid_mask(contract: Contract, frame: pd.DataFrame) -> np.ndarray:
    """Rows that break a ``constraints`` rule of the contract: ``serde.decode``'s value check, vectorized."""
    bad = np.zeros(len(frame), dtype=bool)
    for name, spec in serde.field_constraints(contract).items():
        if "by" in spec:
            by = frame[spec["by"]].to_numpy(dtype=object)
            for case, rule in spec["cases"].items():
                bad |= (by == case) & _breaks(frame, name, rule)
        else:
            bad |= _breaks(frame, name, spec)
    return bad


def _breaks(frame: pd.DataFrame, name: str, rule: dict[str, Any]) -> np.ndarray:
    col = frame[name]
    present = col.notna().to_numpy()
    out = np.zeros(len(frame), dtype=bool)
    if not present.any():
        return out
    is_str = np.fromiter((isinstance(v, str) for v in col.to_numpy(dtype=object)), dtype=bool, count=len(col))
    if is_str.any():
        lengths = col.where(is_str).str.len().to_numpy(dtype=float)
        too_short = lengths < rule.get("min_length", 0)
        too_long = lengths > rule.get("max_length", np.inf)
        out |= is_str & (too_short | too_long)
    num = present & ~is_str
    if num.any():
        values = pd.to_numeric(col.where(num), errors="coerce").to_numpy(dtype=float)
        outside = np.zeros(len(frame), dtype=bool)
        if "min" in rule:
            outside |= values < rule["min"]
        if "max" in rule:
            outside |= values > rule["max"]
        out |= num & outside
        if rule.get("unit") == "minor":
            currency = frame["currency"].fillna("").astype(str)
            out |= num & ~outside & ~currency.str.match(r"^[A-Z]{3}$").to_numpy(dtype=bool)
    return out


def _bucket(ids: Any, buckets: int) -> np.ndarray:
    """A stable hash bucket per id (the same in every process and run)."""
    values = np.asarray(ids, dtype=object)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    return (pd.util.hash_array(values) % np.uint64(buckets)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Sorted lookups: (key, time) as one int64, searched with numpy
# --------------------------------------------------------------------------------------------


class _Keys:
    """(code, event time) as one sortable int64: ``code * span + (time - base)``; base leaves room for
    lookbacks of up to ``lookback_ms`` before the earliest time."""

    def __init__(self, times: Iterable[np.ndarray], n_codes: int, lookback_ms: int) -> None:
        arrays = [np.asarray(t, dtype=np.int64) for t in times]
        arrays = [a for a in arrays if a.size]
        lo = min((int(a.min()) for a in arrays), default=0)
        hi = max((int(a.max()) for a in arrays), default=0)
        self.base = lo - lookback_ms - 1
        self.span = hi - self.base + 1
        if max(n_codes, 1) * self.span >= 2**62:
            raise OverflowError(f"{n_codes} keys x {self.span} ms do not fit one int64 key; use more buckets")

    def __call__(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        return np.asarray(codes, dtype=np.int64) * self.span + (np.asarray(times, dtype=np.int64) - self.base)


@dataclass
class _Events:
    """Events sorted by (code, time, arrival), with their keys."""

    codes: np.ndarray
    times: np.ndarray
    keys: np.ndarray
    order: np.ndarray  # positions in the input

    @classmethod
    def of(cls, keys: _Keys, codes: np.ndarray, times: np.ndarray, seq: np.ndarray) -> "_Events":
        order = np.lexsort((seq, times, codes))
        c, t = np.asarray(codes, np.int64)[order], np.asarray(times, np.int64)[order]
        return cls(codes=c, times=t, keys=keys(c, t), order=order)

    def upto(self, qkeys: np.ndarray) -> np.ndarray:
        """Index after the last event with the same code and time <= the query's."""
        return np.searchsorted(self.keys, qkeys, side="right")

    def since(self, qkeys: np.ndarray) -> np.ndarray:
        """Index of the first event with the same code (or a later one) and time >= the query's."""
        return np.searchsorted(self.keys, qkeys, side="left")

    def last(self, qcodes: np.ndarray, qkeys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index, found) of the last event of the query's code at or before its time."""
        idx = self.upto(qkeys) - 1
        safe = np.maximum(idx, 0)
        found = (idx >= 0) & (self.codes[safe] == qcodes) if self.codes.size else np.zeros(len(qkeys), bool)
        return safe, found


def _range_min(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """min(values[lo:hi]) per query (NaN when empty), with a sparse table: O(n log n) build, O(1) a query."""
    out = np.full(len(lo), np.nan)
    n = len(values)
    length = hi - lo
    has = length > 0
    if n == 0 or not has.any():
        return out
    table = [np.asarray(values, dtype=np.float64)]
    while (1 << len(table)) <= n:
        prev, half = table[-1], 1 << (len(table) - 1)
        table.append(np.minimum(prev[:-half], prev[half:]))
    level = np.zeros(len(lo), dtype=np.int64)
    level[has] = np.floor(np.log2(length[has])).astype(np.int64)
    for j in np.unique(level[has]):
        sel = has & (level == j)
        t = table[j]
        out[sel] = np.minimum(t[lo[sel]], t[hi[sel] - (1 << j)])
    return out


def _segment_cumsum(values: np.ndarray, segments: np.ndarray, *, reverse: bool = False) -> np.ndarray:
    """Running sums within runs of equal ``segments`` (sorted), in order (or from the end)."""
    if values.size == 0:
        return values.astype(np.float64)
    s = pd.Series(values[::-1] if reverse else values, dtype=np.float64)
    g = segments[::-1] if reverse else segments
    out = s.groupby(g, sort=False).cumsum().to_numpy()
    return out[::-1] if reverse else out


def _pair_codes(*frames: tuple[Any, Any]) -> list[np.ndarray]:
    """One int64 code per (a, b) pair, shared across ``frames`` (each a pair of columns)."""
    a_codes, a_uniques = pd.factorize(np.concatenate([np.asarray(a, dtype=object) for a, _ in frames]))
    b_codes, b_uniques = pd.factorize(np.concatenate([np.asarray(b, dtype=object) for _, b in frames]))
    pair = a_codes.astype(np.int64) * max(len(b_uniques), 1) + b_codes
    bounds = np.cumsum([0, *(len(a) for a, _ in frames)])
    return [pair[bounds[i] : bounds[i + 1]] for i in range(len(frames))]


# --------------------------------------------------------------------------------------------
# Product stage
# --------------------------------------------------------------------------------------------


def repeated_requests(requests: pd.DataFrame, window_ms: int) -> np.ndarray:
    """The job's duplicate rule: a request whose request_id was already requested for the same product
    (earlier in event time, ties by arrival) within ``window_ms`` before it is not priced again."""
    if requests.empty:
        return np.zeros(0, dtype=bool)
    codes = _pair_codes((requests["product_id"], requests["request_id"]))[0]
    t = requests["event_time"].to_numpy(np.int64)
    order = np.lexsort((requests["seq"].to_numpy(), t, codes))
    c, ts = codes[order], t[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (c[1:] == c[:-1]) & (ts[:-1] >= ts[1:] - window_ms)
    out = np.empty_like(repeat)
    out[order] = repeat
    return out


def product_features(market: pd.DataFrame, behaviour: pd.DataFrame, requests: pd.DataFrame,
                     spec: FeatureSpec = FEATURE_SPEC) -> pd.DataFrame:  # fmt: skip
    """The product and context features of each request (NaN: unknown, the spec's default applies).

    ``market`` and ``behaviour`` are the kept (valid, on time) events, ``requests`` the priced requests;
    each has ``seq``, its arrival order within its topic.
    """
    n = len(requests)
    out: dict[str, np.ndarray] = {}
    products, uniques = pd.factorize(
        np.concatenate([requests["product_id"].to_numpy(object), market["product_id"].to_numpy(object),
                        behaviour["product_id"].to_numpy(object)])  # fmt: skip
    )
    q_code = products[:n].astype(np.int64)
    m_code = products[n : n + len(market)].astype(np.int64)
    b_code = products[n + len(market) :].astype(np.int64)
    t = requests["event_time"].to_numpy(np.int64)
    keys = _Keys((t, market["event_time"].to_numpy(), behaviour["event_time"].to_numpy()), len(uniques), _DAY_MS)
    q_at = keys(q_code, t)

    m_kind = market["kind"].to_numpy(object)
    m_time = market["event_time"].to_numpy(np.int64)
    m_value = market["value"].to_numpy(np.int64)
    m_seq = market["seq"].to_numpy(np.int64)

    def latest(kind: str) -> np.ndarray:
        sel = m_kind == kind
        ev = _Events.of(keys, m_code[sel], m_time[sel], m_seq[sel])
        idx, found = ev.last(q_code, q_at)
        values = m_value[sel][ev.order].astype(np.float64)
        return np.where(found, values[idx] if values.size else np.nan, np.nan)

    out["list_price_minor"] = latest("list_price")
    out["unit_cost_minor"] = latest("cost")
    out["inventory"] = latest("inventory")
    promo = latest("promotion")
    out["promotion_active"] = np.where(np.isnan(promo), np.nan, (promo > 0).astype(np.float64))

    comp = m_kind == "competitor_price"
    ev = _Events.of(keys, m_code[comp], m_time[comp], m_seq[comp])
    values = m_value[comp][ev.order]
    lo, hi = ev.since(keys(q_code, t - 15 * _MINUTE_MS)), ev.upto(q_at)
    count = hi - lo
    prefix = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    total = (prefix[hi] - prefix[lo]).astype(np.float64)
    out["competitor_events_15m"] = count.astype(np.float64)
    out["competitor_min_15m_minor"] = _range_min(values, lo, hi)
    out["competitor_mean_15m_minor"] = np.where(count > 0, total / np.maximum(count, 1), np.nan)

    b_type = behaviour["type"].to_numpy(object)
    b_time = behaviour["event_time"].to_numpy(np.int64)
    b_seq = behaviour["seq"].to_numpy(np.int64)
    _funnel_counts(out, keys, b_type, b_code, b_time, b_seq, q_code, t, {"5m": 5 * _MINUTE_MS, "1h": _HOUR_MS, "24h": _DAY_MS})
    for w in ("1h", "24h"):
        views, bought = out[f"views_{w}"], out[f"purchases_{w}"]
        out[f"conversion_{w}"] = np.where(views > 0, bought / np.maximum(views, 1), np.nan)
    out["demand_velocity"] = _velocity(keys, q_code, t, behaviour[b_type == "purchase"], b_code[b_type == "purchase"],
                                       float(spec.constants["demand_velocity_tau_ms"]))  # fmt: skip

    first = keys(q_code, np.full(n, keys.base))  # before any event of the request's product
    seen = np.zeros(n, np.int64)
    for codes, times, seq in ((m_code, m_time, m_seq), (b_code, b_time, b_seq)):
        ev = _Events.of(keys, codes, times, seq)
        seen += ev.upto(q_at) - ev.since(first)
    out["is_new_product"] = (seen == 0).astype(np.float64)

    out["hour_of_day"] = ((t // _HOUR_MS) % 24).astype(np.float64)
    out["day_of_week"] = ((t // _DAY_MS + 3) % 7).astype(np.float64)  # 1970-01-01 was a Thursday (Monday = 0)
    channel = requests["channel"].to_numpy(object)
    for ch in ("web", "app", "marketplace"):
        out[f"channel_{ch}"] = (channel == ch).astype(np.float64)
    return pd.DataFrame(out, index=requests.index)


def _funnel_counts(out: Any, keys: "_Keys", b_type: np.ndarray, b_code: np.ndarray, b_time: np.ndarray,
                   b_seq: np.ndarray, q_code: np.ndarray, t: np.ndarray, windows: dict[str, int], *,
                   prefix: str = "") -> None:
    """Views, carts and purchases in each window ending at each request (``<prefix><name>_<label>`` columns)."""
    q_at = keys(q_code, t)
    for kind, name in (("view", "views"), ("add_to_cart", "carts"), ("purchase", "purchases")):
        sel = b_type == kind
        ev = _Events.of(keys, b_code[sel], b_time[sel], b_seq[sel])
        upto = ev.upto(q_at)
        for label, window in windows.items():
            out[f"{prefix}{name}_{label}"] = (upto - ev.since(keys(q_code, t - window))).astype(np.float64)


def _velocity(keys: _Keys, q_code: np.ndarray, t: np.ndarray, purchases: pd.DataFrame, p_code: np.ndarray,
              tau: float) -> np.ndarray:  # fmt: skip
    """Decayed purchases per hour over [t - 1 h, t], as the job computes it: each purchase weighs
    q exp(ms_into_its_hour / tau) (never above e^(1 h / tau)); the request's hour sums its purchases up to
    t (a running sum), the previous hour those from t - 1 h on (a running sum from the hour's end)."""
    n = len(t)
    if purchases.empty:
        return np.zeros(n)
    ev = _Events.of(keys, p_code, purchases["event_time"].to_numpy(np.int64), purchases["seq"].to_numpy(np.int64))
    qty = purchases["quantity"].to_numpy(np.float64)[ev.order]
    hour = ev.times // _HOUR_MS
    weight = qty * np.exp((ev.times % _HOUR_MS).astype(np.float64) / tau)
    segment = ev.codes * (int(hour.max()) + 2) + hour  # (product, hour), sorted
    forward = _segment_cumsum(weight, segment)
    backward = _segment_cumsum(weight, segment, reverse=True)
    q_hour = t // _HOUR_MS
    idx, found = ev.last(q_code, keys(q_code, t))
    cur = np.where(found & (hour[idx] == q_hour), forward[idx], 0.0)
    j = ev.since(keys(q_code, t - _HOUR_MS))
    safe = np.minimum(j, len(ev.codes) - 1)
    in_prev = (j < len(ev.codes)) & (ev.codes[safe] == q_code) & (hour[safe] == q_hour - 1)
    prev = np.where(in_prev, backward[safe], 0.0)
    m = (t % _HOUR_MS).astype(np.float64)
    return (cur * np.exp(-m / tau) + prev * np.exp(-(m + float(_HOUR_MS)) / tau)) * (_HOUR_MS / tau)


def list_price_at(market: pd.DataFrame, product_id: Any, event_time: Any) -> np.ndarray:
    """The list price in force (latest by event time, ties by arrival) at each (product, time); NaN if none."""
    lp = market[market["kind"] == "list_price"]
    product_id, event_time = np.asarray(product_id, dtype=object), np.asarray(event_time, dtype=np.int64)
    codes, uniques = pd.factorize(np.concatenate([product_id, lp["product_id"].to_numpy(object)]))
    q_code, l_code = codes[: len(product_id)], codes[len(product_id) :]
    keys = _Keys((event_time, lp["event_time"].to_numpy()), len(uniques), 0)
    ev = _Events.of(keys, l_code, lp["event_time"].to_numpy(np.int64), lp["seq"].to_numpy(np.int64))
    idx, found = ev.last(q_code.astype(np.int64), keys(q_code, event_time))
    values = lp["value"].to_numpy(np.float64)[ev.order]
    return np.where(found, values[idx] if values.size else np.nan, np.nan)


def category_at(catalogue: pd.DataFrame, product_id: Any, event_time: Any) -> np.ndarray:
    """The category (latest catalogue entry by event time, ties by arrival; inactive entries too) at each
    (product, time), as the job's product stage carries it; None if the product has no entry by then."""
    product_id, event_time = np.asarray(product_id, dtype=object), np.asarray(event_time, dtype=np.int64)
    codes, uniques = pd.factorize(np.concatenate([product_id, catalogue["product_id"].to_numpy(object)]))
    q_code, c_code = codes[: len(product_id)], codes[len(product_id) :]
    keys = _Keys((event_time, catalogue["event_time"].to_numpy(np.int64)), len(uniques), 0)
    ev = _Events.of(keys, c_code, catalogue["event_time"].to_numpy(np.int64), catalogue["seq"].to_numpy(np.int64))
    idx, found = ev.last(q_code.astype(np.int64), keys(q_code, event_time))
    names = catalogue["category"].to_numpy(object)[ev.order]
    return np.where(found, names[idx] if names.size else None, None).astype(object)


# --------------------------------------------------------------------------------------------
# User stage
# --------------------------------------------------------------------------------------------


def user_features(behaviour: pd.DataFrame, requests: pd.DataFrame, spec: FeatureSpec = FEATURE_SPEC) -> pd.DataFrame:
    """The user features of each (non-anonymous) request; ``behaviour`` holds the kept behaviour of those
    users with ``paid_ratio`` (paid / list price in force, NaN for all but purchases with a list price).

    Also the user's 24 h funnel of the request's own product (``user_product_*_24h``), keyed by
    (user, product): every behaviour event of a user is in the user's bucket, so the pairs are complete; and of
    the request's product's category (``user_category_*_24h``), keyed by (user, category), with the ``category``
    columns (None: unknown; such events count nothing, such requests get 0)."""
    n = len(requests)
    c = spec.constants
    out: dict[str, np.ndarray] = {}
    users, uniques = pd.factorize(np.concatenate([requests["user_id"].to_numpy(object),
                                                  behaviour["user_id"].to_numpy(object)]))  # fmt: skip
    q_code, b_code = users[:n].astype(np.int64), users[n:].astype(np.int64)
    t = requests["event_time"].to_numpy(np.int64)
    b_time = behaviour["event_time"].to_numpy(np.int64)
    b_seq = behaviour["seq"].to_numpy(np.int64)
    b_type = behaviour["type"].to_numpy(object)
    keys = _Keys((t, b_time), len(uniques), _DAY_MS)
    q_at = keys(q_code, t)

    _funnel_counts(out, keys, b_type, b_code, b_time, b_seq, q_code, t, {"30m": 30 * _MINUTE_MS, "24h": _DAY_MS},
                   prefix="user_")
    # (user, product) pairs, densely numbered (only the pairs present: the int64 keys never overflow)
    pairs = np.concatenate(_pair_codes((requests["user_id"], requests["product_id"]),
                                       (behaviour["user_id"], behaviour["product_id"])))  # fmt: skip
    dense, present = pd.factorize(pairs)
    q_pair, b_pair = dense[:n].astype(np.int64), dense[n:].astype(np.int64)
    pair_keys = _Keys((t, b_time), len(present), _DAY_MS)
    _funnel_counts(out, pair_keys, b_type, b_pair, b_time, b_seq, q_pair, t, {"24h": _DAY_MS}, prefix="user_product_")
    # (user, category) pairs likewise; "" (no category has it: min_length 1) stands for unknown, which counts nothing
    q_cat, b_cat = requests["category"].to_numpy(object), behaviour["category"].to_numpy(object)
    q_known, b_known = pd.notna(q_cat), pd.notna(b_cat)
    pairs = np.concatenate(_pair_codes((requests["user_id"], np.where(q_known, q_cat, "")),
                                       (behaviour["user_id"], np.where(b_known, b_cat, ""))))  # fmt: skip
    dense, present = pd.factorize(pairs)
    q_pair, b_pair = dense[:n].astype(np.int64), dense[n:].astype(np.int64)
    pair_keys = _Keys((t, b_time), len(present), _DAY_MS)
    _funnel_counts(out, pair_keys, np.where(b_known, b_type, None), b_pair, b_time, b_seq, q_pair, t,
                   {"24h": _DAY_MS}, prefix="user_category_")  # fmt: skip
    for name in ("views", "carts", "purchases"):
        out[f"user_category_{name}_24h"] = np.where(q_known, out[f"user_category_{name}_24h"], 0.0)

    views = b_type == "view"
    ev = _Events.of(keys, b_code[views], b_time[views], b_seq[views])
    viewed = pd.factorize(behaviour["product_id"].to_numpy(object)[views])[0][ev.order]
    out["user_distinct_products_30m"] = _distinct_in(viewed, ev.since(keys(q_code, t - 30 * _MINUTE_MS)), ev.upto(q_at))

    bought = b_type == "purchase"
    ev = _Events.of(keys, b_code[bought], b_time[bought], b_seq[bought])
    idx, found = ev.last(q_code, q_at)
    last_time = ev.times[idx] if ev.times.size else np.zeros(n, np.int64)
    secs = (t - last_time).astype(np.float64) / 1000.0
    out["user_secs_since_purchase"] = np.where(found, np.minimum(secs, float(c["never_purchased_secs"])), np.nan)

    ratio = behaviour["paid_ratio"].to_numpy(np.float64)
    rated = bought & ~np.isnan(ratio)
    ev = _Events.of(keys, b_code[rated], b_time[rated], b_seq[rated])
    sums = _segment_cumsum(ratio[rated][ev.order], ev.codes)
    counts = pd.Series(ev.codes).groupby(ev.codes, sort=False).cumcount().to_numpy() + 1
    idx, found = ev.last(q_code, q_at)
    r_sum = np.where(found, sums[idx] if sums.size else 0.0, 0.0)
    r_n = np.where(found, counts[idx] if counts.size else 0, 0)
    w, prior = float(c["price_ratio_prior_weight"]), float(c["price_ratio_prior_mean"])
    out["user_price_ratio"] = (prior * w + r_sum) / (w + r_n)

    ev = _Events.of(keys, b_code, b_time, b_seq)
    n_events = ev.upto(q_at) - ev.since(keys(q_code, np.full(n, keys.base)))
    out["is_new_user"] = (n_events == 0).astype(np.float64)
    return pd.DataFrame(out, index=requests.index)


def _distinct_in(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, *, chunk: int = 2_000_000) -> np.ndarray:
    """The number of distinct ``values[lo:hi]`` per query (ragged: O(total window length))."""
    out = np.zeros(len(lo), dtype=np.float64)
    length = np.maximum(hi - lo, 0)
    start = 0
    while start < len(lo):
        # as many queries as fit ``chunk`` window entries (at least one)
        ends = np.cumsum(length[start:])
        stop = start + max(int(np.searchsorted(ends, chunk, side="right")), 1)
        lens = length[start:stop]
        total = int(lens.sum())
        if total:
            query = np.repeat(np.arange(start, stop), lens)
            offset = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
            pos = np.repeat(lo[start:stop], lens) + offset
            pairs = np.unique(query * (int(values.max()) + 1) + values[pos])
            out[start:stop] = np.bincount(pairs // (int(values.max()) + 1) - start, minlength=stop - start)
        start = stop
    return out


# --------------------------------------------------------------------------------------------
# Offers and labels
# --------------------------------------------------------------------------------------------


def offered_prices(offers: pd.DataFrame, views: pd.DataFrame, window_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(price, currency) each offer showed: the view carrying its request_id (same product; the first by
    time, then arrival), else the same user's first view of the product in [t, t + window] without one.
    NaN / None when no view shows it."""
    n = len(offers)
    price = np.full(n, np.nan)
    currency = np.full(n, None, dtype=object)
    if n == 0 or views.empty:
        return price, currency
    pos = pd.DataFrame({"product_id": offers["product_id"].to_numpy(object),
                        "request_id": offers["request_id"].to_numpy(object), "_row": np.arange(n)})  # fmt: skip
    tagged = views[views["request_id"].notna()].sort_values(["event_time", "seq"], kind="stable")
    tagged = tagged.drop_duplicates(["product_id", "request_id"], keep="first")
    shown = tagged[["product_id", "request_id", "price_seen_minor", "currency"]]
    hit = pos.merge(shown, on=["product_id", "request_id"])
    rows = hit["_row"].to_numpy()
    price[rows] = hit["price_seen_minor"].to_numpy(np.float64)
    currency[rows] = hit["currency"].to_numpy(object)

    missing = np.isnan(price) & (offers["user_id"].to_numpy(object) != "")
    plain = views[views["request_id"].isna()]
    if missing.any() and len(plain):
        o = offers[missing]
        o_pair, v_pair = _pair_codes((o["user_id"], o["product_id"]), (plain["user_id"], plain["product_id"]))
        o_t = o["event_time"].to_numpy(np.int64)
        keys = _Keys((o_t, plain["event_time"].to_numpy()), int(max(o_pair.max(), v_pair.max())) + 1, 0)
        ev = _Events.of(keys, v_pair, plain["event_time"].to_numpy(np.int64), plain["seq"].to_numpy(np.int64))
        j = ev.since(keys(o_pair, o_t))
        safe = np.minimum(j, len(ev.codes) - 1)
        ok = (j < len(ev.codes)) & (ev.codes[safe] == o_pair) & (ev.times[safe] <= o_t + window_ms)
        rows = np.flatnonzero(missing)[ok]
        price[rows] = plain["price_seen_minor"].to_numpy(np.float64)[ev.order][safe[ok]]
        currency[rows] = plain["currency"].to_numpy(object)[ev.order][safe[ok]]
    return price, currency


def attribute(offers: pd.DataFrame, purchases: pd.DataFrame, window_ms: int) -> np.ndarray:
    """The label of each offer (request_id, user_id, product_id, event_time[, seq]): 1 when the same user
    bought the same product in [t, t + window_ms]. A purchase with a request_id labels that request only
    (same product; same user unless the request was anonymous); one without labels the same user's
    latest offer of that product at or before it (last touch; ties: the later arrival)."""
    n = len(offers)
    label = np.zeros(n, dtype=np.int8)
    if n == 0 or purchases.empty:
        return label
    o_t = offers["event_time"].to_numpy(np.int64)
    o_user = offers["user_id"].to_numpy(object)
    pos = pd.DataFrame({"product_id": offers["product_id"].to_numpy(object),
                        "request_id": offers["request_id"].to_numpy(object), "_row": np.arange(n)})  # fmt: skip
    tagged = purchases[purchases["request_id"].notna()]
    hit = pos.merge(tagged[["product_id", "request_id", "user_id", "event_time"]], on=["product_id", "request_id"])
    rows = hit["_row"].to_numpy()
    p_t = hit["event_time"].to_numpy(np.int64)
    ok = (p_t >= o_t[rows]) & (p_t <= o_t[rows] + window_ms)
    ok &= (hit["user_id"].to_numpy(object) == o_user[rows]) | (o_user[rows] == "")
    label[rows[ok]] = 1

    plain = purchases[purchases["request_id"].isna()]
    known = o_user != ""
    if len(plain) and known.any():
        o = offers[known]
        o_pair, p_pair = _pair_codes((o["user_id"], o["product_id"]), (plain["user_id"], plain["product_id"]))
        seq = o["seq"].to_numpy(np.int64) if "seq" in o else np.arange(len(o))
        p_time = plain["event_time"].to_numpy(np.int64)
        keys = _Keys((o["event_time"].to_numpy(), p_time), int(max(o_pair.max(), p_pair.max())) + 1, 0)
        ev = _Events.of(keys, o_pair, o["event_time"].to_numpy(np.int64), seq)
        idx, found = ev.last(p_pair, keys(p_pair, p_time))
        ok = found & (p_time - ev.times[idx] <= window_ms) if ev.times.size else found
        label[np.flatnonzero(known)[ev.order[idx[ok]]]] = 1
    return label


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


def to_table(meta: pd.DataFrame, features: pd.DataFrame, *, source: str, spec: FeatureSpec = FEATURE_SPEC) -> pa.Table:
    """Training rows (SCHEMA) from per-request columns and the feature columns (NaN -> the spec's default)."""
    values = features.reindex(columns=spec.names).to_numpy(dtype=np.float64)
    values = np.where(np.isnan(values), spec.defaults, values)
    return _table(meta, values, version=spec.version, source=source)


def _table(meta: pd.DataFrame, values: np.ndarray | list[Any], *, version: Any, source: str) -> pa.Table:
    n = len(meta)
    if isinstance(values, np.ndarray):
        width = values.shape[1] if values.ndim == 2 else 0
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
        features = pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=pa.float64()))
    else:
        features = pa.array(values, type=pa.list_(pa.float64()))
    columns = {
        "request_id": pa.array(meta["request_id"].to_numpy(object), pa.string()),
        "user_id": pa.array(meta["user_id"].to_numpy(object), pa.string()),
        "product_id": pa.array(meta["product_id"].to_numpy(object), pa.string()),
        "event_time": pa.array(meta["event_time"].to_numpy(np.int64), pa.int64()),
        "feature_spec_version": pa.array(np.broadcast_to(np.asarray(version, dtype=object), n).tolist()
                                         if np.ndim(version) == 0 else list(version), pa.string()),  # fmt: skip
        "features": features,
        "price_minor": pa.array(meta["price_minor"].to_numpy(np.int64), pa.int64()),
        "currency": pa.array(meta["currency"].to_numpy(object), pa.string()),
        "label": pa.array(meta["label"].to_numpy(np.int8), pa.int8()),
        "propensity": (pa.array(pd.to_numeric(meta["propensity"], errors="coerce").to_numpy(np.float64),
                                pa.float64(), from_pandas=True)  # NaN -> null
                       if "propensity" in meta else pa.nulls(n, pa.float64())),  # fmt: skip
        "source": pa.array([source] * n, pa.string()),
    }
    return pa.Table.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)


# --------------------------------------------------------------------------------------------
# Beam: backfill
# --------------------------------------------------------------------------------------------


def _counter(name: str) -> Any:
    return Metrics.counter(_NAMESPACE, name)


class _ReadTopic(beam.DoFn):
    """One history file: value rules and the late rule in file order, then its rows by product bucket."""

    def __init__(self, opts: _Opts) -> None:
        self._opts = opts

    def process(self, element: tuple[str, list[str]]) -> Iterator[tuple[int, tuple[str, pd.DataFrame]]]:
        contract, paths = Contract(element[0]), list(element[1])  # local paths or object-store URIs
        frame = self._opts.pseudonymise(contract, read_topic(paths, contract))
        invalid = invalid_mask(contract, frame)
        late = late_mask(frame["event_time"].to_numpy(), self._opts.allowance_ms) & ~invalid
        if contract is Contract.CATALOGUE_ENTRY:  # stamped at the history's start and read first: never late
            late[:] = False
        name = contract.value
        _counter(f"{name}_read").inc(len(frame))
        _counter(f"{name}_invalid").inc(int(invalid.sum()))
        _counter(f"{name}_late").inc(int(late.sum()))
        where = Path(str(paths[0])).name if len(paths) == 1 else f"{contract.value} ({len(paths)} files)"
        self._opts.say(f"read {where}: {len(frame):,} records, {int(invalid.sum()):,} invalid, "
                       f"{int(late.sum()):,} late (allowance {self._opts.allowance_ms} ms)")  # fmt: skip
        if contract is Contract.BEHAVIOUR_EVENT:
            frame["late"] = late  # left out of the features, kept for offers and labels
            frame = frame[~invalid]
        elif contract is Contract.PRICE_REQUEST:  # the rows asked for; the late rule saw every request before
            outside = ~self._opts.rows_range.contains(frame["event_time"].to_numpy())
            _counter("price_request_outside_range").inc(int((outside & ~invalid & ~late).sum()))
            frame = frame[~invalid & ~late & ~outside]
        else:
            frame = frame[~invalid & ~late]
        buckets = _bucket(frame["product_id"], self._opts.buckets)
        for b, part in frame.groupby(buckets, sort=True):
            yield int(b), (name, part.reset_index(drop=True))


def _gather(
    parts: Iterable[tuple[str, pd.DataFrame]], names: Sequence[str], empty: dict[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """The frames a grouped key received, concatenated per name (``empty[name]`` when none came)."""
    got: dict[str, list[pd.DataFrame]] = {n: [] for n in names}
    for name, frame in parts:
        got[name].append(frame)
    return {n: (pd.concat(got[n], ignore_index=True) if got[n] else empty[n]) for n in names}


def _empty(contract: Contract, *extra: str) -> pd.DataFrame:
    cols = [f["name"] for f in serde.published_schema(contract)["fields"]] + ["seq", *extra]
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    for c in ("event_time", "seq", "value", "price_seen_minor", "quantity"):
        if c in frame:
            frame[c] = frame[c].astype(np.int64)
    return frame


_TOPIC_EMPTY = {
    Contract.MARKET_EVENT.value: _empty(Contract.MARKET_EVENT),
    Contract.BEHAVIOUR_EVENT.value: _empty(Contract.BEHAVIOUR_EVENT, "late"),
    Contract.PRICE_REQUEST.value: _empty(Contract.PRICE_REQUEST),
    Contract.CATALOGUE_ENTRY.value: _empty(Contract.CATALOGUE_ENTRY),
}
USERS = "users"


class _ProductStage(beam.DoFn):
    """All events and requests of a bucket of products: product features, offer, label; and the user
    stage's input (kept behaviour with the paid / list price ratio, requests), by user bucket."""

    def __init__(self, opts: _Opts) -> None:
        self._opts = opts

    def process(self, element: tuple[int, Iterable[tuple[str, pd.DataFrame]]]) -> Iterator[Any]:
        bucket, parts = element
        o = self._opts
        f = _gather(parts, list(_TOPIC_EMPTY), _TOPIC_EMPTY)
        market, behaviour = f[Contract.MARKET_EVENT.value], f[Contract.BEHAVIOUR_EVENT.value]
        requests, catalogue = f[Contract.PRICE_REQUEST.value], f[Contract.CATALOGUE_ENTRY.value]
        repeat = repeated_requests(requests, o.dedupe_window_ms)
        _counter("requests_repeated").inc(int(repeat.sum()))
        requests = requests[~repeat].reset_index(drop=True)
        price, currency = offered_prices(requests, behaviour[behaviour["type"] == "view"], o.attribution_window_ms)
        offered = ~np.isnan(price)
        _counter("requests_without_offer").inc(int((~offered).sum()))
        requests = requests[offered].reset_index(drop=True)
        kept = behaviour[~behaviour["late"].to_numpy(bool)].reset_index(drop=True)
        o.say(f"product stage, bucket {bucket}: {len(requests):,} offers, {len(market) + len(kept):,} events")
        if len(requests):
            meta = requests[["request_id", "user_id", "product_id", "event_time", "seq"]].copy()
            meta["price_minor"] = price[offered].astype(np.int64)
            meta["currency"] = currency[offered]
            meta["label"] = attribute(requests, behaviour[behaviour["type"] == "purchase"], o.attribution_window_ms)
            yield bucket, ("offers", pd.concat([meta, product_features(market, kept, requests)], axis=1))

        # The user stage's input: kept behaviour (ratio at the list price in force) and known users' requests.
        ratio = np.full(len(kept), np.nan)
        buys = (kept["type"] == "purchase").to_numpy()
        if buys.any():
            lp = list_price_at(market, kept["product_id"][buys], kept["event_time"][buys])
            paid = kept["price_seen_minor"][buys].to_numpy(np.float64)
            ratio[buys] = np.where(lp > 0, paid / np.where(lp > 0, lp, 1.0), np.nan)
        users = kept[["user_id", "product_id", "type", "event_time", "seq"]].assign(
            paid_ratio=ratio, category=category_at(catalogue, kept["product_id"], kept["event_time"]))
        known = requests["user_id"].to_numpy(object) != ""
        asks = requests.loc[known, ["user_id", "product_id", "event_time", "seq"]].assign(product_bucket=bucket)
        asks["category"] = category_at(catalogue, asks["product_id"], asks["event_time"])
        for name, frame in (("behaviour", users), ("requests", asks)):
            for b, part in frame.groupby(_bucket(frame["user_id"], o.buckets), sort=True):
                yield beam.pvalue.TaggedOutput(USERS, (int(b), (name, part.reset_index(drop=True))))


_USER_EMPTY = {
    "behaviour": pd.DataFrame({"user_id": pd.Series(dtype=object), "product_id": pd.Series(dtype=object),
                               "type": pd.Series(dtype=object), "event_time": pd.Series(dtype=np.int64),
                               "seq": pd.Series(dtype=np.int64), "paid_ratio": pd.Series(dtype=np.float64),
                               "category": pd.Series(dtype=object)}),
    "requests": pd.DataFrame({"user_id": pd.Series(dtype=object), "product_id": pd.Series(dtype=object),
                              "event_time": pd.Series(dtype=np.int64),
                              "seq": pd.Series(dtype=np.int64), "product_bucket": pd.Series(dtype=np.int64),
                              "category": pd.Series(dtype=object)}),
}  # fmt: skip


class _UserStage(beam.DoFn):
    """All kept behaviour and requests of a bucket of users: the user features, back by product bucket."""

    def __init__(self, opts: _Opts) -> None:
        self._opts = opts

    def process(self, element: tuple[int, Iterable[tuple[str, pd.DataFrame]]]) -> Iterator[Any]:
        bucket, parts = element
        f = _gather(parts, list(_USER_EMPTY), _USER_EMPTY)
        requests = f["requests"]
        if requests.empty:
            return
        features = user_features(f["behaviour"], requests)
        features["seq"] = requests["seq"].to_numpy()
        self._opts.say(f"user stage, bucket {bucket}: {len(requests):,} offers, {len(f['behaviour']):,} events")
        for b, part in features.groupby(requests["product_bucket"].to_numpy(), sort=True):
            yield int(b), part.reset_index(drop=True)


class _Assemble(beam.DoFn):
    """Join a product bucket's offers with their users' features (by request ``seq``): the rows."""

    def __init__(self, opts: _Opts) -> None:
        self._opts = opts

    def process(self, element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[pa.Table]:
        bucket, groups = element
        offers = [frame for _, frame in groups["offers"]]
        if not offers:
            return
        rows = pd.concat(offers, ignore_index=True)
        users = list(groups["users"])
        if users:
            rows = rows.merge(pd.concat(users, ignore_index=True), on="seq", how="left", validate="1:1")
        rows = rows.sort_values(["event_time", "seq"], kind="stable").reset_index(drop=True)
        table = to_table(rows, rows.reindex(columns=FEATURE_SPEC.names), source="history")
        _counter("rows").inc(table.num_rows)
        _counter("positive").inc(int(rows["label"].sum()))
        self._opts.say(f"rows, bucket {bucket}: {table.num_rows:,}")
        yield table


BACKFILL_INPUTS = (Contract.BEHAVIOUR_EVENT, Contract.MARKET_EVENT, Contract.PRICE_REQUEST, Contract.CATALOGUE_ENTRY)


def history_files(history_dir: Path | str) -> dict[Contract, list[Path]]:
    """The files of a history folder (``pricing simulate history``): one per topic, fixed names."""
    history_dir = Path(history_dir)
    files = {c: [history_dir / name] for c, name in HISTORY_FILES.items()}
    files[Contract.CATALOGUE_ENTRY] = [history_dir / CATALOGUE_FILE]
    for paths in files.values():
        if not paths[0].is_file():
            raise FileNotFoundError(f"{paths[0]}: a history folder holds {', '.join(HISTORY_FILES.values())} and "
                                    f"{CATALOGUE_FILE} (histories written before features/4 lack the catalogue: "
                                    "write them again with `pricing simulate history`)")
    return files


def archive_files(root: Path | str, topics: Mapping[Contract, str], time_range: TimeRange, *,
                  attribution_window_ms: int = DEFAULT_ATTRIBUTION_WINDOW_MS) -> dict[Contract, list[str]]:  # fmt: skip
    """The archived files (``pricing.archive_layout``) a backfill of the requests in ``time_range`` reads: the
    requests' hours; behaviour from the longest window (24 h) before them to the attribution window after; the
    market and catalogue topics from their start (list prices, costs and categories stay in force until replaced).
    ``topics`` names each contract's topic. A topic with no file in its range is a clear error."""
    since, until = time_range.since_ms, time_range.until_ms
    ranges = {
        Contract.PRICE_REQUEST: time_range,
        Contract.BEHAVIOUR_EVENT: TimeRange(None if since is None else since - _DAY_MS,
                                            None if until is None else until + attribution_window_ms),
        Contract.MARKET_EVENT: TimeRange(None, until),
        Contract.CATALOGUE_ENTRY: TimeRange(None, until),
    }  # fmt: skip
    out: dict[Contract, list[str]] = {}
    for contract in BACKFILL_INPUTS:
        out[contract] = archive_layout.files(root, topics[contract], ranges[contract])
        if not out[contract]:
            raise FileNotFoundError(f"{root}: no archived files of topic {topics[contract]} for {ranges[contract]} "
                                    "(is the archive job running, and has it reached a checkpoint?)")
    return out


def build_backfill(pipeline: beam.Pipeline, history: Path | str | Mapping[Contract, Sequence[Path | str]],
                   out_dir: Path | str, options: PipelineOptions | None = None) -> Any:  # fmt: skip
    """Add the backfill to ``pipeline``: history files in (a history folder, or each contract's files in arrival
    order, e.g. :func:`archive_files`), Parquet parts (SCHEMA) under ``out_dir`` out."""
    opts = _Opts.of(options or pipeline.options)
    inputs = history_files(history) if isinstance(history, (str, Path)) else history
    files = [(c.value, [str(p) for p in inputs[c]]) for c in BACKFILL_INPUTS]
    chunks = pipeline | "HistoryFiles" >> beam.Create(files) | "ReadTopic" >> beam.ParDo(_ReadTopic(opts))
    staged = (
        chunks
        | "ByProduct" >> beam.GroupByKey()
        | "ProductStage" >> beam.ParDo(_ProductStage(opts)).with_outputs(USERS, main="offers")
    )
    users = staged[USERS] | "ByUser" >> beam.GroupByKey() | "UserStage" >> beam.ParDo(_UserStage(opts))
    tables = (
        {"offers": staged.offers, "users": users}
        | "ByRequest" >> beam.CoGroupByKey()
        | "Rows" >> beam.ParDo(_Assemble(opts))
    )
    return tables | "Parquet" >> _write(out_dir)


def _write(out_dir: Path | str) -> beam.PTransform:
    return WriteToParquetBatched(
        str(Path(out_dir) / "part"), schema=SCHEMA, codec="snappy", file_name_suffix=".parquet"
    )


# --------------------------------------------------------------------------------------------
# Beam: serving logs
# --------------------------------------------------------------------------------------------


def _avro_files(paths: Iterable[Path | str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if "://" in str(p):  # an object-store file the archive listed (pricing.archive_layout)
            out.append(str(p))
            continue
        p = Path(p)
        if p.is_dir():
            out += [str(f) for f in sorted(p.glob("*.avro"))]
        elif p.is_file():
            out.append(str(p))
        else:
            raise FileNotFoundError(p)
    return out


class _ReadServing(beam.DoFn):
    """A container file of priced events (the offers) or behaviour events (their purchases), by product bucket."""

    def __init__(self, opts: _Opts, contract: Contract) -> None:
        self._opts, self._contract = opts, contract

    def process(self, path: str) -> Iterator[tuple[int, tuple[str, pd.DataFrame]]]:
        frame = read_events(path, self._contract)
        if self._contract is Contract.BEHAVIOUR_EVENT:  # raw shoppers; the priced events hold pseudonyms already
            frame = frame[~invalid_mask(self._contract, frame) & (frame["type"] == "purchase").to_numpy()]
            frame = self._opts.pseudonymise(self._contract, frame.reset_index(drop=True))
            name = "purchases"
        else:
            frame = frame.rename(columns={"request_time": "event_time"})
            frame["event_time"] = frame["event_time"].astype(np.int64)
            inside = self._opts.rows_range.contains(frame["event_time"].to_numpy())
            _counter("priced_outside_range").inc(int((~inside).sum()))
            frame = frame[inside].reset_index(drop=True)
            name = "priced"
        _counter(f"{name}_read").inc(len(frame))
        self._opts.say(f"read {Path(path).name}: {len(frame):,} {name}")
        for b, part in frame.groupby(_bucket(frame["product_id"], self._opts.buckets), sort=True):
            yield int(b), (name, part.assign(file=path).reset_index(drop=True))


class _LabelServed(beam.DoFn):
    def __init__(self, opts: _Opts) -> None:
        self._opts = opts

    def process(self, element: tuple[int, Iterable[tuple[str, pd.DataFrame]]]) -> Iterator[pa.Table]:
        bucket, parts = element
        got: dict[str, list[pd.DataFrame]] = {"priced": [], "purchases": []}
        for name, frame in parts:
            got[name].append(frame)
        if not got["priced"]:
            return
        # file order, then position in the file: the first copy of a request wins
        priced = pd.concat(got["priced"], ignore_index=True).sort_values(["file", "seq"], kind="stable")
        repeated = priced["request_id"].duplicated()
        no_features = priced["features"].isna()
        _counter("priced_repeated").inc(int(repeated.sum()))
        _counter("priced_without_features").inc(int((no_features & ~repeated).sum()))
        priced = priced[~repeated & ~no_features].reset_index(drop=True)
        priced["seq"] = np.arange(len(priced))
        purchases = (pd.concat(got["purchases"], ignore_index=True) if got["purchases"]
                     else _empty(Contract.BEHAVIOUR_EVENT))  # fmt: skip
        priced["label"] = attribute(priced, purchases, self._opts.attribution_window_ms)
        table = _table(priced, [list(v) for v in priced["features"]],
                       version=priced["feature_spec_version"].to_numpy(object), source="serving")  # fmt: skip
        _counter("rows").inc(table.num_rows)
        _counter("positive").inc(int(priced["label"].sum()))
        self._opts.say(f"serving rows, bucket {bucket}: {table.num_rows:,}")
        yield table


def serving_archive_files(root: Path | str, priced_topic: str, behaviour_topic: str, time_range: TimeRange, *,
                          attribution_window_ms: int = DEFAULT_ATTRIBUTION_WINDOW_MS) -> tuple[list[str], list[str]]:  # fmt: skip
    """The archived priced events of ``time_range``'s hours and the behaviour that may answer them (to the
    attribution window after); a clear error when either is missing."""
    priced = archive_layout.files(root, priced_topic, time_range)
    until = time_range.until_ms
    behaviour = archive_layout.files(root, behaviour_topic, TimeRange(
        time_range.since_ms, None if until is None else until + attribution_window_ms))
    for topic, found in ((priced_topic, priced), (behaviour_topic, behaviour)):
        if not found:
            raise FileNotFoundError(f"{root}: no archived files of topic {topic} for {time_range} (is the archive "
                                    "job running, and has it reached a checkpoint?)")  # fmt: skip
    return priced, behaviour


def build_from_serving_logs(pipeline: beam.Pipeline, priced: Iterable[Path | str], behaviour: Iterable[Path | str],
                            out_dir: Path | str, options: PipelineOptions | None = None) -> Any:  # fmt: skip
    """Add the serving-logs path to ``pipeline``: priced events joined with the purchases answering them."""
    opts = _Opts.of(options or pipeline.options)
    offers = (
        pipeline
        | "PricedFiles" >> beam.Create(_avro_files(priced))
        | "ReadPriced" >> beam.ParDo(_ReadServing(opts, Contract.PRICED_EVENT))
    )
    purchases = (
        pipeline
        | "BehaviourFiles" >> beam.Create(_avro_files(behaviour))
        | "ReadPurchases" >> beam.ParDo(_ReadServing(opts, Contract.BEHAVIOUR_EVENT))
    )
    tables = (
        (offers, purchases)
        | "Both" >> beam.Flatten()
        | "ByProduct" >> beam.GroupByKey()
        | "Label" >> beam.ParDo(_LabelServed(opts))
    )
    return tables | "Parquet" >> _write(out_dir)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """What a run wrote: the Parquet parts, the pipeline's counters, the time it took."""

    source: str
    out_dir: Path
    files: list[Path]
    counts: dict[str, int]
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.counts.get("rows", 0)

    def text(self) -> str:
        pos = self.counts.get("positive", 0)
        rate = f" ({pos / self.rows:.2%} positive)" if self.rows else ""
        details = ", ".join(f"{k} {v:,}" for k, v in sorted(self.counts.items()) if k not in ("rows", "positive"))
        return (f"{self.source}: wrote {self.rows:,} training rows{rate} in {len(self.files)} file(s) "
                f"to {self.out_dir} in {self.seconds:.1f} s; {details}")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "files": [p.name for p in self.files], "counts": self.counts,
                "seconds": round(self.seconds, 3), "options": self.options,
                "feature_spec_version": FEATURE_SPEC.version}  # fmt: skip


def _privacy_options(privacy: PrivacyConfig | None) -> dict[str, Any]:
    if privacy is None:
        return {}
    return {"pseudonym_secrets_dir": privacy.secrets_dir, "pseudonym_key_id": privacy.key_id}


def _prepare(out_dir: Path | str, overwrite: bool) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("part-*.parquet"))
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds a training set ({len(old)} part files); choose another folder")
    for p in old:
        p.unlink()
    return out


def _pipeline_options(runner: str, values: dict[str, Any], pipeline_args: Sequence[str]) -> PipelineOptions:
    extra: dict[str, Any] = {}
    if runner in ("DirectRunner", "FnApiRunner"):
        # One in-process worker: elements are big frames, so more workers would only add copying.
        extra = {"direct_num_workers": 1, "direct_running_mode": "in_memory"}
    return PipelineOptions(list(pipeline_args), runner=runner, **extra,
                           **{k: v for k, v in values.items() if v is not None})  # fmt: skip


def _check_beam_worker() -> None:
    """PyFlink's Python worker, once loaded into a process (a local job run), registers its own handler for
    Beam's ParDo and Beam's in-process runner then fails with a protobuf DecodeError: say so instead."""
    from apache_beam.portability import common_urns
    from apache_beam.runners.worker import bundle_processor

    creator, _ = getattr(bundle_processor.BeamTransformFactory, "_known_urns", {}).get(
        common_urns.primitives.PAR_DO.urn, (None, None))
    if creator is not None and getattr(creator, "__module__", "").startswith("pyflink"):
        raise RuntimeError("this process has run a PyFlink job, whose worker took over Beam's ParDo handler; "
                           "run the training-set pipeline in its own process (python -m jobs.training_set)")


def _run(source: str, out: Path, options: PipelineOptions, build: Any) -> Summary:
    t0 = time.perf_counter()
    if options.view_as(StandardOptions).runner in ("DirectRunner", "FnApiRunner", None):
        _check_beam_worker()
    opts = _Opts.of(options)
    runner = options.view_as(StandardOptions).runner
    opts.say(f"{source}: Beam pipeline on {runner}")
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    counts = _counters(result)
    files = sorted(out.glob("part-*.parquet"))
    o = options.view_as(TrainingSetOptions)
    summary = Summary(source=source, out_dir=out, files=files, counts=counts, seconds=time.perf_counter() - t0,
                      options={"runner": runner, "allowance_ms": o.allowance_ms,
                               "attribution_window_ms": o.attribution_window_ms,
                               "dedupe_window_ms": o.dedupe_window_ms, "buckets": o.buckets})  # fmt: skip
    (out / "_summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    opts.say(summary.text())
    return summary


def _counters(result: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(_NAMESPACE))["counters"]:
        try:
            value = c.committed
        except Exception:  # noqa: BLE001 - a runner without committed metrics
            value = None
        value = c.attempted if value is None else value
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def run_backfill(
    history_dir: Path | str | Mapping[Contract, Sequence[Path | str]],
    out_dir: Path | str,
    *,
    allowance_ms: int | None = None,
    attribution_window_ms: int = DEFAULT_ATTRIBUTION_WINDOW_MS,
    dedupe_window_ms: int | None = None,
    buckets: int = DEFAULT_BUCKETS,
    runner: str = "DirectRunner",
    show_progress: bool = True,
    overwrite: bool = False,
    pipeline_args: Sequence[str] = (),
    privacy: PrivacyConfig | None = None,
    rows_range: TimeRange = TimeRange(),
) -> Summary:
    """Backfill a training set from a history folder (or each contract's files, e.g. :func:`archive_files`) into
    ``out_dir`` (Parquet parts plus ``_summary.json``); rows only for the requests in ``rows_range``.

    ``allowance_ms`` and ``dedupe_window_ms`` default to the job's settings (``JobSettings``). With ``privacy``
    the history's user ids become the job's pseudonyms (``pricing_udfs.privacy``) as they are read.
    """
    out = _prepare(out_dir, overwrite)
    options = _pipeline_options(runner, {
        "allowance_ms": allowance_ms, "attribution_window_ms": attribution_window_ms,
        "dedupe_window_ms": dedupe_window_ms, "buckets": buckets, "show_progress": show_progress,
        "since_ms": rows_range.since_ms, "until_ms": rows_range.until_ms, **_privacy_options(privacy),
    }, pipeline_args)  # fmt: skip
    return _run("backfill", out, options, lambda p: build_backfill(p, history_dir, out, options))


def run_from_serving_logs(
    priced: Iterable[Path | str],
    behaviour: Iterable[Path | str],
    out_dir: Path | str,
    *,
    attribution_window_ms: int = DEFAULT_ATTRIBUTION_WINDOW_MS,
    buckets: int = DEFAULT_BUCKETS,
    runner: str = "DirectRunner",
    show_progress: bool = True,
    overwrite: bool = False,
    pipeline_args: Sequence[str] = (),
    privacy: PrivacyConfig | None = None,
    rows_range: TimeRange = TimeRange(),
) -> Summary:
    """A training set from serving logs: ``priced`` and ``behaviour`` are Avro container files (or folders of
    ``*.avro``) of PricedEvent and BehaviourEvent records (:func:`serving_archive_files` finds them in the archive);
    rows only for priced events whose request time is in ``rows_range``. With ``privacy`` the purchases' raw user ids
    become the pseudonyms the priced events carry (``pricing_udfs.privacy``)."""
    out = _prepare(out_dir, overwrite)
    priced, behaviour = list(priced), list(behaviour)
    options = _pipeline_options(runner, {
        "attribution_window_ms": attribution_window_ms, "buckets": buckets, "show_progress": show_progress,
        "since_ms": rows_range.since_ms, "until_ms": rows_range.until_ms, **_privacy_options(privacy),
    }, pipeline_args)  # fmt: skip
    return _run("serving logs", out, options, lambda p: build_from_serving_logs(p, priced, behaviour, out, options))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.training_set backfill|serving ...``; arguments it does not know go to Beam."""
    parser = argparse.ArgumentParser(prog="python -m jobs.training_set", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    back = sub.add_parser("backfill", help="from event history (Avro files in the topics' format)")
    back.add_argument("--history", type=Path, required=True, help="folder with the three history files")
    back.add_argument("--allowance-ms", type=int, default=None,
                      help="late rule allowance (default: the job's watermark_out_of_orderness_ms)")
    back.add_argument("--dedupe-window-ms", type=int, default=None, help="default: the job's dedupe_window_ms")
    serving = sub.add_parser("serving", help="from serving logs: priced events joined with purchases")
    serving.add_argument("--priced", type=Path, nargs="+", required=True, help="PricedEvent .avro files or folders")
    serving.add_argument("--behaviour", type=Path, nargs="+", required=True,
                         help="BehaviourEvent .avro files or folders")  # fmt: skip
    for p in (back, serving):
        p.add_argument("--out", type=Path, required=True, help="output folder (Parquet parts)")
        p.add_argument("--attribution-window-ms", type=int, default=DEFAULT_ATTRIBUTION_WINDOW_MS)
        p.add_argument("--buckets", type=int, default=DEFAULT_BUCKETS)
        p.add_argument("--runner", default="DirectRunner")
        p.add_argument("--overwrite", action="store_true", help="replace the part files of an earlier run")
        p.add_argument("--quiet", action="store_true", help="no progress lines")
    args, beam_args = parser.parse_known_args(argv)
    common = {"attribution_window_ms": args.attribution_window_ms, "buckets": args.buckets, "runner": args.runner,
              "show_progress": not args.quiet, "overwrite": args.overwrite, "pipeline_args": beam_args}  # fmt: skip
    if args.source == "backfill":
        summary = run_backfill(args.history, args.out, allowance_ms=args.allowance_ms,
                               dedupe_window_ms=args.dedupe_window_ms, **common)  # fmt: skip
    else:
        summary = run_from_serving_logs(args.priced, args.behaviour, args.out, **common)
    print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
