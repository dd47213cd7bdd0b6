"""CenterNet (Zhou, Wang, Krähenbühl, "Objects as Points", 2019): an object is the centre point of its
box; a keypoint heatmap per class finds it, and the box's size and the centre's sub-pixel offset are
read at that point. No anchors, no NMS.

transform (resize, normalise, pad to a multiple of 32) -> backbone with upsampling to output stride
``R = 4`` (:mod:`.upsampling`) -> :class:`~.head.CenterNetHead` (``C`` heatmaps, size, offset) -> the loss
(:mod:`.loss`, targets in :mod:`.targets`) or detections (:mod:`.decode`: 3 x 3 max-pool peaks, the
``detections_per_img`` (100) best, no NMS), clipped to the image.

Labels are the dataset's ``0 .. C-1`` (``label_offset = 0``): one heatmap per class, no background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from segdet.models.detection.centernet.decode import decode_centers
from segdet.models.detection.centernet.head import CenterNetHead
from segdet.models.detection.centernet.loss import centernet_loss
from segdet.models.detection.centernet.targets import RADIUS_RULES, center_targets
from segdet.models.detection.detector import Detector
from segdet.models.detection.head_outputs import in_float32
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.postprocess import image_bounds, split_by_image
from segdet.models.detection.settings import TransformSettings


@dataclass(frozen=True)
class CenterNetSettings(TransformSettings):
    """Transform (the :class:`~segdet.models.detection.settings.TransformSettings` fields; the paper's
    512 x 512 input: ``min_size = max_size = 512``), inference (``detections_per_img`` peaks, those
    scoring above ``score_thresh``) and training settings: the Gaussian radius's ``min_overlap`` (0.7)
    and ``radius_rule`` (``"correct"`` / ``"official"``, see :func:`~.targets.gaussian_radius`), the
    focal loss's ``focal_alpha`` (2) and ``focal_beta`` (4), ``size_weight`` (0.1), ``offset_weight``
    (1)."""

    min_size: int | tuple[int, ...] = 512
    max_size: int = 512
    score_thresh: float = 0.0
    detections_per_img: int = 100
    min_overlap: float = 0.7
    radius_rule: str = "correct"
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    size_weight: float = 0.1
    offset_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.radius_rule not in RADIUS_RULES:
            raise ValueError(f"radius_rule must be one of {RADIUS_RULES}, got {self.radius_rule!r}")


class CenterNet(Detector):
    """CenterNet; see the module docstring.

    Args:
        backbone: module mapping the padded batch to one stride-``stride`` map (``out_channels`` wide).
        head: :class:`~.head.CenterNetHead`.
        num_classes: ``C``.
        settings: :class:`CenterNetSettings` (the transform is built from it).
        stride: the output stride ``R`` (4).
    """

    label_offset = 0

    def __init__(
        self,
        backbone: nn.Module,
        head: CenterNetHead,
        num_classes: int,
        settings: CenterNetSettings,
        stride: int = 4,
    ) -> None:
        super().__init__(settings.transform(), backbone, num_classes)
        self.head = head
        self.settings = settings
        self.stride = stride

    def run_heads(
        self,
        batch: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        heatmap, size, offset = in_float32(*self.head(list(features.values())[-1]))
        s = self.settings
        if self.training:
            assert targets is not None
            encoded = center_targets(
                targets,
                self.num_classes,
                heatmap.shape[-2:],
                self.stride,
                min_overlap=s.min_overlap,
                radius_rule=s.radius_rule,
            )
            losses = centernet_loss(
                heatmap,
                size,
                offset,
                encoded,
                alpha=s.focal_alpha,
                beta=s.focal_beta,
                size_weight=s.size_weight,
                offset_weight=s.offset_weight,
            )
            return [], losses
        return self.postprocess(heatmap, size, offset, batch.image_sizes), {}

    @torch.no_grad()
    def postprocess(
        self, heatmap: Tensor, size: Tensor, offset: Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image ``boxes`` (clipped to its resized size), ``scores``, ``labels`` by decreasing score."""
        s = self.settings
        image, boxes, labels, scores = decode_centers(
            heatmap.sigmoid(), size, offset, self.stride, s.detections_per_img, s.score_thresh
        )
        boxes = torch.minimum(boxes.clamp(min=0), image_bounds(image_sizes, image, boxes.dtype))
        return split_by_image(image, heatmap.shape[0], {"boxes": boxes, "scores": scores, "labels": labels})
