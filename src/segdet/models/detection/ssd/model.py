"""SSD (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016): one-stage detection from several
feature maps of a single network, each predicting class scores and box offsets for a fixed set of
default boxes.

transform (every image resized to the fixed ``size``, e.g. 300 x 300) -> feature maps (VGG-16's
conv4_3, fc7 and extra layers, :mod:`.vgg`; or MobileNetV3's, :mod:`.mobilenet`) -> one predictor per
map (:mod:`.head`) over its default boxes (:mod:`.default_boxes`) -> losses (:mod:`.loss`) or
detections.

**Inference** (paper sec. 3, "Inference time"), per image: the softmax over the ``K + 1`` classes of
every default box; for each object class, the boxes scoring above ``score_thresh`` (0.01) and of those
the ``topk_candidates`` (400) best, decoded and clipped to the image; NMS at ``nms_thresh`` (0.45) per
class; the ``detections_per_img`` (200) best remain. Equal to torchvision's ``SSD`` (same weights and
settings: detections to 1e-4, losses to 1e-5), batched over the images.

Labels: the softmax's class 0 is the background, objects ``1 .. K`` inside (``label_offset = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.models.detection.detector import Detector
from segdet.models.detection.head_outputs import dense_head_outputs
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.matcher import match_to_targets
from segdet.models.detection.postprocess import image_bounds, select_detections, topk_above
from segdet.models.detection.settings import FixedSizeSettings
from segdet.models.detection.ssd.default_boxes import DefaultBoxGenerator
from segdet.models.detection.ssd.head import SSDHead
from segdet.models.detection.ssd.loss import SSDMatcher, ssd_loss
from segdet.ops import BoxCoder

#: SSD's offset encoding: the "variances" 0.1 (centre) and 0.2 (size) of the paper's code.
SSD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


@dataclass(frozen=True)
class SSDSettings(FixedSizeSettings):
    """The fixed input ``size`` ``(H, W)`` with ``image_mean`` / ``image_std``; inference
    (``score_thresh``, ``topk_candidates`` per class, ``nms_thresh``, ``detections_per_img``) and training
    (``iou_thresh`` of the matching, ``positive_fraction``: hard negatives are ``(1 - f) / f`` per
    matched box, 3 for 0.25) settings; torchvision's names and defaults."""

    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    detections_per_img: int = 200
    topk_candidates: int = 400
    iou_thresh: float = 0.5
    positive_fraction: float = 0.25


class SSD(Detector):
    """SSD and SSDLite; see the module docstring.

    Args:
        backbone: module giving the feature maps as a dict, in the default boxes' level order.
        anchor_generator: :class:`~.default_boxes.DefaultBoxGenerator`.
        head: :class:`~.head.SSDHead` with ``K + 1`` classes.
        num_classes: ``K``, the object classes.
        settings: :class:`SSDSettings` (the transform is built from it).
    """

    label_offset = 1

    def __init__(
        self,
        backbone: nn.Module,
        anchor_generator: DefaultBoxGenerator,
        head: SSDHead,
        num_classes: int,
        settings: SSDSettings,
    ) -> None:
        super().__init__(settings.transform(), backbone, num_classes)
        self.anchor_generator = anchor_generator
        self.head = head
        self.settings = settings
        self.matcher = SSDMatcher(settings.iou_thresh)
        self.box_coder = BoxCoder(SSD_BOX_WEIGHTS)

    def run_heads(
        self,
        batch: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        levels = list(features.values())
        logits, deltas, _ = dense_head_outputs(self.head, levels, self.num_classes + 1)
        boxes = self.anchor_generator(batch, levels).to(deltas.dtype)
        s = self.settings
        if self.training:
            assert targets is not None
            matched = match_to_targets(self.matcher, boxes, targets)
            ratio = (1.0 - s.positive_fraction) / s.positive_fraction
            return [], ssd_loss(logits, deltas, boxes, matched, targets, self.box_coder, ratio)
        return self.postprocess(logits, deltas, boxes, batch.image_sizes), {}

    @torch.no_grad()
    def postprocess(
        self, logits: Tensor, deltas: Tensor, boxes: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Detections per image (module docstring) from ``[N, M, K + 1]`` logits, ``[N, M, 4]``
        offsets and the ``[M, 4]`` default boxes."""
        s = self.settings
        num_images, _, num_labels = logits.shape
        scores = F.softmax(logits, dim=-1)[..., 1:].transpose(1, 2)  # [N, K, M]
        values, index, valid = topk_above(scores, s.topk_candidates, s.score_thresh)  # [N, K, k]
        image, label, _ = torch.nonzero(valid, as_tuple=True)
        values, index = values[valid], index[valid]
        decoded = self.box_coder.decode_single(deltas[image, index], boxes[index])
        decoded = torch.minimum(decoded.clamp(min=0), image_bounds(image_sizes, image, decoded.dtype))
        return select_detections(
            decoded, values, label + 1, image, num_images, num_labels, s.nms_thresh, s.detections_per_img
        )
