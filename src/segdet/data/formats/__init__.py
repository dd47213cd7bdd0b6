"""Readers and writers of the annotation formats, by the names the command line uses.

Every format module provides::

    read(path, *, images=None, labels=None, strict=False, **options) -> AnnotationSet
    write(dataset, out, **options) -> Path   # a complete dataset in the format's usual layout;
                                             # the returned path is what ``read`` takes back;
                                             # images are copied (``link_images=True``: hard links)

``path`` is what users point at: the JSON file for ``coco`` (a folder holding
``annotations/*.json`` works too), the dataset's root folder for the others. ``images`` and ``labels``
override the folders a layout implies. Names read from annotation files (image file names, ``data.yaml``
folders) must stay inside the folder they are relative to (:func:`segdet.data.paths.confined`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from segdet.data.structures import AnnotationSet
from segdet.errors import DataError

# name on the command line -> module implementing read() and write()
FORMATS: dict[str, str] = {
    "coco": "segdet.data.formats.coco",
    "voc": "segdet.data.formats.voc",
    "yolo": "segdet.data.formats.yolo",
    "masks": "segdet.data.formats.masks",
    "pennfudan": "segdet.data.formats.pennfudan",
}


def format_module(name: str) -> ModuleType:
    if name not in FORMATS:
        raise DataError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def read_dataset(fmt: str, path: str | Path, **options) -> AnnotationSet:
    """Read a dataset of format ``fmt`` (see :data:`FORMATS`)."""
    return format_module(fmt).read(Path(path), **options)


def write_dataset(fmt: str, dataset: AnnotationSet, out: str | Path, **options) -> Path:
    """Write ``dataset`` in format ``fmt`` under ``out``; returns the path ``read_dataset`` takes."""
    return format_module(fmt).write(dataset, Path(out), **options)


def detect_format(path: str | Path) -> str:
    """Guess the format of a dataset from its usual layout (what ``--format`` may leave out)."""
    path = Path(path)
    if path.suffix.lower() == ".json" or (path.is_dir() and any(path.glob("annotations/*.json"))):
        return "coco"
    if path.is_dir():
        if (path / "Annotations").is_dir() or (path / "SegmentationClass").is_dir():
            return "voc"
        if (path / "PedMasks").is_dir():
            return "pennfudan"
        if (path / "data.yaml").is_file() or (
            (path / "labels").is_dir() and not (path / "classes.txt").is_file()
        ):
            return "yolo"
        if (path / "classes.txt").is_file():
            return "masks"
    raise DataError("cannot tell the dataset's format from its layout; give --format", path)
