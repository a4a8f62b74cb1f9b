"""Where the JVM jars fetched by ``deploy/jvm/pom.xml`` live, and how to ask for them.

The jars are not committed: ``make`` (or ``pricing jars fetch``) runs Maven once, which
builds the feature window functions and copies the pinned jars into
``<state_dir>/jars/{flink,kafka}``. Everything that needs a jar asks
this module, so nobody passes jar paths by hand.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
POM = PROJECT_ROOT / "deploy" / "jvm" / "pom.xml"


class JarsMissingError(RuntimeError):
    """The jars are not there; the message says the command that fetches them."""


def jars_dir(state_dir: Path) -> Path:
    return state_dir / "jars"


def flink_jars(state_dir: Path) -> list[Path]:
    """Jars for ``pipeline.jars``: the Kafka connector and the feature window functions built from ``deploy/jvm``.

    (Metrics reporters are Flink plugins, not user jars.)
    """
    folder = jars_dir(state_dir) / "flink"
    _require(folder, "pricing-features")
    return _require(folder, "flink-sql-connector-kafka-")


PROJECT_JAR = "pricing-features.jar"


def connector_jars(state_dir: Path) -> list[Path]:
    """The connector jars alone (what a cluster image keeps in lib/): ``flink_jars`` without the project's jar."""
    return [j for j in flink_jars(state_dir) if j.name != PROJECT_JAR]


def project_jar(state_dir: Path) -> Path:
    """Where ``pricing-features.jar`` is, the job's own Java window functions built from ``deploy/jvm``
    (``flink_jars`` checks that it is there).

    It belongs to the job, not to the platform: a job submitted to a cluster ships it
    whatever the cluster has in lib/, so the window functions always match the job file.
    """
    return jars_dir(state_dir) / "flink" / PROJECT_JAR


def flink_distribution() -> Path:
    """The Flink distribution inside the apache-flink wheel: ``bin/``, ``conf/``, ``lib/``, ``opt/``, ``plugins/``."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def flink_python_jar() -> Path:
    """``opt/flink-python-*.jar``: a Python job submitted to a cluster ships it (a cluster's lib/ does not have it)."""
    folder = flink_distribution() / "opt"
    jars = sorted(folder.glob("flink-python-*.jar"))
    if not jars:
        raise JarsMissingError(f"no flink-python-*.jar in {folder}; reinstall apache-flink")
    return jars[-1]


def prometheus_reporter_jar() -> Path:
    """The Prometheus metrics reporter that the apache-flink wheel ships among its plugins.

    A cluster loads reporters from its plugins/ folder, but the local MiniCluster only
    looks on the class path, so local runs add this jar to ``pipeline.jars``.
    """
    import pyflink

    folder = Path(pyflink.__file__).resolve().parent / "plugins" / "metrics-prometheus"
    jars = sorted(folder.glob("flink-metrics-prometheus-*.jar"))
    if not jars:
        raise JarsMissingError(f"no flink-metrics-prometheus-*.jar in {folder}; reinstall apache-flink")
    return jars[-1]


def kafka_classpath(state_dir: Path) -> list[Path]:
    """The class path of a standalone Kafka broker."""
    return _require(jars_dir(state_dir) / "kafka", "kafka_2.13-")


def fetch(state_dir: Path, *, quiet: bool = True) -> Path:
    """Run Maven to build the window functions and copy the pinned jars into ``state_dir/jars`` (idempotent)."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarsMissingError("Maven ('mvn') is needed to fetch the JVM jars; install it first")
    target = jars_dir(state_dir).resolve()
    cmd = [mvn, "-B", "-f", str(POM), "package", f"-Djars.dir={target}"]
    if quiet:
        cmd.insert(1, "-q")
    subprocess.run(cmd, check=True)
    return target


def _require(folder: Path, marker: str) -> list[Path]:
    jars = sorted(folder.glob("*.jar")) if folder.is_dir() else []
    if not any(j.name.startswith(marker) for j in jars):
        raise JarsMissingError(
            f"no {marker}*.jar in {folder}; run 'make jars' or 'pricing jars fetch' first"
        )
    return jars
