"""A standalone Flink session cluster on this machine: one JobManager and N TaskManagers.

Used by ``pricing cluster start|stop|status`` and the cluster integration test. Each
Flink process is its own process group, started from the Flink distribution inside the
apache-flink wheel (its ``bin/jobmanager.sh`` and ``bin/taskmanager.sh`` in the
foreground, so the process we start is the JVM itself), with:

* a generated configuration folder, ``<state_dir>/cluster/conf``: the distribution's
  ``conf/`` with our ``config.yaml`` (the wheel is never edited);
* a generated ``lib/`` (``FLINK_LIB_DIR``): the distribution's jars plus the Kafka
  connector and ``pricing-features.jar``, as a cluster image has them;
* this venv's Python for the Python workers (``python.executable``) and first on ``PATH``
  (the scripts call ``python``);
* logs in ``<state_dir>/cluster/log`` (``env.log.dir``), the scripts' pid files in
  ``<state_dir>/cluster/pid`` (``env.pid.dir``), scratch space in ``<state_dir>/cluster/tmp``;
* a default fixed-delay restart strategy (a job may set its own), and slots spread evenly
  over the TaskManagers, so a parallel job runs on all of them.

Guarantees: ``start`` returns once the REST API reports every TaskManager registered, and
is idempotent (it only starts what is missing, e.g. a TaskManager that died); ``stop``
returns once every process group it started is gone (SIGTERM, then SIGKILL). Our own pid
file, ``<state_dir>/cluster/processes.json``, is the lock: one cluster per state folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pricing.config import ClusterSettings
from pricing.jars import flink_distribution, flink_jars

_JOBMANAGER_MAIN = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
_TASKMANAGER_MAIN = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
# How each kind of process looks on its way to the JVM: jobmanager.sh execs flink-console.sh, which execs java.
_STAGES = {
    _JOBMANAGER_MAIN: (b"/jobmanager.sh\0", b"/flink-console.sh\0standalonesession\0", _JOBMANAGER_MAIN.encode()),
    _TASKMANAGER_MAIN: (b"/taskmanager.sh\0", b"/flink-console.sh\0taskexecutor\0", _TASKMANAGER_MAIN.encode()),
}
# What a process that ran PyFlink (a test session, a Python worker) leaves in its environment;
# the cluster's processes must not inherit it (it would point them at another Flink home or conf).
_INHERITED = ("FLINK_", "_FLINK_", "PYFLINK_", "PYTHON_LOOPBACK", "WORKER_ID", "PIPELINE_OPTIONS",
              "SEMI_PERSISTENT_DIRECTORY", "LOGGING_API_SERVICE_DESCRIPTOR", "CONTROL_API_SERVICE_DESCRIPTOR",
              "BOOT_LOG_DIR")


class ClusterError(RuntimeError):
    """The cluster could not be started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class ClusterStatus:
    jobmanager_pid: int | None
    taskmanager_pids: list[int] = field(default_factory=list)
    rest_url: str | None = None
    rest_answers: bool = False
    registered_taskmanagers: int = 0
    running_jobs: int = 0

    @property
    def running(self) -> bool:
        return self.jobmanager_pid is not None or bool(self.taskmanager_pids)

    def describe(self) -> str:
        if not self.running:
            return "not running"
        rest = (f"REST {self.rest_url} answers: {self.registered_taskmanagers} TaskManager(s) registered, "
                f"{self.running_jobs} job(s) running") if self.rest_answers else f"REST {self.rest_url} does not answer"
        return (f"JobManager pid {self.jobmanager_pid or '-'}, TaskManager pids "
                f"{', '.join(map(str, self.taskmanager_pids)) or '-'}; {rest}")


