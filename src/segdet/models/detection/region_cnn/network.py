"""R-CNN's CNN on warped regions, with the same trunk and head as our Fast R-CNN (so the history table
compares the pipelines, not the networks): a ResNet up to ``layer3`` (stride 16) on the ``S x S``
warped region, its map max-pooled to ``p x p`` (identity at ``S = 16 p``, e.g. 112 for ``p = 7``; the
paper's AlexNet ``pool5`` is ``6 x 6``), then ``fc6``, ``fc7`` and a ``K + 1``-way classifier (the
fine-tuning head, sec. 2.3; the paper's network has ``fc6``, ``fc7`` of 4096).

:meth:`RegionNetwork.features` gives the two feature sets the later stages use: the flattened pooled
map ("pool5", for box regression) and ``fc7`` (for the SVMs).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.detection.rcnn.box_head import TwoMLPHead


class RegionNetwork(nn.Module):
    """``body`` (image -> ``{"0": map}``) + max pool to ``pool_size`` + ``fc6``/``fc7`` + ``cls_score``.

    Args:
        body: the trunk, with ``out_channels``.
        pool_size: ``p`` of the pooled map.
        representation_size: ``fc6`` / ``fc7`` width.
        num_classes: ``K + 1`` (background included).
    """

    def __init__(self, body: nn.Module, pool_size: int, representation_size: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.pool_size = pool_size
        self.head = TwoMLPHead(body.out_channels * pool_size**2, representation_size)
        self.cls_score = nn.Linear(representation_size, num_classes)

    def features(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """``(pool [R, C p^2], fc7 [R, D])`` of normalised ``[R, 3, S, S]`` crops."""
        pooled = F.adaptive_max_pool2d(self.body(crops)["0"], self.pool_size).flatten(start_dim=1)
        return pooled, self.head(pooled)

    def forward(self, crops: Tensor) -> Tensor:
        """``[R, K + 1]`` class logits (fine-tuning)."""
        return self.cls_score(self.features(crops)[1])
