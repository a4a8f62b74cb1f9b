"""The job's plan, as Flink optimises it (needs the connector jars, no broker): each record is decoded once."""

from __future__ import annotations

import pytest

from jobs import pricing_job
from pricing.config import Settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["arrival", "event-time"])
def test_each_input_is_decoded_by_one_python_operator_shared_by_both_branches(kafka_settings: Settings, mode: str) -> None:
    """The priced and the dead-letter branch read the same decoded view; if they read different
    source columns the planner splits the Python decoder in two and every record is decoded twice."""
    settings = kafka_settings.model_copy(update={"job": kafka_settings.job.model_copy(update={"serving_mode": mode})})
    t_env = pricing_job.create_table_env(settings)
    plan = pricing_job.build(t_env, settings).explain()
    execution = plan.split("== Optimized Execution Plan ==")[1]
    for decoder in ("decode_price_request(", "decode_market_event(", "decode_behaviour_event("):
        assert execution.count(decoder) == 1, f"{decoder} appears {execution.count(decoder)} times:\n{execution}"
