"""Writing label / instance-id PNGs: palette PNGs (VOC's masks) and grey PNGs of any integer values.

VOC stores its masks (``SegmentationClass``, ``SegmentationObject``) as palette PNGs: each pixel holds a
class or instance index, and the palette only makes the indices visible. Readers must therefore take
the raw indices (:func:`segdet.data.masks.read_label_png`), never the RGB colours. The palette itself
(:func:`voc_palette`, the VOC devkit's ``labelcolormap``) lives in :mod:`segdet.ops.palette`, where
drawing uses it too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdet.errors import DataError
from segdet.ops.palette import voc_palette

__all__ = ["voc_palette", "write_label_png", "write_palette_png"]


def write_palette_png(path: Path, values: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an ``H x W`` array of indices in ``[0, 255]`` as a palette PNG (mode ``P``).

    ``palette`` defaults to :func:`voc_palette`; the indices are stored unchanged, so
    :func:`~segdet.data.masks.read_label_png` gives ``values`` back exactly.
    """
    from PIL import Image

    values = np.asarray(values)
    if values.ndim != 2:
        raise DataError(f"a label image must be 2-D, got shape {values.shape}", path)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(
            f"a palette PNG holds values 0..255, got {int(values.min())}..{int(values.max())}", path
        )
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette((voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)).tobytes())
    _save(image, path)


def write_label_png(path: Path, values: np.ndarray) -> None:
    """Write an ``H x W`` array of non-negative integers as a grey PNG, values kept exactly.

    8-bit grey (mode ``L``) when every value is below 256, 16-bit grey otherwise (PNG's own bit depths);
    values of 65536 and more do not fit a PNG and are refused.
    """
    from PIL import Image

    values = np.asarray(values)
    if values.ndim != 2:
        raise DataError(f"a label image must be 2-D, got shape {values.shape}", path)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise DataError(f"a grey PNG holds values 0..65535, got {low}..{high}", path)
    if high < 256:
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    else:
        image = _png16(values)
    _save(image, path)


def _png16(values: np.ndarray):
    """A 16-bit grey Pillow image (mode ``I;16``), which Pillow writes as a 16-bit PNG."""
    from PIL import Image

    return Image.frombytes("I;16", (values.shape[1], values.shape[0]), values.astype("<u2").tobytes())


def _save(image, path: Path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
    except OSError as e:
        raise DataError(f"cannot write label image ({e})", path) from None
