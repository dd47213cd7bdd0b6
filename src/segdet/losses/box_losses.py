"""Box regression losses: smooth L1, L1, IoU and GIoU.

Smooth L1 and L1 act element-wise on any tensors (usually encoded box deltas ``(dx, dy, dw, dh)``).
IoU and GIoU act on *paired* boxes: ``pred[i]`` against ``target[i]``, both ``(..., 4)`` in absolute
``(x1, y1, x2, y2)`` coordinates with ``x1 ≤ x2``, ``y1 ≤ y2`` (the toolkit's box convention).

The element-wise IoU/GIoU are computed here, not with the ``N×M`` matrix of ``torchvision.ops.box_iou``,
which would cost ``N²`` for the ``N`` diagonal entries a loss needs. Half-precision (fp16 / bf16) boxes
are upcast to float32 first, as torchvision's box losses do: an fp16 area overflows past 65504 (a box of
256×256 pixels), and IoU and GIoU are then float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segdet.losses._inputs import check_non_negative, float32_if_half, shape_str
from segdet.losses._reduction import check_reduction, reduce_loss


def _check_same_shape(input: Tensor, target: Tensor, loss_name: str) -> None:
    if not input.is_floating_point() or not target.is_floating_point() or input.shape != target.shape:
        raise ValueError(
            f"{loss_name} expects float input and target of the same shape, "
            f"got input {shape_str(input)} and target {shape_str(target)}"
        )


def _check_boxes(pred: Tensor, target: Tensor, loss_name: str) -> None:
    _check_same_shape(pred, target, loss_name)
    if pred.dim() == 0 or pred.shape[-1] != 4:
        raise ValueError(f"{loss_name} expects boxes of shape (..., 4) in xyxy, got {shape_str(pred)}")


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float = 1.0, reduction: str = "mean") -> Tensor:
    """Smooth L1 (Girshick 2015, "Fast R-CNN"), the Huber loss divided by β.

    With ``d = |input − target|``: ``ℓ = 0.5 · d² / β`` if ``d < β``, else ``d − 0.5 · β``; β = 0 is the
    L1 loss. Equal to ``F.smooth_l1_loss(input, target, beta=beta)``; the mean of an empty tensor is 0.
    """
    check_reduction(reduction)
    check_non_negative(beta, "beta", "smooth_l1_loss")
    _check_same_shape(input, target, "smooth_l1_loss")
    diff = (input - target).abs()
    if beta == 0:
        # The quadratic branch would divide by 0, and its (discarded) gradient would be 0 · inf = NaN.
        return reduce_loss(diff, reduction)
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return reduce_loss(loss, reduction)


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """L1 loss ``ℓ = |input − target|``; equal to ``F.l1_loss``, except that an empty mean is 0."""
    check_reduction(reduction)
    _check_same_shape(input, target, "l1_loss")
    return reduce_loss((input - target).abs(), reduction)


def _paired_iou(pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Element-wise ``IoU = |A∩B| / (|A∪B| + eps)`` and the union ``|A∪B|`` of paired xyxy boxes.

    Widths and heights are clamped at 0, so an inverted predicted box (x2 < x1, possible early in
    training) has area 0 rather than a negative one that would corrupt the union.
    """
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    area_p = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0)
    area_t = (tx2 - tx1).clamp(min=0) * (ty2 - ty1).clamp(min=0)
    inter_w = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
    inter_h = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
    inter = inter_w * inter_h
    union = area_p + area_t - inter
    return inter / (union + eps), union


def iou_loss(
    pred_boxes: Tensor, target_boxes: Tensor, *, eps: float = 1e-7, reduction: str = "mean"
) -> Tensor:
    """IoU loss ``ℓ = 1 − IoU(pred, target)`` on paired xyxy boxes (the linear form; UnitBox, Yu et al.
    2016, uses −ln IoU). ``IoU = |A∩B| / (|A∪B| + eps)``. Its gradient is 0 for disjoint boxes: prefer
    :func:`giou_loss` when predictions may not overlap their targets.

    Args:
        pred_boxes, target_boxes: float ``(..., 4)`` of the same shape.
        eps: added to the union, only to avoid 0/0 for degenerate boxes.
        reduction: ``"none"`` (shape ``(...)``), ``"mean"`` over boxes (0 for no box) or ``"sum"``.
    """
    check_reduction(reduction)
    _check_boxes(pred_boxes, target_boxes, "iou_loss")
    pred_boxes, target_boxes = float32_if_half(pred_boxes), float32_if_half(target_boxes)
    iou, _ = _paired_iou(pred_boxes, target_boxes, eps)
    return reduce_loss(1 - iou, reduction)


def giou_loss(
    pred_boxes: Tensor, target_boxes: Tensor, *, eps: float = 1e-7, reduction: str = "mean"
) -> Tensor:
    """Generalized IoU loss (Rezatofighi et al. 2019): ``ℓ = 1 − GIoU``, in [0, 2].

    ``GIoU = IoU − (|C| − |A∪B|) / (|C| + eps)``, C the smallest box enclosing A and B. Equal to
    ``torchvision.ops.generalized_box_iou_loss`` for valid boxes (x1 ≤ x2, y1 ≤ y2); an inverted
    predicted box counts as area 0 here. Arguments as in :func:`iou_loss`.
    """
    check_reduction(reduction)
    _check_boxes(pred_boxes, target_boxes, "giou_loss")
    pred_boxes, target_boxes = float32_if_half(pred_boxes), float32_if_half(target_boxes)
    iou, union = _paired_iou(pred_boxes, target_boxes, eps)
    px1, py1, px2, py2 = pred_boxes.unbind(-1)
    tx1, ty1, tx2, ty2 = target_boxes.unbind(-1)
    enclose_w = (torch.maximum(px2, tx2) - torch.minimum(px1, tx1)).clamp(min=0)
    enclose_h = (torch.maximum(py2, ty2) - torch.minimum(py1, ty1)).clamp(min=0)
    enclose = enclose_w * enclose_h
    giou = iou - (enclose - union) / (enclose + eps)
    return reduce_loss(1 - giou, reduction)


class SmoothL1Loss(nn.Module):
    """Module form of :func:`smooth_l1_loss`."""

    def __init__(self, beta: float = 1.0, reduction: str = "mean"):
        super().__init__()
        check_non_negative(beta, "beta", "SmoothL1Loss")
        self.beta = beta
        self.reduction = check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(input, target, beta=self.beta, reduction=self.reduction)


class L1Loss(nn.Module):
    """Module form of :func:`l1_loss`."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return l1_loss(input, target, reduction=self.reduction)


class IoULoss(nn.Module):
    """Module form of :func:`iou_loss`."""

    def __init__(self, *, eps: float = 1e-7, reduction: str = "mean"):
        super().__init__()
        self.eps = eps
        self.reduction = check_reduction(reduction)

    def forward(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return iou_loss(pred_boxes, target_boxes, eps=self.eps, reduction=self.reduction)


class GIoULoss(nn.Module):
    """Module form of :func:`giou_loss`."""

    def __init__(self, *, eps: float = 1e-7, reduction: str = "mean"):
        super().__init__()
        self.eps = eps
        self.reduction = check_reduction(reduction)

    def forward(self, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        return giou_loss(pred_boxes, target_boxes, eps=self.eps, reduction=self.reduction)
