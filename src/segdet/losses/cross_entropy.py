"""Cross-entropy losses from logits: binary (plain, weighted, balanced) and multi-class.

Notation (Jadon 2020, "A survey of loss functions for semantic segmentation"): ``x`` a logit, ``p`` the
target (0/1, or soft in [0, 1]), ``p̂`` the predicted probability: ``p̂ = σ(x)`` for the binary forms,
``p̂ = softmax(x)`` over the class dimension for the multi-class form.

Numerical stability: ``log p̂`` and ``log(1 − p̂)`` are computed as ``logsigmoid(x)`` and
``logsigmoid(−x)`` (``log_softmax`` for the multi-class form), never as ``log(sigmoid(x))``, so logits of
±1e4 give the exact finite loss (≈ |x| when wrong, 0 when right) and finite gradients.

Binary inputs: logits and float targets of the same shape (any shape: N, N×1×H×W, N×C×H×W multi-label).
Multi-class inputs: logits ``N×C×d1×...`` and int64 targets ``N×d1×...``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.losses._inputs import (
    check_broadcast_weight,
    check_class_index_inputs,
    check_class_indices,
    check_class_weight,
    check_elementwise_inputs,
    check_unit_interval,
    valid_mask,
)
from segdet.losses._reduction import accurate_sum, check_reduction, reduce_loss


def _masked_elementwise_reduce(
    loss: Tensor, valid: Tensor | None, weight: Tensor | None, reduction: str
) -> Tensor:
    """Apply an element-wise ``weight``, zero the ignored elements, reduce; mean counts non-ignored ones."""
    if weight is not None:
        loss = loss * weight
    if valid is None:
        return reduce_loss(loss, reduction)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return reduce_loss(loss, reduction, valid.sum())


def _binary_ce_terms(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The two halves ``−p·log p̂`` and ``−(1 − p)·log(1 − p̂)`` of the binary cross-entropy."""
    return -targets * F.logsigmoid(logits), -(1 - targets) * F.logsigmoid(-logits)


def _prepare_binary(
    logits: Tensor,
    targets: Tensor,
    weight: Tensor | None,
    ignore_index: float | None,
    reduction: str,
    loss_name: str,
) -> tuple[Tensor, Tensor | None]:
    """Check binary inputs; return the targets with ignored elements set to 0, and the valid mask."""
    check_reduction(reduction)
    check_elementwise_inputs(logits, targets, loss_name)
    check_broadcast_weight(weight, logits.shape, "weight", loss_name)
    valid = valid_mask(targets, ignore_index)
    if valid is not None:
        # An ignore value such as 255 must not enter the arithmetic, even in terms that are masked later.
        targets = torch.where(valid, targets, torch.zeros_like(targets))
    return targets, valid


