"""The job's plan, as Flink builds its stream graph (needs the connector jars, no broker): each record is
decoded once, and no decoder sees a watermark status."""

from __future__ import annotations

import json
import re

import pytest

from jobs import pricing_job
from pricing.config import Settings

pytestmark = pytest.mark.integration

DECODERS = ("decode_price_request(", "decode_market_event(", "decode_behaviour_event(", "decode_catalogue_entry(",
            "decode_recommend_request(")


def _stream_graph(settings: Settings) -> list[str]:
    """The contents of every node of the job's stream graph, in order."""
    t_env = pricing_job.create_table_env(settings)
    pricing_job.build(t_env, settings).attach_as_datastream()
    return [node["contents"] for node in json.loads(t_env._j_tenv.execEnv().getExecutionPlan())["nodes"]]


@pytest.mark.parametrize("mode", ["arrival", "event-time"])
def test_each_input_is_decoded_by_one_operator_between_the_idle_marker_operators(
    kafka_settings: Settings, mode: str
) -> None:
    """The priced and the dead-letter branch read the same decoded stream (were the decoder split in two,
    every record would be decoded twice); the idle status crosses each decoder as a marker row
    (``jobs.pricing_job._idle_from_markers``)."""
    settings = kafka_settings.model_copy(update={"job": kafka_settings.job.model_copy(update={"serving_mode": mode})})
    nodes = _stream_graph(settings)
    for decoder in DECODERS:
        at = [i for i, contents in enumerate(nodes) if decoder in contents]
        assert len(at) == 1, f"{decoder} is in {len(at)} operators:\n" + "\n".join(nodes)
        before = [c for c in nodes[: at[0]] if c.startswith("idle status")]
        after = [c for c in nodes[at[0] + 1:] if c.startswith("idle status")]
        assert before[-1:] == ["idle status to marker rows"] and after[:1] == ["idle status from marker rows"], nodes
    assert sum(c.startswith("idle status") for c in nodes) == 2 * len(DECODERS)
    # The feature stages (jobs/features.py): the user stage once (it counts per product and per category too: no
    # stage keyed by a pair, whose keys would stay until the state TTL). In event-time mode
    # Flink plans the product stage a second time for the anonymous requests' branch (no sub-plan reuse there;
    # it did before features/3 too); arrival mode's gate keeps it to one.
    stages = sorted(re.search(r"OverAggregate\(partitionBy=\[([^\]]*)\]", c).group(1)
                    for c in nodes if "OverAggregate(" in c and "select=[src, " in c)  # fmt: skip
    products = 1 if mode == "arrival" else 2
    assert stages == ["product_id"] * products + ["user_id"], stages
