"""The evaluation report of a demand model version: ``report.md``, ``report.json`` and PNG plots.

::

    write_report(model, test, out_dir, scenario=get_scenario("default"), trained=trained,
                 baseline_data=train_slice, product_ids=ids, user_ids=users)

Sections:

1. log-loss and AUC of the model against a base-rate model on the holdout rows given;
2. the calibration table and a reliability plot (``calibration.png``);
3. with a simulator ``scenario`` (and the rows' ``product_ids`` / ``user_ids``, which the
   training rows carry but ``TrainingSet`` does not): the price sensitivity per category,
   ``-d logit / d log(price)``, of the model (its ``price_slope`` signature, else central
   finite differences of its logit in log price at the list price) against the simulator's
   truth for the same rows (finite differences of ``MarketState.probability``: the truth
   comes from ``pricing.sim.market`` itself), with their ratio, the same per user segment and the row-level
   correlation of the two; and demand curves, model vs
   truth, for the three products with the most rows (``demand_curves.png``);
4. the seed's approach as a baseline row: an MLP regressing the offered price on the
   features with squared error (TensorFlow), fitted on ``baseline_data`` (the training slice; else the
   older half of ``data``), and its price RMSE on ``data``.

numpy, matplotlib (Agg), TensorFlow (the baseline only) and ``pricing.sim.market``; the model is anything with
``score(features [N, F], prices [N, K]) -> [N, K]`` (optionally ``price_slope(features)``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pricing.training import (
    CALIBRATION_BINS,
    TrainedModel,
    TrainingSet,
    calibration_table,
    expected_calibration_error,
    json_safe,
    log_loss,
    roc_auc,
)
from pricing_udfs.features.spec import FEATURE_SPEC, FeatureSpec

_H = 0.05  # half step of the finite differences, in log price
_GRID = np.linspace(0.6, 1.6, 41)  # demand curve prices, multiples of the list price
_CURVE_PRODUCTS = 3


def write_report(
    model: Any,
    data: TrainingSet,
    out_dir: Path | str,
    *,
    scenario: Any | None = None,
    trained: TrainedModel | None = None,
    baseline_data: TrainingSet | None = None,
    product_ids: Sequence[str] | np.ndarray | None = None,
    user_ids: Sequence[str] | np.ndarray | None = None,
    spec: FeatureSpec = FEATURE_SPEC,
) -> Path:
    """Write ``report.md``, ``report.json``, ``calibration.png`` (and ``demand_curves.png`` with a
    scenario) into ``out_dir`` (created) and return the path of ``report.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(data) == 0:
        raise ValueError("no rows to evaluate")
    probs = np.asarray(model.score(data.features, data.prices[:, None]), dtype=np.float64)[:, 0]
    if trained is not None and "base_rate" in trained.metrics:
        base_rate, base_note = float(trained.metrics["base_rate"]), "the training rows' purchase rate"
    elif baseline_data is not None and len(baseline_data):
        base_rate, base_note = float(baseline_data.labels.mean()), "the baseline rows' purchase rate"
    else:
        base_rate, base_note = float(data.labels.mean()), "these rows' own purchase rate (in-sample)"
    summary: dict[str, Any] = {
        "rows": len(data),
        "purchase_rate": float(data.labels.mean()),
        "log_loss": log_loss(data.labels, probs),
        "auc": roc_auc(data.labels, probs),
        "base_rate": base_rate,
        "base_rate_log_loss": log_loss(data.labels, np.full(len(data), base_rate)),
        "calibration_error": expected_calibration_error(data.labels, probs),
    }
    table = calibration_table(data.labels, probs)
    _plot_calibration(table, out / "calibration.png")

    baseline = _price_regression(baseline_data, data, spec)
    summary["baseline"] = baseline

    lines = [f"# Demand model evaluation ({data.feature_spec_version})", ""]
    if trained is not None:
        m = trained.metrics
        lines += [f"Trained on {int(m.get('train_rows', 0)):,} rows; evaluated on the newest {len(data):,} "
                  f"(the time holdout's test slice, never seen by any fitting step).", ""]  # fmt: skip
    else:
        lines += [f"Evaluated on {len(data):,} rows.", ""]
    lines += [
        "## Log-loss and AUC against the base rate",
        "",
        "| model | log-loss | AUC | price RMSE |",
        "| --- | ---: | ---: | ---: |",
        f"| demand model | {summary['log_loss']:.4f} | {summary['auc']:.3f} | |",
        f"| base rate ({base_rate:.4f}, {base_note}) | {summary['base_rate_log_loss']:.4f} | 0.500 | |",
        f"| the seed's approach: price regression (MSE) | n/a | n/a | {_fmt(baseline.get('rmse'), '.1f')} |",
        "",
        f"Purchase rate of these rows: {summary['purchase_rate']:.4f}.",
        "",
        "## Calibration",
        "",
        f"Expected calibration error ({CALIBRATION_BINS} equal-width bins): {summary['calibration_error']:.4f}. "
        "Plot: `calibration.png` (predicted vs observed per bin).",
        "",
        "| predicted | rows | mean predicted | observed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for b in table:
        lines.append(f"| {b.lower:.1f}-{b.upper:.1f} | {b.count:,} | {_fmt(b.mean_predicted, '.4f')} | "
                     f"{_fmt(b.observed_rate, '.4f')} |")  # fmt: skip

    if scenario is not None:
        lines += [""] + _simulator_section(model, data, scenario, product_ids, user_ids, spec, out, summary)

    lines += ["", "## Baseline: the seed's approach", ""] + _baseline_text(baseline)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(json_safe(summary), indent=2, sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------------------ simulator
def _simulator_section(model: Any, data: TrainingSet, scenario: Any, product_ids: Any, user_ids: Any,
                       spec: FeatureSpec, out: Path, summary: dict[str, Any]) -> list[str]:  # fmt: skip
    from pricing.sim.market import build_market

    head = ["## Price sensitivity against the simulator's truth", ""]
    if product_ids is None or user_ids is None:
        summary["elasticity"] = None
        return head + ["Not computed: the rows' product and user ids were not given."]
    market = build_market(scenario)
    prod_index = {str(p): j for j, p in enumerate(market.product_ids)}
    user_index = {str(u): i for i, u in enumerate(market.user_ids)}
    prod = np.array([prod_index.get(str(p), -1) for p in product_ids], dtype=np.int64)
    user = np.array([user_index.get(str(u), -1) for u in user_ids], dtype=np.int64)
    if prod.size != len(data) or user.size != len(data):
        raise ValueError("product_ids and user_ids must have one entry per row")
    ref = data.features[:, spec.index("list_price_minor")]
    ok = (prod >= 0) & (user >= 0) & np.isfinite(ref) & (ref > 0)
    if not ok.any():
        summary["elasticity"] = None
        return head + [f"Not computed: no row matches a product and user of scenario {scenario.name!r} "
                       "with a known list price."]  # fmt: skip
    rows = np.flatnonzero(ok)
    feats, p_idx, u_idx, ref_ok = data.features[rows], prod[rows], user[rows], ref[rows]
    model_slope = _model_slope(model, feats, ref_ok)
    true_slope = _true_slope(market, u_idx, p_idx, ref_ok)
    cat = market.product_category[p_idx]

    per_cat = []
    lines = head + [
        f"Scenario {scenario.name!r}: {rows.size:,} of {len(data):,} rows matched a simulated product and user "
        "with a known list price. Sensitivity = -d logit / d log(price), everything else fixed, averaged over "
        "the rows of each category: the model's from its `price_slope` signature (or finite differences of its "
        "logit), the truth from `pricing.sim.market` for each row's user and product (user sensitivity x product "
        "elasticity x both price coefficients).",
        "",
        "| category | rows | model | truth | model / truth |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c, name in enumerate(market.category_names):
        mask = cat == c
        if not mask.any():
            continue
        m, t = float(model_slope[mask].mean()), float(true_slope[mask].mean())
        ratio = m / t if t != 0 else math.nan
        per_cat.append({"category": name, "rows": int(mask.sum()), "model": m, "truth": t, "ratio": ratio})
        lines.append(f"| {name} | {int(mask.sum()):,} | {m:.3f} | {t:.3f} | {ratio:.2f} |")
    ratios = [r["ratio"] for r in per_cat if math.isfinite(r["ratio"]) and r["ratio"] > 0]
    factor = max(max(r, 1 / r) for r in ratios) if ratios else math.nan
    signs = all(r["model"] > 0 and r["truth"] > 0 for r in per_cat)
    lines += ["", f"Every category's sensitivity has the right sign: {'yes' if signs else 'no'}; the worst "
                  f"category is within a factor of {factor:.2f} of the truth."]  # fmt: skip
    # Per user segment: how well the model tells the shoppers' hidden sensitivities apart (what personal prices
    # are made of), and the row-level correlation of its sensitivity with the truth.
    per_seg = []
    seg = market.user_segment[u_idx]
    lines += ["", "Per user segment (the users' hidden sensitivity groups), the same rows:", "",
              "| segment | rows | model | truth | model / truth |", "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for k, name in enumerate(market.segment_names):
        mask = seg == k
        if not mask.any():
            continue
        m, t = float(model_slope[mask].mean()), float(true_slope[mask].mean())
        ratio = m / t if t != 0 else math.nan
        per_seg.append({"segment": name, "rows": int(mask.sum()), "model": m, "truth": t, "ratio": ratio})
        lines.append(f"| {name} | {int(mask.sum()):,} | {m:.3f} | {t:.3f} | {ratio:.2f} |")
    both = np.isfinite(model_slope) & np.isfinite(true_slope)
    corr = float(np.corrcoef(model_slope[both], true_slope[both])[0, 1]) if both.sum() > 2 else math.nan
    spread = float(np.std(model_slope[both]) / np.std(true_slope[both])) if both.sum() > 2 else math.nan
    lines += ["", f"Row by row, the model's sensitivity correlates {corr:.2f} with the truth; its spread (standard "
                  f"deviation) is {spread:.2f} of the truth's."]  # fmt: skip
    summary["elasticity"] = {"categories": per_cat, "segments": per_seg, "row_correlation": corr,
                             "spread_ratio": spread, "worst_factor": factor, "right_sign": signs,
                             "matched_rows": int(rows.size)}  # fmt: skip

    # Demand curves: the products with the most rows, averaged over their rows (users and market states).
    counts = np.bincount(p_idx, minlength=market.n_products)
    top = [int(j) for j in np.argsort(-counts, kind="stable")[:_CURVE_PRODUCTS] if counts[j] > 0]
    curves = []
    for j in top:
        mask = p_idx == j
        r = ref_ok[mask]
        prices = r[:, None] * _GRID[None, :]
        model_p = np.asarray(model.score(feats[mask], prices), dtype=np.float64).mean(axis=0)
        promo = feats[mask][:, spec.index("promotion_active")]
        truth_p = _truth_probability(market, u_idx[mask], np.full(mask.sum(), j), r, prices, promo).mean(axis=0)
        curves.append({"product": str(market.product_ids[j]), "category": market.category_names[cat[mask][0]],
                       "rows": int(mask.sum()), "model": model_p, "truth": truth_p})  # fmt: skip
    _plot_curves(curves, out / "demand_curves.png")
    lines += ["", f"Demand curves (`demand_curves.png`): purchase probability at {_GRID[0]:.1f}x to {_GRID[-1]:.1f}x "
                  "the list price, averaged over each product's rows, model vs truth (the truth in stock, with "
                  "the product's initial cheapest competitor and the row's promotion flag).", "",
              "| product | category | rows | model at 0.8x / 1.0x / 1.2x | truth at 0.8x / 1.0x / 1.2x |",
              "| --- | --- | ---: | --- | --- |"]  # fmt: skip
    at = [int(np.argmin(np.abs(_GRID - g))) for g in (0.8, 1.0, 1.2)]
    for cv in curves:
        mp = " / ".join(f"{cv['model'][k]:.3f}" for k in at)
        tp = " / ".join(f"{cv['truth'][k]:.3f}" for k in at)
        lines.append(f"| {cv['product']} | {cv['category']} | {cv['rows']:,} | {mp} | {tp} |")
    summary["demand_curves"] = [{**cv, "model": cv["model"].tolist(), "truth": cv["truth"].tolist()} for cv in curves]
    return lines


def _model_slope(model: Any, features: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """-d logit / d log(price) per row: the ``price_slope`` signature, else finite differences at the list price."""
    if hasattr(model, "price_slope"):
        return np.asarray(model.price_slope(features), dtype=np.float64)
    prices = ref[:, None] * np.exp(np.array([[-_H, _H]]))
    p = np.clip(np.asarray(model.score(features, prices), dtype=np.float64), 1e-7, 1 - 1e-7)
    z = np.log(p) - np.log1p(-p)
    return -(z[:, 1] - z[:, 0]) / (2 * _H)


def _truth_probability(market: Any, users: np.ndarray, products: np.ndarray, ref: np.ndarray,
                       prices: np.ndarray, promotion: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The simulator's purchase probability ``[N, K]`` for these users and products (in stock)."""
    comp = market.list_price_minor[products] * np.nanmin(
        np.where(np.isnan(market.competitor_ratio[products]), np.inf, market.competitor_ratio[products]), axis=1
    )
    comp = np.where(np.isfinite(comp), comp, np.nan)
    promo = np.zeros(len(users)) if promotion is None else promotion
    return market.probability(
        user_idx=users[:, None], product_idx=products[:, None], offered_price=prices, reference_price=ref[:, None],
        competitor_min=comp[:, None], promotion_active=promo[:, None], inventory=np.ones((1, 1)),
    )  # fmt: skip


def _true_slope(market: Any, users: np.ndarray, products: np.ndarray, ref: np.ndarray) -> np.ndarray:
    prices = ref[:, None] * np.exp(np.array([[-_H, _H]]))
    p = np.clip(_truth_probability(market, users, products, ref, prices), 1e-12, 1 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    return -(z[:, 1] - z[:, 0]) / (2 * _H)


# ------------------------------------------------------------------------------- baseline
def _price_regression(fit: TrainingSet | None, data: TrainingSet, spec: FeatureSpec, *, seed: int = 0,
                      max_rows: int = 200_000, epochs: int = 3) -> dict[str, Any]:  # fmt: skip
    """The seed's approach: an MLP regressing the offered price on the features with squared error.

    Two hidden layers of 32, the features standardised inside the model; at most ``max_rows`` training rows
    and ``epochs`` passes (more on small data, for ~400 steps) keep the report quick. Deterministic for ``seed``.
    """
    if fit is None or len(fit) < 2:
        half = len(data) // 2
        fit, data = data.take(slice(0, half)), data.take(slice(half, None))
        where = "the older half of the evaluated rows, scored on the newer half"
    else:
        where = "the training rows, scored on the evaluated rows"
    if len(fit) < 2 or len(data) < 1:
        return {"rmse": None, "fitted_on": "too few rows"}
    import tensorflow as tf

    rows = np.random.default_rng(seed).permutation(len(fit))[:max_rows]
    x, y = fit.features[rows].astype(np.float32), fit.prices[rows].astype(np.float32)
    scale = float(y.std()) or 1.0
    tf.keras.utils.set_random_seed(seed)
    norm = tf.keras.layers.Normalization()
    norm.adapt(x)
    mlp = tf.keras.Sequential([tf.keras.Input((x.shape[1],)), norm, tf.keras.layers.Dense(32, activation="relu"),
                               tf.keras.layers.Dense(32, activation="relu"), tf.keras.layers.Dense(1)])  # fmt: skip
    mlp.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss="mse")
    epochs = max(epochs, min(100, -(-400 * 1024 // len(rows))))  # at least ~400 steps on small data
    mlp.fit(x, y / scale, batch_size=1024, epochs=epochs, verbose=0, shuffle=True)
    pred = mlp.predict(data.features.astype(np.float32), batch_size=8192, verbose=0)[:, 0].astype(np.float64) * scale
    rmse = float(np.sqrt(np.mean((pred - data.prices) ** 2)))
    ref = data.features[:, spec.index("list_price_minor")]
    known = ref > 0
    rel = float(np.sqrt(np.mean(((pred[known] - data.prices[known]) / ref[known]) ** 2))) if known.any() else None
    return {"rmse": rmse, "relative_rmse": rel, "mean_price": float(data.prices.mean()),
            "price_sd": float(data.prices.std()), "fitted_on": where, "rows": int(len(rows)), "epochs": epochs}  # fmt: skip


def _baseline_text(b: dict[str, Any]) -> list[str]:
    if b.get("rmse") is None:
        return ["Not fitted: too few rows."]
    return [
        f"An MLP (two hidden layers of 32) regressing the offered price on the feature vector with squared error, "
        f"as the seed trained it, fitted on {b['fitted_on']} ({b['rows']:,} rows, {b['epochs']} epochs): price RMSE "
        f"{b['rmse']:.1f} minor units ({_fmt(b.get('relative_rmse'), '.3f')} of the list price), against a price "
        f"standard deviation of {b['price_sd']:.1f}.",
        "",
        "- **What it gets right:** it imitates the prices of the past. Prices follow the list price, so the "
        "list price feature predicts most of them, and the rest is the historical policy's random multiplier.",
        "- **Why it cannot set a profitable price:** it has no demand response. It never sees whether anyone "
        "bought, so it cannot say what happens at a price nobody tried, nor trade margin against conversion: "
        "its best guess is the past average, whatever that earned. The demand model above gives the purchase "
        "probability at any candidate price, which the policy multiplies by the margin.",
    ]


# ---------------------------------------------------------------------------------- plots
def _plot_calibration(table: Sequence[Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    full = [b for b in table if b.count]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.plot([b.mean_predicted for b in full], [b.observed_rate for b in full], marker="o", label="demand model")
    hi = max([0.05] + [max(b.mean_predicted, b.observed_rate) for b in full]) * 1.1
    ax.set_xlim(0, min(1, hi))
    ax.set_ylim(0, min(1, hi))
    ax.set_xlabel("mean predicted purchase probability (bin)")
    ax.set_ylabel("observed purchase rate")
    ax.set_title("Reliability")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_curves(curves: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(4 * max(len(curves), 1), 3.6), squeeze=False)
    for ax, cv in zip(axes[0], curves):
        ax.plot(_GRID, cv["truth"], color="black", label="truth (simulator)")
        ax.plot(_GRID, cv["model"], color="tab:blue", linestyle="--", label="demand model")
        ax.axvline(1.0, color="grey", linewidth=0.5)
        ax.set_title(f"{cv['product']} ({cv['category']}, {cv['rows']:,} rows)", fontsize=9)
        ax.set_xlabel("price / list price")
        ax.set_ylabel("purchase probability")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -------------------------------------------------------------------------------- helpers
def load_row_ids(data_dir: Path | str, test: TrainingSet) -> tuple[np.ndarray, np.ndarray]:
    """The ``product_id`` and ``user_id`` of the newest ``len(test)`` rows of the training set in ``data_dir``,
    in ``load_training_set``'s order (event time, stable), so they align with a time holdout's test slice."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(data_dir)
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    table = pa.concat_tables([pq.read_table(f, columns=["event_time", "product_id", "user_id"]) for f in files])
    event_time = table.column("event_time").to_numpy()
    order = np.argsort(event_time, kind="stable")[-len(test):]
    if not np.array_equal(event_time[order], test.event_time):
        raise ValueError("the ids do not align with the test rows (not a time holdout?)")
    products = np.asarray(table.column("product_id").to_pylist(), dtype=object)[order]
    users = np.asarray(table.column("user_id").to_pylist(), dtype=object)[order]
    return products, users


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None or not math.isfinite(value) else format(value, spec)
