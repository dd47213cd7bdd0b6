"""Fast R-CNN (Girshick, "Fast R-CNN", ICCV 2015): one CNN pass per image, then every selective-search
proposal is pooled from the feature map and classified.

1. The proposals of each image are looked up in the proposal cache by the image's pixels (computed and
   cached on first sight; ``segdet proposals`` fills the cache beforehand), see
   :class:`~segdet.models.detection.proposals.SelectiveSearchProposals`. So the model keeps the
   detectors' interface ``model(images, targets)``: ``segdet train | eval | predict`` and the data
   pipeline need nothing new (a horizontal flip reuses the unflipped image's proposals mirrored).
2. :class:`~segdet.models.detection.transform.DetectionTransform` resizes (shorter side 600, longer at
   most 1000: the paper's single scale), normalises and batches the images; the proposals are scaled
   with them.
3. The backbone gives one stride-16 map (here ResNet up to ``layer3``, "C4"; the paper's VGG-16
   ``conv5_3`` has the same stride).
4. :class:`~.roi_heads.RoIHeads` pools each RoI to 7 x 7 by RoI max pooling (sec. 2.1,
   :func:`segdet.ops.roi_pool`), runs ``fc6``, ``fc7`` (:class:`~.box_head.TwoMLPHead`) and the
   softmax classifier over ``K + 1`` classes and class-specific box regressors
   (:class:`~.box_head.FastRCNNPredictor`).

Training (sec. 2.3): mini-batches of ``N = 2`` images (``data.batch_size: 2``) and ``R = 128`` RoIs,
64 per image, 25% foreground (IoU >= 0.5 with an object), background with IoU in ``[0.1, 0.5)``; the
multi-task loss ``L = L_cls + [u >= 1] L_loc`` with smooth L1 of ``beta = 1`` (eq. 3) on the
class-specific offsets, targets normalised by ``(0.1, 0.1, 0.2, 0.2)`` (box coder weights
``(10, 10, 5, 5)``). Inference: per-class NMS at IoU 0.3 (the paper's code), and optionally ``fc6`` /
``fc7`` replaced by their truncated SVDs (sec. 3.1, :mod:`.truncated_svd`; ``svd_ranks``, applied by
:meth:`FastRCNN.compress_fc` and by ``fuse_for_inference``, i.e. ``segdet eval | predict``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from segdet.models.detection.detector import Detector
from segdet.models.detection.proposals import SelectiveSearchProposals, SelectiveSearchSettings
from segdet.models.detection.rcnn.box_head import FastRCNNPredictor, TwoMLPHead
from segdet.models.detection.rcnn.poolers import MultiScaleRoIPool
from segdet.models.detection.rcnn.roi_heads import RoIHeads
from segdet.models.detection.rcnn.truncated_svd import truncated_svd
from segdet.models.detection.settings import TransformSettings, check_num_classes, with_settings
from segdet.models.detection.transform import resize_boxes

POOL_SIZE = 7


@dataclass(frozen=True)
class FastRCNNSettings(TransformSettings):
    """The paper's settings (module docstring) under :class:`~.settings.RCNNSettings`' names, plus the
    proposals': selective search's ``proposal_mode`` and resize rule (``proposal_max_side``,
    ``proposal_min_side``), the cache's root ``proposal_cache`` (``None``: the default,
    ``""``: in memory only), the proposals kept per image in training / inference and their minimum
    side in pixels."""

    min_size: int | tuple[int, ...] = 600
    max_size: int = 1000
    size_divisible: int = 16
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.3
    box_detections_per_img: int = 100
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_bg_iou_low: float = 0.1
    box_batch_size_per_image: int = 64
    box_positive_fraction: float = 0.25
    box_smooth_l1_beta: float = 1.0
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    proposal_mode: Literal["fast", "quality"] = "fast"
    proposal_max_side: int = 500
    proposal_min_side: int = 128
    proposal_cache: str | None = None
    proposals_train: int = 2000
    proposals_test: int = 2000
    proposal_min_size: float = 2.0

    def proposal_source(self) -> SelectiveSearchProposals:
        search = SelectiveSearchSettings(
            mode=self.proposal_mode, max_side=self.proposal_max_side, min_side=self.proposal_min_side
        )
        return SelectiveSearchProposals(
            search,
            self.proposal_cache,
            num_proposals=(self.proposals_train, self.proposals_test),
            min_size=self.proposal_min_size,
        )

    def roi_heads(self, pooler: nn.Module, head: nn.Module, width: int, num_classes: int) -> RoIHeads:
        return RoIHeads(
            pooler,
            head,
            FastRCNNPredictor(width, num_classes + 1),
            fg_iou_thresh=self.box_fg_iou_thresh,
            bg_iou_thresh=self.box_bg_iou_thresh,
            bg_iou_low=self.box_bg_iou_low,
            batch_size_per_image=self.box_batch_size_per_image,
            positive_fraction=self.box_positive_fraction,
            bbox_reg_weights=tuple(self.bbox_reg_weights),
            smooth_l1_beta=self.box_smooth_l1_beta,
            score_thresh=self.box_score_thresh,
            nms_thresh=self.box_nms_thresh,
            detections_per_img=self.box_detections_per_img,
        )


class FastRCNN(Detector):
    """Fast R-CNN; see the module docstring.

    Args:
        transform: the detectors' transform.
        backbone: the batch -> ``{"0": feature map}`` module.
        proposals: the selective-search proposal source.
        roi_heads: RoI pooling, box head and predictor, sampling and post-processing.
        num_classes: ``K`` object classes (no background).
        svd_ranks: ``(t6, t7)`` ranks of ``fc6`` / ``fc7``'s truncated SVD at inference (``None``: off).
    """

    def __init__(
        self,
        transform: nn.Module,
        backbone: nn.Module,
        proposals: SelectiveSearchProposals,
        roi_heads: RoIHeads,
        num_classes: int,
        svd_ranks: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(transform, backbone, num_classes)
        self.proposals = proposals
        self.roi_heads = roi_heads
        self.svd_ranks = tuple(svd_ranks) if svd_ranks is not None else None
        self.compressed = False

    def forward(
        self,
        images: Sequence[Tensor] | Tensor,
        targets: Sequence[Mapping[str, Tensor]] | None = None,
        *,
        generator: torch.Generator | None = None,
        proposals: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (evaluation), see :class:`Detector`; ``proposals``: per image
        ``[R_i, 4]`` xyxy boxes in its own pixels to use instead of the selective-search ones."""
        images, original_sizes, prepared = self.check_inputs(images, targets)
        if proposals is None:
            proposals = self.proposals(images, training=self.training)
        elif len(proposals) != len(original_sizes):
            raise ValueError(f"{len(original_sizes)} images but {len(proposals)} proposal lists")
        batch, prepared = self.transform(images, prepared, generator)
        rois = [
            resize_boxes(p.to(batch.tensors.device, torch.float32), old, new)
            for p, old, new in zip(proposals, original_sizes, batch.image_sizes, strict=True)
        ]
        features = self.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        detections, losses = self.roi_heads(features, rois, batch.image_sizes, prepared, generator)
        return self.outputs(detections, losses, batch, original_sizes)

    @torch.no_grad()
    def compress_fc(self, ranks: tuple[int, int] | None = None) -> FastRCNN:
        """Replace ``fc6`` and ``fc7`` by their truncated SVDs of ``ranks`` (default :attr:`svd_ranks`),
        in place, once; for inference only (the model is set to eval mode)."""
        ranks = ranks if ranks is not None else self.svd_ranks
        head = self.roi_heads.box_head
        if ranks is None or self.compressed:
            return self
        if not isinstance(head, TwoMLPHead):
            raise ValueError(f"truncated SVD needs the fc6 / fc7 head, not {type(head).__name__}")
        head.fc6 = truncated_svd(head.fc6, ranks[0])
        head.fc7 = truncated_svd(head.fc7, ranks[1])
        self.compressed = True
        return self.eval()

    def fuse_for_inference(self, *args, **kwargs) -> FastRCNN:
        """:meth:`Detector.fuse_for_inference`, then :meth:`compress_fc` when ``svd_ranks`` is set."""
        super().fuse_for_inference(*args, **kwargs)
        return self.compress_fc()


