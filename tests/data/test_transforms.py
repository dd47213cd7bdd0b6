"""Transforms keep images, boxes, instance masks and semantic masks aligned.

References, per test: hand-computed geometry (flip ``x1' = W - x2``, resize ``x' = x * new / old``,
Detectron2's shortest-edge sizes, YOLO letterbox scale and padding), ``torch.flip`` and slicing of the
original arrays (exact), ``segdet.data.masks.bitmap_box`` (exact), the ImageNet normalisation formula
(1e-6). Samples come from the synthetic shapes generator, whose ground truth is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segdet.data import shapes, target_transforms
from segdet.data import transforms as T
from segdet.data.dataset import SegDetDataset
from segdet.data.masks import bitmap_box

SEM_VALUES = set(range(len(shapes.CLASSES) + 1))


def make_sample(index: int = 0, size=64, noise_image: bool = False, seed: int = 0):
    """A shapes image as SegDetDataset yields it before conversion: uint8 image, boxes, masks, labels,
    iscrowd/difficult (given distinct patterns so filtering can be followed), semantic mask."""
    s = shapes.render(index, seed=seed, size=size, min_objects=4, max_objects=8)
    h, w = s.semantic.shape
    image = torch.from_numpy(s.image).permute(2, 0, 1).contiguous()
    if noise_image:  # a random image, so a crop's position can be found by matching
        image = torch.randint(
            0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(index)
        )
    n = len(s.labels)
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(s.boxes).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
        ),
        "labels": torch.tensor(s.labels, dtype=torch.int64),
        "masks": tv_tensors.Mask(torch.from_numpy(np.stack(s.masks).astype(np.uint8))),
        "iscrowd": torch.arange(n) % 2 == 0,
        "difficult": torch.arange(n) % 3 == 0,
        "image_id": index,
        "semantic": T.SemanticMask(torch.from_numpy(s.semantic.astype(np.int64))),
    }
    return tv_tensors.Image(image), target


def assert_aligned(image, target, box_tol: float | None):
    """Per-object fields have one entry per box; each mask lies inside its box grown by 1 px; with
    ``box_tol``, each box is also within ``box_tol`` of its mask's tight box.

    Only containment holds in general: shrinking with nearest neighbours can skip a thin tip's pixels
    entirely, so a mask may end well inside its (exactly scaled) box, never outside it.
    """
    n = len(target["boxes"])
    h, w = image.shape[-2:]
    assert target["labels"].shape == target["iscrowd"].shape == target["difficult"].shape == (n,)
    assert target["masks"].shape == (n, h, w)
    assert target["semantic"].shape == (h, w)
    assert tuple(target["boxes"].canvas_size) == (h, w)
    for box, mask in zip(target["boxes"], target["masks"], strict=True):
        ref = bitmap_box(mask.numpy().astype(bool))
        assert ref is not None
        x1, y1, x2, y2 = box.tolist()
        assert ref[0] >= x1 - 1 and ref[1] >= y1 - 1 and ref[2] <= x2 + 1 and ref[3] <= y2 + 1, (box, ref)
        if box_tol is not None:
            assert torch.allclose(box.float(), torch.tensor(ref), atol=box_tol), (box, ref)


def test_horizontal_flip():
    """x1' = W - x2, x2' = W - x1, y unchanged; masks and semantic == torch.flip of the originals (exact);
    the flipped boxes equal the flipped masks' tight boxes exactly."""
    image, target = make_sample(1)
    out_image, out = v2.RandomHorizontalFlip(p=1.0)(image, target)
    w = image.shape[-1]
    b, ob = target["boxes"], out["boxes"]
    assert torch.equal(ob[:, 0], w - b[:, 2]) and torch.equal(ob[:, 2], w - b[:, 0])
    assert torch.equal(ob[:, 1], b[:, 1]) and torch.equal(ob[:, 3], b[:, 3])
    assert torch.equal(out_image, image.flip(-1))
    assert torch.equal(out["masks"], target["masks"].flip(-1))
    assert torch.equal(out["semantic"], target["semantic"].flip(-1))
    assert isinstance(out["semantic"], T.SemanticMask)
    assert_aligned(out_image, out, box_tol=0.0)


