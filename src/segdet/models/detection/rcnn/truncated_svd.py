"""Truncated SVD of fully connected layers (Girshick, "Fast R-CNN", ICCV 2015, sec. 3.1).

A layer ``y = W x + b`` with ``W`` of ``u x v`` is factorised as ``W ~ U_t diag(S_t) V_t^T`` (the top
``t`` singular values and vectors, the best rank-``t`` approximation in Frobenius and spectral norm,
Eckart-Young) and replaced by two layers: the first ``z = diag(S_t) V_t^T x`` (no bias), the second
``y = U_t z + b`` (the original bias). Parameters and multiply-adds go from ``u v`` to ``t (u + v)``:
fewer when ``t < u v / (u + v)``. Fast R-CNN compresses ``fc6`` (25088 x 4096) to ``t = 1024`` and
``fc7`` (4096 x 4096) to ``t = 256``: detection takes 30% less time for 0.3 mAP on VOC 2007.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def truncated_svd(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``nn.Sequential(Linear(v, t, bias=False), Linear(t, u))`` approximating ``layer`` (module
    docstring); ``rank`` is clipped to ``min(u, v)``. The factorisation is computed in float64."""
    if rank < 1:
        raise ValueError(f"the rank of a truncated SVD must be at least 1, got {rank}")
    weight = layer.weight.double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    t = min(rank, s.numel())
    first = nn.Linear(layer.in_features, t, bias=False, device=layer.weight.device, dtype=layer.weight.dtype)
    second = nn.Linear(t, layer.out_features, bias=layer.bias is not None, device=layer.weight.device)
    first.weight.copy_(s[:t, None] * vh[:t])
    second.weight.copy_(u[:, :t])
    if layer.bias is not None:
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second.to(layer.weight.dtype))
