"""Training on NNPACK and the Winograd weight gradient (``train.nnpack``, segdet.ops.nnpack_conv): when
the trainer turns it on, and that a model trained through those kernels learns as one trained through
oneDNN's (the reference): the same U-Net, data, seed and steps, final loss within 2 % and mIoU within
0.02 of each other (measured: loss 0.1516 / 0.1514, mIoU 0.692 / 0.688), the plain run above 0.6."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from segdet.data.collate import collate_segmentation
from segdet.engine.config import TrainConfig, from_dict
from segdet.engine.devices import training_uses_channels_last, training_uses_nnpack
from segdet.engine.optimizer import build_optimizer
from segdet.engine.schedule import build_scheduler
from segdet.engine.segmentation import SegmentationTask
from segdet.metrics.confusion import ConfusionMatrix
from segdet.models.memory_format import nnpack_pays
from segdet.ops import nnpack_conv, winograd
from segdet.ops.nnpack_conv import NNPACKConv2d, nnpack_available, use_nnpack

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("settings", "device", "expected"),
    [
        ({}, CPU, "auto"),  # float32 NCHW on the CPU: where it was measured faster
        ({"amp": "bf16"}, CPU, False),  # autocast's convolutions
        ({"channels_last": True}, CPU, False),  # layout copies
        ({}, CUDA, False),
        ({"nnpack": False}, CPU, False),
        ({"nnpack": True}, CPU, "available"),  # asked for: wherever NNPACK runs
        ({"nnpack": True, "channels_last": True}, CPU, "available"),
        ({"nnpack": True}, CUDA, False),
    ],
)
def test_when_the_trainer_uses_it(settings, device, expected):
    """For a detector (NNPACK trains them faster wherever its rules were measured)."""
    from segdet.models import build

    model = build("retinanet_resnet50_fpn", 2, backbone="resnet18")
    expected = {"auto": nnpack_pays(model), "available": nnpack_available()}.get(expected, expected)
    assert training_uses_nnpack(TrainConfig(**settings), device, model) is expected


@pytest.mark.parametrize(
    ("rules", "fpn", "plain"), [("AVX2", True, True), ("ZEN4", True, False), (None, False, False)]
)
def test_which_models_nnpack_pays_for(rules, fpn, plain, monkeypatch):
    """By the CPU's measured rules (segdet.ops.nnpack_rules): every dense model on AVX2; on Zen 4 those
    with an FPN (or SSD), not CenterNet nor U-Net (faster channels-last there); none where nothing was
    measured; never a model with depthwise convolutions."""
    from segdet.engine import devices
    from segdet.models import build, memory_format
    from segdet.ops import nnpack_rules

    if not nnpack_available():
        pytest.skip("torch has no NNPACK here")
    monkeypatch.setattr(memory_format, "measured_rules", lambda: rules and getattr(nnpack_rules, rules))
    retinanet = build("retinanet_resnet50_fpn", 2, backbone="resnet18")
    unet = build("unet_backbone", 2, backbone="resnet18")
    centernet = build("centernet_resnet18", 2)
    depthwise = build("unet_backbone", 2, backbone="mobilenet_v3_small")
    assert memory_format.nnpack_pays(retinanet) is fpn
    assert memory_format.nnpack_pays(unet) is plain
    assert memory_format.nnpack_pays(centernet) is plain
    assert not memory_format.nnpack_pays(depthwise)
    assert devices.training_uses_channels_last(unet, CPU, TrainConfig()) is not plain
    assert devices.training_uses_nnpack(TrainConfig(), CPU, unet) is plain
    assert devices.training_uses_nnpack(TrainConfig(), CPU, retinanet) is fpn


@pytest.mark.parametrize(
    ("name", "options", "settings", "device", "expected"),
    [
        ("unet_backbone", {"backbone": "mobilenet_v3_small"}, {}, CPU, True),  # depthwise
        ("efficientdet_d0", {"width": 16, "bifpn_layers": 1}, {}, CPU, True),
        ("efficientdet_d0", {"width": 16, "bifpn_layers": 1}, {}, CUDA, False),
        ("efficientdet_d0", {"width": 16, "bifpn_layers": 1}, {"nnpack": True}, CPU, False),
        ("unet_backbone", {"backbone": "resnet18"}, {}, CPU, "no nnpack"),  # dense: NNPACK's on AVX2
        ("retinanet_resnet50_fpn", {"backbone": "resnet18"}, {}, CPU, "no nnpack"),  # and on Zen 4
        ("unet_backbone", {"backbone": "resnet18"}, {"nnpack": True}, CPU, False),
        ("deeplabv3plus", {"backbone": "resnet18", "separable": True, "aspp_channels": 8}, {}, CPU, "fast"),
    ],
)
def test_when_the_trainer_trains_channels_last(name, options, settings, device, expected):
    """``train.channels_last`` None: channels-last for depthwise models on the CPU, unless a depthwise
    convolution is dilated 5 or more on a CPU with oneDNN's slow path for it (DeepLabv3+'s separable
    ASPP on AVX2); for dense models where NNPACK does not train them (not AVX2); never with
    ``train.nnpack`` true. Channels-last, NNPACK is not used."""
    from segdet.models import build
    from segdet.models.memory_format import slow_dilated_depthwise

    model = build(name, 2, **options)
    expected = {"no nnpack": not nnpack_pays(model), "fast": not slow_dilated_depthwise()}.get(
        expected, expected
    )
    assert training_uses_channels_last(model, device, TrainConfig(**settings)) is expected
    if expected:
        assert not training_uses_nnpack(TrainConfig(channels_last=expected), device, model)


def _segmenter_config(tmp_path):
    """conftest.py's ``trained_segmenter`` set-up: U-Net ResNet-18 on 64 px synthetic images, AdamW."""
    return from_dict(
        {
            "task": "segmentation",
            "output_dir": str(tmp_path / "runs"),
            "model": {
                "name": "unet_backbone",
                "backbone": "resnet18",
                "decoder_channels": [64, 32, 32, 16, 16],
            },
            "data": {"synthetic": 16, "synthetic_size": 64},  # 4 validation images
            "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.0},
            "schedule": {"name": "cosine", "warmup_steps": 10},
        }
    )


