"""YOLACT's mask and semantic losses (Bolya et al., ICCV 2019, sec. 3.2 and 4); its class and box losses
are SSD's (:func:`segdet.models.detection.ssd.loss.ssd_loss`: softmax cross-entropy over the matched
anchors and 3 hard negatives per match, smooth L1 on the matched anchors' deltas).

**Mask targets.** Each object's mask, padded like its image and reduced to the prototype grid
(stride 4) by area averaging, is 1 where more than half of a cell is covered.

**Mask loss**, over the foreground anchors ``a`` (at most ``max_masks`` per image, drawn at random:
YOLACT's ``masks_to_train`` = 100 bounds memory), with ``z_a = P c_a`` the assembled mask logits,
``t`` the target mask of ``a``'s object and ``B_a`` the prototype cells overlapping that object's box::

    L_mask = (1 / |A|) Σ_a (1 / |B_a|) Σ_{p ∈ B_a} BCE(σ(z_a,p), t_p)

Cropping to the ground-truth box and dividing by its area is YOLACT's
``mask_proto_normalize_emulate_roi_pooling``: a small object weighs as much as a large one, as
RoI-pooled masks would (YOLACT divides by the box's area in cells; ``|B_a|`` is that area rounded out
to whole cells). YOLACT normalises by all foreground anchors; here by the ones trained, the same
unless an image has more than ``max_masks``.

**Semantic loss** (sec. 4, "an auxiliary segmentation loss ... only during training"): a ``1x1``
convolution on ``P3`` predicts ``K`` per-class logits per cell; the target of class ``c`` is the union
of class ``c``'s object masks on that grid (cells covered more than half). Binary cross-entropy,
summed over classes and averaged over cells and images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from segdet.models.detection.yolact.protonet import assemble_masks, box_region


def masks_on_grid(masks: Tensor, padded_size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """``[G, H_g, W_g]`` float 0/1: ``masks`` (``[G, h, w]`` of an image resized to ``h x w`` inside
    a padded batch of ``padded_size``) reduced to a ``grid`` by area averaging, 1 above one half."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *grid), dtype=torch.float32)
    height, width = padded_size
    padded = F.pad(masks.float(), (0, width - masks.shape[-1], 0, height - masks.shape[-2]))
    return (F.interpolate(padded[None], size=grid, mode="area")[0] > 0.5).float()


def yolact_mask_loss(
    prototypes: Tensor,
    coefficients: Tensor,
    matched: Tensor,
    targets: Sequence[dict[str, Tensor]],
    padded_size: tuple[int, int],
    max_masks: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``L_mask`` of the module docstring.

    Args:
        prototypes: ``[N, k, H_p, W_p]`` on the padded batch's grid (stride ``H / H_p``).
        coefficients: ``[N, M, k]`` of every anchor.
        matched: ``[N, M]``, each anchor's object (``>= 0``) or a negative code.
        targets: per image ``boxes`` ``[G, 4]`` (resized image's pixels) and ``masks`` ``[G, h, w]``.
        padded_size: ``(H, W)`` of the padded batch.
        max_masks: foreground anchors trained per image at most (a random subset beyond).
        generator: draws that subset (``None``: torch's global RNG).
    """
    grid = (prototypes.shape[-2], prototypes.shape[-1])
    stride = padded_size[0] / grid[0]
    # Zero times every input keeps them in the graph when the batch has no foreground (DDP needs it).
    total = (prototypes.sum() + coefficients.sum()) * 0.0
    count = 0
    for n, target in enumerate(targets):
        anchors = torch.nonzero(matched[n] >= 0).squeeze(1)
        if len(anchors) == 0:
            continue
        if len(anchors) > max_masks:
            pick = torch.randperm(len(anchors), generator=generator)[:max_masks]
            anchors = anchors[pick.to(anchors.device)]
        objects = matched[n, anchors]
        truth = masks_on_grid(target["masks"], padded_size, grid)[objects].to(prototypes.dtype)
        logits = assemble_masks(prototypes[n], coefficients[n, anchors])
        region = box_region(target["boxes"][objects], grid, stride).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
        total = total + ((bce * region).sum(dim=(1, 2)) / region.sum(dim=(1, 2)).clamp(min=1)).sum()
        count += len(anchors)
    return total / max(count, 1)


def semantic_segmentation_loss(
    logits: Tensor, targets: Sequence[dict[str, Tensor]], padded_size: tuple[int, int], label_offset: int
) -> Tensor:
    """The semantic loss of the module docstring from ``[N, K, H_3, W_3]`` logits; ``targets`` as for
    :func:`yolact_mask_loss` with ``labels`` in ``label_offset .. K - 1 + label_offset``."""
    num_images, num_classes, height, width = logits.shape
    truth = logits.new_zeros((num_images, num_classes, height * width))
    for n, target in enumerate(targets):
        masks = masks_on_grid(target["masks"], padded_size, (height, width)).flatten(1).to(logits.dtype)
        one_hot = F.one_hot(target["labels"] - label_offset, num_classes).to(logits.dtype)  # [G, K]
        truth[n] = (one_hot.T @ masks).clamp(max=1.0)  # the union of each class's 0/1 masks
    bce = F.binary_cross_entropy_with_logits(logits.flatten(2), truth, reduction="sum")
    return bce / (height * width * num_images)
