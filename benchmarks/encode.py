"""PricedEvent encoding per request: the columnar encoder against the former row-by-row one, on the same batches.

    .venv/bin/python -m benchmarks.encode [--batch 1000] [--seconds 5]

Batches of ``--batch`` requests with realistic decisions (the job's ``ModelPolicy`` on a fake demand model, the
spec's features, unicode-free ids), encoded in turn by ``udfs.encode_priced_events`` (columnar, ``avro_columns``)
and by the reference that builds a dict and calls ``serde.encode`` per request (the encoder before, kept in the
tests). Both outputs are compared byte for byte first. Reported: µs per request, best of the interleaved rounds,
and the ratio; one run on a noisy machine, so read the ratio.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date

import numpy as np
import pandas as pd

from pricing_udfs import udfs
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.model.handler import FakeDemandModel
from pricing_udfs.policy import ModelPolicy, PolicySettings, check_decisions
from tests.pricing_udfs.test_udfs import _encode_row_by_row


def _batch(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    policy = ModelPolicy.create(FakeDemandModel(), "v20261205T000000Z-bench", PolicySettings(), default_price_minor=999,
                                currency="EUR")  # fmt: skip
    vectors = []
    for _ in range(n):
        price = float(rng.integers(500, 5_000))
        vectors.append(FEATURE_SPEC.vector({"list_price_minor": price, "unit_cost_minor": price * rng.uniform(0.4, 0.7),
                                            "views_1h": float(rng.integers(0, 50))}))  # fmt: skip
    batch = udfs.request_batch({
        "request_id": pd.Series([f"r{seed}-{i:07d}" for i in range(n)]),
        "user_id": pd.Series([f"k1:{rng.integers(0, 2**60):016x}" for _ in range(n)]),
        "product_id": pd.Series([f"p{rng.integers(0, 2_000)}" for _ in range(n)]), "channel": pd.Series(["web"] * n),
        "event_time": pd.Series([1_796_400_000_000 + i for i in range(n)]), "list_currency": pd.Series(["EUR"] * n),
    }, pd.Series(vectors), spec=FEATURE_SPEC)  # fmt: skip
    decisions, _ = check_decisions(policy, batch, policy.decide(batch))
    return batch, decisions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per encoder")
    args = parser.parse_args(argv)
    batch, decisions = _batch(args.batch, seed=1)
    encoders = {
        "row by row (before)": lambda: _encode_row_by_row(batch, decisions, priced_time_ms=1_796_400_000_500),
        "columnar": lambda: udfs.encode_priced_events(batch, decisions, spec=FEATURE_SPEC, priced_time_ms=1_796_400_000_500),
    }
    if list(encoders["columnar"]()) != encoders["row by row (before)"]():
        raise SystemExit("the encoders disagree")
    best = {name: float("inf") for name in encoders}
    deadline = time.monotonic() + args.seconds * len(encoders)
    while time.monotonic() < deadline:  # interleaved rounds: both see the same machine
        for name, encode in encoders.items():
            t = time.perf_counter()
            encode()
            best[name] = min(best[name], (time.perf_counter() - t) / args.batch * 1e6)
    before, after = best["row by row (before)"], best["columnar"]
    print(f"PricedEvent encoding, {date.today().isoformat()}, {platform.machine()}, batches of {args.batch:,} "
          f"({len(FEATURE_SPEC.names)} features): row by row {before:.1f} µs per request, columnar {after:.1f} µs; "
          f"{before / after:.1f}x faster")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
