"""RetinaNet: parity with torchvision's ``retinanet_resnet50_fpn`` / ``_v2`` (random weights converted by
``from_torchvision``), weights loaded from a torchvision file, and the builders of the MODELS table."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torchvision.models import detection as tv_detection
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from segdet.errors import DataError
from segdet.models import MODELS, build, from_torchvision, load_torchvision_weights
from segdet.models.detection.retinanet import RetinaNet

# Small images keep the ResNet-50 passes cheap; non-default settings check that they carry over.
SETTINGS = {"min_size": 96, "max_size": 128, "detections_per_img": 150, "topk_candidates": 400}
NUM_CLASSES = 6  # ours; torchvision's counts the background: 7


def _spread_scores(tv: torch.nn.Module, images: list[torch.Tensor]) -> None:
    """Random heads give logits of std ~0.02 around the prior's -4.6 (every score ~0.01, under the 0.05
    threshold): scale them to std 2 on ``images`` so that scores spread across it without saturating.
    torchvision's background class 0 (never a positive in training) gets a logit of -100, as a trained
    model's stays low: ours has no such class (see segdet.models.detection.retinanet.convert)."""
    cls_logits = tv.head.classification_head.cls_logits
    seen: list[torch.Tensor] = []
    hook = cls_logits.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        tv.eval()(images)
        hook.remove()
        cls_logits.weight.mul_(2.0 / float(torch.cat([s.flatten() for s in seen]).std()))
        cls_logits.bias.view(-1, NUM_CLASSES + 1)[:, 0] = -100.0


