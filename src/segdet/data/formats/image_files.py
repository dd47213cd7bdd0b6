"""Placing image files when a writer lays out a dataset (shared by the format writers)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from segdet.errors import DataError


def place_image(src: Path, dst: Path, *, link: bool = False) -> None:
    """Put a copy of the image ``src`` at ``dst``; with ``link`` a hard link where the file system allows
    it (no extra space, but the output then *is* the source: editing one edits the other), else a copy.
    An existing ``dst`` (or a symbolic link there) is replaced, never written through; one that already
    is ``src`` is left alone."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError("image file not found", src)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            if dst.exists() and os.path.samefile(src, dst):
                return
            dst.unlink()
        if link:
            try:
                os.link(src, dst)
                return
            except OSError:  # another device, or a file system without hard links
                pass
        shutil.copyfile(src, dst)
    except OSError as e:
        raise DataError(f"cannot write image ({e.strerror or e})", dst) from None
