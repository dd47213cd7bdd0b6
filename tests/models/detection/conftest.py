"""Helpers of the detector tests: images with spatial structure, torchvision detectors with random
but non-degenerate weights (so that a parity test can fail), and detections compared pair by pair."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou


def structured_image(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A ``3 x H x W`` image in ``[0, 1]``: smooth blobs (coarse noise upsampled) plus fine noise, so the
    features of a randomly initialised network vary from place to place (i.i.d. noise images make every
    RoI look alike and tie the scores)."""
    coarse = torch.rand(1, 3, max(height // 16, 2), max(width // 16, 2), generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (0.8 * smooth + 0.2 * torch.rand(3, height, width, generator=generator)).clamp(0, 1)


def assert_paired_detections(
    got: list[dict],
    expected: list[dict],
    atol: float = 1e-4,
    label_shift: int = 1,
    min_count: int = 10,
    nms_swaps: int = 0,
    nms_thresh: float = 0.5,
) -> None:
    """Per image the same number of detections (more than ``min_count``), each of ours paired one to one
    with an unused one of ``expected`` of the same label (ours + ``label_shift``) whose box coordinates
    and score are closest; every pair within ``atol``. Pairing (not list order) makes the check immune to
    near-tied scores sorted differently, and distances (not IoU) cover boxes clipped to zero area.

    ``nms_swaps``: at most this many of an image's detections may instead be one box of an overlapping
    near-tied pair that NMS decided the other way. Left unpaired by the first pass, such a detection is
    paired with an unused one of the same label and score (within ``atol``) whose box overlaps it at IoU
    over ``nms_thresh``: of two such boxes NMS keeps one, and which is float rounding when their scores
    tie (a periodic image ties the scores of anchors one stride apart; a swap can chain to the next)."""
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected, strict=True):
        assert len(ours["boxes"]) == len(theirs["boxes"]) > min_count
        assert set(ours) == set(theirs)
        score_gap = (ours["scores"].double()[:, None] - theirs["scores"].double()[None, :]).abs()
        distance = torch.maximum(
            torch.cdist(ours["boxes"].double(), theirs["boxes"].double(), p=float("inf")), score_gap
        )
        other_label = (ours["labels"] + label_shift)[:, None] != theirs["labels"][None, :]
        distance[other_label] = float("inf")
        used = torch.zeros(len(theirs["boxes"]), dtype=torch.bool)
        unpaired = []
        for i in torch.argsort(ours["scores"], descending=True).tolist():
            row = distance[i].masked_fill(used, float("inf"))
            j = int(row.argmin())
            if float(row[j]) > atol:
                assert len(unpaired) < nms_swaps, (i, ours["boxes"][i].tolist(), float(row[j]))
                unpaired.append(i)
                continue
            used[j] = True
        overlap = box_iou(ours["boxes"].double(), theirs["boxes"].double()) > nms_thresh
        swappable = (score_gap <= atol) & ~other_label & overlap & ~used[None, :]
        options = {i: torch.nonzero(swappable[i]).flatten().tolist() for i in unpaired}
        assert _match_all(options), ("no near-tied overlapping boxes for", ours["boxes"][unpaired].tolist())


def _match_all(options: dict[int, list[int]]) -> bool:
    """Whether every key can take one of its ``options``, no option taken twice (a bipartite matching
    that covers the keys, by augmenting paths: a swap chain pairs each box with its neighbour, which a
    greedy choice can take from the box next in the chain)."""
    owner: dict[int, int] = {}

    def take(i: int, seen: set[int]) -> bool:
        for j in options[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or take(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(take(i, set()) for i in options)


def train_and_detect(model: nn.Module, num_classes: int, min_detections: int = 0) -> dict[str, torch.Tensor]:
    """One training forward and backward of ``model`` on two images of different sizes (three objects):
    every loss finite and positive; then its losses on the same images without any object (returned, for
    the caller's checks), and in eval mode per image at least ``min_detections`` detections, labels in
    ``0..num_classes-1``, boxes inside the original image."""
    g = torch.Generator().manual_seed(0)
    sizes = [(96, 128), (120, 80)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 60, 50], [70, 40, 120, 90]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 5, 70, 100]]), "labels": torch.tensor([0])},
    ]
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    with torch.no_grad():
        background_losses = model(images, empty)
        detections = model.eval()(images)
    for det, (h, w) in zip(detections, sizes, strict=True):
        assert det["labels"].dtype == torch.int64 and len(det["labels"]) >= min_detections
        if len(det["labels"]):
            assert 0 <= int(det["labels"].min()) and int(det["labels"].max()) < num_classes
            assert float(det["boxes"][:, 2].max()) <= w and float(det["boxes"][:, 3].max()) <= h
    return {**background_losses, "trained": losses}


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, images: list[torch.Tensor], seed: int) -> None:
    """Give every BatchNorm of a torchvision detector non-trivial statistics and affine parameters.

    ``gamma ~ U(0.75, 1.25)``, ``beta ~ N(0, 0.1²)``; the backbone's running mean / variance are those of
    one forward pass over ``images`` (BatchNorm momentum 1 in training mode), so activations stay of
    unit scale through the randomly initialised network and the detections stay distinct; the heads'
    BatchNorms (v2) get ``mu ~ N(0, 0.1²)``, ``sigma² ~ U(0.75, 1.25)``. Frozen BatchNorms (no
    training mode) get random statistics as the heads'."""
    g = torch.Generator().manual_seed(seed)
    norms = [
        m for m in model.modules() if isinstance(m, nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d"
    ]
    for m in norms:
        n = m.running_mean.shape[0]
        m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    was_training = model.training
    model.eval()
    batch, _ = model.transform(images)
    model.backbone.train()
    model.backbone(batch.tensors)
    for m in norms:
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    model.train(was_training)


@torch.no_grad()
def random_batchnorm(module: nn.Module, seed: int) -> None:
    """Every ``nn.BatchNorm2d`` of ``module`` with random statistics and affine parameters (``gamma ~
    U(0.75, 1.25)``, ``beta ~ N(0, 0.1²)``, ``mu ~ N(0, 0.1²)``, ``sigma² ~ U(0.75, 1.25)``): a parity or
    folding test then fails if a BatchNorm is mapped or folded wrongly."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)


@pytest.fixture
def random_batchnorm_fn():
    """:func:`random_batchnorm`."""
    return random_batchnorm


@pytest.fixture
def detector_helpers():
    """``(structured_image, randomize_batchnorm)``."""
    return structured_image, randomize_batchnorm


@pytest.fixture
def smoke_train():
    """:func:`train_and_detect`."""
    return train_and_detect


@pytest.fixture
def paired_detections():
    """:func:`assert_paired_detections`."""
    return assert_paired_detections
