"""Shared fixtures. Integration tests share one real KRaft broker per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pricing.broker import LocalBroker, free_port
from pricing.config import Settings, TopicsSettings, load_settings
from pricing.jars import PROJECT_ROOT, JarsMissingError, flink_jars, kafka_classpath

JARS_STATE_DIR = PROJECT_ROOT / ".pricing"


@pytest.fixture(scope="session")
def broker_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh state folder whose ``jars`` link to the project's fetched jars (skips without them)."""
    try:
        flink_jars(JARS_STATE_DIR)
        kafka_classpath(JARS_STATE_DIR)
    except JarsMissingError as exc:
        pytest.skip(f"integration tests need the JVM jars; `make test` fetches them first ({exc})")
    state = tmp_path_factory.mktemp("pricing-state")
    (state / "jars").symlink_to(JARS_STATE_DIR / "jars", target_is_directory=True)
    return state


@pytest.fixture(scope="session")
def kafka_broker(broker_state_dir: Path) -> Iterator[LocalBroker]:
    broker = LocalBroker(state_dir=broker_state_dir, port=free_port(), die_with_parent=True)
    broker.start(fresh=True, timeout_s=90)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secure_broker(broker_state_dir: Path) -> Iterator[LocalBroker]:
    """A second broker in secure mode (SASL_SSL, SCRAM users, ACLs required): ``.security`` has its CA and users."""
    broker = LocalBroker(state_dir=broker_state_dir, port=free_port(), die_with_parent=True, name="kafka-secure",
                         secure=True)  # fmt: skip
    broker.start(fresh=True, timeout_s=90)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names and groups, so tests never share data."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def kafka_settings(kafka_broker: LocalBroker, broker_state_dir: Path, unique: str) -> Settings:
    """Settings pointing at the session broker, with topics private to this test."""
    topics = {
        key: {"name": f"{topic['name']}-{unique}", "partitions": topic["partitions"]}
        for key, topic in TopicsSettings().model_dump().items()
    }
    return load_settings(
        state_dir=broker_state_dir,
        kafka={"bootstrap_servers": kafka_broker.bootstrap, "topics": topics},
        job={
            "consumer_group": f"pricing-test-{unique}",
            "transactional_id_prefix": f"pricing-test-{unique}",
            "restart_attempts": 0,  # a bug fails the test at once instead of restarting until the timeout
        },
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests without services first, then the integration tests.

    Fast feedback first, and a process that has run a local PyFlink job cannot run a Beam
    pipeline any more (PyFlink's worker takes over Beam's ParDo handler), so the in-process
    Beam tests must come before the first Flink job.
    """
    items.sort(key=lambda item: item.get_closest_marker("integration") is not None)
