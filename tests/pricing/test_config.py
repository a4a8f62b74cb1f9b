from pathlib import Path

import pytest
from pydantic import ValidationError

from pricing.config import SecretsError, load_settings, prepare_job_secrets
from pricing_udfs.kafka_client import SECRET_FILES, KafkaSecretError


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


def test_secrets_do_not_leak_into_reprs_or_the_shipped_client(tmp_path: Path) -> None:
    s = load_settings(state_dir=tmp_path, kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                                 "sasl_username": "u", "sasl_password": "hunter2"})  # fmt: skip
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()
    assert s.kafka.client_config()["sasl.password"] == "hunter2"
    shipped = s.job_kafka_client()
    assert "hunter2" not in repr(shipped) and "hunter2" not in shipped.model_dump_json()
    jaas = shipped.java_properties()["sasl.jaas.config"]
    assert "hunter2" not in jaas and f'password="${{dir:{tmp_path.absolute() / "secrets"}:kafka.password}}"' in jaas


def test_secret_settings_left_unset_are_read_from_the_secrets_folder(tmp_path: Path) -> None:
    (tmp_path / "kafka.password").write_text("from-a-file")
    (tmp_path / "pseudonym.key").write_text("k" * 40)
    s = load_settings(secrets={"dir": str(tmp_path)}, kafka={"security_protocol": "SASL_SSL",
                      "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u"})  # fmt: skip
    assert s.kafka.sasl_password.get_secret_value() == "from-a-file"
    assert s.privacy.pseudonym_key.get_secret_value() == "k" * 40
    given = load_settings(secrets={"dir": str(tmp_path)}, kafka={"security_protocol": "SASL_SSL",
                          "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": "given"})  # fmt: skip
    assert given.kafka.sasl_password.get_secret_value() == "given"  # a setting wins over the file


@pytest.mark.parametrize(
    "kafka, fragment",
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism and sasl_username"),
        ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"}, "does not use SASL"),
        ({"ssl_ca_location": "ca.pem"}, "does not use TLS"),
        ({"security_protocol": "SSL", "ssl_keystore_location": "me.pem"}, "must be a PKCS12 file"),
    ],
)
def test_inconsistent_security_settings_fail_at_start(kafka: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        load_settings(kafka=kafka)


@pytest.mark.parametrize(
    "kafka, needed",
    [
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "sasl_password"),
        ({"security_protocol": "SSL", "ssl_ca_location": "ca.p12"}, "ssl_ca_password"),
        ({"security_protocol": "SSL", "ssl_keystore_location": "me.p12"}, "ssl_keystore_password"),
    ],
)
def test_a_secret_the_settings_need_and_do_not_have_is_named_when_a_client_or_the_job_needs_it(
    kafka: dict, needed: str, tmp_path: Path
) -> None:
    """The settings load without it (in Kubernetes the job's secret files are only mounted in the pods)."""
    s = load_settings(state_dir=tmp_path, kafka=kafka)
    with pytest.raises(KafkaSecretError, match=needed):
        s.kafka.client_config()
    with pytest.raises(KafkaSecretError, match=needed):
        prepare_job_secrets(s)
    mounted = load_settings(state_dir=tmp_path, kafka=kafka, secrets={"dir": str(tmp_path / "mounted")})
    with pytest.raises(SecretsError, match=SECRET_FILES[needed]):
        prepare_job_secrets(mounted)
