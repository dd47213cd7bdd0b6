"""YOLACT: Fast NMS against its definition and against torchvision's NMS, the mask assembly, crop and
resampling against ``F.interpolate``, the mask and semantic losses against hand-computed cases, the ignored
anchors of the shared SSD loss, and the builders of the MODELS table (training, background-only images,
inference, folding)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from segdet.models import MODELS, build
from segdet.models.detection.matcher import BETWEEN_THRESHOLDS
from segdet.models.detection.ssd.loss import ssd_loss
from segdet.models.detection.yolact.fast_nms import fast_nms
from segdet.models.detection.yolact.loss import masks_on_grid, semantic_segmentation_loss, yolact_mask_loss
from segdet.models.detection.yolact.model import masks_in_image, resample_region
from segdet.models.detection.yolact.protonet import assemble_masks, box_region, box_rows_and_columns
from segdet.ops import BoxCoder


def random_boxes(n: int, generator: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_fast_nms_hand_case():
    """A > B > C by score; A overlaps B (IoU 0.8), B overlaps C (0.8), A and C do not overlap. NMS keeps
    A and C (B, which would remove C, is itself removed); Fast NMS keeps only A (paper sec. 3.3)."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [2.0, 0, 12, 10], [4.0, 0, 14, 10]]])
    # IoU(A, B) = 80 / 120, IoU(B, C) = 80 / 120, IoU(A, C) = 60 / 140.
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert fast_nms(boxes, valid, 0.5).tolist() == [[True, False, False]]
    assert torchvision.ops.nms(boxes[0], torch.tensor([3.0, 2, 1]), 0.5).tolist() == [0, 2]
    assert fast_nms(boxes, valid, 0.7).tolist() == [[True, True, True]]
    # A padding slot (last) suppresses nothing and is never kept.
    assert fast_nms(boxes, torch.tensor([[True, True, False]]), 0.7).tolist() == [[True, True, False]]


@pytest.mark.parametrize("seed", range(5))
def test_fast_nms_is_its_definition_and_a_subset_of_nms(seed):
    """Reference 1, the definition by loops: box j is kept iff no valid box i < j has IoU > t. Reference 2,
    ``torchvision.ops.nms``: Fast NMS keeps a subset of what it keeps. Exact (booleans)."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.stack([random_boxes(30, g) for _ in range(4)])  # 4 groups, by decreasing score
    valid = torch.ones(4, 30, dtype=torch.bool)
    valid[1, 20:] = False
    kept = fast_nms(boxes, valid, 0.4)
    scores = torch.arange(30, 0, -1).float()
    for b in range(4):
        iou = torchvision.ops.box_iou(boxes[b], boxes[b])
        expected = [
            bool(valid[b, j]) and all(not (valid[b, i] and iou[i, j] > 0.4) for i in range(j))
            for j in range(30)
        ]
        assert kept[b].tolist() == expected
        count = int(valid[b].sum())
        nms = set(torchvision.ops.nms(boxes[b, :count], scores[:count], 0.4).tolist())
        assert set(torch.nonzero(kept[b]).squeeze(1).tolist()) <= nms
    assert kept.sum() < 4 * 30  # the boxes do overlap: the test can fail


def test_box_region_and_assembly():
    """Cells overlapping the box, hand-counted: box (3, 2, 9, 5) on a 4-px grid overlaps columns 0-2
    (spans 0-12) and rows 0-1 (0-8); a box inside one cell still owns that cell. ``P c`` by hand."""
    region = box_region(torch.tensor([[3.0, 2, 9, 5], [5.0, 5, 6, 6]]), (3, 4), 4.0)
    expected = torch.zeros(2, 3, 4, dtype=torch.bool)
    expected[0, 0:2, 0:3] = True
    expected[1, 1, 1] = True
    assert torch.equal(region, expected)
    prototypes = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3)
    coefficients = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    masks = assemble_masks(prototypes, coefficients)
    torch.testing.assert_close(masks[0], prototypes[0])
    torch.testing.assert_close(masks[1], 0.5 * prototypes[0] - prototypes[1])


def test_masks_in_image_equal_interpolate_then_crop():
    """Reference: ``F.interpolate(bilinear, align_corners=False)`` of the grid to the padded batch's size,
    cut to the image, zero outside the box; for an image kept at its size (resized = original) inside a
    larger padded batch, the single ``roi_align`` sampling equals it. Tolerance 1e-5."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 16, 20, generator=g)  # grid of a 64 x 80 padded batch, stride 4
    boxes = torch.tensor([[0.0, 0, 70, 50], [10.0, 5, 30, 40], [33.5, 12.2, 61.7, 48.9]])
    got = masks_in_image(masks, boxes, (50, 70), (64, 80), (50, 70))
    up = F.interpolate(masks[None], size=(64, 80), mode="bilinear", align_corners=False)[0, :, :50, :70]
    expected = up * box_region(boxes, (50, 70), 1.0)
    assert got.shape == (3, 1, 50, 70)
    torch.testing.assert_close(got[:, 0], expected, atol=1e-5, rtol=0)
    # Resampled to an original image twice as large: the same values at the matching pixel centres.
    double = masks_in_image(masks, boxes * 2, (50, 70), (64, 80), (100, 140))
    reference = F.interpolate(up[None], size=(100, 140), mode="bilinear", align_corners=False)[0]
    inside = box_region(boxes * 2, (100, 140), 1.0)
    assert (double[:, 0][~inside] == 0).all()
    # Two resamplings (reference) against one (ours): close, not equal, inside the boxes.
    assert (double[:, 0] - reference * inside).abs().max() < 0.1


