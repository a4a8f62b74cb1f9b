"""Streaming features with event-time windows, as Flink SQL over-windows (all in the JVM).

All decoded events and requests are unioned into one stream. Two ``OVER``
aggregations, partitioned by product and by user, sort rows by event time and compute every
window ending at the row itself; the request rows then carry exactly the features as of their
own event time:

    union(catalogue, market, behaviour, requests)
      -> by product, all rows:                    latest values (the category too), 5 min, 15 min, 1 h and 24 h windows
      -> by user, behaviour + requests:           30 min and 24 h windows, all-history values, and the user's 24 h
                                                  funnel per product and per category (``*_count_by``: a map the
                                                  row looks up its own product or category in)
      -> request rows: defaults for unknowns, the vector in spec order

Anonymous requests (empty ``user_id``) skip the user stage and get its defaults. A row whose
product has no catalogue entry (yet) has a NULL category, which counts nothing and finds
nothing, so such a request gets 0s for its category. The per-product and per-category counts
live in the user's key: a pair is forgotten when its last event leaves the 24 h window. Stages
keyed by (user, product) and (user, category), as before, kept every pair that ever met until
the state TTL (7 days): the checkpoint grew about 2 MB a minute with the pairs a busy shop forms
(``benchmarks/soak_2026-12-05.md``).
Catalogue rows (``src = 'catalogue'``) feed the product stage's ``category`` only: the catalogue
topic is read from its earliest offset (entries stamped at the history's start), its rows are
never late-checked, and a quiet catalogue is idle and holds no watermark back. All stages are unbounded event-time ``OVER`` windows, which do O(1) work per new
timestamp. The sliding windows are aggregate functions written in Java
(``deploy/jvm``, ``pricing.features.Windowed*``): each keeps a per-key queue of the
window's entries in keyed state (``MapView``, backed by ``MapState``) and evicts from its
head, O(1) amortised per row; a row reads only the entries it adds or evicts, so its cost
on RocksDB does not grow with what its key's window holds. Flink's own
bounded ``RANGE`` windows scan their whole per-key buffer on every new timestamp
and need one stage per window length; this was measured to be the bottleneck
(``benchmarks/RESULTS.md``).

Semantics (checked against an independent pandas implementation in
``tests/jobs/test_features_parity.py``):

* a window of length W at a request with event time t holds the events with
  t - W <= event_time <= t: never a later event (no future leakage), and events with
  the request's own timestamp count;
* an over-window emits a row only once the watermark passes it, so events that
  arrive out of order within ``watermark_out_of_orderness_ms`` are placed correctly.
  Events later than that are counted and sent to the dead-letter topic as ``late``
  before they reach the windows (``late_events`` view);
* "latest" values (list price, cost, stock, promotion) are the last by event time,
  ties by arrival order;
* state: each window's queue holds the entries of its length that feed it (24 h
  at most, per product and per user; the per-product and per-category counts hold a count per
  pair with entries in the window); per-key state expires ``state_ttl_ms`` after the key's last
  event.

Arrival mode (``[job] serving_mode = "arrival"``, the default; ``"event-time"`` is the above):
the same union and the same two stages, but ordered by a processing-time attribute
(``PROCTIME()``, ``ROWS`` frames), so each row is processed the moment it arrives and
nothing waits for a watermark; a quiet input holds nothing back. The windows keep
their event-time meaning: at a row with event time t a window of length W holds the
events *processed before it* with t - W <= event_time <= t, so an event that arrived
earlier but is stamped after t is not counted (no future leakage), and "latest" values
are the last by event time at or before t among them (ties: arrival order). The
``arrival_*`` Java functions (``pricing.features.Arrival*``) keep each key's entries
sorted by event time and answer for the row's own t. The counts and sums, which hold the
busy windows (a product's 24 h views), keep them in keyed state (``ArrivalQueue``: a
time-sorted queue in ``MapView``s; the newest 64 entries and any late ones stay in the
accumulator, so a quiet key costs one value per row), so a row reads O(1) amortised entries whatever the window holds; the
minimum, distinct count, repeats and "latest" values, whose windows hold few entries
(competitor prices, a user's 30 minutes), keep a sorted buffer in the accumulator
(insertion scans from the tail: O(1) for rows in order, O(k) for a row k entries out of
order), read whole on every row. The per-product and per-category counts keep a sorted
array per product or category in keyed state (``ArrivalCountBy``). An entry leaves once it
is older than the key's newest event time minus the window minus the allowance
(``arrival_allowance_ms``: ``max_clock_skew_ms + watermark_out_of_orderness_ms``); a
row further behind its key's newest row than that may miss entries (never the case
for rows near the wall clock). All-history values (counts, the paid/list ratio) keep
what left as a running total; "latest" values keep the latest entry that left. Late
events (behind their source's watermark) are dead-lettered in both modes, the same
rule, so the backfill's late-event rule applies to both. Served vectors depend on
the arrival order, so a replay can differ from the first run: use event-time mode
for exact replays and parity with the backfill (``tests/jobs/test_arrival_mode.py``
checks arrival mode against the pandas reference fed the arrival order).

Guarantee: in event-time mode the stage is deterministic given the input, so
exactly-once replays after a restart re-create the same features (in arrival mode a
replay re-creates them up to the order in which the inputs are read again). The window functions' state is checkpointed
as Flink structured or RAW (Kryo) values: a release that changes an accumulator class cannot
restore older savepoints and must start from fresh state (replay the topics).
"""