@pytest.mark.parametrize(
    ("hw", "short", "max_size", "expected"),
    [
        ((480, 640), 800, 1333, (800, 1067)),  # 640 * 800 / 480 = 1066.67
        ((100, 1000), 800, 1333, (133, 1333)),  # capped: 1333 / 1000 = 1.333, 100 * 1.333 = 133.3
        ((64, 48), 32, None, (43, 32)),  # 64 * 32 / 48 = 42.67
        ((50, 50), 75, 1333, (75, 75)),
    ],
)
def test_shortest_edge_size(hw, short, max_size, expected):
    """Detectron2's ResizeShortestEdge output shape, computed by hand."""
    assert T.shortest_edge_size(*hw, short, max_size) == expected


def _detectron2_output_shape(oldh, oldw, short_edge_length, max_size):
    """Detectron2's ``ResizeShortestEdge.get_output_shape`` (detectron2/data/transforms/
    augmentation_impl.py), transcribed verbatim."""
    h, w = oldh, oldw
    size = short_edge_length * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    neww = int(neww + 0.5)
    newh = int(newh + 0.5)
    return (newh, neww)


def test_shortest_edge_size_matches_detectron2_including_ties():
    """Exactly Detectron2's get_output_shape (transcribed above; tolerance 0 px) on a grid of sizes and
    on capped sizes where ``h * max_size / w`` is exactly ``k + 0.5`` (210 x 620: 451.5), where the
    floating-point order of operations decides the rounding. Sides Detectron2 would make 0 are 1 here
    (documented)."""
    cases = [(210, 620, 800, 1333), (216, 688, 800, 1333), (222, 372, 800, 1333), (3, 62, 800, 1333)]
    cases += [
        (h, w, s, m) for h in range(1, 160, 3) for w in range(1, 400, 7) for s, m in [(32, 50), (17, 40)]
    ]
    for h, w, s, m in cases:
        expected = tuple(max(1, v) for v in _detectron2_output_shape(h, w, s, m))
        assert T.shortest_edge_size(h, w, s, m) == expected, (h, w, s, m)
        assert T.shortest_edge_size(w, h, s, m) == expected[::-1], (w, h, s, m)


@pytest.mark.parametrize(("min_size", "max_size"), [(96, 1333), (40, 1333), (100, 120)])
def test_resize_scales_boxes_exactly_and_masks_follow(min_size, max_size):
    """Boxes scale exactly by (new_w / w, new_h / h); masks (nearest) keep their boxes within 1 px;
    semantic values stay in the original set; the image has the expected size."""
    image, target = make_sample(2, size=(64, 80))
    out_image, out = T.ResizeShortestEdge(min_size, max_size)(image, target)
    nh, nw = T.shortest_edge_size(64, 80, min_size, max_size)
    assert out_image.shape == (3, nh, nw)
    scale = torch.tensor([nw / 80, nh / 64, nw / 80, nh / 64])
    assert torch.allclose(out["boxes"], target["boxes"] * scale, atol=1e-5)
    assert set(out["semantic"].unique().tolist()) <= set(target["semantic"].unique().tolist())
    assert out["semantic"].dtype == torch.int64
    # Enlarging keeps every mask pixel, so the mask's box is within 1 px of the scaled box.
    assert_aligned(out_image, out, box_tol=1.0 if nh >= 64 else None)


def test_resize_shortest_edge_draws_every_choice():
    """With several sizes, each call uses one of them, and 60 calls see all of them."""
    image, target = make_sample(3)
    t = T.ResizeShortestEdge((32, 48, 80), 1333)
    torch.manual_seed(0)
    seen = {min(t(image, target)[0].shape[-2:]) for _ in range(60)}
    assert seen == {32, 48, 80}


def _find_offset(big: torch.Tensor, crop: torch.Tensor) -> tuple[int, int]:
    ch, cw = crop.shape[-2:]
    for top in range(big.shape[-2] - ch + 1):
        for left in range(big.shape[-1] - cw + 1):
            if torch.equal(big[:, top : top + ch, left : left + cw], crop):
                return top, left
    raise AssertionError("crop not found in the image")


@pytest.mark.parametrize("index", range(6))
def test_random_crop_keeps_exactly_the_objects_left_in_the_crop(index):
    """Crop 32 of 64: the crop's position is found in the image; masks and semantic equal the slices of
    the originals (exact); kept objects are exactly those with pixels left in the crop, with their
    labels, iscrowd and difficult; each box equals its cropped mask's tight box (exact) and lies in the
    crop."""
    image, target = make_sample(index, noise_image=True, seed=4)
    torch.manual_seed(index)
    out_image, out = T.random_crop(32)(image, target)
    top, left = _find_offset(image, out_image)
    window = (slice(top, top + 32), slice(left, left + 32))
    cropped = target["masks"][:, window[0], window[1]]
    keep = cropped.flatten(1).bool().any(dim=1)
    assert torch.equal(out["masks"], cropped[keep])
    assert torch.equal(out["semantic"], target["semantic"][window])
    for key in ("labels", "iscrowd", "difficult"):
        assert torch.equal(out[key], target[key][keep])
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= 32).all()
    assert_aligned(out_image, out, box_tol=0.0)


