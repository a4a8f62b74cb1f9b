"""A real single-node Apache Kafka broker (KRaft mode) run from the Maven jars.

Used by ``pricing kafka start|stop|status``, ``make demo`` and the test session
fixture. It is the real broker (``kafka.Kafka``), not a mock: transactions,
read_committed consumers and consumer groups behave as in production.

Guarantee: ``start`` returns only after the broker answers a metadata request;
``stop`` returns only after the process is gone (SIGTERM, then SIGKILL after a
grace period). Data lives in ``<state_dir>/kafka/data`` and survives a restart;
``start(fresh=True)`` wipes it. One broker per state folder: its pid file is the lock.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pricing.jars import kafka_classpath
from pricing.local_security import LocalSecurity, broker_properties, ensure_security

_MAIN = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.apache.name = org.apache.kafka
logger.apache.level = warn
"""


class BrokerError(RuntimeError):
    """The broker could not be started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str | None


class LocalBroker:
    """Manage one broker whose files live under ``state_dir/<name>`` (default ``kafka``)."""

    def __init__(
        self,
        *,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 9092,
        controller_port: int | None = None,
        heap: str = "512m",
        java: str = "java",
        name: str = "kafka",
        die_with_parent: bool = False,
        secure: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.home = state_dir / name
        self.host = host
        self.port = port
        self.controller_port = controller_port or port + 1
        self.heap = heap
        self.java = java
        # Tests, benchmarks and the demo own their broker: if they are killed, it goes too.
        # `pricing kafka start` leaves it running on purpose.
        self.die_with_parent = die_with_parent
        # Secure mode (pricing.local_security): a SASL_SSL listener with SCRAM users, the StandardAuthorizer and
        # no access without an ACL. ``security`` has the CA, the users and their passwords once started.
        self.secure = secure
        self.security: LocalSecurity | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def _pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def _addr_file(self) -> Path:
        return self.home / "bootstrap"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        if pid is None:
            return BrokerStatus(running=False, pid=None, bootstrap=None)
        addr = self._addr_file.read_text().strip() if self._addr_file.exists() else None
        return BrokerStatus(running=True, pid=pid, bootstrap=addr)

    def start(self, *, fresh: bool = False, timeout_s: float = 60.0) -> BrokerStatus:
        """Start the broker (no-op if already running here) and wait until it serves metadata."""
        current = self.status()
        if current.running:
            if current.bootstrap != self.bootstrap:
                raise BrokerError(
                    f"a broker from {self.home} already runs at {current.bootstrap} (pid {current.pid}); "
                    "stop it first with 'pricing kafka stop'"
                )
            if self.secure:
                self.security = ensure_security(self.home / "secure", self.host)
            return current
        for port in (self.port, self.controller_port):
            if not _port_free(self.host, port):
                raise BrokerError(
                    f"port {port} on {self.host} is already in use; choose another with --port "
                    "(the controller uses port+1)"
                )
        classpath = os.pathsep.join(str(j) for j in kafka_classpath(self.state_dir))
        data = self.home / "data"
        if fresh and self.home.exists():
            _rmtree(self.home)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        mode = "secure" if self.secure else "plaintext"
        mode_file = self.home / "mode"
        if (data / "meta.properties").exists() and (mode_file.read_text() if mode_file.exists() else "plaintext") != mode:
            raise BrokerError(f"{self.home} holds a {'plaintext' if self.secure else 'secure'} broker's data; start "
                              f"it {'without' if self.secure else 'with'} --secure, or wipe it with --fresh")  # fmt: skip
        mode_file.write_text(mode)
        if self.secure:
            self.security = ensure_security(self.home / "secure", self.host)
        props = self.home / "server.properties"
        props.write_text(self._properties(data))
        log4j = self.home / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self.log_file))
        jvm = [self.java, f"-Xmx{self.heap}", f"-Xms{self.heap}", f"-Dlog4j2.configurationFile={log4j}",
               "-Dkafka.logs.dir=" + str(self.home / "logs"), "-cp", classpath]
        if not (data / "meta.properties").exists():
            data.mkdir(parents=True, exist_ok=True)
            fmt = subprocess.run(
                [*jvm, _STORAGE_TOOL, "format", "--config", str(props), f"--cluster-id={_cluster_id()}",
                 "--ignore-formatted", *(self.security.scram_format_args() if self.security else [])],
                capture_output=True, text=True,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting the KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        out = open(self.home / "logs" / "stdout.log", "ab")
        proc = subprocess.Popen(
            [*jvm, _MAIN, str(props)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_set_parent_death_signal if self.die_with_parent else None,
        )
        out.close()
        self._pid_file.write_text(str(proc.pid))
        self._addr_file.write_text(self.bootstrap)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"the broker exited with code {proc.returncode}; see {self.home / 'logs'}:\n"
                    + _tail(self.home / "logs" / "stdout.log") + _tail(self.log_file)
                )
            if _answers_metadata(self.client_config()):
                return self.status()
            time.sleep(0.5)
        self.stop()
        raise BrokerError(f"the broker did not answer within {timeout_s:.0f}s; see {self.log_file}")

    def stop(self, *, grace_s: float = 20.0) -> bool:
        """Stop the broker; returns False if none was running. Leaves no process behind."""
        pid = self._running_pid()
        if pid is None:
            self._pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self._pid_file.unlink(missing_ok=True)
        self._addr_file.unlink(missing_ok=True)
        return True

    def client_config(self) -> dict[str, str]:
        """librdkafka settings with full rights: plain, or the super user's in secure mode."""
        if self.security is None and self.secure:
            self.security = ensure_security(self.home / "secure", self.host)
        return self.security.admin_config(self.bootstrap) if self.security else {"bootstrap.servers": self.bootstrap}

    def _running_pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) and _is_broker(pid) else None

    def _properties(self, data: Path) -> str:
        h, p, c = self.host, self.port, self.controller_port
        listeners = broker_properties(self.security, host=h, port=p, controller_port=c) if self.security else [
            f"listeners=PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
            f"advertised.listeners=PLAINTEXT://{h}:{p}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{h}:{c}",
            "controller.listener.names=CONTROLLER",
            *listeners,
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "transaction.max.timeout.ms=900000",
            "auto.create.topics.enable=false",
            # Kafka's default, stated: the largest record batch the broker takes (about 1 MiB of value).
            # Producers default to max.request.size 1 MiB; dead letters stay far below it (job.dead_letter_max_raw_bytes).
            "message.max.bytes=1048588",
            # Simulated histories carry old event times; time-based retention would delete them at once.
            "log.retention.ms=-1",
            "",
        ])


def _set_parent_death_signal() -> None:
    """Linux: SIGTERM the broker when the process that started it dies (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _cluster_id() -> str:
    """A random KRaft cluster id, as Kafka makes them: never starting with '-', which reads as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port with the next one free too (the controller's), for tests."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port < 65535 and _port_free(host, port) and _port_free(host, port + 1):
            return port
    raise BrokerError("found no pair of free ports")


def _answers_metadata(client_config: dict[str, str]) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({**client_config, "log_level": 0}).list_topics(timeout=2)
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    return bool(md.brokers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_broker(pid: int) -> bool:
    try:
        return _MAIN.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    except OSError:
        return ""


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
