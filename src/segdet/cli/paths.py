"""Paths on the command line: arguments without NUL bytes, and output files and folders that never
replace a user's files.

Rules every command follows for what it writes:

* an output folder (``--out DIR``) must be absent or empty, unless ``--overwrite`` is given; an output
  file (``--out FILE.json``) must be absent, unless ``--overwrite``;
* a folder where a file is expected (or the reverse) is refused, as is an output that is, contains or
  lies inside one of the command's inputs, whatever the flags (a dataset or a folder of input images is
  never written into: ``predict imgs --out imgs/out`` is refused like ``--out imgs``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from segdet.data.paths import is_within
from segdet.errors import SegdetError


def path_arg(text: str) -> Path:
    """``type=`` of every path argument: a usage error (exit status 2) for a path the operating system
    cannot take, instead of a ``ValueError`` deep inside."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} has a NUL byte")
    return Path(text)


def add_overwrite(parser: argparse.ArgumentParser, what: str = "the --out folder or file") -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"write into {what} even if it exists and is not empty (files of the same name are replaced)",
    )


def _check_sources(out: Path, sources: Iterable[Path | None], what: str) -> None:
    for source in sources:
        if source is None:
            continue
        if is_within(source, out) or is_within(out, source):
            raise SegdetError(
                f"{out}: {what} overlaps the input {source}; outputs never go into the data they are "
                "made from: choose another folder"
            )


def output_dir(
    out: Path,
    *,
    overwrite: bool,
    sources: Iterable[Path | None] = (),
    what: str = "--out",
) -> Path:
    """Create (or accept) the output folder ``out`` under the rules of the module docstring."""
    if out.exists() and not out.is_dir():
        raise SegdetError(f"{out}: {what} is a file; a folder is expected here")
    _check_sources(out, sources, what)
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise SegdetError(
            f"{out}: {what} exists and is not empty; choose another folder or give --overwrite "
            "(files of the same name are replaced)"
        )
    _mkdir(out, what)
    return out


def output_file(
    path: Path, *, overwrite: bool, sources: Iterable[Path | None] = (), what: str = "--out"
) -> Path:
    """Make ready to write the file ``path`` under the rules of the module docstring."""
    if path.is_dir():
        raise SegdetError(f"{path}: {what} is a folder; a file name is expected here")
    _check_sources(path, sources, what)
    if path.exists() and not overwrite:
        raise SegdetError(f"{path}: {what} exists; choose another name or give --overwrite to replace it")
    _mkdir(path.parent, what)
    return path


def _mkdir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SegdetError(f"{folder}: cannot create the folder for {what}: a file is in the way") from None
    except OSError as e:
        raise SegdetError(f"{folder}: cannot create the folder for {what} ({e.strerror or e})") from None


def dataset_sources(dataset, *given: Path | None) -> list[Path]:
    """The folders a read dataset comes from: those given (its path, ``--images``, ``--labels``; a file
    stands for its folder, a COCO JSON in ``annotations/`` for the folder above) and every folder one of
    its image or mask files is in."""
    folders: set[Path] = set()
    for p in given:
        if p is None:
            continue
        p = Path(p)
        if p.is_file():
            p = p.parent.parent if p.parent.name == "annotations" else p.parent
        folders.add(p)
    for record in dataset.images:
        folders.add(record.path.parent)
        if isinstance(record.semantic, Path):
            folders.add(record.semantic.parent)
        for inst in record.instances:
            mask_path = getattr(inst.mask, "path", None)
            if mask_path is not None:
                folders.add(Path(mask_path).parent)
    return sorted(folders)
