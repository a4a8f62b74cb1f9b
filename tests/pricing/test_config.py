from pathlib import Path

import pytest
from pydantic import ValidationError

from pricing.config import load_settings


def test_defaults_run_on_this_machine() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.job.delivery_guarantee == "exactly-once"
    assert [t.name for t in s.kafka.topics.all()] == [
        "behaviour-events", "market-events", "price-requests", "priced-events", "dead-letters",
        "recommend-requests", "recommendations", "catalogue",
    ]
    assert [t.name for t in s.kafka.topics.all() if t.cleanup_policy == "compact"] == ["catalogue"]


def test_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "pricing.toml"
    cfg.write_text('[job]\nparallelism = 3\ncheckpoint_interval_ms = 7000\n[kafka]\nbootstrap_servers = "k:1"\n')
    monkeypatch.setenv("PRICING_JOB__PARALLELISM", "5")
    s = load_settings(cfg)
    assert s.job.parallelism == 5  # environment wins over the file
    assert s.job.checkpoint_interval_ms == 7000  # the file wins over defaults
    assert s.kafka.bootstrap_servers == "k:1"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"job": {"paralelism": 2}}, "paralelism"),
        ({"job": {"delivery_guarantee": "at-most-once"}}, "exactly-once"),
        ({"job": {"transaction_timeout_ms": 3_600_000}}, "transaction.max.timeout.ms"),
        ({"job": {"checkpoint_interval_ms": 400_000}}, "2 * checkpoint_interval_ms"),
        ({"job": {"currency": "euro"}}, "currency"),
        ({"kafka": {"topics": {"priced": {"name": "price-requests"}}}}, "distinct"),
        ({"kafka": {"topics": {"priced": {"name": "bad topic!"}}}}, "pattern"),
        ({"job": {"metrics_port": "http:9249"}}, "metrics_port"),
    ],
)
def test_invalid_settings_fail_with_the_field_named(overrides: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_settings(**overrides)
    assert fragment in str(err.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_secrets_do_not_leak_into_reprs() -> None:
    s = load_settings(kafka={"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "hunter2"})
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()
    assert s.kafka.client_config()["sasl.password"] == "hunter2"
    assert 'password="hunter2"' in s.kafka.java_client_properties()["sasl.jaas.config"]