def binary_cross_entropy_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    pos_weight: Tensor | float | None = None,
    weight: Tensor | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross-entropy from logits, each element an independent sigmoid.

    ``ℓ = −w · (β · p · log p̂ + (1 − p) · log(1 − p̂))`` with ``p̂ = σ(x)``, ``β = pos_weight`` (1 when
    None) and ``w = weight`` (1 when None). With ``pos_weight`` this is the weighted cross-entropy (WCE).
    Equal to ``F.binary_cross_entropy_with_logits(x, p, weight=w, pos_weight=β)``.

    Args:
        logits: float tensor of any shape.
        targets: float tensor of the same shape, values in [0, 1] (soft targets allowed), or
            ``ignore_index`` for elements that must not count.
        pos_weight: β > 0, a float or a tensor broadcastable to the logits (e.g. one per channel: C×1×1
            for N×C×H×W logits). β > 1 raises recall, β < 1 precision.
        weight: element-wise rescaling broadcastable to the logits (a per-class weight for multi-label
            N×C×H×W logits has shape C×1×1).
        ignore_index: target value whose elements contribute nothing (None: none ignored).
        reduction: ``"none"``, ``"mean"`` (over non-ignored elements; 0 if there are none, where torch
            would give NaN) or ``"sum"``.
    """
    name = "binary_cross_entropy_loss"
    targets, valid = _prepare_binary(logits, targets, weight, ignore_index, reduction, name)
    if isinstance(pos_weight, Tensor):
        check_broadcast_weight(pos_weight, logits.shape, "pos_weight", name)
    elif pos_weight is not None and not pos_weight > 0:
        raise ValueError(f"{name}: pos_weight must be > 0, got {pos_weight!r}")
    pos, neg = _binary_ce_terms(logits, targets)
    if pos_weight is not None:
        pos = pos_weight * pos
    return _masked_elementwise_reduce(pos + neg, valid, weight, reduction)


def weighted_binary_cross_entropy_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    beta: Tensor | float,
    weight: Tensor | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Weighted cross-entropy (WCE): ``WCE = −(β · p · log p̂ + (1 − p) · log(1 − p̂))``, ``p̂ = σ(x)``.

    Only positives are re-weighted (β > 1 penalises false negatives more); this is
    :func:`binary_cross_entropy_loss` with ``pos_weight=beta`` (``pos_weight`` of
    ``F.binary_cross_entropy_with_logits``). Other arguments as there.
    """
    return binary_cross_entropy_loss(
        logits, targets, pos_weight=beta, weight=weight, ignore_index=ignore_index, reduction=reduction
    )


def balanced_binary_cross_entropy_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    beta: float | Literal["auto"] = "auto",
    weight: Tensor | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Balanced cross-entropy: ``BCE = −(β · p · log p̂ + (1 − β) · (1 − p) · log(1 − p̂))``, ``p̂ = σ(x)``.

    Unlike WCE, negatives are re-weighted too, by ``1 − β``. ``beta="auto"`` sets β to the fraction of
    negative (non-ignored) target mass in the batch, ``β = 1 − Σp / n``, as in HED (Xie & Tu 2015,
    "Holistically-nested edge detection"), so rare positives weigh as much as the many negatives; this β
    is treated as a constant (no gradient flows through it). A float β must lie in [0, 1].
    Other arguments as in :func:`binary_cross_entropy_loss`.
    """
    name = "balanced_binary_cross_entropy_loss"
    targets, valid = _prepare_binary(logits, targets, weight, ignore_index, reduction, name)
    if beta == "auto":
        with torch.no_grad():
            counted = targets if valid is None else targets[valid]
            beta_t = 1 - counted.mean() if counted.numel() else targets.new_tensor(0.5)
    elif isinstance(beta, (int, float)):
        check_unit_interval(beta, "beta", name)
        beta_t = beta
    else:
        raise ValueError(f"{name}: beta must be a float in [0, 1] or 'auto', got {beta!r}")
    pos, neg = _binary_ce_terms(logits, targets)
    return _masked_elementwise_reduce(beta_t * pos + (1 - beta_t) * neg, valid, weight, reduction)


def cross_entropy_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class cross-entropy from logits, with per-class weights and label smoothing.

    With ``log p̂ = log_softmax(x)`` over dim 1, target class ``t``, ``C`` classes, ``ε = label_smoothing``
    and per-class weights ``w`` (all 1 when None), the loss of one element is

        ``ℓ = (1 − ε) · w_t · (−log p̂_t) + (ε / C) · Σ_c w_c · (−log p̂_c)``

    and ``"mean"`` divides the sum over non-ignored elements by ``Σ w_t`` over the same elements (the
    weighted mean of ``F.cross_entropy``, to which this is equal, label smoothing included). Difference:
    when every element is ignored the mean is 0, not NaN.

    Args:
        logits: float ``N×C`` or ``N×C×d1×...``.
        targets: int64 class indices ``N`` or ``N×d1×...`` in ``[0, C)``, or ``ignore_index``.
        weight: 1-D float tensor of ``C`` per-class weights (e.g. inverse class frequencies).
        ignore_index: target value that contributes nothing (torch's default -100; None: none ignored).
        label_smoothing: ε in [0, 1] (Szegedy et al. 2016, "Rethinking the Inception architecture").
        reduction: ``"none"`` (shape of the targets, ignored elements 0), ``"mean"`` or ``"sum"``.
    """
    name = "cross_entropy_loss"
    check_reduction(reduction)
    check_class_index_inputs(logits, targets, name)
    # int64 before comparing with ignore_index (-100 wraps to 156 in a uint8 map) and for gather.
    targets = targets.long()
    num_classes = logits.shape[1]
    check_class_weight(weight, num_classes, name)
    check_unit_interval(label_smoothing, "label_smoothing", name)
    valid = valid_mask(targets, ignore_index)
    check_class_indices(targets, valid, num_classes, ignore_index, name)
    safe_targets = targets if valid is None else torch.where(valid, targets, torch.zeros_like(targets))

    log_probs = F.log_softmax(logits, dim=1)
    nll = -log_probs.gather(1, safe_targets.unsqueeze(1)).squeeze(1)
    target_weight = torch.ones_like(nll) if weight is None else weight.to(nll.dtype)[safe_targets]
    loss = target_weight * nll
    if label_smoothing > 0:
        class_shape = (1, num_classes) + (1,) * (logits.dim() - 2)
        weighted = log_probs if weight is None else log_probs * weight.to(log_probs.dtype).view(class_shape)
        loss = (1 - label_smoothing) * loss - (label_smoothing / num_classes) * weighted.sum(dim=1)
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        target_weight = torch.where(valid, target_weight, torch.zeros_like(target_weight))
    return reduce_loss(loss, reduction, accurate_sum(target_weight))


