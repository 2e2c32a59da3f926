"""Host-side writers: JSONL metrics (one line per run and update) and atomic JSON files.

Nothing here touches the device: the runner hands over numpy arrays once per chunk.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(x: Any) -> Any:
    """Converts numpy and nested values to JSON types; non-finite floats become None."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; a missing value (no episode finished) is null
    return x


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file and ``os.replace`` (all or nothing)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file and ``os.replace`` (all or nothing)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Writes ``data`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(to_jsonable(data), indent=2) + "\n")


class JsonlWriter:
    """Appends metric rows to ``metrics.jsonl``; each chunk is one write of whole lines."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.touch()

    def write_chunk(
        self,
        metrics: Mapping[str, np.ndarray],
        *,
        first_update: int,
        steps_per_update: int,
        run_labels: list[dict[str, Any]],
    ) -> None:
        """Writes ``metrics`` (each ``[R, C]``: runs x updates in this chunk) as ``R*C`` lines."""
        names = sorted(metrics)
        num_runs, num_updates = np.shape(metrics[names[0]])[:2]
        lines = []
        for c in range(num_updates):
            update = first_update + c + 1
            for r in range(num_runs):
                row = {**run_labels[r], "update": update, "env_steps": update * steps_per_update}
                row |= {name: metrics[name][r, c] for name in names}
                lines.append(json.dumps(to_jsonable(row)))
        with open(self.path, "a") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads a JSONL file into a list of dicts (one per non-empty line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
