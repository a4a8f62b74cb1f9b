"""Reading the job's own metrics back from Flink's Prometheus endpoint (``job.metrics_port``).

The job counts per input contract (``pricing_udfs.udfs``): ``late_events`` and
``rejected_records``. Flink's Prometheus reporter names them
``flink_taskmanager_job_task_operator_contract_<name>`` with a ``contract`` label. The
scoring stage reports in the group ``pricing`` (``flink_taskmanager_job_task_operator_pricing_<name>``).
"""

from __future__ import annotations

import re
import time
import urllib.request

_PREFIX = "flink_taskmanager_job_task_operator_contract_"
_STAGE_PREFIX = "flink_taskmanager_job_task_operator_pricing_"
_LINE = re.compile(r"^(?P<name>\w+)\{(?P<labels>.*)\} (?P<value>\S+)$")
_CONTRACT = re.compile(r'contract="([^"]+)"')


def contract_counters(url: str, *, timeout_s: float = 5.0) -> dict[str, dict[str, int]]:
    """``{counter: {contract: value}}`` scraped from a Prometheus endpoint such as ``http://host:9249/metrics``.

    Values of the same contract are summed over subtasks. A counter without a
    ``contract`` label is a reporter format we do not know: that is an error, not a zero.
    """
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse_contract_counters(response.read().decode())


def wait_for_counter(url: str, name: str, *, total: int, timeout_s: float = 30.0) -> dict[str, int]:
    """One counter by contract, polled until its values add up to ``total`` (or the timeout: the last scrape).

    Python UDF metrics reach the JVM when a bundle finishes, so they lag the records by a bundle.
    An unreachable endpoint raises ``OSError``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        counts = contract_counters(url).get(name, {})
        if sum(counts.values()) >= total or time.monotonic() >= deadline:
            return counts
        time.sleep(0.5)


def parse_contract_counters(text: str) -> dict[str, dict[str, int]]:
    counters: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or not match["name"].startswith(_PREFIX):
            continue
        contract = _CONTRACT.search(match["labels"])
        if contract is None:
            raise ValueError(f"{match['name']} has no contract label: {line}")
        by_contract = counters.setdefault(match["name"].removeprefix(_PREFIX), {})
        by_contract[contract[1]] = by_contract.get(contract[1], 0) + int(float(match["value"]))
    return counters


def stage_metrics(url: str, *, timeout_s: float = 5.0) -> dict[str, float]:
    """The scoring stage's counters and gauges (``pricing_udfs.udfs.STAGE_COUNTERS``, ``model_loaded``, ...)
    scraped from a Prometheus endpoint, each summed over subtasks. An unreachable endpoint raises ``OSError``."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse_stage_metrics(response.read().decode())


def parse_stage_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match["name"].startswith(_STAGE_PREFIX):
            name = match["name"].removeprefix(_STAGE_PREFIX)
            out[name] = out.get(name, 0.0) + float(match["value"])
    return out
