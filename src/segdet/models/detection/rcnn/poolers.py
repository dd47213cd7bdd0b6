"""Multi-scale RoI pooling: each region of interest is pooled from the pyramid level that fits its size.

FPN (Lin et al., CVPR 2017, eq. 1) assigns a RoI of width ``w`` and height ``h`` (input-image pixels) to
level ::

    k = floor(k0 + log2(sqrt(w h) / 224) + eps)        clamped to [k_min, k_max]

so a 224x224 RoI (the ImageNet pre-training size) goes to ``k0 = 4`` (``P_4``, stride 16), one half that
size to ``P_3``, twice it to ``P_5``. ``eps = 1e-6`` keeps RoIs of exactly ``224 * 2^j`` pixels from
falling one level short by round-off. The level of a feature map is ``-log2(scale)``: its scale, one over
its stride, from ``feature_size / image_size`` as ``2 ** floor(log2(.))``, per side against the largest
unpadded image of the batch, the smaller of the two. The feature covers the padded batch, whose side
lies in ``[h, 2h)`` when ``h`` is at least the padding multiple (32: padding adds less than the image),
so the ratio lies in ``[1 / stride, 2 / stride)`` and the floor is exact; a shorter side (a very
elongated image, resized to 14 x 64 and padded to 32 x 64) overestimates its scale, never
underestimates it, so the smaller of the two sides' is exact whenever one side is long enough.
torchvision rounds the height's instead: the same for every image whose padding adds under 41 % of its
height, but twice the scale beyond (an image resized to 43 px and padded to 64: RoIs then sample the
wrong half of the feature map).

Then every RoI of one level, from all images of the batch, is pooled in one call of ``roi_align``
(He et al., "Mask R-CNN", ICCV 2017: bilinear sampling, no quantisation; torchvision's kernel on every
CPU thread, :mod:`segdet.ops.roi_align`) or ``roi_pool`` (Girshick, "Fast R-CNN", ICCV 2015: max over
quantised bins; :mod:`segdet.ops.roi_pool`, equal to torchvision's). With a single feature map (e.g.
``C4`` heads) every RoI is pooled from it.

The level rule and scales are those of torchvision's ``MultiScaleRoIAlign``, so its results are
reproduced exactly (except on images padded by over 41 % of their height, above). Under ``torch.export``
with dynamic image sides (``segdet export``) the sizes are symbolic and the scale is the traced
example's: the same at every size, by the bound above.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

try:
    from torch.fx.experimental.symbolic_shapes import optimization_hint
except ImportError:  # its older names: size_hint (2.10-2.13; 2.11 is the GPU machine's), hint_int (2.8)
    try:
        from torch.fx.experimental.symbolic_shapes import size_hint as optimization_hint
    except ImportError:
        from torch.fx.experimental.symbolic_shapes import hint_int as optimization_hint

from segdet.models.detection.image_list import as_size
from segdet.ops.boxes import box_area
from segdet.ops.roi_align import roi_align
from segdet.ops.roi_pool import boxes_to_rois, roi_pool

POOL_MODES = ("align", "pool")


def infer_scale(feature_size: int, image_size: int) -> float:
    """``2 ** floor(log2(feature_size / image_size))``: the feature's scale, one over its stride (module
    docstring); symbolic sizes give the traced example's."""
    feature_size, image_size = optimization_hint(feature_size), optimization_hint(image_size)
    return 2.0 ** math.floor(math.log2(feature_size / image_size))


def map_levels(
    boxes: Tensor,
    k_min: int,
    k_max: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level ``k = floor(k0 + log2(sqrt(wh) / s0) + eps)`` of each xyxy box ``[R, 4]``, clamped to
    ``[k_min, k_max]`` (see the module docstring). Returns int64 ``[R]`` levels (not offsets)."""
    size = torch.sqrt(box_area(boxes))
    level = torch.floor(
        canonical_level + torch.log2(size / canonical_scale) + torch.tensor(eps, dtype=size.dtype)
    )
    return level.clamp(min=k_min, max=k_max).to(torch.int64)


class MultiScaleRoIPool(nn.Module):
    """Pool RoIs of every image from the FPN level their size maps to; see the module docstring.

    Args:
        featmap_names: the feature maps to pool from, finest first (consecutive strides, e.g.
            ``["0", "1", "2", "3"]`` for ``P2..P5``); one name for single-level pooling.
        output_size: ``m`` or ``(h, w)`` of the pooled features.
        sampling_ratio: RoIAlign's bilinear samples per bin side (``<= 0``: adaptive); unused by
            ``"pool"``.
        mode: ``"align"`` (RoIAlign) or ``"pool"`` (RoIPool).
        canonical_scale, canonical_level: ``224`` and ``k0`` of the level rule.
        aligned: RoIAlign's half-pixel shift (Detectron2's ``ROIAlignV2``); False as in torchvision's
            Faster / Mask R-CNN.

    ``forward(features, boxes, image_sizes)``: ``features`` a dict holding (at least) ``featmap_names``,
    ``boxes`` per-image xyxy ``[R_i, 4]`` in input-image pixels, ``image_sizes`` per-image ``(h, w)``.
    Returns ``[ΣR_i, C, h, w]``, the RoIs of image 0 first, each image's in their given order.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int],
        sampling_ratio: int,
        *,
        mode: Literal["align", "pool"] = "align",
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        if mode not in POOL_MODES:
            raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
        if not featmap_names:
            raise ValueError("featmap_names must name at least one feature map")
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        self.sampling_ratio = sampling_ratio
        self.mode = mode
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}, mode={self.mode!r}"
        )

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.mode == "align":
            return roi_align(
                feature, rois, self.output_size, scale, self.sampling_ratio, aligned=self.aligned
            )
        return roi_pool(feature, rois, self.output_size, scale)

    def scales(self, features: list[Tensor], image_sizes: list[tuple[int, int]]) -> list[float]:
        """Scale of each feature map w.r.t. the (padded) batch: the smaller of its height's and width's
        over the largest image's (module docstring)."""
        if not image_sizes:
            raise ValueError("image_sizes must not be empty")
        max_height = max(as_size(h) for h, _ in image_sizes)
        max_width = max(as_size(w) for _, w in image_sizes)
        return [
            min(infer_scale(f.shape[-2], max_height), infer_scale(f.shape[-1], max_width)) for f in features
        ]

    def forward(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> Tensor:
        missing = [n for n in self.featmap_names if n not in features]
        if missing:
            raise KeyError(f"feature maps {missing} not found; available: {list(features)}")
        levels_in = [features[n] for n in self.featmap_names]
        scales = self.scales(levels_in, image_sizes)
        rois = boxes_to_rois(boxes)
        if len(levels_in) == 1:
            return self._pool(levels_in[0], rois, scales[0])

        level_of_map = [-round(math.log2(s)) for s in scales]
        k_min, k_max = level_of_map[0], level_of_map[-1]
        if level_of_map != list(range(k_min, k_max + 1)):
            raise ValueError(
                f"feature maps {self.featmap_names} must have consecutive strides, finest first; "
                f"their levels are {level_of_map}"
            )
        offsets = map_levels(rois[:, 1:], k_min, k_max, self.canonical_scale, self.canonical_level) - k_min

        first = levels_in[0]
        result = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        for offset, (feature, scale) in enumerate(zip(levels_in, scales, strict=True)):
            index = torch.nonzero(offsets == offset).flatten()
            # Under autocast levels may come in different dtypes; the result keeps the finest level's.
            result[index] = self._pool(feature, rois[index], scale).to(result.dtype)
        return result
