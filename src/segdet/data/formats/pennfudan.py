"""Penn-Fudan pedestrians, and any dataset stored as instance-id PNGs in its layout.

Layout (Wang, Shi, Song, Shen, "Object Detection Combining Recognition and Segmentation", ACCV 2007;
the database's ``readme.txt``)::

    PNGImages/X.png          the images (other image extensions are accepted)
    PedMasks/X_mask.png      0 = background, value k = object k (one value per pedestrian)
    Annotation/X.txt         "PASCAL Annotation Version 1.00" text: labels and boxes per object
    classes.txt              (not the database's own) class names, for multi-class sets in this layout

Objects come from the mask: one per non-zero value ``k``, with ``mask = InstancePNG(X_mask.png, k)`` and
the tight box of its pixels (:func:`segdet.data.masks.bitmap_box`), so each mask is decoded once on
reading. The annotation file gives object ``k``'s class and is cross-checked: a count that differs, or a
box more than :data:`BOX_TOLERANCE` pixels from the mask's, is a warning. Without ``classes.txt`` the one
class is ``pedestrian`` (the database's labels are all ``PASpersonWalking``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from segdet.data.dataset import SegDetDataset
from segdet.data.formats.image_files import place_image
from segdet.data.formats.layout import (
    check_labels,
    image_suffix,
    instance_bitmaps,
    list_images,
    output_stems,
    paint_instance_ids,
    read_classes_txt,
    read_text,
    write_classes_txt,
)
from segdet.data.formats.pennfudan_text import PascalText, format_pascal_text, parse_pascal_text
from segdet.data.formats.report import WriteReport
from segdet.data.masks import bitmap_box, read_label_png
from segdet.data.palette import write_label_png
from segdet.data.structures import AnnotationSet, ImageRecord, Instance, InstancePNG
from segdet.data.validate import ProblemLog, check_box
from segdet.errors import DataError

__all__ = ["BOX_TOLERANCE", "PennFudan", "read", "write"]

logger = logging.getLogger("segdet.data")

DEFAULT_CLASSES = ["pedestrian"]
# Annotation boxes and mask boxes of the database agree within a pixel or two (hand-drawn boxes).
BOX_TOLERANCE = 2.0
MAX_ANNOTATION_BYTES = 1 << 20
HIDDEN = "with no visible pixel (covered by objects after it)"


def read(
    path: Path,
    *,
    images: Path | None = None,
    labels: Path | None = None,
    strict: bool = False,
    annotations: Path | None = None,
    split: str | None = None,
) -> AnnotationSet:
    """Read a Penn-Fudan root.

    Args:
        images: the image folder (default ``<root>/PNGImages``).
        labels: the instance-mask folder (default ``<root>/PedMasks``).
        annotations: the annotation text folder (default ``<root>/Annotation``; optional).
        split: refused: the layout has no splits (point ``images=`` / ``labels=`` at a subset instead).
        strict: raise :class:`DataError` on the first error instead of dropping the record.
    """
    root = Path(path)
    if split is not None:
        raise DataError(f"the Penn-Fudan layout has no splits (asked for {split!r})", root)
    if not root.is_dir():
        raise DataError("Penn-Fudan root folder not found", root)
    img_dir = Path(images) if images is not None else root / "PNGImages"
    mask_dir = Path(labels) if labels is not None else root / "PedMasks"
    ann_dir = Path(annotations) if annotations is not None else root / "Annotation"
    for folder, what in ((img_dir, "image"), (mask_dir, "mask")):
        if not folder.is_dir():
            raise DataError(f"{what} folder not found", folder)
    log = ProblemLog()
    classes_file = root / "classes.txt"
    has_classes = classes_file.is_file()
    classes = read_classes_txt(classes_file, log) if has_classes else list(DEFAULT_CLASSES)
    classify = _Classifier(classes, has_classes)

    records: list[ImageRecord] = []
    stems: set[str] = set()
    for number, image in enumerate(list_images(img_dir), start=1):
        stems.add(image.stem)
        record = _read_one(number, image, mask_dir, ann_dir, classify, log)
        if record is not None:
            records.append(record)
    for mask in sorted(mask_dir.glob("*_mask.png")):
        if mask.name[: -len("_mask.png")] not in stems:
            log.warning(mask, "", f"no image for this mask in {img_dir}; mask not used")
    dataset = AnnotationSet(records, classes, source=str(root))
    return log.finish(dataset, strict)


class _Classifier:
    """Maps an annotation label to a class: exact name, then any case; ``PASperson...`` (the database's
    labels) is ``pedestrian`` or ``person`` when such a class exists. Without ``classes.txt`` every
    object is a pedestrian."""

    def __init__(self, classes: list[str], from_file: bool) -> None:
        self.classes = classes
        self.from_file = from_file
        self.exact = {}
        self.folded = {}
        for i, name in enumerate(classes):
            self.exact.setdefault(name, i)
            self.folded.setdefault(name.casefold(), i)

    def __call__(self, label: str | None) -> int | str:
        """The class index, or why there is none."""
        if not self.from_file or (label is None and len(self.classes) == 1):
            return 0
        if label is None:
            return "the annotation file gives no label for it"
        found = self.exact.get(label, self.folded.get(label.casefold()))
        if found is None and label.casefold().startswith("pasperson"):
            found = self.folded.get("pedestrian", self.folded.get("person"))
        return found if found is not None else f"unknown class {label!r}"


def _read_one(
    number: int, image: Path, mask_dir: Path, ann_dir: Path, classify: _Classifier, log: ProblemLog
) -> ImageRecord | None:
    stem = image.stem
    mask_path = mask_dir / f"{stem}_mask.png"
    if not mask_path.is_file():
        log.error(image, f"image {stem}", f"no instance mask {mask_path.name} in {mask_dir}")
        return None
    try:
        ids = read_label_png(mask_path)
    except DataError as e:
        log.error(mask_path, f"image {stem}", e.problem)
        return None
    height, width = ids.shape
    text = _annotation(ann_dir / f"{stem}.txt", log)
    ann_path = ann_dir / f"{stem}.txt"

    values = _values_present(ids)
    if values[0] < 0:
        log.error(mask_path, f"image {stem}", f"negative mask values {values[values < 0][:5].tolist()}")
        return None
    instances = []
    for value in (int(v) for v in values if v > 0):
        record = f"object {value}"
        box = check_box(bitmap_box(ids == value), width, height, log, mask_path, record)
        label = classify(text.label(value) if text else None)
        if isinstance(label, str):
            log.error(ann_path, record, label if text else "no annotation file gives this object's class")
            continue
        if box is None:
            continue
        if text and value in text.boxes:
            given = text.boxes[value]
            if max(abs(a - b) for a, b in zip(given, box, strict=True)) > BOX_TOLERANCE:
                log.warning(
                    ann_path,
                    f"line {text.line_of[f'box {value}']}",
                    f"box of object {value} {_fmt(given)} differs from its mask's box {_fmt(box)} "
                    f"by more than {BOX_TOLERANCE:g} px",
                )
        instances.append(Instance(box, label, InstancePNG(mask_path, value)))
    if text:
        _cross_check(text, ann_path, [int(v) for v in values if v > 0], (width, height), log)
    return ImageRecord(number, image, width, height, instances, None, image.name)


def _values_present(ids: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a mask (a histogram when they are small: several times faster than
    ``np.unique``, which sorts or hashes every pixel)."""
    if ids.size == 0:
        return np.zeros(1, dtype=np.int64)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high > 65535:
        return np.unique(ids)
    return np.flatnonzero(np.bincount(ids.ravel(), minlength=1))


