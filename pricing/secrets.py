"""Secret files: where the job's clients read their secrets at run time (``[secrets] dir``).

In Kubernetes the folder is a mounted Secret (k8s/base). Locally, and on the standalone cluster, the job
writes its secret settings there itself (:func:`write_secret_files`) before it submits the job, so that
no secret value is part of the job's SQL, plan or graph: the clients get the folder, not the values.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_secret_files(folder: Path, files: dict[str, str]) -> None:
    """Write ``files`` (name -> value, exactly, no newline added) into ``folder``: the folder mode 0700, each
    file 0600, replaced atomically so a reader never sees half a secret."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name, value in files.items():
        tmp = folder / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value)
        os.replace(tmp, folder / name)


def read_secret_files(folder: Path, names: list[str]) -> dict[str, str]:
    """The files among ``names`` that exist in ``folder``, name -> value."""
    return {name: (folder / name).read_text(encoding="utf-8") for name in names if (folder / name).is_file()}
