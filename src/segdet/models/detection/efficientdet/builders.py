"""EfficientDet-D0 ... D7 (Tan, Pang, Le, "EfficientDet: Scalable and Efficient Object Detection", CVPR
2020): an EfficientNet backbone, a BiFPN and the class / box networks, all scaled together.

Composition (nothing of its own but the head and the anchors): EfficientNet-B``k`` ``C3 .. C5``
(:class:`~segdet.models.backbones.EfficientNetBackbone`) -> :class:`~segdet.models.necks.BiFPN` (``P3 ..
P7``, ``W`` channels, ``D_bifpn`` layers) -> :class:`~.head.EfficientDetHead` (``D_class`` separable
layers) on its anchors (:mod:`.anchors`) -> :class:`~segdet.models.detection.retinanet.RetinaNet`'s focal
loss, decoding and NMS.

**Compound scaling** (paper sec. 4.2, table 1; ``φ`` = 0 ... 7): ``W = 64 · 1.35^φ`` (rounded as the
paper's table), ``D_bifpn = 3 + φ``, ``D_class = 3 + ⌊φ / 3⌋``, input ``512 + 128 φ``:

====  ==========  ====  =======  =======  =====
name  backbone    W     D_bifpn  D_class  input
====  ==========  ====  =======  =======  =====
D0    B0          64    3        3        512
D1    B1          88    4        3        640
D2    B2          112   5        3        768
D3    B3          160   6        4        896
D4    B4          224   7        4        1024
D5    B5          288   7        4        1280
D6    B6          384   8        5        1280
D7    B6          384   8        5        1536
====  ==========  ====  =======  =======  =====

**Anchors**: the paper's code's (:mod:`.anchors`): per level 3 octave scales of ``4 x stride`` (32 px on
P3 ... 512 on P7) x the aspect pairs ``(1, 1), (1.4, 0.7), (0.7, 1.4)``, centred on the cells.

**Loss** (the paper's code, google/automl's ``detection_loss``, as rwightman's ``effdet``
``DetectionLoss``): the focal loss with ``α = 0.25``, ``γ = 1.5`` (not 2) and the Huber loss ``h_δ`` of
the deltas, ``δ = 0.1``, weighted by 50, both summed over the batch and normalised by its
``P = Σ_i F_i + 1`` (``num_positives_sum``; ``F_i`` the foreground anchors of image ``i``)::

    L_cls = Σ_{i, a, k} FL(σ(x_iak), y_iak) / P          L_box = 50 Σ_{i, a fg, c} h_δ(t_iac - t*_iac) / (4 P)

(``loss_normalizer="batch"``, not RetinaNet's per-image average). Since ``h_δ(x) = δ ·
smoothL1_β=δ(x)``, ``L_box`` is ``50 δ / 4 = 1.25`` times RetinaNet's smooth-L1 loss with ``β = 0.1``
summed over the coordinates and divided by the same ``P``: ``box_loss="smooth_l1"``,
``smooth_l1_beta=0.1``, ``box_loss_weight=1.25``. Matching (its ``AnchorLabeler``): an anchor of IoU
``>= 0.5`` with an object is foreground, every other one background (``bg_iou_thresh=0.5``: no ignored
0.4-0.5 band, whose anchors RetinaNet's 0.4 leaves out of the loss). Equal to effdet's losses (tested,
1e-5) but for two corner cases: an object whose best IoU is below 0.5 and shared by several anchors
keeps all of them here (effdet forces one), and effdet drops a box-target coordinate that is exactly 0
(an object centred on an anchor, or of its width or height).

**BatchNorm** in the BiFPN and the head: ``eps = 0.001`` (the paper's code, TensorFlow's default;
the EfficientNet keeps torchvision's); momentum PyTorch's 0.1 rather than the paper's 0.01 (TensorFlow's
0.99), which suits its 300-epoch runs but leaves short runs' running statistics behind the weights.

**Input**: the longer side resized to the input size, padded to a multiple of 128 (the P7 stride: every
level is then exactly half the one before; the paper pads to the square).

**Inference** (rwightman's ``effdet``, after the paper's code): the 5000 best (anchor, class) pairs of
all levels together (``topk_per="image"``, ``topk_candidates=5000``) with no score threshold
(``score_thresh=0``), decoded, clipped, hard NMS 0.5 per class, at most 100 detections an image (the
paper's code defaults to Gaussian soft-NMS instead).

Every builder takes ``num_classes`` (object classes, no background), the options below and the
:class:`~segdet.models.detection.retinanet.RetinaNetSettings` fields. ``backbone_weights`` loads ImageNet
weights (``"EfficientNet_B0_Weights.IMAGENET1K_V1"``, a file or a URL) into the backbone; then by default
3 stages train and BatchNorm is frozen (torchvision's rule for small detection batches), otherwise
everything trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from torch import nn

from segdet.models.detection.backbone_fpn import BackboneWithFPN, efficientnet_body
from segdet.models.detection.efficientdet.anchors import ASPECTS, efficientdet_anchors
from segdet.models.detection.efficientdet.head import EfficientDetHead
from segdet.models.detection.retinanet.head import PRIOR_PROBABILITY
from segdet.models.detection.retinanet.model import RetinaNet, RetinaNetSettings
from segdet.models.detection.settings import check_num_classes, pretrained_defaults, with_settings
from segdet.models.necks import BiFPN


@dataclass(frozen=True)
class EfficientDetScale:
    """One row of the module docstring's table."""

    backbone: str
    width: int
    bifpn_layers: int
    head_depth: int
    image_size: int


