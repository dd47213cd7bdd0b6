"""torchvision -> segdet conversion: key mapping (current and legacy names, MobileNetV3's body),
loading torchvision checkpoints from a file, and the settings and flags from_torchvision carries over."""

from __future__ import annotations

import re

import pytest
import torch
from torchvision.models import detection as tv_detection
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from segdet.errors import DataError, SegdetError
from segdet.models import build, from_torchvision, load_torchvision_weights
from segdet.models.detection.rcnn.convert import convert_torchvision_state_dict


def _tv_maskrcnn_resnet18(num_classes: int = 5, **kwargs) -> tv_detection.MaskRCNN:
    """torchvision's Mask R-CNN design on a ResNet-18 FPN (FrozenBatchNorm2d, 3 trainable layers: what
    a pretrained-backbone torchvision model looks like), small and fast."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    return tv_detection.MaskRCNN(backbone, num_classes=num_classes, **kwargs).eval()


def _to_legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key names torchvision < 0.13 wrote (and the released COCO files carry)."""
    legacy = {}
    for key, value in state.items():
        key = re.sub(r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv.", key)
        key = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.0\.", r"\1.", key)
        key = re.sub(
            r"^roi_heads\.mask_head\.(\d+)\.0\.",
            lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.",
            key,
        )
        legacy[key] = value
    return legacy


def test_legacy_state_dict_converts_to_our_keys():
    """A legacy-named state dict (synthesised from torchvision's current one: rpn.head.conv.weight,
    backbone.fpn.inner_blocks.0.weight, roi_heads.mask_head.mask_fcn1.weight ...) converts to exactly
    our model's keys with the same tensors, as the current names do."""
    tv = _tv_maskrcnn_resnet18()
    legacy = _to_legacy(tv.state_dict())
    assert "rpn.head.conv.weight" in legacy and "backbone.fpn.inner_blocks.0.weight" in legacy
    assert "roi_heads.mask_head.mask_fcn1.weight" in legacy and "roi_heads.mask_head.mask_fcn4.bias" in legacy
    ours = from_torchvision(tv).state_dict()
    for source in (legacy, tv.state_dict()):
        converted = convert_torchvision_state_dict(source, "maskrcnn_resnet50_fpn")
        assert set(converted) == set(ours)
        for key, value in converted.items():
            assert torch.equal(value, ours[key]), key


def test_mobilenet_body_keys_map_to_features():
    """MobileNetV3's backbone.body.{i}.* (torchvision) are our backbone.body.features.{i}.*; the
    converted dict has exactly the keys and shapes of our built model."""
    torch.manual_seed(0)
    tv = tv_detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=7)
    converted = convert_torchvision_state_dict(
        _to_legacy(tv.state_dict()), "fasterrcnn_mobilenet_v3_large_fpn"
    )
    ours = build("fasterrcnn_mobilenet_v3_large_fpn", num_classes=6).state_dict()
    assert "backbone.body.features.16.0.weight" in converted
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}


def test_load_torchvision_weights_from_file(tmp_path):
    """A legacy-named torchvision checkpoint saved in tmp loads into a model built by name: the same
    tensors as from_torchvision gives; the released v1 COCO file name sets the backbone BatchNorm eps
    to 0 (torchvision's overwrite_eps); a wrong num_classes is a one-line DataError."""
    tv = _tv_maskrcnn_resnet18()
    reference = from_torchvision(tv).state_dict()
    for file_name, eps in (("mine.pth", 1e-5), ("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", 0.0)):
        path = tmp_path / file_name
        torch.save(_to_legacy(tv.state_dict()), path)
        model = build("maskrcnn_resnet50_fpn", num_classes=4, backbone="resnet18")
        load_torchvision_weights(model, path)
        state = model.state_dict()
        for key, value in reference.items():
            assert torch.equal(state[key], value), key
        norms = [m for n, m in model.named_modules() if n.startswith("backbone.body") and hasattr(m, "eps")]
        assert norms and all(m.eps == eps for m in norms)
    with pytest.raises(DataError, match="keys of another shape"):
        load_torchvision_weights(build("maskrcnn_resnet50_fpn", num_classes=9, backbone="resnet18"), path)


def test_from_torchvision_carries_settings_flags_and_eps():
    """Inference / training settings, trainable parameters (requires_grad), BatchNorm kind and eps and
    train/eval mode are torchvision's; a non-R-CNN torchvision model is refused with a SegdetError."""
    tv = _tv_maskrcnn_resnet18(
        min_size=(100, 120),
        max_size=200,
        box_nms_thresh=0.3,
        rpn_post_nms_top_n_test=77,
        box_detections_per_img=17,
        rpn_score_thresh=0.1,
        bbox_reg_weights=(5.0, 5, 2, 2),
    )
    for m in tv.modules():
        if type(m).__name__ == "FrozenBatchNorm2d":
            m.eps = 0.0
    ours = from_torchvision(tv)
    s = ours.settings
    assert (s.min_size, s.max_size, s.box_nms_thresh, s.rpn_post_nms_top_n_test) == ((100, 120), 200, 0.3, 77)
    assert (s.box_detections_per_img, s.rpn_score_thresh, s.bbox_reg_weights) == (
        17,
        0.1,
        (5.0, 5.0, 2.0, 2.0),
    )
    assert ours.transform.min_size == (100, 120) and ours.roi_heads.nms_thresh == 0.3
    assert ours.num_classes == 4 and not ours.training
    grads = {k: p.requires_grad for k, p in ours.named_parameters()}
    assert grads == {k: p.requires_grad for k, p in tv.named_parameters()}
    assert not grads["backbone.body.layer1.0.conv1.weight"] and grads["backbone.body.layer2.0.conv1.weight"]
    frozen = [m for m in ours.backbone.body.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert frozen and all(m.eps == 0.0 for m in frozen)
    with pytest.raises(SegdetError):
        from_torchvision(torch.nn.Conv2d(3, 3, 1))
