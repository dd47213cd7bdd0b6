"""FeaturePyramidNetwork against torchvision.ops.FeaturePyramidNetwork with the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import feature_pyramid_network as tv_fpn

from segdet.models.necks import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

CHANNELS = [8, 16, 24, 32]


def _features(seed: int = 0, size: tuple[int, int] = (61, 47)) -> dict[str, torch.Tensor]:
    """Backbone-like features of strides 4..32 of an odd-sized input (sizes ceil(size / stride))."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    return {
        f"c{k + 2}": torch.randn(2, c, -(-h // 2 ** (k + 2)), -(-w // 2 ** (k + 2)), generator=g)
        for k, c in enumerate(CHANNELS)
    }


def _randomise(module: nn.Module, seed: int) -> None:
    """Non-trivial weights *and* BatchNorm statistics, so a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if t.dim() == 1
                    else torch.randn(t.shape, generator=g) * 0.1
                )


def _pair(extra_ours, extra_tv, norm_layer=None):
    tv = tv_fpn.FeaturePyramidNetwork(CHANNELS, 16, extra_blocks=extra_tv, norm_layer=norm_layer)
    _randomise(tv, 1)
    ours = FeaturePyramidNetwork(CHANNELS, 16, extra_blocks=extra_ours, norm_layer=norm_layer)
    ours.load_state_dict(tv.state_dict())  # strict: same parameter names one-to-one
    return ours.eval(), tv.eval()


@pytest.mark.parametrize(
    ("extra", "norm_layer"),
    [
        ("none", None),
        ("maxpool", None),
        ("maxpool", nn.BatchNorm2d),  # the v2 Faster / Mask R-CNN neck
        ("p6p7_p5", None),  # RetinaNet v1: P6 from P5
        ("p6p7_c5", None),  # RetinaNet v2: P6 from C5
    ],
)
def test_fpn_matches_torchvision(extra, norm_layer):
    """Outputs, their names and order equal torchvision's to 1e-6 (same weights, odd input size)."""
    blocks = {
        "none": (None, None),
        "maxpool": (LastLevelMaxPool(), tv_fpn.LastLevelMaxPool()),
        "p6p7_p5": (LastLevelP6P7(16, 16), tv_fpn.LastLevelP6P7(16, 16)),
        "p6p7_c5": (LastLevelP6P7(32, 16), tv_fpn.LastLevelP6P7(32, 16)),
    }[extra]
    ours, tv = _pair(*blocks, norm_layer=norm_layer)
    x = _features()
    with torch.no_grad():
        expected = tv(dict(x))
        got = ours(dict(x))
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-6)


def test_fpn_level_names_and_sizes():
    """Names are kept and extra levels are named "pool" / "p6", "p7"; P6 = every other pixel of P5."""
    ours = FeaturePyramidNetwork(CHANNELS, 16, extra_blocks=LastLevelMaxPool()).eval()
    x = _features()
    out = ours(x)
    assert list(out) == ["c2", "c3", "c4", "c5", "pool"]
    assert all(v.shape[1] == 16 for v in out.values())
    assert out["c2"].shape[-2:] == x["c2"].shape[-2:]
    torch.testing.assert_close(out["pool"], out["c5"][:, :, ::2, ::2], atol=0, rtol=0)
    out = FeaturePyramidNetwork(CHANNELS, 16, extra_blocks=LastLevelP6P7(16, 16))(x)
    assert list(out)[-2:] == ["p6", "p7"]


def test_fpn_top_down_formula_by_hand():
    """Two levels, identity-like 1x1 laterals and 3x3 outputs: P4 = C4 + nearest-upsampled C5."""
    fpn = FeaturePyramidNetwork([1, 1], 1)
    with torch.no_grad():
        for block in [*fpn.inner_blocks, *fpn.layer_blocks]:
            conv = block[0]
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0
    c4 = torch.arange(16.0).reshape(1, 1, 4, 4)
    c5 = torch.tensor([[[[100.0, 200.0], [300.0, 400.0]]]])
    out = fpn({"c4": c4, "c5": c5})
    expected_p4 = c4 + c5.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(out["c4"], expected_p4)
    torch.testing.assert_close(out["c5"], c5)


def test_fpn_loads_legacy_keys():
    """Old checkpoints' ``inner_blocks.{i}.weight`` load into ``inner_blocks.{i}.0.weight``."""
    ours, tv = _pair(LastLevelMaxPool(), tv_fpn.LastLevelMaxPool())
    legacy = {k.replace(".0.", "."): v for k, v in tv.state_dict().items()}
    fresh = FeaturePyramidNetwork(CHANNELS, 16, extra_blocks=LastLevelMaxPool())
    fresh.load_state_dict(legacy)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, atol=0, rtol=0)


def test_p6p7_rejects_p5_with_other_width():
    with pytest.raises(ValueError, match="use_P5"):
        LastLevelP6P7(32, 16, use_P5=True)
