"""The training-set pipeline without services: backfilled vectors against the naive pandas reference,
labels on a hand-built log with known answers, the serving-logs path, and the rules it applies per record."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs import training_set as ts
from pricing import archive_layout
from pricing.sim.history import CATALOGUE_FILE, generate_history
from pricing.sim.market import build_market, catalogue_entries
from pricing.sim.scenario import get_scenario
from pricing.training_rows import SCHEMA
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.serde import Contract
from tests.jobs.feature_reference import assert_affinity_exercised, catalogue_frame, reference_features

MIN = 60_000
HOUR = 60 * MIN
REL_TOL = 1e-9
ALLOWANCE_MS = 2_000


# ---------------------------------------------------------------------------------------------
# Shared with the parity test: a simulated day plus crafted cases, written as a history folder
# ---------------------------------------------------------------------------------------------


def _behaviour(i: str, user: str, product: str, kind: str, t: int, *, qty: int = 1, price: int = 950,
               request_id: str | None = None, arrival: int | None = None) -> dict:  # fmt: skip
    return {"event_id": f"x-{i}", "user_id": user, "product_id": product, "type": kind, "price_seen_minor": price,
            "currency": "EUR", "quantity": qty, "session_id": "x-s", "event_time": t, "request_id": request_id,
            "arrival_time": t if arrival is None else arrival}  # fmt: skip


def _market(product: str, kind: str, value: int, t: int, *, competitor: str | None = None,
            arrival: int | None = None) -> dict:  # fmt: skip
    money = kind in serde.money_kinds()
    return {"product_id": product, "kind": kind, "competitor_id": competitor, "value": value,
            "currency": "EUR" if money else "", "event_time": t, "arrival_time": t if arrival is None else arrival}


def _request(rid: str, user: str, product: str, channel: str, t: int) -> dict:
    return {"request_id": rid, "user_id": user, "product_id": product, "channel": channel, "event_time": t,
            "arrival_time": t}


def crafted(start: int, *, seed: int = 0) -> dict[Contract, pd.DataFrame]:
    """Window edges, ties, cold start, anonymous users, late and out-of-order events, a repeated request,
    a request nobody saw, and a busy product with dense, tied and shuffled events."""
    t = start + 6 * HOUR  # on an hour boundary: the velocity's previous hour matters
    m = [
        _market("edge", "list_price", 1000, t - 30 * MIN),
        _market("edge", "list_price", 1100, t - 20 * MIN),
        _market("edge", "list_price", 1200, t - 20 * MIN),  # same time, later arrival: this one is in force
        _market("edge", "list_price", 5000, t - 10 * MIN, arrival=t + HOUR),  # late: left out
        _market("edge", "competitor_price", 900, t - 15 * MIN, competitor="c1"),  # on the edge: in
        _market("edge", "competitor_price", 800, t - 15 * MIN - 1, competitor="c2"),  # just outside
        _market("edge", "inventory", 7, t - MIN + 1_000),
        # out of order (after the inventory event) but within the allowance: kept
        _market("edge", "competitor_price", 700, t - MIN, competitor="c3", arrival=t - MIN + 1_500),
        _market("edge", "promotion", 1500, t),  # a peer of the request
    ]
    b = [
        _behaviour("v0", "edge-user", "edge", "view", t - 5 * MIN),  # in 5 min
        _behaviour("v1", "edge-user", "edge", "view", t - 5 * MIN - 1),  # out of 5 min
        _behaviour("p0", "edge-user", "edge", "purchase", t - HOUR, qty=2),  # in 1 h, no list price yet
        _behaviour("p1", "edge-user", "edge", "purchase", t - HOUR - 1, qty=2),  # out of 1 h
        _behaviour("p2", "edge-user", "edge", "purchase", t - 20 * MIN, qty=2),  # a peer of the tied list prices
        _behaviour("p3", "edge-user", "edge", "purchase", t, qty=2),  # a peer of the request
        _behaviour("v2", "edge-user", "edge2", "view", t - 30 * MIN),  # distinct products: in
        _behaviour("v3", "edge-user", "edge3", "view", t - 30 * MIN - 1),  # out
        _behaviour("c0", "edge-user", "edge", "add_to_cart", t - 24 * HOUR),  # the user's 24 h with edge: in
        _behaviour("c1", "edge-user", "edge", "add_to_cart", t - 24 * HOUR - 1),  # out
        _behaviour("c2", "edge-user", "edge2", "add_to_cart", t - MIN),  # another product: the user's, not edge's
        _behaviour("v4", "edge-user", "edge3", "view", t - 10 * MIN),  # edge3 is in edge's category by then
    ]
    # edge and edge2 share a category; edge3 moves into it at t - 20 min (v3 counts in its old one); the
    # brand-new product has no entry (its category is unknown)
    # (an event counts in the category its product had at the event: the entries precede every crafted event)
    c = catalogue_frame([
        {"product_id": "edge", "category": "edge-cat", "event_time": start - 2 * 24 * HOUR},
        {"product_id": "edge2", "category": "edge-cat", "event_time": start - 2 * 24 * HOUR, "active": False},  # named
        {"product_id": "edge3", "category": "other-cat", "event_time": start - 2 * 24 * HOUR},
        {"product_id": "busy", "category": "busy-cat", "event_time": start - 2 * 24 * HOUR},
        {"product_id": "edge3", "category": "edge-cat", "event_time": t - 20 * MIN},
    ])
    c["arrival_time"] = c["event_time"]
    r = [
        _request("edge-r0", "edge-user", "edge", "marketplace", t),
        _request("edge-r1", "", "edge", "app", t),  # anonymous
        _request("edge-r2", "brand-new-user", "brand-new-product", "web", t),  # cold start
        _request("edge-r3", "edge-user", "edge", "web", t + 30 * MIN),
        _request("edge-r0", "edge-user", "edge", "web", t + 10 * MIN),  # a repeat within the dedupe window
        _request("edge-unseen", "edge-user", "edge", "web", t + 40 * MIN),  # no view shows its price: no row
    ]
    for i, req in enumerate(r[:4]):
        b.append(_behaviour(f"rv{i}", req["user_id"] or "anon-1", req["product_id"], "view", req["event_time"] + 100,
                            price=990 + i, request_id=req["request_id"]))  # fmt: skip

    rng = np.random.default_rng(seed)
    t0 = start + 8 * HOUR + 30 * MIN  # spans two hour boundaries
    users = [f"busy-u{i}" for i in range(8)]

    def when(n: int) -> np.ndarray:  # whole seconds: many ties
        return t0 + rng.integers(0, 2 * HOUR // 1000, n) * 1000

    def arrive(times: np.ndarray) -> np.ndarray:  # a fifth arrive up to 5 s late: some of them late, some not
        return times + np.where(rng.random(times.size) < 0.2, rng.integers(0, 5_000, times.size), 0)

    kinds = ["view", "view", "view", "add_to_cart", "purchase", "review"]
    bt = when(400)
    for i, (time_, arr) in enumerate(zip(bt, arrive(bt))):
        b.append(_behaviour(f"busy-b{i}", users[rng.integers(8)], "busy", kinds[rng.integers(len(kinds))], int(time_),
                            qty=int(rng.integers(1, 4)), price=int(rng.integers(800, 1300)),
                            arrival=int(arr)))  # fmt: skip
    mt = when(160)
    for i, (time_, arr) in enumerate(zip(mt, arrive(mt))):
        kind = ["competitor_price", "competitor_price", "list_price", "cost", "inventory", "promotion"][i % 6]
        value = {"promotion": int(rng.choice([0, 1000])), "inventory": int(rng.integers(0, 50))}.get(
            kind, int(rng.integers(700, 1400)))
        competitor = f"c{i % 3}" if kind == "competitor_price" else None
        m.append(_market("busy", kind, value, int(time_), competitor=competitor, arrival=int(arr)))
    for i, time_ in enumerate(when(80)):
        user = "" if i % 10 == 0 else users[rng.integers(8)]
        r.append(_request(f"busy-r{i}", user, "busy", ["web", "app", "marketplace", "other"][i % 4], int(time_)))
        b.append(_behaviour(f"busy-rv{i}", user or "anon-2", "busy", "view", int(time_) + int(rng.integers(0, 2_000)),
                            price=int(rng.integers(800, 1300)), request_id=f"busy-r{i}"))  # fmt: skip
    return {Contract.MARKET_EVENT: pd.DataFrame(m), Contract.BEHAVIOUR_EVENT: pd.DataFrame(b),
            Contract.PRICE_REQUEST: pd.DataFrame(r), Contract.CATALOGUE_ENTRY: c}  # fmt: skip


def simulated_day(seed: int, *, n_users: int = 100, n_products: int = 5) -> dict[Contract, pd.DataFrame]:
    """A simulated day plus the crafted cases, in arrival order (``arrival_time``), with the catalogue (the
    simulator's, stamped at the history's start, then the crafted products')."""
    scenario = get_scenario("default").with_overrides(n_users=n_users, n_products=n_products, seed=seed)
    history = generate_history(scenario, days=1)
    extra = crafted(int(history.requests["event_time"].min()) // 86_400_000 * 86_400_000, seed=seed)
    catalogue = catalogue_frame(catalogue_entries(build_market(scenario), event_time_ms=history.start_ms))
    catalogue["arrival_time"] = catalogue["event_time"]
    frames = history.frames() | {Contract.CATALOGUE_ENTRY: catalogue}
    return {c: pd.concat([frame, extra[c]], ignore_index=True).sort_values("arrival_time", kind="stable")
            .reset_index(drop=True) for c, frame in frames.items()}  # fmt: skip


def _clean(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def write_history_dir(path: Path, frames: dict[Contract, pd.DataFrame]) -> Path:
    """The frames as the history files, in arrival order (an empty catalogue when the frames have none)."""
    path.mkdir(parents=True, exist_ok=True)
    frames = {Contract.CATALOGUE_ENTRY: pd.DataFrame(columns=["arrival_time"])} | frames
    for contract, frame in frames.items():
        fields = [f["name"] for f in serde.published_schema(contract)["fields"]]
        records = frame.sort_values("arrival_time", kind="stable").reindex(columns=fields).to_dict("records")
        name = CATALOGUE_FILE if contract is Contract.CATALOGUE_ENTRY else ts.HISTORY_FILES[contract]
        serde.write_container(path / name, contract,
                              [{k: _clean(v) for k, v in rec.items()} for rec in records])  # fmt: skip
    return path


def kept_events(frames: dict[Contract, pd.DataFrame], allowance_ms: int) -> dict[Contract, pd.DataFrame]:
    """What the job keeps, by the rule stated independently: in arrival order, an event is late when it is
    the allowance or more behind the newest event time before it on its topic (never a catalogue entry).
    ``seq``: arrival order."""
    kept = {}
    for contract, frame in frames.items():
        frame = frame.sort_values("arrival_time", kind="stable").reset_index(drop=True)
        frame["seq"] = frame.index
        if contract is Contract.CATALOGUE_ENTRY:
            kept[contract] = frame
            continue
        newest_before = frame["event_time"].cummax().shift(1)
        kept[contract] = frame[~(frame["event_time"] <= newest_before - allowance_ms)]
    return kept


def read_rows(out: Path) -> pd.DataFrame:
    table = pq.read_table(out)
    assert table.schema.equals(SCHEMA, check_metadata=False), table.schema
    return table.to_pandas()


def worst_relative(got: pd.DataFrame, expected: pd.DataFrame) -> tuple[float, tuple[str, str], int]:
    """The worst |got - expected| / |expected| (absolute where expected is 0), where, and how many cells
    are beyond REL_TOL."""
    got = got.loc[expected.index, expected.columns]
    diff = (got - expected).abs()
    rel = diff / expected.abs().where(expected != 0, 1.0)
    where = rel.stack().idxmax()
    return float(rel.stack().max()), where, int((rel > REL_TOL).sum().sum())


def vectors(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(np.vstack(rows["features"].to_numpy()), index=rows["request_id"], columns=FEATURE_SPEC.names)


# ---------------------------------------------------------------------------------------------
# Parity with the pandas reference
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[Contract, pd.DataFrame], Path, ts.Summary]:
    frames = simulated_day(seed=5)
    folder = write_history_dir(tmp_path_factory.mktemp("history"), frames)
    summary = ts.run_backfill(folder, tmp_path_factory.mktemp("out"), allowance_ms=ALLOWANCE_MS, buckets=3)
    return frames, folder, summary


def test_backfilled_vectors_equal_the_pandas_reference(day: tuple) -> None:
    frames, _, summary = day
    kept = kept_events(frames, ALLOWANCE_MS)
    requests = kept[Contract.PRICE_REQUEST]
    # the job prices the first copy of a repeated request_id and nothing for a request without a view here
    requests = requests[~((requests["request_id"] == "edge-r0") & (requests["channel"] == "web"))]
    rows = read_rows(summary.out_dir)
    assert rows["request_id"].is_unique
    assert set(rows["request_id"]) == set(requests["request_id"]) - {"edge-unseen"}
    expected = reference_features(requests, kept[Contract.BEHAVIOUR_EVENT], kept[Contract.MARKET_EVENT],
                                  kept[Contract.CATALOGUE_ENTRY])  # fmt: skip
    expected = expected.loc[rows["request_id"]]
    worst, where, bad = worst_relative(vectors(rows), expected)
    print(f"\nbackfill vs reference: {len(rows)} requests x {len(FEATURE_SPEC.names)} features; "
          f"worst relative difference {worst:.3g} at {where}; {bad} beyond {REL_TOL}")  # fmt: skip
    assert bad == 0, f"{where}: backfill {vectors(rows).loc[where]} vs reference {expected.loc[where]}"
    # The crafted cases pin the meaning of the edges (the reference could share a mistake).
    e = vectors(rows).loc["edge-r0"]
    assert e["list_price_minor"] == 1200 and e["views_5m"] == 1 and e["purchases_1h"] == 3
    assert e["competitor_events_15m"] == 2 and e["competitor_min_15m_minor"] == 700 and e["inventory"] == 7
    assert e["promotion_active"] == 1 and e["user_secs_since_purchase"] == 0 and e["user_distinct_products_30m"] == 3
    assert e["user_price_ratio"] == pytest.approx((3 + 950 / 1200 + 950 / 1200) / 5, rel=1e-12)
    # the user's own 24 h with this product (v0, v1; c0 on the edge; p0-p3), not with edge2 or edge3
    assert (e["user_product_views_24h"], e["user_product_carts_24h"], e["user_product_purchases_24h"]) == (2, 1, 4)
    assert (e["user_views_24h"], e["user_carts_24h"]) == (5, 2)
    # ... and with its category: edge and edge2 (v0, v1, v2; c0, c2; p0-p3) and edge3 once it moved in (v4), not v3
    assert (e["user_category_views_24h"], e["user_category_carts_24h"], e["user_category_purchases_24h"]) == (4, 2, 4)
    later = vectors(rows).loc["edge-r3"]  # 30 min on: edge-r0's view counts, c0 has left the window
    assert (later["user_product_views_24h"], later["user_product_carts_24h"]) == (3, 0)
    assert (later["user_category_views_24h"], later["user_category_carts_24h"]) == (5, 1)
    assert_affinity_exercised(expected)
    anon, new = vectors(rows).loc["edge-r1"], vectors(rows).loc["edge-r2"]
    assert anon["is_new_user"] == 1 and anon["user_price_ratio"] == 1 and anon["is_new_product"] == 0
    assert anon["user_product_views_24h"] == 0  # anonymous: the default, though its view (as anon-1) counts elsewhere
    assert (new[["is_new_user", "is_new_product"]] == 1).all() and new["inventory"] == -1
    assert anon["user_category_views_24h"] == 0 and new["user_category_views_24h"] == 0  # no category: 0
    assert (rows.set_index("request_id").loc[["edge-r0", "edge-r1"], "price_minor"] == [990, 991]).all()
    assert summary.counts["requests_repeated"] == 1 and summary.counts["requests_without_offer"] == 1


def test_late_events_are_counted_by_the_same_rule(day: tuple) -> None:
    frames, _, summary = day
    kept = kept_events(frames, ALLOWANCE_MS)
    for contract in frames:
        late = len(frames[contract]) - len(kept[contract])
        assert summary.counts[f"{contract.value}_late"] == late
    assert summary.counts["market_event_late"] >= 1 and summary.counts["behaviour_event_late"] >= 1


def test_the_allowance_is_an_option_and_labels_do_not_depend_on_it(day: tuple, tmp_path: Path) -> None:
    _, folder, small = day
    big = ts.run_backfill(folder, tmp_path, allowance_ms=2 * HOUR, buckets=1, show_progress=False)
    assert big.counts["behaviour_event_late"] == big.counts["market_event_late"] == 0
    assert small.counts["behaviour_event_late"] > 0
    a, b = read_rows(small.out_dir).set_index("request_id"), read_rows(tmp_path).set_index("request_id")
    assert set(a.index) == set(b.index)
    assert (a["label"] == b.loc[a.index, "label"]).all()  # late purchases still label their offers


# ---------------------------------------------------------------------------------------------
# From the archive (pricing.archive_layout)
# ---------------------------------------------------------------------------------------------

ARCHIVE_TOPICS = {Contract.BEHAVIOUR_EVENT: "b", Contract.MARKET_EVENT: "m", Contract.PRICE_REQUEST: "r",
                  Contract.CATALOGUE_ENTRY: "c"}  # fmt: skip


def write_archive(root: Path, frames: dict[Contract, pd.DataFrame]) -> Path:
    """The frames as the archive job lays them out: by the hour of their event time, within an hour in arrival
    order, split over two files per hour whose modification times say which was committed first."""
    for contract, frame in frames.items():
        fields = [f["name"] for f in serde.published_schema(contract)["fields"]]
        frame = frame.sort_values("arrival_time", kind="stable")
        for hour, part in frame.groupby(frame["event_time"] // HOUR, sort=True):
            folder = archive_layout.partition_path(root, ARCHIVE_TOPICS[contract], int(hour) * HOUR)
            folder.mkdir(parents=True, exist_ok=True)
            records = [{k: _clean(v) for k, v in rec.items()} for rec in part.reindex(columns=fields).to_dict("records")]
            half = len(records) // 2
            for i, (name, chunk) in enumerate((("part-z", records[:half]), ("part-a", records[half:]))):
                serde.write_container(folder / name, contract, chunk)
                os.utime(folder / name, ns=(1_000_000_000 * (i + 1),) * 2)  # z was committed before a
            (folder / ".part-b.inprogress").write_bytes(b"not yet committed")  # readers must skip it
    return root


def test_a_backfill_from_the_archive_equals_one_from_the_history_folder(day: tuple, tmp_path: Path) -> None:
    frames, folder, _ = day
    root = write_archive(tmp_path / "archive", frames)
    # A day's allowance: nothing is late in either, so the order of hours in the archive cannot matter.
    allowance = 24 * HOUR
    whole = ts.run_backfill(folder, tmp_path / "history-out", allowance_ms=allowance, buckets=2, show_progress=False)
    files = ts.archive_files(root, ARCHIVE_TOPICS, archive_layout.TimeRange())
    archived = ts.run_backfill(files, tmp_path / "archive-out", allowance_ms=allowance, buckets=2,
                               show_progress=False)  # fmt: skip
    a, b = read_rows(whole.out_dir).set_index("request_id"), read_rows(archived.out_dir).set_index("request_id")
    assert len(a) > 100 and set(a.index) == set(b.index)
    assert worst_relative(vectors(b.reset_index()), vectors(a.reset_index()).loc[b.index])[2] == 0
    assert (a["label"] == b.loc[a.index, "label"]).all() and (a["price_minor"] == b.loc[a.index, "price_minor"]).all()
    # A range: rows for its requests only, each with the vector the whole backfill gave it (the context before
    # the range, 24 h of behaviour and the market from its start, is read too).
    times = np.sort(a["event_time"].to_numpy())
    window = archive_layout.TimeRange(int(times[len(times) // 3]), int(times[2 * len(times) // 3]))
    part = ts.run_backfill(ts.archive_files(root, ARCHIVE_TOPICS, window), tmp_path / "range-out",
                           allowance_ms=allowance, buckets=2, show_progress=False, rows_range=window)  # fmt: skip
    c = read_rows(part.out_dir).set_index("request_id")
    inside = a[(a["event_time"] >= window.since_ms) & (a["event_time"] < window.until_ms)]
    assert len(c) > 10 and set(c.index) == set(inside.index)
    assert worst_relative(vectors(c.reset_index()), vectors(inside.reset_index()).loc[c.index])[2] == 0
    assert part.counts["price_request_outside_range"] > 0
    with pytest.raises(FileNotFoundError, match="no archived files of topic b"):
        ts.archive_files(root, ARCHIVE_TOPICS, archive_layout.TimeRange(0, HOUR))


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def test_labels_on_a_hand_built_log(tmp_path: Path) -> None:
    t = 1_767_225_600_000 + 10 * HOUR
    w = 30 * MIN
    cases = {  # request -> (user, product, request time, expected label)
        "just-outside": ("u1", "pA", t, 0),  # bought 1 ms after the window
        "at-the-edge": ("u2", "pA", t, 1),  # bought exactly at t + window
        "bought-before": ("u3", "pA", t, 0),  # bought 1 ms before the offer
        "other-product": ("u4", "pA", t, 0),  # bought pB
        "other-user": ("u5", "pA", t, 0),  # u6 bought pA
        "by-request-id": ("u7", "pA", t, 1),  # the purchase names it
        "named-too-late": ("u8", "pA", t, 0),  # names it, but after the window
        "named-before": ("u15", "pA", t, 0),  # names it, but was bought before it (clock trouble upstream)
        "named-at-the-edge": ("u16", "pA", t, 1),  # names it, bought exactly at t + window
        "named-elsewhere": ("u9", "pA", t, 0),  # within the window, but the purchase names the next offer
        "named-next": ("u9", "pA", t + MIN, 1),
        "earlier-touch": ("u10", "pA", t, 0),  # the same user's later offer gets the unnamed purchase
        "last-touch": ("u10", "pA", t + 10 * MIN, 1),
        "late-purchase": ("u11", "pA", t, 1),  # the purchase arrives behind the watermark: still a purchase
        "anonymous": ("", "pA", t, 1),  # named by request_id
        "anonymous-unnamed": ("", "pA", t + 1, 0),  # an unnamed purchase cannot find an anonymous offer
        "no-purchase": ("u12", "pA", t, 0),
    }
    requests = [_request(rid, u, p, "web", rt) for rid, (u, p, rt, _) in cases.items()]
    views = [_behaviour(f"v-{rid}", u or "anon", p, "view", rt + 50, price=1000 + i, request_id=rid)
             for i, (rid, (u, p, rt, _)) in enumerate(cases.items())]  # fmt: skip
    purchases = [
        _behaviour("b1", "u1", "pA", "purchase", t + w + 1),
        _behaviour("b2", "u2", "pA", "purchase", t + w),
        _behaviour("b3", "u3", "pA", "purchase", t - 1),
        _behaviour("b4", "u4", "pB", "purchase", t + MIN),
        _behaviour("b5", "u6", "pA", "purchase", t + MIN),
        _behaviour("b7", "u7", "pA", "purchase", t + 5 * MIN, request_id="by-request-id"),
        _behaviour("b8", "u8", "pA", "purchase", t + w + 1, request_id="named-too-late"),
        _behaviour("b15", "u15", "pA", "purchase", t - 1, request_id="named-before"),
        _behaviour("b16", "u16", "pA", "purchase", t + w, request_id="named-at-the-edge"),
        _behaviour("b9", "u9", "pA", "purchase", t + 2 * MIN, request_id="named-next"),
        _behaviour("b10", "u10", "pA", "purchase", t + 20 * MIN),
        _behaviour("b11", "u11", "pA", "purchase", t + MIN, arrival=t + 2 * HOUR),
        _behaviour("b12", "u13", "pA", "purchase", t + MIN, request_id="anonymous"),
        _behaviour("b13", "u14", "pA", "purchase", t + 2 * MIN),
    ]
    later = [
        _behaviour("again", "u7", "pA", "view", t + MIN, price=1, request_id="by-request-id"),  # the first view's price
        _behaviour("tick", "u0", "pC", "view", t + 2 * HOUR - 1),  # moves the watermark past b11
    ]
    frames = {Contract.PRICE_REQUEST: pd.DataFrame(requests),
              Contract.MARKET_EVENT: pd.DataFrame([_market("pA", "list_price", 1000, t - HOUR)]),
              Contract.BEHAVIOUR_EVENT: pd.DataFrame(views + purchases + later)}  # fmt: skip
    folder = write_history_dir(tmp_path / "h", frames)
    # one bucket: every product meets every purchase, so "never another product" is the rule's doing
    summary = ts.run_backfill(folder, tmp_path / "out", allowance_ms=ALLOWANCE_MS, attribution_window_ms=w,
                              buckets=1, show_progress=False)  # fmt: skip
    assert summary.counts["behaviour_event_late"] == 1  # b11
    rows = read_rows(tmp_path / "out").set_index("request_id")
    got = rows["label"].to_dict()
    expected = {rid: label for rid, (*_, label) in cases.items()}
    print("\nlabels:", {rid: (got[rid], expected[rid]) for rid in cases})
    assert got == expected
    assert rows["price_minor"].to_dict() == {rid: 1000 + i for i, rid in enumerate(cases)}
    assert (rows["source"] == "history").all() and rows["propensity"].isna().all()
    assert (rows["feature_spec_version"] == FEATURE_SPEC.version).all() and (rows["currency"] == "EUR").all()


def test_attribution_window_is_an_option(tmp_path: Path) -> None:
    t = 1_767_225_600_000
    frames = {
        Contract.PRICE_REQUEST: pd.DataFrame([_request("r", "u", "p", "web", t)]),
        Contract.MARKET_EVENT: pd.DataFrame([_market("p", "list_price", 1000, t)]),
        Contract.BEHAVIOUR_EVENT: pd.DataFrame([_behaviour("v", "u", "p", "view", t, request_id="r"),
                                                _behaviour("b", "u", "p", "purchase", t + 40 * MIN)]),
    }  # fmt: skip
    folder = write_history_dir(tmp_path / "h", frames)
    labels = []
    for window in (30 * MIN, 40 * MIN):
        ts.run_backfill(folder, tmp_path / f"o{window}", attribution_window_ms=window, show_progress=False)
        labels.append(int(read_rows(tmp_path / f"o{window}")["label"].iloc[0]))
    assert labels == [0, 1]


def test_offers_without_a_named_view_take_the_users_next_view(tmp_path: Path) -> None:
    """Archives whose views carry no request_id: the same user's first view of the product in the window."""
    t = 1_767_225_600_000
    frames = {
        Contract.PRICE_REQUEST: pd.DataFrame([_request("r1", "u", "p", "web", t),
                                              _request("r2", "u", "p", "web", t + HOUR),
                                              _request("r3", "", "p", "web", t)]),
        Contract.MARKET_EVENT: pd.DataFrame([_market("p", "list_price", 1000, t)]),
        Contract.BEHAVIOUR_EVENT: pd.DataFrame([_behaviour("v0", "u", "p", "view", t - 1, price=1),  # before it
                                                _behaviour("v1", "u", "p", "view", t + 300, price=1234),
                                                _behaviour("v2", "u", "p", "view", t + HOUR + 31 * MIN, price=7)]),
    }  # fmt: skip
    summary = ts.run_backfill(write_history_dir(tmp_path / "h", frames), tmp_path / "o", show_progress=False)
    rows = read_rows(tmp_path / "o").set_index("request_id")
    assert rows["price_minor"].to_dict() == {"r1": 1234}  # r2: no view in its window; r3: anonymous
    assert summary.counts["requests_without_offer"] == 2


# ---------------------------------------------------------------------------------------------
# Serving logs
# ---------------------------------------------------------------------------------------------


def _priced(rid: str, user: str, product: str, t: int, price: int, features: list[float] | None) -> dict:
    return {"request_id": rid, "user_id": user, "product_id": product, "price_minor": price,
            "reference_price_minor": 1000, "currency": "EUR", "model_version": "baseline-list-price/1",
            "expected_conversion": float("nan"), "expected_profit_minor": 0, "reason_codes": ["list_price"],
            "fallback_used": False, "request_time": t, "priced_time": t + 5,
            "feature_spec_version": None if features is None else FEATURE_SPEC.version, "features": features}


def test_serving_logs_join_priced_events_with_their_purchases(tmp_path: Path) -> None:
    t = 1_767_225_600_000
    vec = [float(i) for i in range(len(FEATURE_SPEC.names))]
    priced = [
        _priced("s1", "u1", "p1", t, 1100, vec) | {"explored": True, "propensity": 0.0125},
        _priced("s2", "u2", "p1", t, 1200, [v + 1 for v in vec]) | {"propensity": 1.0},
        _priced("s3", "u3", "p2", t, 1300, vec),
        _priced("s1", "u1", "p1", t, 1100, vec),  # at-least-once: a repeat
        _priced("s4", "u4", "p2", t, 1400, None),  # a v1 record: no features logged
    ]
    behaviour = [
        _behaviour("v1", "u1", "p1", "view", t + 10, request_id="s1"),
        _behaviour("b1", "u1", "p1", "purchase", t + MIN, request_id="s1"),
        _behaviour("b2", "u2", "p2", "purchase", t + MIN, request_id="s2"),  # names s2, but another product
        _behaviour("b3", "u3", "p2", "purchase", t + 31 * MIN, request_id="s3"),  # after the window
    ]
    serde.write_container(tmp_path / "priced.avro", Contract.PRICED_EVENT, priced)
    (tmp_path / "behaviour").mkdir()
    serde.write_container(tmp_path / "behaviour" / "part-0.avro", Contract.BEHAVIOUR_EVENT,
                          [{k: v for k, v in b.items() if k != "arrival_time"} for b in behaviour])  # fmt: skip
    summary = ts.run_from_serving_logs([tmp_path / "priced.avro"], [tmp_path / "behaviour"], tmp_path / "out",
                                       show_progress=False)  # fmt: skip
    rows = read_rows(tmp_path / "out").set_index("request_id").sort_index()
    assert list(rows.index) == ["s1", "s2", "s3"]
    assert rows["label"].tolist() == [1, 0, 0]
    assert rows["price_minor"].tolist() == [1100, 1200, 1300] and (rows["event_time"] == t).all()
    assert rows.loc["s2", "features"].tolist() == [v + 1 for v in vec]
    assert (rows["source"] == "serving").all()
    assert rows["propensity"].tolist()[:2] == [0.0125, 1.0] and pd.isna(rows.loc["s3", "propensity"])  # s3: no propensity
    assert summary.counts["priced_repeated"] == 1 and summary.counts["priced_without_features"] == 1


# ---------------------------------------------------------------------------------------------
# Per-record rules
# ---------------------------------------------------------------------------------------------


def test_late_mask_matches_a_loop() -> None:
    rng = np.random.default_rng(1)
    behind = rng.integers(0, 5_000, 2_000) * (rng.random(2_000) < 0.3)
    times = 1_000_000 + np.cumsum(rng.integers(0, 1_000, 2_000)) - behind
    for allowance in (0, 500, 2_000):
        newest, expected = None, []
        for x in times.tolist():
            expected.append(newest is not None and x <= newest - allowance)
            newest = x if newest is None else max(newest, x)
        assert ts.late_mask(times, allowance).tolist() == expected
    assert ts.late_mask(np.array([5, 7, 6, 7]), 1).tolist() == [False, False, True, False]  # at the watermark is late


def test_invalid_mask_agrees_with_the_decoder() -> None:
    t = 1_767_225_600_000
    behaviour = [
        _behaviour("ok", "u", "p", "view", t),
        _behaviour("ok-id", "u", "p", "purchase", t, request_id="r"),
        _behaviour("no-user", "", "p", "view", t),
        _behaviour("qty0", "u", "p", "view", t, qty=0),
        _behaviour("neg", "u", "p", "view", t, price=-1),
        _behaviour("cur", "u", "p", "view", t) | {"currency": "eur"},
        _behaviour("empty-id", "u", "p", "view", t, request_id=""),
        _behaviour("long", "u" * 257, "p", "view", t),
        _behaviour("t0", "u", "p", "view", 0),
    ]
    market = [
        _market("p", "list_price", 1000, t), _market("p", "list_price", 0, t), _market("p", "promotion", 10_001, t),
        _market("p", "inventory", 0, t), _market("p", "cost", 0, t),
        _market("p", "competitor_price", 5, t, competitor=""),
        _market("p", "cost", 5, t) | {"currency": ""}, _market("p", "inventory", 3, t) | {"currency": "EURO"},
    ]  # fmt: skip
    requests = [_request("r", "", "p", "web", t), _request("", "u", "p", "web", t), _request("r", "u", "", "app", t)]
    for contract, recs in ((Contract.BEHAVIOUR_EVENT, behaviour), (Contract.MARKET_EVENT, market),
                           (Contract.PRICE_REQUEST, requests)):  # fmt: skip
        fields = [f["name"] for f in serde.published_schema(contract)["fields"]]
        recs = [{k: r.get(k) for k in fields} for r in recs]
        decoder = [not serde.decode(contract, serde.encode(contract, r)).ok for r in recs]
        assert ts.invalid_mask(contract, pd.DataFrame(recs, columns=fields)).tolist() == decoder, contract
        assert any(decoder) and not all(decoder)
