"""EfficientDet: the D0-D7 sizes against the paper's, the head and the box loss against their definitions,
training reaches every parameter, BatchNorm folding keeps the detections. (Convergence on shapes:
``tests/engine/test_detection_convergence.py``.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdet.models import MODELS, build
from segdet.models.detection.efficientdet import SCALES, EfficientDetHead
from segdet.models.detection.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS
from segdet.models.detection.retinanet import RetinaNetSettings
from segdet.models.detection.retinanet.loss import retinanet_loss
from segdet.models.necks import BiFPN
from segdet.ops import BoxCoder

# A D0 at 32 channels with 2 BiFPN layers, no stochastic depth, images of about 100 px.
SMALL = {"width": 32, "bifpn_layers": 2, "stochastic_depth_prob": 0.0, "min_size": 96, "max_size": 128}

# Parameters of D0 ... D7 for COCO's 90 classes, in millions: the README of the paper's code
# (google/automl, efficientdet), the same as the paper's table 2 rounded.
PAPER_PARAMS = (3.9, 6.6, 8.1, 12.0, 20.7, 33.7, 51.9, 51.9)


def test_d0_to_d7_have_the_papers_sizes():
    """Every scale is in MODELS with its table row (backbone, BiFPN width and depth, head depth, input
    size); the parameter counts for 90 classes are within 1 % of the paper's (built on the meta device:
    no memory, no initialisation). Measured: -0.6 % (D0: 3,877,763, effdet's count exactly) to +0.3 %."""
    for k, paper in enumerate(PAPER_PARAMS):
        name, scale = f"efficientdet_d{k}", SCALES[f"d{k}"]
        assert name in MODELS
        with torch.device("meta"):
            model = build(name, 90)
        assert isinstance(model.backbone.fpn, BiFPN) and len(model.backbone.fpn.layers) == scale.bifpn_layers
        assert model.backbone.fpn.out_channels == scale.width
        assert len(model.head.class_net.convs) == scale.head_depth
        assert (
            model.transform.min_size == (scale.image_size,) and model.transform.max_size == scale.image_size
        )
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params - paper) <= 0.01 * paper, (name, params, paper)


def test_head_equals_its_definition():
    """The class and box networks, per level: ``depth`` x (depthwise 3x3, pointwise 1x1 + bias, the
    level's own BatchNorm in eval mode, SiLU), then a separable predictor, written out with F.conv2d /
    F.batch_norm (1e-5). The convolutions are shared (one set), the BatchNorms are not (one per level
    and layer); the classifier's bias is the prior -log(99)."""
    torch.manual_seed(0)
    channels, anchors, classes, depth, levels = 8, 2, 3, 2, 3
    head = EfficientDetHead(channels, anchors, classes, depth, levels)
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    head.eval()
    features = [torch.randn(2, channels, s, s + 1) for s in (8, 4, 2)]

    def separable(x, block):
        x = F.conv2d(x, block[0].weight, padding=1, groups=channels)
        return F.conv2d(x, block[1].weight, block[1].bias)

    def subnet(net, x, level):
        for conv, bn in zip(net.convs, net.norms[level], strict=True):
            x = separable(x, conv)
            x = F.silu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))
        return separable(x, net.predictor)

    with torch.no_grad():
        logits, deltas = head(features)
        for level, x in enumerate(features):
            torch.testing.assert_close(logits[level], subnet(head.class_net, x, level), rtol=0, atol=1e-5)
            torch.testing.assert_close(deltas[level], subnet(head.box_net, x, level), rtol=0, atol=1e-5)
    assert logits[0].shape == (2, anchors * classes, 8, 9) and deltas[2].shape == (2, anchors * 4, 2, 3)
    assert len(head.class_net.convs) == depth and len(head.class_net.norms) == levels
    prior = head.class_net.predictor[1].bias.detach()
    torch.testing.assert_close(prior, torch.full_like(prior, -float(torch.tensor(99.0).log())))


