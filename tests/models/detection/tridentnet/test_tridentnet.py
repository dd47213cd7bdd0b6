"""TridentNet: trident blocks against torchvision's blocks with dilated copies of their convolutions, the
stage's branches and its fast test mode, the scale-aware targets and the ignored objects in the RPN and
RoI heads by hand, the merging of the branches' detections, and the builders of the MODELS table."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from segdet.models import MODELS, build
from segdet.models.detection.tridentnet import TridentStage, branch_targets, merge_branches, trident_block


def _block(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "bottleneck":
        block = Bottleneck(
            32, 8, stride=2, downsample=nn.Sequential(nn.Conv2d(32, 32, 1, 2), nn.BatchNorm2d(32))
        )
    else:
        block = BasicBlock(16, 16)
    with torch.no_grad():  # non-trivial BatchNorm statistics, eval mode
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return block.eval()


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_trident_block_is_the_block_with_dilated_convolutions(kind, dilation):
    """Reference: a copy of the torchvision block whose 3x3 convolutions (a bottleneck's conv2, a basic
    block's conv1 and conv2) have dilation and padding ``d``, run by torchvision's own forward. Tolerance
    1e-6 (the same kernels)."""
    block = _block(kind, 0)
    reference = copy.deepcopy(block)
    for conv in [reference.conv2] if kind == "bottleneck" else [reference.conv1, reference.conv2]:
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
    x = torch.randn(2, block.conv1.in_channels, 15, 13)
    with torch.no_grad():
        torch.testing.assert_close(trident_block(block, x, dilation), reference(x), atol=1e-6, rtol=0)


def test_stage_branches_share_weights_and_split_at_the_first_trident_block():
    """Three blocks, the last two trident: branch ``b`` of the output is block 0 then the trident blocks
    at dilation ``d_b`` (reference: :func:`trident_block` applied by hand); no new parameters; in eval
    with ``test_branch`` only that branch runs, equal to its slice of the full output; training runs all."""
    blocks = nn.Sequential(*(_block("basic", s) for s in range(3)))
    stage = TridentStage(blocks, (1, 2, 3), trident_blocks=2).eval()
    assert sum(p.numel() for p in stage.parameters()) == sum(p.numel() for p in blocks.parameters())
    assert [name for name, _ in stage.named_children()] == ["0", "1", "2"]  # the stage's own keys
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        out = stage(x)
        assert out.shape == (6, 16, 12, 12)
        for b, d in enumerate((1, 2, 3)):
            expected = trident_block(blocks[2], trident_block(blocks[1], blocks[0](x), d), d)
            torch.testing.assert_close(out[2 * b : 2 * b + 2], expected, atol=1e-6, rtol=0)
        stage.test_branch = 1
        torch.testing.assert_close(stage(x), out[2:4], atol=1e-6, rtol=0)
        assert stage.train().active_dilations() == (1, 2, 3)
    with pytest.raises(ValueError, match="trident_blocks"):
        TridentStage(blocks, trident_blocks=4)


def test_scale_aware_targets_by_hand():
    """Objects of scale sqrt(w h) 10, 50 and 120 with ranges [0, 40], [20, 80], [40, inf]: branch 0
    keeps the first, branch 1 the second, branch 2 the last two (a bound is inside its range)."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 25, 100], [0.0, 0, 120, 120]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2, 3])}]
    per_branch = branch_targets(targets, [(0.0, 40.0), (20.0, 80.0), (40.0, math.inf)])
    assert [t["ignore"].tolist() for t in per_branch] == [
        [False, True, True],
        [True, False, True],
        [True, False, False],
    ]
    assert torch.equal(per_branch[1]["boxes"], boxes)  # the objects stay: only flagged


def test_ignored_objects_are_neither_positive_nor_negative():
    """The RPN's anchors and the RoI heads' proposals matched to an ignored object get label -1 (by hand:
    an anchor equal to the object's box is positive without the flag), the others are unchanged."""
    model = build("tridentnet_resnet50_c4", 2, backbone="resnet18", min_size=64, max_size=64)
    gt = torch.tensor([[0.0, 0, 32, 32], [40.0, 40, 60, 60]])
    anchors = torch.tensor([[0.0, 0, 32, 32], [40.0, 40, 60, 60], [100.0, 100, 120, 120]])
    target = {"boxes": gt, "labels": torch.tensor([1, 2])}
    plain, _ = model.rpn.assign_targets_to_anchors([anchors], [target])
    flagged, _ = model.rpn.assign_targets_to_anchors(
        [anchors], [{**target, "ignore": torch.tensor([True, False])}]
    )
    assert plain[0].tolist() == [1.0, 1.0, 0.0] and flagged[0].tolist() == [-1.0, 1.0, 0.0]
    _, labels = model.roi_heads._label_proposals(anchors, gt, target["labels"], torch.tensor([False, True]))
    assert labels.tolist() == [1, -1, 0]


def test_branches_are_merged_per_image_and_class():
    """Two branches x two images: per image, the branches' boxes of one class overlapping above the
    threshold keep the better one; another class or image is untouched; the cap applies per image; a
    branch's boxes outside its valid range are dropped first."""

    def det(boxes, scores, labels):
        return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}

    detections = [
        det([[0.0, 0, 10, 10]], [0.9], [1]),  # branch 0, image 0
        det([[50.0, 50, 60, 60]], [0.5], [1]),  # branch 0, image 1
        det([[1.0, 0, 10, 10], [1.0, 0, 10, 10]], [0.8, 0.7], [1, 2]),  # branch 1, image 0
        det([[0.0, 0, 10, 10]], [0.6], [1]),  # branch 1, image 1
    ]
    merged = merge_branches(detections, num_images=2, num_labels=3, nms_thresh=0.5, detections_per_img=10)
    assert merged[0]["scores"].tolist() == pytest.approx([0.9, 0.7]) and merged[0]["labels"].tolist() == [
        1,
        2,
    ]
    assert merged[1]["scores"].tolist() == pytest.approx([0.6, 0.5])
    capped = merge_branches(detections, num_images=2, num_labels=3, nms_thresh=0.5, detections_per_img=1)
    assert [len(d["boxes"]) for d in capped] == [1, 1]
    # With valid ranges (scales sqrt(w h) 10, and 9.49 for the 9 x 10 boxes), branch 0 keeps up to 9.5: its
    # boxes of scale 10 go, and branch 1's 0.8 box is no longer suppressed by the 0.9 one.
    ranged = merge_branches(detections, 2, 3, 0.5, 10, scale_ranges=[(0.0, 9.5), (0.0, 100.0)])
    assert ranged[0]["scores"].tolist() == pytest.approx([0.8, 0.7])
    assert ranged[1]["scores"].tolist() == pytest.approx([0.6])


