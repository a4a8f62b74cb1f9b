"""The engine against a secured broker: TLS, SCRAM logins and ACLs (the local broker's secure mode).

Each side runs as its own least-privilege principal (``pricing.acls``): an administrator creates the topics,
the storefront (the simulator CLI) publishes a day of history, the job prices it exactly-once (transactions,
so the transactional-id ACL is exercised) and the trainer reads the answers. A principal without rights, a
wrong password and a wrong CA get one line each, and no secret appears in the SQL, the plan or the logs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import pyflink
from jobs import pricing_job
from pricing.acls import JOB, STOREFRONT, TRAINER, TRAINER_GROUP_PREFIX, apply_acls, principal_acls
from pricing.broker import LocalBroker
from pricing.config import Settings, load_settings
from pricing.local_security import ADMIN, ensure_security
from pricing.topics import create_topics
from pricing_udfs import serde
from pricing_udfs.serde import Contract
from tests.helpers import PricedReader, command_env, read_topic, write_config_file

pytestmark = pytest.mark.integration


def _as(base: Settings, broker: LocalBroker, user: str, **kafka: object) -> Settings:
    assert broker.security is not None
    conf = broker.security.kafka_settings(user, broker.bootstrap) | {"topics": base.kafka.topics.model_dump()} | kafka
    return base.model_copy(update={"kafka": load_settings(kafka=conf).kafka})


def _pricing(config: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    env = command_env() | ({"PRICING_KAFKA__SASL_PASSWORD": password} if password else {})
    return subprocess.run([sys.executable, "-m", "pricing.cli", "--config", str(config), *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _secure_config(settings: Settings, path: Path, *, user: str, ca: Path) -> Path:
    """The settings as a user's TOML file: the password is not in it (it comes from the environment)."""
    text = write_config_file(settings, path, job=["restart_attempts = 0"]).read_text()
    text = text.replace("[kafka]\n", f'[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
                                     f'sasl_username = "{user}"\nssl_ca_location = "{ca}"\n')  # fmt: skip
    path.write_text(text)
    return path


def test_every_principal_does_its_part_on_a_secured_broker_and_nothing_more(
    secure_broker: LocalBroker, kafka_settings: Settings, tmp_path: Path
) -> None:
    security = secure_broker.security
    assert security is not None
    admin = _as(kafka_settings, secure_broker, ADMIN)
    create_topics(admin.kafka)
    apply_acls(security.admin_config(secure_broker.bootstrap), principal_acls(kafka_settings))
    topics = kafka_settings.kafka.topics
    ca = security.ca_pem

    # The storefront's simulator publishes a day of history through the CLI, its password from the environment.
    store = _as(kafka_settings, secure_broker, STOREFRONT)
    store_cfg = _secure_config(store, tmp_path / "storefront.toml", user=STOREFRONT, ca=ca)
    sim = _pricing(store_cfg, "simulate", "history", "--days", "1", "--to-kafka", "--users", "40", "--products", "8",
                   "--seed", "5", password=security.passwords[STOREFRONT])  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-2000:]
    trainer = _as(kafka_settings, secure_broker, TRAINER)
    requests = [serde.decode(Contract.PRICE_REQUEST, m.value()).record for m in read_topic(trainer, topics.requests.name, group_prefix=TRAINER_GROUP_PREFIX)]
    assert len(requests) > 50

    # The job, as its principal, PKCS12 truststore, exactly-once; its secrets go to files, not into the SQL.
    job = _as(kafka_settings, secure_broker, JOB, ssl_ca_location=str(security.truststore),
              ssl_ca_password=security.store_password)  # fmt: skip
    job = job.model_copy(update={"job": job.job.model_copy(update={"checkpoint_interval_ms": 1_000})})
    secrets = {security.passwords[JOB], security.store_password}
    log_dir = Path(pyflink.__file__).parent / "log"
    reader = PricedReader(trainer, group_prefix=TRAINER_GROUP_PREFIX)
    reader.start()
    result = pricing_job.run(job, wait=False)
    wanted = {r["request_id"] for r in requests}
    try:
        deadline = time.monotonic() + 180
        while not wanted <= set(reader.ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # room for a duplicate to show
    finally:
        result.get_job_client().cancel().result()
        reader.stop()
        reader.join(10)
    assert len(reader.ids) == len(set(reader.ids)) and set(reader.ids) == wanted
    secret_dir = job.secrets_dir()
    assert sorted(p.name for p in secret_dir.iterdir()) == ["kafka.ca.password", "kafka.password", "pseudonym.key"]
    assert {oct(p.stat().st_mode & 0o777) for p in secret_dir.iterdir()} == {"0o600"}

    # No secret in what the job printed, planned or logged.
    plan_env = pricing_job.create_table_env(job)
    plan = pricing_job.build(plan_env, job).explain()
    ddl = pricing_job._source_ddl(job, table="t", topic="x") + pricing_job._sink_ddl(job, table="s", topic="y",
                                                                                     id_suffix="z")  # fmt: skip
    # the whole log: a new gateway truncates it, and what earlier tests wrote cannot hold this broker's passwords
    logged = "".join(f.read_bytes().decode(errors="replace") for f in log_dir.glob("*.log"))
    assert "${dir:" in ddl and "kafka.password" in ddl
    for secret in secrets:
        assert secret not in ddl and secret not in plan and secret not in logged

    # Least privilege: the storefront may not start the job (it cannot see the dead letters): one line, no trace.
    store_job = _pricing(store_cfg, "job", "run", password=security.passwords[STOREFRONT])
    assert store_job.returncode == 1
    assert "TOPIC_AUTHORIZATION_FAILED" in store_job.stderr and topics.dead_letters.name in store_job.stderr
    errors = [line for line in store_job.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in store_job.stderr and len(errors) == 1 and errors[0].startswith("pricing: error:"), errors
    # A wrong password, and a CA that did not sign the broker's certificate: refused, one line each.
    wrong_pw = _pricing(store_cfg, "topics", "create", password="not-the-password")
    assert wrong_pw.returncode == 1 and "refused the login" in wrong_pw.stderr and "Traceback" not in wrong_pw.stderr
    other_ca = ensure_security(tmp_path / "other-ca", "127.0.0.1").ca_pem
    wrong_ca = _pricing(_secure_config(store, tmp_path / "wrong-ca.toml", user=STOREFRONT, ca=other_ca),
                        "topics", "create", password=security.passwords[STOREFRONT])  # fmt: skip
    assert wrong_ca.returncode == 1 and "certificate verify failed" in wrong_ca.stderr, wrong_ca.stderr
    assert "Traceback" not in wrong_ca.stderr
