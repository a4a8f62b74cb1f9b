"""A client of ``pricing.decode.DecodeCli``: the job's JVM decoder in a process, fed batches of records.

Used by ``test_jvm_decoder.py`` to give the JVM decoder and the Python reference (``pricing_udfs.serde``) the
same bytes. The class path is the one the job runs with: ``pricing-features.jar`` (Avro shaded inside) and the
apache-flink wheel's ``lib/``.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

from pricing.jars import flink_distribution, project_jar
from pricing_udfs import serde
from pricing_udfs.serde import Contract


NO_WATERMARK = -(2**63)


class JvmDecoder:
    """``rows``: run the job's whole ``DecodeFunction`` with these options (``DecodeCli``'s docstring), not only
    ``ContractDecoder``; then each item also carries its Kafka timestamp, watermark (or None) and offset."""

    def __init__(self, state_dir: Path, rows: dict[str, str] | None = None) -> None:
        jar = project_jar(state_dir)
        classpath = f"{jar}:{flink_distribution() / 'lib'}/*"
        mode = ["rows", *(f"{k}={v}" for k, v in rows.items())] if rows is not None else []
        self._rows = rows is not None
        self._process = subprocess.Popen(
            ["java", "-Xmx512m", "-cp", classpath, "pricing.decode.DecodeCli", str(serde.SCHEMA_DIR), *mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def decode(self, items: list[tuple]) -> list[dict[str, Any]]:
        """What the JVM decoder makes of each (contract, value): ``{"ok", "values"}`` or ``{"ok", "kind", "message"}``;
        in ``rows`` mode of each (contract, value, timestamp ms, watermark ms or None, offset): ``{"row": [...]}``."""
        buf = bytearray(struct.pack(">i", len(items)))
        for contract, value, *rest in items:
            name = contract.value.encode()
            buf += bytes([len(name)]) + name
            buf += struct.pack(">i", -1) if value is None else struct.pack(">i", len(value)) + bytes(value)
            if self._rows:
                ts, watermark, offset = rest
                buf += struct.pack(">qqq", ts, NO_WATERMARK if watermark is None else watermark, offset)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(buf)
        self._process.stdin.flush()
        out = []
        for _ in items:
            line = self._process.stdout.readline()
            if not line:
                raise RuntimeError(f"the JVM decoder exited with {self._process.wait()}")
            out.append(json.loads(line))
        return out

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)