def test_random_crop_without_recompute_clips_boxes():
    """recompute_boxes=False: kept boxes are the originals shifted by the crop offset and clipped to it
    (v2.ClampBoundingBoxes), exactly; boxes clipped to nothing are removed."""
    image, target = make_sample(7, noise_image=True, seed=4)
    torch.manual_seed(1)
    out_image, out = T.random_crop(40, recompute_boxes=False)(image, target)
    top, left = _find_offset(image, out_image)
    shifted = target["boxes"] - torch.tensor([left, top, left, top])
    clipped = shifted.clamp(0, 40)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= 1) & ((clipped[:, 3] - clipped[:, 1]) >= 1)
    assert torch.equal(out["boxes"].as_subclass(torch.Tensor), clipped[keep])
    assert torch.equal(out["labels"], target["labels"][keep])


def test_random_crop_pads_small_images_with_the_right_values():
    """A 24 px image cropped to 40 is padded: every padded pixel (where the image's pixels are not)
    holds 0 in instance masks and 255 in the semantic mask, never a class value."""
    image, target = make_sample(0, size=24)
    out_image, out = T.random_crop(40)(image, target)
    assert out_image.shape == (3, 40, 40)
    top, left = _find_offset(out_image, image)
    inside = torch.zeros(40, 40, dtype=torch.bool)
    inside[top : top + 24, left : left + 24] = True
    assert (out["semantic"][~inside] == 255).all()
    assert torch.equal(out["semantic"][inside].reshape(24, 24), target["semantic"])
    assert (out["masks"][:, ~inside] == 0).all()
    assert (out_image[:, ~inside] == 0).all()


@pytest.mark.parametrize(
    ("hw", "size", "scale", "pad", "new_hw"),
    [
        ((48, 64), 96, (1.5, 1.5), (0, 12), (72, 96)),  # s = min(96/48, 96/64) = 1.5
        ((64, 40), 80, (1.25, 1.25), (15, 0), (80, 50)),  # s = 1.25, pad_left = (80 - 50) // 2
        ((50, 70), 64, (64 / 70, 46 / 50), (0, 9), (46, 64)),  # round(50 * 64/70) = 46, (64-46)//2 = 9
    ],
)
def test_letterbox(hw, size, scale, pad, new_hw):
    """Output exactly size x size; the image placed at (pad_left, pad_top) is the plain resize; padding
    is 114 (image), 0 (instance masks), 255 (semantic); boxes map as x * scale + pad; the record in the
    target is (scale, pad, original size); unletterbox_boxes inverts the box mapping to 1e-4."""
    image, target = make_sample(4, size=hw)
    out_image, out = T.Letterbox(size)(image, target)
    lb = out["letterbox"]
    assert lb.scale == pytest.approx(scale) and lb.pad == pad and lb.size == hw
    assert out_image.shape == (3, size, size)
    nh, nw = new_hw
    left, top = pad
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[top : top + nh, left : left + nw] = True
    assert (out_image[:, ~inside] == 114).all()
    assert (out["masks"][:, ~inside] == 0).all()
    assert (out["semantic"][~inside] == 255).all()
    resized_image, resized = T.ResizeShortestEdge(min(new_hw), None)(image, target)
    assert resized_image.shape[-2:] == new_hw
    assert torch.equal(out_image[:, top : top + nh, left : left + nw], resized_image)
    assert torch.equal(out["semantic"][top : top + nh, left : left + nw], resized["semantic"])
    sx, sy = scale
    expected = target["boxes"] * torch.tensor([sx, sy, sx, sy]) + torch.tensor([left, top, left, top])
    assert torch.allclose(out["boxes"], expected, atol=1e-4)
    back = T.unletterbox_boxes(out["boxes"], lb.scale, lb.pad, lb.size)
    assert torch.allclose(back, target["boxes"].as_subclass(torch.Tensor), atol=1e-4)
    assert_aligned(out_image, out, box_tol=1.0 if nh >= hw[0] else None)


