"""Backbones: declared feature names/strides/channels, equality with torchvision, frozen BN/stages."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from segdet.models.backbones import (
    BACKBONES,
    FEATURE_NAMES,
    FrozenBatchNorm2d,
    build_backbone,
    convert_frozen_batchnorm,
)

# One EfficientNet stands for the eight (same code, scaled widths and depths); B1 ... B7 are checked by
# test_efficientnet_stages_and_torchvision_weights.
DECLARED = [n for n in BACKBONES if not n.startswith("efficientnet_") or n == "efficientnet_b0"]


@pytest.mark.parametrize("name", DECLARED)
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_features_match_declaration(name, output_stride):
    """Every feature has the declared channels and size ceil(input / stride), for even and odd inputs;
    strides are 2, 4, 8, 16, 32 capped at the output stride."""
    backbone = build_backbone(name, output_stride=output_stride).eval()
    assert tuple(backbone.out_channels) == FEATURE_NAMES
    assert backbone.strides == {n: min(2 ** (i + 1), output_stride) for i, n in enumerate(FEATURE_NAMES)}
    assert backbone.output_stride == output_stride
    for h, w in [(64, 64), (67, 75)]:
        with torch.no_grad():
            features = backbone(torch.randn(1, 3, h, w))
        assert list(features) == list(FEATURE_NAMES)
        for key, f in features.items():
            s = backbone.strides[key]
            assert f.shape == (1, backbone.out_channels[key], math.ceil(h / s), math.ceil(w / s)), key


def _torchvision_resnet_features(net: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    c1 = net.relu(net.bn1(net.conv1(x)))
    c2 = net.layer1(net.maxpool(c1))
    c3 = net.layer2(c2)
    c4 = net.layer3(c3)
    return [c1, c2, c3, c4, net.layer4(c4)]


@pytest.mark.parametrize(
    ("depth", "output_stride", "dilation"),
    [(18, 32, None), (50, 32, None), (50, 16, [False, False, True]), (50, 8, [False, True, True])],
)
def test_resnet_equals_torchvision(depth, output_stride, dilation):
    """With torchvision's weights (state dict copied, its fc dropped by ignored_weight_prefixes), our
    c1..c5 equal torchvision's classifier's intermediate outputs to 1e-6, including its own
    replace_stride_with_dilation for output strides 16 and 8 (same dilation convention)."""
    torch.manual_seed(0)
    ref = getattr(torchvision.models, f"resnet{depth}")(replace_stride_with_dilation=dilation).eval()
    ours = build_backbone(f"resnet{depth}", output_stride=output_stride).eval()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 35, 41)
    with torch.no_grad():
        expected = _torchvision_resnet_features(ref, x)
        got = ours(x)
    for (key, value), want in zip(got.items(), expected, strict=True):
        torch.testing.assert_close(value, want, rtol=0, atol=1e-6, msg=key)


def test_vgg_and_mobilenet_equal_torchvision():
    """VGG-16's c5 equals torchvision's vgg16.features on an even input (ceil-mode pooling only differs
    on odd sizes); MobileNetV3-Large at output stride 16 equals torchvision's dilated=True features."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    vgg_ref = torchvision.models.vgg16().eval()
    vgg = build_backbone("vgg16").eval()
    vgg.load_state_dict({k: v for k, v in vgg_ref.state_dict().items() if k.startswith("features.")})
    mob_ref = torchvision.models.mobilenet_v3_large(dilated=True).eval()
    mob = build_backbone("mobilenet_v3_large", output_stride=16).eval()
    mob.load_state_dict({k: v for k, v in mob_ref.state_dict().items() if k.startswith("features.")})
    with torch.no_grad():
        torch.testing.assert_close(vgg(x)["c5"], vgg_ref.features(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(mob(x)["c5"], mob_ref.features(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("output_stride", "dilated"), [(32, False), (16, True)])
def test_mobilenet_v3_small_loads_torchvision_weights(tmp_path, output_stride, dilated):
    """MobileNetV3-Small: stages end before each downsampling block (c1..c5 = 16, 16, 24, 48, 576
    channels at strides 2..32); torchvision's whole mobilenet_v3_small state dict (random init, saved as
    a file) loads through ``weights=`` with strict names (its classifier dropped by
    ignored_weight_prefixes), and c5 then equals torchvision's features to 1e-6 (at output stride 16,
    its dilated=True)."""
    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v3_small(dilated=dilated).eval()
    torch.save(ref.state_dict(), tmp_path / "small.pth")
    ours = build_backbone("mobilenet_v3_small", output_stride=output_stride, weights=tmp_path / "small.pth")
    assert ours.out_channels == {"c1": 16, "c2": 16, "c3": 24, "c4": 48, "c5": 576}
    assert ours.stage_layout["c1"] == ("features.0",) and ours.stage_layout["c5"][-1] == "features.12"
    assert set(ours.state_dict()) == {k for k in ref.state_dict() if k.startswith("features.")}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x)["c5"], ref.features(x), rtol=0, atol=1e-6)


# timm's features_only widths (its feature_info channels) for EfficientNet-B0 ... B7
EFFICIENTNET_CHANNELS = {
    "b0": (16, 24, 40, 112, 320),
    "b1": (16, 24, 40, 112, 320),
    "b2": (16, 24, 48, 120, 352),
    "b3": (24, 32, 48, 136, 384),
    "b4": (24, 32, 56, 160, 448),
    "b5": (24, 40, 64, 176, 512),
    "b6": (32, 40, 72, 200, 576),
    "b7": (32, 48, 80, 224, 640),
}


@pytest.mark.parametrize("arch", ["b0", "b5"])
def test_efficientnet_stages_and_torchvision_weights(tmp_path, arch):
    """EfficientNet: the widths of c1..c5 are timm's features_only ones for all eight (no forward); for
    B0 and B5 (BatchNorm eps 1e-3), torchvision's whole state dict (random init, saved as a file) loads
    through ``weights=`` with strict names (head convolution and classifier dropped by
    ignored_weight_prefixes), and c1..c5 equal torchvision's ``features[:2]``, ``[:3]``, ``[:4]``,
    ``[:6]``, ``[:8]`` outputs to 1e-5 on an odd-sized input."""
    if arch == "b0":
        with torch.device("meta"):  # the widths only: no memory, no initialisation
            for k, channels in EFFICIENTNET_CHANNELS.items():
                widths = build_backbone(f"efficientnet_{k}").out_channels
                assert tuple(widths.values()) == channels, k
    torch.manual_seed(0)
    ref = getattr(torchvision.models, f"efficientnet_{arch}")().eval()
    torch.save(ref.state_dict(), tmp_path / "effnet.pth")
    ours = build_backbone(f"efficientnet_{arch}", weights=tmp_path / "effnet.pth").eval()
    assert ours.stage_layout["c5"] == ("features.6", "features.7")
    head = len(ref.features) - 1
    assert set(ours.state_dict()) == {
        k for k in ref.state_dict() if k.startswith("features.") and not k.startswith(f"features.{head}.")
    }
    x = torch.randn(1, 3, 45, 53)
    with torch.no_grad():
        got = ours(x)
        for name, end in zip(FEATURE_NAMES, (2, 3, 4, 6, 8), strict=True):
            torch.testing.assert_close(got[name], ref.features[:end](x), rtol=0, atol=1e-5, msg=name)


def test_frozen_batchnorm_equals_eval_batchnorm():
    """FrozenBatchNorm2d built by convert_frozen_batchnorm equals nn.BatchNorm2d in eval mode (1e-6) and
    loads a BatchNorm2d state dict (num_batches_tracked dropped)."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8, eps=1e-3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3)
    bn.eval()
    frozen = convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    x = torch.randn(3, 8, 5, 7)
    torch.testing.assert_close(frozen(x), bn(x), rtol=0, atol=1e-6)
    again = FrozenBatchNorm2d(8, eps=1e-3)
    again.load_state_dict(bn.state_dict())
    torch.testing.assert_close(again(x), bn(x), rtol=0, atol=1e-6)
    assert not list(frozen.parameters())


def test_freeze_stages_and_frozen_bn():
    """freeze_stages(2) freezes the stem and layer1 (requires_grad False, BN frozen) and leaves the rest
    trainable; frozen_bn=True leaves no BatchNorm2d; outputs are unchanged in eval mode."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = backbone(x)["c5"]
    backbone.freeze_stages(2)
    for name, p in backbone.named_parameters():
        frozen = name.startswith(("conv1", "bn1", "layer1"))
        assert p.requires_grad is not frozen, name
    assert isinstance(backbone.bn1, FrozenBatchNorm2d)
    assert isinstance(backbone.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(backbone.layer2[0].bn1, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["c5"], before, rtol=0, atol=1e-5)
    all_frozen = build_backbone("mobilenet_v3_large", frozen_bn=True, frozen_stages=5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in all_frozen.modules())
    assert not any(p.requires_grad for p in all_frozen.parameters())


def test_out_features_stops_early():
    """Restricting out_features returns only those maps (used by models to skip unused stages)."""
    backbone = build_backbone("resnet18")
    backbone.out_features = ("c2", "c3")
    assert list(backbone(torch.randn(1, 3, 32, 32))) == ["c2", "c3"]