def _train(task: SegmentationTask, images, labels, steps: int, fast: bool) -> tuple[float, float]:
    """(final loss, mIoU on the training images) after ``steps`` AdamW steps of the whole batch."""
    torch.manual_seed(0)
    model = task.build_model()
    if fast:
        assert use_nnpack(model, training=True) > 0
    optimizer = build_optimizer(model, task.cfg)
    scheduler = build_scheduler(optimizer, steps, task.cfg.schedule)
    model.train()
    for _ in range(steps):
        loss = task.criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(1)
    matrix = ConfusionMatrix(len(task.classes))
    matrix.update(predicted, labels)
    return loss.item(), matrix.compute().mean_iou


@pytest.mark.skipif(
    not (nnpack_available() and winograd.available()), reason="needs NNPACK and the C++ kernel"
)
def test_training_through_the_fast_kernels_learns_as_onednn(tmp_path, monkeypatch):
    """ResNet-18's 3x3 convolutions of 128-512 channels (layers 2-4) train on the Winograd weight
    gradient, layer 2's also on NNPACK (forward, input gradient): the thresholds are lowered so that
    64 px images use them (NNPACK transforms the weights on every call: slow on layers 3-4's 4² / 2² maps)."""
    # layer 2's 8² maps; the weight gradient for every width (Zen 4's rules leave out 128 channels)
    lowered = dataclasses.replace(nnpack_conv.AVX2, min_train_pixels=64, min_tiles=1, min_grad_channels=1)
    monkeypatch.setattr(nnpack_conv, "rules", lambda: lowered)
    calls = {"nnpack": 0, "winograd": 0}
    nnpack_kernel, weight_grad = torch._nnpack_spatial_convolution, nnpack_conv.conv3x3_weight_grad

    def counted(name, kernel):
        return lambda *a: calls.__setitem__(name, calls[name] + 1) or kernel(*a)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counted("nnpack", nnpack_kernel))
    monkeypatch.setattr(nnpack_conv, "conv3x3_weight_grad", counted("winograd", weight_grad))

    task = SegmentationTask(_segmenter_config(tmp_path))
    images, labels = collate_segmentation([task.val_dataset()[i] for i in range(len(task.val_ann.images))])
    steps = 40
    plain_loss, plain_miou = _train(task, images, labels, steps, fast=False)
    assert calls == {"nnpack": 0, "winograd": 0}
    fast_loss, fast_miou = _train(task, images, labels, steps, fast=True)
    assert calls["nnpack"] > 0 and calls["winograd"] > 0
    print(f"plain: loss {plain_loss:.4f} mIoU {plain_miou:.4f}; fast: {fast_loss:.4f} {fast_miou:.4f}")
    assert plain_miou >= 0.6  # the model really learns
    assert fast_loss == pytest.approx(plain_loss, rel=0.02)
    assert fast_miou == pytest.approx(plain_miou, abs=0.02)


def test_use_nnpack_for_training_marks_every_nnpack_convolution():
    model = torch.nn.Sequential(*(torch.nn.Conv2d(128, 128, 3, padding=1) for _ in range(2)))
    if not nnpack_available():
        assert use_nnpack(model, training=True) == 0
        return
    use_nnpack(model)
    assert [m.training_path for m in model if isinstance(m, NNPACKConv2d)] == [False, False]
    use_nnpack(model, training=True)  # already replaced: only switched
    assert [m.training_path for m in model if isinstance(m, NNPACKConv2d)] == [True, True]
