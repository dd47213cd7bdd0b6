"""Anchor boxes of the Region Proposal Network (Ren et al., "Faster R-CNN", NeurIPS 2015, sec. 3.1.1;
multi-level assignment of Lin et al., "Feature Pyramid Networks", CVPR 2017, sec. 4.1).

**Base anchors.** For a level with sizes ``s`` and aspect ratios ``r = h / w``, each pair ``(r, s)``
gives one zero-centred box of area ``s²``::

    h_ratio = √r        w_ratio = 1 / √r
    w = w_ratio · s     h = h_ratio · s
    base = round((-w/2, -h/2, w/2, h/2))        (round half to even, as torch.round)

computed in float32 (torchvision's convention, so both give bit-identical anchors). The ``A = |r|·|s|``
base anchors of a level are ordered ratio-major: ``index = i_ratio · |s| + i_size``.
E.g. ``s = 32``: ``r = 1`` gives ``(-16, -16, 16, 16)``; ``r = 0.5`` gives ``w = 45.25``, ``h = 22.63``,
hence ``(-23, -11, 23, 11)``.

**Grid.** A level whose feature map is ``H_l x W_l`` on a padded batch of ``H x W`` pixels has the
integer strides ``(H // H_l, W // W_l)``; the anchors of location ``(y, x)`` are the base anchors shifted
by ``(x · stride_w, y · stride_h, x · stride_w, y · stride_h)``. (The shift puts the anchor centre on the
feature cell's top-left pixel, not its centre: torchvision's and Detectron2's choice, which pretrained
weights depend on.)

**Order** of the ``Σ_l H_l W_l A_l`` anchors of an image: level, then location (row-major: y, then x),
then base anchor. The RPN head's outputs are flattened in the same order.

FPN uses one size per level, ``((32,), (64,), (128,), (256,), (512,))`` with ratios ``(0.5, 1, 2)``
(3 anchors per location); the single-level C4 model of the paper uses ``((128, 256, 512),)`` with the
same ratios (9 anchors per location).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segdet.models.detection.image_list import ImageList, as_size

FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5
C4_SIZES = ((128, 256, 512),)
C4_ASPECT_RATIOS = ((0.5, 1.0, 2.0),)

# Grids for this many (grid sizes, strides, device, dtype) keys are kept; multi-scale training would
# otherwise grow the cache without bound.
_CACHE_SIZE = 16


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """The ``[|aspect_ratios| · |sizes|, 4]`` zero-centred xyxy anchors of one level, float32, ratio-major.

    See the module docstring for the formula.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack((-ws, -hs, ws, hs), dim=1) / 2).round()


def shifted_anchors(base: Tensor, grid_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Base anchors ``[A, 4]`` placed at every location of an ``(H_l, W_l)`` grid -> ``[H_l · W_l · A, 4]``.

    Location ``(y, x)`` shifts by ``(x · stride_w, y · stride_h)``; order: y, then x, then anchor.
    """
    (grid_h, grid_w), (stride_h, stride_w) = grid_size, stride
    # Integer shifts, converted once: exact for any realistic image size, also in float16.
    shifts_x = (torch.arange(grid_w, dtype=torch.int64, device=base.device) * stride_w).to(base.dtype)
    shifts_y = (torch.arange(grid_h, dtype=torch.int64, device=base.device) * stride_h).to(base.dtype)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4)


class AnchorGenerator(nn.Module):
    """Anchors for each level of a feature pyramid (or the single C4 level); see the module docstring.

    Args:
        sizes: per level, the anchor sizes (square roots of the areas) in pixels.
        aspect_ratios: per level, the ratios ``h / w``.
        cell_anchors: per level, the base anchors ``[A_l, 4]`` to use instead of :func:`base_anchors`
            (another design's, e.g. EfficientDet's centred and unrounded ones,
            :mod:`segdet.models.detection.efficientdet.anchors`); ``sizes`` and ``aspect_ratios`` then
            only describe them.

    It has no parameters or state-dict entries; the grids are cached per (grid sizes, strides, device,
    dtype) in the instance. The returned tensors are shared with the cache: do not modify them in place.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = FPN_SIZES,
        aspect_ratios: Sequence[Sequence[float]] = FPN_ASPECT_RATIOS,
        cell_anchors: Sequence[Tensor] | None = None,
    ) -> None:
        super().__init__()
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"{len(sizes)} levels of sizes but {len(aspect_ratios)} of aspect ratios")
        if any(len(s) == 0 for s in sizes) or any(len(r) == 0 for r in aspect_ratios):
            raise ValueError("every level needs at least one size and one aspect ratio")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        if cell_anchors is None:
            cell_anchors = [base_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]
        elif len(cell_anchors) != len(sizes):
            raise ValueError(f"{len(cell_anchors)} levels of cell anchors for {len(sizes)} levels of sizes")
        self.cell_anchors = list(cell_anchors)
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"

    def num_anchors_per_location(self) -> list[int]:
        """``A_l`` for each level (``|sizes_l| · |aspect_ratios_l|`` for :func:`base_anchors`)."""
        return [len(cell) for cell in self.cell_anchors]

    def grid_anchors(
        self,
        grid_sizes: Sequence[tuple[int, int]],
        strides: Sequence[tuple[int, int]],
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """All levels' anchors concatenated, ``[Σ_l H_l W_l A_l, 4]`` (cached, except in a graph that
        ``torch.export`` traces: there the sizes may be symbolic, and the graph computes them)."""
        key = None if torch.compiler.is_exporting() else (tuple(grid_sizes), tuple(strides), device, dtype)
        anchors = None if key is None else self._cache.get(key)
        if anchors is not None:
            self._cache.move_to_end(key)
            return anchors
        anchors = torch.cat(
            [
                shifted_anchors(base.to(device=device, dtype=dtype), size, stride)
                for base, size, stride in zip(self.cell_anchors, grid_sizes, strides, strict=True)
            ]
        )
        if key is not None:
            self._cache[key] = anchors
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return anchors

    def forward(
        self, image_list: ImageList, feature_maps: Sequence[Tensor], dtype: torch.dtype | None = None
    ) -> list[Tensor]:
        """Anchors of every image of the batch: a list of ``N`` tensors ``[Σ_l H_l W_l A_l, 4]``.

        All images share the padded size, hence the same anchors (the same tensor, not copies); anchors
        outside an image's own size are kept (the RPN clips proposals, and matching ignores nothing).
        Their device is the feature maps', their dtype ``dtype`` or else the feature maps'.
        """
        if len(feature_maps) != len(self.cell_anchors):
            raise ValueError(
                f"{len(feature_maps)} feature maps for an anchor generator of {len(self.cell_anchors)} levels"
            )
        image_h, image_w = image_list.tensors.shape[-2:]
        grid_sizes = [(as_size(f.shape[-2]), as_size(f.shape[-1])) for f in feature_maps]
        strides = [(image_h // h, image_w // w) for h, w in grid_sizes]
        first = feature_maps[0]
        anchors = self.grid_anchors(grid_sizes, strides, first.device, dtype or first.dtype)
        return [anchors] * len(image_list.image_sizes)