SCALES: dict[str, EfficientDetScale] = {
    "d0": EfficientDetScale("efficientnet_b0", 64, 3, 3, 512),
    "d1": EfficientDetScale("efficientnet_b1", 88, 4, 3, 640),
    "d2": EfficientDetScale("efficientnet_b2", 112, 5, 3, 768),
    "d3": EfficientDetScale("efficientnet_b3", 160, 6, 4, 896),
    "d4": EfficientDetScale("efficientnet_b4", 224, 7, 4, 1024),
    "d5": EfficientDetScale("efficientnet_b5", 288, 7, 4, 1280),
    "d6": EfficientDetScale("efficientnet_b6", 384, 8, 5, 1280),
    "d7": EfficientDetScale("efficientnet_b6", 384, 8, 5, 1536),
}
EFFICIENTNETS = tuple(f"efficientnet_b{k}" for k in range(8))
NORM = partial(nn.BatchNorm2d, eps=1e-3)  # the BiFPN's and the head's (module docstring)


def _builder(phi: str):
    scale = SCALES[phi]

    @with_settings(
        RetinaNetSettings,
        min_size=scale.image_size,
        max_size=scale.image_size,
        size_divisible=128,
        focal_gamma=1.5,
        box_loss="smooth_l1",
        smooth_l1_beta=0.1,
        box_loss_weight=1.25,
        loss_normalizer="batch",
        bg_iou_thresh=0.5,
        detections_per_img=100,
        topk_per="image",
        topk_candidates=5000,
        score_thresh=0.0,
    )
    def build(
        num_classes: int,
        *,
        backbone: str = scale.backbone,
        backbone_weights: object = None,
        trainable_layers: int | None = None,
        frozen_bn: bool | None = None,
        stochastic_depth_prob: float = 0.2,
        width: int = scale.width,
        bifpn_layers: int = scale.bifpn_layers,
        head_depth: int = scale.head_depth,
        anchor_scale: float = 4.0,
        aspects: Sequence[Sequence[float]] = ASPECTS,
        prior_probability: float = PRIOR_PROBABILITY,
        settings: RetinaNetSettings,
    ) -> RetinaNet:
        check_num_classes(num_classes)
        if backbone not in EFFICIENTNETS:
            raise ValueError(f"backbone must be one of {EFFICIENTNETS}, got {backbone!r}")
        trainable, frozen = pretrained_defaults(backbone_weights, trainable_layers, frozen_bn, 5)
        body = efficientnet_body(
            backbone.removeprefix("efficientnet_"),
            trainable_layers=trainable,
            frozen_bn=frozen,
            weights=backbone_weights,
            stochastic_depth_prob=stochastic_depth_prob,
        )
        in_channels = [body.out_channels[name] for name in body.out_features]
        net = BackboneWithFPN(body, width, neck=BiFPN(in_channels, width, bifpn_layers, norm_layer=NORM))
        anchors = efficientdet_anchors(anchor_scale, aspects=[(float(x), float(y)) for x, y in aspects])
        num_anchors = anchors.num_anchors_per_location()[0]
        head = EfficientDetHead(width, num_anchors, num_classes, head_depth, 5, prior_probability, NORM)
        return RetinaNet(settings.transform(), net, anchors, head, num_classes, settings)

    name = f"efficientdet_{phi}"
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"EfficientDet-{phi.upper()}: {scale.backbone}, BiFPN {scale.width} x {scale.bifpn_layers}, head"
        f" depth {scale.head_depth}, {scale.image_size} px (module docstring; Tan et al. 2020).\n\n"
        "    Options: ``backbone`` (efficientnet_b0..b7), ``backbone_weights``, ``trainable_layers`` (0-5),"
        " ``frozen_bn``, ``stochastic_depth_prob`` (0.2), ``width``, ``bifpn_layers``, ``head_depth`` (the"
        " scale's), ``anchor_scale`` (4) and ``aspects`` (``(w, h)`` pairs) of the anchors,"
        " ``prior_probability`` (0.01), and the RetinaNetSettings fields."
    )
    return build


efficientdet_d0 = _builder("d0")
efficientdet_d1 = _builder("d1")
efficientdet_d2 = _builder("d2")
efficientdet_d3 = _builder("d3")
efficientdet_d4 = _builder("d4")
efficientdet_d5 = _builder("d5")
efficientdet_d6 = _builder("d6")
efficientdet_d7 = _builder("d7")
