"""Readers and writers of the annotation formats, by the names the command line uses.

Every format module provides::

    read(path, *, images=None, labels=None, strict=False, **options) -> AnnotationSet
    write(dataset, out, **options) -> Path   # a complete dataset in the format's usual layout;
                                             # the returned path is what ``read`` takes back;
                                             # images are copied (``link_images=True``: hard links)

``path`` is what users point at: the JSON file for ``coco`` (a folder holding
``annotations/*.json`` works too), the dataset's root folder for the others (for ``yolo`` its
``data.yaml`` or ``classes.txt`` works too). ``images`` and ``labels`` override the folders a layout
implies. Writers take ``report=`` (:class:`~segdet.data.formats.report.WriteReport`) and count in it what
they wrote and what they left out. Names read from annotation files (image file names, ``data.yaml``
folders) must stay inside the folder they are relative to (:func:`segdet.data.paths.confined`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from segdet.data.formats.report import WriteReport
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


# What each format can hold: "objects" (boxes, instance masks) and / or "semantic" (semantic masks).
HOLDS: dict[str, tuple[str, ...]] = {
    "coco": ("objects",),
    "voc": ("objects", "semantic"),
    "yolo": ("objects",),
    "masks": ("semantic",),
    "pennfudan": ("objects",),
}


def format_module(name: str) -> ModuleType:
    if name not in FORMATS:
        raise DataError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def read_dataset(fmt: str, path: str | Path, **options) -> AnnotationSet:
    """Read a dataset of format ``fmt`` (see :data:`FORMATS`)."""
    return format_module(fmt).read(Path(path), **options)


def write_dataset(
    fmt: str, dataset: AnnotationSet, out: str | Path, *, report: WriteReport | None = None, **options
) -> Path:
    """Write ``dataset`` in format ``fmt`` under ``out``; returns the path ``read_dataset`` takes.

    A dataset whose annotations ``fmt`` cannot hold at all is refused (:func:`check_writable`); what it
    holds in part, and what the writer leaves out, is counted in ``report``.
    """
    module = format_module(fmt)
    report = report if report is not None else WriteReport()
    check_writable(fmt, dataset, report)
    return module.write(dataset, Path(out), report=report, **options)


def check_writable(fmt: str, dataset: AnnotationSet, report: WriteReport | None = None) -> None:
    """Refuse (:class:`DataError`) to write ``dataset`` as ``fmt`` when the format can hold none of its
    annotations: semantic masks only to an object format, objects only to ``masks``; every label would
    be lost. When it holds one kind and the dataset has both, the other is counted in ``report`` as left
    out. A dataset without annotations (a list of images) is written as it is."""
    format_module(fmt)
    holds = HOLDS[fmt]
    semantic = sum(r.semantic is not None for r in dataset.images)
    objects = dataset.num_instances
    if semantic and "semantic" not in holds:
        others = ", ".join(f for f, h in HOLDS.items() if "semantic" in h)
        if not objects:
            raise DataError(
                f"{fmt} cannot hold semantic masks, this dataset's only annotations: every label would be "
                f"lost; formats that hold them: {others}",
                dataset.source or None,
            )
        if report is not None:
            report.semantic_left_out = semantic
            report.semantic_reason = f"{fmt} has no semantic masks (formats that hold them: {others})"
    if objects and "objects" not in holds:
        others = ", ".join(f for f, h in HOLDS.items() if "objects" in h)
        if not semantic:
            raise DataError(
                f"{fmt} holds semantic masks only and this dataset has objects only: every label would be "
                f"lost; formats that hold objects: {others}",
                dataset.source or None,
            )
        if report is not None:
            report.leave_out(
                f"objects ({fmt} holds semantic masks only; formats that hold objects: {others})", objects
            )


def detect_format(path: str | Path) -> str:
    """Guess the format of a dataset from its usual layout (what ``--format`` may leave out).

    A JSON file is ``coco``; a YAML file (``data.yaml``) is ``yolo``, and so is a ``classes.txt`` beside a
    ``labels/`` folder of text files (YOLO's Darknet form: the YOLO reader takes these files themselves).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        if path.name.lower() == "classes.txt" and _has_text_labels(path.parent):
            return "yolo"
        raise DataError(
            f"cannot tell the dataset's format from this file; give the dataset's folder ({path.parent}) "
            "or --format",
            path,
        )
    if any(path.glob("annotations/*.json")):
        return "coco"
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


def _has_text_labels(root: Path) -> bool:
    """Whether ``root/labels`` holds a ``.txt`` file (stops at the first one)."""
    labels = root / "labels"
    return labels.is_dir() and next(labels.rglob("*.txt"), None) is not None
