"""SSD300 and SSDLite320: parity with torchvision's ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large``
(random weights converted by ``from_torchvision``), the default boxes, SSD512, and the builders."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import detection as tv_detection
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TVDefaultBoxGenerator

from segdet.models import MODELS, build, from_torchvision, load_torchvision_weights
from segdet.models.detection.image_list import ImageList
from segdet.models.detection.ssd import SSD
from segdet.models.detection.ssd.default_boxes import DefaultBoxGenerator

NUM_CLASSES = 5  # ours; torchvision's counts the background: 6


def _targets(shift: int = 0) -> list[dict]:
    """Two images' targets: three objects of different sizes, and one object."""
    return [
        {
            "boxes": torch.tensor([[10.0, 20, 80, 90], [50, 30, 200, 150], [5, 5, 14, 11]]),
            "labels": torch.tensor([0, 3, 4]) + shift,
        },
        {"boxes": torch.tensor([[30.0, 40, 140, 100]]), "labels": torch.tensor([2]) + shift},
    ]


def _calibrate_scores(tv: torch.nn.Module, images: list[torch.Tensor]) -> None:
    """Scale the random class predictors so that their logits have std 2 on ``images``: softmax scores
    spread over (0, 1) instead of saturating (SSD300's VGG sees 0-255 inputs) or all sitting at
    1 / (K + 1), so that thresholds, top-k and NMS all matter."""
    predictors = tv.head.classification_head.module_list
    seen: list[torch.Tensor] = []
    hooks = [p.register_forward_hook(lambda module, args, out: seen.append(out)) for p in predictors]
    with torch.no_grad():
        tv.eval()(images)
        for hook in hooks:
            hook.remove()
        for predictor, out in zip(predictors, seen, strict=True):
            last = predictor if isinstance(predictor, torch.nn.Conv2d) else predictor[-1]
            last.weight.mul_(2.0 / float(out.std()))
            last.bias.zero_()


@pytest.mark.parametrize("name", ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large"])
def test_ssd_matches_torchvision(name, detector_helpers, paired_detections):
    """Reference: torchvision's model of the same name with seeded random weights (SSDLite: BatchNorm
    statistics away from identity) and calibrated class predictors, converted by from_torchvision; its
    input handling (fixed-size resize, SSD300's 0-255 scale and mean, SSDLite's [-1, 1]) is the model's.

    Detections: paired one to one (same label + 1, boxes and scores within 1e-4) on a batch of two images
    of different sizes and aspect ratios (resized to the fixed size, boxes mapped back to each). Training:
    both losses within 1e-5 on the same batch (hard negative mining included)."""
    structured_image, randomize_batchnorm = detector_helpers
    g = torch.Generator().manual_seed(3)
    images = [structured_image(240, 320, g), structured_image(200, 150, g)]
    torch.manual_seed(0)
    tv = getattr(tv_detection, name)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    if "lite" in name:
        randomize_batchnorm(tv, images, seed=1)
    _calibrate_scores(tv, images)
    ours = from_torchvision(tv)
    assert isinstance(ours, SSD) and ours.num_classes == NUM_CLASSES and not ours.training
    assert ours.settings.size == ((300, 300) if name.startswith("ssd300") else (320, 320))
    assert ours.settings.image_mean == tuple(tv.transform.image_mean)
    with torch.no_grad():
        paired_detections(ours(images), tv([im.clone() for im in images]))
        tv.train()
        ours.train()
        expected = tv(images, _targets(shift=1))
        got = ours(images, _targets())
    assert set(got) == set(expected) == {"classification", "bbox_regression"}
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("ratios", "options", "size", "grids"),
    [
        (
            [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
            {"scales": [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], "steps": [8, 16, 32, 64, 100, 300]},
            (300, 300),
            [38, 19, 10, 5, 3, 1],
        ),
        ([[2, 3]] * 6, {"min_ratio": 0.2, "max_ratio": 0.95}, (320, 320), [20, 10, 5, 3, 2, 1]),
        ([[2]], {}, (64, 96), [(4, 6)]),
    ],
)
def test_default_boxes_equal_torchvision(ratios, options, size, grids):
    """Reference: torchvision's DefaultBoxGenerator (SSD300's and SSDLite320's configurations, and a
    single level from min/max ratios on a non-square image): the same boxes bit for bit, 8732 for
    SSD300, on float32 and on float64 feature maps (in their dtype). On bfloat16 maps ours stay the
    float32 boxes (torchvision's round the centres to bfloat16)."""
    maps = [torch.zeros(1, 1, *(g if isinstance(g, tuple) else (g, g))) for g in grids]
    batch = ImageList(torch.zeros(1, 3, *size), [size])
    ours = DefaultBoxGenerator(ratios, **options)
    expected = TVDefaultBoxGenerator(ratios, **options)(batch, maps)[0]
    got = ours(batch, maps)
    assert torch.equal(got, expected)
    maps64 = [m.double() for m in maps]
    got64 = ours(batch, maps64)
    assert got64.dtype == torch.float64
    assert torch.equal(got64, TVDefaultBoxGenerator(ratios, **options)(batch, maps64)[0])
    assert torch.equal(ours(batch, [m.bfloat16() for m in maps]), got)
    assert (
        ours.num_anchors_per_location() == TVDefaultBoxGenerator(ratios, **options).num_anchors_per_location()
    )
    if size == (300, 300):
        assert len(got) == 8732


def test_ssdlite_losses_equal_torchvision_in_float64():
    """Reference: torchvision's ``ssdlite320_mobilenet_v3_large`` (seeded random weights) converted by
    from_torchvision, both made float64 (``.double()``): its default boxes follow the feature maps'
    dtype, so ours must too, or the matching differs (near-tied IoUs resolved otherwise; before: 2 %
    apart in ``bbox_regression``). Both losses within 1e-6 on a batch of two images."""
    torch.manual_seed(0)
    name = "ssdlite320_mobilenet_v3_large"
    tv = getattr(tv_detection, name)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    ours = from_torchvision(tv).double().train()
    tv = tv.double().train()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 240, 320, generator=g, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        expected = tv(images, _targets(shift=1))
        got = ours(images, _targets())
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)