def _targets(shift: int = 0) -> list[dict]:
    """Two images' targets: three objects of different sizes, and a background-only image."""
    return [
        {
            "boxes": torch.tensor([[10.0, 20, 80, 90], [50, 30, 150, 115], [5, 5, 14, 11]]),
            "labels": torch.tensor([0, 3, 5]) + shift,
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"])
def test_retinanet_matches_torchvision(name, detector_helpers, paired_detections):
    """Reference: torchvision's model of the same name with seeded random weights, BatchNorm statistics
    away from identity and spread class logits, converted by from_torchvision.

    Detections: paired one to one (same label + 1, boxes and scores within 1e-4) on a batch of two images
    of different sizes (resized and padded differently) and on a third image of another aspect ratio.
    Training, both models in float64 on the same batch (one image background-only): both losses within
    1e-9 relative, and the gradients of every parameter but the classifier's (torchvision's has the
    background channels) within 1e-8 of the largest one. float64 because in float32 the classification
    loss (~179, a sum over ~10^5 anchors) differs by one ulp (1.5e-5) as soon as oneDNN adds in another
    order (one thread against two, AVX-512 against AVX2); measured in float64: 0 and <= 6e-10."""
    structured_image, randomize_batchnorm = detector_helpers
    g = torch.Generator().manual_seed(7)
    images = [structured_image(120, 160, g), structured_image(150, 110, g)]
    third = [structured_image(80, 170, g)]
    torch.manual_seed(0)
    tv = getattr(tv_detection, name)(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, **SETTINGS
    ).eval()
    randomize_batchnorm(tv, images, seed=1)
    _spread_scores(tv, images)
    ours = from_torchvision(tv)
    assert isinstance(ours, RetinaNet) and ours.num_classes == NUM_CLASSES and not ours.training
    assert ours.settings.detections_per_img == 150 and ours.settings.topk_candidates == 400
    assert ours.settings.box_loss == ("giou" if name.endswith("v2") else "l1")
    with torch.no_grad():
        for batch in (images, third):
            paired_detections(ours(batch), tv([im.clone() for im in batch]))

    tv.double().train()
    ours.double().train()
    images = [im.double() for im in images]
    expected = tv(images, _targets(shift=1))
    got = ours(images, _targets())
    assert set(got) == set(expected) == {"classification", "bbox_regression"}
    for key in expected:
        assert got[key].dtype == torch.float64
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=1e-9)
    sum(expected.values()).backward()
    sum(got.values()).backward()
    theirs = dict(tv.named_parameters())
    for key, param in ours.named_parameters():
        if "cls_logits" not in key:
            scale = float(theirs[key].grad.abs().max()) + 1e-300
            torch.testing.assert_close(param.grad / scale, theirs[key].grad / scale, atol=1e-8, rtol=0)


def _tv_retinanet_resnet18() -> tv_detection.RetinaNet:
    """torchvision's RetinaNet design on a ResNet-18 FPN (frozen BatchNorm, 3 trainable layers: what a
    pretrained-backbone torchvision model looks like), small and fast."""
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=3,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    return tv_detection.RetinaNet(backbone, NUM_CLASSES + 1, min_size=128, max_size=160).eval()


def test_load_torchvision_weights_from_file(tmp_path):
    """A torchvision RetinaNet checkpoint with torchvision < 0.13's head names (conv.{2i}) saved in tmp
    loads into a model built by name: the same tensors as from_torchvision gives (the classifier without
    its background channels); the released v1 COCO file's name sets the backbone BatchNorm eps to 0; a
    wrong num_classes is a one-line DataError."""
    tv = _tv_retinanet_resnet18()
    reference = from_torchvision(tv).state_dict()
    legacy = {
        re.sub(r"(_head\.conv)\.(\d+)\.0\.", lambda m: f"{m[1]}.{2 * int(m[2])}.", k): v
        for k, v in tv.state_dict().items()
    }
    assert "head.classification_head.conv.6.weight" in legacy
    for file_name, eps in (("mine.pth", 1e-5), ("retinanet_resnet50_fpn_coco-eeacb38b.pth", 0.0)):
        path = tmp_path / file_name
        torch.save(legacy, path)
        model = build("retinanet_resnet50_fpn", num_classes=NUM_CLASSES, backbone="resnet18", frozen_bn=True)
        load_torchvision_weights(model, path)
        state = model.state_dict()
        assert set(state) == set(reference)
        for key, value in reference.items():
            assert torch.equal(state[key], value), key
        norms = [m for n, m in model.named_modules() if n.startswith("backbone.body") and hasattr(m, "eps")]
        assert norms and all(m.eps == eps for m in norms)
    with pytest.raises(DataError, match="keys of another shape"):
        load_torchvision_weights(build("retinanet_resnet50_fpn", num_classes=3, backbone="resnet18"), path)


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"])
def test_retinanet_builds_trains_and_evaluates(name, smoke_train):
    """Built by name with a small backbone: the paper's head (9 anchors, 4 convs per subnet, prior bias
    -log(99)); finite losses with gradients on images of different sizes; exactly 0 box loss and a
    positive classification loss on a background-only batch; in eval, per image detections with labels
    in 0..K-1 and boxes inside the original image."""
    assert name in MODELS
    model = build(name, num_classes=4, backbone="resnet18", fpn_channels=64, min_size=96, max_size=128)
    head = model.head.classification_head
    assert head.num_anchors == 9 and len(head.conv) == 4
    assert torch.allclose(head.cls_logits.bias, torch.full_like(head.cls_logits.bias, -math.log(99.0)))
    losses = smoke_train(model, 4)
    assert set(losses["trained"]) == {"classification", "bbox_regression"}
    assert losses["bbox_regression"].item() == 0.0 and losses["classification"].item() > 0


@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_one_hot_focal_loss_equals_general_focal_loss(gamma):
    """Reference: segdet.losses.sigmoid_focal_loss (itself equal to torchvision's) on the dense one-hot
    targets, ignored anchors masked out, per-image sums weighted; float64, values and gradients to
    1e-12 (the closed-form gradient of one_hot_focal_loss is exact)."""
    from segdet.losses import sigmoid_focal_loss
    from segdet.models.detection.retinanet.focal import one_hot_focal_loss

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 500, 7, generator=g, dtype=torch.float64) * 4).requires_grad_()
    positives = (
        torch.tensor([0, 0, 2, 2, 2]),
        torch.tensor([3, 10, 5, 6, 400]),
        torch.tensor([1, 6, 0, 0, 3]),
    )
    ignored = (torch.tensor([0, 1, 1]), torch.tensor([7, 8, 9]))
    weight = torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)
    targets = torch.zeros_like(logits)
    targets[positives] = 1.0
    valid = torch.ones(3, 500, 1, dtype=torch.bool)
    valid[ignored] = False
    dense = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=gamma, reduction="none")
    expected = (torch.where(valid, dense, 0.0).sum(dim=(1, 2)) * weight).sum()
    got = one_hot_focal_loss(logits, weight, positives, ignored, alpha=0.25, gamma=gamma)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    (grad_expected,) = torch.autograd.grad(expected, logits)
    (grad_got,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(grad_got, grad_expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("topk_per", ["level", "image"])
def test_topk_candidates_per_level_or_per_image(topk_per):
    """``RetinaNet.postprocess`` by hand: two levels of 3 and 2 anchors, 2 classes, ``topk_candidates=2``,
    far-apart anchors (no NMS), threshold 0.05. Per level: level 0's two best pairs and level 1's two
    above the threshold; per image (EfficientDet's): the two best of all, both on level 0."""
    with torch.device("meta"):
        model = build("retinanet_resnet50_fpn", 2, topk_candidates=2, topk_per=topk_per, score_thresh=0.05)
    anchors = torch.tensor(
        [[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10], [80, 0, 90, 10]]
    )
    probabilities = torch.tensor([[0.9, 0.01], [0.8, 0.7], [0.01, 0.02], [0.6, 0.01], [0.02, 0.5]])
    logits = torch.logit(probabilities)[None]
    got = model.postprocess(logits, torch.zeros(1, 5, 4), anchors, [3, 2], [(100, 100)])[0]
    expected = [0.9, 0.8, 0.6, 0.5] if topk_per == "level" else [0.9, 0.8]
    torch.testing.assert_close(got["scores"], torch.tensor(expected))
    anchor_of = {0.9: 0, 0.8: 1, 0.6: 3, 0.5: 4}
    torch.testing.assert_close(got["boxes"], anchors[[anchor_of[s] for s in expected]])
    assert got["labels"].tolist() == [0, 0, 0, 1][: len(expected)]


def test_topk_per_must_be_level_or_image():
    with pytest.raises(ValueError, match="topk_per"):
        build("retinanet_resnet50_fpn", 2, topk_per="class")
