"""How the job's Kafka clients connect, without a secret in it: what may travel inside the job.

A :class:`KafkaClient` is shipped to the task managers (inside the Python functions' configuration) and
written into the Kafka connector's table options (the SQL text). It holds the bootstrap servers, the
security protocol, the SASL mechanism and user name and the paths of the TLS stores, never a password:
secrets are files in ``secrets_dir`` (:data:`SECRET_FILES`), read by each client when it connects:

- **librdkafka** (confluent-kafka: the workers' anchor rebuild and topic tails): :meth:`KafkaClient.config`
  reads the files and returns the client settings.
- **the Flink Kafka connector** (Java): :meth:`KafkaClient.java_properties` names the files through
  Kafka's ``DirectoryConfigProvider`` (``${dir:<secrets_dir>:kafka.password}``), which the Kafka client
  resolves in the task manager. The password is never in the SQL text, the job graph, the printed plan or a
  logged configuration. The connector relocates the Kafka client under :data:`CONNECTOR_KAFKA_PACKAGE`, so
  the JAAS login module and the config provider are named there ("No LoginModule found" otherwise).

A secret file holds the value exactly (no trailing newline): both clients read it byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# Where flink-sql-connector-kafka relocates the Kafka client (its classes, JAAS login modules included).
CONNECTOR_KAFKA_PACKAGE = "org.apache.flink.kafka.shaded.org.apache.kafka"
# The secret file of each secret setting, in the secrets directory ([secrets] dir).
SECRET_FILES = {
    "sasl_password": "kafka.password",
    "ssl_ca_password": "kafka.ca.password",
    "ssl_keystore_password": "kafka.keystore.password",
}
_PKCS12 = (".p12", ".pfx")


class KafkaSecretError(ValueError):
    """A secret the client needs is not where the settings say; the message names the file, never a value."""


def is_pkcs12(path: str) -> bool:
    return path.lower().endswith(_PKCS12)


class KafkaClient(BaseModel):
    """See the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str = Field(min_length=1)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = Field(default=None, pattern=r'^[^"\\\s]+$')
    ssl_ca_location: str | None = None
    ssl_keystore_location: str | None = None
    ssl_endpoint_identification: bool = True
    secrets_dir: str | None = None  # the folder of the secret files (SECRET_FILES)

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaClient":
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and (self.sasl_mechanism is None or not self.sasl_username):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism and sasl_username "
                             "(and sasl_password)")  # fmt: skip
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism is set but security_protocol {self.security_protocol} does not use SASL")
        if not tls and (self.ssl_ca_location or self.ssl_keystore_location):
            raise ValueError(f"TLS stores are set but security_protocol {self.security_protocol} does not use TLS")
        if self.ssl_keystore_location and not is_pkcs12(self.ssl_keystore_location):
            raise ValueError("ssl_keystore_location must be a PKCS12 file (.p12 or .pfx)")
        return self

    @property
    def secrets(self) -> frozenset[str]:
        """The secrets this configuration needs (names of :data:`SECRET_FILES`)."""
        needed = {"sasl_password"} if self.sasl_mechanism else set()
        if self.ssl_ca_location and is_pkcs12(self.ssl_ca_location):
            needed.add("ssl_ca_password")
        if self.ssl_keystore_location:
            needed.add("ssl_keystore_password")
        return frozenset(needed)

    # ------------------------------------------------------------------ librdkafka
    def secret_file(self, name: str) -> Path:
        if self.secrets_dir is None:
            raise KafkaSecretError(f"the Kafka settings need {name}, and no secrets folder is given to read it from")
        return Path(self.secrets_dir) / SECRET_FILES[name]

    def read_secret(self, name: str, given: Mapping[str, str] | None = None) -> str:
        if given is not None:
            if name not in given:
                raise KafkaSecretError(f"the Kafka settings need {name} (a setting, PRICING_KAFKA__{name.upper()}, or "
                                       f"the file {SECRET_FILES[name]} in [secrets] dir)")  # fmt: skip
            return given[name]
        path = self.secret_file(name)
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KafkaSecretError(f"cannot read the Kafka secret {name} from {path}: {exc.strerror}") from None

    def config(self, secrets: Mapping[str, str] | None = None) -> dict[str, str]:
        """librdkafka (confluent-kafka) settings; reads the secret files now (or takes the values from
        ``secrets``, by setting name: the control plane, which has them in its settings)."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf |= {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username or "",
                     "sasl.password": self.read_secret("sasl_password", secrets)}  # fmt: skip
        if self.security_protocol.endswith("SSL"):
            conf["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_endpoint_identification else "none"
            if self.ssl_ca_location and is_pkcs12(self.ssl_ca_location):
                conf["ssl.ca.pem"] = pkcs12_certificates_pem(Path(self.ssl_ca_location), self.read_secret("ssl_ca_password", secrets))
            elif self.ssl_ca_location:
                conf["ssl.ca.location"] = self.ssl_ca_location
            if self.ssl_keystore_location:
                conf |= {"ssl.keystore.location": self.ssl_keystore_location,
                         "ssl.keystore.password": self.read_secret("ssl_keystore_password", secrets)}  # fmt: skip
        return conf

    # ------------------------------------------------------------------ Java (the Flink connector)
    def java_properties(self, package: str = CONNECTOR_KAFKA_PACKAGE) -> dict[str, str]:
        """The Java client's properties, secrets as ``${dir:...}`` references resolved in the task manager.
        ``package``: where the Kafka client's classes are (the connector's relocation; ``org.apache.kafka`` for
        a plain Java client)."""
        props = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol}
        if self.secrets:
            props |= {"config.providers": "dir",
                      "config.providers.dir.class": f"{package}.common.config.provider.DirectoryConfigProvider",
                      "config.providers.dir.param.allowed.paths": self.secrets_dir or ""}  # fmt: skip
        if self.sasl_mechanism:
            module = package + (".common.security.plain.PlainLoginModule" if self.sasl_mechanism == "PLAIN"
                                else ".common.security.scram.ScramLoginModule")  # fmt: skip
            props |= {"sasl.mechanism": self.sasl_mechanism,
                      "sasl.jaas.config": f'{module} required username="{self.sasl_username}" '
                                          f'password="{self._ref("sasl_password")}";'}  # fmt: skip
        if self.security_protocol.endswith("SSL"):
            props["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_endpoint_identification else ""
            if self.ssl_ca_location:
                pkcs12 = is_pkcs12(self.ssl_ca_location)
                props |= {"ssl.truststore.type": "PKCS12" if pkcs12 else "PEM",
                          "ssl.truststore.location": self.ssl_ca_location}  # fmt: skip
                if pkcs12:
                    props["ssl.truststore.password"] = self._ref("ssl_ca_password")
            if self.ssl_keystore_location:
                props |= {"ssl.keystore.type": "PKCS12", "ssl.keystore.location": self.ssl_keystore_location,
                          "ssl.keystore.password": self._ref("ssl_keystore_password")}  # fmt: skip
        return props

    def _ref(self, name: str) -> str:
        return "${dir:%s:%s}" % (self.secrets_dir, SECRET_FILES[name])


def pkcs12_certificates_pem(path: Path, password: str) -> str:
    """The certificates of a PKCS12 store (a Java truststore, Strimzi's ``ca.p12``) as PEM, for librdkafka,
    which reads CA certificates as PEM only."""
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

    try:
        store = pkcs12.load_pkcs12(path.read_bytes(), password.encode())
    except (OSError, ValueError) as exc:
        raise KafkaSecretError(f"cannot read the PKCS12 truststore {path}: {exc}") from None
    certs = [c.certificate for c in store.additional_certs] + ([store.cert.certificate] if store.cert else [])
    if not certs:
        raise KafkaSecretError(f"the PKCS12 truststore {path} holds no certificate")
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)
