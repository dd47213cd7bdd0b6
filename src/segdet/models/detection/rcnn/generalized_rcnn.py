"""The two-stage detector (R-CNN family): transform -> backbone -> RPN -> RoI heads -> postprocess.

Faster R-CNN (Ren et al., NeurIPS 2015) and Mask R-CNN (He et al., ICCV 2017) are this pipeline with
different parts (see :mod:`.faster_rcnn`, :mod:`.mask_rcnn`):

1. :class:`~segdet.models.detection.transform.DetectionTransform` normalises, resizes and pads the
   images into one batch;
2. the backbone (with or without FPN) gives a dict of feature maps;
3. the :class:`~.rpn.RegionProposalNetwork` proposes boxes (and its losses in training);
4. :class:`~.roi_heads.RoIHeads` classifies and refines them (and masks them);
5. in inference the detections are mapped back to the original images.

Labels, interface and the steps shared with the other detectors are those of
:class:`~segdet.models.detection.detector.Detector` (``label_offset = 1``: the RoI heads use
torchvision's convention, ``0`` = background, objects ``1 .. K``, ``K + 1`` logits). Training returns
the losses ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg`` (and
``loss_mask``); evaluation returns per image ``boxes``, ``labels``, ``scores`` and for Mask R-CNN
``masks`` (``[D, 1, H, W]`` probabilities in the original image).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segdet.models.detection.detector import Detector
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.rcnn.roi_heads import RoIHeads
from segdet.models.detection.rcnn.rpn import RegionProposalNetwork
from segdet.models.detection.transform import DetectionTransform


class GeneralizedRCNN(Detector):
    """Two-stage detector; see the module docstring.

    Args:
        transform: :class:`~segdet.models.detection.transform.DetectionTransform`.
        backbone: module mapping the padded batch to a dict of feature maps, with ``out_channels``.
        rpn: :class:`~.rpn.RegionProposalNetwork`.
        roi_heads: :class:`~.roi_heads.RoIHeads` (``K + 1`` classes, background included).
        num_classes: ``K``, the object classes (no background).
    """

    def __init__(
        self,
        transform: DetectionTransform,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        num_classes: int,
    ) -> None:
        super().__init__(transform, backbone, num_classes)
        self.rpn = rpn
        self.roi_heads = roi_heads

    @property
    def has_mask(self) -> bool:
        return self.roi_heads.has_mask

    def run_heads(
        self,
        batch: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None,
        generator: torch.Generator | None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """RPN proposals, then the RoI heads on them (see :meth:`Detector.run_heads`)."""
        proposals, rpn_losses = self.rpn(batch, features, targets, generator=generator)
        detections, head_losses = self.roi_heads(features, proposals, batch.image_sizes, targets, generator)
        return detections, {**rpn_losses, **head_losses}
