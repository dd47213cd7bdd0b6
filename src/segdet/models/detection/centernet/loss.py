"""CenterNet's loss (Zhou et al. 2019, eq. 1-4): ``L = L_k + λ_size L_size + λ_off L_off``.

* **Heatmap**, a penalty-reduced pixel-wise focal loss (CornerNet's variant of the focal loss) over
  every class ``c`` and output pixel ``xy``, with ``Ŷ = σ(logit)``::

      L_k = -1/N Σ_xyc  (1 - Ŷ)^α log(Ŷ)                 if Y_xyc = 1
                        (1 - Y)^β Ŷ^α log(1 - Ŷ)          otherwise

  ``α = 2``, ``β = 4``; ``N`` the number of centre pixels (``Y = 1``). The ``(1 - Y)^β`` factor
  reduces the penalty of negatives near a centre, where the Gaussian target is close to 1.
* **Size**, ``L_size = 1/N Σ_k |Ŝ_p̃k - s_k|`` (L1 over both coordinates, summed) at each object's
  centre pixel, ``λ_size = 0.1``; **offset** ``L_off = 1/N Σ_k |Ô_p̃k - (p_k/R - p̃_k)|``, ``λ_off = 1``.
  (The official code's ``RegL1Loss`` divides by ``2N``, the count of regressed numbers: half the
  paper's ``L_size`` and ``L_off``.)

Averaged over the batch as one sum (``N`` counts the batch's centres, at least 1): the official
``_neg_loss`` / ``RegL1Loss`` over a batch. ``log Ŷ`` and ``log(1 - Ŷ)`` are computed as
``logsigmoid(±logit)`` (the official code clamps ``Ŷ`` to ``[1e-4, 1 - 1e-4]`` instead: equal away
from saturation, finite without a clamp). Reported as ``heatmap``, ``size`` and ``offset`` (weighted).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from segdet.models.detection.centernet.targets import CenterTargets


def penalty_reduced_focal_loss(
    logits: Tensor, heatmap: Tensor, alpha: float = 2.0, beta: float = 4.0
) -> Tensor:
    """``L_k`` of the module docstring for ``logits`` and Gaussian ``heatmap`` targets of one shape
    (e.g. ``[N, C, H, W]``), normalised by the number of ``heatmap == 1`` pixels (at least 1)."""
    positive = heatmap == 1
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    positive_loss = (1 - p).pow(alpha) * log_p
    negative_loss = (1 - heatmap).pow(beta) * p.pow(alpha) * log_not_p
    per_pixel = positive_loss.where(positive, negative_loss)
    return -per_pixel.sum() / positive.sum().clamp(min=1)


def centernet_loss(
    heatmap_logits: Tensor,
    size: Tensor,
    offset: Tensor,
    targets: CenterTargets,
    *,
    alpha: float = 2.0,
    beta: float = 4.0,
    size_weight: float = 0.1,
    offset_weight: float = 1.0,
) -> dict[str, Tensor]:
    """The three losses of the module docstring from the head's ``[N, C, H, W]`` heatmap logits and
    ``[N, 2, H, W]`` size and offset maps."""
    heat = penalty_reduced_focal_loss(heatmap_logits, targets.heatmap.to(heatmap_logits.dtype), alpha, beta)
    num = max(1, len(targets.image))
    at = (targets.image, slice(None), targets.y, targets.x)
    size_loss = (size[at] - targets.size.to(size.dtype)).abs().sum() / num
    offset_loss = (offset[at] - targets.offset.to(offset.dtype)).abs().sum() / num
    return {"heatmap": heat, "size": size_weight * size_loss, "offset": offset_weight * offset_loss}
