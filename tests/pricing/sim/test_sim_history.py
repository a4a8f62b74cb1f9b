from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricing.sim.cli import register
from pricing.sim.history import CATALOGUE_FILE, END_STATE_FILE, FILES, History, _fields, generate_history
from pricing.sim.market import build_market
from pricing.sim.scenario import Scenario
from pricing.sim.world import MarketSnapshot
from pricing_udfs.serde import Contract, decode, encode, enum_symbols, money_kinds, published_schema, read_container


def _fit_logit(x: np.ndarray, y: np.ndarray, *, offset: np.ndarray, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression with a known offset by Newton-Raphson (IRLS; sklearn is not a dependency):
    the estimates and their standard errors (from the inverse Fisher information)."""
    beta = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ beta + offset)))
        info = x.T @ (x * (p * (1 - p))[:, None])
        step = np.linalg.solve(info, x.T @ (y - p))
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    return beta, np.sqrt(np.diag(np.linalg.inv(info)))


def test_same_seed_same_history_other_seed_other_history(small_default: Scenario) -> None:
    a = generate_history(small_default, days=2)
    b = generate_history(small_default, days=2)
    for fa, fb in zip((a.behaviour, a.market_events, a.requests, a.impressions),
                      (b.behaviour, b.market_events, b.requests, b.impressions)):  # fmt: skip
        pd.testing.assert_frame_equal(fa, fb)
    c = generate_history(small_default.with_overrides(seed=99), days=2)
    assert not a.behaviour[["user_id", "product_id", "event_time"]].equals(c.behaviour[["user_id", "product_id", "event_time"]])


def test_cli_history_files_decode_with_zero_rejects(tmp_path: Path, week_history: History) -> None:
    parser = argparse.ArgumentParser(prog="pricing")
    register(parser.add_subparsers(dest="command", required=True))
    scenario = week_history.scenario  # the small default: same seed, fewer users and products
    args = parser.parse_args(["simulate", "history", "--days", "7", "--out", str(tmp_path / "h"),
                              "--users", str(scenario.n_users), "--products", str(scenario.n_products)])  # fmt: skip
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == sorted([*FILES.values(), CATALOGUE_FILE, END_STATE_FILE])
    end = MarketSnapshot.load(tmp_path / "h" / END_STATE_FILE, scenario=scenario)
    assert end.time_ms == week_history.end_ms and np.array_equal(end.stock, week_history.end_state.stock)
    for contract, name in FILES.items():
        records = read_container(tmp_path / "h" / name, contract)
        assert len(records) == week_history.counts()[name] > 1000
        rejected = [r for r in records if not decode(contract, encode(contract, r)).ok]
        assert rejected == []
        assert all(isinstance(r["event_time"], int) and r["event_time"] > 0 for r in records)
        # the files hold exactly the history the function returns (same seed, same content); a field the
        # frame lacks would be written as its default, null
        written, frame = pd.DataFrame(records), week_history.frames()[contract].reset_index(drop=True)
        fields = [f["name"] for f in published_schema(contract)["fields"]]
        assert list(written.columns) == fields
        held = [f for f in fields if f in frame.columns]
        pd.testing.assert_frame_equal(written[held], frame[held], check_dtype=False)
        assert written[[f for f in fields if f not in held]].isna().all().all()


def test_fields_come_from_the_schema_and_a_missing_one_needs_a_default() -> None:
    fields = [f["name"] for f in published_schema(Contract.MARKET_EVENT)["fields"]]
    frame = pd.DataFrame(columns=["arrival_time", *reversed(fields)])
    assert _fields(Contract.MARKET_EVENT, frame) == tuple(fields)  # schema order, extra columns left out
    assert _fields(Contract.MARKET_EVENT, frame.drop(columns="competitor_id")) == tuple(f for f in fields if f != "competitor_id")
    with pytest.raises(ValueError, match=r"market_event: the frame lacks \['value'\]"):
        _fields(Contract.MARKET_EVENT, frame.drop(columns="value"))


def test_events_are_consistent_with_the_contracts(week_history: History) -> None:
    b, m, r = week_history.behaviour, week_history.market_events, week_history.requests
    assert set(b["type"]) == set(enum_symbols(Contract.BEHAVIOUR_EVENT, "type"))  # every type occurs
    assert (b["currency"] == "EUR").all() and (b["price_seen_minor"] > 0).all() and (b["quantity"] == 1).all()
    assert b["event_id"].is_unique and r["request_id"].is_unique
    assert set(m["kind"]) == set(enum_symbols(Contract.MARKET_EVENT, "kind"))  # every kind occurs
    money = m["kind"].isin(money_kinds())
    assert (m.loc[money, "currency"] == "EUR").all() and (m.loc[~money, "currency"] == "").all()
    assert m.loc[m["kind"] == "competitor_price", "competitor_id"].notna().all()
    assert m.loc[m["kind"] != "competitor_price", "competitor_id"].isna().all()
    assert (m["value"] >= 0).all()
    assert (m.loc[m["kind"] == "promotion", "value"] == 0).any()  # promotions also end
    # one request per view, just before it
    assert len(r) == (b["type"] == "view").sum()
    both = r.merge(week_history.impressions, on="request_id", suffixes=("_request", "_view"), validate="1:1")
    assert len(both) == len(r)
    assert (both["event_time_request"] < both["event_time_view"]).all()
    assert (both["event_time_view"] - both["event_time_request"] < 1_000).all()


def test_behaviour_carries_the_request_whose_price_it_followed(week_history: History) -> None:
    """Every view, cart, purchase and review names the request answered with the price it saw (attribution
    for training, as in live traffic): same user, product and price as that request's impression."""
    m = build_market(week_history.scenario)
    imp = week_history.impressions.assign(user_id=lambda d: m.user_ids[d["user_index"]],
                                          product_id=lambda d: m.product_ids[d["product_index"]])  # fmt: skip
    b = week_history.behaviour
    assert b["request_id"].notna().all()
    both = b.merge(imp, on="request_id", suffixes=("", "_imp"), validate="m:1")
    assert len(both) == len(b)
    for col in ("user_id", "product_id"):
        assert (both[col] == both[f"{col}_imp"]).all()
    assert (both["price_seen_minor"] == both["price_minor"]).all()
    assert (both["event_time"] >= both["event_time_imp"]).all()  # the view itself, or after it
    views = b[b["type"] == "view"]
    assert views["request_id"].is_unique and set(views["request_id"]) == set(week_history.requests["request_id"])
    bought = b.loc[b["type"] == "purchase", "request_id"]
    assert bought.is_unique and set(bought) == set(imp.loc[imp["purchased"], "request_id"])


def test_purchases_happen_at_the_logged_price_and_only_in_stock(week_history: History) -> None:
    imp = week_history.impressions
    b = week_history.behaviour
    bought = imp[imp["purchased"]]
    assert (bought["inventory"] > 0).all() and (bought["true_probability"] > 0).all()
    assert not imp.loc[imp["inventory"] == 0, "purchased"].any()
    m = build_market(week_history.scenario)
    expected = Counter(zip(m.user_ids[bought["user_index"]], m.product_ids[bought["product_index"]], bought["price_minor"]))
    got = Counter(zip(*(b.loc[b["type"] == "purchase", c] for c in ("user_id", "product_id", "price_seen_minor"))))
    assert got == expected
    # purchases are draws from the true probabilities: realised count within 4 sigma of the expected
    p = imp["true_probability"].to_numpy()
    assert abs(imp["purchased"].sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    # stock-outs do happen (popular products), but are rare
    assert 0 < (imp["inventory"] == 0).mean() < 0.1


def test_logged_prices_follow_the_historical_policy(week_history: History) -> None:
    imp = week_history.impressions
    band = week_history.scenario.historical_policy.multiplier
    ratio = imp["price_minor"] / (imp["reference_price_minor"] * (1 - imp["promotion_bp"] / 10_000))
    assert ratio.between(band.low - 0.01, band.high + 0.01).all()
    assert ratio.std() > 0.05  # randomised, so elasticity is identifiable


def test_a_share_of_events_arrives_late_and_out_of_order(week_history: History) -> None:
    share = week_history.scenario.lateness.share
    for frame in (week_history.behaviour, week_history.market_events):
        late = (frame["arrival_time"] > frame["event_time"]).mean()
        assert share * 0.6 < late < share * 1.4
        assert frame["arrival_time"].is_monotonic_increasing  # files are in arrival order ...
        assert not frame["event_time"].is_monotonic_increasing  # ... so event times are out of order
    assert week_history.requests["event_time"].is_monotonic_increasing  # requests are never late


def test_the_logs_identify_the_true_demand_coefficients(small_default: Scenario) -> None:
    """Purchases follow the scenario's logit, and its randomised prices identify every coefficient.

    The fit is the purchase model in its true form: the price terms multiply each view's latent
    sensitivity (user x product) and the product's appeal shifts the intercept; the engine must learn
    those, the test knows them. That logit estimates the scenario's coefficients themselves, so each
    must lie within 4 standard errors of ``scenario.demand`` (a logit pooled over all users without
    them estimates attenuated coefficients, not coefficient x mean sensitivity). Four weeks of logs
    make that about 12% of the price coefficients: a coefficient 20% off fails.
    """
    history = generate_history(small_default, days=28)
    imp = history.impressions[history.impressions["inventory"] > 0]
    market = build_market(small_default)
    price = imp["price_minor"].to_numpy(float)
    comp = imp["competitor_min_minor"].to_numpy(float)
    sensitivity = imp["price_sensitivity"].to_numpy()
    x = np.column_stack([
        np.ones(len(imp)),
        sensitivity * np.log(price / imp["reference_price_minor"].to_numpy(float)),
        sensitivity * np.where(comp > 0, np.log(price / np.where(comp > 0, comp, 1)), 0.0),
        imp["promotion_active"].to_numpy(float),
    ])  # fmt: skip
    beta, se = _fit_logit(x, imp["purchased"].to_numpy(float), offset=market.appeal[imp["product_index"].to_numpy()])
    d = small_default.demand
    truth = np.array([d.intercept, d.log_price_vs_reference, d.log_price_vs_competitor, d.promotion])
    assert np.all(np.abs(beta - truth) < 4 * se), (beta, truth, se)
    assert np.all(4 * se[1:3] < 0.15 * np.abs(truth[1:3]))  # tight enough to matter


def test_market_events_agree_with_the_state_each_view_saw(week_history: History) -> None:
    """Rebuilding the market from the logged market events gives exactly the state behind each purchase decision."""
    m = build_market(week_history.scenario)
    views = week_history.impressions.assign(product_id=lambda d: m.product_ids[d["product_index"]])
    views = views.sort_values("event_time", kind="stable")
    events = week_history.market_events.sort_values("event_time", kind="stable")

    def as_of(kind: str, competitor: str | None = None) -> np.ndarray:
        ev = events[events["kind"] == kind]
        if competitor is not None:
            ev = ev[ev["competitor_id"] == competitor]
        merged = pd.merge_asof(views[["event_time", "product_id"]], ev[["event_time", "product_id", "value"]],
                               on="event_time", by="product_id", allow_exact_matches=True)  # fmt: skip
        return merged["value"].to_numpy(dtype=float)

    assert np.array_equal(as_of("list_price"), views["reference_price_minor"].to_numpy(dtype=float))
    assert np.array_equal(as_of("cost"), views["unit_cost_minor"].to_numpy(dtype=float))
    assert np.array_equal(np.nan_to_num(as_of("promotion")), views["promotion_bp"].to_numpy(dtype=float))
    comp = np.column_stack([as_of("competitor_price", c) for c in m.competitor_ids])
    comp_min = np.where(np.isnan(comp).all(axis=1), 0, np.nanmin(np.where(np.isnan(comp), np.inf, comp), axis=1))
    assert np.array_equal(comp_min, views["competitor_min_minor"].to_numpy(dtype=float))
    # stock: no view saw stock the last inventory event says is gone (events are at or before the change)
    stock = as_of("inventory")
    assert np.all(stock[views["purchased"].to_numpy()] > 0)