def test_box_loss_is_efficientdets_huber_loss():
    """The settings EfficientDet's builders give RetinaNet's loss (smooth L1, β = 0.1, weight 1.25, the
    batch normaliser) equal the paper's code's box loss: 50 x the Huber loss (δ = 0.1) of the deltas,
    summed over the batch's foreground anchors' coordinates and divided by 4 x (their count + 1)
    (torch.nn.functional.huber_loss; 1e-6). Against effdet itself: ``test_effdet_loss.py``."""
    torch.manual_seed(0)
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 25, 25], [20, 20, 60, 60], [0, 30, 30, 50]])
    targets = [
        {"boxes": torch.tensor([[1.0, 2, 12, 11], [18, 22, 58, 63]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.tensor([[2.0, 28, 31, 52]]), "labels": torch.tensor([1])},
    ]
    matched = torch.tensor(
        [[0, BETWEEN_THRESHOLDS, 1, BELOW_LOW_THRESHOLD], [BELOW_LOW_THRESHOLD, -1, -2, 0]]
    )
    logits, deltas = torch.randn(2, 4, 2), torch.randn(2, 4, 4) * 0.3
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    losses = retinanet_loss(
        logits,
        deltas,
        anchors,
        matched,
        targets,
        coder,
        box_loss="smooth_l1",
        smooth_l1_beta=0.1,
        box_weight=1.25,
        normalizer="batch",
    )
    expected = []
    for image, pairs in enumerate([[(0, 0), (2, 1)], [(3, 0)]]):
        anchor = torch.tensor([a for a, _ in pairs])
        boxes = targets[image]["boxes"][[o for _, o in pairs]]
        encoded = coder.encode_single(boxes, anchors[anchor])
        huber = F.huber_loss(deltas[image, anchor], encoded, delta=0.1, reduction="sum")
        expected.append(50 * huber / (4 * (3 + 1)))  # 3 foreground anchors in the batch
    torch.testing.assert_close(losses["bbox_regression"], torch.stack(expected).sum(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="normalizer"):
        retinanet_loss(logits, deltas, anchors, matched, targets, coder, normalizer="images")


def test_efficientdet_trains_every_parameter(smoke_train):
    """EfficientDet's loss settings (focal γ 1.5, smooth L1 β 0.1 x 1.25, 100 detections, inputs padded
    to a multiple of 128); one training step gives finite positive losses and a gradient to every
    trainable parameter (EfficientNet, BiFPN fusion weights, both networks' per-level BatchNorms); an
    image without objects has no box loss; pretrained weights freeze the first two stages as for
    ResNets; a ResNet backbone is refused."""
    torch.manual_seed(0)
    model = build("efficientdet_d0", 3, **SMALL)
    s = model.settings
    assert (s.focal_gamma, s.box_loss, s.smooth_l1_beta, s.box_loss_weight) == (1.5, "smooth_l1", 0.1, 1.25)
    assert s.loss_normalizer == "batch" and RetinaNetSettings().loss_normalizer == "image"
    assert s.detections_per_img == 100 and model.transform.size_divisible == 128
    losses = smoke_train(model, 3)
    assert float(losses["bbox_regression"]) == 0.0
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    with pytest.raises(ValueError, match="backbone"):
        build("efficientdet_d0", 3, backbone="resnet18")
    frozen = build("efficientdet_d0", 3, **SMALL, trainable_layers=3)
    trainable = {n.split(".")[1] for n, p in frozen.backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"3", "4", "5", "6", "7"}  # c3, c4, c5 = features.3 ... features.7


def test_folded_efficientdet_keeps_detections(detector_helpers, paired_detections):
    """Every BatchNorm of the EfficientNet and the BiFPN folded into its convolution (``fuse_for_inference``
    without NNPACK; the head's per-level BatchNorms follow a shared convolution and stay) gives the same
    detections, paired, in float64 to 1e-8. Random weights, calibrated BatchNorm statistics."""
    structured_image, randomize_batchnorm = detector_helpers
    torch.manual_seed(0)
    model = build("efficientdet_d0", 3, score_thresh=0.0, size_divisible=32, **SMALL)
    g = torch.Generator().manual_seed(1)
    images = [structured_image(96, 128, g).double(), structured_image(100, 90, g).double()]
    model.double()
    randomize_batchnorm(model, images, 2)
    model.eval()
    with torch.no_grad():
        plain = model(images)
        fused = model.fuse_for_inference(nnpack=False)(images)
    left = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert left and all(n.startswith("head.") for n in left), sorted(left)[:3]
    paired_detections(fused, plain, atol=1e-8, label_shift=0)


def test_anchors_by_hand():
    """EfficientDet's cell anchors on P3 (stride 8, ``anchor_scale`` 4): centred on the cell (4, 4),
    unrounded, scale-major; the first four by hand (1e-5): size 32 with (1, 1), (1.4, 0.7), (0.7, 1.4),
    then size 32 x 2^(1/3) with (1, 1); P7's first, size 512 around (64, 64). Nine per location on each of
    the five levels."""
    from segdet.models.detection.efficientdet.anchors import efficientdet_anchors, efficientdet_cell_anchors

    cell = efficientdet_cell_anchors(8)
    big = 32 * 2 ** (1 / 3) / 2
    expected = torch.tensor(
        [
            [-12.0, -12, 20, 20],
            [-18.4, -7.2, 26.4, 15.2],
            [-7.2, -18.4, 15.2, 26.4],
            [4 - big, 4 - big, 4 + big, 4 + big],
        ]
    )
    torch.testing.assert_close(cell[:4], expected, rtol=0, atol=1e-5)
    anchors = efficientdet_anchors()
    assert anchors.num_anchors_per_location() == [9] * 5
    # P7 (stride 128): size 512 centred on (64, 64)
    torch.testing.assert_close(anchors.cell_anchors[4][0], torch.tensor([-192.0, -192, 320, 320]))
