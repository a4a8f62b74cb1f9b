"""Property tests (hypothesis) of the simulator's small numeric helpers, each against its definition
or a brute-force reference, on generated inputs."""

from __future__ import annotations

import itertools
from collections import defaultdict
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.sim.evaluate import _spread
from pricing.sim.market import _largest_remainder
from pricing_udfs.policy import Guardrails
from pricing.sim.world import _exclusive_count_by_group

# Small inputs and 100 examples each: the whole file runs in a second or two.
FAST = settings(max_examples=100, deadline=None)


@st.composite
def guardrails(draw: st.DrawFn) -> Guardrails:
    low = draw(st.floats(0.1, 2.0))
    return Guardrails(
        min_multiplier=low,
        max_multiplier=draw(st.floats(low, 3.0)),
        min_margin=draw(st.floats(0.0, 0.5)),
        max_change=draw(st.none() | st.floats(0.01, 1.0)),
    )


@st.composite
def priced_rows(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Offered prices with what clamps them: costs may exceed the band, anchors may be unknown (0, NaN)."""
    n = draw(st.integers(1, 20))
    whole = st.integers(1, 100_000)
    return {
        "price": np.array(draw(st.lists(st.floats(-1e3, 3e5), min_size=n, max_size=n))),
        "reference_price": np.array(draw(st.lists(whole, min_size=n, max_size=n))),
        "unit_cost": np.array(draw(st.lists(whole, min_size=n, max_size=n))),
        "anchor_price": np.array(draw(st.lists(st.sampled_from([0.0, np.nan]) | whole.map(float), min_size=n, max_size=n))),
    }


@FAST
@given(guardrails(), priced_rows())
def test_clamp_is_inside_the_bounds_and_idempotent(g: Guardrails, rows: dict[str, np.ndarray]) -> None:
    price, context = rows["price"], {k: v for k, v in rows.items() if k != "price"}
    lo, hi = g.bounds(**context)
    clamped = g.clamp(price, **context)
    assert clamped.dtype == np.int64
    assert np.all((lo <= clamped) & (clamped <= hi))
    assert not g.violations(clamped, **context).any()
    assert np.array_equal(g.clamp(clamped, **context), clamped)
    # the cost floor wins over every other limit
    assert np.all(clamped >= context["unit_cost"] * (1 + g.min_margin) - 1e-6)
    # a whole price already inside the bounds is left as it is
    inside = np.clip(np.rint(price), lo, hi).astype(np.int64)
    assert np.array_equal(g.clamp(inside, **context), inside)


@st.composite
def grouped_flags(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 60))
    groups = draw(st.lists(st.integers(0, draw(st.integers(0, 8))), min_size=n, max_size=n))
    flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return np.array(groups, dtype=np.int64), np.array(flags, dtype=bool)


@FAST
@given(grouped_flags())
def test_exclusive_count_by_group_matches_a_recount(data: tuple[np.ndarray, np.ndarray]) -> None:
    group, flag = data
    expected = [sum(1 for j in range(i) if group[j] == group[i] and flag[j]) for i in range(group.size)]
    assert _exclusive_count_by_group(group, flag).tolist() == expected


@st.composite
def offers(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    """Offers per (bucket, product): the list price is the same within a group, as in a replay."""
    n_products = draw(st.integers(1, 4))
    n = draw(st.integers(0, 40))
    bucket = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int64)
    product = np.array(draw(st.lists(st.integers(0, n_products - 1), min_size=n, max_size=n)), dtype=np.int64)
    price = np.array(draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n)), dtype=np.int64)
    list_prices = np.array(draw(st.lists(st.integers(1, 10_000), min_size=4 * n_products, max_size=4 * n_products)))
    ref = list_prices[bucket * n_products + product]
    return bucket, product, price, ref, np.int64(n_products)


@FAST
@given(offers())
def test_spread_matches_a_recount_per_group(data: tuple[np.ndarray, ...]) -> None:
    bucket, product, price, ref, n_products = data
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in range(price.size):
        groups[(int(bucket[i]), int(product[i]))].append(i)
    expected = [
        (max(price[rows]) - min(price[rows])) / ref[rows[0]] for _, rows in sorted(groups.items()) if len(rows) >= 2
    ]
    got = _spread(bucket, product, price, ref, int(n_products))
    assert got.shape == (len(expected),)
    assert np.allclose(got, expected, rtol=1e-12, atol=0)


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Every way to write ``total`` as ``parts`` whole numbers >= 0 in order (stars and bars)."""
    out = []
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        out.append(tuple(b - a - 1 for a, b in zip(edges, edges[1:])))
    return out


@FAST
@given(st.lists(st.integers(1, 20), min_size=1, max_size=5), st.integers(0, 15))
def test_largest_remainder_is_a_closest_apportionment(weights: list[int], total: int) -> None:
    """The counts sum to ``total`` and are as close to the exact quotas as any whole counts can be
    (least squares, the largest remainder method's optimum), found by trying every composition of ``total``."""
    quota = [Fraction(w * total, sum(weights)) for w in weights]

    def distance(counts: tuple[int, ...]) -> Fraction:
        return sum(((c - q) ** 2 for c, q in zip(counts, quota)), Fraction(0))

    best = min(distance(c) for c in _compositions(total, len(weights)))
    counts = _largest_remainder(np.array(weights, dtype=np.float64), total)
    assert counts.dtype == np.int64 and counts.sum() == total and (counts >= 0).all()
    assert distance(tuple(counts.tolist())) == best
