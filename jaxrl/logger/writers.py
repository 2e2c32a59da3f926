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


# ---------------------------------------------------------------- per-member writers
# Each takes the same ``write_chunk`` call as JsonlWriter and logs every member of the
# vmapped batch as its own run; ``close()`` flushes and releases files. On resume the
# first chunk written starts after the checkpoint, so rows past it are dropped (CSV) or
# purged (TensorBoard) instead of duplicated.


def _member_name(label: Mapping[str, Any]) -> str:
    return f"run{int(label['run']):03d}"


def _member_rows(metrics: Mapping[str, np.ndarray], first_update: int):
    """Per run member ``r`` of a chunk ``{name: [R, C]}``: ``(r, [(update, {name: value})])``
    for the chunk's ``C`` updates, names sorted."""
    names = sorted(metrics)
    num_runs, num_updates = np.shape(metrics[names[0]])[:2]
    for r in range(num_runs):
        yield (
            r,
            [
                (first_update + c + 1, {n: metrics[n][r, c] for n in names})
                for c in range(num_updates)
            ],
        )


class CsvWriter:
    """One CSV per run member: ``DIR/run000.csv`` ... (``DIR`` is usually ``RUN_DIR/csv``).

    Columns: the run's labels (``run``, ``seed``, grid values), ``update``, ``env_steps``,
    then the metrics sorted by name; a missing value (no episode finished) is empty. The
    rows of member ``r`` are exactly ``metrics.jsonl``'s rows with ``run == r``.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._started = False

    def write_chunk(
        self,
        metrics: Mapping[str, np.ndarray],
        *,
        first_update: int,
        steps_per_update: int,
        run_labels: list[dict[str, Any]],
    ) -> None:
        """Appends ``metrics`` (each ``[R, C]``) as ``C`` rows to each member's file."""
        import csv
        import io

        names = sorted(metrics)
        for r, updates in _member_rows(metrics, first_update):
            label = run_labels[r]
            header = [*label, "update", "env_steps", *names]
            path = self.directory / f"{_member_name(label)}.csv"
            kept = ""
            if not self._started and path.exists():  # resume: keep rows up to first_update
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
                buf = io.StringIO()
                w = csv.DictWriter(buf, header, lineterminator="\n")
                w.writeheader()
                w.writerows(row for row in rows if int(row["update"]) <= first_update)
                kept = buf.getvalue()
            if not self._started:
                if not kept:
                    buf = io.StringIO()
                    csv.writer(buf, lineterminator="\n").writerow(header)
                    kept = buf.getvalue()
                atomic_write_text(path, kept)
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            for update, row in updates:
                values = [to_jsonable(row[n]) for n in names]
                values = ["" if v is None else repr(v) if isinstance(v, float) else v
                          for v in values]  # fmt: skip
                w.writerow([*label.values(), update, update * steps_per_update, *values])
            with open(path, "a") as f:
                f.write(buf.getvalue())
        self._started = True

    def close(self) -> None:
        pass


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """A :class:`CsvWriter` file as rows of numbers (``None`` for empty cells)."""
    import csv

    def parse(v: str) -> Any:
        if v == "":
            return None
        try:
            return int(v)
        except ValueError:
            return float(v)

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


class TensorBoardWriter:
    """TensorBoard event files, one subdirectory per run member: ``DIR/run000/`` ...

    Needs ``tensorboardX`` (``pip install tensorboardX``). The x axis is env steps per
    run; NaN values (no episode finished in that update) are skipped. Each member's
    labels are written once as text (``labels``). View with ``tensorboard --logdir DIR``.
    """

    def __init__(self, directory: str | Path):
        try:
            import tensorboardX
        except ImportError as err:
            raise ImportError(
                "TensorBoard logging needs tensorboardX: pip install tensorboardX"
            ) from err
        self._summary_writer = tensorboardX.SummaryWriter
        self.directory = Path(directory)
        self._writers: dict[int, Any] = {}

    def _writer(self, label: Mapping[str, Any], purge_step: int | None):
        r = int(label["run"])
        if r not in self._writers:
            w = self._summary_writer(
                str(self.directory / _member_name(label)), purge_step=purge_step
            )
            w.add_text("labels", json.dumps(to_jsonable(dict(label))), 0)
            self._writers[r] = w
        return self._writers[r]

    def write_chunk(
        self,
        metrics: Mapping[str, np.ndarray],
        *,
        first_update: int,
        steps_per_update: int,
        run_labels: list[dict[str, Any]],
    ) -> None:
        purge = (first_update + 1) * steps_per_update if first_update else None
        for r, updates in _member_rows(metrics, first_update):
            w = self._writer(run_labels[r], purge)
            for update, row in updates:
                for n, value in row.items():
                    if math.isfinite(float(value)):
                        w.add_scalar(n, float(value), update * steps_per_update)
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()


class WandbWriter:
    """Weights & Biases in offline mode, one wandb run per member (``group`` = the batch).

    Needs ``wandb``. Runs are written under ``DIR/wandb/`` and uploaded later with
    ``wandb sync DIR/wandb/offline-run-*``. Each member's labels are its wandb config;
    the step is env steps per run; NaN values are skipped.
    """

    def __init__(self, directory: str | Path, *, project: str = "jaxrl", group: str | None = None):
        try:
            import wandb
        except ImportError as err:
            raise ImportError("W&B logging needs wandb: pip install wandb") from err
        self._wandb = wandb
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.project, self.group = project, group or self.directory.resolve().name
        self._runs: dict[int, Any] = {}

    def _run(self, label: Mapping[str, Any]):
        r = int(label["run"])
        if r not in self._runs:
            self._runs[r] = self._wandb.init(
                mode="offline",
                dir=str(self.directory),
                project=self.project,
                group=self.group,
                name=f"{self.group}-{_member_name(label)}",
                config=to_jsonable(dict(label)),
                reinit="create_new",
            )
        return self._runs[r]

    def write_chunk(
        self,
        metrics: Mapping[str, np.ndarray],
        *,
        first_update: int,
        steps_per_update: int,
        run_labels: list[dict[str, Any]],
    ) -> None:
        for r, updates in _member_rows(metrics, first_update):
            run = self._run(run_labels[r])
            for update, row in updates:
                row = {n: float(v) for n, v in row.items() if math.isfinite(float(v))}
                run.log({**row, "update": update}, step=update * steps_per_update)

    def close(self) -> None:
        for run in self._runs.values():
            run.finish()
        self._runs.clear()
