"""The three reductions every loss offers, and the masked mean they share.

``reduction="none"`` returns the unreduced loss (ignored elements hold 0, as in ``torch.nn.functional``),
``"sum"`` its sum, ``"mean"`` its sum divided by a *denominator*: the number of elements, the number of
non-ignored elements, or the sum of the weights of the non-ignored targets (multi-class cross-entropy,
as ``F.cross_entropy`` does).

One deliberate difference from PyTorch: a mean over nothing (every element ignored, or an empty batch)
is 0 and keeps its graph (the gradient is 0), where ``F.cross_entropy`` returns NaN. A batch whose
crops happen to contain only ``ignore_index`` pixels must not poison the weights with NaN.

A half-precision (fp16 / bf16) loss is summed and divided in float32, and its ``"mean"`` and ``"sum"``
are float32 (as under CUDA autocast, whose ``sum`` is float32): in fp16 a sum or an element count above
65504 is inf, which made the mean 0 or NaN, and bf16 keeps about 3 significant digits.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from segdet.losses._inputs import HALF_DTYPES

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def accurate_sum(t: Tensor) -> Tensor:
    """``t.sum()``, accumulated and returned in float32 when ``t`` is fp16 / bf16 (module docstring)."""
    return t.sum(dtype=torch.float32) if t.dtype in HALF_DTYPES else t.sum()


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of ``"none"``, ``"mean"``, ``"sum"``; raise ValueError otherwise."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")
    return reduction


def reduce_loss(loss: Tensor, reduction: str, denominator: Tensor | float | None = None) -> Tensor:
    """Reduce an element-wise ``loss`` whose masked-out elements are already 0.

    ``"mean"`` is ``loss.sum() / denominator`` (``denominator`` defaults to ``loss.numel()``); a zero
    denominator gives 0 instead of NaN: the numerator is then 0 too, because every term was masked.
    """
    check_reduction(reduction)
    if reduction == "none":
        return loss
    total = accurate_sum(loss)
    if reduction == "sum":
        return total
    if denominator is None:
        denominator = float(loss.numel())
    denominator = torch.as_tensor(denominator, dtype=total.dtype, device=total.device)
    # torch.where rather than clamp_min(1): a weighted denominator may legitimately lie in (0, 1).
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return total / safe
