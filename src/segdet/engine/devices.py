"""Where and how a run trains: the device a name asks for, the seeds, and the CPU's kernel and layout
choices (NNPACK's 3x3 convolutions, channels-last) that ``train.nnpack`` and ``train.channels_last``
leave to segdet when unset. The trainer resolves them once and saves them in the run's config."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from segdet.engine.config import TrainConfig
from segdet.engine.config_ranges import DEVICE
from segdet.errors import SegdetError
from segdet.models.memory_format import channels_last_pays, nnpack_pays
from segdet.ops.nnpack_conv import nnpack_available


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE.fullmatch(name):
        raise SegdetError(f"device {name!r} is not one of auto, cpu, mps, cuda, cuda:N")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegdetError(f"train.device={name!r} but CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SegdetError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SegdetError(f"device {name!r}: MPS is not available on this machine")
    return device


def training_uses_nnpack(train: TrainConfig, device: torch.device, model: nn.Module) -> bool:
    """Whether the wide 3x3 convolutions train on NNPACK and segdet's Winograd weight gradient
    (:mod:`segdet.ops.nnpack_conv`): float32 (no autocast) on the CPU, NCHW; ``train.nnpack`` None:
    where they were measured faster (:func:`~segdet.models.memory_format.nnpack_pays`). Under autocast the
    convolutions stay autocast's whatever this says, and a channels-last model pays two layout copies per
    convolution, so ``None`` leaves both alone."""
    if device.type != "cpu" or train.nnpack is False:
        return False
    if train.nnpack:
        return nnpack_available()
    return train.amp == "none" and not train.channels_last and nnpack_pays(model)


def training_uses_channels_last(model: nn.Module, device: torch.device, train: TrainConfig) -> bool:
    """``train.channels_last`` None: channels-last on the CPU where it pays
    (:func:`~segdet.models.memory_format.channels_last_pays`: not for a depthwise convolution dilated 5 or
    more on AVX2), except for dense models that NNPACK trains faster
    (:func:`~segdet.models.memory_format.nnpack_pays`: any on AVX2 CPUs, those with an FPN or SSD on Zen 4;
    or ``train.nnpack`` true for any model). NCHW on GPUs. Training steps
    channels-last over NCHW, 2 cores, batch 2: on AVX2, EfficientDet-D0 at 384 px 0.82, SSDLite320 0.78,
    YOLO v1 MobileNetV3-Small / -Large at 448 px 0.72 / 0.84, U-Net MobileNetV3-Large at 256 px 0.97
    (NNPACK: 0.97-1.06 of NCHW for these); on AVX-512 (Xeon with AMX), dense models too: U-Net ResNet-34
    at 256 px 0.91, DeepLabv3+ ResNet-50 0.93 (separable ASPP 0.96), Faster R-CNN / RetinaNet ResNet-50
    FPN 0.86 / 0.87 (NNPACK unmeasured there); on Zen 4 U-Net ResNet-34 0.90-0.92, DeepLabv3+ ResNet-50
    0.93, Faster R-CNN / RetinaNet 1.05 / 1.03, where NNPACK takes 0.74 / 0.73 of channels-last's time."""
    if device.type != "cpu" or train.nnpack or not channels_last_pays(model):
        return False
    return not nnpack_pays(model)  # which is false for grouped convolutions: they run channels-last


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- user code may draw from the global RNG
    torch.manual_seed(seed)
