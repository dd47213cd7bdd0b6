"""YOLO v1's sum-squared loss (Redmon et al. 2016, sec. 2.2, eq. 3)::

    λ_coord Σ_i Σ_j 1_ij^obj [(x_i - x̂_i)² + (y_i - ŷ_i)² + (√w_i - √ŵ_i)² + (√h_i - √ĥ_i)²]
  + Σ_i Σ_j 1_ij^obj (C_i - Ĉ_i)²
  + λ_noobj Σ_i Σ_j 1_ij^noobj (C_i - Ĉ_i)²
  + Σ_i 1_i^obj Σ_c (p_i(c) - p̂_i(c))²

over the ``S²`` cells ``i`` and their ``B`` predictors ``j``: ``1_ij^obj`` marks the responsible
predictor of an object (:mod:`.targets`), ``1_ij^noobj`` every other predictor (also those of a cell
with an object); ``1_i^obj`` the cells with an object, the only ones whose class probabilities are
trained. The confidence target ``C_i`` of a responsible predictor is the IoU of its predicted box with
the object (Darknet's ``rescore``, "the IoU between the predicted box and the ground truth"; a target,
so no gradient flows through it), 0 elsewhere. ``λ_coord = 5``, ``λ_noobj = 0.5``: most cells hold no
object, and their confidences would otherwise overpower the gradient of the few that do.

Summed over each image's cells and averaged over the batch's images (Darknet divides the summed
gradient by the batch size), reported in four parts whose sum is eq. 3: ``box`` (the λ_coord term),
``confidence`` (responsible predictors), ``no_object`` (the λ_noobj term) and ``classification``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from segdet.models.detection.yolo.targets import assign_cells, decode_cell_boxes, responsible_predictors


def yolov1_loss(
    predictions: Tensor,
    targets: Sequence[dict[str, Tensor]],
    image_size: Sequence[int],
    boxes_per_cell: int,
    *,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
) -> dict[str, Tensor]:
    """Eq. 3 (module docstring).

    Args:
        predictions: ``[N, S, S, 5B + C]`` head outputs (:mod:`.head` layout).
        targets: per image ``boxes`` (xyxy pixels of the ``(H, W)`` input) and ``labels`` in ``0..C-1``.
        image_size: ``(H, W)`` of the network's input.
        boxes_per_cell: ``B``.
    """
    num_images, grid, _, per_cell = predictions.shape
    num_classes = per_cell - 5 * boxes_per_cell
    boxes = predictions[..., : 5 * boxes_per_cell].reshape(num_images, grid, grid, boxes_per_cell, 5)
    cells = assign_cells(targets, grid, image_size)
    at = (cells.image, cells.row, cells.col)
    owned = boxes[at]  # [G, B, 5] the predictions of the objects' cells
    with torch.no_grad():
        decoded = decode_cell_boxes(owned[..., :4], cells.row[:, None], cells.col[:, None], grid, image_size)
        responsible, iou = responsible_predictors(decoded, cells.boxes.to(decoded.dtype), image_size)
    chosen = owned[torch.arange(len(responsible), device=owned.device), responsible]  # [G, 5]

    confidence = boxes[..., 4]
    no_object = confidence.square().sum() - chosen[:, 4].square().sum()
    one_hot = F.one_hot(cells.labels, num_classes).to(predictions.dtype)
    return {
        "box": lambda_coord * (chosen[:, :4] - cells.encoded.to(chosen.dtype)).square().sum() / num_images,
        "confidence": (chosen[:, 4] - iou).square().sum() / num_images,
        "no_object": lambda_noobj * no_object / num_images,
        "classification": (predictions[at][:, 5 * boxes_per_cell :] - one_hot).square().sum() / num_images,
    }
