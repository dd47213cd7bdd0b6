"""Model costs (``segdet.models.flops``, ``segdet models``): two-stage detectors are counted at a fixed
number of RoIs, deterministically.

References: ``torch.utils.flop_counter.FlopCounterMode`` on one real forward pass of a detector (exact:
the shape-only count at the RoI numbers that forward produced is the same integer); the box head's
FLOPs by hand, ``2 * RoIs * (C*7*7*1024 + 1024*1024 + 1024*(K+1) + 1024*4(K+1))`` (exact).
"""

from __future__ import annotations

import re

import torch
from torch.utils.flop_counter import FlopCounterMode

from segdet.cli.main import main
from segdet.models import build
from segdet.models.flops import count_flops, model_cost, rcnn_flops

# A narrow Mask R-CNN at 64 px (the engine tests' small set-up): fast on the CPU.
SMALL = {
    "backbone": "resnet18",
    "fpn_channels": 32,
    "representation_size": 64,
    "mask_channels": 16,
    "min_size": 64,
    "max_size": 64,
    "anchor_sizes": [[8], [16], [32], [64], [128]],
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
    "box_score_thresh": 0.0,
}


def test_rcnn_count_equals_a_real_forward_at_its_roi_numbers():
    """A real forward pass (seeded random weights, random image) counted op by op equals the shape-only
    count at the numbers of RoIs that pass reached the box and mask heads; the same count on the
    ``meta`` device (no weights at all) gives the same integer."""
    torch.manual_seed(0)
    model = build("maskrcnn_resnet50_fpn", num_classes=3, **SMALL).eval()
    seen: dict[str, int] = {}
    heads = model.roi_heads
    heads.box_head.register_forward_pre_hook(lambda m, a: seen.__setitem__("box", a[0].shape[0]))
    heads.mask_head.register_forward_pre_hook(lambda m, a: seen.__setitem__("mask", a[0].shape[0]))
    real = count_flops(model, (64, 64), random_input=True)
    assert seen["box"] >= 10 and seen["mask"] >= 1, seen
    assert rcnn_flops(model, (64, 64), seen["box"], seen["mask"]) == real
    with torch.device("meta"):
        ghost = build("maskrcnn_resnet50_fpn", num_classes=3, **SMALL)
    assert rcnn_flops(ghost, (64, 64), seen["box"], seen["mask"]) == real


def test_box_head_share_by_hand():
    """Each proposal adds the box head's two FC layers and the predictor, by hand."""
    with torch.device("meta"):
        model = build("fasterrcnn_resnet50_fpn", num_classes=3, **{**SMALL, "representation_size": 1024})
    k1 = 3 + 1
    per_roi = 2 * (32 * 7 * 7 * 1024 + 1024 * 1024 + 1024 * k1 + 1024 * 4 * k1)
    assert rcnn_flops(model, (64, 64), 10, 0) - rcnn_flops(model, (64, 64), 0, 0) == 10 * per_roi
    assert model_cost("fasterrcnn_resnet50_fpn", 64, num_classes=3).proposals == 1000


def test_deeper_backbone_costs_more():
    """Mask R-CNN at 64 px on ResNet-18 < ResNet-50 < ResNet-101 (params and FLOPs), each counted at
    1000 proposals and 100 detections."""
    costs = [
        model_cost("maskrcnn_resnet50_fpn", 64, backbone=b) for b in ("resnet18", "resnet50", "resnet101")
    ]
    assert all((c.proposals, c.detections) == (1000, 100) for c in costs)
    assert costs[0].gflops < costs[1].gflops < costs[2].gflops
    assert costs[0].params < costs[1].params < costs[2].params


def _table(capsys, argv: list[str]) -> dict[str, tuple[float, str]]:
    assert main(argv) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"(\w+)\s+\S+\s+[\d.]+M\s+([\d.]+)\s+(\S+)$", line)
        if m:
            rows[m[1]] = (float(m[2]), m[3])
    return rows


