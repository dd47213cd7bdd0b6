"""Data augmentation for detection, instance and semantic segmentation, on torchvision.transforms.v2.

Every transform takes and returns ``(image, target)`` as :class:`~segdet.data.dataset.SegDetDataset`
yields them, and moves everything the target holds together: boxes
(``tv_tensors.BoundingBoxes``), instance masks (``tv_tensors.Mask``, ``N x H x W``) and the semantic
mask (:class:`SemanticMask`, ``H x W``). torchvision's v2 kernels do the geometry; this module adds what
v2 lacks:

* :class:`SemanticMask`, so padding can fill class maps with the ignore index while instance masks get 0
  (defined in :mod:`segdet.data.target_transforms`, re-exported here);
* :class:`ResizeShortestEdge` (Detectron2's ``ResizeShortestEdge``: sides rounded to nearest, where
  torchvision's ``GeneralizedRCNNTransform`` floors them, 800 x 1067 against 800 x 1066 for 480 x 640;
  the detectors' own resize, :mod:`segdet.models.detection.transform`, is torchvision's),
  :class:`RandomScale` and :class:`Letterbox` (YOLO's fixed-size input, with :func:`unletterbox_boxes`
  to map predictions back);
* :func:`random_crop`, with :class:`BoxesFromMasks` and :class:`SanitizeTargets`
  (:mod:`segdet.data.target_transforms`): boxes re-fitted to the cropped masks, then emptied objects
  dropped along with their labels, masks, ``iscrowd`` and ``difficult``.

Masks are resized with ``NEAREST_EXACT`` (output pixel ``i`` samples input pixel
``floor((i + 0.5) * in / out)``, the pixel-centre rule PIL's NEAREST uses), so label values never mix
and a mask never reaches more than half a pixel beyond its exactly scaled box (shrinking can drop a thin
part altogether); images use antialiased bilinear.

The presets at the end are plain functions returning a ``v2.Compose``. Their output image is float32 in
[0, 1], or normalised with ImageNet's mean and std when ``normalize=True`` (the segmentation presets'
default; detection models normalise inside the model, like torchvision's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_flatten
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from segdet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from segdet.data.target_transforms import (
    IGNORE_INDEX,
    BoxesFromMasks,
    SanitizeTargets,
    SemanticMask,
    fills,
    per_object_fields,
)

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LETTERBOX_FILL",
    "MULTISCALE_SIZES",
    "BoxesFromMasks",
    "Letterbox",
    "LetterboxParams",
    "RandomScale",
    "ResizeShortestEdge",
    "SanitizeTargets",
    "SemanticMask",
    "detection_eval",
    "detection_train",
    "fills",
    "letterbox_params",
    "per_object_fields",
    "random_crop",
    "segmentation_eval",
    "segmentation_train",
    "shortest_edge_size",
    "unletterbox_boxes",
]

LETTERBOX_FILL = 114  # YOLO's grey padding
# torchvision's detection reference multi-scale training sizes (shorter side), Detectron2's "choice" mode.
MULTISCALE_SIZES = tuple(range(480, 801, 32))


def _resize(transform: v2.Transform, inpt: Any, size: tuple[int, int]) -> Any:
    """Resize one input to ``(height, width)``: masks nearest (pixel centres), images antialiased
    bilinear, boxes scaled by ``new / old`` per axis."""
    if isinstance(inpt, tv_tensors.Mask):
        mode = v2.InterpolationMode.NEAREST_EXACT
        return transform._call_kernel(F.resize, inpt, size=list(size), interpolation=mode)
    mode = v2.InterpolationMode.BILINEAR
    return transform._call_kernel(F.resize, inpt, size=list(size), interpolation=mode, antialias=True)


def shortest_edge_size(height: int, width: int, short: int, max_size: int | None) -> tuple[int, int]:
    """Output ``(height, width)`` when the shorter side becomes ``short`` and the longer side stays at
    most ``max_size``: ``s = min(short / min(h, w), max_size / max(h, w))``, sides ``round(h s)``,
    ``round(w s)`` (Detectron2's ``ResizeShortestEdge.get_output_shape``, with its order of operations,
    so that sizes at exact halves round as there; a side is at least 1)."""
    size = float(short)
    scale = size / min(height, width)
    newh, neww = (size, scale * width) if height < width else (scale * height, size)
    if max_size is not None and max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


class ResizeShortestEdge(v2.Transform):
    """Resize so the shorter side is ``min_size`` (one of them, drawn per call, when a sequence is given:
    multi-scale training) and the longer side at most ``max_size``; see :func:`shortest_edge_size`."""

    def __init__(self, min_size: int | Sequence[int], max_size: int | None = 1333) -> None:
        super().__init__()
        self.min_size = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        if not self.min_size:
            raise ValueError("min_size must not be empty")
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        short = self.min_size[int(torch.randint(len(self.min_size), ()))]
        return {"size": shortest_edge_size(h, w, short, self.max_size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _resize(self, inpt, params["size"])


class RandomScale(v2.Transform):
    """Scale by a factor ``f ~ U(scale_range)``: both sides of the image times ``f`` or, with
    ``base_size``, the shorter side (``edge="short"``, mmsegmentation's ``RandomResize`` with a ratio
    range) or the longer side (``edge="long"``, YOLO's scale gain on a letterboxed image) set to
    ``base_size * f``, keeping the aspect ratio."""

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 2.0),
        base_size: int | None = None,
        edge: str = "short",
    ) -> None:
        super().__init__()
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
        if edge not in ("short", "long"):
            raise ValueError(f"edge must be 'short' or 'long', got {edge!r}")
        self.scale_range = tuple(scale_range)
        self.base_size = base_size
        self.edge = edge

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        lo, hi = self.scale_range
        f = lo + (hi - lo) * float(torch.rand(()))
        if self.base_size is not None:
            f *= self.base_size / (min(h, w) if self.edge == "short" else max(h, w))
        return {"size": (max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _resize(self, inpt, params["size"])


class LetterboxParams(NamedTuple):
    """How :class:`Letterbox` mapped an image: ``x' = x * scale[0] + pad[0]``,
    ``y' = y * scale[1] + pad[1]``; ``size`` is the original ``(height, width)``.

    The scale is per axis because sides are rounded to whole pixels (``round(w * s) / w`` differs from
    ``s`` by up to ``0.5 / w``); using the exact factors makes :func:`unletterbox_boxes` invert the box
    mapping exactly.
    """

    scale: tuple[float, float]
    pad: tuple[int, int]
    size: tuple[int, int]


def letterbox_params(
    height: int, width: int, size: tuple[int, int], scale_up: bool = True
) -> LetterboxParams:
    """Fit ``height x width`` into ``size = (H, W)`` keeping the aspect ratio:
    ``s = min(H / h, W / w)`` (at most 1 unless ``scale_up``), resized to ``round(h s) x round(w s)``
    and centred, the left/top padding being the floor of half the slack (Ultralytics' ``LetterBox``)."""
    s = min(size[0] / height, size[1] / width)
    if not scale_up:
        s = min(s, 1.0)
    nh, nw = max(1, round(height * s)), max(1, round(width * s))
    pad = ((size[1] - nw) // 2, (size[0] - nh) // 2)
    return LetterboxParams((nw / width, nh / height), pad, (height, width))


def unletterbox_boxes(
    boxes: torch.Tensor,
    scale: float | Sequence[float],
    pad: Sequence[float],
    size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Map ``xyxy`` boxes from letterboxed to original image coordinates: ``x = (x' - pad_x) / scale_x``,
    ``y = (y' - pad_y) / scale_y``; clipped to the original ``size = (h, w)`` when given."""
    sx, sy = (scale, scale) if isinstance(scale, (int, float)) else scale
    b = torch.as_tensor(boxes, dtype=torch.float32)
    out = torch.empty_like(b)
    out[..., 0::2] = (b[..., 0::2] - pad[0]) / sx
    out[..., 1::2] = (b[..., 1::2] - pad[1]) / sy
    if size is not None:
        out[..., 0::2] = out[..., 0::2].clamp(0, size[1])
        out[..., 1::2] = out[..., 1::2].clamp(0, size[0])
    return out


class Letterbox(v2.Transform):
    """Resize keeping the aspect ratio to fit ``size`` and pad to exactly ``size`` (YOLO's input):
    images padded with ``fill`` (114), instance masks with 0, semantic masks with ``ignore_index``.

    The mapping is recorded as ``target["letterbox"]`` (:class:`LetterboxParams`) in every dict of the
    sample, so predictions can be mapped back with :func:`unletterbox_boxes`.
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 640,
        fill: float = LETTERBOX_FILL,
        ignore_index: int = IGNORE_INDEX,
        scale_up: bool = True,
    ) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale_up = scale_up
        self._fill = fills(fill, ignore_index)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        return {"letterbox": letterbox_params(h, w, self.size, self.scale_up)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        lb: LetterboxParams = params["letterbox"]
        h, w = lb.size
        nh, nw = round(h * lb.scale[1]), round(w * lb.scale[0])
        out = _resize(self, inpt, (nh, nw))
        left, top = lb.pad
        padding = [left, top, self.size[1] - nw - left, self.size[0] - nh - top]
        fill = self._fill.get(type(inpt), self._fill["others"])
        return self._call_kernel(F.pad, out, padding=padding, fill=fill)

    def forward(self, *inputs: Any) -> Any:
        flat, _ = tree_flatten(inputs if len(inputs) > 1 else inputs[0])
        needed = self._needs_transform_list(flat)
        h, w = query_size([x for x, n in zip(flat, needed, strict=True) if n])
        outputs = super().forward(*inputs)
        record = letterbox_params(h, w, self.size, self.scale_up)
        for part in outputs if isinstance(outputs, tuple) else (outputs,):
            if isinstance(part, dict):
                part["letterbox"] = record
        return outputs


def random_crop(
    size: int | tuple[int, int],
    *,
    fill: float = 0,
    ignore_index: int = IGNORE_INDEX,
    recompute_boxes: bool = True,
) -> v2.Compose:
    """A random ``size`` crop (padding first where the image is smaller, with :func:`fills`), then
    boxes re-fitted to their masks (``recompute_boxes``, when there are masks), clipped to the crop, and
    objects left without area removed with all their fields."""
    steps: list[v2.Transform] = [v2.RandomCrop(size, pad_if_needed=True, fill=fills(fill, ignore_index))]
    if recompute_boxes:
        steps.append(BoxesFromMasks())
    steps += [v2.ClampBoundingBoxes(), SanitizeTargets()]
    return v2.Compose(steps)


def _finish(steps: list, normalize: bool, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Clean the boxes, convert the image to float [0, 1] and optionally normalise
    (``(x - mean) / std`` per channel)."""
    steps = [*steps, v2.ClampBoundingBoxes(), SanitizeTargets(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


# ----------------------------------------------------------------------------------------- presets
def detection_train(
    min_size: int | Sequence[int] | None = MULTISCALE_SIZES,
    max_size: int = 1333,
    *,
    hflip: float = 0.5,
    crop_size: int | tuple[int, int] | None = None,
    photometric: bool = False,
    normalize: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Detection training: optional photometric distortion (SSD's), optional random crop
    (:func:`random_crop`, before resizing), multi-scale :class:`ResizeShortestEdge` (``min_size=None``:
    none, for models that resize their inputs themselves, as segdet's and torchvision's detectors do),
    horizontal flip with probability ``hflip`` (none at 0); boxes clamped to the image and degenerate
    objects dropped with their masks; float [0, 1] output (normalised only with ``normalize``).
    ``segdet train`` uses it with ``min_size=None`` for every detector."""
    steps: list = [v2.RandomPhotometricDistort()] if photometric else []
    if crop_size is not None:
        steps.append(random_crop(crop_size))
    if min_size is not None:
        steps.append(ResizeShortestEdge(min_size, max_size))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    return _finish(steps, normalize, mean, std)


def detection_eval(
    min_size: int | None = 800,
    max_size: int = 1333,
    *,
    normalize: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Evaluation resize (shorter side ``min_size``, longer at most ``max_size``; ``None``: none, for
    models that resize their inputs themselves), float [0, 1]."""
    steps = [] if min_size is None else [ResizeShortestEdge(min_size, max_size)]
    return _finish(steps, normalize, mean, std)


def segmentation_train(
    crop_size: int | tuple[int, int] = 512,
    *,
    scale_range: tuple[float, float] = (0.5, 2.0),
    base_size: int | None = None,
    hflip: float = 0.5,
    photometric: bool = True,
    ignore_index: int = IGNORE_INDEX,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Semantic segmentation training (mmsegmentation / torchvision reference recipe):
    :class:`RandomScale` by ``U(scale_range)`` (relative to the image, or to ``base_size``), pad to at
    least ``crop_size`` (image 0, labels ``ignore_index``), random ``crop_size`` crop, horizontal flip,
    photometric distortion, ImageNet normalisation."""
    steps: list = [RandomScale(scale_range, base_size), random_crop(crop_size, ignore_index=ignore_index)]
    steps.append(v2.RandomHorizontalFlip(hflip))
    if photometric:
        steps.append(v2.RandomPhotometricDistort())
    return _finish(steps, normalize, mean, std)


def segmentation_eval(
    size: int | None = None,
    *,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Semantic segmentation evaluation: the image at full resolution (or its shorter side resized to
    ``size``), ImageNet normalisation."""
    steps: list = [] if size is None else [ResizeShortestEdge(size, None)]
    return _finish(steps, normalize, mean, std)
