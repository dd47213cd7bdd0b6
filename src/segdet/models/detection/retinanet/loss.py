"""RetinaNet's training targets and loss (Lin et al., ICCV 2017, sec. 3-4).

**Targets.** Each anchor is matched to the ground-truth box of highest IoU: foreground if
``IoU >= 0.5``, background if ``IoU < 0.4``, ignored in between (sec. 4, "anchors"); every object
also keeps the anchor(s) it overlaps most, whatever their IoU (low-quality matches, so small or
oddly shaped objects are never left without a positive anchor; torchvision's and Detectron2's rule).
An image without objects has every anchor background.

**Loss**, per image ``i`` with ``F_i`` foreground anchors::

    L_cls,i = Σ_{a not ignored} Σ_k FL(σ(x_ak), 1[k = class of a's object])  /  max(1, F_i)
    L_box,i = Σ_{a foreground} ℓ(a)  /  max(1, F_i)

with the sigmoid focal loss ``FL`` (α = 0.25, γ = 2; :func:`segdet.losses.sigmoid_focal_loss`, here
evaluated by :func:`~.focal.one_hot_focal_loss`) over all ``K`` classes of every non-ignored anchor,
and the box loss ``ℓ`` either the L1 (torchvision's v1) or smooth L1 (the paper's, β = 0.11 as
Detectron's) distance between predicted and encoded target deltas (BoxCoder weights ``(1, 1, 1, 1)``)
summed over the four coordinates, or the GIoU loss ``1 - GIoU`` of the decoded box and the object's box
(torchvision's v2). Normalising by the foreground count (not the anchor count) is the paper's: the
~100k background anchors contribute little after the focal term. Both are averaged over the batch's
images (torchvision's normalisation per image, the paper's over the batch: equal for one image),
reported as ``classification`` and ``bbox_regression``.

The same numbers as torchvision's ``RetinaNet.compute_loss`` (tested to 1e-5), computed for the whole
batch at once instead of per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from segdet.losses import giou_loss, l1_loss, smooth_l1_loss
from segdet.models.detection.matcher import BETWEEN_THRESHOLDS, matched_objects
from segdet.models.detection.retinanet.focal import one_hot_focal_loss
from segdet.ops import BoxCoder

BOX_LOSSES = ("l1", "smooth_l1", "giou")


def retinanet_loss(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    matched: Tensor,
    targets: Sequence[dict[str, Tensor]],
    box_coder: BoxCoder,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_loss: str = "l1",
    smooth_l1_beta: float = 0.11,
    box_weight: float = 1.0,
) -> dict[str, Tensor]:
    """The two losses of the module docstring.

    Args:
        logits: ``[N, M, K]`` class logits in anchor order.
        deltas: ``[N, M, 4]`` predicted box deltas.
        anchors: ``[M, 4]`` xyxy anchors shared by the images.
        matched: ``[N, M]`` from :func:`~segdet.models.detection.matcher.match_to_targets`.
        targets: per image ``boxes`` ``[G_i, 4]`` and ``labels`` ``[G_i]`` in ``0..K-1``.
        box_coder: the delta encoding.
        alpha, gamma: of the focal loss.
        box_loss: ``"l1"``, ``"smooth_l1"`` (with ``smooth_l1_beta``) or ``"giou"``.
        box_weight: the factor of the box loss (EfficientDet's, :mod:`..efficientdet.builders`).

    Returns:
        ``{"classification", "bbox_regression"}``.
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
    num_images = logits.shape[0]
    num_foreground = (matched >= 0).sum(dim=1).clamp(min=1).to(logits.dtype)  # [N]
    image, anchor, gt_boxes, gt_labels = matched_objects(matched, targets)
    gt_boxes = gt_boxes.to(deltas.dtype)

    ignored = torch.nonzero(matched == BETWEEN_THRESHOLDS, as_tuple=True)
    image_weight = 1.0 / (num_foreground * num_images)
    classification = one_hot_focal_loss(
        logits, image_weight, (image, anchor, gt_labels), ignored, alpha=alpha, gamma=gamma
    )

    anchors_fg, deltas_fg = anchors[anchor], deltas[image, anchor]
    if box_loss == "giou":
        per_box = giou_loss(box_coder.decode_single(deltas_fg, anchors_fg), gt_boxes, reduction="none")
    else:
        encoded = box_coder.encode_single(gt_boxes, anchors_fg)
        if box_loss == "l1":
            per_box = l1_loss(deltas_fg, encoded, reduction="none").sum(dim=-1)
        else:
            per_box = smooth_l1_loss(deltas_fg, encoded, beta=smooth_l1_beta, reduction="none").sum(dim=-1)
    per_image = torch.zeros(num_images, dtype=per_box.dtype, device=per_box.device).index_add(
        0, image, per_box
    )
    return {
        "classification": classification,
        "bbox_regression": box_weight * (per_image / num_foreground).sum() / num_images,
    }
