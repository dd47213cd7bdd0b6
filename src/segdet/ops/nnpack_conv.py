"""3x3 convolutions through NNPACK's fast algorithms, for CPU inference.

A dense 3x3 convolution computed directly costs ``9 C_in C_out`` multiply-adds per output pixel.
Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR
2016) computes an ``m x m`` output tile from an ``(m+2) x (m+2)`` input tile as

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

with fixed transform matrices ``A, B, G``: the elementwise products replace the sliding window, and summed
over input channels they become ``(m+2)²`` independent matrix products. NNPACK's ``F(6x6, 3x3)`` needs
``64`` multiplies per ``36`` outputs where the direct method needs ``324``: 5x fewer in theory. For a
batch of tiles (R-CNN's mask head) NNPACK uses its throughput algorithm (FFT / Winograd on 8x8 tiles).

Measured on the 2-core AVX2 host of this project (torch 2.14.1 CPU, medians of 5, against oneDNN's
direct kernels, which reach ~185 GFLOP/s, near the cores' AVX2 peak):

* ``256 -> 256`` at 200², batch 1 (an FPN / RPN convolution on P2 at 800 px): 252 ms -> 98 ms;
  at 100²: 64 -> 27 ms; at 50²: 16 -> 10 ms; at 25²: 4.2 -> 5.9 ms (slower: too few tiles);
* at 38² (SSD300's conv4, 1444 px), one thread, NNPACK's time over oneDNN's: ``512 -> 512`` 0.59-0.82
  (84 -> 69 ms and 108 -> 49 ms in two runs), ``256 -> 256`` 0.59, ``128 -> 128`` 0.72; at 32²
  0.65-0.96; at 25² 0.87-1.04; at 19² 1.3-1.8 (slower). SSD300 inference, one thread: 0.83 -> 0.68 of
  torchvision's time with its 38² maps on NNPACK. On two threads NNPACK gains less on small maps (38²:
  0.87 / 1.05 / 1.13 for 128 / 256 / 512 channels; 50²: 0.39-0.85) and SSD300 is even (0.856 with
  the threshold at 2500 px, 0.847 at 1200): the threshold is set for one thread, where it pays;
* ``128 -> 128`` at 100²: 16.4 -> 10.2 ms; ``64 -> 64`` at 200²: 15.1 -> 15.0 ms and ``128 -> 32``
  at 256²: 28.9 -> 32.0 ms (no gain: too few channels for the transforms to pay off);
* ``256 -> 256`` on RoI features, NNPACK's batch path: 100 RoIs of 14² (the mask head) 128 -> 64 ms;
  25 of 14²: 32 -> 26 ms; 25 of 10²: 18 -> 16 ms; but 13 of 14²: 17 -> 21 ms, 4 of 28²: 21 -> 31 ms and
  1000 of 7² (the box head of ``fasterrcnn_resnet50_fpn_v2``): 366 -> 422 ms.

Hence the rules of :class:`NNPACKConv2d`: at least ``MIN_CHANNELS`` input and output channels, and either
at least ``MIN_PIXELS`` pixels per image (one-image path) or a batch of at least ``MIN_BATCH`` images of
at least ``MIN_SIDE`` pixels a side (batch path). NNPACK reads and writes NCHW, so in a
channels-last network every such convolution adds two layout copies: it pays in the R-CNN detectors
run NCHW (Faster R-CNN R50-FPN at 800²: 0.89 -> 0.72 of torchvision's time; channels-last with NNPACK:
0.74), not in U-Net ResNet-34 (512², channels-last: 0.85 -> 0.97 of smp's time, NCHW 0.98) nor in
DeepLabv3+ (0.96 -> 0.95): :func:`segdet.engine.inference.prepare_for_inference` uses it for the R-CNN
detectors only, unless told otherwise. The rounding is different: Winograd's transforms grow the
error of a float32 convolution from ~1.4e-6 to ~1.2e-5 of the largest output (measured on random data);
on the detectors this moves boxes by ~1e-2 px and scores by ~1e-4, as large as folding BatchNorm does.

CPUs with AVX-512 run oneDNN's direct kernels twice as wide while NNPACK has AVX2 kernels only, so the
gain there is unmeasured: :func:`nnpack_is_faster` says yes only for AVX2 CPUs. NNPACK runs on its own
thread pool, created at its first call with ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Below these, oneDNN's direct kernels are as fast or faster (measurements in the module docstring).
MIN_CHANNELS = 128
MIN_PIXELS = 1200  # per image, for the one-image path: 35² and up (38² wins, 32² is even)
MIN_BATCH, MIN_SIDE = 20, 10  # for the batch path (R-CNN heads: many small RoI features)


def nnpack_available() -> bool:
    """NNPACK is compiled into torch and runs on this CPU (initialising it on first call)."""
    available = getattr(torch, "_nnpack_available", None)
    return bool(available is not None and hasattr(torch, "_nnpack_spatial_convolution") and available())


def nnpack_is_faster() -> bool:
    """Whether NNPACK's 3x3 convolutions were measured faster than oneDNN's on this kind of CPU: AVX2
    x86 CPUs without AVX-512 (module docstring)."""
    return nnpack_available() and torch.backends.cpu.get_cpu_capability() == "AVX2"


def is_eligible(conv: nn.Module) -> bool:
    """A plain dense 3x3 convolution, stride 1, "same" zero padding: what NNPACK computes."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


class NNPACKConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3x3, stride 1, padding 1) computed by NNPACK when that pays off: float32 on
    the CPU, no gradient needed, inputs as large as the module docstring says; otherwise the usual kernel
    (always in training: NNPACK's forward made R50-FPN training steps slower, 11.4 s against 10.6 s).

    The parameters and state-dict keys are the ``nn.Conv2d``'s. The output keeps the input's memory
    format (NNPACK itself reads and writes contiguous NCHW).
    """

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        per_image = n > 0 and h * w >= MIN_PIXELS
        as_batch = n >= MIN_BATCH and min(h, w) >= MIN_SIDE
        if (
            needs_grad
            or not (per_image or as_batch)
            # under autocast the convolution is autocast's (reduced precision) to run
            or torch.is_autocast_enabled("cpu")
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or self.weight.dtype != torch.float32
        ):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        x, weight = x.contiguous(), self.weight.contiguous()
        if per_image:
            # NNPACK's batch path is slow on large images (2 x 256 x 200²: 968 ms, image by image 266 ms,
            # oneDNN 525 ms): a large batch goes through the one-image (Winograd) path image by image.
            outs = [
                torch._nnpack_spatial_convolution(x[i : i + 1], weight, self.bias, [1, 1]) for i in range(n)
            ]
            out = outs[0] if n == 1 else torch.cat(outs)
        else:
            out = torch._nnpack_spatial_convolution(x, weight, self.bias, [1, 1])
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def use_nnpack(model: nn.Module) -> int:
    """Replace every eligible convolution of ``model`` (:func:`is_eligible`) by an
    :class:`NNPACKConv2d` sharing its parameters, in place. Returns how many were replaced (0 when NNPACK
    is not available)."""
    if not nnpack_available():
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_eligible(child):
                setattr(parent, name, _as_nnpack(child))
                replaced += 1
    return replaced


def _as_nnpack(conv: nn.Conv2d) -> NNPACKConv2d:
    new = NNPACKConv2d(
        conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None, device="meta"
    )
    # Share the parameters themselves (no copy): the module is a different kernel, not other weights.
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new
