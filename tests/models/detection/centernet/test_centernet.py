"""CenterNet: the Gaussian radius (both rules), heatmap targets, the penalty-reduced focal loss and peak
decoding against hand-computed cases, and the builders of the MODELS table."""

from __future__ import annotations

import math

import pytest
import torch

from segdet.models import MODELS, build
from segdet.models.detection.centernet.decode import decode_centers
from segdet.models.detection.centernet.head import HEATMAP_BIAS
from segdet.models.detection.centernet.loss import penalty_reduced_focal_loss
from segdet.models.detection.centernet.targets import center_targets, gaussian_radius


def test_gaussian_radius_hand_computed():
    """A 10 x 10 box at IoU 0.7. Correct roots: case 1 (20 - sqrt(400 - 4 * 30/1.7)) / 2 = 0.92544,
    case 2 (40 - sqrt(1120)) / 8 = 0.81670, case 3 (-14 + sqrt(1120) / 2) / 2.8 = 0.97611 -> 0.81670.
    The official code's: (20 + 18.1497) / 2, (40 + sqrt(1120)) / 2, (-28 + sqrt(1120)) / 2 = 2.73320 ->
    2.73320. Tolerance 1e-9."""
    assert abs(gaussian_radius(10, 10, 0.7) - (40 - math.sqrt(1120)) / 8) < 1e-9
    assert abs(gaussian_radius(10, 10, 0.7, rule="official") - (-28 + math.sqrt(1120)) / 2) < 1e-9
    with pytest.raises(ValueError, match="rule"):
        gaussian_radius(10, 10, rule="paper")


@pytest.mark.parametrize(("h", "w"), [(10, 10), (4, 5), (20, 80), (113, 7), (1, 1)])
def test_gaussian_radius_keeps_the_iou(h, w):
    """The correct radius is the IoU bound CornerNet states: with both corners moved by r in each of
    the three ways (translated, shrunk, grown), the IoU is >= 0.7, and exactly 0.7 in the binding way
    (tolerance 1e-9)."""
    o = 0.7
    r = gaussian_radius(h, w, o)
    translated = (w - r) * (h - r) / (2 * w * h - (w - r) * (h - r))
    shrunk = (w - 2 * r) * (h - 2 * r) / (w * h)
    grown = w * h / ((w + 2 * r) * (h + 2 * r))
    ious = [translated, shrunk, grown]
    assert min(ious) > o - 1e-9 and abs(min(ious) - o) < 1e-9


