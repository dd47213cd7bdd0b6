"""RPN head and RegionProposalNetwork against torchvision's (``torchvision.models.detection.rpn``),
with the same weights and inputs, plus hand-checked target assignment."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from segdet.models.detection.anchors import (
    C4_ASPECT_RATIOS,
    C4_SIZES,
    FPN_ASPECT_RATIOS,
    FPN_SIZES,
    AnchorGenerator,
)
from segdet.models.detection.head_outputs import dense_head_outputs
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.rcnn.rpn import RegionProposalNetwork
from segdet.models.detection.rcnn.rpn_head import RPNHead

CHANNELS = 8
PADDED = (128, 192)  # a multiple of 32 (and of the strides 4..64)
IMAGE_SIZES = [(128, 170), (101, 192)]
FPN_STRIDES = [4, 8, 16, 32, 64]


def _pair(sizes, ratios, seed=0, **kwargs):
    """(ours, torchvision's) RPN with the same settings and the same seeded random head weights.

    Weights are N(0, 0.1²) (not the 0.01 init) so that logits and deltas vary enough to make the
    top-k, the score threshold and NMS non-trivial. Ours loads torchvision's head state dict unchanged.
    """
    settings = dict(
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=64,
        positive_fraction=0.5,
        pre_nms_top_n=dict(training=300, testing=200),
        post_nms_top_n=dict(training=150, testing=100),
        nms_thresh=0.7,
    )
    settings.update(kwargs)
    num_anchors = len(sizes[0]) * len(ratios[0])
    torch.manual_seed(seed)
    tv_head = tv_rpn.RPNHead(CHANNELS, num_anchors)
    for p in tv_head.parameters():
        p.data.normal_(0.0, 0.1)
    ref = tv_rpn.RegionProposalNetwork(TVAnchorGenerator(sizes, ratios), tv_head, **settings)
    head = RPNHead(CHANNELS, num_anchors)
    head.load_state_dict(tv_head.state_dict())
    ours = RegionProposalNetwork(AnchorGenerator(sizes, ratios), head, **settings)
    return ours, ref


def _inputs(strides, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = ImageList(torch.zeros(len(IMAGE_SIZES), 3, *PADDED), IMAGE_SIZES)
    features = {
        f"p{i}": torch.randn(len(IMAGE_SIZES), CHANNELS, PADDED[0] // s, PADDED[1] // s, generator=g)
        for i, s in enumerate(strides)
    }
    return images, features


TARGETS = [
    {
        "boxes": torch.tensor(
            [[10.0, 12.0, 60.0, 70.0], [80.0, 20.0, 160.0, 120.0], [100.0, 5.0, 118.0, 30.0]]
        )
    },
    {"boxes": torch.zeros(0, 4)},  # background-only image
]


def _assert_same_proposals(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape  # same count
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)  # same order, boxes to 1e-4 px


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"score_thresh": 0.55},
        {"post_nms_top_n": dict(training=5, testing=7)},
        {"nms_thresh": 0.3},
        # NMS suppresses nothing and every candidate is returned: the count checks the per-level top-k.
        {"post_nms_top_n": dict(training=5000, testing=5000), "nms_thresh": 1.0},
    ],
)
def test_fpn_eval_proposals_equal_torchvision(kwargs):
    """Reference: torchvision RegionProposalNetwork (eval), 5 FPN levels, 2 images of different sizes;
    same count and order, boxes to 1e-4 absolute."""
    ours, ref = _pair(FPN_SIZES, FPN_ASPECT_RATIOS, **kwargs)
    ours.eval(), ref.eval()
    images, features = _inputs(FPN_STRIDES)
    with torch.no_grad():
        boxes, losses = ours(images, features)
        ref_boxes, ref_losses = ref(TVImageList(images.tensors, images.image_sizes), features)
    assert losses == {} and ref_losses == {}
    assert all(len(b) > 0 for b in boxes)
    if kwargs.get("post_nms_top_n", {}).get("testing") == 7:
        assert [len(b) for b in boxes] == [7, 7]
    _assert_same_proposals(boxes, ref_boxes)
    # The proposals lie inside each image's own (unpadded) size.
    for b, (h, w) in zip(boxes, IMAGE_SIZES, strict=True):
        assert float(b[:, 2].max()) <= w and float(b[:, 3].max()) <= h


@pytest.mark.parametrize("seed", [0, 5])
def test_fpn_training_losses_and_gradients_equal_torchvision(seed):
    """Reference: torchvision RegionProposalNetwork (train) with targets incl. an image without boxes;
    ``torch.manual_seed(seed)`` before each call so both samplers draw the same anchors.
    Losses and head gradients to 1e-5, training proposals to 1e-4."""
    ours, ref = _pair(FPN_SIZES, FPN_ASPECT_RATIOS, seed=seed)
    ours.train(), ref.train()
    images, features = _inputs(FPN_STRIDES, seed=seed + 1)
    torch.manual_seed(seed)
    boxes, losses = ours(images, features, TARGETS)
    torch.manual_seed(seed)
    ref_boxes, ref_losses = ref(TVImageList(images.tensors, images.image_sizes), features, TARGETS)
    _assert_same_proposals(boxes, ref_boxes)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    for name in losses:
        assert float(losses[name].detach()) > 0
        torch.testing.assert_close(losses[name], ref_losses[name], rtol=0, atol=1e-5)
    sum(losses.values()).backward()
    sum(ref_losses.values()).backward()
    ref_params = dict(ref.head.named_parameters())
    for name, p in ours.head.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-5)


def test_background_only_batch():
    """No boxes in any image: every anchor negative, box loss exactly 0; objectness loss equals
    torchvision's to 1e-5 (same seed)."""
    ours, ref = _pair(FPN_SIZES, FPN_ASPECT_RATIOS)
    images, features = _inputs(FPN_STRIDES)
    empty = [{"boxes": torch.zeros(0, 4)}] * 2
    torch.manual_seed(3)
    _, losses = ours(images, features, empty)
    torch.manual_seed(3)
    _, ref_losses = ref(TVImageList(images.tensors, images.image_sizes), features, empty)
    assert losses["loss_rpn_box_reg"].item() == 0.0
    torch.testing.assert_close(losses["loss_objectness"], ref_losses["loss_objectness"], rtol=0, atol=1e-5)


def test_c4_single_level_equals_torchvision():
    """Reference: torchvision RPN with the paper's C4 configuration (one stride-16 level, 3 sizes x 3
    ratios = 9 anchors): eval proposals to 1e-4 (same count/order), training losses to 1e-5."""
    ours, ref = _pair(C4_SIZES, C4_ASPECT_RATIOS)
    assert ours.head.cls_logits.out_channels == 9 and ours.head.bbox_pred.out_channels == 36
    images, features = _inputs([16])
    tv_images = TVImageList(images.tensors, images.image_sizes)
    torch.manual_seed(7)
    boxes, losses = ours(images, list(features.values()), TARGETS)
    torch.manual_seed(7)
    ref_boxes, ref_losses = ref(tv_images, features, TARGETS)
    _assert_same_proposals(boxes, ref_boxes)
    for name in losses:
        torch.testing.assert_close(losses[name], ref_losses[name], rtol=0, atol=1e-5)
    ours.eval(), ref.eval()
    with torch.no_grad():
        _assert_same_proposals(ours(images, features)[0], ref(tv_images, features)[0])


def test_target_assignment_hand_checked():
    """Hand-computed: an anchor equal to the GT gets label 1 and regression target (0, 0, 0, 0); an anchor
    of IoU 0.5 is ignored (-1); a disjoint one is negative (0)."""
    rpn = RegionProposalNetwork(AnchorGenerator(((32,),), ((1.0,),)), RPNHead(4, 1))
    anchors = torch.tensor([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 16.0, 32.0], [100.0, 100.0, 132.0, 132.0]])
    gt = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    labels, matched = rpn.assign_targets_to_anchors([anchors], [{"boxes": gt}])
    assert labels[0].tolist() == [1.0, -1.0, 0.0]
    assert rpn.box_coder.encode_single(matched[0][:1], anchors[:1]).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    # Without boxes every anchor is negative.
    labels, _ = rpn.assign_targets_to_anchors([anchors], [{"boxes": torch.zeros(0, 4)}])
    assert labels[0].tolist() == [0.0, 0.0, 0.0]


