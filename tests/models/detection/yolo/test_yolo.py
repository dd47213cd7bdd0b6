"""YOLO v1: target encoding (cell, responsible predictor), the loss and decoding against hand-computed
cases, the paper's architecture, and the builders of the MODELS table."""

from __future__ import annotations

import math

import pytest
import torch

from segdet.models import MODELS, build
from segdet.models.detection.yolo.loss import yolov1_loss
from segdet.models.detection.yolo.targets import assign_cells, responsible_predictors

TINY = {"width": 0.125, "fc_channels": 64, "size": (64, 64)}


def test_assign_cells_hand_computed():
    """448 x 448 image, S = 7 (64 px cells). Box (70, 100, 170, 300): centre (120, 200) -> column
    floor(120 / 64) = 1, row floor(200 / 64) = 3, x = 120/64 - 1 = 0.875, y = 200/64 - 3 = 0.125,
    sqrt(100/448), sqrt(200/448). A second object centred in the same cell is dropped (one object per
    cell, the first wins); a box touching the far corner falls into cell (6, 6). Tolerance 1e-6."""
    targets = [
        {
            "boxes": torch.tensor([[70.0, 100, 170, 300], [100, 180, 140, 230], [400, 400, 448, 448]]),
            "labels": torch.tensor([4, 1, 2]),
        },
        {"boxes": torch.tensor([[0.0, 0, 10, 20]]), "labels": torch.tensor([0])},
    ]
    cells = assign_cells(targets, 7, (448, 448))
    assert cells.image.tolist() == [0, 0, 1]
    assert cells.row.tolist() == [3, 6, 0] and cells.col.tolist() == [1, 6, 0]
    assert cells.labels.tolist() == [4, 2, 0]
    expected = torch.tensor(
        [
            [0.875, 0.125, math.sqrt(100 / 448), math.sqrt(200 / 448)],
            [424 / 64 - 6, 424 / 64 - 6, math.sqrt(48 / 448), math.sqrt(48 / 448)],
            [5 / 64, 10 / 64, math.sqrt(10 / 448), math.sqrt(20 / 448)],
        ]
    )
    torch.testing.assert_close(cells.encoded, expected, atol=1e-6, rtol=0)