def test_heatmap_targets_hand_computed():
    """An 8 x 8 map at stride 4; box (4, 4, 24, 20) of class 0 -> (1, 1, 6, 5) on the map: centre
    (3.5, 3), pixel (3, 3), offset (0.5, 0), size (5, 4). Radius of a 4 x 5 box: correct 0.3625 -> 0,
    a single 1 at (3, 3); official 1.2160 -> 1, σ = 3/6: 1 at the centre, exp(-2) = 0.135335 beside it,
    exp(-4) = 0.018316 on the diagonals, 0 elsewhere. A class-1 box (12, 12, 28, 28) -> (3, 3, 7, 7)
    (within the map: not clipped): centre pixel (5, 5), offset 0, size (4, 4), only in channel 1; the
    image without objects is all 0. Tolerance 1e-6."""
    targets = [
        {"boxes": torch.tensor([[4.0, 4, 24, 20], [12, 12, 28, 28]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    correct = center_targets(targets, 2, (8, 8), 4)
    official = center_targets(targets, 2, (8, 8), 4, radius_rule="official")
    for t in (correct, official):
        assert t.image.tolist() == [0, 0] and t.y.tolist() == [3, 5] and t.x.tolist() == [3, 5]
        torch.testing.assert_close(t.offset, torch.tensor([[0.5, 0.0], [0.0, 0.0]]), atol=1e-6, rtol=0)
        torch.testing.assert_close(t.size, torch.tensor([[5.0, 4.0], [4.0, 4.0]]), atol=1e-6, rtol=0)
        assert float(t.heatmap[1].abs().sum()) == 0.0
        assert float(t.heatmap[0, 1, 3, 3]) == 0.0 and float(t.heatmap[0, 1, 5, 5]) == 1.0
    expected = torch.zeros(8, 8)
    expected[3, 3] = 1.0
    torch.testing.assert_close(correct.heatmap[0, 0], expected, atol=1e-6, rtol=0)
    e1, e2 = math.exp(-2), math.exp(-4)
    expected[2:5, 2:5] = torch.tensor([[e2, e1, e2], [e1, 1.0, e1], [e2, e1, e2]])
    torch.testing.assert_close(official.heatmap[0, 0], expected, atol=1e-6, rtol=0)


def test_boxes_reaching_outside_the_map_are_clipped_as_the_official_code():
    """The official ``ctdet.py`` clips each box on the output map to ``[0, W - 1] x [0, H - 1]``
    (``np.clip(bbox[[0, 2]], 0, output_w - 1)``) before its centre, size and offset, and skips boxes left
    without width or height. 8 x 8 map, stride 4: (-40, 0, 10, 20) -> (-10, 0, 2.5, 5) -> (0, 0, 2.5, 5):
    centre (1.25, 2.5), pixel (1, 2), offset (0.25, 0.5) (unclipped: -3.75 in x), size (2.5, 5); (40, 4,
    60, 20) lies right of the map -> (7, 1, 7, 5), no width: no target, its class-1 channel empty;
    (16, 16, 32, 32) -> (4, 4, 8, 8) -> (4, 4, 7, 7): centre (5.5, 5.5), pixel (5, 5), size (3, 3). Every
    offset in [0, 1). Tolerance 1e-6."""
    targets = [
        {"boxes": torch.tensor([[-40.0, 0, 10, 20], [40, 4, 60, 20]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[16.0, 16, 32, 32]]), "labels": torch.tensor([1])},
    ]
    t = center_targets(targets, 2, (8, 8), 4)
    assert t.image.tolist() == [0, 1] and t.x.tolist() == [1, 5] and t.y.tolist() == [2, 5]
    torch.testing.assert_close(t.offset, torch.tensor([[0.25, 0.5], [0.5, 0.5]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(t.size, torch.tensor([[2.5, 5.0], [3.0, 3.0]]), atol=1e-6, rtol=0)
    assert float(t.heatmap[0, 1].abs().sum()) == 0.0
    assert float(t.heatmap[0, 0, 2, 1]) == 1.0 and float(t.heatmap[1, 1, 5, 5]) == 1.0
    assert int((t.heatmap == 1).sum()) == 2


def test_penalty_reduced_focal_loss_hand_computed():
    """Targets (1, 0.5, 0) with logits (0, 0, ln 3), i.e. Ŷ = (0.5, 0.5, 0.75), one centre (N = 1):
    -(0.5)² ln 0.5 - (0.5)^4 (0.5)² ln 0.5 - (0.75)² ln 0.25 = 0.963908 (tolerance 1e-6); and equal to
    the official clamped formula (CenterNet's _neg_loss) on random inputs within 1e-5."""
    heatmap = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 1, 3)
    logits = torch.tensor([0.0, 0.0, math.log(3)]).view(1, 1, 1, 3)
    expected = 0.25 * math.log(2) + 0.0625 * 0.25 * math.log(2) + 0.5625 * math.log(4)
    assert abs(float(penalty_reduced_focal_loss(logits, heatmap)) - expected) < 1e-6

    g = torch.Generator().manual_seed(0)
    heatmap = torch.rand(2, 3, 8, 8, generator=g) * 0.99
    heatmap[0, 1, 2, 2] = heatmap[1, 0, 5, 6] = 1.0
    logits = torch.randn(2, 3, 8, 8, generator=g)
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = heatmap.eq(1).float()
    official = (
        -(
            (torch.log(pred) * (1 - pred) ** 2 * pos).sum()
            + (torch.log(1 - pred) * pred**2 * (1 - heatmap) ** 4 * (1 - pos)).sum()
        )
        / pos.sum()
    )
    torch.testing.assert_close(penalty_reduced_focal_loss(logits, heatmap), official, atol=1e-5, rtol=0)


def test_peak_decoding_hand_computed():
    """Class 0 has 0.9 at (y 1, x 1) beside 0.8 at (1, 2) -- not a 3 x 3 maximum, dropped -- and 0.5 at
    (4, 0); class 1 has 0.7 at (3, 3). Top 3: (0.9, class 0), (0.7, class 1), (0.5, class 0). At (1, 1)
    size (2, 4) and offset (0.25, 0.5), stride 4: centre (1.25, 1.5) -> box ((1.25 - 1) 4, (1.5 - 2) 4,
    (1.25 + 1) 4, (1.5 + 2) 4) = (1, -2, 9, 14). With a threshold of 0.6 only the first two remain."""
    heatmap = torch.zeros(1, 2, 5, 5)
    heatmap[0, 0, 1, 1], heatmap[0, 0, 1, 2], heatmap[0, 0, 4, 0] = 0.9, 0.8, 0.5
    heatmap[0, 1, 3, 3] = 0.7
    size = torch.zeros(1, 2, 5, 5)
    offset = torch.zeros(1, 2, 5, 5)
    size[0, :, 1, 1] = torch.tensor([2.0, 4.0])
    offset[0, :, 1, 1] = torch.tensor([0.25, 0.5])
    image, boxes, labels, scores = decode_centers(heatmap, size, offset, stride=4, k=3)
    assert image.tolist() == [0, 0, 0] and labels.tolist() == [0, 1, 0]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7, 0.5]))
    torch.testing.assert_close(boxes[0], torch.tensor([1.0, -2.0, 9.0, 14.0]))
    torch.testing.assert_close(boxes[1], torch.tensor([12.0, 12.0, 12.0, 12.0]))  # (3, 3) * 4, size 0
    _, _, labels, _ = decode_centers(heatmap, size, offset, stride=4, k=3, score_thresh=0.6)
    assert labels.tolist() == [0, 1]


@pytest.mark.parametrize("name", ["centernet_resnet18", "centernet_resnet50"])
def test_centernet_architecture(name):
    """The paper's ResNet design (built on the meta device, no memory): three 4 x 4 stride-2 transposed
    convolutions of 256, 128, 64 channels to output stride 4, 100 detections per image."""
    assert name in MODELS
    with torch.device("meta"):
        full = build(name, num_classes=80)
    deconvs = [m for m in full.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(d.out_channels, d.kernel_size, d.stride) for d in deconvs] == [
        (c, (4, 4), (2, 2)) for c in (256, 128, 64)
    ]
    assert full.head.heatmap[-1].out_channels == 80 and full.settings.detections_per_img == 100


@pytest.mark.parametrize("deformable", [False, True])
def test_centernet_trains_and_evaluates(deformable, smoke_train):
    """A narrow ResNet-18 CenterNet (plain and deformable 3x3 convolutions): heatmap bias -2.19; finite
    losses with gradients; on a background-only batch only the heatmap loss is non-zero; in eval, labels
    in 0..C-1, boxes inside the image; heatmap, size and offset maps at stride 4 of the padded batch."""
    model = build(
        "centernet_resnet18",
        num_classes=3,
        upsampling_channels=(32, 32, 32),
        head_channels=16,
        deformable=deformable,
        min_size=96,
        max_size=128,
    )
    assert torch.allclose(model.head.heatmap[-1].bias, torch.full((3,), HEATMAP_BIAS))
    losses = smoke_train(model, 3)
    assert set(losses["trained"]) == {"heatmap", "size", "offset"}
    assert losses["heatmap"].item() > 0 and losses["size"].item() == losses["offset"].item() == 0.0
    with torch.no_grad():
        batch, _ = model.transform([torch.rand(3, 96, 128)])
        outputs = model.head(model.backbone(batch.tensors))
    stride4 = (batch.tensors.shape[-2] // 4, batch.tensors.shape[-1] // 4)
    assert [o.shape[1:] for o in outputs] == [(3, *stride4), (2, *stride4), (2, *stride4)]
