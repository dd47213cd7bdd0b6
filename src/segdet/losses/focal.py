"""Focal loss (Lin et al. 2017, "Focal loss for dense object detection"), sigmoid and softmax forms.

Sigmoid (binary / multi-label, RetinaNet's classification head), with ``p̂ = σ(x)``:

    ``FL = −(α · (1 − p̂)^γ · p · log p̂ + (1 − α) · p̂^γ · (1 − p) · log(1 − p̂))``

Softmax (multi-class), with ``p̂_t = softmax(x)_t`` the probability of the target class ``t``:

    ``FL = −w_t · (1 − p̂_t)^γ · log p̂_t``

Stability: every factor is computed in log space from the logits. ``log p̂ = logsigmoid(x)``,
``log(1 − p̂) = logsigmoid(−x)``, ``(1 − p̂)^γ = exp(γ · logsigmoid(−x))``, ``p̂^γ = exp(γ · logsigmoid(x))``;
for the softmax form ``log(1 − p̂_t) = logsumexp_{c≠t}(x_c) − logsumexp_c(x_c)``. No ``log(0)``, no ``0^γ``
with an infinite derivative, so logits of ±1e4 give finite losses and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.losses._inputs import (
    check_broadcast_weight,
    check_class_index_inputs,
    check_class_indices,
    check_class_weight,
    check_elementwise_inputs,
    check_non_negative,
    check_unit_interval,
    valid_mask,
)
from segdet.losses._reduction import accurate_sum, check_reduction, reduce_loss


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Sigmoid focal loss, element-wise, from logits.

    ``FL = −w · (α · (1 − p̂)^γ · p · log p̂ + (1 − α) · p̂^γ · (1 − p) · log(1 − p̂))``, ``p̂ = σ(x)``.

    For 0/1 targets this equals ``torchvision.ops.sigmoid_focal_loss`` (``alpha=None`` is its
    ``alpha=-1``: both terms weighted by 1). For soft targets the two differ: torchvision modulates the
    whole cross-entropy by ``(1 − p_t)^γ`` with ``p_t = p̂p + (1 − p̂)(1 − p)``; here each term keeps its own
    modulating factor, as in the formula above (which is 0 for a soft target only when ``p̂`` is 0 or 1).

    Args:
        logits: float tensor of any shape (e.g. N×A×C anchors × classes, or N×C×H×W).
        targets: float tensor of the same shape, values in [0, 1], or ``ignore_index``.
        alpha: weight α ∈ [0, 1] of the positives (1 − α of the negatives); None: no weighting.
        gamma: focusing parameter γ ≥ 0 (γ = 0, α = None gives the binary cross-entropy).
        weight: element-wise rescaling broadcastable to the logits (per class: C×1×1 for N×C×H×W).
        ignore_index: target value whose elements contribute nothing (None: none ignored).
        reduction: ``"none"``, ``"mean"`` (over non-ignored elements, 0 when there are none) or ``"sum"``.
            RetinaNet normalises the sum by the number of positive anchors: use ``"sum"`` and divide.
    """
    name = "sigmoid_focal_loss"
    check_reduction(reduction)
    check_elementwise_inputs(logits, targets, name)
    check_broadcast_weight(weight, logits.shape, "weight", name)
    check_non_negative(gamma, "gamma", name)
    if alpha is not None:
        check_unit_interval(alpha, "alpha", name)
    valid = valid_mask(targets, ignore_index)
    if valid is not None:
        targets = torch.where(valid, targets, torch.zeros_like(targets))

    log_p = F.logsigmoid(logits)  # log p̂
    log_1mp = F.logsigmoid(-logits)  # log(1 − p̂)
    pos = -targets * torch.exp(gamma * log_1mp) * log_p
    neg = -(1 - targets) * torch.exp(gamma * log_p) * log_1mp
    if alpha is not None:
        pos, neg = alpha * pos, (1 - alpha) * neg
    loss = pos + neg
    if weight is not None:
        loss = loss * weight
    if valid is None:
        return reduce_loss(loss, reduction)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return reduce_loss(loss, reduction, valid.sum())


def softmax_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class (softmax) focal loss from logits: ``FL = −w_t · (1 − p̂_t)^γ · log p̂_t``.

    ``p̂_t`` is the softmax probability of the target class ``t``. The class-balancing α of the sigmoid
    form becomes the per-class ``weight`` vector ``w`` here. ``"mean"`` is the weighted mean of
    ``F.cross_entropy`` (sum over non-ignored elements divided by ``Σ w_t``), so that γ = 0 gives exactly
    :func:`~segdet.losses.cross_entropy.cross_entropy_loss`; it is 0 when every element is ignored.

    Args:
        logits: float ``N×C`` or ``N×C×d1×...`` (C ≥ 2).
        targets: int64 class indices ``N`` or ``N×d1×...`` in ``[0, C)``, or ``ignore_index``.
        gamma: focusing parameter γ ≥ 0.
        weight: 1-D float tensor of ``C`` per-class weights (α_c).
        ignore_index: target value that contributes nothing (None: none ignored).
        reduction: ``"none"`` (shape of the targets), ``"mean"`` or ``"sum"``.
    """
    name = "softmax_focal_loss"
    check_reduction(reduction)
    check_class_index_inputs(logits, targets, name)
    # int64 before comparing with ignore_index (-100 wraps to 156 in a uint8 map) and for gather.
    targets = targets.long()
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"{name}: needs C >= 2 classes, got logits of shape {tuple(logits.shape)}")
    check_class_weight(weight, num_classes, name)
    check_non_negative(gamma, "gamma", name)
    valid = valid_mask(targets, ignore_index)
    check_class_indices(targets, valid, num_classes, ignore_index, name)
    safe_targets = targets if valid is None else torch.where(valid, targets, torch.zeros_like(targets))

    index = safe_targets.unsqueeze(1)
    log_norm = torch.logsumexp(logits, dim=1)
    log_p_t = logits.gather(1, index).squeeze(1) - log_norm
    # log(1 − p̂_t) = log Σ_{c≠t} exp(x_c) − log Σ_c exp(x_c): exact even when p̂_t rounds to 1.
    is_target = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, index, True)
    others = logits.masked_fill(is_target, float("-inf"))
    log_1mp_t = torch.logsumexp(others, dim=1) - log_norm
    loss = -torch.exp(gamma * log_1mp_t) * log_p_t
    target_weight = torch.ones_like(loss) if weight is None else weight.to(loss.dtype)[safe_targets]
    loss = target_weight * loss
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        target_weight = torch.where(valid, target_weight, torch.zeros_like(target_weight))
    return reduce_loss(loss, reduction, accurate_sum(target_weight))


class SigmoidFocalLoss(nn.Module):
    """Module form of :func:`sigmoid_focal_loss`; ``weight`` is a buffer."""

    def __init__(
        self,
        *,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        weight: Tensor | None = None,
        ignore_index: float | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        if alpha is not None:
            check_unit_interval(alpha, "alpha", "SigmoidFocalLoss")
        check_non_negative(gamma, "gamma", "SigmoidFocalLoss")
        self.alpha, self.gamma = alpha, gamma
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(
            logits,
            targets,
            alpha=self.alpha,
            gamma=self.gamma,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )


class SoftmaxFocalLoss(nn.Module):
    """Module form of :func:`softmax_focal_loss`; ``weight`` is a buffer."""

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        weight: Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
    ):
        super().__init__()
        check_non_negative(gamma, "gamma", "SoftmaxFocalLoss")
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return softmax_focal_loss(
            logits,
            targets,
            gamma=self.gamma,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )
