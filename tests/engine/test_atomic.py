"""write_text_atomic: the old file or the new one, never a torn one, and no temporary file left."""

from __future__ import annotations

import os

import pytest

from segdet.engine import atomic
from segdet.engine.atomic import write_text_atomic


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "summary.json"
    write_text_atomic(path, "first\n")
    write_text_atomic(path, "second — ü\n")
    assert path.read_text(encoding="utf-8") == "second — ü\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A kill or a full disk between writing and renaming (os.replace raising stands in for it)."""
    path = tmp_path / "config.yaml"
    path.write_text("old\n")
    synced = []
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd))

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n" and synced  # the temporary file was fsync'ed before the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