class BinaryCrossEntropyLoss(nn.Module):
    """Module form of :func:`binary_cross_entropy_loss`; tensor weights are buffers (they follow ``.to``)."""

    def __init__(
        self,
        *,
        pos_weight: Tensor | float | None = None,
        weight: Tensor | None = None,
        ignore_index: float | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight)
        if isinstance(pos_weight, Tensor):
            self.register_buffer("pos_weight", pos_weight)
        else:
            self.pos_weight = pos_weight

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return binary_cross_entropy_loss(
            logits,
            targets,
            pos_weight=self.pos_weight,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )


class WeightedBinaryCrossEntropyLoss(BinaryCrossEntropyLoss):
    """Module form of :func:`weighted_binary_cross_entropy_loss` (WCE with positive weight ``beta``)."""

    def __init__(
        self,
        *,
        beta: Tensor | float,
        weight: Tensor | None = None,
        ignore_index: float | None = None,
        reduction: str = "mean",
    ):
        super().__init__(pos_weight=beta, weight=weight, ignore_index=ignore_index, reduction=reduction)


class BalancedBinaryCrossEntropyLoss(nn.Module):
    """Module form of :func:`balanced_binary_cross_entropy_loss`."""

    def __init__(
        self,
        *,
        beta: float | Literal["auto"] = "auto",
        weight: Tensor | None = None,
        ignore_index: float | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        if beta != "auto" and not (isinstance(beta, (int, float)) and 0 <= beta <= 1):
            raise ValueError(f"BalancedBinaryCrossEntropyLoss: beta must be in [0, 1] or 'auto', got {beta}")
        self.beta = beta
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return balanced_binary_cross_entropy_loss(
            logits,
            targets,
            beta=self.beta,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy_loss`; ``weight`` is a buffer (it follows ``.to``)."""

    def __init__(
        self,
        *,
        weight: Tensor | None = None,
        ignore_index: int | None = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        super().__init__()
        check_unit_interval(label_smoothing, "label_smoothing", "CrossEntropyLoss")
        if weight is not None and (weight.dim() != 1 or not weight.is_floating_point()):
            raise ValueError(f"CrossEntropyLoss: weight must be a 1-D float tensor, got {weight.shape}")
        self.reduction = check_reduction(reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy_loss(
            logits,
            targets,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )
