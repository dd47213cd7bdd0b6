"""Argument and tensor checks shared by the losses, so that every loss words its errors alike.

Two input layouts exist in the family (``x`` are logits, never probabilities, unless a loss says so):

* **element-wise** (binary, multi-label): logits of any shape and float targets of the *same* shape,
  each element an independent sigmoid; targets may be soft, in [0, 1];
* **class-index** (multi-class): logits ``N×C×d1×...`` and integer targets ``N×d1×...`` holding class
  indices in ``[0, C)`` or ``ignore_index``.

Errors are ``ValueError`` (a programming error in the caller, not a problem in a user's data file).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: the half-precision dtypes whose sums and products the losses take in float32
HALF_DTYPES = (torch.float16, torch.bfloat16)


def shape_str(t: Tensor) -> str:
    """``(2, 3, 8, 8) float32``: how error messages show a tensor."""
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"


def check_elementwise_inputs(logits: Tensor, targets: Tensor, loss_name: str) -> None:
    """Float logits and float targets of the same shape (no silent broadcasting)."""
    if not logits.is_floating_point() or not targets.is_floating_point() or logits.shape != targets.shape:
        raise ValueError(
            f"{loss_name} expects float logits and float targets of the same shape, "
            f"got logits {shape_str(logits)} and targets {shape_str(targets)}"
        )


def check_class_index_inputs(logits: Tensor, targets: Tensor, loss_name: str) -> None:
    """Float logits ``N×C×...`` and integer targets ``N×...`` (the logits' shape without dim 1).

    Any integer dtype is accepted (a uint8 label map read from a PNG, say); the losses convert to int64.
    """
    expected = (logits.shape[:1] + logits.shape[2:]) if logits.dim() >= 2 else None
    if (
        not logits.is_floating_point()
        or targets.is_floating_point()
        or targets.dtype == torch.bool
        or expected is None
        or targets.shape != expected
    ):
        hint = ""
        if targets.is_floating_point() and targets.shape == logits.shape:
            hint = " (float targets shaped like the logits are one-hot or multi-label: pass class indices)"
        raise ValueError(
            f"{loss_name} expects float logits N×C×... and int64 class-index targets N×..., "
            f"got logits {shape_str(logits)} and targets {shape_str(targets)}{hint}"
        )


def float32_if_half(t: Tensor) -> Tensor:
    """``t`` in float32 when it is fp16 / bf16, else unchanged (the cast keeps the graph).

    For the losses whose sums or products outgrow half precision: fp16 overflows past 65504 (the area
    of a 256×256 box, a Dice sum over more pixels than that), bf16 keeps about 3 significant digits.
    """
    return t.float() if t.dtype in HALF_DTYPES else t


def valid_mask(targets: Tensor, ignore_index: int | float | None) -> Tensor | None:
    """Boolean mask of the elements that count (``targets != ignore_index``); None when nothing is ignored."""
    if ignore_index is None:
        return None
    return targets != ignore_index


def check_class_indices(
    targets: Tensor, valid: Tensor | None, num_classes: int, ignore_index: int | None, loss_name: str
) -> None:
    """Every counted target is a class index in ``[0, num_classes)``.

    This costs one device synchronisation, but an out-of-range label otherwise ends as a CUDA device-side
    assert far from its cause (or, worse, a silently wrong one-hot).
    """
    counted = targets if valid is None else targets[valid]
    if counted.numel() and bool(((counted < 0) | (counted >= num_classes)).any()):
        lo, hi = int(counted.min()), int(counted.max())
        raise ValueError(
            f"{loss_name}: targets must be class indices in [0, {num_classes}) or ignore_index="
            f"{ignore_index}, found values in [{lo}, {hi}]"
        )


def check_class_weight(weight: Tensor | None, num_classes: int, loss_name: str) -> None:
    """A per-class weight is a 1-D float tensor of length C with non-negative entries."""
    if weight is None:
        return
    if weight.dim() != 1 or weight.numel() != num_classes or not weight.is_floating_point():
        raise ValueError(
            f"{loss_name}: weight must be a 1-D float tensor with one entry per class ({num_classes}), "
            f"got {shape_str(weight)}"
        )


def check_broadcast_weight(weight: Tensor | None, shape: torch.Size, name: str, loss_name: str) -> None:
    """An element-wise weight must broadcast to the loss's shape without enlarging it."""
    if weight is None:
        return
    try:
        broadcast = torch.broadcast_shapes(weight.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(
            f"{loss_name}: {name} of shape {tuple(weight.shape)} does not broadcast to the logits' shape "
            f"{tuple(shape)} (broadcasting aligns trailing dimensions: a per-channel weight for N×C×H×W "
            "logits has shape C×1×1)"
        )


def check_non_negative(value: float, name: str, loss_name: str) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{loss_name}: {name} must be >= 0, got {value!r}")


def check_unit_interval(value: float, name: str, loss_name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{loss_name}: {name} must lie in [0, 1], got {value!r}")
