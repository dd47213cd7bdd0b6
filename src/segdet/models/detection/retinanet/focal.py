"""The sigmoid focal loss of a dense detector's one-hot targets, computed where it is cheap.

RetinaNet's classification loss is the focal loss (Lin et al. 2017, eq. 5; :func:`segdet.losses.
sigmoid_focal_loss`) of every (anchor, class) pair, ``N x M x K`` of them (~10^7 per image at 800 px),
but nearly all targets are 0: with ``p = σ(x)`` and ``sp(x) = softplus(x) = -log(1 - p)``,

    negative pair (target 0):  L0(x) = (1 - α) p^γ sp(x)
    positive pair (target 1):  L1(x) = α (1 - p)^γ sp(-x)

and their derivatives

    dL0/dx = (1 - α) p^γ (p + γ (1 - p) sp(x))
    dL1/dx = -α (1 - p)^γ (γ p sp(-x) + (1 - p)).

:func:`one_hot_focal_loss` evaluates ``L0`` densely (sigmoid, softplus, two products and a sum) and
corrects the few positive pairs and ignored anchors by indexing, with the gradient in closed form:
about a third of the elementwise passes of autograd through the general formula (the loss was ~10% of a
RetinaNet training step). Equal to :func:`segdet.losses.sigmoid_focal_loss` with one-hot targets to
float32 rounding (tested, values and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _power(p: Tensor, gamma: float) -> Tensor:
    return p * p if gamma == 2.0 else p.pow(gamma)


class _OneHotFocalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, image_weight, positives, ignored, alpha, gamma):  # type: ignore[override]
        img, anchor, label = positives
        ign_img, ign_anchor = ignored
        p = torch.sigmoid(logits)
        sp = F.softplus(logits)
        negative = _power(p, gamma).mul_(sp)  # L0 / (1 - α) of every pair
        per_image = negative.sum(dim=(1, 2))
        # Ignored anchors contribute nothing; positive pairs contribute L1 instead of L0.
        per_image = per_image.index_add(0, ign_img, -negative[ign_img, ign_anchor].sum(dim=-1))
        per_image = per_image.index_add(0, img, -negative[img, anchor, label]) * (1 - alpha)
        x_pos = logits[img, anchor, label]
        p_pos = p[img, anchor, label]
        positive = alpha * _power(1 - p_pos, gamma) * F.softplus(-x_pos)
        per_image = per_image.index_add(0, img, positive)
        ctx.save_for_backward(p, sp, image_weight, img, anchor, label, ign_img, ign_anchor, x_pos, p_pos)
        ctx.alpha, ctx.gamma = alpha, gamma
        return (per_image * image_weight).sum()

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        p, sp, image_weight, img, anchor, label, ign_img, ign_anchor, x_pos, p_pos = ctx.saved_tensors
        alpha, gamma = ctx.alpha, ctx.gamma
        scale = image_weight * grad_output  # d loss / d (image's sum)
        grad = torch.sub(1, p).mul_(sp).mul_(gamma).add_(p)  # p + γ (1 - p) sp
        grad.mul_(_power(p, gamma)).mul_(((1 - alpha) * scale).view(-1, 1, 1))
        grad[ign_img, ign_anchor] = 0
        q = 1 - p_pos
        d_positive = -alpha * _power(q, gamma) * (gamma * p_pos * F.softplus(-x_pos) + q)
        grad[img, anchor, label] = d_positive * scale[img]
        return grad, None, None, None, None, None


def one_hot_focal_loss(
    logits: Tensor,
    image_weight: Tensor,
    positives: tuple[Tensor, Tensor, Tensor],
    ignored: tuple[Tensor, Tensor],
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """``Σ_i w_i Σ_{anchors a of image i, not ignored} Σ_k FL(x_iak, 1[(i, a, k) positive])``.

    Args:
        logits: ``[N, M, K]`` class logits.
        image_weight: ``[N]`` weight ``w_i`` of each image's sum (RetinaNet: ``1 / (N max(1, F_i))``).
        positives: ``(image, anchor, class)`` index tensors of the positive pairs (one class per
            foreground anchor).
        ignored: ``(image, anchor)`` index tensors of the anchors left out of the loss.
        alpha, gamma: of the focal loss.

    Returns:
        the scalar loss (differentiable in ``logits``).
    """
    return _OneHotFocalLoss.apply(logits, image_weight.to(logits.dtype), positives, ignored, alpha, gamma)
