"""Dense head outputs in anchor order: the layout every anchor-based head (RPN, RetinaNet, SSD) shares.

A head predicts ``C`` numbers for each of the ``A_l`` anchors of every location of level ``l``, as one
convolution output ``N x (A_l C) x H_l x W_l`` whose channel ``a C + c`` is value ``c`` of anchor ``a``
(torchvision's and Detectron2's layout, which pretrained weights depend on). The anchors of an image are
ordered level, then location (row-major: y, then x), then anchor (see :mod:`.anchors` and
:mod:`.ssd.default_boxes`); :func:`flatten_anchor_outputs` puts the head's numbers in the same order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def flatten_anchor_outputs(outputs: list[Tensor], channels: int) -> Tensor:
    """Per level ``N x (A_l C) x H_l x W_l`` -> ``[N, Σ_l H_l W_l A_l, C]`` in anchor order.

    ``C = channels``: e.g. 1 objectness logit (RPN), ``K`` class logits (RetinaNet, SSD), 4 box deltas.
    """
    flat = []
    for level in outputs:
        n, ac, h, w = level.shape
        if ac % channels:
            raise ValueError(f"{ac} output channels are not a multiple of {channels} values per anchor")
        per_anchor = level.reshape(n, ac // channels, channels, h, w)
        flat.append(per_anchor.permute(0, 3, 4, 1, 2).reshape(n, -1, channels))
    return torch.cat(flat, dim=1)


def anchors_per_level(outputs: list[Tensor], channels: int) -> list[int]:
    """``H_l W_l A_l`` of each level of head outputs laid out as for :func:`flatten_anchor_outputs`."""
    return [o.shape[1] // channels * o.shape[2] * o.shape[3] for o in outputs]
