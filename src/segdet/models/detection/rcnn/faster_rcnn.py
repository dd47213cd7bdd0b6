"""Faster R-CNN builders (Ren et al., "Faster R-CNN: Towards Real-Time Object Detection with Region
Proposal Networks", NeurIPS 2015), with an FPN (Lin et al., CVPR 2017) or the paper's single-level head.

* ``fasterrcnn_resnet50_fpn`` / ``fasterrcnn_resnet101_fpn``: ResNet + FPN (``P2..P6``), RPN with one
  3x3 conv and 3 anchors per location, RoIAlign 7x7 and the 2-fc head (torchvision's
  ``fasterrcnn_resnet50_fpn``).
* ``fasterrcnn_resnet50_fpn_v2``: BatchNorm in the FPN and heads, an RPN of two 3x3 convs, the
  4conv1fc box head (Li et al. 2021; torchvision's ``fasterrcnn_resnet50_fpn_v2``).
* ``fasterrcnn_mobilenet_v3_large_fpn`` (and ``_320_``): MobileNetV3-Large, an FPN on its last two
  stride-32 taps, 15 anchors per location (sizes 32..512 on every level), RPN score threshold 0.05.
* ``fasterrcnn_resnet50_c4``: the paper's design as in Detectron2's "C4" models: RPN on the single
  stride-16 map ``C4`` (``layer3``) with 9 anchors (3 sizes x 3 ratios), RoIs pooled 14x14 (RoIAlign, or
  RoIPool as in the paper), and ``res5`` (``layer4``, stride 2) + global average pooling as the box
  head.

Every builder takes ``num_classes`` (object classes, no background), the options below and the
:class:`~.rcnn_settings.RCNNSettings` fields (torchvision's keyword names). ``backbone_weights`` loads
ImageNet weights into the backbone (a torchvision weights name, file or URL); then by default 3 stages
train and BatchNorm is frozen, otherwise everything trains (torchvision's rule, see
:func:`~.rcnn_settings.pretrained_defaults`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from segdet.models.backbones import ResNetBackbone
from segdet.models.detection.anchors import C4_ASPECT_RATIOS, C4_SIZES, FPN_SIZES, AnchorGenerator
from segdet.models.detection.backbone_fpn import BackboneWithFPN, mobilenet_body, resnet_body
from segdet.models.detection.rcnn.box_head import ConvFCHead, TwoMLPHead
from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN
from segdet.models.detection.rcnn.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from segdet.models.detection.rcnn.poolers import MultiScaleRoIPool
from segdet.models.detection.rcnn.rpn_head import RPNHead
from segdet.models.detection.rcnn.settings import RCNNSettings, assemble
from segdet.models.detection.settings import pretrained_defaults, with_settings

RESNET_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
FPN_WIDTH = 256
RATIOS = (0.5, 1.0, 2.0)
# RoIAlign of the FPN heads (torchvision / Detectron's FPN models): 7x7 boxes, 14x14 masks, 2x2 samples.
BOX_POOL_SIZE, MASK_POOL_SIZE, SAMPLING_RATIO = 7, 14, 2


def _depth(backbone: str) -> int:
    if backbone not in RESNET_DEPTHS:
        raise ValueError(f"backbone must be one of {sorted(RESNET_DEPTHS)}, got {backbone!r}")
    return RESNET_DEPTHS[backbone]


def pooled_levels(body_strides: Sequence[int]) -> list[str]:
    """The FPN level names (``"0"``, ``"1"``, ...) that RoIs can be pooled from: one per distinct stride.

    The level rule maps a RoI to a stride, so of two levels with the same stride (MobileNetV3's two
    stride-32 taps) only the first is ever used, as in torchvision's ``MultiScaleRoIAlign``.
    """
    names, seen = [], set()
    for i, stride in enumerate(body_strides):
        if stride not in seen:
            names.append(str(i))
            seen.add(stride)
    return names


def fpn_detector(
    num_classes: int,
    settings: RCNNSettings,
    *,
    backbone: BackboneWithFPN,
    anchor_sizes: Sequence[Sequence[int]],
    aspect_ratios: Sequence[Sequence[float]] | None,
    v2: bool,
    mask: bool,
    representation_size: int = 1024,
    mask_channels: int = 256,
) -> GeneralizedRCNN:
    """Faster / Mask R-CNN heads on an FPN backbone: v1 (2fc box head, plain convolutions) or v2
    (BatchNorm, two RPN convs, 4conv1fc box head). ``representation_size`` (the box head's FC width)
    and ``mask_channels`` (the mask head's) are the papers' 1024 and 256 unless made smaller, e.g.
    for tests and tiny data."""
    levels = len(backbone.body.out_features) + 1  # + "pool"
    if len(anchor_sizes) != levels:
        raise ValueError(f"{len(anchor_sizes)} anchor size levels for {levels} feature levels")
    ratios = aspect_ratios if aspect_ratios is not None else (RATIOS,) * levels
    anchors = AnchorGenerator(anchor_sizes, ratios)
    width = backbone.out_channels
    norm = nn.BatchNorm2d if v2 else None
    rpn_head = RPNHead(width, anchors.num_anchors_per_location()[0], conv_depth=2 if v2 else 1)
    names = pooled_levels([backbone.body.strides[n] for n in backbone.body.out_features])
    box_pooler = MultiScaleRoIPool(names, BOX_POOL_SIZE, SAMPLING_RATIO)
    if v2:
        box_head: nn.Module = ConvFCHead(
            (width, BOX_POOL_SIZE, BOX_POOL_SIZE), (256,) * 4, (representation_size,), norm
        )
    else:
        box_head = TwoMLPHead(width * BOX_POOL_SIZE**2, representation_size)
    mask_parts = {}
    if mask:
        mask_parts = {
            "mask_pooler": MultiScaleRoIPool(names, MASK_POOL_SIZE, SAMPLING_RATIO),
            "mask_head": MaskRCNNHeads(width, (mask_channels,) * 4, 1, norm_layer=norm),
            "mask_predictor": MaskRCNNPredictor(mask_channels, mask_channels, num_classes + 1),
        }
    return assemble(
        num_classes,
        settings,
        backbone=backbone,
        anchor_generator=anchors,
        rpn_head=rpn_head,
        box_pooler=box_pooler,
        box_head=box_head,
        representation_size=representation_size,
        **mask_parts,
    )


def resnet_fpn_detector(
    num_classes: int,
    settings: RCNNSettings,
    *,
    backbone: str,
    backbone_weights: object,
    trainable_layers: int | None,
    frozen_bn: bool | None,
    returned_layers: Sequence[int],
    anchor_sizes: Sequence[Sequence[int]] | None,
    aspect_ratios: Sequence[Sequence[float]] | None,
    v2: bool,
    mask: bool,
    fpn_channels: int = FPN_WIDTH,
    representation_size: int = 1024,
    mask_channels: int = 256,
) -> GeneralizedRCNN:
    """ResNet + FPN Faster / Mask R-CNN (shared by the ``*_fpn`` builders)."""
    trainable, frozen = pretrained_defaults(backbone_weights, trainable_layers, frozen_bn, 5)
    if v2 and frozen_bn is None:
        frozen = False  # torchvision's v2 recipe trains with BatchNorm everywhere
    body = resnet_body(
        _depth(backbone),
        returned_layers=returned_layers,
        trainable_layers=trainable,
        frozen_bn=frozen,
        weights=backbone_weights,
    )
    net = BackboneWithFPN(body, fpn_channels, norm_layer=nn.BatchNorm2d if v2 else None)
    levels = len(returned_layers) + 1
    sizes = anchor_sizes if anchor_sizes is not None else FPN_SIZES[len(FPN_SIZES) - levels :]
    return fpn_detector(
        num_classes,
        settings,
        backbone=net,
        anchor_sizes=sizes,
        aspect_ratios=aspect_ratios,
        v2=v2,
        mask=mask,
        representation_size=representation_size,
        mask_channels=mask_channels,
    )


def _resnet_fpn_builder(name: str, default_backbone: str, v2: bool, mask: bool, doc: str):
    @with_settings(RCNNSettings)
    def build(
        num_classes: int,
        *,
        backbone: str = default_backbone,
        backbone_weights: object = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
        returned_layers: Sequence[int] = (1, 2, 3, 4),
        anchor_sizes: Sequence[Sequence[int]] | None = None,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        fpn_channels: int = FPN_WIDTH,
        representation_size: int = 1024,
        mask_channels: int = 256,
        settings: RCNNSettings,
    ) -> GeneralizedRCNN:
        return resnet_fpn_detector(
            num_classes,
            settings,
            backbone=backbone,
            backbone_weights=backbone_weights,
            trainable_layers=trainable_layers,
            frozen_bn=frozen_bn,
            returned_layers=returned_layers,
            anchor_sizes=anchor_sizes,
            aspect_ratios=aspect_ratios,
            v2=v2,
            mask=mask,
            fpn_channels=fpn_channels,
            representation_size=representation_size,
            mask_channels=mask_channels,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc + (
        "\n\n    Options: ``backbone`` (resnet18/34/50/101), ``backbone_weights``,"
        " ``trainable_layers`` (0-5), ``frozen_bn``, ``returned_layers`` (ResNet stages 1-4 feeding"
        " the FPN), ``anchor_sizes`` /"
        " ``aspect_ratios`` per level (default one size 32..512 per level, ratios 0.5, 1, 2), the widths"
        " ``fpn_channels`` (256), ``representation_size`` (1024) and ``mask_channels`` (256), and the"
        " RCNNSettings fields."
    )
    return build


fasterrcnn_resnet50_fpn = _resnet_fpn_builder(
    "fasterrcnn_resnet50_fpn", "resnet50", False, False, "Faster R-CNN, ResNet-50 + FPN (torchvision's v1)."
)
fasterrcnn_resnet101_fpn = _resnet_fpn_builder(
    "fasterrcnn_resnet101_fpn", "resnet101", False, False, "Faster R-CNN, ResNet-101 + FPN."
)
fasterrcnn_resnet50_fpn_v2 = _resnet_fpn_builder(
    "fasterrcnn_resnet50_fpn_v2",
    "resnet50",
    True,
    False,
    "Faster R-CNN v2, ResNet-50 + FPN with BatchNorm, 2-conv RPN head, 4conv1fc box head (Li et al. 2021).",
)


def _mobilenet_builder(name: str, doc: str, **defaults: object):
    @with_settings(RCNNSettings, **defaults)
    def build(
        num_classes: int,
        *,
        backbone_weights: object = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
        returned_layers: Sequence[int] = (4, 5),
        anchor_sizes: Sequence[Sequence[int]] | None = None,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        settings: RCNNSettings,
    ) -> GeneralizedRCNN:
        trainable, frozen = pretrained_defaults(backbone_weights, trainable_layers, frozen_bn, 6)
        body = mobilenet_body(
            returned_layers=returned_layers,
            trainable_layers=trainable,
            frozen_bn=frozen,
            weights=backbone_weights,
        )
        net = BackboneWithFPN(body, FPN_WIDTH)
        levels = len(returned_layers) + 1
        sizes = anchor_sizes if anchor_sizes is not None else ((32, 64, 128, 256, 512),) * levels
        return fpn_detector(
            num_classes,
            settings,
            backbone=net,
            anchor_sizes=sizes,
            aspect_ratios=aspect_ratios,
            v2=False,
            mask=False,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


fasterrcnn_mobilenet_v3_large_fpn = _mobilenet_builder(
    "fasterrcnn_mobilenet_v3_large_fpn",
    "Faster R-CNN, MobileNetV3-Large + FPN (torchvision's); RPN score threshold 0.05.",
    rpn_score_thresh=0.05,
)
fasterrcnn_mobilenet_v3_large_320_fpn = _mobilenet_builder(
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "Faster R-CNN, MobileNetV3-Large + FPN for low resolution (images resized to 320 px, 150 proposals).",
    min_size=320,
    max_size=640,
    rpn_pre_nms_top_n_test=150,
    rpn_post_nms_top_n_test=150,
    rpn_score_thresh=0.05,
)


# ------------------------------------------------------------------------------------------------ C4
class C4Backbone(nn.Module):
    """A ResNet cut after ``layer3`` (stride 16): ``{"0": C4}``. Its ``layer4`` goes to the box head."""

    def __init__(self, body: ResNetBackbone) -> None:
        super().__init__()
        body.out_features = ("c4",)
        self.body = body
        self.out_channels = body.out_channels["c4"]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"0": self.body(x)["c4"]}


class Res5Head(nn.Module):
    """The C4 box head: ``res5`` (ResNet's ``layer4``, whose first block has stride 2) on the 14x14 RoI
    features, then the mean over the 7x7 result (He et al. 2016, sec. "Object detection"; Detectron2's
    ``Res5ROIHeads``)."""

    def __init__(self, layer4: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.layer4 = layer4
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(x).mean(dim=(2, 3))


def resnet_c4(
    backbone: str, backbone_weights: object, trainable_layers: int | None, frozen_bn: bool | None
) -> tuple[C4Backbone, nn.Module, int]:
    """A ResNet cut after ``layer3``: ``(C4 backbone, layer4, layer4's output channels)``. ``layer4``
    leaves the backbone (the C4 heads run it on pooled RoIs, or drop it)."""
    trainable, frozen = pretrained_defaults(backbone_weights, trainable_layers, frozen_bn, 5)
    body = resnet_body(
        _depth(backbone),
        returned_layers=(3,),
        trainable_layers=trainable,
        frozen_bn=frozen,
        weights=backbone_weights,
    )
    layer4, res5_channels = body.layer4, body.out_channels["c5"]
    del body.layer4
    for table in (body.stage_layout, body.out_channels, body.strides):
        table.pop("c5")
    return C4Backbone(body), layer4, res5_channels


@with_settings(RCNNSettings, rpn_pre_nms_top_n_train=12000, rpn_pre_nms_top_n_test=6000)
def fasterrcnn_resnet50_c4(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    backbone_weights: object = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    pool: Literal["align", "pool"] = "align",
    box_head: Literal["res5", "2fc"] = "res5",
    representation_size: int = 1024,
    anchor_sizes: Sequence[Sequence[int]] = C4_SIZES,
    aspect_ratios: Sequence[Sequence[float]] = C4_ASPECT_RATIOS,
    settings: RCNNSettings,
) -> GeneralizedRCNN:
    """Faster R-CNN with the paper's single-level head (see the module docstring): RPN on ``C4`` with 9
    anchors, RoIs pooled 14x14 from ``C4`` by RoIAlign (``pool="align"``, Detectron2's half-pixel-aligned
    ROIAlignV2 with adaptive sampling) or RoIPool (``pool="pool"``, the paper's), ``res5`` + average
    pooling as the box head. 12000 / 6000 anchors enter the RPN's NMS in training / inference
    (Detectron2's C4 settings; the paper's 12000 / 6000 too).

    ``box_head="2fc"``: the VGG-16 design of the Faster R-CNN (and Fast R-CNN) papers instead: RoIs
    pooled 7x7 from ``C4``, then ``fc6``, ``fc7`` of ``representation_size`` units (the papers' 4096;
    :class:`~.box_head.TwoMLPHead`); ``layer4`` is dropped. The same backbone and head as
    :func:`~.fast_rcnn.fastrcnn_resnet50_c4`, with the RPN in place of selective search."""
    net, layer4, res5_channels = resnet_c4(backbone, backbone_weights, trainable_layers, frozen_bn)
    anchors = AnchorGenerator(anchor_sizes, aspect_ratios)
    if pool not in ("align", "pool"):
        raise ValueError(f"pool must be 'align' or 'pool', got {pool!r}")
    if box_head not in ("res5", "2fc"):
        raise ValueError(f"box_head must be 'res5' or '2fc', got {box_head!r}")
    if box_head == "2fc":
        pooler = MultiScaleRoIPool(["0"], BOX_POOL_SIZE, 0, mode=pool, aligned=pool == "align")
        head: nn.Module = TwoMLPHead(net.out_channels * BOX_POOL_SIZE**2, representation_size)
        width = representation_size
    else:
        pooler = MultiScaleRoIPool(["0"], 14, 0, mode=pool, aligned=pool == "align")
        head, width = Res5Head(layer4, res5_channels), res5_channels
    return assemble(
        num_classes,
        settings,
        backbone=net,
        anchor_generator=anchors,
        rpn_head=RPNHead(net.out_channels, anchors.num_anchors_per_location()[0]),
        box_pooler=pooler,
        box_head=head,
        representation_size=width,
    )
