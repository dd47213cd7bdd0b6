"""TridentNet builders: the C4 Faster R-CNN of :func:`~segdet.models.detection.rcnn.fasterrcnn_resnet50_c4`
(RPN on conv4 with 9 anchors, RoIAlign 14x14, ``res5`` box head) with its conv4 stage (ResNet's
``layer3``) made a :class:`~.trident.TridentStage`, as the paper's (Li et al. 2019, sec. 5: ResNet-101 C4,
trident blocks in conv4, dilations 1, 2, 3) and Detectron2's ``tridentnet_fast_R_50_C4``.

Options: those of ``fasterrcnn_resnet50_c4`` (``backbone``, ``backbone_weights``, ``trainable_layers``,
``frozen_bn``, ``pool``, ``box_head`` (``res5``, or ``2fc``: two fully connected layers of
``representation_size`` on 7x7 RoIs, far cheaper per RoI), ``anchor_sizes``, ``aspect_ratios`` and every
RCNNSettings field) and
``dilations`` (one per branch), ``scale_ranges`` (one ``[low, high]`` of ``sqrt(w h)`` per branch,
the paper's ``[0, 90], [30, 160], [90, inf]`` for 800 px images: scale them with the images),
``trident_blocks`` (the last blocks of conv4 that are trident; ``None``: all) and ``test_branch``
(``None``: all branches at inference; ``1``: TridentNet Fast).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from segdet.models.detection.anchors import C4_ASPECT_RATIOS, C4_SIZES
from segdet.models.detection.rcnn.faster_rcnn import fasterrcnn_resnet50_c4
from segdet.models.detection.rcnn.settings import RCNNSettings
from segdet.models.detection.settings import with_settings
from segdet.models.detection.tridentnet.model import SCALE_RANGES, TridentRCNN
from segdet.models.detection.tridentnet.trident import DILATIONS, TridentStage


def _builder(name: str, default_backbone: str, doc: str):
    @with_settings(RCNNSettings, rpn_pre_nms_top_n_train=12000, rpn_pre_nms_top_n_test=6000)
    def build(
        num_classes: int,
        *,
        backbone: str = default_backbone,
        backbone_weights: object = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
        pool: Literal["align", "pool"] = "align",
        box_head: Literal["res5", "2fc"] = "res5",
        representation_size: int = 1024,
        anchor_sizes: Sequence[Sequence[int]] = C4_SIZES,
        aspect_ratios: Sequence[Sequence[float]] = C4_ASPECT_RATIOS,
        dilations: Sequence[int] = DILATIONS,
        scale_ranges: Sequence[Sequence[float]] = SCALE_RANGES,
        trident_blocks: int | None = None,
        test_branch: int | None = None,
        settings: RCNNSettings,
    ) -> TridentRCNN:
        plain = fasterrcnn_resnet50_c4(
            num_classes,
            backbone=backbone,
            backbone_weights=backbone_weights,
            trainable_layers=trainable_layers,
            frozen_bn=frozen_bn,
            pool=pool,
            box_head=box_head,
            representation_size=representation_size,
            anchor_sizes=anchor_sizes,
            aspect_ratios=aspect_ratios,
            **dataclasses.asdict(settings),
        )
        body = plain.backbone.body
        body.layer3 = TridentStage(body.layer3, dilations, trident_blocks, test_branch)
        ranges = [(float(r[0]), float(r[1])) for r in scale_ranges]
        model = TridentRCNN(
            plain.transform, plain.backbone, plain.rpn, plain.roi_heads, num_classes, scale_ranges=ranges
        )
        model.settings = plain.settings
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc + " Options: see :mod:`segdet.models.detection.tridentnet.builders`."
    return build


tridentnet_resnet50_c4 = _builder(
    "tridentnet_resnet50_c4", "resnet50", "TridentNet, ResNet-50 C4 with trident conv4 (Li et al. 2019)."
)
tridentnet_resnet101_c4 = _builder(
    "tridentnet_resnet101_c4", "resnet101", "TridentNet, ResNet-101 C4 (Li et al. 2019; the paper's)."
)