from __future__ import annotations

from typing import Literal

from pyflink.table import TableEnvironment

from pricing_udfs.features import FEATURE_SPEC, FeatureSpec

# A recommendation candidate's columns (``jobs.recommendations``), NULL on every other row.
SLATE_COLUMNS = ("slate_size", "slate_index", "slate_k", "candidate_score", "candidate_reasons")
_NO_SLATE = ("CAST(NULL AS INT) AS slate_size, CAST(NULL AS INT) AS slate_index, CAST(NULL AS INT) AS slate_k, "
             "CAST(NULL AS DOUBLE) AS candidate_score, CAST(NULL AS STRING) AS candidate_reasons")
_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000
# Window aggregates with O(1) amortised cost per row, from deploy/jvm (pricing-features.jar).
_FUNCTIONS = {
    "windowed_count": "pricing.features.WindowedCount",
    "windowed_sum": "pricing.features.WindowedSum",
    "windowed_min": "pricing.features.WindowedMin",
    "windowed_distinct": "pricing.features.WindowedDistinct",
    "windowed_repeats": "pricing.features.WindowedRepeats",
    "windowed_count_by": "pricing.features.WindowedCountBy",
    # Arrival mode: the same windows for rows in arrival order (per-key entries sorted by event time).
    "arrival_count": "pricing.features.ArrivalCount",
    "arrival_sum": "pricing.features.ArrivalSum",
    "arrival_min": "pricing.features.ArrivalMin",
    "arrival_distinct": "pricing.features.ArrivalDistinct",
    "arrival_repeats": "pricing.features.ArrivalRepeats",
    "arrival_count_by": "pricing.features.ArrivalCountBy",
    "arrival_last_long": "pricing.features.ArrivalLastLong",
    "arrival_last_string": "pricing.features.ArrivalLastString",
    # Arrival mode: holds a request until every input has been read up to its event time minus a horizon.
    "arrival_gate": "pricing.features.ArrivalGate",
}

ServingMode = Literal["arrival", "event-time"]


def arrival_allowance_ms(*, max_clock_skew_ms: int, watermark_out_of_orderness_ms: int) -> int:
    """How far (event time) behind its key's newest row a row may be and still see exact windows in arrival mode.

    A record may be stamped up to ``max_clock_skew_ms`` ahead of the clock (further is dead-lettered),
    and one more than about ``watermark_out_of_orderness_ms`` behind its source is dead-lettered as
    late, so rows near the clock are never further apart than their sum. Entries leave a window's
    state once they are older than the newest event time minus the window minus this allowance.
    """
    return max_clock_skew_ms + watermark_out_of_orderness_ms


