"""Writing an :class:`~segdet.data.structures.AnnotationSet` as a Pascal VOC root (see
:mod:`segdet.data.formats.voc` for the layout).

VOC stores integer pixel indices, so boxes are rounded (:func:`voc_box`). Masks become palette PNGs in
the VOC palette: ``SegmentationClass`` from each image's semantic mask (its ignore value written as VOC's
255) and ``SegmentationObject`` from the instance masks (value ``k`` = the ``k``-th written object; where
objects overlap the later one wins). VOC's 255 band around objects is not drawn: it marks pixels the
annotators left undecided, which a converted dataset does not have.
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
from segdet.data.masks import read_label_png
from segdet.data.palette import write_palette_png
from segdet.data.structures import AnnotationSet, Box, ImageRecord, Instance
from segdet.errors import DataError

logger = logging.getLogger("segdet.data")

VOC_IGNORE = 255


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


def write(dataset: AnnotationSet, out: Path, *, copy_images: bool = True, link_images: bool = False) -> Path:
    """Write ``dataset`` as a VOC root at ``out``; returns ``out`` (what :func:`voc.read` takes).

    Images are copied (``copy_images``; hard-linked with ``link_images``) into ``JPEGImages/``
    under their own extension;
    every image is listed in ``ImageSets/Main/all.txt``, those with masks in
    ``ImageSets/Segmentation/all.txt``. ``classes.txt`` is written when the classes are not VOC's 20.
    Crowd objects have no VOC form and are left out (with a warning). A label that is no class is refused.
    """
    from segdet.data.formats.voc import VOC_CLASSES

    check_labels(dataset)  # before anything is written
    out = Path(out)
    if dataset.semantic_classes != ["background", *dataset.classes] and any(
        r.semantic is not None for r in dataset.images
    ):
        logger.warning(
            "VOC semantic masks mean value 0 = background and value c = class c - 1; this dataset's "
            "semantic classes %s are written as they are",
            dataset.semantic_classes,
        )
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
        has_semantic = _write_semantic(
            record, dataset.ignore_index, out / "SegmentationClass" / f"{stem}.png"
        )
        has_objects = _write_objects(record, instances, out / "SegmentationObject" / f"{stem}.png")
        if has_semantic or has_objects:
            with_masks.append(stem)
        xml = _annotation_xml(record, instances, image_name, dataset.classes, has_semantic or has_objects)
        _write_xml(xml, out / "Annotations" / f"{stem}.xml")

    _write_list(out / "ImageSets" / "Main" / "all.txt", stems)
    if with_masks:
        _write_list(out / "ImageSets" / "Segmentation" / "all.txt", with_masks)
    if list(dataset.classes) != list(VOC_CLASSES):
        write_classes_txt(out / "classes.txt", list(dataset.classes))
    return out


def _annotation_xml(
    record: ImageRecord, instances: list[Instance], image_name: str, classes: list[str], segmented: bool
) -> ET.Element:
    root = ET.Element("annotation")
    _sub(root, "folder", "VOC")
    _sub(root, "filename", image_name)
    _sub(_sub(root, "source"), "database", "segdet")
    size = _sub(root, "size")
    _sub(size, "width", str(record.width))
    _sub(size, "height", str(record.height))
    _sub(size, "depth", "3")
    _sub(root, "segmented", "1" if segmented else "0")
    for obj in instances:
        element = _sub(root, "object")
        _sub(element, "name", classes[obj.label])
        _sub(element, "pose", "Unspecified")
        _sub(element, "truncated", "0")
        _sub(element, "difficult", "1" if obj.difficult else "0")
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


def _write_objects(record: ImageRecord, instances: list[Instance], path: Path) -> bool:
    """SegmentationObject PNG when every object has a mask (with some missing, object ``k`` would no
    longer be value ``k``); returns whether it was written."""
    if not instances or all(o.mask is None for o in instances):
        return False
    if any(o.mask is None for o in instances):
        logger.warning("%s: some objects have no mask; SegmentationObject not written", record.path)
        return False
    if len(instances) > 254:
        logger.warning("%s: more than 254 objects do not fit a VOC palette PNG; not written", record.path)
        return False
    ids, visible = paint_instance_ids(record.height, record.width, instance_bitmaps(record, instances))
    for k, n in enumerate(visible, start=1):
        if n == 0:
            logger.warning("%s: object %d has no visible pixel in SegmentationObject", record.path, k)
    write_palette_png(path, ids)
    return True


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
