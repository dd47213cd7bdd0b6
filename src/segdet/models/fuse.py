"""Folding BatchNorm into the preceding convolution, for inference.

In inference a BatchNorm (frozen, or ``nn.BatchNorm2d`` with its running statistics) is an affine map per
channel, so after a convolution ``y = W * x + b`` it can be merged into it (Jacob et al. 2018, sec. 3.2;
the standard "conv-BN fusion")::

    s  = γ / sqrt(σ² + ε)
    W' = W · s          (output channel c scaled by s_c)
    b' = (b − μ) · s + β     (b = 0 for a convolution without bias)

which removes one full pass over every feature map. The arithmetic is done in float64 and cast back,
so the fused network differs from the original by float rounding only.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from segdet.models.backbones.base import FrozenBatchNorm2d


def _is_foldable_norm(module: nn.Module) -> bool:
    if isinstance(module, FrozenBatchNorm2d):
        return True
    # An nn.BatchNorm2d folds only with running statistics and in eval mode (training would use the
    # batch's statistics instead).
    return isinstance(module, nn.BatchNorm2d) and not module.training and module.running_mean is not None


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Merge ``norm`` (applied to ``conv``'s output) into ``conv``'s weight and bias, in place."""
    weight = conv.weight.double()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(norm.running_var.double())
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(gamma)
    scale = gamma * torch.rsqrt(norm.running_var.double() + norm.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(gamma)
    new_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - norm.running_mean.double()) * scale + beta
    conv.weight.copy_(new_weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


def _conv_norm_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """``(conv name, norm name)`` children of ``parent`` where the norm directly follows the conv:
    consecutive children of a Sequential, or ``conv{k}`` / ``bn{k}`` attributes (ResNet blocks)."""
    children = dict(parent.named_children())
    pairs = []
    if isinstance(parent, nn.Sequential):
        names = list(children)
        pairs += list(itertools.pairwise(names))
    pairs += [
        (name, "bn" + name[4:])
        for name in children
        if name.startswith("conv") and "bn" + name[4:] in children
    ]
    return [(c, n) for c, n in pairs if type(children[c]) is nn.Conv2d and _is_foldable_norm(children[n])]


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every foldable BatchNorm of ``model`` into the convolution before it, replacing it by
    ``nn.Identity``. Returns the number of folded layers. Call on a model in eval mode."""
    folded = 0
    for parent in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(parent):
            fold_into_conv(getattr(parent, conv_name), getattr(parent, norm_name))
            setattr(parent, norm_name, nn.Identity())
            folded += 1
    return folded