# ResNet-18 C4 with the light "2fc" box head (the res5 head's path is the C4 Faster R-CNN's, tested there).
SMALL = {
    "backbone": "resnet18",
    "box_head": "2fc",
    "representation_size": 64,
    "min_size": 64,
    "max_size": 96,
    "anchor_sizes": [[8, 16, 32]],
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 16,
    "scale_ranges": [[0, 14], [8, 24], [14, 1e9]],
}


@pytest.mark.parametrize("name", ["tridentnet_resnet50_c4", "tridentnet_resnet101_c4"])
def test_tridentnet_architecture(name):
    """The paper's design (meta device): conv4 (``layer3``) all trident, dilations 1, 2, 3, the paper's
    scale ranges; the same parameters as the C4 Faster R-CNN it is built from."""
    assert name in MODELS
    with torch.device("meta"):
        model = build(name, num_classes=80)
        plain = build("fasterrcnn_resnet50_c4", num_classes=80, backbone=name.split("_")[1])
    assert model.stage.first_trident == 0 and model.stage.dilations == (1, 2, 3)
    assert model.scale_ranges == ((0.0, 90.0), (30.0, 160.0), (90.0, math.inf))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())


def test_tridentnet_trains_and_detects():
    """Finite losses over the 3 x 2 branch images and every trainable parameter reached; in eval the
    merged detections, at most ``detections_per_img`` per image, labels in 0..K-1; TridentNet Fast
    (``test_branch=1``) runs the middle branch alone."""
    torch.manual_seed(0)
    model = build("tridentnet_resnet50_c4", 3, box_score_thresh=0.0, **SMALL).train()
    images = [torch.rand(3, 64, 80), torch.rand(3, 70, 64)]
    targets = [
        {"boxes": torch.tensor([[5.0, 5, 15, 15], [20.0, 10, 60, 50]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_classifier"] > 0
    sum(losses.values()).backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.eval()
    with torch.no_grad():
        merged = model(images)
        model.stage.test_branch = 1
        fast = model(images)
    for det in [*merged, *fast]:
        assert 0 < len(det["boxes"]) <= 100 and int(det["labels"].max()) < 3
