"""MultiScaleRoIPool against torchvision.ops.MultiScaleRoIAlign / roi_align / roi_pool, and the FPN level
rule against hand-computed levels."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool

from segdet.models.detection.rcnn.poolers import MultiScaleRoIPool, infer_scale, map_levels

IMAGE_SIZES = [(400, 512), (512, 360)]  # (h, w); the padded batch is 512 x 512


def _pyramid(seed: int = 0, channels: int = 4) -> dict[str, torch.Tensor]:
    """P2..P5 (strides 4..32) of a 512 x 512 padded batch of two images, plus an unused "pool" level."""
    g = torch.Generator().manual_seed(seed)
    feats = {
        str(k): torch.randn(2, channels, 512 // 2 ** (k + 2), 512 // 2 ** (k + 2), generator=g)
        for k in range(4)
    }
    feats["pool"] = torch.randn(2, channels, 4, 4, generator=g)
    return feats


def _random_boxes(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Boxes of sides from 2 to ~500 px (log-uniform) inside the image, plus one box per FPN level."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    side = torch.exp(torch.empty(n, 2).uniform_(0.7, 6.3, generator=g))
    wh = torch.minimum(side, torch.tensor([w - 1.0, h - 1.0]))
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    by_level = torch.tensor([[0, 0, 8, 8], [5, 5, 120, 140], [10, 20, 250, 260], [0, 0, w - 1, h - 1.5]])
    return torch.cat((torch.cat((xy, xy + wh), dim=1), by_level.float()))


def test_levels_by_hand():
    """k = floor(4 + log2(sqrt(wh) / 224)), clamped to [2, 5]: 224 -> 4, 112 -> 3, 448 -> 5, tiny -> 2,
    huge -> 5; non-square boxes use sqrt(wh); just below 224 falls to 3."""
    sides = torch.tensor([[224, 224], [112, 112], [448, 448], [4, 4], [5000, 5000], [448, 112], [223, 223]])
    boxes = torch.cat((torch.zeros(len(sides), 2), sides.float()), dim=1) + 10.0
    assert map_levels(boxes, 2, 5).tolist() == [4, 3, 5, 2, 5, 4, 3]
    assert map_levels(boxes[:3], 2, 5, canonical_scale=112).tolist() == [5, 4, 5]


def test_infer_scale():
    """Scale = 2 ** floor(log2(feature / image)): exact for odd sizes (ceil-divided features)."""
    assert infer_scale(50, 200) == 0.25
    assert infer_scale(13, 100) == 0.125  # ceil(100 / 8)
    assert infer_scale(7, 200) == 1 / 32
    # an image resized to 43 px, padded to 64 (stride 4: 16 px): 1/4, where torchvision's round gives 1/2
    assert infer_scale(16, 43) == 0.25 and infer_scale(2, 43) == 1 / 32


def test_scales_of_a_very_elongated_image():
    """An image resized to 14 x 64 and padded to 32 x 64 (its short side under the padding multiple):
    the height alone gives each level twice its scale (8 / 14 px: 1/2 for P2; torchvision's round too),
    the width the true one; the pooler takes the smaller, and every RoI equals ``roi_align`` on its
    level at scale ``2^-k`` (reference: torchvision.ops.roi_align, exact)."""
    g = torch.Generator().manual_seed(13)
    feats = {str(k - 2): torch.randn(1, 3, 32 >> k, 64 >> k, generator=g) for k in range(2, 6)}
    assert infer_scale(8, 14) == 0.5 and infer_scale(16, 64) == 0.25
    pooler = MultiScaleRoIPool(["0", "1", "2", "3"], 7, 2)
    assert pooler.scales(list(feats.values()), [(14, 64)]) == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    boxes = torch.tensor([[0.0, 0.0, 10.0, 8.0], [2.0, 1.0, 60.0, 13.0], [30.0, 0.0, 64.0, 14.0]])
    got = pooler(feats, [boxes], [(14, 64)])
    for i, k in enumerate(map_levels(boxes, 2, 5).tolist()):
        expected = roi_align(feats[str(k - 2)], [boxes[i : i + 1]], 7, 2.0**-k, 2)
        torch.testing.assert_close(got[i : i + 1], expected, atol=0, rtol=0)


@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_multiscale_align_matches_torchvision(sampling_ratio):
    """Random RoIs of all scales over two images equal MultiScaleRoIAlign's output to 1e-6."""
    feats = _pyramid()
    boxes = [_random_boxes(40, IMAGE_SIZES[0], 1), _random_boxes(25, IMAGE_SIZES[1], 2)]
    names = ["0", "1", "2", "3"]
    expected = MultiScaleRoIAlign(names, 7, sampling_ratio)(feats, boxes, IMAGE_SIZES)
    got = MultiScaleRoIPool(names, 7, sampling_ratio)(feats, boxes, IMAGE_SIZES)
    levels = map_levels(torch.cat(boxes), 2, 5)
    assert len(levels.unique()) == 4  # the test really spans every level
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_multiscale_align_mask_size_and_empty_images():
    """14 x 14 (mask head) pooling, with an image that has no RoI, equals torchvision's."""
    feats = _pyramid(3)
    boxes = [torch.zeros(0, 4), _random_boxes(30, IMAGE_SIZES[1], 4)]
    names = ["0", "1", "2", "3"]
    expected = MultiScaleRoIAlign(names, 14, 2)(feats, boxes, IMAGE_SIZES)
    got = MultiScaleRoIPool(names, 14, 2)(feats, boxes, IMAGE_SIZES)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    none = MultiScaleRoIPool(names, 7, 2)(feats, [torch.zeros(0, 4), torch.zeros(0, 4)], IMAGE_SIZES)
    assert none.shape == (0, 4, 7, 7)


def test_single_level_c4():
    """One C4 map (stride 16): every RoI is pooled from it, as roi_align with spatial scale 1/16."""
    g = torch.Generator().manual_seed(5)
    c4 = torch.randn(2, 3, 32, 32, generator=g)
    boxes = [_random_boxes(10, IMAGE_SIZES[0], 6), _random_boxes(7, IMAGE_SIZES[1], 7)]
    got = MultiScaleRoIPool(["c4"], (6, 5), 0)({"c4": c4}, boxes, IMAGE_SIZES)
    expected = roi_align(c4, boxes, (6, 5), 1 / 16, 0)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_pool_mode_matches_roi_pool_per_level():
    """mode="pool": each RoI equals torchvision.ops.roi_pool on the level the FPN rule picks."""
    feats = _pyramid(8)
    boxes = [_random_boxes(30, IMAGE_SIZES[0], 9), _random_boxes(30, IMAGE_SIZES[1], 10)]
    got = MultiScaleRoIPool(["0", "1", "2", "3"], 7, 2, mode="pool")(feats, boxes, IMAGE_SIZES)
    levels = map_levels(torch.cat(boxes), 2, 5)
    batch_index = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)])
    all_boxes = torch.cat(boxes)
    for i in range(len(all_boxes)):
        k = int(levels[i])
        roi = torch.cat((batch_index[i : i + 1, None].float(), all_boxes[i : i + 1]), dim=1)
        expected = roi_pool(feats[str(k - 2)], roi, 7, 2.0**-k)
        torch.testing.assert_close(got[i : i + 1], expected, atol=0, rtol=0)


def test_aligned_option_reaches_roi_align():
    """aligned=True gives roi_align(..., aligned=True) on the chosen level (single level here)."""
    c3 = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(11))
    boxes = [_random_boxes(5, (512, 512), 12)]
    got = MultiScaleRoIPool(["p3"], 7, 2, aligned=True)({"p3": c3}, boxes, [(512, 512)])
    torch.testing.assert_close(got, roi_align(c3, boxes, 7, 1 / 8, 2, aligned=True), atol=1e-6, rtol=1e-6)


def test_rejects_bad_inputs():
    feats = _pyramid()
    with pytest.raises(KeyError, match="not found"):
        MultiScaleRoIPool(["0", "9"], 7, 2)(feats, [torch.zeros(0, 4)], [(512, 512)])
    with pytest.raises(ValueError, match="consecutive"):
        MultiScaleRoIPool(["0", "2"], 7, 2)(feats, [torch.zeros(1, 4) + 1], [(512, 512)])
    with pytest.raises(ValueError, match="mode"):
        MultiScaleRoIPool(["0"], 7, 2, mode="max")
