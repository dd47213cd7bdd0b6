"""R-CNN's class-specific bounding-box regression (Girshick et al. 2014, appendix C).

For a proposal ``P`` and its ground-truth box ``G`` (the one it overlaps most, ``IoU >= 0.6``), the
targets are the Δ-parameterisation (:class:`segdet.ops.box_coder.BoxCoder`, weights 1)::

    t_x = (G_x - P_x) / P_w    t_y = (G_y - P_y) / P_h    t_w = log(G_w / P_w)    t_h = log(G_h / P_h)

and each ``t_*`` is a linear function of the proposal's pool features ``φ``, fitted by ridge regression
``w = argmin Σ_i (t_i - wᵀφ_i)^2 + λ ||w||^2`` with ``λ = 1000``. The intercept is not penalised
(features and targets are centred). The solution is closed-form: the primal
``(ΦᵀΦ + λI)⁻¹Φᵀt`` when there are more samples than features, else the dual ``Φᵀ(ΦΦᵀ + λI)⁻¹t``
(the same ``w``, for wide features such as a flattened 7 x 7 map), in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fit_ridge(x: Tensor, t: Tensor, lam: float = 1000.0) -> tuple[Tensor, Tensor]:
    """``(W [D, T], b [T])`` minimising ``||x W + b - t||^2 + lam ||W||^2`` (module docstring)."""
    if x.dim() != 2 or t.dim() != 2 or len(x) != len(t) or len(x) == 0:
        raise ValueError(f"need [N, D] features and [N, T] targets with N >= 1, got {x.shape}, {t.shape}")
    x, t = x.double(), t.double()
    x_mean, t_mean = x.mean(dim=0), t.mean(dim=0)
    xc, tc = x - x_mean, t - t_mean
    n, d = xc.shape
    if n >= d:
        w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(d, dtype=x.dtype), xc.T @ tc)
    else:
        w = xc.T @ torch.linalg.solve(xc @ xc.T + lam * torch.eye(n, dtype=x.dtype), tc)
    return w, t_mean - x_mean @ w
