"""Balanced sampling of positive and negative training examples for the RPN and the RoI head.

Of the predictions matched to an object (label ``>= 1``) at most ``batch_size_per_image *
positive_fraction`` are drawn uniformly at random; negatives (label ``0``) fill the rest of the
``batch_size_per_image``. Predictions labelled ``-1`` (ignored) are never drawn. This is the mini-batch
rule of Faster R-CNN (256 anchors per image, up to 1:1 for the RPN; 512 RoIs, 25% foreground for
Fast R-CNN), which keeps the loss from being swamped by easy background.
"""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedPositiveNegativeSampler:
    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(
        self, labels: list[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``labels``: per image, ``N`` ints (``>= 1`` positive, ``0`` negative, ``-1`` ignored).

        Returns per image two bool masks of ``N``: the sampled positives and the sampled negatives.
        """
        pos_masks, neg_masks = [], []
        for lab in labels:
            positive = torch.nonzero(lab >= 1).flatten()
            negative = torch.nonzero(lab == 0).flatten()
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos = positive[_random_subset(positive.numel(), num_pos, lab.device, generator)]
            neg = negative[_random_subset(negative.numel(), num_neg, lab.device, generator)]
            pos_mask = torch.zeros_like(lab, dtype=torch.bool)
            neg_mask = torch.zeros_like(lab, dtype=torch.bool)
            pos_mask[pos] = True
            neg_mask[neg] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks


def _random_subset(n: int, k: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    # randperm on the CPU keeps a CPU generator usable for CUDA tensors, and draws are reproducible
    return torch.randperm(n, generator=generator)[:k].to(device)
