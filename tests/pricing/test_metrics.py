"""Parsing the Prometheus text format of Flink's reporter (no cluster needed)."""

import pytest

from pricing import metrics
from pricing.metrics import parse_contract_counters, parse_stage_metrics

_SCRAPE = """\
# HELP flink_taskmanager_job_task_operator_contract_late_events late_events (scope: taskmanager_job_task_operator_contract)
# TYPE flink_taskmanager_job_task_operator_contract_late_events gauge
flink_taskmanager_job_task_operator_contract_late_events{contract="behaviour_event",job_id="j",subtask_index="0",} 1.0
flink_taskmanager_job_task_operator_contract_late_events{contract="behaviour_event",job_id="j",subtask_index="1",} 2.0
flink_taskmanager_job_task_operator_contract_rejected_records{contract="price_request",job_id="j",subtask_index="0",} 5.0
flink_taskmanager_job_task_operator_numRecordsIn{job_id="j",subtask_index="0",} 100.0
"""


def test_counters_are_summed_over_subtasks_by_contract() -> None:
    assert parse_contract_counters(_SCRAPE) == {
        "late_events": {"behaviour_event": 3},
        "rejected_records": {"price_request": 5},
    }


def test_a_counter_without_contract_label_is_an_error() -> None:
    with pytest.raises(ValueError, match="no contract label"):
        parse_contract_counters('flink_taskmanager_job_task_operator_contract_late_events{job_id="j",} 1.0\n')


def test_wait_for_counter_polls_until_the_total_or_the_timeout(monkeypatch) -> None:
    scrapes = iter([{}, {"late_events": {"price_request": 1}}, {"late_events": {"price_request": 1, "market_event": 1}}])
    monkeypatch.setattr(metrics, "contract_counters", lambda url: next(scrapes))
    monkeypatch.setattr(metrics.time, "sleep", lambda s: None)
    assert metrics.wait_for_counter("u", "late_events", total=2) == {"price_request": 1, "market_event": 1}

    monkeypatch.setattr(metrics, "contract_counters", lambda url: {"late_events": {"price_request": 1}})
    assert metrics.wait_for_counter("u", "late_events", total=2, timeout_s=0) == {"price_request": 1}


def test_stage_metrics_are_summed_over_subtasks_by_name() -> None:
    text = _SCRAPE + """\
flink_taskmanager_job_task_operator_pricing_requests_priced{job_id="j",subtask_index="0",} 7.0
flink_taskmanager_job_task_operator_pricing_requests_priced{job_id="j",subtask_index="1",} 5.0
flink_taskmanager_job_task_operator_pricing_model_loaded{job_id="j",subtask_index="0",} 1.0
"""
    assert parse_stage_metrics(text) == {"requests_priced": 12.0, "model_loaded": 1.0}
