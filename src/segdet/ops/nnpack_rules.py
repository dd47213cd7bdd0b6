"""Where NNPACK's 3x3 convolutions and segdet's Winograd weight gradient pay, per kind of CPU.

NNPACK has AVX2 kernels only; oneDNN, the kernels it competes with, uses the widest vectors the CPU has.
Whether NNPACK still wins therefore depends on how wide the CPU really computes, not on its flags: AMD's
Zen 4 executes a 512-bit multiply-add as two 256-bit halves, so oneDNN's AVX-512 kernels do about as many
per cycle as its AVX2 ones and NNPACK's fewer multiplies still win on large maps; Intel's AVX-512
server cores (two 512-bit units) and Zen 5 (full-width units) are unmeasured and get no rules
(:func:`measured_rules`).

**AVX2** (AMD EPYC, 2 cores, 2 threads): the tables of :mod:`segdet.ops.nnpack_conv`'s docstring.

**Zen 4** (AMD EPYC, family 25 with AVX-512 and bf16, 2 cores, 2 threads, torch 2.14.1, medians of 5-7,
NNPACK's / Winograd's time over oneDNN's; two runs where given):

* inference, one image, ``256 -> 256``: 200² 0.42, 134 x 100 0.56, 100² 0.56 / 0.65, 88² 0.67,
  75² 0.76, 64² 0.79, 50² 1.21 / 1.30, 38² 1.54, 25² 2.53; ``512 -> 512``: 75² 0.42, 50² 0.56,
  38² 1.10; ``128 -> 128``: 200² 0.50, 150² 0.56-0.68, 100 x 134 0.74-0.79, 100² 0.91-1.05, 64²
  0.74-1.33 (two runs: noise). Hence ``min_pixels`` 4096 (64²; AVX2: 1200);
* inference, NNPACK's batch path on RoI features, ``256 -> 256``: 200 of 14² 0.56, 100 of 14² 0.53 /
  0.70, 50 of 14² 0.85, 25 of 14² 1.00, 25 of 28² 0.66, 100 of 7² 2.04, 1000 of 7² 1.32: ``min_batch`` 50;
* training, batch 2, ``256 -> 256``, forward / input gradient: 100 x 134 0.51 / 0.51, 75² 0.73 / 0.76,
  50 x 67 0.89 / 0.93, 25 x 34 2.16 / 2.11; ``512 -> 512`` at 38² 1.11 / 1.06; ``128 -> 128`` at 150²
  0.68 / 0.68: ``min_train_pixels`` 3000;
* the Winograd weight gradient, batch 2 (4 x 4 tiles): ``256 -> 256`` 50 x 67 (442 tiles) 0.70 / 0.73,
  38² (200) 0.98, 25 x 34 (126) 1.13 / 1.17; ``512 -> 512`` 38² (200) 0.83 / 0.92, 19² (50) 1.88;
  batch 4 of ``256 -> 256`` at 32² (256) 0.71; but ``128 -> 128`` loses at every size: 150² (2888)
  1.07 / 1.46, 100 x 134 1.12, 75² 0.93; ``64 -> 64`` at 128² 1.35. Hence ``min_tiles`` 200 and
  ``min_grad_channels`` 256 (AVX2: 100 tiles, every eligible convolution).

Whole models on that Zen 4, 2 threads, random weights, time over torchvision's (inference, 800², batch
1, folded BatchNorm) or over channels-last's (training, batch 2, SGD step): NNPACK in NCHW against
oneDNN channels-last (what ran before these rules) and NCHW:

| model | NNPACK, NCHW | oneDNN, channels-last | oneDNN, NCHW |
|---|---:|---:|---:|
| Faster R-CNN R50-FPN inference, of torchvision's | 0.75 / 0.77 | 0.83 / 0.86 | 0.89 / 0.92 |
| Mask R-CNN R50-FPN inference (100 detections) | 0.77 / 0.79 | 0.89 / 0.94 | 0.93 / 0.98 |
| RetinaNet R50-FPN inference | 0.84 | 0.90 | 0.97 |
| Faster R-CNN R50-FPN training at 800², of channels-last's | 0.74 | 1 | 0.95 |
| RetinaNet R50-FPN training at 800² | 0.73 | 1 | 0.97 |
| Mask R-CNN R18-FPN, ``configs/pennfudan_maskrcnn.yaml`` (``Trainer.train_step``) | 0.84 | 1 | 1.01 |
| YOLACT R50-FPN training at 512² (two runs) | 0.93 / 0.98 | 1 | 1.00 / 1.06 |
| SSD300 VGG-16 training, batch 4 | 0.80 | 1 | 1.00 |
| CenterNet R50 training at 512² | 0.97 | 1 | 1.02 |
| DeepLabv3+ R50 (OS 16) training at 512² | 0.89 | 1 | 1.08 |
| U-Net R34 training at 256², batch 4 / 512², batch 2 | 1.16 / 1.13 | 1 | 1.11 / 1.09 |

Other detectors, inference at 512 px (the same set-up, ms; NNPACK runs in NCHW):

| model | NCHW | channels-last | NNPACK |
|---|---:|---:|---:|
| YOLACT R50-FPN | 807 | 751 | 712 |
| SSD512 VGG-16 | 1000 | 901 | 723 |
| SSD300 VGG-16 | 347 | 312 | 320 |
| Faster R-CNN R50-C4 | 1538 | 1555 | 1521 |
| CenterNet R50 | 388 | 330 | 378 |
| YOLO v1 (Darknet) / YOLO v1 R50 | 296 / 389 | 282 / 372 | 300 / 386 |

On Zen 4 channels-last gains up to 15 % over NCHW in inference, and NNPACK gains less than on AVX2, so
NNPACK must gain more than channels-last does: it does where wide 3x3 convolutions run on large maps, the
FPN's and its heads' (256 channels on 1/4-1/8 maps) and SSD's VGG-16 (128-512 channels on 1/2-1/8 maps),
and not where they sit on the small maps at the end of a ResNet or Darknet (CenterNet, YOLO v1;
CenterNet's training step is a tie) nor in U-Net, where NNPACK gains next to nothing over NCHW. Hence
``wide_maps_only``: on Zen 4 NNPACK is chosen for models with an FPN neck or SSD's VGG
(:func:`segdet.models.memory_format.nnpack_pays`), channels-last for the rest (DeepLabv3+, which has
neither, leaves 11 % of its training step on the table; SSD300's inference loses 3-5 %, within the noise,
and its training step gains 20 %). On AVX2 every model without grouped convolutions runs on NNPACK as
before.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rules:
    """Thresholds of :class:`segdet.ops.nnpack_conv.NNPACKConv2d` on one kind of CPU (module docstring).

    * ``min_pixels``: inference, NNPACK's one-image path from this many pixels per image;
    * ``min_batch``, ``min_side``: its batch path for at least ``min_batch`` images at least ``min_side``
      a side (R-CNN heads: many small RoI features);
    * ``min_train_pixels``: training, forward and input gradient on NNPACK from this many pixels per image;
    * ``min_tiles``, ``min_grad_channels``: the Winograd weight gradient from this many 4 x 4 tiles in the
      batch, for convolutions with at least ``min_grad_channels`` input and output channels;
    * ``wide_maps_only``: NNPACK (NCHW) beats channels-last only for models with wide 3x3 convolutions on
      large maps (an FPN neck, SSD's VGG-16); false: for every model without grouped convolutions.
    """

    min_pixels: int
    min_batch: int
    min_side: int
    min_train_pixels: int
    min_tiles: int
    min_grad_channels: int
    wide_maps_only: bool


# AVX2: 38² wins, 32² is even (one image); 50 x 67 wins in training, 38² is even; 2 x 25 x 34 (126 tiles)
# wins for the weight gradient, 2 x 19² (50) is even or slower.
AVX2 = Rules(1200, 20, 10, 2500, 100, 128, wide_maps_only=False)
ZEN4 = Rules(4096, 50, 10, 3000, 200, 256, wide_maps_only=True)

_FIELD = re.compile(r"^(vendor_id|cpu family)\s*:\s*(\S+)", re.MULTILINE)


def rules_for(capability: str, cpuinfo: str) -> Rules | None:
    """The rules measured for a CPU with torch's ``capability`` (``torch.backends.cpu.get_cpu_capability()``:
    ``"AVX2"``, ``"AVX512"``, ...) and Linux's ``/proc/cpuinfo`` text; None where none were measured."""
    if capability == "AVX2":
        return AVX2
    fields = dict(_FIELD.findall(cpuinfo))
    if (
        capability == "AVX512"
        and fields.get("vendor_id") == "AuthenticAMD"
        and fields.get("cpu family") == "25"
    ):
        return ZEN4  # family 25 is Zen 3 and Zen 4; of them only Zen 4 has AVX-512
    return None


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read(1 << 16)  # the first processor's block is enough
    except OSError:
        return ""


@functools.cache
def measured_rules() -> Rules | None:
    """The rules measured for this machine's CPU (:func:`rules_for`), None where NNPACK was not measured
    (then segdet does not choose it; asked for explicitly, it runs with :data:`AVX2`'s thresholds)."""
    return rules_for(torch.backends.cpu.get_cpu_capability(), _cpuinfo())
