"""Which memory format a model's convolutions run fastest in on the CPU, for inference.

oneDNN's channels-last (NHWC) CPU kernels are faster than its NCHW ones for dense convolutions (U-Net
ResNet-34 at 512 px: 0.81 of the time) and, by far, for depthwise ones: a 3 x 3 depthwise convolution
of 2048 channels on a 32 x 32 map takes 1.9 ms channels-last against 14.7 ms NCHW at dilation 1, 3.5
against 15.5 ms at dilation 4, but 91 against 13 ms at dilation 5 and 57 against 14 ms at dilation 18:
from dilation 5 on, the depthwise kernel falls back to a slow channels-last path (256 channels on 64 x 64
at dilation 6: 22 against 5.7 ms). Whole models, folded, batch 1, channels-last over NCHW time:
EfficientDet-D0 at 512 px 0.73, D3 at 896 px 0.64, SSDLite320 0.86, YOLO v1 MobileNetV3-Large / -Small
at 448 px 0.72 / 0.93, U-Net MobileNetV3-Large / EfficientNet-B0 at 512 px 0.78 / 0.79, DeepLabv3+
MobileNetV3 0.85, but DeepLabv3+ ResNet-50 with separable ASPP convolutions (depthwise at dilations 6, 12,
18) 1.14. The depthwise models are faster channels-last than on NNPACK's NCHW kernels too (0.64-0.90 of
the time; :func:`segdet.ops.nnpack_conv.use_nnpack` finds few convolutions to take in them: their 3 x 3
convolutions are depthwise). All measured on 2 cores of an AMD EPYC with AVX2 (torch 2.14.1), medians of
5 interleaved runs; ``benchmarks/memory_format.py`` measures a host.

On AVX-512 CPUs oneDNN has no such slow path: on 2 cores of a Xeon with AVX-512 and AMX, the same 2048
channel depthwise convolution takes 0.6 / 2.4 / 0.9 / 7.3 ms channels-last against 1.3 / 5.7 / 1.3 / 5.6
ms NCHW at dilation 1 / 4 / 5 / 18, and the separable DeepLabv3+ ResNet-50 runs in 0.86-0.88 of its NCHW
time channels-last (EfficientDet-D0 0.69, YOLO v1 MobileNetV3-Large 0.66, U-Net ResNet-34 0.82); on 2
cores of an AMD EPYC with AVX-512 the same four take 0.89, 0.67, 0.64 and 0.78 of their NCHW time. There
every model runs channels-last; elsewhere (AVX2, and CPUs not measured) the dilation rule holds.
"""

from __future__ import annotations

import torch
from torch import nn

from segdet.ops.nnpack_conv import nnpack_available
from segdet.ops.nnpack_rules import measured_rules

#: The smallest dilation at which a depthwise / grouped convolution is slower channels-last (see above).
SLOW_CHANNELS_LAST_DILATION = 5


def _grouped(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def has_grouped_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` has grouped / depthwise convolutions (MobileNet, EfficientNet, separable
    convolutions): NNPACK does not run them, and channels-last does (module docstring)."""
    return bool(_grouped(model))


def slow_dilated_depthwise() -> bool:
    """Whether this CPU may take oneDNN's slow channels-last path for dilated depthwise convolutions: all
    but AVX-512 CPUs (measured on AVX2; module docstring)."""
    return torch.backends.cpu.get_cpu_capability() != "AVX512"


def nnpack_pays(model: nn.Module) -> bool:
    """Whether ``model`` runs and trains faster in NCHW with NNPACK's 3x3 convolutions and the Winograd
    weight gradient than with oneDNN's kernels alone on this CPU (:mod:`segdet.ops.nnpack_rules`): never
    with grouped convolutions (channels-last wins there); on AVX2 CPUs every other model; on AMD Zen 4
    models with wide 3x3 convolutions on large maps (an FPN neck, or SSD's VGG-16); elsewhere none."""
    from segdet.models.detection.ssd.model import SSD
    from segdet.models.necks.fpn import FeaturePyramidNetwork

    rules = measured_rules()
    if rules is None or not nnpack_available() or has_grouped_convolutions(model):
        return False
    if not rules.wide_maps_only:
        return True
    return isinstance(model, SSD) or any(isinstance(m, FeaturePyramidNetwork) for m in model.modules())


def channels_last_pays(model: nn.Module) -> bool:
    """Whether ``model`` runs faster channels-last on the CPU: yes unless this CPU has the slow path
    (:func:`slow_dilated_depthwise`) and one of its grouped convolutions is dilated by
    :data:`SLOW_CHANNELS_LAST_DILATION` or more (module docstring)."""
    if not slow_dilated_depthwise():
        return True
    return all(max(m.dilation) < SLOW_CHANNELS_LAST_DILATION for m in _grouped(model))
