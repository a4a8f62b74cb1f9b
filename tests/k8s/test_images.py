"""What can be checked of the images without building them: the paths they copy exist, the pins agree
with the project's, the dependency split covers what each image runs, the job's entry point works."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import ROOT

DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
sys.path.insert(0, str(DOCKER))
import extra_requirements  # noqa: E402


def instructions(dockerfile: Path) -> list[tuple[str, list[str]]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in dockerfile.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), shlex.split(line.split(None, 1)[1]))
            for line in text.splitlines() if line.strip()]


def _pins(requirements: list[str]) -> dict[str, str]:
    return {extra_requirements.project_name(r): r.split("#")[0].strip() for r in requirements}


def test_dockerfiles_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.gpu", "Dockerfile.training"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_path_a_dockerfile_copies_from_the_repository_exists(dockerfile: Path) -> None:
    copied = []
    for instruction, args in instructions(dockerfile):
        if instruction in {"COPY", "ADD"} and not any(a.startswith("--from=") for a in args):
            sources = [a for a in args if not a.startswith("--")][:-1]
            copied += sources
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
    assert "jobs" in copied or "jobs/pricing_job.py" in copied


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(dockerfile: Path) -> None:
    users = [args[0] for instruction, args in instructions(dockerfile) if instruction == "USER"]
    assert users and users[-1] == "9999:9999"


def test_the_package_list_covers_every_python_package() -> None:
    """The images install the package (not editable) from [tool.setuptools] packages: a folder missing
    there is missing in the image, though every test in the development venv passes."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(init.parent.relative_to(ROOT)).replace("/", ".")
             for top in ("pricing", "pricing_udfs", "jobs") for init in (ROOT / top).rglob("__init__.py")}
    assert not found - listed, f"packages missing from [tool.setuptools] packages: {sorted(found - listed)}"


# Each FlinkDeployment of k8s/base and the job file its PythonDriver runs.
DEPLOYMENT_JOBS = {"flinkdeployment.yaml": "jobs/pricing_job.py", "archive-flinkdeployment.yaml": "jobs/archive.py"}


@pytest.mark.parametrize("manifest", sorted(DEPLOYMENT_JOBS))
def test_the_flink_image_and_jars_match_the_project_pins(manifest: str) -> None:
    flink = _pins(PYPROJECT["dependencies"])["apache-flink"].split("==")[1]
    pom = (ROOT / "deploy" / "jvm" / "pom.xml").read_text()
    assert f"<flink.version>{flink}</flink.version>" in pom
    for dockerfile in (DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"):
        assert f"ARG FLINK_IMAGE=flink:{flink}-scala_2.12-java17" in dockerfile.read_text()
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / manifest).read_text())["spec"]
    assert deployment["flinkVersion"] == "v" + "_".join(flink.split(".")[:2])
    assert deployment["job"]["jarURI"] == f"local:///opt/flink/opt/flink-python-{flink}.jar"
    # the PythonDriver runs the file the images put in usrlib, with the images' venv
    args = deployment["job"]["args"]
    job_file = args[args.index("-py") + 1]
    for dockerfile in (DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"):
        copies = [a for i, a in instructions(dockerfile) if i == "COPY" and a[-1] == job_file]
        assert copies and copies[0][-2] == DEPLOYMENT_JOBS[manifest], dockerfile.name
        assert "/opt/venv/bin/python" in dockerfile.read_text()
    assert args[args.index("-pyclientexec") + 1] == deployment["flinkConfiguration"]["python.executable"] \
        == "/opt/venv/bin/python"
    # the S3 plugins the pods enable are the pinned Flink's (the image ships them in opt/)
    [container] = deployment["podTemplate"]["spec"]["containers"]
    plugins = {e["value"] for e in container["env"] if e["name"] == "ENABLE_BUILT_IN_PLUGINS"}
    assert plugins and all(p.endswith(f"-{flink}.jar") for p in plugins)


@pytest.mark.parametrize("extra", ["serving", "training"])
def test_extras_are_subsets_of_the_dependencies_with_the_same_pins(extra: str) -> None:
    everything = _pins(PYPROJECT["dependencies"])
    subset = _pins(PYPROJECT["optional-dependencies"][extra])
    assert subset, extra
    for name, pin in subset.items():
        assert everything.get(name) == pin, f"[{extra}] {pin} is not pinned like `dependencies` ({everything.get(name)})"
    assert extra_requirements.extra(extra) == list(subset.values())


def test_serving_has_no_training_dependencies_and_training_no_flink() -> None:
    serving = _pins(PYPROJECT["optional-dependencies"]["serving"])
    training = _pins(PYPROJECT["optional-dependencies"]["training"])
    assert not {"apache-beam", "matplotlib"} & serving.keys()
    assert "apache-flink" not in training


def test_the_gpu_image_swaps_tensorflow_for_its_cuda_build(capsys: pytest.CaptureFixture[str]) -> None:
    extra_requirements.main(["serving", "--replace", "tensorflow-cpu=tensorflow[and-cuda]==2.20.0"])
    lines = capsys.readouterr().out.splitlines()
    assert "tensorflow[and-cuda]==2.20.0" in lines and not any(l.startswith("tensorflow-cpu") for l in lines)
    assert 'ARG TENSORFLOW_GPU="tensorflow[and-cuda]==2.20.0"' in (DOCKER / "Dockerfile.gpu").read_text()
    tf_cpu = _pins(PYPROJECT["dependencies"])["tensorflow-cpu"].split("==")[1]
    assert tf_cpu == "2.20.0"  # the GPU build must be the same TensorFlow release


# The modules each image runs; every third-party distribution they import must come from its extra.
_IMPORT_CHECK = """
import importlib, json, sys
from importlib import metadata
for module in sys.argv[2:]:
    importlib.import_module(module)
top = {m.split(".")[0] for m in sys.modules}
owners = metadata.packages_distributions()
needed = sorted({d for t in top for d in owners.get(t, [])})
def closure(names):
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [r.split(";")[0].split("[")[0].split("(")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0]
                 .split("~")[0].strip() for r in requires if "extra ==" not in r]
    return seen
allowed = closure(json.loads(sys.argv[1])) | {"pricing-engine"}
print(json.dumps(sorted(d for d in needed if d.lower().replace("_", "-") not in allowed)))
"""


@pytest.mark.parametrize("extra,modules", [
    ("serving", ["jobs.pricing_job", "jobs.archive", "pricing_udfs.udfs", "pricing_udfs.model"]),
    ("training", ["pricing.training_cli", "jobs.training_set", "pricing.training", "pricing.model_report",
                  "pricing.models_cli", "pricing.sim.scenario",
                  "pricing.learn.cli", "pricing.learn.loop"]),  # `pricing learn`: what the CronJob runs
])
def test_each_extra_covers_what_its_image_imports(extra: str, modules: list[str]) -> None:
    names = [extra_requirements.project_name(r) for r in PYPROJECT["optional-dependencies"][extra]]
    out = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, json.dumps(names), *modules], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [], f"{extra} images import distributions outside the extra"


@pytest.mark.parametrize("job_file", sorted(DEPLOYMENT_JOBS.values()))
def test_the_entry_point_command_works_in_the_venv(job_file: str) -> None:
    """What the PythonDriver runs (python -py jobs/pricing_job.py, jobs/archive.py), here with --help."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the image installs the package; here it is the checkout
    out = subprocess.run([sys.executable, str(ROOT / job_file), "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--config" in out.stdout
