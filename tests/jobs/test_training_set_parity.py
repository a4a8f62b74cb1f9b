"""Online/offline parity: the vector the streaming job served for a request == the backfill's vector for it.

A simulated day (plus the crafted edge, tie, cold-start, anonymous and busy cases of the unit test) goes
through the real job on the MiniCluster and, as history files, through the Beam backfill. The allowance is
large enough that nothing is late for either (whether the live job calls an out-of-order event late
depends on when its sources emit watermarks; the backfill's deterministic rule is unit-tested). Every
served vector must equal the backfilled one to 1e-9 relative; the worst difference is printed. The priced
events, written out as a serving log, must give the same labels as the backfill (both by request_id).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jobs import pricing_job
from jobs import training_set as ts
from pricing.config import Settings
from pricing.jars import PROJECT_ROOT
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.features import FEATURE_SPEC
from pricing_udfs.serde import Contract
from tests.helpers import pseudonyms, read_topic
from tests.jobs.feature_reference import assert_affinity_exercised, produce_events
from tests.jobs.test_training_set import (
    HOUR, REL_TOL, read_rows, simulated_day, vectors, worst_relative, write_history_dir,
)  # fmt: skip

pytestmark = pytest.mark.integration

ALLOWANCE_MS = 3 * HOUR  # beyond the latest arrival in the data (the crafted late list price: 70 min)


def _main(*args: object) -> None:
    """``python -m jobs.training_set ARGS`` in a fresh process."""
    command = [sys.executable, "-m", "jobs.training_set", *map(str, args)]
    subprocess.run(command, check=True, cwd=PROJECT_ROOT, timeout=300)


def test_served_vectors_equal_backfilled_vectors(kafka_settings: Settings, tmp_path: Path) -> None:
    job = kafka_settings.job.model_copy(update={"bounded": True, "checkpoint_interval_ms": 1_000, "serving_mode": "event-time",
                                                "watermark_out_of_orderness_ms": ALLOWANCE_MS})  # fmt: skip
    settings = kafka_settings.model_copy(update={"job": job})
    create_topics(settings.kafka)
    frames = simulated_day(seed=3, n_users=150, n_products=6)
    produce_events(settings, frames)

    pricing_job.run(settings, wait=True)

    topics = settings.kafka.topics
    priced = [serde.decode(Contract.PRICED_EVENT, m.value()).record for m in read_topic(settings, topics.priced.name)]
    served = {}
    for rec in priced:
        assert rec["feature_spec_version"] == FEATURE_SPEC.version
        served[rec["request_id"]] = rec["features"]
    assert len(served) == len(priced), "each request priced once"
    letters = [serde.decode(Contract.DEAD_LETTER, m.value()).record
               for m in read_topic(settings, topics.dead_letters.name)]
    assert [d["error_kind"] for d in letters] == ["duplicate"], "nothing late; the crafted repeat is a duplicate"

    # The pipeline runs in its own process, as the CLI runs it: once a local PyFlink job has run here, its
    # Python worker has taken over Beam's ParDo handler in this process.
    history = write_history_dir(tmp_path / "history", frames)
    # The job's pseudonym key (it wrote it at start): the backfill's shoppers are the job's (pricing_udfs.privacy).
    privacy = ("--pseudonym_secrets_dir", settings.secrets_dir(), "--pseudonym_key_id", settings.privacy.pseudonym_key_id)
    _main("backfill", "--history", history, "--out", tmp_path / "backfill", "--allowance-ms", ALLOWANCE_MS,
          "--buckets", 4, *privacy)  # fmt: skip
    counts = json.loads((tmp_path / "backfill" / "_summary.json").read_text())["counts"]
    assert counts["behaviour_event_late"] == counts["market_event_late"] == 0
    rows = read_rows(tmp_path / "backfill")
    raw_users = set(frames[Contract.PRICE_REQUEST]["user_id"]) - {""}
    named = set(rows["user_id"]) - {""}
    assert named and not named & raw_users and named <= {pseudonyms(settings)(u) for u in raw_users}
    backfilled = vectors(rows)
    # the job prices every on-time request; the backfill every one whose offer it can see (all but one crafted)
    assert set(backfilled.index) == set(served) - {"edge-unseen"}
    got = pd.DataFrame.from_dict(served, orient="index", columns=FEATURE_SPEC.names)
    worst, where, bad = worst_relative(backfilled, got.loc[backfilled.index])
    print(f"\nserved vs backfilled: {len(backfilled)} requests x {len(FEATURE_SPEC.names)} features; "
          f"worst relative difference {worst:.3g} at {where}; {bad} beyond {REL_TOL}")  # fmt: skip
    assert bad == 0, f"{where}: backfilled {backfilled.loc[where]} vs served {got.loc[where]}"
    assert_affinity_exercised(backfilled)
    cold = got.loc["edge-r2"]
    assert cold["is_new_user"] == 1 and cold["is_new_product"] == 1 and got.loc["edge-r1", "is_new_user"] == 1

    # The serving log of the same day gives the served vectors and the backfill's labels.
    serde.write_container(tmp_path / "priced.avro", Contract.PRICED_EVENT, priced)
    behaviour = history / ts.HISTORY_FILES[Contract.BEHAVIOUR_EVENT]
    _main("serving", "--priced", tmp_path / "priced.avro", "--behaviour", behaviour, "--out", tmp_path / "serving",
          "--buckets", 4, *privacy)  # fmt: skip
    logged = read_rows(tmp_path / "serving").set_index("request_id")
    assert set(logged.index) == set(served)
    assert np.array_equal(np.vstack(logged.loc[got.index, "features"].to_numpy()), got.to_numpy())
    labels = rows.set_index("request_id")["label"]
    assert (logged.loc[labels.index, "label"] == labels).all() and labels.sum() > 0
