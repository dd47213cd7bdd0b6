"""Faster R-CNN assembled from our parts: parity with torchvision's models (random weights converted by
``from_torchvision``), the C4 variant, every builder of the MODELS table, training on background-only
images, and BatchNorm folding for inference."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import detection as tv_detection

from segdet.errors import SegdetError
from segdet.models import MODELS, build, from_torchvision, model_options
from segdet.models.backbones import FrozenBatchNorm2d
from segdet.models.detection.rcnn.faster_rcnn import Res5Head
from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN

DETECTORS = [name for name in MODELS if name.startswith(("fasterrcnn", "maskrcnn"))]
# One per distinct design: with backbone="resnet18" the resnet101 builders equal the resnet50 ones, the
# 320 MobileNet differs from the other by settings only, and the C4 model has its own test.
DESIGNS = [
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
]
# Small images and few proposals keep the CPU time of a detector forward around a second.
SMALL = {"min_size": 160, "max_size": 256, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100}
TINY = {
    "min_size": 96,
    "max_size": 128,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "rpn_post_nms_top_n_train": 64,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 20,
}


def assert_same_detections(
    got: list[dict], expected: list[dict], atol: float = 1e-4, label_shift: int = 1, box_rtol: float = 0.0
) -> None:
    """Same number of detections, boxes / scores (/ masks) to ``atol`` (boxes also ``box_rtol`` of their
    coordinates), our labels = torchvision's - 1 (``label_shift``)."""
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected, strict=True):
        assert len(ours["boxes"]) == len(theirs["boxes"]) > 10
        torch.testing.assert_close(ours["boxes"], theirs["boxes"], atol=atol, rtol=box_rtol)
        torch.testing.assert_close(ours["scores"], theirs["scores"], atol=atol, rtol=0)
        assert torch.equal(ours["labels"] + label_shift, theirs["labels"])
        assert set(ours) == set(theirs)
        if "masks" in theirs:
            assert ours["masks"].shape == theirs["masks"].shape
            torch.testing.assert_close(ours["masks"], theirs["masks"], atol=atol, rtol=0)


def torchvision_parity(name: str, helpers, **options) -> None:
    """Build torchvision's ``name`` with seeded random weights and non-trivial BatchNorm, convert it,
    run both on two images of different sizes and compare the detections (1e-4)."""
    structured_image, randomize_batchnorm = helpers
    g = torch.Generator().manual_seed(7)
    images = [structured_image(230, 300, g), structured_image(280, 210, g)]
    torch.manual_seed(0)
    tv = getattr(tv_detection, name)(
        weights=None,
        weights_backbone=None,
        num_classes=11,
        box_score_thresh=0.0,
        rpn_score_thresh=0.0,
        **SMALL,
        **options,
    )
    randomize_batchnorm(tv, images, seed=1)
    with torch.no_grad():
        # Larger class logits spread the scores (random heads give nearly uniform softmaxes).
        tv.roi_heads.box_predictor.cls_score.weight.mul_(4.0)
    tv.eval()
    ours = from_torchvision(tv)
    assert isinstance(ours, GeneralizedRCNN) and not ours.training and ours.num_classes == 10
    with torch.no_grad():
        expected = tv([im.clone() for im in images])
        got = ours(images)
    assert_same_detections(got, expected)


@pytest.mark.parametrize(
    "name", ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn"]
)
def test_faster_rcnn_matches_torchvision(name, detector_helpers):
    """Detections equal torchvision's (boxes, scores to 1e-4 abs; labels + 1 equal) for the same
    weights and settings, two images of different sizes (resized and padded differently)."""
    torchvision_parity(name, detector_helpers)