def _annotation(path: Path, log: ProblemLog) -> PascalText | None:
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_ANNOTATION_BYTES:
            log.warning(path, "", f"annotation file larger than {MAX_ANNOTATION_BYTES} bytes; not read")
            return None
    except OSError:
        pass
    text = read_text(path, log)
    return None if text is None else parse_pascal_text(text, path, log)


def _cross_check(text: PascalText, path: Path, values: list[int], size: tuple[int, int], log: ProblemLog):
    if text.count is not None and text.count != len(values):
        log.warning(
            path,
            f"line {text.line_of['count']}",
            f"{text.count} objects listed, the mask has {len(values)}",
        )
    for k in sorted(set(text.boxes) - set(values)):
        log.warning(path, f"line {text.line_of[f'box {k}']}", f"object {k} has no pixel in the mask")
    if text.size is not None and text.size != size:
        log.warning(
            path,
            f"line {text.line_of['size']}",
            f"image size {text.size[0]}x{text.size[1]} differs from the mask's {size[0]}x{size[1]}",
        )


def write(
    dataset: AnnotationSet,
    out: Path,
    *,
    copy_images: bool = True,
    link_images: bool = False,
    report: WriteReport | None = None,
) -> Path:
    """Write ``dataset`` in the Penn-Fudan layout at ``out``; returns ``out``.

    Object ``k`` of an image becomes value ``k`` of ``PedMasks/X_mask.png`` (8-bit grey, 16-bit beyond
    255 objects); where objects overlap the later one wins, and an object left with no visible pixel is
    dropped so that the values stay ``1..N`` (objects come from the mask in this layout: one without
    pixels cannot be written). An object without a mask is written as its box. Crowd regions have no
    form here and are left out. What is left out is counted in ``report`` (and logged). Boxes in
    ``Annotation/X.txt`` are the masks'. A label that is no class is refused.
    """
    out = Path(out)
    for name in dataset.classes:
        if '"' in name or "\n" in name:
            raise DataError(f"class name {name!r} cannot be written in a Penn-Fudan annotation file")
    check_labels(dataset)  # before anything is written
    report = report if report is not None else WriteReport()
    for record, stem in zip(dataset.images, output_stems(dataset.images), strict=True):
        image_name = f"{stem}{image_suffix(record)}"
        if copy_images:
            place_image(record.path, out / "PNGImages" / image_name, link=link_images)
        _write_masks(record, stem, image_name, dataset.classes, out, report)
    if list(dataset.classes) != DEFAULT_CLASSES:
        write_classes_txt(out / "classes.txt", list(dataset.classes))
    return out