def register_window_functions(t_env: TableEnvironment) -> None:
    """Declare the Java window aggregates of ``pricing-features.jar`` (idempotent)."""
    for name, java_class in _FUNCTIONS.items():
        t_env.execute_sql(f"CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS {name} AS '{java_class}' LANGUAGE JAVA")


def _over(partition: str, frame: str) -> str:
    order = "pt" if frame == _ARRIVAL else "ts"
    return f"OVER (PARTITION BY {partition} ORDER BY {order} {frame})"


_ALL = "RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
# Arrival mode orders by ``pt``, the processing-time attribute: one row at a time, in arrival order.
_ARRIVAL = "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"


# alias -> (aggregate expression, SQL type); the type lets rows that skip a stage get typed NULLs.
_Aggregates = dict[str, tuple[str, str]]


def _count(cond: str) -> tuple[str, str]:
    return f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)", "BIGINT"


def _windowed(function: str, value: str, window_ms: int, type_: str, allowance: int | None = None) -> tuple[str, str]:
    """A ``_FUNCTIONS`` window aggregate of ``value`` over the ``window_ms`` ending at the row.

    With an ``allowance`` (arrival mode) the ``arrival_*`` twin of ``windowed_*``; there a negative
    ``window_ms`` means all history up to the row.
    """
    if allowance is None:
        return f"{function}(event_time, {value}, CAST({window_ms} AS BIGINT))", type_
    function = function.replace("windowed_", "arrival_", 1)
    return f"{function}(event_time, {value}, CAST({window_ms} AS BIGINT), CAST({allowance} AS BIGINT))", type_


def _windowed_count(cond: str, window_ms: int, allowance: int | None = None) -> tuple[str, str]:
    return _windowed("windowed_count", f"COALESCE({cond}, FALSE)", window_ms, "BIGINT", allowance)


def _grouped_count(group: str, cond: str, window_ms: int, allowance: int | None = None) -> tuple[str, str]:
    """Per ``group`` (a column), the rows where ``cond`` holds in the window: a map the row looks up its own group in."""
    return _windowed("windowed_count_by", f"{group}, COALESCE({cond}, FALSE)", window_ms, "MAP<STRING, BIGINT>",
                     allowance)  # fmt: skip


_FUNNEL_KINDS = (("views", "view"), ("carts", "add_to_cart"), ("purchases", "purchase"))


def _funnel(name: str, window_ms: int, allowance: int | None = None) -> _Aggregates:
    """Counts of views, add-to-carts and purchases in a window; ``name`` is a pattern like ``"{}_5m"``."""
    return {name.format(alias): _windowed_count(f"b_type = '{kind}'", window_ms, allowance) for alias, kind in _FUNNEL_KINDS}


def _latest(value: str, type_: str, allowance: int | None) -> tuple[str, str]:
    """The last non-null ``value`` by event time at or before the row (ties: arrival order)."""
    if allowance is None:
        return f"LAST_VALUE({value})", type_
    function = "arrival_last_string" if type_ == "STRING" else "arrival_last_long"
    return f"{function}(event_time, {value}, CAST({allowance} AS BIGINT))", type_


def _stage(source: str, partition: str, frame: str, aggregates: _Aggregates) -> str:
    """One over-window stage: every input row plus the aggregates of the frame ending at it.

    Flink evaluates all over-aggregates of a SELECT on one frame; the windowed functions carry their own length.
    """
    over = _over(partition, frame)
    columns = ",\n  ".join(f"CAST({expr} {over} AS {type_}) AS {alias}" for alias, (expr, type_) in aggregates.items())
    return f"\nSELECT *,\n  {columns}\nFROM {source}\n"


