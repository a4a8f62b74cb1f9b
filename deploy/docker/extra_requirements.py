"""Print one optional-dependency extra of pyproject.toml as a requirements file (used by the image builds).

The extras (``serving``, ``training``) list subsets of ``[project] dependencies`` with the same pins.
An image installs them as requirements constrained by ``requirements.lock`` and then the package
itself with ``--no-deps``, because installing ``.[serving]`` would also pull every base dependency.

    python extra_requirements.py serving [--replace tensorflow-cpu=tensorflow[and-cuda]==2.20.0]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def extra(name: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    if name not in extras:
        raise SystemExit(f"no extra {name!r} in {pyproject} (have: {', '.join(sorted(extras))})")
    return [_strip_comment(r) for r in extras[name]]


def project_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match[1]).lower()


def _strip_comment(requirement: str) -> str:
    return requirement.split("#", 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra")
    parser.add_argument("--replace", action="append", default=[], metavar="NAME=REQUIREMENT",
                        help="swap one requirement for another (the GPU image: tensorflow-cpu for tensorflow[and-cuda])")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    requirements = extra(args.extra, args.pyproject)
    for swap in args.replace:
        old, _, new = swap.partition("=")
        names = [project_name(r) for r in requirements]
        if project_name(old) not in names:
            raise SystemExit(f"--replace {swap}: {old} is not in the {args.extra!r} extra")
        requirements[names.index(project_name(old))] = new
    sys.stdout.write("".join(f"{r}\n" for r in requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
