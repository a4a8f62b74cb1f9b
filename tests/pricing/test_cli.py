"""The ``pricing job run`` flags become job settings (the job itself is replaced: no cluster here)."""

from __future__ import annotations

from typing import Any

import pytest

from pricing import cli
from pricing.config import Settings, load_settings


def test_job_run_flags_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(settings: Settings, *, jobmanager: str | None = None, wait: bool = True) -> None:
        seen.update(settings=settings, jobmanager=jobmanager)

    monkeypatch.setattr("jobs.pricing_job.run", fake_run)
    args = cli._parser().parse_args(["job", "run", "--bounded", "--at-least-once", "--restore-from", "file:///sp/1"])
    assert args.func(args, load_settings()) == 0
    job = seen["settings"].job
    assert (job.bounded, job.delivery_guarantee, job.restore_from) == (True, "at-least-once", "file:///sp/1")

    args = cli._parser().parse_args(["job", "run"])
    args.func(args, load_settings())
    job = seen["settings"].job
    assert (job.bounded, job.delivery_guarantee, job.restore_from, job.start) == (False, "exactly-once", None, "resume")

    args = cli._parser().parse_args(["job", "run", "--fresh"])
    args.func(args, load_settings())
    assert seen["settings"].job.start == "fresh"