@pytest.mark.parametrize(
    ("extent", "size"), [((12.5, 15.5), (50, 70)), ((9.25, 16.0), (91, 157)), ((16.0, 7.25), (20, 9))]
)
def test_region_resampling_equals_roi_align(extent, size):
    """``resample_region`` (the any-size export's path of ``masks_in_image``), without and with a crop.
    Reference:
    torchvision.ops.roi_align of the region (``aligned=True``, one sample per bin: the single
    sampling ``masks_in_image`` defines, and its eager path); up- and downsampling, regions ending
    inside a grid cell. Tolerance 1e-6 (the same bilinear weights, summed in another order)."""
    from torchvision.ops import roi_align

    masks = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(1))
    region = torch.tensor([[0.0, 0.0, 0.0, extent[1], extent[0]]])
    expected = roi_align(masks[None], region, size, 1.0, 1, aligned=True)[0]
    got = resample_region(masks, extent, size)
    assert got.shape == (4, *size)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # with the boxes' crop folded into the weights: box_region's product, as masks_in_image applies it
    h, w = size
    boxes = torch.tensor(
        [[0.0, 0, w, h], [1.0, 2, w / 2, h / 3], [w / 3, h / 4, w - 1, h - 0.5], [0, 0, 0, 0]]
    )
    rows, columns = box_rows_and_columns(boxes, size, 1.0)
    cropped = resample_region(masks, extent, size, rows, columns)
    torch.testing.assert_close(cropped, expected * box_region(boxes, size, 1.0), atol=1e-6, rtol=0)


def test_mask_targets_on_the_grid():
    """Area averaging then > 1/2: a 6 x 6 square at (2, 2) covers the cells (0, 0), (0, 1), (1, 0),
    (1, 1) of a 4-px grid by 4, 8, 8 and 16 of their 16 pixels: only (1, 1) is set; the padding (the
    image is 10 x 12 in a 16 x 16 batch) adds nothing."""
    masks = torch.zeros(1, 10, 12, dtype=torch.uint8)
    masks[0, 2:8, 2:8] = 1
    grid = masks_on_grid(masks, (16, 16), (4, 4))
    expected = torch.zeros(1, 4, 4)
    expected[0, 1, 1] = 1.0
    assert torch.equal(grid, expected)


def test_mask_loss_hand_computed():
    """One prototype of constant value 2 and coefficient 0.5: every logit is 1. One object (box 0-8 x
    0-4 on a 4-px grid: cells row 0, columns 0-1) whose mask covers cell (0, 0) only. Loss = mean over
    the 2 box cells of BCE(σ(1), t) = (softplus(-1) + softplus(1)) / 2; other anchors carry none."""
    prototypes = torch.full((1, 1, 4, 4), 2.0, requires_grad=True)
    coefficients = torch.zeros(1, 5, 1)
    coefficients[0, 3] = 0.5
    matched = torch.tensor([[-1, -1, BETWEEN_THRESHOLDS, 0, -1]])
    masks = torch.zeros(1, 16, 16, dtype=torch.uint8)
    masks[0, 0:4, 0:4] = 1
    target = {"boxes": torch.tensor([[0.0, 0.0, 8.0, 4.0]]), "masks": masks}
    loss = yolact_mask_loss(prototypes, coefficients, matched, [target], (16, 16))
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0))) / 2
    assert abs(float(loss.detach()) - expected) < 1e-6
    loss.backward()  # through the prototypes
    assert prototypes.grad.abs().sum() > 0
    # No foreground: zero, still connected to its inputs.
    none = yolact_mask_loss(prototypes, coefficients, torch.full((1, 5), -1), [target], (16, 16))
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_mask_loss_trains_at_most_max_masks():
    """With 6 foreground anchors and ``max_masks`` 2, two are drawn (seeded): the loss is the mean of 2
    of the 6 per-anchor losses, each anchor's logit being its own coefficient."""
    prototypes = torch.ones(1, 1, 2, 2)
    coefficients = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1)
    masks = torch.ones(1, 8, 8, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[0.0, 0, 8, 8]]), "masks": masks}
    per_anchor = [math.log1p(math.exp(-c)) for c in range(6)]
    loss = yolact_mask_loss(
        prototypes,
        coefficients,
        torch.zeros(1, 6, dtype=torch.int64),
        [target],
        (8, 8),
        2,
        torch.Generator().manual_seed(0),
    )
    pairs = [(a + b) / 2 for i, a in enumerate(per_anchor) for b in per_anchor[i + 1 :]]
    assert min(abs(float(loss) - p) for p in pairs) < 1e-6
    assert abs(float(loss) - sum(per_anchor) / 6) > 1e-3


