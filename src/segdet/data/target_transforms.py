"""Target-side pieces for torchvision.transforms.v2: the semantic-mask type and object bookkeeping.

* :class:`SemanticMask` marks ``target["semantic"]`` so that padding fills class maps with the ignore
  index while instance masks get 0: v2 looks ``fill`` up by the input's exact type (:func:`fills`), and
  dispatches kernels along the type's MRO, so a ``Mask`` subclass is resized, cropped and flipped like a
  mask.
* :class:`BoxesFromMasks` re-fits boxes to their masks after a crop, and :class:`SanitizeTargets` drops
  emptied objects with all their per-object fields (labels, instance masks, ``iscrowd``, ``difficult``)
  while leaving the semantic mask alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IGNORE_INDEX = 255


class SemanticMask(tv_tensors.Mask):
    """An ``H x W`` map of class indices (``ignore_index`` marks void). Transformed like any mask, but
    padded with the ignore index instead of 0 (see :func:`fills`) and never filtered per object."""


def fills(image: float = 0, ignore_index: int = IGNORE_INDEX) -> dict:
    """The ``fill`` dict for v2 padding: ``image`` for images, 0 for instance masks, ``ignore_index``
    for semantic masks. A new dict each call, because v2 transforms convert it in place."""
    return {
        tv_tensors.Image: image,
        tv_tensors.Video: image,
        tv_tensors.Mask: 0,
        SemanticMask: ignore_index,
        "others": image,  # pure-tensor and PIL images
    }


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``xyxy`` boxes of ``N x H x W`` masks (``x2`` = last column + 1, like
    :func:`segdet.data.masks.bitmap_box`); an empty mask gets ``(0, 0, 0, 0)``."""
    _, h, w = masks.shape
    rows, cols = masks.bool().any(dim=2), masks.bool().any(dim=1)
    ar_h, ar_w = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    y2 = torch.where(rows, ar_h + 1, 0).amax(dim=1)
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    x2 = torch.where(cols, ar_w + 1, 0).amax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    boxes[~rows.any(dim=1)] = 0.0
    return boxes


def _is_instance_masks(x: Any) -> bool:
    return isinstance(x, tv_tensors.Mask) and not isinstance(x, SemanticMask) and x.ndim == 3


class BoxesFromMasks(v2.Transform):
    """Replace each box by the tight box of its instance mask (when the sample has instance masks, one
    per box). After a crop, a clipped box can be larger than what is left of a rotated or concave
    object; Detectron2 re-fits boxes to masks after cropping for the same reason (``recompute_boxes``)."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        flat, _ = tree_flatten(sample)
        masks = [x for x in flat if _is_instance_masks(x)]
        boxes = [x for x in flat if isinstance(x, tv_tensors.BoundingBoxes)]
        if len(masks) != 1 or len(boxes) != 1 or masks[0].shape[0] != boxes[0].shape[0]:
            return sample
        old = boxes[0]
        xyxy = _mask_boxes(masks[0].as_subclass(torch.Tensor)).to(old.dtype)
        new = F.convert_bounding_box_format(xyxy, old_format="XYXY", new_format=old.format)
        return _replace(sample, old, tv_tensors.wrap(new, like=old))


def _replace(sample: Any, old: Any, new: Any) -> Any:
    """``sample`` with the object ``old`` (by identity) replaced by ``new`` in its tuples and dicts."""
    if sample is old:
        return new
    if isinstance(sample, tuple):
        return tuple(_replace(s, old, new) for s in sample)
    if isinstance(sample, list):
        return [_replace(s, old, new) for s in sample]
    if isinstance(sample, dict):
        return {k: _replace(v, old, new) for k, v in sample.items()}
    return sample


PER_OBJECT_KEYS = ("labels", "iscrowd", "difficult", "scores")


def per_object_fields(sample: Any) -> tuple[torch.Tensor, ...] | None:
    """The target's per-object tensors other than boxes and masks (``labels``, ``iscrowd``,
    ``difficult``, ``scores`` where present): what :class:`SanitizeTargets` filters with the boxes."""
    parts = sample if isinstance(sample, tuple) else (sample,)
    target = next((x for x in parts if isinstance(x, dict)), None)
    if target is None:
        return None
    return tuple(target[k] for k in PER_OBJECT_KEYS if isinstance(target.get(k), torch.Tensor)) or None


class SanitizeTargets(v2.SanitizeBoundingBoxes):
    """``v2.SanitizeBoundingBoxes`` that removes degenerate boxes (a side below ``min_size``) together
    with every per-object field (:func:`per_object_fields`) and the instance masks, and leaves semantic
    masks alone (v2 would index any ``Mask`` with the per-box keep vector, which silently picks rows of an
    ``H x W`` map when ``H`` equals the number of boxes)."""

    def __init__(self, min_size: float = 1.0) -> None:
        super().__init__(min_size=min_size, labels_getter=per_object_fields)

    def forward(self, *inputs: Any) -> Any:
        flat, _ = tree_flatten(inputs if len(inputs) > 1 else inputs[0])
        if not any(isinstance(x, tv_tensors.BoundingBoxes) for x in flat):
            return inputs if len(inputs) > 1 else inputs[0]  # a semantic-only sample: nothing to sanitize
        return super().forward(*inputs)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask) and not _is_instance_masks(inpt):
            return inpt
        return super().transform(inpt, params)
