"""Conversions between the mask forms of :data:`segdet.data.structures.Mask`.

Polygons and RLE go through pycocotools' mask API (the reference implementation of COCO's run-length
encoding), so masks decode exactly as the COCO evaluator sees them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from segdet.data.structures import InstancePNG, Mask
from segdet.errors import DataError


def read_label_png(path: Path) -> np.ndarray:
    """Read a label / instance-id PNG as an H x W integer array of its raw values (palette indices for
    palette PNGs, grey values otherwise)."""
    from segdet.data.io import open_image

    with open_image(path, "label image") as im:
        if im.mode not in ("P", "L", "I", "I;16", "1"):
            raise DataError(f"label image has mode {im.mode}; expected a single-channel or palette PNG", path)
        return np.asarray(im).astype(np.int64, copy=False)


def mask_to_bitmap(mask: Mask, height: int, width: int) -> np.ndarray:
    """Decode any mask form to an ``H x W`` bool array."""
    if isinstance(mask, np.ndarray):
        if mask.shape != (height, width):
            raise DataError(f"mask of shape {mask.shape} does not match the {width}x{height} image")
        return mask.astype(bool, copy=False)
    if isinstance(mask, InstancePNG):
        ids = read_label_png(mask.path)
        if ids.shape != (height, width):
            raise DataError(f"mask is {ids.shape[1]}x{ids.shape[0]}, image is {width}x{height}", mask.path)
        return ids == mask.value
    rle = mask_to_rle(mask, height, width)
    return mask_utils.decode(rle).astype(bool)


def mask_to_rle(mask: Mask, height: int, width: int) -> dict:
    """Encode any mask form as compressed COCO RLE (``counts`` as ``str``)."""
    if isinstance(mask, list):
        polys = [list(map(float, p)) for p in mask if len(p) >= 6]
        if not polys:
            raise DataError("polygon mask has no polygon with at least 3 points")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(mask, dict):
        if list(mask.get("size", [])) != [height, width]:
            raise DataError(f"RLE size {mask.get('size')} does not match the {width}x{height} image")
        counts = mask.get("counts")
        rle = mask_utils.frPyObjects(mask, height, width) if isinstance(counts, list) else dict(mask)
    else:
        bitmap = mask_to_bitmap(mask, height, width)
        rle = mask_utils.encode(np.asfortranarray(bitmap.astype(np.uint8)))
    if isinstance(rle["counts"], bytes):
        rle = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    return rle


def bitmap_box(bitmap: np.ndarray) -> tuple[float, float, float, float] | None:
    """The tight ``xyxy`` box of a bitmap's pixels (continuous coordinates), or None if it is empty."""
    ys = np.flatnonzero(bitmap.any(axis=1))
    xs = np.flatnonzero(bitmap.any(axis=0))
    if len(xs) == 0:
        return None
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def mask_area(mask: Mask, height: int, width: int) -> float:
    """Pixel area of a mask (pycocotools' area for polygons and RLE)."""
    return float(mask_utils.area(mask_to_rle(mask, height, width)))
