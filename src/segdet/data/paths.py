"""Paths named inside annotation files, kept inside the folder they are relative to.

An annotation file names its images (COCO's ``file_name``, VOC's ``<filename>``, YOLO's ``data.yaml``
``path`` and split folders) and a writer lays files out under those names. A hostile or careless name
(``../../etc/passwd``, ``/etc/passwd``, a NUL byte) would make a reader read, or a writer write, a file
outside the dataset. :func:`confined` is the one check every reader and writer applies.

The check is on the path as written (``os.path.normpath`` of root joined with name): a name may wander
(``a/../b.jpg``, an absolute path into the root) as long as it ends inside the root. Symbolic links
are followed, not resolved: a dataset whose image folder is a link to another disk is the author's
layout, not an escape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segdet.errors import DataError


def confined(
    root: str | os.PathLike, name: object, *, what: str = "file name", file: object = None, record: str = ""
) -> Path:
    """``root / name`` when that path stays inside ``root``; :class:`DataError` otherwise.

    Refused: a name that is not a non-empty string, holds a NUL or another control character, is
    absolute outside ``root``, climbs out with ``..`` or names ``root`` itself. Backslashes count as
    separators (Windows tools write them). The path returned is ``root`` joined with the normalised
    relative part, so it is relative when ``root`` is.
    """
    if not isinstance(name, str) or not name:
        raise DataError(f"{what} {name!r} is not a non-empty string", file, record or None)
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise DataError(f"{what} {name!r} has control characters", file, record or None)
    base = os.path.abspath(root)
    joined = os.path.normpath(os.path.join(base, name.replace("\\", "/")))
    if joined == base or not joined.startswith(base.rstrip(os.sep) + os.sep):
        raise DataError(f"{what} {name!r} leads outside {root}", file, record or None)
    return Path(root) / os.path.relpath(joined, base)


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (symbolic links resolved on both sides)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def distinct_stems(paths: Sequence[Path]) -> list[str]:
    """A file stem per path, distinct from the others: the stem itself, then (for ``a.png`` beside
    ``a.jpg``) the stem with the extension appended (``a_jpg``), then a number (``a_jpg_2``) for the same
    name in another folder. Outputs named by them never overwrite each other."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    used: set[str] = set()
    out: list[str] = []
    for p in paths:
        stem = p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}".rstrip("_")
        candidate, n = stem, 2
        while candidate in used:
            candidate, n = f"{stem}_{n}", n + 1
        used.add(candidate)
        out.append(candidate)
    return out