def _skipped(aggregates: _Aggregates) -> str:
    """The columns of a stage a row did not pass through, as typed NULLs (appended, like the stage's own)."""
    return ", ".join(f"CAST(NULL AS {type_}) AS {alias}" for alias, (_, type_) in aggregates.items())


def declare_feature_views(
    t_env: TableEnvironment, *, requests: str, market: str, behaviour: str, catalogue: str,
    spec: FeatureSpec = FEATURE_SPEC,
    mode: ServingMode = "event-time", allowance_ms: int = 0, horizon_ms: int = 0, candidates: str | None = None,
) -> str:
    """Create the feature views over the decoded (``ok``) inputs; returns the view of featured requests.

    The returned view has the request's fields, ``ts``, ``list_currency`` and one
    column per spec feature (defaults applied), plus ``features`` (ARRAY<DOUBLE> in spec order).
    ``mode`` "arrival" orders the stages by arrival (processing time) instead of event time, with
    the ``arrival_*`` window functions and their ``allowance_ms`` (``arrival_allowance_ms``), behind
    the catch-up gate with ``horizon_ms`` (``_gated_views``).

    ``catalogue`` is the decoded catalogue (``CatalogueEntry``): each product's category.
    ``candidates`` (``jobs.recommendations``) names a view of recommendation candidate rows: each is featured
    exactly like a price request of its user and product at its request's time (it is one, with ``slate_size``
    set), and comes out in the returned view beside the price requests, whose ``slate_*`` columns are NULL.
    """
    a = allowance_ms if mode == "arrival" else None
    frame = _ARRIVAL if mode == "arrival" else _ALL
    tau = float(spec.constants["demand_velocity_tau_ms"])
    if spec.constants["demand_velocity_horizon_ms"] != _HOUR_MS:
        raise ValueError("the demand velocity is computed over a one-hour window")
    latest: _Aggregates = {
        "list_price": _latest("CASE WHEN m_kind = 'list_price' THEN m_value END", "BIGINT", a),
        "list_currency": _latest("CASE WHEN m_kind = 'list_price' THEN m_currency END", "STRING", a),
        # The product's category (features/4): the catalogue's latest entry by event time (inactive ones too).
        "category": _latest("CASE WHEN src = 'catalogue' THEN c_category END", "STRING", a),
        "unit_cost": _latest("CASE WHEN m_kind = 'cost' THEN m_value END", "BIGINT", a),
        "stock": _latest("CASE WHEN m_kind = 'inventory' THEN m_value END", "BIGINT", a),
        "promotion_bp": _latest("CASE WHEN m_kind = 'promotion' THEN m_value END", "BIGINT", a),
        # All history up to the row: in arrival mode an event that arrived earlier with a later time is not counted.
        "product_events": _count("src <> 'request'") if a is None else _windowed_count("src <> 'request'", -1, a),
    }
    competitor = "CASE WHEN m_kind = 'competitor_price' THEN m_value END"
    windows = _funnel("{}_5m", 5 * _MINUTE_MS, a) | {
        "comp_min_15m": _windowed("windowed_min", competitor, 15 * _MINUTE_MS, "BIGINT", a),
        "comp_sum_15m": _windowed("windowed_sum", f"CAST({competitor} AS DOUBLE)", 15 * _MINUTE_MS, "DOUBLE", a),
        "comp_n_15m": _windowed_count("m_kind = 'competitor_price'", 15 * _MINUTE_MS, a),
    } | _funnel("{}_1h", _HOUR_MS, a) | {
        "views_24h": _windowed_count("b_type = 'view'", 24 * _HOUR_MS, a),
        "purchases_24h": _windowed_count("b_type = 'purchase'", 24 * _HOUR_MS, a),
        "vel_sum_even": _windowed("windowed_sum", "vel_even", _HOUR_MS, "DOUBLE", a),
        "vel_sum_odd": _windowed("windowed_sum", "vel_odd", _HOUR_MS, "DOUBLE", a),
    }
    user_windows = _funnel("u_{}_30m", 30 * _MINUTE_MS, a) | {
        "u_distinct_30m": _windowed(
            "windowed_distinct", "CASE WHEN b_type = 'view' THEN product_id END", 30 * _MINUTE_MS, "BIGINT", a
        ),
    } | _funnel("u_{}_24h", 24 * _HOUR_MS, a)
    # The user's own history with the product priced (features/3) and with the product's category (features/4):
    # counted in the user stage per product and per category (a map the row looks its own up in). A stage keyed by
    # the pair kept every pair's key until the state TTL, so the checkpoint grew with the pairs ever seen
    # (benchmarks/soak_2026-12-05.md); the grouped counts drop a pair when its last event leaves the window. Rows
    # of unknown category (NULL) count nothing.
    pair_windows = {
        f"up_{alias}_24h": _grouped_count("product_id", f"b_type = '{kind}'", 24 * _HOUR_MS, a)
        for alias, kind in _FUNNEL_KINDS
    } | {
        f"uc_{alias}_24h": _grouped_count("category", f"b_type = '{kind}'", 24 * _HOUR_MS, a)
        for alias, kind in _FUNNEL_KINDS
    }
    user_all: _Aggregates = {
        "u_ratio_sum": ("SUM(paid_ratio)", "DOUBLE"),
        "u_ratio_n": ("COUNT(paid_ratio)", "BIGINT"),
        "u_last_purchase": ("MAX(CASE WHEN b_type = 'purchase' THEN event_time END)", "BIGINT"),
        "u_events": _count("src = 'behaviour'"),
    } if a is None else {
        "u_ratio_sum": _windowed("windowed_sum", "paid_ratio", -1, "DOUBLE", a),
        "u_ratio_n": _windowed_count("paid_ratio IS NOT NULL", -1, a),
        # the newest purchase time at or before the row: the latest by event time
        "u_last_purchase": _latest("CASE WHEN b_type = 'purchase' THEN event_time END", "BIGINT", a),
        "u_events": _windowed_count("src = 'behaviour'", -1, a),
    }
    views = {
        "feature_events": f"""
SELECT 'market' AS src, product_id, CAST(NULL AS STRING) AS user_id, ts, event_time,
  kind AS m_kind, `value` AS m_value, currency AS m_currency,
  CAST(NULL AS STRING) AS b_type, CAST(NULL AS BIGINT) AS b_price, CAST(NULL AS INT) AS b_qty,
  CAST(NULL AS STRING) AS c_category, CAST(NULL AS STRING) AS request_id, CAST(NULL AS STRING) AS channel,
  CAST(NULL AS STRING) AS request_topic, CAST(NULL AS INT) AS request_partition,
  CAST(NULL AS BIGINT) AS request_offset, CAST(NULL AS BYTES) AS request_bytes, {_NO_SLATE}
FROM {market} WHERE ok
UNION ALL
SELECT 'behaviour', product_id, user_id, ts, event_time,
  CAST(NULL AS STRING), CAST(NULL AS BIGINT), currency,
  type, price_seen_minor, quantity, CAST(NULL AS STRING), CAST(NULL AS STRING), CAST(NULL AS STRING),
  CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT), CAST(NULL AS BYTES), {_NO_SLATE}
FROM {behaviour} WHERE ok
UNION ALL
SELECT 'catalogue', product_id, CAST(NULL AS STRING), ts, event_time,
  CAST(NULL AS STRING), CAST(NULL AS BIGINT), CAST(NULL AS STRING),
  CAST(NULL AS STRING), CAST(NULL AS BIGINT), CAST(NULL AS INT), category, CAST(NULL AS STRING), CAST(NULL AS STRING),
  CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT), CAST(NULL AS BYTES), {_NO_SLATE}
FROM {catalogue} WHERE ok
UNION ALL
SELECT 'request', product_id, user_id, ts, event_time,
  CAST(NULL AS STRING), CAST(NULL AS BIGINT), CAST(NULL AS STRING),
  CAST(NULL AS STRING), CAST(NULL AS BIGINT), CAST(NULL AS INT), CAST(NULL AS STRING), request_id, channel,
  source_topic, source_partition, source_offset, raw_value, {_NO_SLATE}
FROM {requests} WHERE ok{_candidate_branch(candidates)}
""",
        # Half the allowance: a row released by the gate is never further from its key's newest row than that.
        **({} if a is None else _gated_views(horizon_ms, context_horizon_ms=a // 2)),
        # Purchases carry their decayed weight split by hour parity (see _velocity()).
        "events_with_velocity": """
SELECT *,{arrival}
  CASE WHEN b_type = 'purchase' AND MOD(event_time / {hour}, 2) = 0
       THEN b_qty * EXP(CAST(MOD(event_time, {hour}) AS DOUBLE) / {tau}) END AS vel_even,
  CASE WHEN b_type = 'purchase' AND MOD(event_time / {hour}, 2) = 1
       THEN b_qty * EXP(CAST(MOD(event_time, {hour}) AS DOUBLE) / {tau}) END AS vel_odd
FROM {events}
""".format(tau=tau, hour=_HOUR_MS, arrival="\n  PROCTIME() AS pt," if a is not None else "",
           events="feature_events" if a is None else "gated_events"),
        # One stage per product, all rows: latest market values and every window.
        "by_product": _stage("events_with_velocity", "product_id", frame, latest | windows),
        # The user stage sees behaviour and requests only; anonymous traffic has no user state.
        "user_events": """
SELECT *,
  CASE WHEN b_type = 'purchase' AND list_price > 0
       THEN CAST(b_price AS DOUBLE) / CAST(list_price AS DOUBLE) END AS paid_ratio
FROM by_product WHERE src IN ('behaviour', 'request') AND user_id <> ''
""",
        # One stage per user: every window, the all-history values, and the user's funnel per product and category.
        "by_user": _stage("user_events", "user_id", frame, user_windows | user_all | pair_windows),
    }

    c = spec.constants
    expr = {
        "list_price_minor": "list_price",
        "unit_cost_minor": "unit_cost",
        "competitor_min_15m_minor": "comp_min_15m",
        "competitor_mean_15m_minor": "CASE WHEN comp_n_15m > 0 THEN comp_sum_15m / comp_n_15m END",
        "competitor_events_15m": "comp_n_15m",
        "inventory": "stock",
        "promotion_active": "CASE WHEN promotion_bp IS NULL THEN NULL WHEN promotion_bp > 0 THEN 1 ELSE 0 END",
        "views_5m": "views_5m",
        "carts_5m": "carts_5m",
        "purchases_5m": "purchases_5m",
        "views_1h": "views_1h",
        "carts_1h": "carts_1h",
        "purchases_1h": "purchases_1h",
        "conversion_1h": "CASE WHEN views_1h > 0 THEN CAST(purchases_1h AS DOUBLE) / views_1h END",
        "views_24h": "views_24h",
        "purchases_24h": "purchases_24h",
        "conversion_24h": "CASE WHEN views_24h > 0 THEN CAST(purchases_24h AS DOUBLE) / views_24h END",
        "demand_velocity": _velocity(tau),
        "user_views_30m": "u_views_30m",
        "user_carts_30m": "u_carts_30m",
        "user_purchases_30m": "u_purchases_30m",
        "user_views_24h": "u_views_24h",
        "user_carts_24h": "u_carts_24h",
        "user_purchases_24h": "u_purchases_24h",
        "user_price_ratio": (
            f"({c['price_ratio_prior_mean']} * {c['price_ratio_prior_weight']} + COALESCE(u_ratio_sum, 0.0))"
            f" / ({c['price_ratio_prior_weight']} + COALESCE(u_ratio_n, 0))"
        ),
        "user_secs_since_purchase": (
            f"LEAST(CAST(event_time - u_last_purchase AS DOUBLE) / 1000.0, {c['never_purchased_secs']})"
        ),
        "user_distinct_products_30m": "u_distinct_30m",
        "user_product_views_24h": "up_views_24h[product_id]",
        "user_product_carts_24h": "up_carts_24h[product_id]",
        "user_product_purchases_24h": "up_purchases_24h[product_id]",
        "user_category_views_24h": "uc_views_24h[category]",
        "user_category_carts_24h": "uc_carts_24h[category]",
        "user_category_purchases_24h": "uc_purchases_24h[category]",
        "hour_of_day": f"MOD(event_time / {_HOUR_MS}, 24)",
        # 1970-01-01 was a Thursday (3 with Monday = 0).
        "day_of_week": f"MOD(event_time / {24 * _HOUR_MS} + 3, 7)",
        "channel_web": "CASE WHEN channel = 'web' THEN 1 ELSE 0 END",
        "channel_app": "CASE WHEN channel = 'app' THEN 1 ELSE 0 END",
        "channel_marketplace": "CASE WHEN channel = 'marketplace' THEN 1 ELSE 0 END",
        "is_new_user": "CASE WHEN COALESCE(u_events, 0) > 0 THEN 0 ELSE 1 END",
        "is_new_product": "CASE WHEN product_events > 0 THEN 0 ELSE 1 END",
    }
    missing = set(spec.names) ^ set(expr)
    if missing:
        raise ValueError(f"feature SQL and spec {spec.version} disagree on: {sorted(missing)}")
    register_window_functions(t_env)
    for name, sql in views.items():
        t_env.execute_sql(f"CREATE TEMPORARY VIEW {name} AS {sql}")
        if name == "gated_events_sql":
            _single_gate(t_env, source=name, view="gated_events")
    # Requests of anonymous users skip the user stages; they rejoin with NULLs, so with the user defaults.
    user_aggregates = user_windows | user_all | pair_windows
    user_cols = ", ".join(user_aggregates)
    base_cols = (
        "request_id, user_id, product_id, category, channel, event_time, ts, request_topic, request_partition, request_offset,"
        " request_bytes, list_currency, list_price, unit_cost, comp_min_15m,"
        " comp_sum_15m, comp_n_15m, stock, promotion_bp, views_5m, carts_5m, purchases_5m, views_1h, carts_1h,"
        " purchases_1h, views_24h, purchases_24h, vel_sum_even, vel_sum_odd, product_events, "
        + ", ".join(SLATE_COLUMNS)
    )
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW featured_rows AS
SELECT {base_cols}, {user_cols} FROM by_user WHERE src = 'request'
UNION ALL
SELECT {base_cols}, {_skipped(user_aggregates)} FROM by_product WHERE src = 'request' AND user_id = ''
""")
    columns = ",\n  ".join(
        f"CAST(COALESCE(CAST({expr[f.name]} AS DOUBLE), {f.default}) AS DOUBLE) AS {f.name}" for f in spec.features
    )
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW featured_requests AS
SELECT request_id, user_id, product_id, channel, event_time, ts, list_currency,
  request_topic, request_partition, request_offset, request_bytes, {", ".join(SLATE_COLUMNS)},
  {columns}
FROM featured_rows
""")
    return "featured_requests"


def _single_gate(t_env: TableEnvironment, *, source: str, view: str) -> None:
    """``view``: the gate's output through a DataStream, so that every query reading the featured rows (the
    priced and the recommendation branch) shares one gate: Flink plans a process table function once per
    query that reads it and refuses two calls with one ``uid``. Without a DataStream API (a plain
    TableEnvironment, used to check the SQL) the view is the SQL itself."""
    if not hasattr(t_env, "to_data_stream"):
        t_env.execute_sql(f"CREATE TEMPORARY VIEW {view} AS SELECT * FROM {source}")
        return
    t_env.create_temporary_view(view, t_env.from_data_stream(t_env.to_data_stream(t_env.from_path(source))))


def _candidate_branch(candidates: str | None) -> str:
    """The feature union's branch of recommendation candidates: each one a request of its user and product."""
    if candidates is None:
        return ""
    return f"""
UNION ALL
SELECT 'request', product_id, user_id, ts, event_time,
  CAST(NULL AS STRING), CAST(NULL AS BIGINT), CAST(NULL AS STRING),
  CAST(NULL AS STRING), CAST(NULL AS BIGINT), CAST(NULL AS INT), CAST(NULL AS STRING), request_id, channel,
  CAST(NULL AS STRING), CAST(NULL AS INT), CAST(NULL AS BIGINT), CAST(NULL AS BYTES),
  {", ".join(SLATE_COLUMNS)}
FROM {candidates}"""


# The union's columns; ``ts`` is rebuilt from ``event_time`` after the gate (a PTF returns no time attribute).
_EVENT_COLUMNS = ("src", "product_id", "user_id", "event_time", "m_kind", "m_value", "m_currency", "b_type", "b_price",
                  "b_qty", "c_category", "request_id", "channel", "request_topic", "request_partition", "request_offset",
                  "request_bytes", "slate_size", "slate_index", "slate_k", "candidate_score",
                  "candidate_reasons")  # fmt: skip


def _gated_views(horizon_ms: int, context_horizon_ms: int) -> dict[str, str]:
    """Arrival mode's catch-up gate (``pricing.features.ArrivalGate``) between the union and the stages.

    With W the watermark (the minimum over every input that is not idle), a request goes on once W has
    reached its event time minus ``horizon_ms``, any other row once W has reached its event time minus
    ``context_horizon_ms``. Live, the inputs are current and the gate holds nothing; after a start on
    a backlog it keeps a request from reaching the windows before the market and behaviour events that
    precede it by more than ``horizon_ms``, and a topic read ahead of the others from reaching them
    more than ``context_horizon_ms`` ahead, which keeps every row within the arrival window functions'
    allowance of its key's newest row.
    """
    columns = ", ".join(_EVENT_COLUMNS)
    return {
        # record_ts is not used after the gate: reading the decoded views' ts here makes the priced branch read
        # what the dead-letter branch reads, so both share one Python decoder (tests/jobs/test_job_plan.py).
        "gate_input": f"SELECT {columns} FROM feature_events",
        "gated_events_sql": f"""
SELECT {", ".join(c if c != "event_time" else "TO_TIMESTAMP_LTZ(event_time, 3) AS ts, event_time" for c in _EVENT_COLUMNS)}
FROM arrival_gate(input => TABLE gate_input PARTITION BY product_id, horizon_ms => CAST({horizon_ms} AS BIGINT),
                  context_horizon_ms => CAST({context_horizon_ms} AS BIGINT), uid => 'arrival-gate')
""",
    }


def _velocity(tau: float) -> str:
    """Decayed purchases per hour at the row's time from the two hour-parity sums of ``by_product``.

    A purchase at t_i weighs exp(-(t - t_i)/tau). Summing exp(ms_into_hour(t_i)/tau)
    per hour parity keeps every exponent below one hour / tau (no overflow, no
    cancellation); a one-hour window spans only the current and the previous hour.
    """
    m = f"CAST(MOD(event_time, {_HOUR_MS}) AS DOUBLE)"
    cur = f"CASE WHEN MOD(event_time / {_HOUR_MS}, 2) = 0 THEN vel_sum_even ELSE vel_sum_odd END"
    prev = f"CASE WHEN MOD(event_time / {_HOUR_MS}, 2) = 0 THEN vel_sum_odd ELSE vel_sum_even END"
    return (
        f"(COALESCE({cur}, 0.0) * EXP(-{m} / {tau}) + COALESCE({prev}, 0.0) * EXP(-({m} + {float(_HOUR_MS)}) / {tau}))"
        f" * {_HOUR_MS / tau}"
    )
