"""segdet.engine.inference.prepare_for_inference: BatchNorm folding keeps the outputs (reference: the
same model unfused, eval mode; tolerance 1e-4 relative to the logits' scale) and bf16 autocast is opt-in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segdet.engine.inference import Autocast, prepare_for_inference
from segdet.models import build


def _randomise_norms(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("unet_backbone", {"backbone": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]}),
        ("deeplabv3plus", {"backbone": "resnet18", "aspp_channels": 16, "decoder_channels": 16}),
    ],
)
def test_fused_segmentation_model_gives_the_same_logits(name, kwargs):
    torch.manual_seed(0)
    model = build(name, num_classes=3, **kwargs).eval()
    _randomise_norms(model, 1)
    x = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        expected = model(x)
        fused = prepare_for_inference(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        got = fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_bf16_is_opt_in_and_close():
    torch.manual_seed(0)
    model = build("unet_backbone", num_classes=3, backbone="resnet18", decoder_channels=[32, 16, 16, 8, 8])
    x = torch.randn(1, 3, 64, 64)
    plain = prepare_for_inference(model)
    assert not isinstance(plain, Autocast)
    with torch.no_grad():
        reference = plain(x)
        low = prepare_for_inference(model, fuse=False, precision="bf16")
        assert isinstance(low, Autocast)
        out = low(x)
    assert out.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: the logits agree to a few per cent of their range.
    assert float((out.float() - reference).abs().max()) < 0.05 * float(reference.abs().max())
    with pytest.raises(ValueError, match="precision"):
        prepare_for_inference(model, precision="int8")


def test_channels_last_is_chosen_unless_depthwise_convolutions_are_dilated_5_or_more():
    """The default layout (segdet.models.memory_format, measured on 2-core AVX2 and AVX-512 hosts):
    channels-last for dense and depthwise convolutions; on CPUs with oneDNN's slow dilated depthwise
    path (all but AVX-512), NCHW when a depthwise one is dilated 5 or more (DeepLabv3+'s separable ASPP at
    rates 6, 12, 18); depthwise detectors run channels-last, not on NNPACK."""
    from segdet.models.memory_format import slow_dilated_depthwise
    from segdet.ops.nnpack_conv import NNPACKConv2d

    def is_channels_last(conv: nn.Conv2d) -> bool:
        return conv.weight.is_contiguous(memory_format=torch.channels_last)

    dense = prepare_for_inference(build("unet_backbone", num_classes=2, backbone="resnet18"))
    assert is_channels_last(dense.classifier)
    depthwise = prepare_for_inference(build("unet_backbone", num_classes=2, backbone="mobilenet_v3_small"))
    assert is_channels_last(depthwise.classifier)
    separable = build(
        "deeplabv3plus",
        num_classes=2,
        backbone="resnet18",
        aspp_channels=8,
        decoder_channels=8,
        separable=True,
    )
    prepare_for_inference(separable)
    assert is_channels_last(separable.backbone.conv1) is not slow_dilated_depthwise()
    detector = prepare_for_inference(build("efficientdet_d0", num_classes=2, width=16, bifpn_layers=1))
    convs = [m for m in detector.modules() if isinstance(m, nn.Conv2d)]
    assert all(is_channels_last(m) for m in convs if m.weight.shape[-1] > 1)
    assert not any(isinstance(m, NNPACKConv2d) for m in convs)


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "DEFAULT"])
def test_the_dilation_rule_holds_where_the_slow_kernel_is(monkeypatch, capability):
    """channels_last_pays on each kind of CPU: a depthwise convolution dilated 5 or more says no except on
    AVX-512 (measured there: no slow path); dense ones never do."""
    from segdet.models import memory_format

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    for dilation, pays in ((4, True), (5, capability == "AVX512")):
        net = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3, dilation=dilation, groups=8))
        assert memory_format.channels_last_pays(net) is pays
    assert memory_format.channels_last_pays(nn.Conv2d(8, 8, 3, dilation=9))  # dense: no slow kernel


def test_nnpack_is_chosen_for_rcnn_detectors_only():
    """prepare_for_inference's default: NNPACK's 3x3 convolutions (and NCHW) for the R-CNN detectors
    where NNPACK was measured faster (AVX2 CPUs, and Zen 4 for this FPN model); never for the segmentation
    models (slower there)."""
    from segdet.models.memory_format import nnpack_pays
    from segdet.ops.nnpack_conv import NNPACKConv2d

    def on_nnpack(model: nn.Module) -> bool:
        return any(isinstance(m, NNPACKConv2d) for m in model.modules())

    detector = build("fasterrcnn_resnet50_fpn", num_classes=2, backbone="resnet18")
    expected = nnpack_pays(detector)
    detector = prepare_for_inference(detector)
    assert on_nnpack(detector) == expected
    channels_last = detector.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert channels_last != expected
    assert not on_nnpack(
        prepare_for_inference(
            build("fasterrcnn_resnet50_fpn", num_classes=2, backbone="resnet18"), nnpack=False
        )
    )
    low = prepare_for_inference(
        build("fasterrcnn_resnet50_fpn", num_classes=2, backbone="resnet18"), precision="bf16"
    )
    assert not on_nnpack(low)  # autocast's convolutions, channels-last
    assert low.model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    unet = prepare_for_inference(build("unet_backbone", num_classes=2, backbone="resnet34"))
    assert not on_nnpack(unet)
