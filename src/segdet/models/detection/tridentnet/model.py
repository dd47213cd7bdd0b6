"""TridentNet (Li et al., "Scale-Aware Trident Networks for Object Detection", ICCV 2019): Faster R-CNN
(C4: RPN on conv4, ``res5`` box head) whose conv4 stage is run as three weight-sharing branches of
dilations 1, 2, 3 (:mod:`.trident`), each trained on the objects of its own scale range.

The branches are stacked along the batch (``B N`` images for ``N``), and the shared RPN and RoI heads
run on them as on any batch: each branch gets its own proposals, samples and losses, averaged over the
``B N`` images as Detectron2 does.

**Scale-aware training** (sec. 4.2): branch ``i`` trains on the objects whose scale ``sqrt(w h)`` (in
the resized image's pixels) lies in its valid range ``[l_i, u_i]``: ``[0, 90]``, ``[30, 160]``,
``[90, ∞]`` for COCO at 800 px. The others are *ignored* for that branch, not background: the anchors
and proposals matched to them are neither positive nor negative (the target's ``ignore`` flags, read by
the RPN and the RoI heads), so that a branch is not taught that the other scales' objects are
background.

**Inference** (sec. 4.2-4.3): every branch's detections (each already NMS'd per class by the RoI
heads) outside the branch's valid range are dropped, as in training (a branch never learnt that other
scales' objects are not its own, and would fire on them: on the shapes set, the small-object branch
alone gave box AP50 0.04 over all objects), the rest merged per image and class by NMS at the box
head's threshold, the ``detections_per_img`` best kept; with ``test_branch`` set, only that branch runs,
unfiltered ("TridentNet Fast", the middle branch: within 0.4-1 AP of the three in the paper, at a single
branch's cost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from segdet.models.detection.image_list import ImageList
from segdet.models.detection.postprocess import select_detections
from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.tridentnet.trident import TridentStage
from segdet.ops.boxes import box_area

#: The paper's valid ranges of ``sqrt(w h)`` per branch, for COCO images resized to 800 px.
SCALE_RANGES = ((0.0, 90.0), (30.0, 160.0), (90.0, math.inf))


def branch_targets(
    targets: Sequence[dict[str, Tensor]], scale_ranges: Sequence[tuple[float, float]]
) -> list[dict[str, Tensor]]:
    """The targets of every branch, branch-major (``B N`` dicts): each image's target with ``ignore``
    (bool ``[G]``) set on the objects whose ``sqrt(w h)`` is outside the branch's ``[low, high]``."""
    branches = []
    for low, high in scale_ranges:
        for target in targets:
            scale = box_scales(target["boxes"])
            branches.append({**target, "ignore": (scale < low) | (scale > high)})
    return branches


def box_scales(boxes: Tensor) -> Tensor:
    """``sqrt(w h)`` of xyxy ``boxes`` ``[G, 4]``: the scale the valid ranges bound."""
    return box_area(boxes).clamp(min=0).sqrt()


def merge_branches(
    detections: list[dict[str, Tensor]],
    num_images: int,
    num_labels: int,
    nms_thresh: float,
    detections_per_img: int,
    scale_ranges: Sequence[tuple[float, float]] | None = None,
) -> list[dict[str, Tensor]]:
    """Per image, the detections of its ``B`` branches (``detections`` branch-major, ``B N`` dicts),
    each branch's within its ``scale_ranges`` entry (``None``: all), merged by NMS per class and capped
    (module docstring)."""
    boxes = torch.cat([d["boxes"] for d in detections])
    scores = torch.cat([d["scores"] for d in detections])
    labels = torch.cat([d["labels"] for d in detections])
    # the branch-image each detection came from (full_like: counts stay symbolic in an exported graph)
    source = torch.cat([torch.full_like(d["labels"], i) for i, d in enumerate(detections)])
    images = source % num_images
    if scale_ranges is not None:
        bounds = torch.tensor(scale_ranges, dtype=boxes.dtype, device=boxes.device)[source // num_images]
        scale = box_scales(boxes)
        keep = (scale >= bounds[:, 0]) & (scale <= bounds[:, 1])
        boxes, scores, labels, images = boxes[keep], scores[keep], labels[keep], images[keep]
    return select_detections(
        boxes, scores, labels, images, num_images, num_labels, nms_thresh, detections_per_img
    )


class TridentRCNN(GeneralizedRCNN):
    """TridentNet; see the module docstring. The backbone's conv4 stage (``backbone.body.layer3``) is a
    :class:`~.trident.TridentStage`; ``scale_ranges`` has one ``(low, high)`` per branch."""

    def __init__(self, *args, scale_ranges: Sequence[tuple[float, float]] = SCALE_RANGES, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.stage, TridentStage):
            raise TypeError("TridentRCNN needs a TridentStage as backbone.body.layer3")
        if len(scale_ranges) != len(self.stage.dilations):
            raise ValueError(f"{len(scale_ranges)} scale ranges for {len(self.stage.dilations)} branches")
        self.scale_ranges = tuple((float(low), float(high)) for low, high in scale_ranges)

    @property
    def stage(self) -> TridentStage:
        return self.backbone.body.layer3

    def run_heads(
        self,
        batch: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        branches = len(self.stage.active_dilations())
        if branches == 1:
            return super().run_heads(batch, features, targets, generator)
        num_images = len(batch.image_sizes)
        stacked = ImageList(batch.tensors.repeat(branches, 1, 1, 1), list(batch.image_sizes) * branches)
        if self.training:
            assert targets is not None
            return super().run_heads(stacked, features, branch_targets(targets, self.scale_ranges), generator)
        detections, losses = super().run_heads(stacked, features, None, generator)
        heads = self.roi_heads
        merged = merge_branches(
            detections,
            num_images,
            self.num_classes + 1,
            heads.nms_thresh,
            heads.detections_per_img,
            self.scale_ranges,
        )
        return merged, losses