def test_legacy_state_dict_keys():
    """torchvision's pre-0.13 RPN heads stored the 3x3 conv as ``conv.weight``; it loads as conv.0.0."""
    head = RPNHead(4, 3)
    state = {k.replace("conv.0.0.", "conv."): torch.randn_like(v) for k, v in head.state_dict().items()}
    head.load_state_dict(state)
    assert torch.equal(head.conv[0][0].weight, state["conv.weight"])
    assert set(RPNHead(4, 3).state_dict()) == set(tv_rpn.RPNHead(4, 3).state_dict())


def test_loss_decreases_with_sgd():
    """Sanity: on a fixed toy input 30 SGD steps lower the total RPN loss (fixed sampling generator)."""
    torch.manual_seed(0)
    rpn = RegionProposalNetwork(
        AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2), RPNHead(4, 3), batch_size_per_image=32
    )
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = [torch.randn(1, 4, 16, 16), torch.randn(1, 4, 8, 8)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]])}]
    opt = torch.optim.SGD(rpn.parameters(), lr=0.5)

    def total() -> torch.Tensor:
        return sum(rpn(images, features, targets, generator=torch.Generator().manual_seed(0))[1].values())

    first = total().item()
    for _ in range(30):
        opt.zero_grad()
        total().backward()
        opt.step()
    assert total().item() < 0.7 * first


def test_per_image_anchor_tensors_give_the_same_loss():
    """Anchors given as distinct per-image tensors (not the generator's shared one) give the same losses,
    exactly (the [N, A, 4] indexing path against the shared [A, 4] one)."""
    ours, _ = _pair(FPN_SIZES, FPN_ASPECT_RATIOS)
    images, features = _inputs(FPN_STRIDES)
    feature_list = list(features.values())
    scores, deltas, _ = dense_head_outputs(ours.head, feature_list, 1)
    objectness = scores[..., 0]
    shared = ours.anchor_generator(images, feature_list)
    copies = [a.clone() for a in shared]
    labels, matched = ours.assign_targets_to_anchors(shared, TARGETS)
    a = ours.compute_loss(objectness, deltas, shared, labels, matched, torch.Generator().manual_seed(1))
    b = ours.compute_loss(objectness, deltas, copies, labels, matched, torch.Generator().manual_seed(1))
    assert a[1].item() > 0 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
