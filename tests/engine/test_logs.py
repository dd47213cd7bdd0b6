"""Run logs: a resumed run's truncation copes with a torn last line in both files, rewrites them with
temp file + fsync + rename and leaves no temporary file behind; TensorBoard takes any finite value."""

from __future__ import annotations

import csv
import json
import math
import struct

import pytest

from segdet.engine import atomic
from segdet.engine.logs import MetricLog
from segdet.engine.tensorboard import EventWriter


def _log(run, steps):
    log = MetricLog(run, tensorboard=False)
    for step in steps:
        log.log("train", step, step / 10, {"loss": 1.0 / step, "lr": 0.1})
    return log


def test_a_torn_csv_row_is_dropped_on_resume(tmp_path):
    """A kill in the middle of a CSV row can leave a prefix whose step field still parses ("train,1" of
    "train,12,..."): it was kept, and the resumed run's next row was appended to it on the same line."""
    log = _log(tmp_path, [1, 2, 3])
    with open(log.csv, "a", newline="") as f:
        f.write("train,1")  # torn: "train,12,1.2,loss,..." cut by the kill
    with open(log.jsonl, "a") as f:
        f.write('{"split": "train", "step": 1')
    log.truncate(3)
    log.log("train", 4, 0.4, {"loss": 0.25, "lr": 0.1})
    with open(log.csv, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["split", "step", "epoch", "metric", "value"]
    assert all(len(r) == 5 for r in rows), rows
    assert [int(r[1]) for r in rows[1:]] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [json.loads(x)["step"] for x in log.jsonl.read_text().splitlines()] == [1, 2, 3, 4]


def test_a_csv_left_empty_by_a_kill_gets_its_header(tmp_path):
    """A kill between creating metrics.csv and writing it left an empty file: the header was never
    written and truncation then took the first record for the header (kept it whatever its step)."""
    (tmp_path / "metrics.csv").write_text("")
    log = _log(tmp_path, [5])
    log.truncate(2)
    with open(log.csv, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["split", "step", "epoch", "metric", "value"]]


def test_truncation_is_fsynced_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    log = _log(tmp_path, [1, 2, 3])
    synced: list[int] = []
    real_fsync = atomic.os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    log.truncate(2)
    assert len(synced) == 4  # both files rewritten: each fsync'ed before its rename, then its folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.jsonl"]

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        log.truncate(1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_tensorboard_takes_a_finite_value_beyond_float32(tmp_path):
    """A finite metric above float32's range (TensorBoard stores float32) crashed the run in struct.pack;
    it is stored as infinity."""
    writer = EventWriter(tmp_path)
    writer.add_scalar("val/huge", 1e39, 1)
    writer.add_scalar("val/tiny", -1e39, 1)
    writer.close()
    data = writer.path.read_bytes()
    assert data.count(b"val/huge") == 1 and data.count(b"val/tiny") == 1
    assert b"val/huge\x15" + struct.pack("<f", math.inf) in data
    assert b"val/tiny\x15" + struct.pack("<f", -math.inf) in data
