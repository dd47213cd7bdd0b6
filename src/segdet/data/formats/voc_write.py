"""Writing an :class:`~segdet.data.structures.AnnotationSet` as a Pascal VOC root (see
:mod:`segdet.data.formats.voc` for the layout).

VOC stores integer pixel indices, so boxes are rounded (:func:`voc_box`). Masks become palette PNGs in
the VOC palette: ``SegmentationClass`` from each image's semantic mask (its ignore value written as VOC's
255) and ``SegmentationObject`` from the instance masks (value ``k`` = the ``k``-th written object; where
objects overlap the later one wins). VOC's 255 band around objects is not drawn: it marks pixels the
annotators left undecided, which a converted dataset does not have.

Semantic values: VOC's ``SegmentationClass`` value 0 is ``background`` and value ``c`` is class ``c - 1``
(``semantic_classes == ["background", *classes]``, what the reader assumes). A dataset whose semantic
classes are anything else (a mask folder's, e.g. CamVid's 11 classes, where value 0 is ``Sky``) keeps its
values as they are, and ``segmentation_classes.txt`` (not VOC's own, like ``classes.txt``) names them, one
line per value: the reader takes the names from it, so the dataset reads back with the same classes.
Values are not shifted by one to make room for a background: that would add a class the dataset does
not have.

Objects without pixels: an object with no visible pixel (entirely covered by objects written after it),
an object without a mask among objects with masks, and objects after the 254th of an image (a palette PNG
has values 1..254 for objects) keep their ``<object>`` (their box) but get no ``SegmentationObject``
value: their ``<object>`` says ``<segmented>0</segmented>`` (not VOC's own element; other readers ignore
it) and the reader gives them no mask. Value ``k`` stays the ``k``-th ``<object>`` for the others, as the
devkit defines it. ``segdet data check`` reports an ``<object>`` without pixels as an error unless it is
marked so. Objects that lose their mask this way are counted in the report (``segdet data convert`` says
how many).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from segdet.data.formats.image_files import place_image
from segdet.data.formats.layout import (
    check_labels,
    image_suffix,
    instance_bitmaps,
    output_stems,
    paint_instance_ids,
    write_classes_txt,
)
from segdet.data.formats.report import WriteReport
from segdet.data.masks import read_label_png
from segdet.data.palette import write_palette_png
from segdet.data.structures import AnnotationSet, Box, ImageRecord, Instance
from segdet.errors import DataError

logger = logging.getLogger("segdet.data")

VOC_IGNORE = 255
MAX_OBJECT_VALUE = 254  # SegmentationObject values 1..254 are objects; 255 is void
# Names the semantic values when they are not VOC's "background" + the classes (see the docstring).
SEGMENTATION_CLASSES = "segmentation_classes.txt"
HIDDEN = "with no visible pixel (covered by objects after it)"


def voc_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A continuous ``xyxy`` box as VOC's 1-based inclusive integer ``(xmin, ymin, xmax, ymax)``.

    ``xmin = round(x1) + 1, ymin = round(y1) + 1, xmax = round(x2), ymax = round(y2)`` (halves rounded
    up), kept inside the image and at least one pixel wide and high. It inverts the reader's
    ``x1 = xmin - 1, x2 = xmax`` exactly for boxes on whole pixels.
    """
    x1, y1, x2, y2 = (math.floor(v + 0.5) for v in box)
    xmin, ymin = min(max(x1 + 1, 1), width), min(max(y1 + 1, 1), height)
    xmax, ymax = min(max(x2, xmin), width), min(max(y2, ymin), height)
    return xmin, ymin, xmax, ymax


def write(
    dataset: AnnotationSet,
    out: Path,
    *,
    copy_images: bool = True,
    link_images: bool = False,
    report: WriteReport | None = None,
) -> Path:
    """Write ``dataset`` as a VOC root at ``out``; returns ``out`` (what :func:`voc.read` takes).

    Images are copied (``copy_images``; hard-linked with ``link_images``) into ``JPEGImages/``
    under their own extension;
    every image is listed in ``ImageSets/Main/all.txt``, those with masks in
    ``ImageSets/Segmentation/all.txt``. ``classes.txt`` is written when the classes are not VOC's 20,
    ``segmentation_classes.txt`` when the semantic classes are not ``background`` + the classes (module
    docstring). Crowd objects have no VOC form and are left out; objects without visible pixels are
    written without a mask (module docstring); both are counted in ``report``. A label that is no class is
    refused.
    """
    from segdet.data.formats.voc import VOC_CLASSES

    check_labels(dataset)  # before anything is written
    report = report if report is not None else WriteReport()
    out = Path(out)
    any_semantic = any(r.semantic is not None for r in dataset.images)
    stems = output_stems(dataset.images)
    with_masks: list[str] = []
    for record, stem in zip(dataset.images, stems, strict=True):
        image_name = stem + image_suffix(record)
        if copy_images:
            place_image(record.path, out / "JPEGImages" / image_name, link=link_images)
        instances = [o for o in record.instances if not o.iscrowd]
        if len(instances) < len(record.instances):
            n = len(record.instances) - len(instances)
            logger.warning("%s: %d crowd objects left out (VOC has no crowd regions)", record.path, n)
            report.leave_out("crowd (VOC has no crowd regions)", n)
        has_semantic = _write_semantic(
            record, dataset.ignore_index, out / "SegmentationClass" / f"{stem}.png"
        )
        segmented = _write_objects(record, instances, out / "SegmentationObject" / f"{stem}.png", report)
        if has_semantic or segmented is not None:
            with_masks.append(stem)
        xml = _annotation_xml(record, instances, image_name, dataset.classes, has_semantic, segmented)
        _write_xml(xml, out / "Annotations" / f"{stem}.xml")
        report.objects += len(instances)

    _write_list(out / "ImageSets" / "Main" / "all.txt", stems)
    if with_masks:
        _write_list(out / "ImageSets" / "Segmentation" / "all.txt", with_masks)
    if list(dataset.classes) != list(VOC_CLASSES):
        write_classes_txt(out / "classes.txt", list(dataset.classes))
    if any_semantic and list(dataset.semantic_classes) != ["background", *dataset.classes]:
        write_classes_txt(out / SEGMENTATION_CLASSES, list(dataset.semantic_classes))
    return out


