"""Per-member writers: CSV rows equal the JSONL rows; TensorBoard / W&B write one run each."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrl.logger import writers

LABELS = [
    {"run": 0, "seed": 3, "learning_rate": 1e-3},
    {"run": 1, "seed": 4, "learning_rate": 3e-4},
]


def _chunks():
    """Two chunks of metrics ``[R=2, C=3]``, with NaNs (updates where no episode finished)."""
    rng = np.random.default_rng(0)
    for first in (0, 3):
        ret = rng.normal(size=(2, 3)).astype(np.float32)
        ret[0, 1] = np.nan
        count = rng.integers(0, 4, size=(2, 3)).astype(np.int32)
        yield {"episode/return": ret, "episode/count": count}, first


def _write(writer_list, chunks):
    for metrics, first in chunks:
        for w in writer_list:
            w.write_chunk(metrics, first_update=first, steps_per_update=16, run_labels=LABELS)
    for w in writer_list:
        getattr(w, "close", lambda: None)()


def test_csv_rows_equal_jsonl_rows(tmp_path):
    jsonl = writers.JsonlWriter(tmp_path / "metrics.jsonl")
    csv = writers.CsvWriter(tmp_path / "csv")
    _write([jsonl, csv], _chunks())
    rows = writers.read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == 12
    for label in LABELS:
        got = writers.read_csv(tmp_path / "csv" / f"run{label['run']:03d}.csv")
        want = [r for r in rows if r["run"] == label["run"]]
        assert len(got) == 6 and got == want
    assert got[0]["learning_rate"] == 3e-4 and got[-1]["env_steps"] == 6 * 16


def test_csv_resume_drops_rows_after_the_checkpoint(tmp_path):
    chunks = list(_chunks())
    _write([writers.CsvWriter(tmp_path)], chunks)
    # a resumed run continues from update 3: its first chunk replaces updates 4..6
    _write([writers.CsvWriter(tmp_path)], chunks[1:])
    rows = writers.read_csv(tmp_path / "run000.csv")
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_tensorboard_one_event_file_per_member(tmp_path):
    pytest.importorskip("tensorboardX")
    tb = writers.TensorBoardWriter(tmp_path / "tb")
    _write([tb], _chunks())
    for label in LABELS:
        files = list((tmp_path / "tb" / f"run{label['run']:03d}").glob("events.out.tfevents.*"))
        assert len(files) == 1 and files[0].stat().st_size > 0
    chunks = list(_chunks())
    want = np.concatenate([m["episode/return"] for m, _ in chunks], axis=1)
    got1 = _scalars(tmp_path / "tb" / "run001", "episode/return")
    assert [s for s, _ in got1] == [16, 32, 48, 64, 80, 96]
    np.testing.assert_allclose([v for _, v in got1], want[1], rtol=1e-6)
    got0 = _scalars(tmp_path / "tb" / "run000", "episode/return")
    assert [s for s, _ in got0] == [16, 48, 64, 96]  # the NaNs at updates 2 and 5 are skipped


def _scalars(directory, tag):
    """``[(step, value)]`` of ``tag`` read from the TFRecord event file in ``directory``."""
    import struct

    from tensorboardX.proto import event_pb2

    (path,) = directory.glob("events.out.tfevents.*")
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
        i += 12 + length + 4  # length, its crc, the record, its crc
        out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return out


def test_wandb_offline_one_run_per_member(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    wb = writers.WandbWriter(tmp_path, group="test")
    _write([wb], _chunks())
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2


def test_missing_optional_package_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name in ("tensorboardX", "wandb"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install tensorboardX"):
        writers.TensorBoardWriter("unused")
    with pytest.raises(ImportError, match="pip install wandb"):
        writers.WandbWriter("unused")
