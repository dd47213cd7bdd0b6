"""EfficientDet's anchors (the paper's code, google/automl, as rwightman's ``effdet``), which its released
weights depend on.

On level ``l`` (stride ``s = 2^l``, ``l = 3 .. 7``) every location ``(y, x)`` has ``A = 3 x 3`` anchors,
scale-major (``for octave in 0, 1, 2: for aspect in (1, 1), (1.4, 0.7), (0.7, 1.4)``)::

    size = anchor_scale · s · 2^(octave / 3)           anchor_scale = 4: 32 px on P3 ... 512 on P7
    w, h = size · a_x, size · a_y                      (a_x, a_y) the aspect pair
    centre = ((x + 1/2) s, (y + 1/2) s)                the cell's centre

Unlike torchvision's :func:`~..anchors.base_anchors`: centred on the cell (not its top-left pixel), not
rounded to whole pixels, ``(1.4, 0.7)`` pairs (area 0.98 size², where a ratio ``h / w = 0.5`` keeps
size²), scale-major. They are given to :class:`~..anchors.AnchorGenerator` as its cell anchors, so the
grid, the order of locations and the cache are the shared ones.

The centre offset ``s / 2`` is the nominal stride's: exact when the padded input is a multiple of 128
(the builders' ``size_divisible``). With a smaller multiple a coarse level's measured stride (input
size // map size, e.g. 48 for a 2 x 2 P6 of a 96 px input) differs from ``2^l`` and its anchors sit off
the cells' centres by up to half a stride.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segdet.models.detection.anchors import AnchorGenerator

ASPECTS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
STRIDES = (8, 16, 32, 64, 128)


def efficientdet_cell_anchors(
    stride: int,
    anchor_scale: float = 4.0,
    num_scales: int = 3,
    aspects: Sequence[tuple[float, float]] = ASPECTS,
) -> Tensor:
    """The ``[num_scales · |aspects|, 4]`` xyxy anchors of the location ``(0, 0)`` of a level of stride
    ``stride`` (module docstring), float32."""
    centre = stride / 2
    boxes = []
    for octave in range(num_scales):
        size = anchor_scale * stride * 2 ** (octave / num_scales)
        for a_x, a_y in aspects:
            half_w, half_h = size * a_x / 2, size * a_y / 2
            boxes.append((centre - half_w, centre - half_h, centre + half_w, centre + half_h))
    return torch.tensor(boxes, dtype=torch.float64).float()


def efficientdet_anchors(
    anchor_scale: float = 4.0,
    num_scales: int = 3,
    aspects: Sequence[tuple[float, float]] = ASPECTS,
    strides: Sequence[int] = STRIDES,
) -> AnchorGenerator:
    """An :class:`~..anchors.AnchorGenerator` with EfficientDet's anchors on levels of ``strides``; its
    ``sizes`` are ``anchor_scale · s · 2^(octave / num_scales)`` and its ``aspect_ratios`` the ``h / w`` of
    the pairs, for display."""
    if anchor_scale <= 0 or num_scales < 1 or not aspects:
        raise ValueError(
            f"need anchor_scale > 0, num_scales >= 1 and aspects, got {anchor_scale}, {num_scales}"
        )
    sizes = [[anchor_scale * s * 2 ** (o / num_scales) for o in range(num_scales)] for s in strides]
    ratios = [[a_y / a_x for a_x, a_y in aspects]] * len(strides)
    cells = [efficientdet_cell_anchors(s, anchor_scale, num_scales, aspects) for s in strides]
    return AnchorGenerator(sizes, ratios, cell_anchors=cells)
