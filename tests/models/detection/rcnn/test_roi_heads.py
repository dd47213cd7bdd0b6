"""Box heads, Fast R-CNN loss and the full RoIHeads (box + mask) against torchvision.models.detection with
the same (seeded, copied) weights, proposals and features."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection import faster_rcnn as tv_faster
from torchvision.models.detection import mask_rcnn as tv_mask
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.ops import MultiScaleRoIAlign

from segdet.models.detection.rcnn.box_head import ConvFCHead, FastRCNNPredictor, TwoMLPHead, fastrcnn_loss
from segdet.models.detection.rcnn.mask_head import MaskRCNNHeads, MaskRCNNPredictor
from segdet.models.detection.rcnn.poolers import MultiScaleRoIPool
from segdet.models.detection.rcnn.roi_heads import RoIHeads

CHANNELS = 8
NUM_CLASSES = 4  # background + 3
IMAGE_SIZES = [(100, 128), (128, 90), (96, 96)]  # (h, w); padded batch 128 x 128
NAMES = ["0", "1", "2", "3"]


def _randomise(module: nn.Module, seed: int, scale: float = 0.1) -> None:
    """Random weights and BatchNorm statistics (positive variances) so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point():
                if "running_var" in name:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif t.dim() == 1 and "running_mean" not in name:
                    # Positive biases and BN scales keep the ReLUs alive, so outputs differ per RoI.
                    t.copy_(torch.rand(t.shape, generator=g) * 0.3)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * scale)


