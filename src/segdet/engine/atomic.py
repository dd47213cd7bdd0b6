"""Atomic text files: what a run or a command writes is either the old file or the new one, never a torn
one (a kill, a full disk). The text goes to a temporary file in the same folder, which is fsync'ed and
renamed over the target (``os.replace`` is atomic on POSIX); the folder is fsync'ed so that the rename
survives a power cut. Checkpoints do the same with safetensors (:mod:`segdet.engine.checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (module docstring); the temporary file never stays behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: str | Path) -> None:
    """fsync a folder, making the renames inside it durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
