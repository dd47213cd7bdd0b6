"""Fast R-CNN, Faster R-CNN, Mask R-CNN, RetinaNet, EfficientDet (BiFPN), SSDLite, YOLO v1, CenterNet and
YOLACT (ours, via ``segdet.models.build``, random init) overfit four synthetic shapes images within a
fixed number of steps, measured with our COCO evaluator on the same images through
:class:`segdet.engine.detection.DetectionTask` (the trainer's evaluation path).

Reference: the ground truth itself (``segdet.metrics.coco_eval``, equal to pycocotools' COCOeval).
Bound: box AP50 >= 0.9, and mask AP50 >= 0.9 for Mask R-CNN and YOLACT, after ``STEPS`` AdamW steps
(or the test's own count). The bound is the issue's and is not loosened to pass. A model that trains
(losses, targets, label shift, box coding, mask targets) reaches AP50 = 1.0 here; a wrong label offset,
box decoding or mask paste keeps it near 0.
"""

from __future__ import annotations

import pytest
import torch
from small_detector import SMALL
from torch.utils.data import DataLoader

from segdet.data import shapes
from segdet.data.collate import collate_detection
from segdet.engine.config import from_dict
from segdet.engine.detection import DetectionTask
from segdet.engine.devices import training_uses_channels_last
from segdet.engine.optimizer import build_optimizer
from segdet.engine.schedule import build_scheduler

STEPS = 50


# RetinaNet v2 (GroupNorm heads, GIoU loss) on the same narrow ResNet-18 FPN, its 3 scales x 3 ratios
# scaled down 4x like the R-CNN anchors. (v1, without norm in the heads, needs ~4x the steps here.)
RETINANET = {
    "backbone": "resnet18",
    "fpn_channels": 64,
    "min_size": 64,
    "max_size": 64,
    "anchor_sizes": [[8, 10, 12], [16, 20, 25], [32, 40, 50], [64, 80, 101], [128, 161, 203]],
}
# EfficientDet-D0 (its 64-channel width) with 2 BiFPN layers on the 64 px images at 1.5x (padded to 96,
# not 128: P3 ... P7 of 12² ... 1²), its anchors at 1.5 x stride (12 px on P3, not 32); stochastic depth
# off: it only slows memorising. At 64 px the per-level BatchNorms of P5 ... P7 (2², 1², 1², batch 4) see
# too few values (AP50 0.80-0.97 depending on the learning rate, measured with torchvision's anchors).
EFFICIENTDET = {
    "width": 64,
    "bifpn_layers": 2,
    "stochastic_depth_prob": 0.0,
    "min_size": 96,
    "max_size": 96,
    "size_divisible": 32,
    "anchor_scale": 1.5,
}
# SSDLite at 128 px (its maps 8², 4², 2², 1², 1², 1²; default boxes 0.2..0.95 of the image).
SSDLITE = {"size": [128, 128]}
# YOLO v1 with the paper's network (24 conv + 2 FC, no normalisation) at 1/8 width on 64 px inputs,
# S = 7 (no two centres of these images share a cell), B = 2; dropout off: it only slows memorising.
YOLOV1 = {"width": 0.125, "fc_channels": 256, "size": [64, 64], "dropout": 0.0}
# CenterNet on ResNet-18 with narrow upsampling stages (64 px inputs -> 16 x 16 output maps).
CENTERNET = {"upsampling_channels": [64, 32, 32], "head_channels": 32, "min_size": 64, "max_size": 64}

# YOLACT on ResNet-18 with a narrow FPN and Protonet, the 64 px images at 1.5x: a 24 x 24 prototype grid
# (stride 4). At 64 px its 16 x 16 grid cannot hold the 6-12 px shapes: their target masks, reduced to
# the grid and sampled back, already miss IoU 0.5 for some (mask AP50 0.85 after 100 steps there).
YOLACT = {
    "backbone": "resnet18",
    "fpn_channels": 32,
    "protonet_channels": 32,
    "num_prototypes": 16,
    "min_size": 96,
    "max_size": 96,
    "anchor_sizes": [[12], [24], [48], [96], [192]],
}