def _write_masks(
    record: ImageRecord, stem: str, image_name: str, classes: list[str], out: Path, report: WriteReport
) -> None:
    instances = [o for o in record.instances if not o.iscrowd]
    if len(instances) < len(record.instances):
        n = len(record.instances) - len(instances)
        logger.warning("%s: %d crowd objects left out (Penn-Fudan has no crowd regions)", record.path, n)
        report.leave_out("crowd (Penn-Fudan has no crowd regions)", n)
    bitmaps = instance_bitmaps(record, instances)
    for k, (obj, bitmap) in enumerate(zip(instances, bitmaps, strict=True)):
        if bitmap is None:
            logger.warning("%s: object %d has no mask; its box is written as its mask", record.path, k + 1)
            report.note("objects without a mask have their box written as their mask")
            bitmaps[k] = _box_bitmap(obj.box, record.height, record.width)
    ids, visible = paint_instance_ids(record.height, record.width, bitmaps)
    kept = [k for k, n in enumerate(visible) if n > 0]
    report.objects += len(kept)
    for k, n in enumerate(visible):
        if n == 0:
            why = HIDDEN if bitmaps[k].any() else "with an empty mask"
            logger.warning("%s: object %d %s; not written", record.path, k + 1, why)
            report.leave_out(why)
    lookup = np.zeros(len(instances) + 1, dtype=np.int64)
    lookup[[k + 1 for k in kept]] = np.arange(1, len(kept) + 1)
    ids = lookup[ids]
    boxes = []
    for value in range(1, len(kept) + 1):
        x1, y1, x2, y2 = bitmap_box(ids == value)
        boxes.append((int(x1) + 1, int(y1) + 1, int(x2), int(y2)))  # 1-based inclusive
    mask_name = f"{stem}_mask.png"
    write_label_png(out / "PedMasks" / mask_name, ids)
    labels = [classes[instances[k].label] for k in kept]
    text = format_pascal_text(
        f"PNGImages/{image_name}", f"PedMasks/{mask_name}", record.width, record.height, labels, boxes
    )
    path = out / "Annotation" / f"{stem}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot write ({e})", path) from None


def _box_bitmap(box, height: int, width: int) -> np.ndarray:
    bitmap = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = (int(np.floor(v + 0.5)) for v in box)
    bitmap[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    return bitmap


def _fmt(box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


class PennFudan(SegDetDataset):
    """Penn-Fudan as a torch Dataset (instance masks on by default); arguments as :func:`read`, the rest
    as :class:`~segdet.data.dataset.SegDetDataset`."""

    def __init__(
        self,
        root: str | Path,
        *,
        images: Path | None = None,
        labels: Path | None = None,
        transforms=None,
        strict: bool = False,
        masks: bool = True,
    ) -> None:
        annotations = read(Path(root), images=images, labels=labels, strict=strict)
        super().__init__(annotations, transforms, masks=masks, strict=strict)