class LocalCluster:
    """Manage one session cluster whose files live under ``state_dir/cluster``."""

    def __init__(
        self,
        *,
        state_dir: Path,
        settings: ClusterSettings | None = None,
        python: str | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.settings = settings or ClusterSettings()
        # Not resolved: a venv's python is a symlink, and only the link's path finds the venv's packages.
        self.python = python or sys.executable
        self.home = self.state_dir / "cluster"
        # Tests own their cluster: if they are killed, it goes too. `pricing cluster start` leaves it running.
        self.die_with_parent = die_with_parent

    @property
    def rest_url(self) -> str:
        return f"http://{self.settings.rest_address}"

    def rest_json(self, path: str, timeout_s: float = 10.0) -> Any:
        """GET ``path`` (``/jobs/<id>``, ``/overview``, ...) from the cluster's REST API; raises when it fails."""
        with urllib.request.urlopen(f"{self.rest_url}{path}", timeout=timeout_s) as response:
            return json.load(response)

    @property
    def conf_dir(self) -> Path:
        return self.home / "conf"

    @property
    def lib_dir(self) -> Path:
        return self.home / "lib"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def _processes_file(self) -> Path:
        return self.home / "processes.json"

    # -- status ---------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        recorded = self._recorded()
        jm = recorded.get("jobmanager")
        jm = jm if jm and _is_ours(jm, _JOBMANAGER_MAIN, self.conf_dir) else None
        tms = [p for p in recorded.get("taskmanagers", []) if p and _is_ours(p, _TASKMANAGER_MAIN, self.conf_dir)]
        url = recorded.get("rest_url", self.rest_url)
        overview = _get_json(f"{url}/overview") if jm else None
        return ClusterStatus(
            jobmanager_pid=jm,
            taskmanager_pids=tms,
            rest_url=url,
            rest_answers=overview is not None,
            registered_taskmanagers=int(overview.get("taskmanagers", 0)) if overview else 0,
            running_jobs=int(overview.get("jobs-running", 0)) if overview else 0,
        )

    # -- start ----------------------------------------------------------------------------

    def start(self, *, timeout_s: float | None = None, progress: Any = None) -> ClusterStatus:
        """Start whatever is not running and wait until every TaskManager is registered.

        ``progress`` (a callable taking a line) hears about the wait; default: stderr.
        """
        say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        timeout_s = timeout_s if timeout_s is not None else self.settings.start_timeout_s
        recorded = self._recorded()
        current = self.status()
        if current.jobmanager_pid is not None and recorded.get("rest_url") != self.rest_url:
            raise ClusterError(
                f"a cluster from {self.home} already runs with REST at {current.rest_url} "
                f"(pid {current.jobmanager_pid}); stop it first with 'pricing cluster stop'"
            )
        wanted = self.settings.taskmanagers
        tms: list[int | None] = [p if p in current.taskmanager_pids else None
                                 for p in recorded.get("taskmanagers", [])][:wanted]
        tms += [None] * (wanted - len(tms))
        if current.jobmanager_pid is not None and all(tms):
            return self._wait_registered(timeout_s, say)  # already running (returns at once when healthy)
        if current.jobmanager_pid is None:
            if current.taskmanager_pids:  # TaskManagers of a dead JobManager: start over
                self.stop()
                tms = [None] * wanted
            for port, what in ((self.settings.rest_port, "REST port"), (self.settings.rpc_port, "RPC port")):
                if not _port_free(self.settings.host, port):
                    raise ClusterError(
                        f"the {what} {port} on {self.settings.host} is already in use; choose another "
                        f"([cluster] rest_port / rpc_port, or PRICING_CLUSTER__{'REST' if what == 'REST port' else 'RPC'}_PORT)"
                    )
            self._prepare()
        jm = current.jobmanager_pid
        if jm is None:
            jm = self._spawn("jobmanager")
        for i, pid in enumerate(tms):
            if pid is None:
                tms[i] = self._spawn(f"taskmanager-{i + 1}")
        self._record(jm, [p for p in tms if p is not None])
        say(f"starting Flink: JobManager pid {jm}, TaskManager pids {', '.join(map(str, tms))}; logs in {self.log_dir}")
        try:
            return self._wait_registered(timeout_s, say)
        except ClusterError:
            self.stop()
            raise

    def _wait_registered(self, timeout_s: float, say: Any) -> ClusterStatus:
        wanted = self.settings.taskmanagers
        started = time.monotonic()
        last_said = 0.0
        while True:
            status = self.status()
            if status.jobmanager_pid is None:
                raise ClusterError(f"the JobManager exited; see {self.log_dir}:\n{self._log_tail()}")
            if len(status.taskmanager_pids) < wanted:
                raise ClusterError(f"a TaskManager exited; see {self.log_dir}:\n{self._log_tail()}")
            if status.rest_answers and status.registered_taskmanagers >= wanted:
                return status
            waited = time.monotonic() - started
            if waited > timeout_s:
                raise ClusterError(
                    f"after {timeout_s:.0f}s {status.registered_taskmanagers} of {wanted} TaskManagers had "
                    f"registered (REST {'answers' if status.rest_answers else 'does not answer'}); see {self.log_dir}"
                )
            if waited - last_said >= 5:
                last_said = waited
                say(f"  waiting for the cluster ({waited:.0f}s): REST "
                    f"{'up' if status.rest_answers else 'not up yet'}, "
                    f"{status.registered_taskmanagers}/{wanted} TaskManagers registered")
            time.sleep(0.5)

    def _prepare(self) -> None:
        """Write the configuration folder and the lib/ folder (fresh each start)."""
        dist = flink_distribution()
        jars = flink_jars(self.state_dir)  # the connector and pricing-features.jar (checks they were fetched)
        for folder in (self.conf_dir, self.lib_dir, self.log_dir, self.home / "pid", self.home / "tmp"):
            if folder.exists():
                shutil.rmtree(folder)
        shutil.copytree(dist / "conf", self.conf_dir)
        (self.conf_dir / "config.yaml").write_text(_yaml(self.flink_config()))
        self.lib_dir.mkdir(parents=True)
        for jar in [*sorted((dist / "lib").glob("*.jar")), *jars]:
            (self.lib_dir / jar.name).symlink_to(jar.resolve())
        for folder in (self.log_dir, self.home / "pid", self.home / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)

    def flink_config(self) -> dict[str, Any]:
        """The cluster's ``config.yaml``: the distribution's, with this cluster's settings on top."""
        import yaml

        s = self.settings
        base = yaml.safe_load((flink_distribution() / "conf" / "config.yaml").read_text()) or {}
        conf = _flatten(base)
        conf.update({
            "jobmanager.rpc.address": s.host,
            "jobmanager.rpc.port": s.rpc_port,
            "jobmanager.bind-host": s.host,
            "taskmanager.bind-host": s.host,
            "taskmanager.host": s.host,
            "rest.address": s.host,
            "rest.bind-address": s.host,
            "rest.port": s.rest_port,
            "jobmanager.memory.process.size": s.jobmanager_memory,
            "taskmanager.memory.process.size": s.taskmanager_memory,
            "taskmanager.memory.managed.size": s.taskmanager_managed_memory,
            "taskmanager.numberOfTaskSlots": s.slots_per_taskmanager,
            # A parallel job gets slots on every TaskManager, so losing one is a failover, not a no-op.
            "taskmanager.load-balance.mode": "SLOTS",
            # Without a restart strategy a failed job stays failed; jobs may set their own.
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.attempts": 10,
            "restart-strategy.fixed-delay.delay": "5 s",
            # A dead TaskManager is noticed within seconds (and its slots are not offered again).
            "heartbeat.interval": "2 s",
            "heartbeat.timeout": "20 s",
            # TaskManagers started with the JobManager retry the connection every 2 s, not 10 s.
            "cluster.registration.error-delay": "2 s",
            "python.executable": self.python,
            "python.client.executable": self.python,
            "env.log.dir": str(self.log_dir),
            "env.pid.dir": str(self.home / "pid"),
            "env.stdout-err.redirect-to-file": True,
            "io.tmp.dirs": str(self.home / "tmp"),
        })
        return conf

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED)}
        venv_bin = str(Path(self.python).parent)
        env.update(
            FLINK_CONF_DIR=str(self.conf_dir),
            FLINK_LIB_DIR=str(self.lib_dir),
            PATH=os.pathsep.join([venv_bin, env.get("PATH", "")]),  # the scripts call `python`
        )
        return env

    def _spawn(self, name: str) -> int:
        script = "jobmanager.sh" if name == "jobmanager" else "taskmanager.sh"
        # The script execs flink-console.sh, which execs java: the pid we get is the JVM's.
        out = open(self.log_dir / f"{name}.console", "ab")
        try:
            proc = subprocess.Popen(
                ["bash", str(flink_distribution() / "bin" / script), "start-foreground"],
                cwd=self.home, env=self._environment(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_set_parent_death_signal if self.die_with_parent else None,
            )
        finally:
            out.close()
        # Until the forked child has exec'd the script, its /proc entry is a copy of ours.
        main = _JOBMANAGER_MAIN if name == "jobmanager" else _TASKMANAGER_MAIN
        deadline = time.monotonic() + 10
        while not _is_ours(proc.pid, main, self.conf_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return proc.pid

    # -- stop -----------------------------------------------------------------------------

    def stop(self, *, grace_s: float = 20.0) -> bool:
        """Stop every process of this cluster (jobs die with it); returns False if none was running."""
        recorded = self._recorded()
        pids = [p for p in [*recorded.get("taskmanagers", []), recorded.get("jobmanager")] if p and _alive(p)
                and (_is_ours(p, _TASKMANAGER_MAIN, self.conf_dir) or _is_ours(p, _JOBMANAGER_MAIN, self.conf_dir))]
        for pid in pids:
            _signal_group(pid, signal.SIGTERM)  # the JVM and its Python workers
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_group_alive(p) for p in pids):
            time.sleep(0.2)
        for pid in pids:
            if _group_alive(pid):
                _signal_group(pid, signal.SIGKILL)
        while any(_group_alive(p) for p in pids):
            time.sleep(0.1)
        self._processes_file.unlink(missing_ok=True)
        return bool(pids)

    def kill_taskmanager(self, pid: int) -> None:
        """``kill -9`` one TaskManager's process group (its JVM and its Python workers): a crash, for tests."""
        if pid not in self.status().taskmanager_pids:
            raise ClusterError(f"{pid} is not a TaskManager of the cluster in {self.home}")
        _signal_group(pid, signal.SIGKILL)
        while _group_alive(pid):
            time.sleep(0.1)

    # -- the pid file ---------------------------------------------------------------------

    def _recorded(self) -> dict[str, Any]:
        try:
            return json.loads(self._processes_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _record(self, jobmanager: int, taskmanagers: list[int]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        data = {"jobmanager": jobmanager, "taskmanagers": taskmanagers, "rest_url": self.rest_url}
        tmp = self._processes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._processes_file)

    def _log_tail(self, lines: int = 20) -> str:
        files = sorted(self.log_dir.glob("*"), key=lambda p: p.stat().st_mtime)[-4:] if self.log_dir.is_dir() else []
        out = []
        for path in files:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def jobs(rest_url: str) -> list[dict[str, Any]]:
    """The cluster's jobs as its REST API lists them (``jid``, ``name``, ``state``, ...)."""
    overview = _get_json(f"{rest_url}/jobs/overview")
    if overview is None:
        raise ClusterError(f"the REST API at {rest_url} does not answer")
    return list(overview.get("jobs", []))


ENDED = frozenset({"FINISHED", "FAILED", "CANCELED"})


def running_job(rest_url: str, name: str) -> dict[str, Any] | None:
    """The cluster's job named ``name`` that has not ended (any state but finished, failed or canceled), if any."""
    return next((j for j in jobs(rest_url) if j["name"] == name and j["state"] not in ENDED), None)


def cancel_job(rest_url: str, job_id: str) -> None:
    """Cancel a job (its retained checkpoints stay, so a new submission resumes from them)."""
    request = urllib.request.Request(f"{rest_url}/jobs/{job_id}?mode=cancel", method="PATCH")
    with urllib.request.urlopen(request, timeout=10):
        pass


def _get_json(url: str, timeout_s: float = 3.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.load(response)
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _yaml(conf: dict[str, Any]) -> str:
    import yaml

    header = "# Written by `pricing cluster start` (pricing.cluster); edit [cluster] in pricing.toml instead.\n"
    return header + yaml.safe_dump(conf, default_flow_style=False, sort_keys=True, width=10_000)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _set_parent_death_signal() -> None:
    """Linux: SIGTERM the process when the one that started it dies (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (a Python worker may outlive its JVM for a moment)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return _alive(pgid)
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _is_ours(pid: int, main_class: str, conf_dir: Path) -> bool:
    """The pid is a live Flink process of that kind started with this cluster's configuration
    (the JVM, or the start script for the moment before it execs the JVM)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    kind = any(stage in cmdline for stage in _STAGES[main_class])
    return kind and f"FLINK_CONF_DIR={conf_dir}".encode() in environ


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)
