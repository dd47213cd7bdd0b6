"""Dense head outputs in anchor order: the layout every anchor-based head (RPN, RetinaNet, SSD) shares.

A head predicts ``C`` numbers for each of the ``A_l`` anchors of every location of level ``l``, as one
convolution output ``N x (A_l C) x H_l x W_l`` whose channel ``a C + c`` is value ``c`` of anchor ``a``
(torchvision's and Detectron2's layout, which pretrained weights depend on). The anchors of an image are
ordered level, then location (row-major: y, then x), then anchor (see :mod:`.anchors` and
:mod:`.ssd.default_boxes`); :func:`flatten_anchor_outputs` puts the head's numbers in the same order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


def in_float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors``, each in float32 when reduced-precision autocast (bf16 / fp16) produced it, else as they
    are: decoding, losses and NMS stay in float32, since bf16's 8-bit mantissa would round coordinates of
    a few hundred pixels by 1-4 px."""
    return tuple(t if t.dtype in (torch.float32, torch.float64) else t.float() for t in tensors)


def dense_head_outputs(
    head: nn.Module, levels: list[Tensor], num_scores: int
) -> tuple[Tensor, Tensor, list[int]]:
    """Run a dense ``head`` (per level ``(scores N x A C x H x W, deltas N x 4A x H x W)`` lists) and
    flatten its outputs: ``(scores [N, M, C], deltas [N, M, 4], anchors per level)`` with ``C =
    num_scores``, in float32 under reduced-precision autocast (:func:`in_float32`)."""
    score_levels, delta_levels = head(levels)
    scores = flatten_anchor_outputs(score_levels, num_scores)
    deltas = flatten_anchor_outputs(delta_levels, 4)
    scores, deltas = in_float32(scores, deltas)
    return scores, deltas, anchors_per_level(delta_levels, 4)
