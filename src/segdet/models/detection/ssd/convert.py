"""torchvision's SSD300 / SSDLite -> ours: the same weights and settings (the SSD part of
:func:`segdet.models.detection.convert.from_torchvision` and ``load_torchvision_weights``).

The state-dict keys are torchvision's (:mod:`.vgg`, :mod:`.mobilenet`, :mod:`.head`), and so is the
label convention inside the model (class 0 = background, ``K + 1`` scores). torchvision's fixed
``size`` is ``(width, height)``; ours ``(height, width)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from segdet.errors import SegdetError
from segdet.models.detection.convert import check_and_load, copy_flags, load_converted, norms
from segdet.models.detection.ssd import builders
from segdet.models.detection.ssd.default_boxes import DefaultBoxGenerator
from segdet.models.detection.ssd.model import SSD


def load_ssd_weights(
    model: SSD, state: Mapping[str, Tensor], source: str, bn_eps: float | None = None
) -> None:
    """Load a torchvision SSD / SSDLite state dict into ``model`` (see
    :func:`segdet.models.detection.convert.load_torchvision_weights`)."""
    check_and_load(model, dict(state), source)
    if bn_eps is not None:
        for norm in norms(model.backbone).values():
            norm.eps = bn_eps


def _settings(tv_model: nn.Module) -> dict[str, object]:
    t = tv_model.transform
    if t.fixed_size is None or int(t.size_divisible) != 1:
        raise SegdetError("only SSDs with a fixed-size transform (size_divisible 1) are converted")
    width, height = t.fixed_size
    return {
        "size": (int(height), int(width)),
        "image_mean": tuple(float(m) for m in t.image_mean),
        "image_std": tuple(float(s) for s in t.image_std),
        "score_thresh": tv_model.score_thresh,
        "nms_thresh": tv_model.nms_thresh,
        "detections_per_img": tv_model.detections_per_img,
        "topk_candidates": tv_model.topk_candidates,
        "iou_thresh": tv_model.proposal_matcher.high_threshold,
        "positive_fraction": 1.0 / (1.0 + tv_model.neg_to_pos_ratio),
    }


def ssd_from_torchvision(tv_model: nn.Module) -> SSD:
    """Our SSD equal to torchvision's ``tv_model`` (``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3_large``):
    architecture, weights, BatchNorm eps, default boxes, settings, trainable parameters, mode and
    device. torchvision's unexposed "highres" VGG layout is refused (it is not the paper's SSD512)."""
    from torchvision.models.detection.ssd import SSDFeatureExtractorVGG
    from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet

    num_classes = tv_model.head.classification_head.num_columns - 1
    settings = _settings(tv_model)
    backbone = tv_model.backbone
    if isinstance(backbone, SSDFeatureExtractorVGG):
        if len(backbone.extra) != 5:
            # torchvision's "highres" layout is not the SSD512 of the paper (see .vgg): refuse it.
            raise SegdetError("only torchvision's SSD300 VGG-16 layout is converted")
        ours = builders.ssd300_vgg16(num_classes, trainable_layers=5, **settings)
    elif isinstance(backbone, SSDLiteFeatureExtractorMobileNet):
        ours = builders.ssdlite320_mobilenet_v3_large(
            num_classes,
            reduced_tail=backbone.features[1][-1].out_channels == 480,
            width_mult=backbone.extra[0][-1].out_channels / 512,
            **settings,
        )
    else:
        raise SegdetError(f"unsupported torchvision SSD backbone {type(backbone).__name__}")
    boxes = tv_model.anchor_generator
    ours.anchor_generator = DefaultBoxGenerator(
        boxes.aspect_ratios, scales=boxes.scales, steps=boxes.steps, clip=boxes.clip
    )
    load_converted(ours, dict(tv_model.state_dict()), "SSD")
    return copy_flags(ours, tv_model, lambda key: key)