def _targets(sizes, num_classes: int, g: torch.Generator, objects=(2, 0)) -> list[dict]:
    targets = []
    for (h, w), n in zip(sizes, objects, strict=True):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 8
        boxes = torch.cat((xy, xy + wh), dim=1)
        masks = torch.zeros(n, h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        labels = torch.randint(0, num_classes, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return targets


def test_every_detector_is_in_models_and_builds():
    """Every builder is in MODELS and builds by name with its default backbone (on the meta device: no
    memory, no initialisation cost); the ResNet-101 ones default to resnet101; unknown options raise."""
    assert set(DETECTORS) >= {
        *DESIGNS,
        "fasterrcnn_resnet101_fpn",
        "maskrcnn_resnet101_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_resnet50_c4",
    }
    for name in DETECTORS:
        with torch.device("meta"):
            model = build(name, num_classes=3)
        assert isinstance(model, GeneralizedRCNN) and model.num_classes == 3
        assert model.roi_heads.box_predictor.cls_score.out_features == 4  # + background
        if "resnet101" in name:
            assert len(model.backbone.body.layer3) == 23
    assert model_options("fasterrcnn_mobilenet_v3_large_320_fpn")["min_size"] == 320
    with pytest.raises(SegdetError, match="box_score_thres"):
        build("fasterrcnn_resnet50_fpn", num_classes=3, box_score_threshold=0.1)


@pytest.mark.parametrize("name", DESIGNS)
def test_every_detector_builds_trains_and_evaluates(name):
    """Each MODELS detector builds with a small backbone, gives finite losses (all of them) in training
    on images of different sizes (one background-only) and, in eval, per image detections with labels in
    0..K-1 and boxes inside the original image."""
    options = {"backbone": "resnet18"} if "resnet" in name else {}
    model = build(name, num_classes=4, **TINY, **options)
    g = torch.Generator().manual_seed(0)
    sizes = [(96, 128), (120, 80)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    losses = model.train()(images, _targets(sizes, 4, g), generator=torch.Generator().manual_seed(1))
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    if name.startswith("maskrcnn"):
        expected.add("loss_mask")
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        detections = model(images)
    for det, (h, w) in zip(detections, sizes, strict=True):
        assert det["labels"].dtype == torch.int64
        if len(det["labels"]):
            assert 0 <= int(det["labels"].min()) and int(det["labels"].max()) < 4
            assert float(det["boxes"][:, 2].max()) <= w and float(det["boxes"][:, 3].max()) <= h
        if name.startswith("maskrcnn"):
            assert det["masks"].shape == (len(det["boxes"]), 1, h, w)


def test_background_only_batch_trains_with_zero_box_losses():
    """A batch of background-only images (no boxes): every loss finite, both box-regression losses
    exactly 0 (no positive anchor or RoI), the classification losses positive; tv_tensors targets
    and a pre-batched N x 3 x H x W tensor are accepted."""
    from torchvision import tv_tensors

    model = build("fasterrcnn_resnet50_fpn", num_classes=3, backbone="resnet18", **TINY).train()
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    empty = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(96, 128)),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    losses = model(images, [empty, dict(empty)], generator=torch.Generator().manual_seed(2))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0
    assert losses["loss_classifier"].item() > 0 and losses["loss_objectness"].item() > 0
    sum(losses.values()).backward()


def test_c4_builds_trains_and_evaluates():
    """The C4 model: one stride-16 level, 9 anchors per location, 14x14 RoIs through res5 (layer4 in the
    box head, not in the backbone), RoIAlign and RoIPool variants; finite losses after one SGD step,
    detections in eval."""
    for pool in ("align", "pool"):
        model = build("fasterrcnn_resnet50_c4", num_classes=3, backbone="resnet18", pool=pool, **TINY)
        assert model.rpn.anchor_generator.num_anchors_per_location() == [9]
        assert isinstance(model.roi_heads.box_head, Res5Head)
        assert not hasattr(model.backbone.body, "layer4")
        assert any(k.startswith("roi_heads.box_head.layer4.") for k in model.state_dict())
        g = torch.Generator().manual_seed(3)
        sizes = [(100, 120), (90, 140)]
        images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in _targets(sizes, 3, g, (2, 1))]
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        for _ in range(2 if pool == "align" else 1):
            losses = model(images, targets, generator=torch.Generator().manual_seed(4))
            assert all(torch.isfinite(v) for v in losses.values())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        features = model.backbone(torch.zeros(1, 3, 96, 128))
        assert list(features) == ["0"] and features["0"].shape[-2:] == (6, 8)
        with torch.no_grad():
            detections = model.eval()(images)
        assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)


def test_trainable_layers_and_frozen_bn_follow_torchvision():
    """trainable_layers=3 freezes conv1 and layer1 (torchvision's _resnet_fpn_extractor rule); a
    pretrained-style build (frozen_bn=True) has only FrozenBatchNorm2d in the backbone body."""
    model = build(
        "fasterrcnn_resnet50_fpn", num_classes=2, backbone="resnet18", trainable_layers=3, frozen_bn=True
    )
    tv = tv_detection.backbone_utils.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=3
    )
    ours = {k: p.requires_grad for k, p in model.backbone.named_parameters()}
    theirs = {k: p.requires_grad for k, p in tv.named_parameters()}
    assert ours == theirs
    body = model.backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())


