"""Selective search (Uijlings, van de Sande, Gevers, Smeulders, "Selective Search for Object
Recognition", IJCV 2013): class-agnostic region proposals by hierarchical grouping of superpixels.

1. Felzenszwalb-Huttenlocher graph segmentation (threshold ``k``, Gaussian ``sigma``) gives an initial
   over-segmentation; every segment is a region.
2. The two most similar neighbouring regions are merged, again and again, until one region is left;
   similarity is a sum of colour, texture, size and fill terms (a *strategy*). Every region ever formed
   (its bounding box) is a proposal.
3. *Diversification*: the grouping runs in several colour spaces, with several ``k`` and strategies;
   the "fast" mode uses 2 colour spaces (HSV, Lab), 2 thresholds and 2 strategies (the R-CNN and Fast
   R-CNN papers' setting, ~2000 boxes per PASCAL image), the "quality" mode 5 colour spaces, 4
   thresholds and 2 strategies (~10000 boxes, higher recall).
4. Boxes are ranked by ``rank = level * r`` with ``r`` uniform in ``[0, 1]`` and ``level`` the step of
   the hierarchy that formed them (lower is better: small early regions first, shuffled), and
   duplicates are removed, so the first ``N`` boxes are the ``N`` best.

The implementation is OpenCV's (``cv2.ximgproc.segmentation``, package
``opencv-contrib-python-headless``). Two things are ours:

* **scale**: the graph segmentation's ``k`` and its minimum segment size are in pixels, tuned for
  PASCAL-sized images (~500 px). An image is resized (bilinear) so that its longer side is at most
  ``max_side`` and its shorter side at least ``min_side`` (the latter wins), and the boxes are scaled
  back. Without the upscaling, objects of a few hundred pixels in 64 px images merge into the
  background (recall at IoU 0.5: 0.73 on synthetic shapes against 1.0 at 2x).
* **determinism**: OpenCV draws ``r`` from the C library's ``rand()``, so the order of the boxes (not
  their set) changes from call to call. We seed it with ``srand(seed)`` right before each call, under a
  lock, so that the same image and settings always give the same list (measured: two unseeded calls
  order the same boxes differently; glibc's ``srand`` takes seeds 0 and 1 as the same).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import hashlib
import json
import math
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from segdet.errors import SegdetError

MODES = ("fast", "quality")
#: Bumped when the boxes a setting gives change (e.g. another resize rule): old cache entries go stale.
ALGORITHM_VERSION = 2  # 2: the pixel budget of search_scale

INSTALL_HINT = (
    "selective search needs OpenCV's contrib modules: pip install 'opencv-contrib-python-headless>=5' "
    "(and no other OpenCV wheel beside it: opencv-python, installed by e.g. Ultralytics, shadows the "
    "contrib modules)"
)

_lock = threading.Lock()


@dataclass(frozen=True)
class SelectiveSearchSettings:
    """What selective search is run with; :meth:`key` names it in the proposal cache.

    ``mode``: ``"fast"`` or ``"quality"`` (module docstring); ``max_side`` / ``min_side``: the resize
    rule; ``base_k``, ``inc_k``, ``sigma``: OpenCV's ``switchToSelectiveSearch{Fast,Quality}``
    arguments (graph-segmentation thresholds ``base_k, base_k + inc_k, ...`` and smoothing);
    ``seed``: the ranking's random seed.
    """

    mode: Literal["fast", "quality"] = "fast"
    max_side: int = 500
    min_side: int = 128
    base_k: int = 150
    inc_k: int = 150
    sigma: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"selective search mode must be one of {MODES}, got {self.mode!r}")
        if not (1 <= self.min_side <= self.max_side):
            raise ValueError(f"need 1 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if self.base_k < 1 or self.inc_k < 1 or not self.sigma > 0:
            raise ValueError(f"base_k, inc_k must be >= 1 and sigma > 0, got {self}")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "algorithm_version": ALGORITHM_VERSION}

    def key(self) -> str:
        """16 hex digits naming these settings (and :data:`ALGORITHM_VERSION`)."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def search_scale(height: int, width: int, settings: SelectiveSearchSettings) -> float:
    """The resize factor of the module docstring: the longer side at most ``max_side``, the shorter at
    least ``min_side`` (which wins), but never more than ``max_side²`` pixels: a thin strip (4 x 2000)
    would otherwise be upscaled 32-fold to 128 x 64000 (8 M pixels, a graph segmentation of minutes).
    An image whose longer side fits ``max_side`` after the first rule has at most that many already."""
    scale = min(1.0, settings.max_side / max(height, width))
    if min(height, width) * scale < settings.min_side:
        scale = settings.min_side / min(height, width)
    return min(scale, settings.max_side / math.sqrt(height * width))


def _cv2():
    try:
        import cv2
    except ImportError:
        raise SegdetError(INSTALL_HINT) from None
    if not hasattr(cv2, "ximgproc"):
        raise SegdetError(
            f"OpenCV {cv2.__version__} at {cv2.__file__} has no contrib modules; {INSTALL_HINT}"
        )
    return cv2


def opencv_version() -> str:
    return _cv2().__version__


def _srand() -> ctypes.CDLL | None:
    """The C library whose ``rand()`` OpenCV's ranking draws from (None where it cannot be found)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _srand()


def selective_search(pixels: np.ndarray, settings: SelectiveSearchSettings) -> np.ndarray:
    """Selective-search boxes of one image, best first.

    Args:
        pixels: ``H x W x 3`` uint8 RGB.
        settings: mode, resize rule and OpenCV's parameters.

    Returns:
        float32 ``[R, 4]`` xyxy boxes in ``pixels``' coordinates (continuous: a box covering pixel
        columns ``x .. x + w - 1`` is ``[x, x + w)``), clipped to the image, in OpenCV's rank order.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 uint8 pixels, got {pixels.dtype} {pixels.shape}")
    cv2 = _cv2()
    height, width = pixels.shape[:2]
    scale = search_scale(height, width, settings)
    bgr = np.ascontiguousarray(pixels[:, :, ::-1])  # OpenCV's colour conversions expect BGR
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    if settings.mode == "fast":
        search.switchToSelectiveSearchFast(settings.base_k, settings.inc_k, settings.sigma)
    else:
        search.switchToSelectiveSearchQuality(settings.base_k, settings.inc_k, settings.sigma)
    with _lock:  # rand() is process-wide: seed and draw without another thread in between
        if _LIBC is not None:
            _LIBC.srand(settings.seed)
        rects = search.process()
    boxes = np.asarray(rects, dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    sx, sy = bgr.shape[1] / width, bgr.shape[0] / height
    boxes /= np.array([sx, sy, sx, sy], dtype=np.float32)
    np.clip(boxes, 0, np.array([width, height, width, height], dtype=np.float32), out=boxes)
    return boxes
