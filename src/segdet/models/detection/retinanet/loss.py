"""RetinaNet's training targets and loss (Lin et al., ICCV 2017, sec. 3-4).

**Targets.** Each anchor is matched to the ground-truth box of highest IoU: foreground if
``IoU >= 0.5``, background if ``IoU < 0.4``, ignored in between (sec. 4, "anchors"); every object
also keeps the anchor(s) it overlaps most, whatever their IoU (low-quality matches, so small or
oddly shaped objects are never left without a positive anchor; torchvision's and Detectron2's rule).
An image without objects has every anchor background.

**Loss**, per image ``i`` with ``F_i`` foreground anchors, ``normalizer="image"`` (the default;
torchvision's, the paper's per-image count averaged over the ``N`` images)::

    L_cls = 1/N Σ_i Σ_{a of i not ignored} Σ_k FL(σ(x_ak), 1[k = class of a's object])  /  max(1, F_i)
    L_box = 1/N Σ_i Σ_{a of i foreground} ℓ(a)  /  max(1, F_i)

or ``normalizer="batch"`` (EfficientDet's code, google/automl's ``detection_loss`` and rwightman's
``effdet``: the batch's sums divided by its ``num_positives_sum``)::

    L_cls = Σ_i Σ_{a of i not ignored} Σ_k FL(...)  /  (Σ_i F_i + 1)
    L_box = Σ_i Σ_{a of i foreground} ℓ(a)  /  (Σ_i F_i + 1)

with the sigmoid focal loss ``FL`` (α = 0.25, γ = 2; :func:`segdet.losses.sigmoid_focal_loss`, here
evaluated by :func:`~.focal.one_hot_focal_loss`) over all ``K`` classes of every non-ignored anchor,
and the box loss ``ℓ`` either the L1 (torchvision's v1) or smooth L1 (the paper's, β = 0.11 as
Detectron's) distance between predicted and encoded target deltas (BoxCoder weights ``(1, 1, 1, 1)``)
summed over the four coordinates, or the GIoU loss ``1 - GIoU`` of the decoded box and the object's box
(torchvision's v2), times ``box_weight``. Normalising by the foreground count (not the anchor count) is
the paper's: the ~100k background anchors contribute little after the focal term. The two rules differ
when the images hold different numbers of objects (and by the ``+ 1`` even for one image); reported as
``classification`` and ``bbox_regression``.

With the default normaliser, the same numbers as torchvision's ``RetinaNet.compute_loss`` (tested to
1e-5), computed for the whole batch at once instead of per image; with ``"batch"`` and EfficientDet's
settings, effdet's ``DetectionLoss`` (tested to 1e-5).
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
LOSS_NORMALIZERS = ("image", "batch")


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
    normalizer: str = "image",
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
        normalizer: ``"image"`` (each image's sums over ``max(1, F_i)``, averaged) or ``"batch"`` (the
            batch's sums over ``Σ_i F_i + 1``); module docstring.

    Returns:
        ``{"classification", "bbox_regression"}``.
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
    if normalizer not in LOSS_NORMALIZERS:
        raise ValueError(f"normalizer must be one of {LOSS_NORMALIZERS}, got {normalizer!r}")
    num_images = logits.shape[0]
    num_foreground = (matched >= 0).sum(dim=1).to(logits.dtype)  # [N]
    if normalizer == "image":
        image_weight = 1.0 / (num_foreground.clamp(min=1) * num_images)
    else:
        image_weight = (1.0 / (num_foreground.sum() + 1)).expand(num_images)
    image, anchor, gt_boxes, gt_labels = matched_objects(matched, targets)
    gt_boxes = gt_boxes.to(deltas.dtype)

    ignored = torch.nonzero(matched == BETWEEN_THRESHOLDS, as_tuple=True)
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
        "bbox_regression": box_weight * (per_image * image_weight).sum(),
    }