@pytest.mark.parametrize("nnpack", [False, True])
def test_fuse_for_inference_keeps_detections(detector_helpers, nnpack, monkeypatch):
    """fuse_for_inference (BatchNorm folded into the convolutions; channels_last, or NNPACK's Winograd /
    FFT 3x3 convolutions in NCHW) leaves the detections of the unfused model equal to 1e-4 (reference:
    the same model before fusing), and removes every BatchNorm of the network. With NNPACK the boxes
    are compared to 1e-4 px plus 1e-6 of their coordinates (8 float32 steps at these ~150 px): its
    summation order, and so its last bits, depend on the thread count (1.07e-4 px seen on one thread)."""
    from segdet.ops.nnpack_conv import NNPACKConv2d, nnpack_available

    if nnpack and not nnpack_available():
        pytest.skip("torch has no NNPACK here")
    calls = []
    if nnpack:
        from segdet.ops import nnpack_conv

        # AVX2's thresholds on every CPU: these small images' P2 maps are under Zen 4's min_pixels
        monkeypatch.setattr(nnpack_conv, "rules", lambda: nnpack_conv.AVX2)
        kernel = torch._nnpack_spatial_convolution
        monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: calls.append(1) or kernel(*a))
    structured_image, randomize_batchnorm = detector_helpers
    g = torch.Generator().manual_seed(5)
    images = [structured_image(200, 260, g), structured_image(240, 180, g)]
    torch.manual_seed(0)
    model = build(
        "fasterrcnn_resnet50_fpn_v2",
        num_classes=5,
        backbone="resnet18",
        box_score_thresh=0.0,
        frozen_bn=True,
        **SMALL,
    )
    randomize_batchnorm(model, images, seed=2)
    model.eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(4.0)
        expected = model(images)
        model.fuse_for_inference(nnpack=nnpack)
        got = model(images)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | FrozenBatchNorm2d)]
    assert norms == []
    conv1_channels_last = model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv1_channels_last != nnpack
    # NNPACK: the FPN and RPN 3x3 convolutions on P2 and the box head's four convolutions over the RoIs.
    assert (sum(isinstance(m, NNPACKConv2d) for m in model.modules()) > 0) == nnpack
    assert (len(calls) >= 4) == nnpack
    assert_same_detections(got, expected, label_shift=0, box_rtol=1e-6 if nnpack else 0.0)


def test_channels_last_without_folding_keeps_batchnorm_and_detections(detector_helpers):
    """fuse_for_inference(fold=False, nnpack=False) only changes the memory layout: the BatchNorms stay,
    the detections equal up to float32 rounding (channels-last convolution kernels sum in another order,
    so not bit for bit)."""
    structured_image, randomize_batchnorm = detector_helpers
    g = torch.Generator().manual_seed(6)
    images = [structured_image(200, 260, g), structured_image(240, 180, g)]
    torch.manual_seed(0)
    model = build(
        "fasterrcnn_resnet50_fpn", num_classes=5, backbone="resnet18", box_score_thresh=0.0, **SMALL
    )
    randomize_batchnorm(model, images, seed=3)
    model.eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(4.0)
        expected = model(images)
        model.fuse_for_inference(fold=False, nnpack=False, channels_last=True)
        got = model(images)
    assert any(isinstance(m, FrozenBatchNorm2d | torch.nn.BatchNorm2d) for m in model.modules())
    assert model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # 2e-4 px on coordinates up to 260 px: a relative 1e-6, float32 rounding.
    assert_same_detections(got, expected, atol=2e-4, label_shift=0)


def test_mobilenet_trainable_layers_follow_torchvision():
    """MobileNetV3 trainable_layers=3 freezes the same blocks as torchvision's mobilenet_backbone, and the
    FPN inputs are its taps (blocks 13 and 16, 160 and 960 channels, both stride 32)."""
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    from segdet.models.detection.rcnn.convert import convert_key

    # torchvision's mobilenet_backbone has frozen BatchNorm by default: compare like with like.
    model = build("fasterrcnn_mobilenet_v3_large_fpn", num_classes=2, trainable_layers=3, frozen_bn=True)
    tv = mobilenet_backbone(backbone_name="mobilenet_v3_large", fpn=True, weights=None, trainable_layers=3)
    theirs = {convert_key("backbone." + k, "mobilenet"): p.requires_grad for k, p in tv.named_parameters()}
    assert {"backbone." + k: p.requires_grad for k, p in model.backbone.named_parameters()} == theirs
    body = model.backbone.body
    assert body.out_features == ("b13", "b16")
    assert [body.out_channels[n] for n in body.out_features] == [160, 960]
    assert [body.strides[n] for n in body.out_features] == [32, 32]