def test_semantic_loss_hand_computed():
    """Two classes, zero logits (BCE = log 2 per cell and class); the target is the union of class 1's two
    overlapping masks, class 0 empty. With zero logits the loss is K log 2 whatever the targets; with
    logits equal to the target's ±10 it is ~0, so targets are exactly the union."""
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, :4, :4] = 1
    masks[1, 2:6, 2:6] = 1
    target = {"labels": torch.tensor([2, 2]), "masks": masks}  # label offset 1: class index 1
    loss = semantic_segmentation_loss(torch.zeros(1, 2, 8, 8), [target], (8, 8), label_offset=1)
    assert abs(float(loss) - 2 * math.log(2.0)) < 1e-6
    union = (masks[0] | masks[1]).float()
    logits = torch.stack([torch.full((8, 8), -10.0), union * 20 - 10])[None]
    assert float(semantic_segmentation_loss(logits, [target], (8, 8), label_offset=1)) < 1e-3


def test_ssd_loss_leaves_ignored_anchors_out_of_the_hard_negatives():
    """One foreground anchor (3 negatives allowed, 4 background anchors): the anchor between the matcher's
    thresholds has the highest background loss but is neither positive nor negative. Reference: the
    cross-entropies summed by hand."""
    logits = torch.zeros(1, 6, 2)
    logits[0, :, 1] = torch.tensor([0.0, 5.0, 1.0, 2.0, 3.0, -1.0])  # anchor 1: highest object logit
    matched = torch.tensor([[0, BETWEEN_THRESHOLDS, -1, -1, -1, -1]])
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}
    anchors = torch.tensor([[0.0, 0, 10, 10]] * 6)
    losses = ssd_loss(logits, torch.zeros(1, 6, 4), anchors, matched, [target], BoxCoder((10.0, 10, 5, 5)))
    ce = F.cross_entropy(logits[0], torch.tensor([1, 0, 0, 0, 0, 0]), reduction="none")
    expected = ce[0] + ce[4] + ce[3] + ce[2]  # the 3 hardest real negatives, not the ignored anchor 1
    torch.testing.assert_close(losses["classification"], expected, rtol=1e-6, atol=0)
    # Fewer real negatives (1) than allowed (3): the ranking's last places (the foreground and the
    # ignored anchor) fill the quota, as in torchvision's SSD loss, except the ignored one. The
    # foreground anchor then counts twice (torchvision's behaviour, kept for its parity).
    three = ssd_loss(
        logits[:, :3], torch.zeros(1, 3, 4), anchors[:3], matched[:, :3], [target], BoxCoder((10.0, 10, 5, 5))
    )
    torch.testing.assert_close(three["classification"], 2 * ce[0] + ce[2], rtol=1e-6, atol=0)


SMALL = {
    "backbone": "resnet18",
    "fpn_channels": 32,
    "protonet_channels": 32,
    "num_prototypes": 8,
    "min_size": 96,
    "max_size": 128,
    "anchor_sizes": [[12], [24], [48], [96], [192]],
}


def yolact_targets() -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 100, 90, generator=g)]
    mask = torch.zeros(1, 96, 128, dtype=torch.uint8)
    mask[0, 20:60, 30:90] = 1
    targets = [
        {"boxes": torch.tensor([[30.0, 20, 90, 60]]), "labels": torch.tensor([2]), "masks": mask},
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 100, 90, dtype=torch.uint8),
        },
    ]
    return images, targets


@pytest.mark.parametrize("name", ["yolact_resnet50_fpn", "yolact_resnet101_fpn"])
def test_yolact_architecture(name):
    """The paper's design (built on the meta device): 3 anchors per location on 5 levels, 32
    prototypes, ``K + 1`` softmax outputs, 550 px images, 100 detections, Fast NMS."""
    assert name in MODELS
    with torch.device("meta"):
        model = build(name, num_classes=80)
    assert model.anchor_generator.num_anchors_per_location() == [3] * 5
    assert model.protonet.num_prototypes == 32
    assert model.head.cls_logits.out_channels == 3 * 81 and model.head.coefficients.out_channels == 3 * 32
    s = model.settings
    assert (s.min_size, s.max_size, s.detections_per_img, s.nms, s.topk_candidates) == (
        550,
        550,
        100,
        "fast",
        200,
    )
    with pytest.raises(ValueError, match="nms"):
        build(name, num_classes=2, nms="soft")