def test_ssd_builders_and_background_only_batch(smoke_train):
    """SSD300 and SSD512 build by name on the meta device (six maps of 4/6 boxes, 8732 boxes; seven
    maps, 24564 boxes at 512 px, the paper's counts); SSDLite builds, trains with finite losses and
    gradients, gives zero losses on a batch without objects (no positive, so no hard negative either:
    torchvision's rule), and detects with labels 0..K-1 inside the original images."""
    for name, size, boxes in (("ssd300_vgg16", 300, 8732), ("ssd512_vgg16", 512, 24564)):
        assert name in MODELS
        with torch.device("meta"):
            model = build(name, num_classes=3)
        features = model.backbone(torch.zeros(1, 3, size, size, device="meta"))
        batch = ImageList(torch.zeros(1, 3, size, size, device="meta"), [(size, size)])
        assert len(model.anchor_generator(batch, list(features.values()))) == boxes
    model = build("ssdlite320_mobilenet_v3_large", num_classes=3, size=(128, 128))
    losses = smoke_train(model, 3, min_detections=1)
    assert set(losses["trained"]) == {"classification", "bbox_regression"}
    assert losses["classification"].item() == 0.0 and losses["bbox_regression"].item() == 0.0


def test_load_torchvision_ssdlite_weights_from_file(tmp_path):
    """A torchvision SSDLite checkpoint saved in tmp loads into the model built by name with the same
    tensors as from_torchvision gives."""
    torch.manual_seed(0)
    tv = tv_detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1
    )
    path = tmp_path / "ssdlite.pth"
    torch.save(tv.state_dict(), path)
    model = build("ssdlite320_mobilenet_v3_large", num_classes=NUM_CLASSES)
    load_torchvision_weights(model, path)
    reference = from_torchvision(tv).state_dict()
    state = model.state_dict()
    assert set(state) == set(reference)
    assert all(torch.equal(state[k], v) for k, v in reference.items())
