"""AnchorGenerator: bit-identical to torchvision's ``AnchorGenerator``, plus hand-checked base anchors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from segdet.models.detection.anchors import (
    C4_ASPECT_RATIOS,
    C4_SIZES,
    FPN_ASPECT_RATIOS,
    FPN_SIZES,
    AnchorGenerator,
    base_anchors,
)
from segdet.models.detection.image_list import ImageList


def _features(padded: tuple[int, int], strides: list[int], dtype=torch.float32) -> list[torch.Tensor]:
    # Ceil division, as a strided conv / FPN max-pool produces: exercises the integer stride H // H_l.
    h, w = padded
    return [torch.zeros(1, 2, -(-h // s), -(-w // s), dtype=dtype) for s in strides]


@pytest.mark.parametrize("padded", [(64, 64), (96, 128), (128, 96), (100, 132)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fpn_equals_torchvision(padded, dtype):
    """Reference: torchvision AnchorGenerator with the FPN sizes/ratios; exact equality (torch.equal)."""
    images = ImageList(torch.zeros(2, 3, *padded), [padded, (padded[0] - 10, padded[1] - 3)])
    features = _features(padded, [4, 8, 16, 32, 64], dtype)
    ours = AnchorGenerator(FPN_SIZES, FPN_ASPECT_RATIOS)(images, features)
    ref = TVAnchorGenerator(FPN_SIZES, FPN_ASPECT_RATIOS)(
        TVImageList(images.tensors, images.image_sizes), features
    )
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == dtype
        assert torch.equal(a, b)


@pytest.mark.parametrize("padded", [(64, 96), (128, 128), (80, 112)])
def test_c4_equals_torchvision(padded):
    """Reference: torchvision AnchorGenerator, C4 configuration (3 sizes x 3 ratios, stride 16); exact."""
    images = ImageList(torch.zeros(1, 3, *padded), [padded])
    features = _features(padded, [16])
    gen = AnchorGenerator(C4_SIZES, C4_ASPECT_RATIOS)
    assert gen.num_anchors_per_location() == [9]
    ours = gen(images, features)
    ref = TVAnchorGenerator(C4_SIZES, C4_ASPECT_RATIOS)(
        TVImageList(images.tensors, images.image_sizes), features
    )
    assert ours[0].shape == (features[0].shape[-2] * features[0].shape[-1] * 9, 4)
    assert torch.equal(ours[0], ref[0])


def test_base_anchors_hand_checked():
    """Hand computation: s=32, r=1 -> w=h=32 -> (-16,-16,16,16); r=0.5 -> w=32*sqrt(2)=45.25, h=22.63 ->
    round(-22.63, -11.31, 22.63, 11.31) = (-23, -11, 23, 11); r=2 -> (-11, -23, 11, 23). Exact."""
    assert base_anchors([32], [1.0]).tolist() == [[-16.0, -16.0, 16.0, 16.0]]
    assert base_anchors([32], [0.5]).tolist() == [[-23.0, -11.0, 23.0, 11.0]]
    assert base_anchors([32], [2.0]).tolist() == [[-11.0, -23.0, 11.0, 23.0]]
    # Ratio-major order: (r=0.5, s=128), (r=0.5, s=256), ..., (r=1, s=128), ...
    c4 = base_anchors([128, 256], [0.5, 1.0])
    assert c4[2].tolist() == [-64.0, -64.0, 64.0, 64.0] and c4[3].tolist() == [-128.0, -128.0, 128.0, 128.0]


def test_grid_order_level_location_anchor():
    """Hand-checked order: level, then y, then x, then anchor; shift = (x*stride_w, y*stride_h)."""
    gen = AnchorGenerator(((32,), (64,)), ((1.0, 2.0), (1.0,)))
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    anchors = gen(images, [torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 2, 3)])[0]
    assert anchors.shape == (4 * 6 * 2 + 2 * 3, 4)
    # level 0, stride (16, 16): location (y=1, x=2) anchor 1 (r=2: w=22.6->(-11,-23,11,23))
    assert anchors[(1 * 6 + 2) * 2 + 1].tolist() == [32 - 11, 16 - 23, 32 + 11, 16 + 23]
    # level 1, stride (32, 32): location (y=1, x=0)
    assert anchors[48 + 3].tolist() == [-32, 32 - 32, 32, 32 + 32]


def test_cache_and_errors():
    """The grid is reused for the same key and recomputed for another size; level count is checked."""
    gen = AnchorGenerator(((32,),), ((1.0,),))
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (60, 50)])
    a = gen(images, [torch.zeros(2, 1, 8, 8)])
    b = gen(images, [torch.zeros(2, 1, 8, 8)])
    assert a[0] is b[0] and a[1] is a[0]
    c = gen(images, [torch.zeros(2, 1, 4, 4)])
    assert c[0].shape == (16, 4) and c[0][1].tolist() == [0.0, -16.0, 32.0, 16.0]  # stride 16
    with pytest.raises(ValueError):
        gen(images, [torch.zeros(2, 1, 8, 8)] * 2)
    with pytest.raises(ValueError):
        AnchorGenerator(((32,), (64,)), ((1.0,),))
