"""The images ``segdet predict`` is given: image files, folders (their top level) and glob patterns.

A folder is read at its top level only, as Ultralytics and Detectron2's demo read one; images further
down are not predicted, but they are counted and named in one line, so that they are never left out
without a word. A pattern (an argument holding ``*``, ``?`` or ``[`` that is no existing file) is
expanded as Python's ``glob`` with ``recursive=True`` does (``'imgs/**/*.jpg'``: every JPEG under
``imgs``), sorted, and keeps the image files only. Quote it, or the shell expands it first (without
``**``'s recursion in bash by default).
"""

from __future__ import annotations

import glob
import sys
from collections import Counter
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
GLOB_CHARACTERS = frozenset("*?[")


def is_pattern(path: Path) -> bool:
    """Whether ``path`` is a glob pattern: a glob character in it, and no file or folder of that name."""
    return bool(GLOB_CHARACTERS & set(str(path))) and not path.exists()


def pattern_root(pattern: Path) -> Path:
    """The folder a pattern searches: its components before the first one holding a glob character
    (``imgs/**/*.png`` -> ``imgs``; ``*.png`` -> ``.``), the input an output must stay out of."""
    fixed = []
    for part in pattern.parts:
        if GLOB_CHARACTERS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def input_roots(inputs: list[Path]) -> list[Path]:
    """The files and folders the inputs read: each input, a pattern standing for its :func:`pattern_root`."""
    return [pattern_root(p) if is_pattern(p) else p for p in inputs]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def list_images(inputs: list[Path]) -> list[Path]:
    """The images to predict, in the order given (a folder's and a pattern's sorted); one line on stderr
    per folder that has images in sub-folders (not searched). DataError for an input that is neither a
    file, a folder nor a pattern matching an image, and when no image is found at all."""
    from segdet.errors import DataError

    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if is_image(q))
            _note_sub_folders(p)
        elif p.is_file():
            found.append(p)
        elif is_pattern(p):
            matched = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
            images = [m for m in matched if is_image(m)]
            if not images:
                kinds = ", ".join(sorted(IMAGE_SUFFIXES))
                what = f"{len(matched)} paths, none an image ({kinds})" if matched else "no file"
                raise DataError(f"the pattern matches {what}", p)
            found += images
        else:
            raise DataError("no such image file or folder (nor a pattern: no *, ? or [ in it)", p)
    if not found:
        raise DataError("no images found", ", ".join(map(str, inputs)))
    return found


def _note_sub_folders(folder: Path) -> None:
    """Say how many images the sub-folders of ``folder`` (at any depth) hold, when any: they are not read."""
    below = [q for sub in folder.iterdir() if sub.is_dir() for q in sub.rglob("*") if is_image(q)]
    if not below:
        return
    folders = {q.parent for q in below}
    suffix = Counter(q.suffix.lower() for q in below).most_common(1)[0][0]
    print(
        f"segdet: {len(below)} images in {len(folders)} sub-folders of {folder} not searched (give them, "
        f"or a pattern such as '{folder / '**' / ('*' + suffix)}')",
        file=sys.stderr,
    )
