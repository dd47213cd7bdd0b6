"""Writing an :class:`~segdet.data.structures.AnnotationSet` as a YOLO dataset (see
:mod:`segdet.data.formats.yolo` for the layout and the row formats). Re-exported by that module.

Coordinates are normalised by the image size: a box row is ``cls cx cy w h`` with ``cx = (x1 + x2) / 2 / W``,
``w = (x2 - x1) / W`` (same for y with H); a polygon row is ``cls x1/W y1/H x2/W y2/H ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import yaml

from segdet.data.contours import bitmap_to_polygons, merge_polygons
from segdet.data.formats.image_files import place_image
from segdet.data.formats.layout import check_labels
from segdet.data.formats.report import WriteReport
from segdet.data.masks import mask_to_bitmap, read_label_png
from segdet.data.paths import confined
from segdet.data.structures import AnnotationSet, ImageRecord, InstancePNG
from segdet.errors import DataError

logger = logging.getLogger("segdet.data")


def write(
    dataset: AnnotationSet,
    out: str | Path,
    *,
    copy_images: bool = True,
    link_images: bool = False,
    report: WriteReport | None = None,
) -> Path:
    """Write ``out/images/``, ``out/labels/`` and ``out/data.yaml``; returns ``out`` (what
    :func:`segdet.data.formats.yolo.read` takes back).

    Objects with a mask become polygon rows (bitmap, RLE and instance-PNG masks traced with
    :func:`segdet.data.contours.bitmap_to_polygons`, several parts joined by
    :func:`~segdet.data.contours.merge_polygons`), others box rows; coordinates have 6 decimals. Crowd
    objects have no YOLO form and are skipped (counted in ``report``, and logged), as are masks that
    trace to nothing (written as box rows). YOLO keeps only the class names, in label order: category
    ids (COCO's) are not kept, and a dataset read back has ids ``1..K``. Images are copied (hard-linked with
    ``link_images``); a ``file_name`` leading outside ``images/`` and a label that is no class are
    refused.
    """
    check_labels(dataset)  # before anything is written: a class id data.yaml does not name is no row
    report = report if report is not None else WriteReport()
    out = Path(out)
    written: set[Path] = set()
    for im in dataset.images:
        image = confined(out / "images", im.file_name, what="image file name", record=f"image id={im.id}")
        rel = image.relative_to(out / "images")
        label_rel = rel.with_suffix(".txt")
        if label_rel in written:
            raise DataError(
                f"two images share the label file {label_rel}", dataset.source, f"image id={im.id}"
            )
        written.add(label_rel)
        rows = image_rows(im, dataset.source, report)
        label_file = out / "labels" / label_rel
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("".join(r + "\n" for r in rows))
        if copy_images:
            place_image(im.path, image, link=link_images)
    (out / "images").mkdir(parents=True, exist_ok=True)
    config = {"path": ".", "train": "images", "val": "images", "names": dict(enumerate(dataset.classes))}
    (out / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return out


def image_rows(im: ImageRecord, source: str = "", report: WriteReport | None = None) -> list[str]:
    """The label rows of one image (counted in ``report`` when given)."""
    report = report if report is not None else WriteReport()
    rows = []
    pngs: dict = {}  # instance-id PNGs decoded once per image
    w, h = im.width, im.height
    for o in im.instances:
        if o.iscrowd:
            logger.warning(
                "%s: image id=%s: crowd object (id %s) has no YOLO form; skipped", source, im.id, o.id
            )
            report.leave_out("crowd (YOLO has no crowd regions)")
            continue
        poly = None
        if o.mask is not None:
            poly = _mask_polygon(o.mask, im, pngs, source)
            if poly is None:
                logger.warning("%s: image id=%s: empty mask (id %s) written as a box", source, im.id, o.id)
                report.drop_mask("with an empty mask (written as box rows)")
        if poly is not None:
            coords = (np.clip(poly, 0.0, (w, h)) / (w, h)).ravel()
        else:
            x1, y1, x2, y2 = (float(v) for v in o.box)
            coords = np.array([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
        rows.append(" ".join([str(int(o.label)), *(f"{v:.6f}" for v in coords)]))
        report.objects += 1
    return rows


def _mask_polygon(mask: object, im: ImageRecord, pngs: dict, source: str) -> np.ndarray | None:
    """One absolute ``N x 2`` polygon for a mask (None when the mask is empty)."""
    if isinstance(mask, list):
        parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in mask if len(p) >= 6]
    else:
        try:
            if isinstance(mask, InstancePNG):
                if mask.path not in pngs:
                    pngs[mask.path] = read_label_png(mask.path)
                mask = pngs[mask.path] == mask.value
            bitmap = mask_to_bitmap(mask, im.height, im.width)
        except DataError as e:
            raise DataError(e.problem, e.file or source, f"image id={im.id}") from None
        parts = bitmap_to_polygons(bitmap)
    return merge_polygons(parts) if parts else None