def _annotation_xml(
    record: ImageRecord,
    instances: list[Instance],
    image_name: str,
    classes: list[str],
    has_semantic: bool,
    segmented: list[bool] | None,
) -> ET.Element:
    """The XML of one image; ``segmented`` (when a SegmentationObject PNG is written) says which objects
    have a value in it: the others get ``<segmented>0</segmented>``."""
    root = ET.Element("annotation")
    _sub(root, "folder", "VOC")
    _sub(root, "filename", image_name)
    _sub(_sub(root, "source"), "database", "segdet")
    size = _sub(root, "size")
    _sub(size, "width", str(record.width))
    _sub(size, "height", str(record.height))
    _sub(size, "depth", "3")
    _sub(root, "segmented", "1" if has_semantic or segmented is not None else "0")
    for k, obj in enumerate(instances):
        element = _sub(root, "object")
        _sub(element, "name", classes[obj.label])
        _sub(element, "pose", "Unspecified")
        _sub(element, "truncated", "0")
        _sub(element, "difficult", "1" if obj.difficult else "0")
        if segmented is not None and not segmented[k]:
            _sub(element, "segmented", "0")
        box = _sub(element, "bndbox")
        corners = voc_box(obj.box, record.width, record.height)
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), corners, strict=True):
            _sub(box, key, str(value))
    return root


def _write_semantic(record: ImageRecord, ignore_index: int, path: Path) -> bool:
    if record.semantic is None:
        return False
    values = record.semantic if isinstance(record.semantic, np.ndarray) else read_label_png(record.semantic)
    if values.shape != (record.height, record.width):
        raise DataError(
            f"label mask is {values.shape[1]}x{values.shape[0]}, image is {record.width}x{record.height}",
            record.semantic if isinstance(record.semantic, Path) else record.path,
        )
    values = np.where(values == ignore_index, VOC_IGNORE, values)
    write_palette_png(path, values)
    return True


def _write_objects(
    record: ImageRecord, instances: list[Instance], path: Path, report: WriteReport
) -> list[bool] | None:
    """The SegmentationObject PNG of an image with at least one visible object mask: object ``k`` is
    value ``k``. Returns, per object, whether it has pixels in it (None when no PNG is written)."""
    if not instances or all(o.mask is None for o in instances):
        return None
    h, w = record.height, record.width
    paintable = [o.mask is not None and k < MAX_OBJECT_VALUE for k, o in enumerate(instances)]
    bitmaps = instance_bitmaps(record, [o for o, p in zip(instances, paintable, strict=True) if p])
    it = iter(bitmaps)
    empty = np.zeros((h, w), dtype=bool)
    per_object = [next(it) if p else empty for p in paintable]
    ids, visible = paint_instance_ids(h, w, per_object)
    segmented = [n > 0 for n in visible]
    for k, (p, n) in enumerate(zip(paintable, visible, strict=True)):
        if p and n == 0:
            why = HIDDEN if per_object[k].any() else "with an empty mask"
            logger.warning("%s: object %d %s: written without a mask", record.path, k + 1, why)
            report.drop_mask(why)
        elif not p and instances[k].mask is None:
            logger.info("%s: object %d has no mask: <segmented>0</segmented>", record.path, k + 1)
    beyond = sum(o.mask is not None for o in instances[MAX_OBJECT_VALUE:])
    if beyond:
        logger.warning(
            "%s: %d objects after the %dth have no SegmentationObject value; written without a mask",
            record.path,
            beyond,
            MAX_OBJECT_VALUE,
        )
        report.drop_mask(f"after the {MAX_OBJECT_VALUE}th object of an image (no palette value left)", beyond)
    if not any(segmented):
        return None  # every mask empty: no PNG, and no object needs a mark
    write_palette_png(path, ids)
    return segmented


def _write_xml(root: ET.Element, path: Path) -> None:
    ET.indent(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)
    except OSError as e:
        raise DataError(f"cannot write ({e})", path) from None


def _write_list(path: Path, stems: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s}\n" for s in stems), encoding="utf-8")


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element