def test_models_command_is_deterministic(capsys):
    """``segdet models maskrcnn_resnet101_fpn --size 64`` twice prints the same table, with the RoIs
    column at 1000/100 (random weights once made this count luck: R50 122.8 against R101 8.6 GFLOPs;
    the ordering is ``test_deeper_backbone_costs_more``); an unknown name is refused."""
    argv = ["models", "maskrcnn_resnet101_fpn", "--size", "64"]
    first, second = _table(capsys, argv), _table(capsys, argv)
    assert first == second and list(first) == ["maskrcnn_resnet101_fpn"]
    assert first["maskrcnn_resnet101_fpn"][1] == "1000/100" and first["maskrcnn_resnet101_fpn"][0] > 0
    assert main(["models", "no_such_model"]) != 0


def test_rcnn_2014_is_counted_per_proposal(capsys):
    """R-CNN (2014) costs its CNN once per warped proposal: the count at R regions is R times the count at
    one (exact), and one region costs the network on one ``S x S`` crop plus, by hand, every class's SVM
    on ``fc7`` and box regressor on the pool features, ``2 K (D + 4 C p^2)`` (exact). ``segdet models``
    lists it at its 2000 test-time proposals."""
    from segdet.models.flops import rcnn_2014_flops

    options = {"backbone": "resnet18", "input_size": 32, "pool_size": 2, "representation_size": 16}
    with torch.device("meta"):
        model = build("rcnn_resnet_c4", 3, **options).eval()
    one = rcnn_2014_flops(model, 1)
    assert rcnn_2014_flops(model, 10) == 10 * one
    with FlopCounterMode(display=False) as counter:
        model.network.features(torch.zeros(1, 3, 32, 32, device="meta"))
    assert one - counter.get_total_flops() == 2 * 3 * (16 + 4 * 256 * 2**2)  # ResNet-18 layer3: C = 256
    rows = _table(capsys, ["models", "rcnn_resnet_c4", "--size", "64"])
    assert rows["rcnn_resnet_c4"][1] == "2000/-" and rows["rcnn_resnet_c4"][0] > 0


def test_tridentnet_is_counted_per_branch():
    """TridentNet counts its conv4 stage, RPN head and box head once per branch: with the middle branch
    alone (``test_branch=1``) exactly the C4 Faster R-CNN's count (a dilated 3x3 convolution costs what
    an undilated one does), with all three that count plus twice everything after ``layer2`` (exact)."""
    from segdet.models.flops import _counted

    size = (128, 128)
    options = {"backbone": "resnet18", "min_size": 128, "max_size": 128}
    with torch.device("meta"):
        c4 = build("fasterrcnn_resnet50_c4", num_classes=3, **options)
        fast = build("tridentnet_resnet50_c4", num_classes=3, test_branch=1, **options)
        full = build("tridentnet_resnet50_c4", num_classes=3, **options)
    body = c4.backbone.body
    x = torch.zeros(1, 3, *size, device="meta")
    up_to_layer2 = _counted(
        lambda: body.layer2(body.layer1(body.maxpool(body.relu(body.bn1(body.conv1(x))))))
    )
    assert rcnn_flops(fast.eval(), size) == rcnn_flops(c4, size)
    assert rcnn_flops(full.eval(), size) == 3 * rcnn_flops(c4, size) - 2 * up_to_layer2


def test_efficientdet_d0_costs_what_the_paper_says():
    """EfficientDet-D0 at 512 px for COCO's 90 classes: 2.5 B multiply-adds in the paper (table 2, which
    calls them FLOPs, as EfficientNet's paper does); ours 2.49 B, i.e. 4.98 GFLOPs counting a multiply-add
    as 2. Within 2 % (D1 at 640 px: 6.00 B against 6.1 B, D2 at 768: 10.8 B against 11 B; not run here)."""
    cost = model_cost("efficientdet_d0", 512, num_classes=90)
    assert abs(cost.gflops / 2 - 2.5) <= 0.02 * 2.5, cost
