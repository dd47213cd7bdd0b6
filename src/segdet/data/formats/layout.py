"""Helpers shared by the formats stored as a folder tree (VOC, mask folders, Penn-Fudan, YOLO).

They read and write ``classes.txt`` (one class name per line; line ``i`` names class / value ``i``), find
an image by its stem, place images in a written dataset (copy or hard link), choose file stems for the
records a writer writes and check, before a writer writes, that every object's label names a class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segdet.data.masks import mask_to_bitmap, read_label_png
from segdet.data.structures import AnnotationSet, ImageRecord, Instance, InstancePNG
from segdet.data.validate import ProblemLog
from segdet.errors import DataError

logger = logging.getLogger("segdet.data")

# Extensions of the images the folder formats pair with their annotations, in order of preference.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Longest classes.txt we accept: far more classes than any dataset has, small enough to stop a
# mistaken multi-gigabyte file from being read into memory.
MAX_CLASSES_BYTES = 1 << 20


def read_text(path: Path, log: ProblemLog | None = None, record: str = "") -> str | None:
    """A small text file's contents (UTF-8, a BOM allowed).

    Returns None when it cannot be read or decoded, after logging an error in ``log``; without a log
    raises :class:`DataError` instead.
    """
    try:
        data = Path(path).read_bytes()
        return data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        problem = "file is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else f"cannot read ({e})"
        if log is None:
            raise DataError(problem, path, record or None) from None
        log.error(path, record, problem)
        return None


def read_classes_txt(path: Path, log: ProblemLog) -> list[str]:
    """Class names from ``classes.txt``, line ``i`` naming class ``i``.

    Surrounding white space and trailing empty lines are dropped. An empty line in the middle keeps
    its place (it is named ``class_<i>``) and a repeated name is reported; both are errors, so strict
    loading refuses the file. A file that is not text or names no class raises :class:`DataError`:
    nothing can be read without the class list.
    """
    try:
        if Path(path).stat().st_size > MAX_CLASSES_BYTES:
            raise DataError(f"classes file is larger than {MAX_CLASSES_BYTES} bytes", path)
    except OSError as e:
        raise DataError(f"cannot read classes file ({e})", path) from None
    text = read_text(path)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError("classes file names no class", path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(lines):
        record = f"line {i + 1}"
        if not name:
            log.error(path, record, f"empty class name for value {i}")
            name = f"class_{i}"
        elif any(not c.isprintable() for c in name):
            log.error(path, record, f"class name {name!r} has control characters")
        if name in seen:
            log.error(path, record, f"class name {name!r} repeats line {seen[name] + 1}")
        seen.setdefault(name, i)
        names.append(name)
    return names


def write_classes_txt(path: Path, names: list[str]) -> None:
    """Write one class name per line (the inverse of :func:`read_classes_txt`)."""
    for name in names:
        if not name.strip() or "\n" in name or "\r" in name:
            raise DataError(f"class name {name!r} cannot be written one per line", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")


def check_labels(dataset: AnnotationSet) -> None:
    """Raise :class:`DataError` (naming the dataset's source and the image) at the first object whose
    label is not a class index ``0..K-1`` of ``dataset.classes``, crowd objects included.

    Writers name classes by ``classes[label]`` or write the label as a class id: without this check a label
    of ``K`` or more ends in an ``IndexError`` or in a file its own class list does not cover, and ``-1``
    silently names the last class.
    """
    k = len(dataset.classes)
    for record in dataset.images:
        for obj in record.instances:
            label = obj.label
            if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < k:
                raise DataError(
                    f"label {label} is outside the class list (0..{k - 1})",
                    dataset.source,
                    f"image id={record.id}",
                )


def find_image(folder: Path, stem: str) -> Path | None:
    """The image ``folder/<stem>.<ext>`` for the first known extension that exists, or None."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as e:
        raise DataError(f"cannot list the folder ({e})", folder) from None


def output_stems(records: list[ImageRecord]) -> list[str]:
    """A distinct file stem per record for a written dataset.

    The stem is the record's ``file_name`` without its extension, sub-folders joined by ``_`` (VOC and
    Penn-Fudan keep all images in one folder); when two records would share a stem, the record id is
    appended to the later ones.
    """
    stems: list[str] = []
    used: set[str] = set()
    for record in records:
        stem = Path(record.file_name or record.path.name).with_suffix("").as_posix().replace("/", "_")
        stem = stem.lstrip("._") or f"image_{record.id}"
        if stem in used:
            stem = f"{stem}_{record.id}"
            n = 1
            while stem in used:
                stem, n = f"{stem}_{n}", n + 1
        used.add(stem)
        stems.append(stem)
    return stems


def image_suffix(record: ImageRecord) -> str:
    """The extension the record's image file keeps when written (``.jpg`` when it has none)."""
    suffix = record.path.suffix.lower()
    return suffix if suffix else ".jpg"


def instance_bitmaps(record: ImageRecord, instances: list[Instance]) -> list[np.ndarray | None]:
    """Each instance's mask decoded to an ``H x W`` bool array (None for an object without a mask).

    Instance-id PNGs shared by several objects are decoded once.
    """
    h, w = record.height, record.width
    cache: dict[Path, np.ndarray] = {}
    out: list[np.ndarray | None] = []
    for obj in instances:
        if obj.mask is None:
            out.append(None)
        elif isinstance(obj.mask, InstancePNG):
            if obj.mask.path not in cache:
                cache[obj.mask.path] = read_label_png(obj.mask.path)
            ids = cache[obj.mask.path]
            if ids.shape != (h, w):
                raise DataError(f"mask is {ids.shape[1]}x{ids.shape[0]}, image is {w}x{h}", obj.mask.path)
            out.append(ids == obj.mask.value)
        else:
            out.append(mask_to_bitmap(obj.mask, h, w))
    return out


def paint_instance_ids(height: int, width: int, bitmaps: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """An instance-id image: pixels of ``bitmaps[k]`` get value ``k + 1``, 0 elsewhere.

    Where objects overlap the later one wins (it is painted last), as in VOC's ``SegmentationObject``.
    Returns the image and, per object, how many of its pixels are still visible.
    """
    ids = np.zeros((height, width), dtype=np.int64)
    for k, bitmap in enumerate(bitmaps):
        ids[bitmap] = k + 1
    visible = np.bincount(ids.ravel(), minlength=len(bitmaps) + 1)[1:]
    return ids, [int(v) for v in visible]
