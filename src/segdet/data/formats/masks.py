"""Mask folders for semantic segmentation: images and label PNGs paired by file stem.

Layouts found on their own (``images=`` / ``labels=`` override the folders)::

    <root>/images/X.jpg   <root>/labels/X.png          (``split=s``: images/s/ and labels/s/)
    <root>/train/X.png    <root>/trainannot/X.png      (CamVid as prepared for SegNet; ``split=`` picks
                                                        train (default), val or test)
    <root>/classes.txt                                 line i names label value i

Label PNGs hold class values (grey values, or palette indices for palette PNGs; the colours are never
used). A class named ``unlabelled``, ``unlabeled``, ``void`` or ``ignore`` (any case) is the ignore value:
``ignore_index`` is its value and it is not one of ``semantic_classes``. CamVid's ``classes.txt`` lists 11
classes and ``Unlabelled`` as value 11, so it reads as 11 classes with ``ignore_index = 11``. Giving
``ignore_index=`` turns the rule off: every line is a class, except a last line whose value is
``ignore_index`` (the form :func:`write` gives an ignore value right after the classes).

Reading lists files and image headers only; label values are checked by :func:`check_label_file`, which
the dataset checker calls, because decoding every label is slow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segdet.data.dataset import SegDetDataset
from segdet.data.formats.image_files import place_image
from segdet.data.formats.layout import (
    image_suffix,
    list_images,
    output_stems,
    read_classes_txt,
    write_classes_txt,
)
from segdet.data.formats.report import WriteReport
from segdet.data.io import image_size
from segdet.data.masks import read_label_png
from segdet.data.palette import write_label_png
from segdet.data.structures import AnnotationSet, ImageRecord
from segdet.data.validate import ProblemLog
from segdet.errors import DataError

__all__ = ["IGNORE_NAMES", "MaskFolder", "check_label_file", "read", "write"]

logger = logging.getLogger("segdet.data")

IGNORE_NAMES = frozenset({"unlabelled", "unlabeled", "void", "ignore"})
DEFAULT_IGNORE = 255
# The name written on the classes.txt line of an ignore value that directly follows the classes.
IGNORE_NAME = "Unlabelled"


def read(
    path: Path,
    *,
    images: Path | None = None,
    labels: Path | None = None,
    strict: bool = False,
    split: str | None = None,
    ignore_index: int | None = None,
    classes: list[str] | None = None,
    label_suffix: str = "",
) -> AnnotationSet:
    """Read a mask folder dataset.

    Args:
        images, labels: the image and label folders (relative paths are taken from ``path``).
        split: a sub-folder (``images/<split>``) or CamVid split (``<split>/`` + ``<split>annot/``).
        ignore_index: the label value to ignore; None: the value of an ignore-named class, else 255.
        classes: the class names (line i = value i) when the dataset has no ``classes.txt``.
        label_suffix: what label file stems add to their image's stem (``X.jpg`` <-> ``X_mask.png``).
        strict: raise :class:`DataError` on the first error instead of dropping the image.
    """
    root = Path(path)
    img_dir, lbl_dir = _folders(root, images, labels, split)
    log = ProblemLog()
    names = _class_names(root, classes, log)
    semantic_classes, ignore = _split_ignore(names, ignore_index, root / "classes.txt", log)

    label_files: dict[str, Path] = {}
    try:
        for p in sorted(lbl_dir.iterdir()):
            if p.suffix.lower() == ".png" and p.stem.endswith(label_suffix) and p.is_file():
                label_files[p.stem[: len(p.stem) - len(label_suffix)]] = p
    except OSError as e:
        raise DataError(f"cannot list the label folder ({e})", lbl_dir) from None

    records: list[ImageRecord] = []
    paired: set[str] = set()
    for number, image in enumerate(list_images(img_dir), start=1):
        stem = image.stem
        label = label_files.get(stem)
        if label is None:
            log.error(image, f"image {stem}", f"no label file {stem}{label_suffix}.png in {lbl_dir}")
            continue
        paired.add(stem)
        try:
            width, height = image_size(image)
        except DataError as e:
            log.error(image, f"image {stem}", e.problem)
            continue
        records.append(
            ImageRecord(number, image, width, height, [], label, image.relative_to(img_dir).as_posix())
        )
    for stem in sorted(label_files.keys() - paired):
        log.warning(label_files[stem], f"label {stem}", f"no image {stem}.* in {img_dir}; label not used")
    if not records and not log.problems:
        log.warning(img_dir, "", "no images found")

    dataset = AnnotationSet(
        records,
        list(semantic_classes),
        semantic_classes=list(semantic_classes),
        ignore_index=ignore,
        source=str(root),
    )
    return log.finish(dataset, strict)


def _folders(root: Path, images: Path | None, labels: Path | None, split: str | None) -> tuple[Path, Path]:
    def resolve(p: Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() or not (root / p).exists() else root / p

    if images is not None and labels is not None:
        found = resolve(images), resolve(labels)
    elif (root / "images").is_dir() and (root / "labels").is_dir():
        found = (root / "images", root / "labels")
        if split is not None:
            found = (found[0] / split, found[1] / split)
    elif (root / (split or "train")).is_dir() and (root / f"{split or 'train'}annot").is_dir():
        found = (root / (split or "train"), root / f"{split or 'train'}annot")
    elif not root.is_dir():
        raise DataError("dataset folder not found", root)
    else:
        raise DataError(
            "no mask-folder layout: expected images/ + labels/ or <split>/ + <split>annot/ "
            "(or give images= and labels=)",
            root,
        )
    img_dir = resolve(images) if images is not None else found[0]
    lbl_dir = resolve(labels) if labels is not None else found[1]
    for folder, what in ((img_dir, "image"), (lbl_dir, "label")):
        if not folder.is_dir():
            raise DataError(f"{what} folder not found", folder)
    return img_dir, lbl_dir


def _class_names(root: Path, classes: list[str] | None, log: ProblemLog) -> list[str]:
    if classes is not None:
        return [str(c) for c in classes]
    path = root / "classes.txt"
    if not path.is_file():
        raise DataError("classes.txt not found (line i names label value i); or pass classes=", path)
    return read_classes_txt(path, log)


def _split_ignore(
    names: list[str], ignore_index: int | None, path: Path, log: ProblemLog
) -> tuple[list[str], int]:
    """``(semantic_classes, ignore_index)`` from the names of values 0..n-1 (see the module docstring)."""
    if ignore_index is not None:
        if ignore_index == len(names) - 1:
            return names[:-1], ignore_index
        return names, ignore_index
    ignored = [i for i, name in enumerate(names) if name.lower() in IGNORE_NAMES]
    if not ignored:
        return names, DEFAULT_IGNORE
    value = ignored[-1] if ignored[-1] == len(names) - 1 else ignored[0]
    for other in ignored:
        if other != value:
            log.warning(path, f"line {other + 1}", f"second ignore class {names[other]!r} read as a class")
    if value != len(names) - 1:
        # Dropping a name from the middle would renumber the classes after it, so it stays listed.
        log.warning(
            path,
            f"line {value + 1}",
            f"ignore class {names[value]!r} is not the last line; value {value} is ignored, its name kept",
        )
        return names, value
    return names[:-1], value


def check_label_file(path: Path, width: int, height: int, num_classes: int, ignore_index: int) -> list[str]:
    """What is wrong with one label PNG: unreadable, not ``width x height``, or values outside
    ``0..num_classes-1`` other than ``ignore_index``. Empty when it is fine. Decodes the file."""
    try:
        values = read_label_png(Path(path))
    except DataError as e:
        return [e.problem]
    problems = []
    if values.shape != (height, width):
        problems.append(f"label is {values.shape[1]}x{values.shape[0]}, image is {width}x{height}")
    present = np.unique(values)
    bad = present[((present < 0) | (present >= num_classes)) & (present != ignore_index)]
    if len(bad):
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        problems.append(
            f"label values {shown} are outside the {num_classes} classes (0..{num_classes - 1}) "
            f"and not the ignore value {ignore_index}"
        )
    return problems


def write(
    dataset: AnnotationSet,
    out: Path,
    *,
    copy_images: bool = True,
    link_images: bool = False,
    report: WriteReport | None = None,
) -> Path:
    """Write ``images/``, ``labels/`` (grey PNGs, values kept exactly) and ``classes.txt`` under ``out``.
    Objects have no form here (:func:`segdet.data.formats.write_dataset` counts them as left out in
    ``report``).

    ``classes.txt`` lists ``semantic_classes``, followed by an ``Unlabelled`` line when ``ignore_index``
    is the value right after them, so that the ignore value reads back (CamVid's form). An ignore value
    elsewhere (255 by default) is not written down; another than 255 must be given again to
    :func:`read`. An image without a semantic mask gets a label of ignore values only.
    """
    out = Path(out)
    names = list(dataset.semantic_classes)
    if dataset.ignore_index == len(names):
        names.append(IGNORE_NAME)
    elif dataset.ignore_index != DEFAULT_IGNORE:
        logger.warning(
            "ignore_index %d is not recorded by the mask-folder layout; read with ignore_index=%d",
            dataset.ignore_index,
            dataset.ignore_index,
        )
    for record, stem in zip(dataset.images, output_stems(dataset.images), strict=True):
        if copy_images:
            place_image(record.path, out / "images" / f"{stem}{image_suffix(record)}", link=link_images)
        if record.semantic is None:
            logger.warning(
                "%s: no semantic mask; written as ignore (%d) only", record.path, dataset.ignore_index
            )
            values = np.full((record.height, record.width), dataset.ignore_index, dtype=np.int64)
        elif isinstance(record.semantic, np.ndarray):
            values = record.semantic
        else:
            values = read_label_png(record.semantic)
        if values.shape != (record.height, record.width):
            where = record.semantic if isinstance(record.semantic, Path) else record.path
            raise DataError(
                f"label mask is {values.shape[1]}x{values.shape[0]}, image is {record.width}x{record.height}",
                where,
            )
        write_label_png(out / "labels" / f"{stem}.png", values)
    write_classes_txt(out / "classes.txt", names)
    return out


class MaskFolder(SegDetDataset):
    """A mask folder as a torch Dataset with ``target["semantic"]``; arguments as :func:`read`, the rest
    as :class:`~segdet.data.dataset.SegDetDataset`."""

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        images: Path | None = None,
        labels: Path | None = None,
        transforms=None,
        strict: bool = False,
        ignore_index: int | None = None,
        classes: list[str] | None = None,
        label_suffix: str = "",
    ) -> None:
        annotations = read(
            Path(root),
            images=images,
            labels=labels,
            strict=strict,
            split=split,
            ignore_index=ignore_index,
            classes=classes,
            label_suffix=label_suffix,
        )
        super().__init__(annotations, transforms, semantic=True, strict=strict)
