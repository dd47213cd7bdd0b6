"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017): a one-stage detector, one
dense head over a feature pyramid, trained with the focal loss.

transform -> ResNet + FPN (``P3 .. P7``, :mod:`.builders`) -> :class:`~.head.RetinaNetHead` on every
level (``K A`` class logits and ``4 A`` deltas per location, ``A = 9`` anchors: 3 scales
``2^0, 2^(1/3), 2^(2/3)`` x 3 aspect ratios 1:2, 1:1, 2:1, base size 32 on P3 ... 512 on P7)
-> losses (:mod:`.loss`) or detections.

**Inference** (paper sec. 4, "Inference"), per image: the class probabilities ``σ(x)`` of every
(anchor, class) pair; on each level, of the pairs scoring above ``score_thresh`` (0.05) the
``topk_candidates`` (1000) best; their boxes decoded from the anchors' deltas and clipped to the image;
all levels' candidates merged and NMS at ``nms_thresh`` (0.5) per class; the ``detections_per_img``
best remain (torchvision's 300; the paper's 100). Equal to torchvision's ``RetinaNet`` (same weights and
settings: detections to 1e-4, losses to 1e-5), with every step batched over the images
(:mod:`~segdet.models.detection.postprocess`). ``topk_per="image"`` takes the ``topk_candidates`` best
pairs of all levels together instead (EfficientDet's code: 5000, no score threshold; equal to rwightman's
``effdet``).

Labels are the dataset's ``0 .. K-1`` throughout (``label_offset = 0``): the sigmoid classifier has no
background class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from segdet.models.detection.anchors import AnchorGenerator
from segdet.models.detection.detector import Detector
from segdet.models.detection.head_outputs import dense_head_outputs
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.matcher import Matcher, match_to_targets
from segdet.models.detection.postprocess import (
    image_bounds,
    select_detections,
    topk_above,
    topk_per_level,
)
from segdet.models.detection.retinanet.head import RetinaNetHead
from segdet.models.detection.retinanet.loss import BOX_LOSSES, LOSS_NORMALIZERS, retinanet_loss
from segdet.models.detection.settings import TransformSettings
from segdet.models.detection.transform import DetectionTransform
from segdet.ops import BoxCoder


@dataclass(frozen=True)
class RetinaNetSettings(TransformSettings):
    """Transform (the :class:`~segdet.models.detection.settings.TransformSettings` fields), inference
    (``score_thresh``, ``topk_candidates`` per level or per image (``topk_per`` ``"level"`` / ``"image"``),
    ``nms_thresh``, ``detections_per_img``) and training
    (``fg_iou_thresh``, ``bg_iou_thresh``, the focal loss's ``focal_alpha``, ``focal_gamma``, and
    ``box_loss`` ``"l1"`` / ``"smooth_l1"`` (``smooth_l1_beta``) / ``"giou"``, ``box_loss_weight``, the
    factor of ``bbox_regression``, and ``loss_normalizer``, ``"image"`` (torchvision's: each image's
    losses over its foreground count, averaged) or ``"batch"`` (EfficientDet's code: the batch's over its
    foreground count + 1), :mod:`.loss`) settings; torchvision's names and defaults."""

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 300
    topk_candidates: int = 1000
    topk_per: str = "level"
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "l1"
    smooth_l1_beta: float = 0.11
    box_loss_weight: float = 1.0
    loss_normalizer: str = "image"

    def __post_init__(self) -> None:
        if self.box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {self.box_loss!r}")
        if self.loss_normalizer not in LOSS_NORMALIZERS:
            raise ValueError(
                f"loss_normalizer must be one of {LOSS_NORMALIZERS}, got {self.loss_normalizer!r}"
            )
        if self.topk_per not in ("level", "image"):
            raise ValueError(f"topk_per must be 'level' or 'image', got {self.topk_per!r}")


class RetinaNet(Detector):
    """RetinaNet; see the module docstring.

    Args:
        transform: :class:`~segdet.models.detection.transform.DetectionTransform`.
        backbone: ResNet + FPN returning the levels ``P3 .. P7`` (any dict of equally wide maps).
        anchor_generator: anchors of every level, ``A`` per location on each.
        head: :class:`~.head.RetinaNetHead` with ``K`` classes and ``A`` anchors, or another head with
            its interface (per level class logits and box deltas, e.g. EfficientDet's).
        num_classes: ``K``.
        settings: :class:`RetinaNetSettings` (the transform is built from it by the builders).
    """

    label_offset = 0

    def __init__(
        self,
        transform: DetectionTransform,
        backbone: nn.Module,
        anchor_generator: AnchorGenerator,
        head: RetinaNetHead | nn.Module,
        num_classes: int,
        settings: RetinaNetSettings,
    ) -> None:
        super().__init__(transform, backbone, num_classes)
        if len(set(anchor_generator.num_anchors_per_location())) != 1:
            raise ValueError("RetinaNet's shared head needs the same number of anchors on every level")
        self.anchor_generator = anchor_generator
        self.head = head
        self.settings = settings
        self.matcher = Matcher(settings.fg_iou_thresh, settings.bg_iou_thresh, allow_low_quality_matches=True)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

    def run_heads(
        self,
        batch: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        levels = list(features.values())
        logits, deltas, level_sizes = dense_head_outputs(self.head, levels, self.num_classes)
        anchors = self.anchor_generator(batch, levels, dtype=deltas.dtype)[0]  # shared by the images
        s = self.settings
        if self.training:
            assert targets is not None
            matched = match_to_targets(self.matcher, anchors, targets)
            losses = retinanet_loss(
                logits,
                deltas,
                anchors,
                matched,
                targets,
                self.box_coder,
                alpha=s.focal_alpha,
                gamma=s.focal_gamma,
                box_loss=s.box_loss,
                smooth_l1_beta=s.smooth_l1_beta,
                box_weight=s.box_loss_weight,
                normalizer=s.loss_normalizer,
            )
            return [], losses
        return self.postprocess(logits, deltas, anchors, level_sizes, batch.image_sizes), {}

    @torch.no_grad()
    def postprocess(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        level_sizes: list[int],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections per image (module docstring) from ``[N, M, K]`` logits, ``[N, M, 4]`` deltas,
        ``[M, 4]`` anchors, the anchors per level and the images' (resized, unpadded) sizes."""
        s = self.settings
        num_images, _, num_classes = logits.shape
        # Candidates are (anchor, class) pairs, index anchor * K + class, level by level.
        scores = torch.sigmoid(logits).reshape(num_images, -1)
        if s.topk_per == "level":
            level_pairs = [n * num_classes for n in level_sizes]
            values, index, valid, _ = topk_per_level(scores, level_pairs, s.topk_candidates, s.score_thresh)
        else:
            values, index, valid = topk_above(scores, s.topk_candidates, s.score_thresh)
        image = torch.arange(num_images, device=logits.device)[:, None].expand_as(index)[valid]
        values, index = values[valid], index[valid]
        anchor, label = index // num_classes, index % num_classes
        boxes = self.box_coder.decode_single(deltas[image, anchor], anchors[anchor])
        boxes = torch.minimum(boxes.clamp(min=0), image_bounds(image_sizes, image, boxes.dtype))
        return select_detections(
            boxes, values, label, image, num_images, num_classes, s.nms_thresh, s.detections_per_img
        )
