"""Placing image files when a writer lays out a dataset (shared by the format writers)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from segdet.errors import DataError


def safe_relative(file_name: str, record: str = "") -> Path:
    """``file_name`` as a relative path that stays inside the folder it is joined to.

    Annotation files name images relative to an image folder; a name that is absolute or climbs out
    with ``..`` would make a writer write outside its output folder, so it is refused.
    """
    rel = PurePosixPath(file_name.replace("\\", "/"))
    if not file_name or rel.is_absolute() or ".." in rel.parts:
        raise DataError(
            f"image file name {file_name!r} is not a relative path inside the image folder", None, record
        )
    return Path(*rel.parts)


def place_image(src: Path, dst: Path) -> None:
    """Put the image ``src`` at ``dst``: a hard link when the file system allows it (no copy, no extra
    space), else a copy. An existing ``dst`` that already is ``src`` is left alone (rewriting a dataset
    in place)."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError("image file not found", src)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            if dst.exists() and os.path.samefile(src, dst):
                return
            dst.unlink()
        try:
            os.link(src, dst)
        except OSError:  # another device, or a file system without hard links
            shutil.copy2(src, dst)
    except OSError as e:
        raise DataError(f"cannot write image ({e})", dst) from None