def _features(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = {
        str(k): torch.randn(3, CHANNELS, 128 // 2 ** (k + 2), 128 // 2 ** (k + 2), generator=g)
        for k in range(4)
    }
    feats["pool"] = torch.randn(3, CHANNELS, 2, 2, generator=g)
    return feats


def _boxes_in(n: int, size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    h, w = size
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7]) + 4
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
    return torch.cat((xy, xy + wh), dim=1)


def _targets(g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Image 0: three objects; image 1: none (background only); image 2: one object."""
    targets = []
    for (h, w), n in zip(IMAGE_SIZES, (3, 0, 1), strict=True):
        boxes = _boxes_in(n, (h, w), g)
        masks = torch.zeros(n, h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            masks[i, y0:y1, x0 : (x0 + x1) // 2 + 1] = 1  # the left half of the box
        labels = torch.randint(1, NUM_CLASSES, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return targets


def _proposals(targets, g: torch.Generator, counts=(60, 50, 40)) -> list[torch.Tensor]:
    """Random proposals plus jittered copies of the ground truth (so there are foreground RoIs)."""
    out = []
    for t, size, n in zip(targets, IMAGE_SIZES, counts, strict=True):
        jittered = t["boxes"].repeat(4, 1) + torch.randn(4 * len(t["boxes"]), 4, generator=g) * 3
        out.append(torch.cat((_boxes_in(n, size, g), jittered)))
    return out


def _build(variant: str, with_mask: bool, **kwargs) -> tuple[RoIHeads, tv_roi_heads.RoIHeads]:
    """Our RoIHeads and torchvision's with identical weights (copied through the state dict, strict)."""
    if variant == "v1":
        tv_box_head = tv_faster.TwoMLPHead(CHANNELS * 49, 32)
        box_head = TwoMLPHead(CHANNELS * 49, 32)
        mask_norm = None
    else:
        tv_box_head = tv_faster.FastRCNNConvFCHead(
            (CHANNELS, 7, 7), [8, 8, 8, 8], [32], norm_layer=nn.BatchNorm2d
        )
        box_head = ConvFCHead((CHANNELS, 7, 7), (8, 8, 8, 8), (32,), norm_layer=nn.BatchNorm2d)
        mask_norm = nn.BatchNorm2d
    options = {
        "fg_iou_thresh": 0.5,
        "bg_iou_thresh": 0.5,
        "batch_size_per_image": 64,
        "positive_fraction": 0.25,
        "bbox_reg_weights": (10.0, 10.0, 5.0, 5.0),
        "score_thresh": 0.05,
        "nms_thresh": 0.5,
        "detections_per_img": 100,
    } | kwargs
    tv_mask_parts, mask_parts = {}, {}
    if with_mask:
        tv_mask_parts = {
            "mask_roi_pool": MultiScaleRoIAlign(NAMES, 14, 2),
            "mask_head": tv_mask.MaskRCNNHeads(CHANNELS, [8, 8, 8, 8], 1, norm_layer=mask_norm),
            "mask_predictor": tv_mask.MaskRCNNPredictor(8, 8, NUM_CLASSES),
        }
        mask_parts = {
            "mask_pooler": MultiScaleRoIPool(NAMES, 14, 2),
            "mask_head": MaskRCNNHeads(CHANNELS, (8, 8, 8, 8), 1, norm_layer=mask_norm),
            "mask_predictor": MaskRCNNPredictor(8, 8, NUM_CLASSES),
        }
    tv = tv_roi_heads.RoIHeads(
        MultiScaleRoIAlign(NAMES, 7, 2),
        tv_box_head,
        tv_faster.FastRCNNPredictor(32, NUM_CLASSES),
        options["fg_iou_thresh"],
        options["bg_iou_thresh"],
        options["batch_size_per_image"],
        options["positive_fraction"],
        options["bbox_reg_weights"],
        options["score_thresh"],
        options["nms_thresh"],
        options["detections_per_img"],
        **tv_mask_parts,
    )
    _randomise(tv, 1)
    ours = RoIHeads(
        MultiScaleRoIPool(NAMES, 7, 2), box_head, FastRCNNPredictor(32, NUM_CLASSES), **options, **mask_parts
    )
    ours.load_state_dict(tv.state_dict())
    return ours, tv


def test_box_heads_and_predictor_match_torchvision():
    """TwoMLPHead, ConvFCHead (v2, BatchNorm) and FastRCNNPredictor: same keys, outputs equal (1e-6)."""
    x = torch.randn(6, CHANNELS, 7, 7, generator=torch.Generator().manual_seed(2))
    pairs = [
        (TwoMLPHead(CHANNELS * 49, 16), tv_faster.TwoMLPHead(CHANNELS * 49, 16)),
        (
            ConvFCHead((CHANNELS, 7, 7), (4, 4, 4, 4), (16,)),
            tv_faster.FastRCNNConvFCHead((CHANNELS, 7, 7), [4, 4, 4, 4], [16], norm_layer=nn.BatchNorm2d),
        ),
    ]
    tv_pred, pred = tv_faster.FastRCNNPredictor(16, 5), FastRCNNPredictor(16, 5)
    _randomise(tv_pred, 3)
    pred.load_state_dict(tv_pred.state_dict())
    for seed, (ours, tv) in enumerate(pairs):
        _randomise(tv, 10 + seed)
        ours.load_state_dict(tv.state_dict())
        with torch.no_grad():
            expected = tv_pred(tv.eval()(x))
            got = pred(ours.eval()(x))
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert got[1].shape == (6, 20)


def test_fastrcnn_loss_matches_torchvision():
    """L = CE + smooth-L1(β=1/9) on the true class's deltas / N: equal to torchvision's fastrcnn_loss."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(10, 5, generator=g)
    deltas = torch.randn(10, 20, generator=g)
    labels = torch.tensor([0, 3, 0, 1, 4, 0, 0, 2, 2, 0])
    targets = torch.randn(10, 4, generator=g)
    got = fastrcnn_loss(logits, deltas, labels, targets)
    expected = tv_roi_heads.fastrcnn_loss(
        logits, deltas, [labels[:4], labels[4:]], [targets[:4], targets[4:]]
    )
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("variant", "with_mask", "options"),
    [
        ("v1", True, {}),
        ("v2", True, {}),
        ("v1", False, {"detections_per_img": 7, "score_thresh": 0.2}),  # the top-k cut really cuts
        ("v1", False, {"nms_thresh": 0.3}),
    ],
)
def test_roi_heads_eval_matches_torchvision(variant, with_mask, options):
    """Detections (boxes, scores, labels, m x m masks) equal torchvision's RoIHeads to 1e-4, for three
    images of different sizes, one of them without any proposal."""
    ours, tv = _build(variant, with_mask, **options)
    ours.eval(), tv.eval()
    g = torch.Generator().manual_seed(5)
    proposals = _proposals(_targets(g), g, counts=(80, 0, 50))
    proposals[1] = torch.zeros(0, 4)
    feats = _features()
    with torch.no_grad():
        expected, _ = tv(feats, [p.clone() for p in proposals], IMAGE_SIZES)
        got, losses = ours(feats, [p.clone() for p in proposals], IMAGE_SIZES)
    assert losses == {}
    assert len(got) == 3 and len(got[0]["boxes"]) > 0 and len(got[1]["boxes"]) == 0
    if "detections_per_img" in options:
        assert len(expected[0]["boxes"]) == options["detections_per_img"]
    for a, b in zip(got, expected, strict=True):
        assert set(a) == set(b)
        for key in b:
            assert a[key].shape == b[key].shape, key
            if key == "labels":
                assert torch.equal(a[key], b[key])
            else:
                torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("variant", "with_mask"), [("v1", True), ("v2", True), ("v1", False)])
def test_roi_heads_training_losses_match_torchvision(variant, with_mask):
    """With torch.manual_seed before each call (same RoI sampling), the losses equal torchvision's to 1e-5
    and so do their gradients; image 1 has no ground-truth box."""
    ours, tv = _build(variant, with_mask)
    ours.train(), tv.train()
    g = torch.Generator().manual_seed(6)
    targets = _targets(g)
    proposals = _proposals(targets, g)
    feats = _features(1)

    torch.manual_seed(0)
    expected_det, expected = tv(feats, [p.clone() for p in proposals], IMAGE_SIZES, targets)
    torch.manual_seed(0)
    got_det, got = ours(feats, [p.clone() for p in proposals], IMAGE_SIZES, targets)

    assert got_det == [] and expected_det == []
    assert (
        set(got)
        == set(expected)
        == {"loss_classifier", "loss_box_reg"} | ({"loss_mask"} if with_mask else set())
    )
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)
    assert got["loss_box_reg"] > 0
    sum(got.values()).backward()
    sum(expected.values()).backward()
    tv_params = dict(tv.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, tv_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_roi_heads_training_background_only_batch():
    """A batch without any object trains: the box and mask losses are 0, the classifier loss is not."""
    ours, _ = _build("v1", True)
    ours.train()
    g = torch.Generator().manual_seed(7)
    targets = [
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, h, w),
        }
        for h, w in IMAGE_SIZES
    ]
    proposals = [_boxes_in(20, size, g) for size in IMAGE_SIZES]
    _, losses = ours(_features(), proposals, IMAGE_SIZES, targets, generator=torch.Generator().manual_seed(0))
    assert losses["loss_box_reg"] == 0 and losses["loss_mask"] == 0 and losses["loss_classifier"] > 0
    sum(losses.values()).backward()


def test_roi_heads_requires_targets_in_training():
    ours, _ = _build("v1", False)
    ours.train()
    with pytest.raises(ValueError, match="targets"):
        ours(_features(), [torch.zeros(1, 4)] * 3, IMAGE_SIZES)
    with pytest.raises(ValueError, match="together"):
        RoIHeads(
            MultiScaleRoIPool(NAMES, 7, 2), TwoMLPHead(8, 8), FastRCNNPredictor(8, 2), mask_head=nn.Identity()
        )


def test_batched_postprocess_equals_one_image_at_a_time():
    """Detections of a batch equal those of each image run alone (NMS groups never mix images)."""
    ours, _ = _build("v1", True)
    ours.eval()
    g = torch.Generator().manual_seed(8)
    proposals = _proposals(_targets(g), g, counts=(90, 70, 60))
    feats = _features(2)
    with torch.no_grad():
        batched, _ = ours(feats, proposals, IMAGE_SIZES)
        for i, size in enumerate(IMAGE_SIZES):
            (alone,), _ = ours({k: v[i : i + 1] for k, v in feats.items()}, [proposals[i]], [size])
            for key in ("boxes", "scores", "labels", "masks"):
                torch.testing.assert_close(batched[i][key], alone[key], atol=1e-6, rtol=1e-6)
