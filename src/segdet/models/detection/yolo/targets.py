"""YOLO v1's training targets (Redmon et al. 2016, sec. 2 and 2.2): which cell and which of its ``B``
predictors is responsible for each object, and what it should predict.

**Boxes** are first clipped to the image, and those left without width or height (outside the image,
or degenerate) get no target: Darknet's ``correct_boxes`` (``constrain(0, 1, ...)`` on the edges) and
``fill_truth_region`` (which also skips boxes under 0.005 of the image wide or high; kept here). So an
object reaching outside the image is its visible part, and every target below lies in ``[0, 1]``.

**Cell.** "If the center of an object falls into a grid cell, that grid cell is responsible for
detecting that object": for an object of centre ``(c_x, c_y)`` in an ``H x W`` image divided into
``S x S`` cells, column ``floor(c_x S / W)`` and row ``floor(c_y S / H)`` (clamped to ``S - 1``). The cell
predicts one class, so it takes one object: when several centres fall into one cell, the first of the
image's objects (Darknet's rule with its boxes in file order; it shuffles them each time).

**Targets of the object**: ``x = c_x S / W - column``, ``y = c_y S / H - row`` (in the cell, 0..1),
``sqrt(w / W)``, ``sqrt(h / H)``, and its class.

**Responsible predictor** ("the one whose current prediction has the highest IoU with the ground
truth"): of the cell's ``B`` boxes decoded from the current predictions, the one of highest IoU with the
object. When all ``B`` IoUs are 0 (early in training, or tiny predictions) the IoU cannot choose; then
the box nearest to the object in ``(x, y, w, h)`` relative to the image (Darknet's ``box_rmse``
fallback), so that the predictors still specialise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from segdet.ops import box_convert, box_iou_pairwise


def decode_cell_boxes(
    raw: Tensor, rows: Tensor, cols: Tensor, grid_size: int, image_size: Sequence[int]
) -> Tensor:
    """xyxy pixel boxes of predictions ``raw`` (``[..., 4]``: ``x, y, sqrt(w), sqrt(h)``) of the cells
    at ``rows`` / ``cols`` (broadcast against ``raw[..., 0]``) of an ``S x S`` grid on an ``(H, W)``
    image: centre ``((col + x) W / S, (row + y) H / S)``, size ``(sqrt(w)^2 W, sqrt(h)^2 H)``."""
    height, width = float(image_size[0]), float(image_size[1])
    cx = (cols + raw[..., 0]) * (width / grid_size)
    cy = (rows + raw[..., 1]) * (height / grid_size)
    half_w = raw[..., 2].square() * (width / 2)
    half_h = raw[..., 3].square() * (height / 2)
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


@dataclass
class CellTargets:
    """The objects that own a cell, one row each (``G'`` of them, over the batch): ``image``, ``row``,
    ``col`` (int64 ``[G']``), ``boxes`` (``[G', 4]`` xyxy pixels), ``encoded`` (``[G', 4]``: ``x, y,
    sqrt(w), sqrt(h)`` targets) and ``labels`` (``[G']``)."""

    image: Tensor
    row: Tensor
    col: Tensor
    boxes: Tensor
    encoded: Tensor
    labels: Tensor


def assign_cells(
    targets: Sequence[dict[str, Tensor]], grid_size: int, image_size: Sequence[int]
) -> CellTargets:
    """The cell of every object of ``targets`` (per image ``boxes`` xyxy in the ``(H, W)`` image and
    ``labels``), one object per cell (module docstring), and its encoded (clipped) box."""
    s = grid_size
    height, width = float(image_size[0]), float(image_size[1])
    boxes = torch.cat([t["boxes"] for t in targets])
    labels = torch.cat([t["labels"] for t in targets])
    device = boxes.device
    image = torch.repeat_interleave(
        torch.arange(len(targets), device=device),
        torch.tensor([len(t["boxes"]) for t in targets], device=device),
    )
    limit = torch.tensor([width, height], device=device, dtype=boxes.dtype).repeat(2)
    boxes = torch.minimum(boxes.clamp(min=0), limit)  # Darknet's correct_boxes
    kept = (boxes[:, 2:] > boxes[:, :2]).all(dim=1)
    boxes, labels, image = boxes[kept], labels[kept], image[kept]
    gx = (boxes[:, 0] + boxes[:, 2]) * (0.5 * s / width)  # centre in cell units
    gy = (boxes[:, 1] + boxes[:, 3]) * (0.5 * s / height)
    col = gx.floor().long().clamp(0, s - 1)
    row = gy.floor().long().clamp(0, s - 1)
    # One object per cell: the first (lowest index) of those whose centre falls into it.
    key = (image * s + row) * s + col
    index = torch.arange(len(key), device=device)
    first = torch.full((len(targets) * s * s,), len(key), dtype=torch.int64, device=device)
    first.scatter_reduce_(0, key, index, reduce="amin")
    keep = first[key] == index
    size = (boxes[:, 2:] - boxes[:, :2]) / torch.tensor([width, height], device=device, dtype=boxes.dtype)
    encoded = torch.stack([gx - col, gy - row, size[:, 0].sqrt(), size[:, 1].sqrt()], dim=1)
    return CellTargets(image[keep], row[keep], col[keep], boxes[keep], encoded[keep], labels[keep])


def responsible_predictors(
    predicted: Tensor, boxes: Tensor, image_size: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """For each object, the responsible one of its cell's ``B`` predicted boxes (module docstring).

    Args:
        predicted: ``[G, B, 4]`` xyxy pixel boxes decoded from the object's cell's predictions.
        boxes: ``[G, 4]`` the objects' xyxy boxes.
        image_size: ``(H, W)``, the unit of the distance fallback.

    Returns:
        ``(index [G], iou [G])``: the responsible predictor and its IoU with the object.
    """
    num_boxes = predicted.shape[1]
    expanded = boxes[:, None].expand_as(predicted)
    iou = box_iou_pairwise(predicted.reshape(-1, 4), expanded.reshape(-1, 4)).view(-1, num_boxes)
    # Darknet's box_rmse: distance in (cx, cy, w, h), relative to the image.
    scale = predicted.new_tensor([image_size[1], image_size[0]]).repeat(2)
    difference = box_convert(predicted, "xyxy", "cxcywh") - box_convert(expanded, "xyxy", "cxcywh")
    distance = (difference / scale).square().sum(dim=-1)
    any_overlap = (iou > 0).any(dim=1)
    index = torch.where(any_overlap, iou.argmax(dim=1), distance.argmin(dim=1))
    return index, iou.gather(1, index[:, None])[:, 0]
