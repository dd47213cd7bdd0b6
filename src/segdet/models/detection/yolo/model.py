"""YOLO v1 (Redmon, Divvala, Girshick, Farhadi, "You Only Look Once: Unified, Real-Time Object
Detection", CVPR 2016): detection as one regression from the image to an ``S x S`` grid of ``B`` boxes,
their confidences and ``C`` class probabilities per cell.

transform (every image resized to the fixed ``size``, 448 x 448) -> backbone (:mod:`.darknet`, or a
ResNet) -> :class:`~.head.YOLOv1Head` (``N x S x S x (5B + C)``) -> the loss (:mod:`.loss`, targets in
:mod:`.targets`) or detections.

**Inference** (sec. 2, "At test time"): the class-specific confidence of each of the ``S² B`` boxes
and each class, ``Pr(class_c | object) Pr(object) IoU = p_i(c) Ĉ_ij``; both factors are clamped to
``[0, 1]`` first (the outputs are linear: two negative outputs must not make a positive score). Of the
(box, class) pairs scoring above ``score_thresh``, the ``topk_candidates`` best are decoded (centre
``((col + x) W / S, (row + y) H / S)``, size ``(√w² W, √h² H)``) and clipped to the image; NMS at
``nms_thresh`` per class (sec. 2.4: "non-maximal suppression ... adds 2-3% in mAP"); the
``detections_per_img`` best remain. The steps are the shared ones of
:mod:`~segdet.models.detection.postprocess`, batched over the images.

Labels are the dataset's ``0 .. C-1`` (``label_offset = 0``): no background class, "no object" is the
confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from segdet.models.detection.detector import Detector
from segdet.models.detection.head_outputs import in_float32
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.postprocess import image_bounds, select_detections, topk_pairs
from segdet.models.detection.settings import FixedSizeSettings
from segdet.models.detection.yolo.head import YOLOv1Head
from segdet.models.detection.yolo.loss import yolov1_loss
from segdet.models.detection.yolo.targets import decode_cell_boxes


@dataclass(frozen=True)
class YOLOv1Settings(FixedSizeSettings):
    """The fixed input ``size`` (the paper's 448 x 448) with ``image_mean`` / ``image_std``; inference
    (``score_thresh`` on the class-specific confidence, ``topk_candidates`` (box, class) pairs,
    ``nms_thresh`` of the per-class NMS, ``detections_per_img``) and the loss weights ``lambda_coord`` and
    ``lambda_noobj`` (the paper's 5 and 0.5)."""

    size: tuple[int, int] = (448, 448)
    score_thresh: float = 0.005
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 1000
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5


class YOLOv1(Detector):
    """YOLO v1; see the module docstring.

    Args:
        backbone: module giving the feature maps (the last one feeds the head).
        head: :class:`~.head.YOLOv1Head`.
        num_classes: ``C``.
        boxes_per_cell: ``B``.
        settings: :class:`YOLOv1Settings` (the transform is built from it).
    """

    label_offset = 0

    def __init__(
        self,
        backbone: nn.Module,
        head: YOLOv1Head,
        num_classes: int,
        boxes_per_cell: int,
        settings: YOLOv1Settings,
    ) -> None:
        super().__init__(settings.transform(), backbone, num_classes)
        if head.per_cell != 5 * boxes_per_cell + num_classes:
            expected = 5 * boxes_per_cell + num_classes
            raise ValueError(f"the head predicts {head.per_cell} numbers per cell, not 5 B + C = {expected}")
        self.head = head
        self.boxes_per_cell = boxes_per_cell
        self.settings = settings

    @property
    def grid_size(self) -> int:
        return self.head.grid_size

    def run_heads(
        self,
        batch: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        (predictions,) = in_float32(self.head(list(features.values())[-1]))
        size = batch.tensors.shape[-2:]
        s = self.settings
        if self.training:
            assert targets is not None
            losses = yolov1_loss(
                predictions,
                targets,
                size,
                self.boxes_per_cell,
                lambda_coord=s.lambda_coord,
                lambda_noobj=s.lambda_noobj,
            )
            return [], losses
        return self.postprocess(predictions, batch.image_sizes), {}

    @torch.no_grad()
    def postprocess(self, predictions: Tensor, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections per image (module docstring) from ``[N, S, S, 5B + C]`` predictions on images of
        ``image_sizes`` (all the fixed size)."""
        s = self.settings
        num_images, grid = predictions.shape[:2]
        b = self.boxes_per_cell
        boxes = predictions[..., : 5 * b].reshape(num_images, grid * grid, b, 5)
        probabilities = predictions[..., 5 * b :].reshape(num_images, grid * grid, 1, -1).clamp(0, 1)
        scores = boxes[..., 4:5].clamp(0, 1) * probabilities  # [N, S², B, C]
        image, candidate, label, values = topk_pairs(scores.flatten(1, 2), s.topk_candidates, s.score_thresh)
        cell = torch.div(candidate, b, rounding_mode="floor")
        raw = boxes.flatten(1, 2)[image, candidate, :4]
        decoded = decode_cell_boxes(raw, cell // grid, cell % grid, grid, image_sizes[0])
        decoded = torch.minimum(decoded.clamp(min=0), image_bounds(image_sizes, image, decoded.dtype))
        return select_detections(
            decoded, values, label, image, num_images, self.num_classes, s.nms_thresh, s.detections_per_img
        )