def test_yolact_trains_on_an_object_and_a_background_image():
    """Finite, positive losses; every trainable parameter gets a gradient (the background-only image and
    the training-only semantic head included: DDP needs all of them); targets without masks are refused."""
    torch.manual_seed(0)
    model = build("yolact_resnet50_fpn", num_classes=3, **SMALL).train()
    images, targets = yolact_targets()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "mask", "semantic"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    with pytest.raises(ValueError, match="masks"):
        model(images, [{k: v for k, v in t.items() if k != "masks"} for t in targets])


def test_yolact_detections_and_masks():
    """Eval: at most 100 detections per image, labels in 0..K-1, boxes inside the original image, masks
    ``[D, 1, H, W]`` probabilities at the original size, zero outside their box; the standard NMS keeps
    a superset of Fast NMS's detections (same candidates)."""
    torch.manual_seed(0)
    model = build("yolact_resnet50_fpn", num_classes=3, score_thresh=0.0, **SMALL).eval()
    images, _ = yolact_targets()
    with torch.no_grad():
        fast = model(images)
        model.settings = type(model.settings)(**{**vars(model.settings), "nms": "standard"})
        standard = model(images)
    for det, image, other in zip(fast, images, standard, strict=True):
        h, w = image.shape[-2:]
        assert 0 < len(det["boxes"]) <= 100 and det["masks"].shape == (len(det["boxes"]), 1, h, w)
        assert int(det["labels"].max()) < 3 and float(det["boxes"][:, 2].max()) <= w
        assert float(det["masks"].min()) >= 0 and float(det["masks"].max()) <= 1
        outside = ~box_region(det["boxes"], (h, w), 1.0)
        assert (det["masks"][:, 0][outside] == 0).all()
        assert len(other["boxes"]) >= len(det["boxes"])
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_fused_yolact_keeps_detections(detector_helpers, paired_detections):
    """``fuse_for_inference`` (BatchNorm folded; NNPACK where faster) on a model with non-trivial
    BatchNorm statistics: the same detections (paired, 1e-4) and masks (1e-4)."""
    structured_image, randomize_batchnorm = detector_helpers
    torch.manual_seed(0)
    model = build("yolact_resnet50_fpn", num_classes=3, score_thresh=0.0, **SMALL).eval()
    g = torch.Generator().manual_seed(1)
    images = [structured_image(96, 128, g), structured_image(100, 90, g)]
    randomize_batchnorm(model, images, 2)
    with torch.no_grad():
        plain = model(images)
        fused = model.fuse_for_inference()(images)
    paired_detections(fused, plain, atol=1e-4, label_shift=0)
    for a, b in zip(fused, plain, strict=True):
        # Each fused detection's mask against the mask of its nearest plain detection of the same label.
        distance = torch.maximum(
            torch.cdist(a["boxes"].double(), b["boxes"].double(), p=float("inf")),
            (a["scores"].double()[:, None] - b["scores"].double()[None, :]).abs(),
        )
        distance[a["labels"][:, None] != b["labels"][None, :]] = float("inf")
        nearest = distance.argmin(dim=1)
        torch.testing.assert_close(a["masks"], b["masks"][nearest], atol=1e-4, rtol=0)


def test_fast_nms_on_the_groups_with_candidates_only():
    """Running Fast NMS on the non-empty (image, class) groups cut to the longest one's count keeps the
    same candidates as on every group at full length (reference: :func:`fast_nms` on all). Exact."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.stack([random_boxes(12, g) for _ in range(2 * 3)]).reshape(2, 3, 12, 4)
    counts = torch.tensor([[0, 5, 12], [3, 0, 0]])
    valid = torch.arange(12)[None, None, :] < counts[..., None]
    with torch.device("meta"):
        model = build("yolact_resnet50_fpn", num_classes=3, nms_thresh=0.3, **SMALL)
    got = model.fast_nms_candidates(boxes, valid)
    full = fast_nms(boxes.reshape(6, 12, 4), valid.reshape(6, 12), 0.3).reshape(-1)
    assert sorted(got.tolist()) == torch.nonzero(full).squeeze(1).tolist()
    assert 0 < len(got) < int(counts.sum())
    empty = model.fast_nms_candidates(boxes, torch.zeros_like(valid))
    assert empty.numel() == 0
