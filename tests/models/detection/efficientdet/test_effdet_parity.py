"""EfficientDet against rwightman's ``effdet`` (efficientdet-pytorch, the PyTorch EfficientDet whose COCO
checkpoints users have): its D0 with random weights and non-trivial BatchNorm statistics, converted by
``convert_effdet_state_dict``, gives the same class logits and box deltas on every level, on the same
anchors, decoded to the same boxes, and the same detections as its ``DetBenchPredict``.

Reference: ``effdet.create_model("efficientdet_d0")`` (timm's EfficientNet-B0, its BiFPN and heads), in
eval mode on a 512 x 512 batch (the input size its resamplings are built for), its ``Anchors``,
``decode_box_outputs`` and ``DetBenchPredict``. Tolerance 1e-5 on outputs of magnitude ~5 (measured: at
most 2e-6; float32 through 16 backbone blocks, 3 BiFPN layers and 3 head layers computed in other
orders, e.g. its fusion divides each input by the weight sum, ours the weights); 1e-3 px on anchors and
boxes (its float64) and on detections (paired, as near-tied scores may swap).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from segdet.errors import DataError
from segdet.models import build
from segdet.models.detection.convert import load_detector_weights
from segdet.models.detection.efficientdet.convert import convert_effdet_state_dict, load_effdet_weights
from segdet.models.detection.settings import IMAGENET_MEAN, IMAGENET_STD

with warnings.catch_warnings():  # effdet scripts a few functions with torch.jit, which warns
    warnings.simplefilter("ignore")
    # installed by `.[dev]` (CI); a machine without it (the offline GPU one) skips with this reason
    pytest.importorskip("effdet", reason="effdet (the reference, in segdet[dev]) is not installed")
    from effdet import DetBenchPredict, create_model
    from effdet.anchors import Anchors, decode_box_outputs


def _effdet(name: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model(name, pretrained=False, pretrained_backbone=False, num_classes=90)


def test_anchors_and_decoded_boxes_are_effdets():
    """Our EfficientDet anchors on a 512 x 512 batch equal effdet's ``Anchors`` (its y1 x1 y2 x2 made
    x1 y1 x2 y2; 1e-3 px: ours float32, its float64), all 49,104 in the same order; the same deltas
    (ours in ``(t_x, t_y, t_w, t_h)`` order) decode to the same boxes as its ``decode_box_outputs``
    (1e-3 px)."""
    theirs = Anchors.from_config(_effdet("efficientdet_d0").config).boxes.float()
    model = build("efficientdet_d0", 90)
    batch = torch.zeros(1, 3, 512, 512)
    levels = [torch.zeros(1, 1, 512 // s, 512 // s) for s in (8, 16, 32, 64, 128)]
    ours = model.anchor_generator.grid_anchors(
        [tuple(f.shape[-2:]) for f in levels],
        [(s, s) for s in (8, 16, 32, 64, 128)],
        batch.device,
        batch.dtype,
    )
    torch.testing.assert_close(ours, theirs[:, [1, 0, 3, 2]], rtol=0, atol=1e-3)
    deltas = torch.randn(len(theirs), 4, generator=torch.Generator().manual_seed(0)) * 0.5
    expected = decode_box_outputs(deltas, theirs, output_xyxy=True)
    got = model.box_coder.decode_single(deltas[:, [1, 0, 3, 2]], ours)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


def test_effdet_d0_converts_to_the_same_network(tmp_path, random_batchnorm_fn):
    torch.manual_seed(0)  # effdet initialises from the global generator
    theirs = _effdet("efficientdet_d0")
    random_batchnorm_fn(theirs, 0)
    theirs.eval()
    ours = build("efficientdet_d0", 90).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    torch.save(theirs.state_dict(), tmp_path / "effdet_d0.pth")
    load_effdet_weights(ours, tmp_path / "effdet_d0.pth")

    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        their_logits, their_deltas = theirs(x)
        our_logits, our_deltas = ours.head(list(ours.backbone(x).values()))
    for level in range(5):
        n, _, h, w = their_logits[level].shape
        torch.testing.assert_close(our_logits[level], their_logits[level], rtol=0, atol=1e-5)
        expected = their_deltas[level].reshape(n, 9, 4, h, w)[:, :, [1, 0, 3, 2]].reshape(n, -1, h, w)
        torch.testing.assert_close(our_deltas[level], expected, rtol=0, atol=1e-5)


def test_effdet_d0_gives_the_same_detections(
    tmp_path, random_batchnorm_fn, detector_helpers, paired_detections
):
    """``model(images)`` (our transform, head, top 5000 pairs of all levels, clipping, NMS, 100 a image)
    against ``DetBenchPredict`` on the same two 512 x 512 images, normalised for it by hand (it takes
    normalised input): every one of the 100 detections per image paired with one of the same class (its
    labels 1 ... 90, ours 0 ... 89), box and score within 1e-3, except at most 10 per image that NMS kept
    from another overlapping box of the same class and score (the images' 16 px bilinear cells tie the
    scores of anchors one stride apart: an AVX-512 host swapped 4 at 0.2405, scores 8e-8 apart).
    Seeded: effdet initialises from torch's global generator, whose state would otherwise depend on the
    tests run before (xdist's order)."""
    torch.manual_seed(0)
    theirs = _effdet("efficientdet_d0")
    random_batchnorm_fn(theirs, 0)
    with torch.no_grad():  # spread the class logits: at its init all scores tie at ~0.016 (the prior)
        theirs.class_net.predict.conv_pw.weight.mul_(10)
    bench = DetBenchPredict(theirs.eval()).eval()
    ours = build("efficientdet_d0", 90).eval()
    torch.save(theirs.state_dict(), tmp_path / "effdet_d0.pth")
    load_effdet_weights(ours, tmp_path / "effdet_d0.pth")

    structured_image, _ = detector_helpers
    g = torch.Generator().manual_seed(2)
    images = [structured_image(512, 512, g) for _ in range(2)]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    info = {"img_scale": torch.ones(2), "img_size": torch.tensor([[512.0, 512.0]] * 2)}
    with torch.no_grad():
        got = ours(images)
        rows = bench(torch.stack([(image - mean) / std for image in images]), info)
    expected = [{"boxes": r[:, :4], "scores": r[:, 4], "labels": r[:, 5].long()} for r in rows]
    assert all(len(d["boxes"]) == 100 and len(d["scores"].unique()) > 90 for d in got)  # not tied
    paired_detections(got, expected, atol=1e-3, label_shift=1, nms_swaps=10)


def test_a_mismatched_checkpoint_is_one_clear_error(tmp_path):
    """An effdet D1 checkpoint into our D0 through ``load_detector_weights`` (``model.weights``): one
    DataError line naming the file and the mismatch, from the effdet conversion (every key placed)."""
    theirs = _effdet("efficientdet_d1")
    path = tmp_path / "effdet_d1.pth"
    torch.save(theirs.state_dict(), path)
    with torch.device("meta"):
        ours = build("efficientdet_d0", 90)
    with pytest.raises(DataError, match=r"effdet_d1\.pth") as error:
        load_detector_weights(ours, path)  # what model.weights calls: effdet's format for an EfficientDet
    assert "\n" not in str(error.value) and "keys" in str(error.value)
    assert not [
        k for k in convert_effdet_state_dict(theirs.state_dict()) if not k.startswith(("backbone.", "head."))
    ]
