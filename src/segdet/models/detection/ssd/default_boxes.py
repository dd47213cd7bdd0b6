"""SSD's default boxes (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, sec. 2.2, "Choosing
scales and aspect ratios for default boxes").

Feature map ``k = 1 .. m`` gets boxes of scale (a fraction of the image side)::

    s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)            (s_min = 0.2, s_max = 0.9 in the paper)

For each location: a square box of side ``s_k``, a square box of side ``s'_k = sqrt(s_k s_{k+1})``
(``s_{m+1} = 1``), and for each aspect ratio ``r`` of the level the pair ``w = s_k sqrt(r)``,
``h = s_k / sqrt(r)`` and its transpose (``r`` and ``1/r``): ``2 + 2 |ratios|`` boxes, 6 with the
paper's ``{2, 3}`` (ratios ``{1, 2, 3, 1/2, 1/3}``), 4 with ``{2}``. Widths and heights are clipped to
``[0, 1]``. The centre of location ``(i, j)`` is ``((j + 0.5) / f_x, (i + 0.5) / f_y)`` with
``f = H_k x W_k`` the map's size, or ``f = image size / step_k`` when steps are given (SSD300's
``8, 16, 32, 64, 100, 300``, which place the 3x3 and 1x1 maps' centres as Caffe's SSD does).

SSD300 (torchvision's, from the SSD authors' Caffe model) gives the scales explicitly,
``0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05`` (a smaller first scale for conv4_3: 0.1 in the paper, as
``s_min`` of 0.2 misses small objects); SSDLite320 uses ``s_min = 0.2``, ``s_max = 0.95``.

Order of an image's boxes: level, then location (row-major), then the box of the location (square
``s_k``, square ``s'_k``, then per ratio the ``(w, h)`` and ``(h, w)`` pair); the heads' outputs are
flattened the same way (:mod:`segdet.models.detection.head_outputs`). Boxes are returned as absolute
xyxy pixels of the (fixed-size) batch, bit-identical to torchvision's ``DefaultBoxGenerator``: the
relative centres and sizes in float32, taken to pixels in the feature maps' dtype when that is float64
(torchvision's promotion of its float32 sizes with centres in the maps' dtype), else in float32 (for
bfloat16 / float16 maps torchvision rounds the centres to that dtype first; here they stay float32, as
the losses and decoding run in float32, :func:`~segdet.models.detection.head_outputs.in_float32`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segdet.models.detection.image_list import ImageList, as_size

_CACHE_SIZE = 8


def ssd_scales(num_levels: int, min_ratio: float, max_ratio: float) -> list[float]:
    """``s_1 .. s_m`` spaced linearly from ``min_ratio`` to ``max_ratio``, then ``s_{m+1} = 1``."""
    if num_levels == 1:
        return [min_ratio, max_ratio]
    step = (max_ratio - min_ratio) / (num_levels - 1.0)
    return [min_ratio + step * k for k in range(num_levels)] + [1.0]


class DefaultBoxGenerator(nn.Module):
    """SSD's default boxes for every level (module docstring).

    Args:
        aspect_ratios: per level, the ratios ``r >= 1`` (each also gives ``1 / r``).
        min_ratio, max_ratio: ``s_min``, ``s_max`` when ``scales`` is not given.
        scales: ``m + 1`` explicit scales ``s_1 .. s_{m+1}``.
        steps: per level, the stride placing the box centres (``None``: the map's own size).
        clip: clip widths and heights to ``[0, 1]`` of the image.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]],
        min_ratio: float = 0.15,
        max_ratio: float = 0.9,
        scales: Sequence[float] | None = None,
        steps: Sequence[int] | None = None,
        clip: bool = True,
    ) -> None:
        super().__init__()
        if steps is not None and len(steps) != len(aspect_ratios):
            raise ValueError(f"{len(steps)} steps for {len(aspect_ratios)} levels")
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.steps = None if steps is None else tuple(steps)
        self.clip = clip
        levels = len(self.aspect_ratios)
        self.scales = list(scales) if scales is not None else ssd_scales(levels, min_ratio, max_ratio)
        if len(self.scales) != levels + 1:
            raise ValueError(f"{len(self.scales)} scales for {levels} levels (need one more than levels)")
        self.wh_pairs = [self._wh_pairs(k) for k in range(levels)]
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def extra_repr(self) -> str:
        return (
            f"aspect_ratios={self.aspect_ratios}, scales={self.scales}, steps={self.steps}, clip={self.clip}"
        )

    def _wh_pairs(self, k: int) -> Tensor:
        s_k = self.scales[k]
        s_prime = math.sqrt(self.scales[k] * self.scales[k + 1])
        pairs = [[s_k, s_k], [s_prime, s_prime]]
        for ratio in self.aspect_ratios[k]:
            w, h = s_k * math.sqrt(ratio), s_k / math.sqrt(ratio)
            pairs += [[w, h], [h, w]]
        wh = torch.as_tensor(pairs, dtype=torch.float32, device="cpu")  # built on the CPU, moved once
        return wh.clamp(min=0, max=1) if self.clip else wh

    def num_anchors_per_location(self) -> list[int]:
        """``2 + 2 |ratios_k|`` for each level."""
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def _relative_boxes(self, grid_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> Tensor:
        """``[M, 4]`` boxes ``(cx, cy, w, h)`` as fractions of the image."""
        boxes = []
        for k, (grid_h, grid_w) in enumerate(grid_sizes):
            if self.steps is not None:
                f_x, f_y = image_size[1] / self.steps[k], image_size[0] / self.steps[k]
            else:
                f_x, f_y = grid_w, grid_h
            cx = ((torch.arange(grid_w, device="cpu") + 0.5) / f_x).to(torch.float32)
            cy = ((torch.arange(grid_h, device="cpu") + 0.5) / f_y).to(torch.float32)
            cy, cx = torch.meshgrid(cy, cx, indexing="ij")
            pairs = self.wh_pairs[k]
            centres = torch.stack((cx.reshape(-1), cy.reshape(-1)), dim=-1).repeat_interleave(
                len(pairs), dim=0
            )
            boxes.append(torch.cat((centres, pairs.repeat(grid_h * grid_w, 1)), dim=1))
        return torch.cat(boxes)

    def grid_boxes(
        self,
        grid_sizes: Sequence[tuple[int, int]],
        image_size: tuple[int, int],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``[M, 4]`` absolute xyxy default boxes of an ``image_size`` ``(H, W)`` batch, in ``dtype``
        (float32 or float64; module docstring) (cached, except in a graph that ``torch.export`` traces,
        which computes them)."""
        key = (tuple(grid_sizes), tuple(image_size), device, dtype)
        key = None if torch.compiler.is_exporting() else key
        boxes = None if key is None else self._cache.get(key)
        if boxes is not None:
            self._cache.move_to_end(key)
            return boxes
        relative = self._relative_boxes(grid_sizes, image_size).to(dtype)
        size = torch.tensor([image_size[1], image_size[0]], device="cpu")
        boxes = torch.cat(
            (
                (relative[:, :2] - 0.5 * relative[:, 2:]) * size,
                (relative[:, :2] + 0.5 * relative[:, 2:]) * size,
            ),
            dim=-1,
        ).to(device)
        if key is not None:
            self._cache[key] = boxes
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return boxes

    def forward(self, image_list: ImageList, feature_maps: Sequence[Tensor]) -> Tensor:
        """The ``[M, 4]`` default boxes shared by every image of the batch (do not modify in place)."""
        if len(feature_maps) != len(self.aspect_ratios):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.aspect_ratios)} levels")
        grid_sizes = [(as_size(f.shape[-2]), as_size(f.shape[-1])) for f in feature_maps]
        height, width = image_list.tensors.shape[-2:]
        dtype = torch.promote_types(feature_maps[0].dtype, torch.float32)  # float64 stays, bf16 -> float32
        return self.grid_boxes(grid_sizes, (as_size(height), as_size(width)), feature_maps[0].device, dtype)
