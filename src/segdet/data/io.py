"""Reading images: header-only size look-ups for checks, full decoding for training.

Every image (and label PNG) is opened through :func:`open_image`, which

* refuses an image of more than :func:`max_image_pixels` pixels before decoding it (a small PNG can
  claim 20000 x 20000 pixels and decode to gigabytes: a "decompression bomb"). The limit is Pillow's
  (``2 * PIL.Image.MAX_IMAGE_PIXELS``, about 179 million pixels); the environment variable
  ``SEGDET_MAX_IMAGE_PIXELS`` sets another;
* turns every failure into a one-line :class:`DataError` naming the file.

:func:`load_image` converts every mode to 8-bit RGB by its meaning, not by clipping: 16-bit grey
(``I;16``, and ``I`` as Pillow opens 16-bit PNGs) is scaled by ``255 / 65535``, 32-bit float grey
(``F``) is taken as [0, 1] when it stays there and clipped to [0, 255] otherwise. :data:`MODE_NOTES`
says what is done to each mode that is not plain 8-bit, for ``segdet data check``.

Pixels are used as stored: an EXIF orientation tag (phones save a portrait photo as a landscape bitmap
plus "turn 90 degrees clockwise to view") is not applied, as pycocotools, torchvision's datasets and
``torchvision.io.decode_image`` (by default) do not apply it; Detectron2, Ultralytics and photo viewers
do. Annotations drawn on the turned view therefore do not fit such an image: ``segdet data check`` warns
of every tagged image (:func:`exif_orientation`) and, when an annotation's size is the image's turned
size, says so in the size error.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from segdet.errors import DataError

MAX_PIXELS_VARIABLE = "SEGDET_MAX_IMAGE_PIXELS"
# Pillow's own threshold for DecompressionBombError: 2 * Image.MAX_IMAGE_PIXELS (89478485).
DEFAULT_MAX_PIXELS = 2 * 89_478_485

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
MODE_NOTES = {
    **{m: "16-bit grey image; read as 8-bit RGB scaled by 255/65535" for m in SIXTEEN_BIT_MODES},
    "F": "32-bit float grey image; read as 8-bit RGB ([0, 1] scaled by 255, else clipped to [0, 255])",
    "CMYK": "CMYK image; converted to RGB",
    "LAB": "CIE Lab image; converted to RGB",
    "HSV": "HSV image; converted to RGB",
}


def max_image_pixels() -> int:
    """The largest image (width x height) read: ``SEGDET_MAX_IMAGE_PIXELS`` or Pillow's limit."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        raise DataError(f"{MAX_PIXELS_VARIABLE}={value!r} is not a whole number of pixels") from None
    if limit < 1:
        raise DataError(f"{MAX_PIXELS_VARIABLE}={value!r} must be at least 1")
    return limit


def _too_large(pixels: int | None, limit: int) -> str:
    size = f"{pixels} pixels" if pixels is not None else "more pixels"
    return (
        f"image has {size}, above the limit of {limit} pixels (a guard against decompression bombs); "
        f"set the environment variable {MAX_PIXELS_VARIABLE} to a larger number to read it"
    )


@contextlib.contextmanager
def open_image(path: Path, what: str = "image") -> Iterator:
    """``PIL.Image.open(path)`` as a context manager, its size checked against the pixel limit and every
    error a :class:`DataError` (``cannot read <what> (...)``)."""
    from PIL import Image

    limit = max_image_pixels()
    if limit > DEFAULT_MAX_PIXELS:
        # Asked for more than Pillow allows: Pillow's check would refuse first; ours decides instead.
        Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise DataError(_too_large(w * h, limit), path)
            yield im
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise DataError(_too_large(int(found.group(1)) if found else None, limit), path) from None
    except FileNotFoundError:
        raise DataError(f"cannot read {what}: file not found", path) from None
    except (OSError, ValueError, SyntaxError, MemoryError) as e:
        raise DataError(f"cannot read {what} ({e})", path) from None


#: EXIF orientation (tag 0x0112) -> what a viewer does to the stored pixels to show the photo upright.
#: 5-8 swap width and height. 1 (or no tag): shown as stored.
EXIF_ORIENTATIONS = {
    2: "mirror left-right",
    3: "turn 180 degrees",
    4: "mirror top-bottom",
    5: "transpose",
    6: "turn 90 degrees clockwise",
    7: "transverse",
    8: "turn 90 degrees counter-clockwise",
}
EXIF_ORIENTATION_TAG = 0x0112


def exif_orientation(im) -> int:
    """The EXIF orientation (1-8) of an opened Pillow image; 1 without a tag or with an invalid one.

    Reads the header only: a PNG whose ``eXIf`` chunk follows the pixels shows its tag after ``im.load()``
    (Pillow's ``getexif`` would decode the whole PNG to find it)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, TypeError):  # a malformed EXIF block: nothing to apply
        return 1
    return value if value in EXIF_ORIENTATIONS else 1


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` read from the file's header only (fast: no pixel decoding)."""
    with open_image(path) as im:
        return im.size


def verify_image(path: Path) -> tuple[int, int]:
    """Decode the whole image (catches truncated files a header read misses); returns ``(w, h)``."""
    with open_image(path) as im:
        im.load()
        return im.size


def load_image(path: Path) -> torch.Tensor:
    """Decode an image to a ``uint8`` RGB tensor of shape ``3 x H x W`` (modes converted as the module
    docstring says)."""
    with open_image(path) as im:
        arr = to_rgb8(im)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_rgb8(im) -> np.ndarray:
    """An opened Pillow image as an ``H x W x 3`` uint8 array (decodes it)."""
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            finite = grey[np.isfinite(grey)]
            scale = 255.0 if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        grey = np.nan_to_num(grey * scale, nan=0.0, posinf=255.0, neginf=0.0)
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.array(im.convert("RGB"))