# Fast R-CNN on ResNet-18's layer3 with narrow fc6 / fc7; the 64 px images at 1.5x (a 6 x 6 map);
# selective-search proposals computed by the model in the first step (under 100 per image, recall@0.5
# of 1.0) and cached in the test's folder; the paper's 64 RoIs per image, 25% foreground.
FAST_RCNN = {"backbone": "resnet18", "representation_size": 128, "min_size": 96, "max_size": 96}


@torch.no_grad()
def precise_batchnorm(net: torch.nn.Module, batch) -> None:
    """Re-estimate BatchNorm statistics on ``batch`` with the trained weights (Detectron2's PreciseBN):
    SSDLite's BatchNorm momentum of 0.03 lets the running statistics of a 60-step run lag far behind
    the weights (train-mode AP50 1.0, eval-mode ~0.1 without this)."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    net(*batch)
    net.eval()


def overfit(
    tmp_path,
    task: str,
    model: str,
    options: dict = SMALL,
    steps: int = STEPS,
    lr: float = 0.001,
    precise_bn: bool = False,
    trained: list | None = None,
) -> dict[str, float]:
    """The metrics after training; ``trained`` (a list) receives ``(model, task)``."""
    torch.manual_seed(0)
    images = shapes.generate(tmp_path / "shapes", 4, seed=0, size=64)
    cfg = from_dict(
        {
            "task": task,
            "output_dir": str(tmp_path / "runs"),
            "model": {"name": model, **options},
            "data": {"batch_size": 4, "hflip": 0.0},
            "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.0},
            "schedule": {"name": "cosine", "warmup_steps": 10},
        }
    )
    det = DetectionTask(cfg, splits=(images, images))  # evaluated on the images it trains on
    net = det.build_model()
    if training_uses_channels_last(net, torch.device("cpu"), cfg.train):  # as the trainer does
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(net, cfg)
    scheduler = build_scheduler(optimizer, steps, cfg.schedule)
    train = det.train_dataset()
    batch = det.to_device(collate_detection([train[i] for i in range(len(train))]), torch.device("cpu"))
    net.train()
    for _ in range(steps):
        loss, parts = det.loss(net, batch)
        assert torch.isfinite(loss), parts
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    if precise_bn:
        precise_batchnorm(net, batch)
    net.eval()
    loader = DataLoader(det.val_dataset(), batch_size=4, collate_fn=det.val_collate)
    if trained is not None:
        trained.append((net, det))
    with torch.no_grad():
        return det.evaluate(net, loader, torch.device("cpu"))


def assert_default_inference_keeps_ap(net, det: DetectionTask, metrics: dict[str, float]) -> None:
    """``segdet eval``'s default path on the trained ``net`` (a copy: BatchNorm folded, channels-last
    for these depthwise models, :func:`segdet.engine.inference.prepare_for_inference`) scores the box
    AP and AP50 of the model as trained within 0.002 (#10's bound)."""
    import copy

    from segdet.engine.inference import prepare_for_inference

    fast = prepare_for_inference(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.backbone.modules())
    assert next(fast.backbone.parameters()).is_contiguous(memory_format=torch.channels_last)
    loader = DataLoader(det.val_dataset(), batch_size=4, collate_fn=det.val_collate)
    with torch.no_grad():
        default = det.evaluate(fast, loader, torch.device("cpu"))
    for key in ("AP", "AP50"):
        assert abs(default[key] - metrics[key]) <= 0.002, (key, default, metrics)


def assert_exports_as_trained(
    net, det: DetectionTask, tmp_path, capsys, exact: bool = True, any_size: bool = True, suffix: str = ".pt2"
) -> None:
    """The trained ``net`` saved as a checkpoint and put through ``segdet export --image`` (its first
    image) to a ``.pt2`` program that takes any image size, which detects on each of the four images what
    ``net`` detects (``torch.export.load`` runs PyTorch's kernels): ``exact``, equal (a network without
    BatchNorm); else paired by :func:`segdet.engine.export.compare_detections` (the program's BatchNorm
    is folded: float rounding), masks too; and, paired, on each image resized to 90 x 72 and 72 x 90
    (taller, wider: the transform's resize, the anchors and the decoding follow the input's size). The
    images have detections to compare. The command prints its four checks (two at other sizes). Not
    ``any_size``: ``--size 64 64`` (a program of one size; a dynamic YOLACT takes ~30 s to export and as
    long to load, too slow for the suite). ``suffix`` ``.onnx``: the file runs on ONNX Runtime, paired
    (not exact)."""
    from segdet.cli.main import main
    from segdet.data.io import load_image
    from segdet.engine.checkpoint import save_checkpoint
    from segdet.engine.config import to_dict
    from segdet.engine.export import DetectionGraph, compare_detections, load_exported

    checkpoint, out = tmp_path / "trained.safetensors", tmp_path / f"trained{suffix}"
    state = {"model": net.state_dict(), "config": to_dict(det.cfg), "classes": list(det.classes)}
    save_checkpoint(checkpoint, {**state, "epoch": 1, "task": det.cfg.task})
    first = sorted((tmp_path / "shapes").rglob("*.png"))[0]
    argv = ["export", str(checkpoint), "--out", str(out), "--image", str(first)]
    assert main(argv if any_size else [*argv, "--size", "64", "64"]) == 0
    printed = capsys.readouterr().out
    if any_size:
        assert "float32 1 x 3 x H x W, any H and W from 32 to 8192" in printed
        checks = ("the traced image", "it at 5/4 x 1, 80 x 64", "it at 1 x 5/4, 64 x 80", "a blank image")
    else:
        assert "float32 1 x 3 x 64 x 64," in printed
        checks = ("the traced image", "a blank image")
    for check in checks:
        assert f"on {check}: " in printed, printed
    assert torch.equal(det.val_dataset()[0][0], load_image(first).float() / 255)  # the traced image
    # the program was traced from the checkpoint, NCHW: equality needs the trained net's kernels in NCHW
    # too (it may have trained channels-last: overfit)
    run, graph = load_exported(out), DetectionGraph(net.to(memory_format=torch.contiguous_format))
    with torch.no_grad():
        for i in range(4):
            image = det.val_dataset()[i][0].as_subclass(torch.Tensor)[None]
            expected, got = graph(image), run(image)
            assert len(expected[1]) > 0 and len(got) == len(graph.outputs)
            if exact:
                for key, want, value in zip(graph.outputs, expected, got, strict=True):
                    assert torch.equal(value, want), (i, key)
            else:
                check = compare_detections(expected, got, f"image {i}")
                assert check.ok and (graph.masks is None or "mask" in check.summary), check.summary
            # other sizes and aspect ratios (mild: YOLACT at 96 px would have 1 px levels at 64 x 96)
            for size in ((90, 72), (72, 90)) if any_size else ():
                other = torch.nn.functional.interpolate(image, size=size, mode="bilinear", antialias=True)
                expected = graph(other)
                check = compare_detections(expected, run(other), f"image {i} at {size}")
                assert check.ok and len(expected[1]) > 0, check.summary


@pytest.mark.opencv_contrib
@pytest.mark.slow
def test_fast_rcnn_overfits_shapes(tmp_path):
    options = {**FAST_RCNN, "proposal_cache": str(tmp_path / "proposals")}
    metrics = overfit(tmp_path, "detection", "fastrcnn_resnet50_c4", options, steps=20, lr=0.003)
    assert metrics["AP50"] >= 0.9, metrics


@pytest.mark.slow
def test_faster_rcnn_overfits_shapes(tmp_path):
    metrics = overfit(tmp_path, "detection", "fasterrcnn_resnet50_fpn")
    assert metrics["AP50"] >= 0.9, metrics


@pytest.mark.slow
def test_mask_rcnn_overfits_shapes(trained_detector, tmp_path):
    """The same set-up, trained once for the session (``tests/engine/conftest.py``: 50 steps on the 4
    images it is evaluated on), evaluated by ``segdet eval`` on the model as trained (no folding)."""
    import json

    from segdet.cli.main import main

    out = tmp_path / "metrics.json"
    argv = ["eval", str(trained_detector), "--device", "cpu", "--no-fuse", "--no-nnpack", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["AP50"] >= 0.9, metrics
    assert metrics["mask_AP50"] >= 0.9, metrics


@pytest.mark.slow
def test_retinanet_overfits_shapes(tmp_path):
    metrics = overfit(tmp_path, "detection", "retinanet_resnet50_fpn_v2", RETINANET, steps=50, lr=0.003)
    assert metrics["AP50"] >= 0.9, metrics


@pytest.mark.slow
def test_efficientdet_overfits_shapes(tmp_path):
    """EfficientDet-D0 with 2 BiFPN layers (EfficientNet-B0 from scratch), 40 steps at learning rate 0.01,
    BatchNorm statistics re-estimated after training as for SSDLite: box AP50 1.0 (1.0 and 0.99 at 0.008
    and 0.012; with torchvision's rounded, cell-corner anchors instead of the paper's it needed 60 steps
    for 0.97). It replaces the RetinaNet on a BiFPN, which reached 0.99 in 40 steps: the same neck,
    learning here. Its default inference (folded, channels-last) scores the same AP."""
    trained = []
    metrics = overfit(
        tmp_path,
        "detection",
        "efficientdet_d0",
        EFFICIENTDET,
        steps=40,
        lr=0.01,
        precise_bn=True,
        trained=trained,
    )
    assert metrics["AP50"] >= 0.9, metrics
    assert_default_inference_keeps_ap(*trained[0], metrics)


@pytest.mark.slow
def test_ssdlite_overfits_shapes(tmp_path):
    """Its default inference (folded, channels-last) scores the same AP."""
    trained = []
    metrics = overfit(
        tmp_path, "detection", "ssdlite320_mobilenet_v3_large", SSDLITE, 60, 0.003, True, trained
    )
    assert metrics["AP50"] >= 0.9, metrics
    assert_default_inference_keeps_ap(*trained[0], metrics)


@pytest.mark.slow
def test_yolov1_overfits_shapes(tmp_path, capsys):
    """Then exported (segdet export) for any image size, to ``.pt2`` and to ONNX, it detects as the trained
    model on the four images and on them at two other sizes."""
    trained = []
    metrics = overfit(tmp_path, "detection", "yolov1", YOLOV1, steps=150, lr=0.001, trained=trained)
    assert metrics["AP50"] >= 0.9, metrics
    assert_exports_as_trained(*trained[0], tmp_path, capsys)
    assert_exports_as_trained(*trained[0], tmp_path, capsys, exact=False, suffix=".onnx")


@pytest.mark.slow
def test_centernet_overfits_shapes(tmp_path, capsys):
    """140 steps: AP50 1.0 (AP 0.72 / 0.69) on one thread and on two of an AMD EPYC with AVX-512, 1.0
    from 120 steps on. Fewer steps sit at the bound, by host and thread count: at 40, 0.87-0.95 (and a
    last-bit change of the input's float conversion moved it); at 80, 0.94 where it was measured before
    (it passed on the AVX2 and Xeon hosts) but 0.90 / 0.93 on two / one threads of the AMD AVX-512 host
    (0.89 / 0.94 at 100). Then exported to ONNX for any image size (an aspect-keeping resize: its sizes
    in float64, :mod:`segdet.engine.export.onnx_sizes`), it detects as the trained model on the four
    images and on them at two other sizes."""
    trained = []
    metrics = overfit(
        tmp_path, "detection", "centernet_resnet18", CENTERNET, steps=140, lr=0.004, trained=trained
    )
    assert metrics["AP50"] >= 0.9, metrics
    assert_exports_as_trained(*trained[0], tmp_path, capsys, exact=False, suffix=".onnx")


@pytest.mark.slow
def test_yolact_overfits_shapes(tmp_path, capsys):
    """55 steps: box AP50 1.0, mask AP50 1.0 at learning rate 0.004 (0.96 at 0.003; at 128 px and 50
    steps mask AP50 0.7: the masks learn after the boxes). Then exported (segdet export), it detects
    as the trained model on the four images, masks included."""
    trained = []
    metrics = overfit(
        tmp_path, "instance", "yolact_resnet50_fpn", YOLACT, steps=55, lr=0.004, trained=trained
    )
    assert metrics["AP50"] >= 0.9, metrics
    assert metrics["mask_AP50"] >= 0.9, metrics
    assert_exports_as_trained(*trained[0], tmp_path, capsys, exact=False, any_size=False)