@with_settings(FastRCNNSettings)
def fastrcnn_resnet50_c4(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    representation_size: int = 1024,
    svd_ranks: tuple[int, int] | None = None,
    settings: FastRCNNSettings,
) -> FastRCNN:
    """Fast R-CNN on a ResNet cut after ``layer3`` (stride 16), RoI max pooling 7 x 7, ``fc6`` and
    ``fc7`` of ``representation_size`` units (the paper's VGG-16 has 4096), selective-search proposals
    (see the module docstring and :class:`FastRCNNSettings`). ``backbone``: resnet18/34/50/101.
    ``svd_ranks``: ``(t6, t7)`` for the truncated SVD at inference (the paper's ``(1024, 256)``).
    The same backbone and box head as ``fasterrcnn_resnet50_c4(box_head="2fc", pool="pool")``."""
    from segdet.models.detection.rcnn.faster_rcnn import resnet_c4

    check_num_classes(num_classes)
    net, _, _ = resnet_c4(backbone, backbone_weights, trainable_layers, frozen_bn)
    pooler = MultiScaleRoIPool(["0"], POOL_SIZE, 0, mode="pool", aligned=False)
    head = TwoMLPHead(net.out_channels * POOL_SIZE**2, representation_size)
    roi_heads = settings.roi_heads(pooler, head, representation_size, num_classes)
    model = FastRCNN(settings.transform(), net, settings.proposal_source(), roi_heads, num_classes, svd_ranks)
    model.settings = settings
    return model
