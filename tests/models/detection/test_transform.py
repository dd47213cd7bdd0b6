"""DetectionTransform against torchvision's GeneralizedRCNNTransform (the reference): the same padded
batch, image sizes, resized targets and postprocessed detections."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from segdet.models.detection.transform import IMAGENET_MEAN, IMAGENET_STD, DetectionTransform

SIZES = [(97, 130), (120, 83), (64, 64)]  # (h, w): landscape, portrait, square; odd sizes


def _pair(min_size=80, max_size=112):
    ours = DetectionTransform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD, 32)
    tv = GeneralizedRCNNTransform(min_size, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD), 32)
    return ours, tv


def _targets(g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    targets = []
    for (h, w), n in zip(SIZES, (3, 0, 1), strict=True):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w / 2, h / 2])
        boxes = torch.cat((xy, xy + torch.rand(n, 2, generator=g) * 20 + 5), dim=1)
        masks = (torch.rand(n, h, w, generator=g) > 0.5).to(torch.uint8)
        targets.append({"boxes": boxes, "labels": torch.arange(n), "masks": masks})
    return targets


@pytest.mark.parametrize("training", [False, True])
def test_batch_and_targets_equal_torchvision(training):
    """Padded batch (bit-identical), image sizes, resized boxes (bit-identical) and masks (equal) for
    images of different sizes where min_size or max_size decides the scale; inputs not modified."""
    ours, tv = _pair()
    ours.train(training), tv.train(training)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g) for h, w in SIZES]
    targets = _targets(g)
    copies = [{k: v.clone() for k, v in t.items()} for t in targets]
    got, got_targets = ours(images, targets)
    expected, expected_targets = tv([im.clone() for im in images], copies)
    assert torch.equal(got.tensors, expected.tensors)
    assert got.tensors.shape[-2] % 32 == 0 and got.tensors.shape[-1] % 32 == 0
    assert got.image_sizes == [tuple(s) for s in expected.image_sizes]
    for a, b, original in zip(got_targets, expected_targets, targets, strict=True):
        assert torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(a["masks"], b["masks"]) and a["masks"].dtype == torch.uint8
        assert a["masks"].shape[-2:] == b["masks"].shape[-2:]
        assert a["boxes"] is not original["boxes"]  # new dicts and tensors, inputs untouched


def test_pre_batched_tensor_equals_list_of_images():
    """An N x 3 x H x W tensor gives the same batch (bit-identical) as the list of its images in
    torchvision's transform."""
    ours, tv = _pair(100, 150)
    ours.eval(), tv.eval()
    images = torch.rand(2, 3, 75, 99, generator=torch.Generator().manual_seed(1))
    got, _ = ours(images)
    expected, _ = tv(list(images))
    assert torch.equal(got.tensors, expected.tensors)
    assert got.image_sizes == [tuple(s) for s in expected.image_sizes]


def test_postprocess_equals_torchvision():
    """Boxes scaled back per axis (bit-identical) and m x m masks pasted into the original image
    (torchvision's paste_masks_in_image, to 2e-5), for images with and without detections."""
    ours, tv = _pair()
    ours.eval(), tv.eval()
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, h, w, generator=g) for h, w in SIZES]
    batch, _ = ours(images)
    detections = []
    for (h, w), n in zip(batch.image_sizes, (5, 0, 3), strict=True):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        boxes = torch.cat((xy, xy + torch.rand(n, 2, generator=g) * 30 + 2), dim=1)
        detections.append(
            {
                "boxes": boxes,
                "scores": torch.rand(n, generator=g),
                "labels": torch.arange(n),
                "masks": torch.rand(n, 1, 28, 28, generator=g),
            }
        )
    clone = [{k: v.clone() for k, v in d.items()} for d in detections]
    got = ours.postprocess(detections, batch.image_sizes, SIZES)
    expected = tv.postprocess(clone, batch.image_sizes, SIZES)
    for a, b, size in zip(got, expected, SIZES, strict=True):
        assert torch.equal(a["boxes"], b["boxes"])
        assert a["masks"].shape == (len(b["boxes"]), 1, *size)
        torch.testing.assert_close(a["masks"], b["masks"], atol=2e-5, rtol=0)
        assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["labels"], b["labels"])


def test_multiscale_training_draws_from_min_size():
    """With a tuple min_size, training draws each image's shorter side from it (reproducibly with a
    seeded generator); evaluation uses the last value."""
    ours = DetectionTransform((64, 96, 128), 1000)
    images = [torch.rand(3, 50, 70) for _ in range(8)]
    sides = []
    for seed in (0, 0, 1):
        batch, _ = ours.train()(images, None, torch.Generator().manual_seed(seed))
        sides.append([min(s) for s in batch.image_sizes])
    assert sides[0] == sides[1] and set(sides[0]) <= {64, 96, 128} and len(set(sides[0] + sides[2])) > 1
    batch, _ = ours.eval()(images)
    assert {min(s) for s in batch.image_sizes} == {128}


def test_rejects_integer_images():
    """Images must be float in [0, 1] (as torchvision)."""
    with pytest.raises(TypeError):
        DetectionTransform(64, 100)([torch.zeros(3, 10, 10, dtype=torch.uint8)])


@pytest.mark.parametrize("batched", [False, True])
def test_extreme_aspect_ratio_keeps_one_pixel(batched):
    """A 1 x 5000 image (longer side over ``max_size`` times the shorter) resizes to 1 x 1333, not to
    0 x 1333, which ``F.interpolate`` refuses (torchvision's transform raises there: a crash on a valid
    image). Reference: the resize rule ``s = 1333 / 5000`` on the long side, exact sizes; the box's x
    scales by ``1333 / 5000`` (float32, to 1e-6) and its y by 1, and a mask follows the image."""
    ours = DetectionTransform(800, 1333, IMAGENET_MEAN, IMAGENET_STD, 32).train()
    image = torch.rand(3, 1, 5000)
    target = {
        "boxes": torch.tensor([[1000.0, 0.0, 3000.0, 1.0]]),
        "labels": torch.tensor([0]),
        "masks": torch.ones(1, 1, 5000, dtype=torch.uint8),
    }
    batch, targets = ours(image[None] if batched else [image], [target])
    assert batch.image_sizes == [(1, 1333)]
    assert tuple(batch.tensors.shape) == (1, 3, 32, 1344)
    expected = torch.tensor([[1000.0 * 1333 / 5000, 0.0, 3000.0 * 1333 / 5000, 1.0]])
    torch.testing.assert_close(targets[0]["boxes"], expected, rtol=1e-6, atol=1e-4)
    assert tuple(targets[0]["masks"].shape) == (1, 1, 1333)
