"""Segmentation models: output size for odd inputs in every upsampling mode, gradient flow, and the
layers checked against torch.nn.functional references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segdet.models import build
from segdet.models.segmentation import UPSAMPLE_MODES, make_upsample
from segdet.models.segmentation.deeplabv3plus import ASPP

# Tiny configurations (64-px-scale tests): (model, options).
CONFIGS = [
    ("fcn8s", {"backbone": "resnet18"}),
    ("fcn16s", {"backbone": "vgg16", "head_channels": 32}),
    ("fcn32s", {"backbone": "mobilenet_v3_large"}),
    ("unet", {"base_channels": 4, "depth": 3}),
    ("unet_backbone", {"backbone": "resnet18", "decoder_channels": (32, 16, 16, 8, 8)}),
    ("deeplabv3plus", {"backbone": "resnet18", "aspp_channels": 32, "decoder_channels": 32}),
    (
        "deeplabv3plus",
        {
            "backbone": "mobilenet_v3_large",
            "output_stride": 8,
            "aspp_channels": 16,
            "decoder_channels": 16,
            "separable": True,
        },
    ),
]


@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=lambda c: c if isinstance(c, str) else "")
def test_output_size_and_gradients(name, options, upsample):
    """N x C x H x W output for an odd 37 x 45 input; every trainable parameter gets a finite gradient
    and the first backbone/encoder convolution a non-zero one."""
    torch.manual_seed(0)
    model = build(name, num_classes=3, upsample=upsample, **options).train()
    x = torch.randn(2, 3, 37, 45)
    y = model(x)
    assert y.shape == (2, 3, 37, 45)
    y.square().mean().backward()
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_transposed_bilinear_init_matches_interpolate():
    """Long et al.'s bilinear-initialised transposed conv (kernel 2s, stride s, padding s/2) equals
    F.interpolate(bilinear, align_corners=False) away from the border (zero padding there), 1e-5."""
    for scale in (2, 4, 8):
        x = torch.randn(1, 3, 9, 11)
        up = make_upsample("transposed", 3, 3, scale)
        got = up(x, (9 * scale, 11 * scale))
        want = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        m = scale  # border rows/columns that read the zero padding
        torch.testing.assert_close(got[..., m:-m, m:-m], want[..., m:-m, m:-m], rtol=0, atol=1e-5)


def test_pixelshuffle_icnr_is_nearest_of_conv():
    """ICNR initialisation: sub-pixel conv starts as nearest upsampling of a 1x1 convolution (exact)."""
    up = make_upsample("pixelshuffle", 4, 3, 2)
    x = torch.randn(1, 4, 5, 6)
    weight = up.conv.weight[::4]
    bias = up.conv.bias[::4]
    want = F.interpolate(F.conv2d(x, weight, bias), scale_factor=2, mode="nearest")
    torch.testing.assert_close(up(x, (10, 12)), want, rtol=0, atol=1e-6)


def test_upsample_exact_size_and_crop():
    """Every mode returns exactly the requested size; learnable modes crop their scale*n output at the
    top-left (the first rows equal the uncropped map's)."""
    x = torch.randn(1, 2, 5, 7)
    for mode in UPSAMPLE_MODES:
        up = make_upsample(mode, 2, 2, 4)
        assert up(x, (17, 27)).shape == (1, 2, 17, 27)
        if mode in ("transposed", "pixelshuffle"):
            torch.testing.assert_close(up(x, (17, 27)), up(x, (20, 28))[..., :17, :27])
    with pytest.raises(ValueError, match="upsampling mode"):
        make_upsample("cubic", 2, 2, 2)


def test_fcn_fusion_matches_manual_computation():
    """FCN-8s with bilinear upsampling equals the fusion written with F.interpolate (Long et al.):
    up(up(score(c5)) + score_pool4(c4)) + score_pool3(c3), upsampled to the input (1e-5); and, skip
    scores being zero-initialised, FCN-8s starts equal to FCN-32s."""
    torch.manual_seed(0)
    model = build("fcn8s", num_classes=4, backbone="resnet18", upsample="bilinear").eval()
    with torch.no_grad():
        for layer in model.skip_scores:
            layer.weight.normal_()
            layer.bias.normal_()
    x = torch.randn(1, 3, 67, 75)

    def up(t, ref):
        return F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    with torch.no_grad():
        f = model.backbone(x)
        s5 = model.score(f["c5"])
        s4 = model.skip_scores[0](f["c4"])
        s3 = model.skip_scores[1](f["c3"])
        want = up(up(up(s5, s4) + s4, s3) + s3, x)
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-5)

    with torch.no_grad():
        fresh = build("fcn8s", num_classes=4, backbone="resnet18").eval()
        f = fresh.backbone(x)
        s = fresh.skip_ups[0](fresh.score(f["c5"]), f["c4"].shape[-2:])
        s = fresh.skip_ups[1](s, f["c3"].shape[-2:])
        torch.testing.assert_close(fresh(x), fresh.final_up(s, x.shape[-2:]), rtol=0, atol=1e-6)


def test_aspp_rates_scale_with_output_stride():
    """ASPP dilations are 6/12/18 at output stride 16 and 12/24/36 at 8 (DeepLabv3); the image-pooling
    branch equals a 1x1 conv + ReLU of the global mean, broadcast (checked against F.conv2d)."""
    for stride, rates in ((16, (6, 12, 18)), (8, (12, 24, 36))):
        model = build(
            "deeplabv3plus",
            num_classes=2,
            backbone="resnet18",
            output_stride=stride,
            aspp_channels=8,
            decoder_channels=8,
        )
        assert tuple(b[0].dilation[0] for b in model.aspp.branches[1:]) == rates
    torch.manual_seed(0)
    aspp = ASPP(6, 4, (1, 2, 3)).eval()
    x = torch.randn(2, 6, 5, 7)
    conv = aspp.pool_conv[0]
    pooled = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), conv.weight, conv.bias)).expand(-1, -1, 5, 7)
    branches = [b(x) for b in aspp.branches] + [pooled]
    with torch.no_grad():
        torch.testing.assert_close(aspp(x), aspp.project(torch.cat(branches, 1)), rtol=0, atol=1e-6)


def test_batch_of_one_trains():
    """DeepLabv3+ trains with a batch of one (no BatchNorm on the 1x1 image-pooling map)."""
    model = build("deeplabv3plus", num_classes=2, backbone="resnet18", aspp_channels=8, decoder_channels=8)
    model.train()(torch.randn(1, 3, 64, 64)).sum().backward()


def test_deeplabv3plus_decoder_convs():
    """``decoder_convs`` 3x3 conv-BN-ReLU blocks after the concatenation (paper: 2; Table 2 also 1, 3);
    the first takes ASPP + low-level channels; 0 is refused."""
    for n in (1, 2, 3):
        model = build(
            "deeplabv3plus",
            num_classes=3,
            backbone="resnet18",
            aspp_channels=8,
            low_level_channels=4,
            decoder_channels=6,
            decoder_convs=n,
        )
        assert len(model.decoder) == n
        assert model.decoder[0][0].in_channels == 12
        assert all(block[0].out_channels == 6 for block in model.decoder)
        assert model.eval()(torch.randn(1, 3, 33, 47)).shape == (1, 3, 33, 47)
    with pytest.raises(ValueError, match="decoder_convs"):
        build("deeplabv3plus", num_classes=3, backbone="resnet18", decoder_convs=0)
