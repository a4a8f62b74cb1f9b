"""Shared fixtures for the simulator tests: small versions of the named scenarios, so every test is fast."""

from __future__ import annotations

import pytest

from pricing.sim.history import History, generate_history
from pricing.sim.scenario import Scenario, get_scenario

SMALL = {"n_users": 3_000, "n_products": 200}


@pytest.fixture(scope="session")
def small_default() -> Scenario:
    """The ``default`` scenario with fewer users and products (same dynamics and demand)."""
    return get_scenario("default").with_overrides(**SMALL)


@pytest.fixture(scope="session")
def week_history(small_default: Scenario) -> History:
    """Seven days of logs of the small default scenario (about 200k events)."""
    return generate_history(small_default, days=7)