def test_assign_cells_clips_boxes_to_the_image_as_darknet():
    """Darknet (``correct_boxes``, then ``fill_truth_region``) clips every box to the image before its
    centre and size, and skips boxes left without width or height. 448 x 448, S = 7: (-100, 0, 20, 64)
    -> (0, 0, 20, 64): centre (10, 32), cell (0, 0), x = 10/64 (unclipped: -40/64), y = 0.5,
    sqrt(20/448), sqrt(64/448); (300, 200, 600, 264) -> (300, 200, 448, 264): centre (374, 232), cell
    (3, 5), x = 374/64 - 5, y = 232/64 - 3; (-50, 300, -10, 340) lies left of the image: no target; a
    box wider than the image -> sqrt(w / W) = 1. Every target in [0, 1]. Tolerance 1e-6."""
    targets = [
        {
            "boxes": torch.tensor([[-100.0, 0, 20, 64], [300, 200, 600, 264], [-50, 300, -10, 340]]),
            "labels": torch.tensor([0, 1, 2]),
        },
        {"boxes": torch.tensor([[-10.0, 100, 460, 150]]), "labels": torch.tensor([3])},
    ]
    cells = assign_cells(targets, 7, (448, 448))
    assert cells.image.tolist() == [0, 0, 1] and cells.labels.tolist() == [0, 1, 3]
    assert cells.row.tolist() == [0, 3, 1] and cells.col.tolist() == [0, 5, 3]
    expected = torch.tensor(
        [
            [10 / 64, 0.5, math.sqrt(20 / 448), math.sqrt(64 / 448)],
            [374 / 64 - 5, 232 / 64 - 3, math.sqrt(148 / 448), math.sqrt(64 / 448)],
            [0.5, 125 / 64 - 1, 1.0, math.sqrt(50 / 448)],
        ]
    )
    torch.testing.assert_close(cells.encoded, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(cells.boxes[0], torch.tensor([0.0, 0, 20, 64]), atol=1e-6, rtol=0)


def test_responsible_predictor_hand_computed():
    """Object (64, 64, 128, 128). Predictions (64, 64, 96, 128): IoU 0.5; (70, 70, 128, 128): IoU
    58² / 64² = 0.821289; (0, 0, 32, 32): IoU 0 -> the second is responsible. When every IoU is 0, the
    box nearest in (cx, cy, w, h) / 448 is (Darknet's fallback): squared distances (px²) 2 (91² + 54²),
    2 (39² + 54²), 2 (154² + 36²) -> the second. Tolerance 1e-6."""
    gt = torch.tensor([[64.0, 64, 128, 128], [64, 64, 128, 128]])
    predicted = torch.tensor(
        [
            [[64.0, 64, 96, 128], [70, 70, 128, 128], [0, 0, 32, 32]],
            [[0.0, 0, 10, 10], [130, 130, 140, 140], [200, 200, 300, 300]],
        ]
    )
    index, iou = responsible_predictors(predicted, gt, (448, 448))
    assert index.tolist() == [1, 1]
    torch.testing.assert_close(iou, torch.tensor([58.0**2 / 64**2, 0.0]), atol=1e-6, rtol=0)


def test_loss_hand_computed():
    """S = 2, B = 2, C = 2 on a 100 x 100 image; one object (60, 10, 90, 50) of class 0 in cell (row 0,
    column 1): targets x = 0.5, y = 0.6, sqrt(0.3), sqrt(0.4). Its cell predicts box 0 = (0.4, 0.6,
    sqrt(0.3), sqrt(0.4), conf 0.9) -- the box (55, 10, 85, 50), IoU 1000 / 1400 with the object -- and
    box 1 = (0, 0, 0.1, 0.1, conf 0.3) (IoU 0), classes (0.7, 0.1); cell (1, 0)'s box 0 has conf 0.2.
    By eq. 3: box 5 (0.1²) = 0.05; confidence (0.9 - 5/7)²; no object 0.5 (0.3² + 0.2²) = 0.065;
    classification (0.7 - 1)² + 0.1² = 0.1. Tolerance 1e-6."""
    pred = torch.zeros(1, 2, 2, 12)
    pred[0, 0, 1, :10] = torch.tensor([0.4, 0.6, math.sqrt(0.3), math.sqrt(0.4), 0.9, 0, 0, 0.1, 0.1, 0.3])
    pred[0, 0, 1, 10:] = torch.tensor([0.7, 0.1])
    pred[0, 1, 0, 4] = 0.2
    targets = [{"boxes": torch.tensor([[60.0, 10, 90, 50]]), "labels": torch.tensor([0])}]
    losses = yolov1_loss(pred, targets, (100, 100), 2)
    expected = {"box": 0.05, "confidence": (0.9 - 5 / 7) ** 2, "no_object": 0.065, "classification": 0.1}
    for key, value in expected.items():
        assert abs(losses[key].item() - value) < 1e-6, (key, losses[key].item(), value)


def test_postprocess_hand_computed():
    """S = 2, B = 2, C = 2 on a 100 x 100 input: cell (row 1, column 0), box 0 = (0.5, 0.5, sqrt(0.2),
    sqrt(0.4), conf 0.8), classes (0.25, 0.75): class-specific confidences 0.2 and 0.6 for the box
    centred at ((0 + 0.5) 50, (1 + 0.5) 50) = (25, 75) of size 20 x 40 -> (15, 55, 35, 95), once per
    class (NMS is per class). Cell (0, 0) has confidence -0.5 and class outputs -0.5: clamped to 0, no
    detection (unclamped, their product would be 0.25). Tolerance 1e-5."""
    model = build("yolov1", num_classes=2, grid_size=2, boxes_per_cell=2, **TINY).eval()
    pred = torch.zeros(1, 2, 2, 12)
    pred[0, 1, 0, :5] = torch.tensor([0.5, 0.5, math.sqrt(0.2), math.sqrt(0.4), 0.8])
    pred[0, 1, 0, 10:] = torch.tensor([0.25, 0.75])
    pred[0, 0, 0, 4] = -0.5
    pred[0, 0, 0, 10:] = -0.5
    (det,) = model.postprocess(pred, [(100, 100)])
    assert det["labels"].tolist() == [1, 0]
    torch.testing.assert_close(det["scores"], torch.tensor([0.6, 0.2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(det["boxes"], torch.tensor([[15.0, 55, 35, 95]] * 2), atol=1e-5, rtol=0)


def test_paper_architecture():
    """The paper's network at full size (Figure 3; built on the meta device, no memory): 24 convolutions
    and 2 fully connected layers, 448 x 448 input, the last convolution 7 x 7 x 1024, FC 4096, output 7 x 7
    x 30 for VOC (S = 7, B = 2, C = 20); Leaky ReLU 0.1, no normalisation."""
    with torch.device("meta"):
        model = build("yolov1", num_classes=20)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 24 and len(linears) == 2
    assert convs[0].kernel_size == (7, 7) and convs[0].stride == (2, 2) and convs[-1].out_channels == 1024
    assert linears[0].in_features == 7 * 7 * 1024 and linears[0].out_features == 4096
    assert linears[1].out_features == 7 * 7 * 30
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.1}
    assert model.transform.fixed_size == (448, 448)


def test_mobilenet_v3_small_defaults():
    """yolov1_mobilenet_v3_small: 640 x 640 input, MobileNetV3-Small's 576-channel stride-32 map into a
    128-wide conv head, a 20 x 20 grid of 5B + C = 90 numbers (B = 2, C = 80); the backbone's parameters
    keep torchvision's ``features.*`` names."""
    with torch.device("meta"):
        model = build("yolov1_mobilenet_v3_small", num_classes=80)
    assert model.transform.fixed_size == (640, 640)
    assert model.head.grid_size == 20 and model.head.kind == "conv"
    first = model.head.convs[0]
    convs = [m for m in first.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (convs[0].in_channels, convs[0].out_channels) == (576, 128)
    assert model.head.predictor.out_channels == 90
    assert {k.split(".")[0] for k, _ in model.backbone.named_parameters()} == {"features"}
    assert max(int(k.split(".")[1]) for k, _ in model.backbone.named_parameters()) == 12


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("yolov1", TINY),
        ("yolov1_resnet50", {"backbone": "resnet18", "head": "conv", "head_channels": 32, "size": (96, 96)}),
        ("yolov1_mobilenet_v3_large", {"grid_size": 3, "head_channels": 32, "size": (96, 96)}),
        ("yolov1_mobilenet_v3_small", {"grid_size": 3, "head_channels": 32, "size": (96, 96)}),
    ],
)
def test_yolov1_builds_trains_and_evaluates(name, options, smoke_train):
    """Built by name (the paper's head, and the convolutional one on a ResNet-18 and a MobileNetV3-Large
    and -Small: a 3 x 3 grid at 96 px): finite positive losses with gradients on images of different
    sizes; on a background-only batch only the no-object loss is non-zero; in eval, labels in 0..C-1 and
    boxes inside the image."""
    assert name in MODELS
    model = build(name, num_classes=3, **options)
    losses = smoke_train(model, 3)
    assert set(losses["trained"]) == {"box", "confidence", "no_object", "classification"}
    assert losses["no_object"].item() > 0
    assert losses["box"].item() == losses["confidence"].item() == losses["classification"].item() == 0.0
    with pytest.raises(ValueError, match="head must be"):
        build(name, num_classes=3, **{**options, "head": "mlp"})
