"""TLS certificates and SCRAM users for the local broker's secure mode (``pricing kafka start --secure``).

Made once per broker folder with the JDK's ``keytool`` (the broker needs the JDK anyway) and kept there:

- ``ca.p12`` / ``ca.crt``: a private certificate authority (PKCS12 with its key; its certificate as PEM);
- ``truststore.p12``: the CA certificate as a PKCS12 truststore (for clients that want one);
- ``broker.p12``: the broker's key and certificate, signed by the CA, naming the broker's host;
- ``users.json`` (mode 0600): the SCRAM users (``admin``, the super user the broker itself uses, and the
  principals of :mod:`pricing.acls`) with random passwords, and the stores' password.

This is for tests and local work: the CA's key lies beside the certificates. Production brokers get their
certificates and users from the platform (Strimzi: the cluster CA and KafkaUsers, k8s/base).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pricing.acls import ARCHIVE, JOB, STOREFRONT, TRAINER

ADMIN = "admin"
USERS = (ADMIN, JOB, STOREFRONT, ARCHIVE, TRAINER)
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_VALIDITY_DAYS = "3650"


class SecurityMaterialError(RuntimeError):
    """keytool failed; the message has its output."""


@dataclass(frozen=True)
class LocalSecurity:
    folder: Path
    store_password: str
    passwords: dict[str, str]

    @property
    def ca_pem(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def truststore(self) -> Path:
        return self.folder / "truststore.p12"

    @property
    def broker_keystore(self) -> Path:
        return self.folder / "broker.p12"

    def kafka_settings(self, user: str, bootstrap: str, *, mechanism: str = "SCRAM-SHA-512",
                       pkcs12: bool = False) -> dict[str, Any]:  # fmt: skip
        """``[kafka]`` settings (a dict for ``load_settings(kafka=...)``) for ``user`` on this broker."""
        conf: dict[str, Any] = {"bootstrap_servers": bootstrap, "security_protocol": "SASL_SSL",
                                "sasl_mechanism": mechanism, "sasl_username": user, "sasl_password": self.passwords[user]}
        if pkcs12:
            conf |= {"ssl_ca_location": str(self.truststore), "ssl_ca_password": self.store_password}
        else:
            conf["ssl_ca_location"] = str(self.ca_pem)
        return conf

    def admin_config(self, bootstrap: str) -> dict[str, str]:
        """librdkafka settings of the super user."""
        return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": ADMIN, "sasl.password": self.passwords[ADMIN], "ssl.ca.location": str(self.ca_pem)}

    def scram_format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that create every user's SCRAM credentials."""
        return [f"--add-scram={m}=[name={u},password={p}]" for u, p in self.passwords.items() for m in MECHANISMS]


def ensure_security(folder: Path, host: str, *, keytool: str = "keytool") -> LocalSecurity:
    """The material in ``folder``, made now if it is not there yet (idempotent)."""
    users_file = folder / "users.json"
    if users_file.is_file() and (folder / "broker.p12").is_file():
        data = json.loads(users_file.read_text())
        return LocalSecurity(folder=folder, store_password=data["store_password"], passwords=data["passwords"])
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for stale in folder.iterdir():
        stale.unlink()
    store = secrets.token_hex(16)
    passwords = {user: secrets.token_hex(16) for user in USERS}

    def kt(*args: str) -> None:
        done = subprocess.run([keytool, *args], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise SecurityMaterialError(f"keytool {args[0]} failed: {done.stdout}{done.stderr}")

    try:
        ipaddress.ip_address(host)
        san = f"SAN=ip:{host},dns:localhost"
    except ValueError:
        san = f"SAN=dns:{host},dns:localhost,ip:127.0.0.1"
    pw = ["-storepass", store, "-keypass", store]
    key = ["-keyalg", "EC", "-groupname", "secp256r1", "-validity", _VALIDITY_DAYS, "-storetype", "PKCS12"]
    kt("-genkeypair", "-alias", "ca", "-dname", "CN=pricing local CA", "-ext", "bc:c=ca:true", *key,
       "-keystore", "ca.p12", *pw)  # fmt: skip
    kt("-exportcert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", "-storepass", store, "-file", "ca.crt")
    kt("-genkeypair", "-alias", "broker", "-dname", f"CN={host}", *key, "-keystore", "broker.p12", *pw)
    kt("-certreq", "-alias", "broker", "-keystore", "broker.p12", "-storepass", store, "-file", "broker.csr")
    kt("-gencert", "-alias", "ca", "-keystore", "ca.p12", "-storepass", store, "-infile", "broker.csr",
       "-outfile", "broker.crt", "-rfc", "-validity", _VALIDITY_DAYS, "-ext", san,
       "-ext", "ExtendedKeyUsage=serverAuth,clientAuth")  # fmt: skip
    kt("-importcert", "-alias", "ca", "-file", "ca.crt", "-keystore", "broker.p12", "-storepass", store, "-noprompt")
    kt("-importcert", "-alias", "broker", "-file", "broker.crt", "-keystore", "broker.p12", "-storepass", store,
       "-noprompt")  # fmt: skip
    kt("-importcert", "-alias", "ca", "-file", "ca.crt", "-keystore", "truststore.p12", "-storetype", "PKCS12",
       "-storepass", store, "-noprompt")  # fmt: skip
    fd = os.open(users_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"store_password": store, "passwords": passwords}, f, indent=1)
    return LocalSecurity(folder=folder, store_password=store, passwords=passwords)


def broker_properties(security: LocalSecurity, *, host: str, port: int, controller_port: int) -> list[str]:
    """The secure listener's part of ``server.properties``: SASL_SSL (SCRAM) for clients and the broker itself,
    SASL_PLAINTEXT (PLAIN, the admin only) on the loopback controller listener, the StandardAuthorizer with
    ``admin`` as the only super user and nothing allowed without an ACL."""
    admin = security.passwords[ADMIN]
    return [
        f"listeners=SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}",
        f"advertised.listeners=SASL_SSL://{host}:{port}",
        "inter.broker.listener.name=SASL_SSL",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms=" + ",".join(MECHANISMS),
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
        f'required username="{ADMIN}" password="{admin}" user_{ADMIN}="{admin}";',
        *(f"listener.name.sasl_ssl.{m.lower()}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
          f'required username="{ADMIN}" password="{admin}";' for m in MECHANISMS),
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={security.broker_keystore}",
        f"ssl.keystore.password={security.store_password}",
        f"ssl.key.password={security.store_password}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={security.ca_pem}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{ADMIN}",
        "allow.everyone.if.no.acl.found=false",
    ]