def test_unletterbox_boxes_hand_values():
    """(x' - pad_x) / s, (y' - pad_y) / s with a scalar scale; clipping to the original size."""
    boxes = torch.tensor([[12.0, 30.0, 42.0, 60.0], [-10.0, 0.0, 400.0, 10.0]])
    got = T.unletterbox_boxes(boxes, 2.0, (2, 10), size=(100, 150))
    assert torch.allclose(got, torch.tensor([[5.0, 10.0, 20.0, 25.0], [0.0, 0.0, 150.0, 0.0]]))


def test_sanitize_leaves_semantic_alone_when_boxes_equal_height():
    """With as many boxes as the semantic mask has rows, removing a degenerate box must not touch the
    semantic mask (plain v2.SanitizeBoundingBoxes would index its rows) but must drop that object's
    label, mask, iscrowd and difficult."""
    h, w = 3, 5
    boxes = tv_tensors.BoundingBoxes(
        [[0, 0, 2, 2], [1, 1, 1, 3], [2, 0, 5, 3]], format="XYXY", canvas_size=(h, w)
    )
    sem = T.SemanticMask(torch.arange(h * w).reshape(h, w) % 4)
    masks = tv_tensors.Mask(torch.ones(3, h, w, dtype=torch.uint8) * torch.arange(3).view(3, 1, 1))
    target = {
        "boxes": boxes,
        "labels": torch.tensor([0, 1, 2]),
        "masks": masks,
        "iscrowd": torch.tensor([False, True, False]),
        "difficult": torch.tensor([True, False, False]),
        "semantic": sem,
    }
    _, out = T.SanitizeTargets()(torch.zeros(3, h, w), target)
    assert torch.equal(out["semantic"], sem)
    assert out["labels"].tolist() == [0, 2]
    assert out["iscrowd"].tolist() == [False, False] and out["difficult"].tolist() == [True, False]
    assert out["masks"][:, 0, 0].tolist() == [0, 2]


def test_mask_boxes_matches_bitmap_box():
    """BoxesFromMasks' tight boxes == segdet.data.masks.bitmap_box on every shapes mask (exact); an empty
    mask gives (0, 0, 0, 0)."""
    s = shapes.render(9, seed=0, size=(40, 56), min_objects=6, max_objects=8)
    masks = torch.from_numpy(np.stack([*s.masks, np.zeros_like(s.masks[0])]))
    got = target_transforms._mask_boxes(masks)
    assert got[:-1].tolist() == [list(bitmap_box(m)) for m in s.masks]
    assert got[-1].tolist() == [0, 0, 0, 0]
    # on the masks' own device (GPU-side augmentation): "meta" stands in for a GPU here
    assert target_transforms._mask_boxes(masks.to("meta")).device.type == "meta"


def test_segmentation_eval_normalises():
    """Output = (uint8 / 255 - mean) / std per channel (ImageNet), to 1e-6; labels untouched."""
    image, target = make_sample(5)
    out_image, out = T.segmentation_eval()(image, target)
    mean, std = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(out_image, (image.float() / 255 - mean) / std, atol=1e-6)
    assert torch.equal(out["semantic"], target["semantic"])


PRESETS = {
    "detection_train": lambda: T.detection_train(
        min_size=(48, 64, 80), max_size=100, crop_size=40, photometric=True
    ),
    "detection_eval": lambda: T.detection_eval(72, 100),
    "detection_train_model_resizes": lambda: T.detection_train(None, photometric=True),
    "segmentation_train": lambda: T.segmentation_train(48, scale_range=(0.5, 1.5)),
    "segmentation_eval": lambda: T.segmentation_eval(50),
}


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory):
    return shapes.generate(tmp_path_factory.mktemp("shapes"), 4, seed=1, size=64)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_end_to_end(shapes_dataset, name):
    """Every preset on SegDetDataset samples: float image of the expected size, fields aligned (each
    mask inside its box grown by 1 px; nearest resizing moves mask edges by at most half a pixel),
    semantic values within the original classes ∪ {255}, a SemanticMask still."""
    ds = SegDetDataset(shapes_dataset, PRESETS[name](), masks=True, semantic=True)
    torch.manual_seed(0)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.dtype == torch.float32
        if name == "detection_train_model_resizes":  # segdet train's detection preset: no resize
            assert image.shape[-2:] == (64, 64)
        if name == "segmentation_train":
            assert image.shape[-2:] == (48, 48)
        assert set(target["semantic"].unique().tolist()) <= SEM_VALUES | {255}
        assert isinstance(target["semantic"], T.SemanticMask)
        assert_aligned(image, target, box_tol=None)
        if name in ("detection_eval", "segmentation_eval", "detection_train_model_resizes"):
            assert len(target["boxes"]) == len(shapes_dataset.images[i].instances)
