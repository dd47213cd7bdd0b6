"""3x3 convolutions through NNPACK's fast algorithms, for CPU inference and training.

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
at least ``min_pixels`` pixels per image (one-image path) or a batch of at least ``min_batch`` images of
at least ``min_side`` pixels a side (batch path): :class:`~segdet.ops.nnpack_rules.Rules`. NNPACK reads
and writes NCHW, so in a channels-last network every such convolution adds two layout copies: it pays in
the R-CNN detectors run NCHW (Faster R-CNN R50-FPN at 800²: 0.89 -> 0.72 of torchvision's time;
channels-last with NNPACK: 0.74), not in U-Net ResNet-34 (512², channels-last: 0.85 -> 0.97 of smp's
time, NCHW 0.98) nor in DeepLabv3+ (0.96 -> 0.95): :func:`segdet.engine.inference.prepare_for_inference`
uses it for the R-CNN detectors only, unless told otherwise. The rounding is different: Winograd's
transforms grow the error of a float32 convolution from ~1.4e-6 to ~1.2e-5 of the largest output
(measured on random data); on the detectors this moves boxes by ~1e-2 px and scores by ~1e-4, as large as
folding BatchNorm does.

NNPACK has AVX2 kernels only, so where it pays depends on the CPU: :mod:`segdet.ops.nnpack_rules` holds
the thresholds measured on AVX2 CPUs (the numbers here) and on AMD Zen 4 (AVX-512), and
:func:`segdet.models.memory_format.nnpack_pays` chooses NNPACK on those two only. NNPACK runs on its own
thread pool, created at its first call with ``torch.get_num_threads()`` threads.

**Training** (``use_nnpack(model, training=True)``, what ``train.nnpack`` turns on). A convolution
``y = w ⋆ x + b`` needs three products per step: the forward, the input gradient
``∂L/∂x = rot180(w)ᵀ ⋆ ∂L/∂y`` (a 3x3 stride-1 convolution too, with the kernel flipped and its input
and output channels swapped, so NNPACK computes it as well) and the weight gradient
``∂L/∂w = Σ_pixels ∂L/∂y · x``, a correlation of two feature maps that NNPACK cannot compute here: segdet's
own Winograd ``F(3x3, 4x4)`` does (:mod:`segdet.ops.winograd`, needs its C++ kernel). :class:`_TrainingConv`
is that autograd function; each product falls back to oneDNN's where it would not pay. Measured on the
2-core AVX2 host, 2 threads, batch 2, ms, NNPACK / Winograd against oneDNN:

| map (layer) | forward | input gradient | weight gradient |
|---|---:|---:|---:|
| ``256 -> 256`` at 100 x 134 (RetinaNet's heads on P3 at 800 px) | 138 / 258 | 121 / 252 | 195 / 356 |
| ``256 -> 819`` at 100 x 134 (RetinaNet's classifier on P3) | 368 / 848 | 364 / 826 | 601 / 1491 |
| ``256 -> 256`` at 50 x 67 (P4) | 52 / 58 | 50 / 60 | 49 / 86 |
| ``256 -> 256`` at 25 x 34 (P5) | 45 / 48 | 69 / 45 | 16 / 28 |
| ``128 -> 128`` at 150² (SSD300's conv2) | 74 / 116 | 85 / 97 | 82 / 140 |
| ``256 -> 256`` at 75² (conv3) | 68 / 116 | 65 / 104 | 64 / 141 |
| ``512 -> 512`` at 38² (conv4) | 87 / 99 | 106 / 96 | 86 / 199 |
| ``512 -> 512`` at 19² (conv5) | 64 / 29 | 66 / 27 | 40 / 39 |
| ``1024 -> 546`` at 19² (a head) | | | 115 / 86 |

Hence ``min_train_pixels`` per image for NNPACK's forward and input gradient, and ``min_tiles`` 4 x 4
tiles in the batch for the Winograd weight gradient (its 36 matrix products have the tiles as their
inner dimension, too short below that). The gradients differ from oneDNN's by Winograd's rounding
(~1e-5 of the largest value, measured), like NNPACK's inference outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.ops.nnpack_rules import AVX2, Rules, measured_rules
from segdet.ops.winograd import available as winograd_available
from segdet.ops.winograd import conv3x3_weight_grad

# Below this, oneDNN's direct kernels are as fast or faster (module docstring); the other thresholds
# depend on the CPU (segdet.ops.nnpack_rules).
MIN_CHANNELS = 128


def nnpack_available() -> bool:
    """NNPACK is compiled into torch and runs on this CPU (initialising it on first call)."""
    available = getattr(torch, "_nnpack_available", None)
    return bool(available is not None and hasattr(torch, "_nnpack_spatial_convolution") and available())


def rules() -> Rules:
    """The thresholds :class:`NNPACKConv2d` applies: this CPU's measured ones, AVX2's where none were
    measured (NNPACK asked for explicitly)."""
    return measured_rules() or AVX2


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


def _nnpack_per_image(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """NNPACK's one-image (Winograd) path, image by image: its batch path is slow on large images
    (2 x 256 x 200²: 968 ms, image by image 266 ms, oneDNN 525 ms). ``x``, ``weight``: contiguous NCHW."""
    outs = [torch._nnpack_spatial_convolution(x[i : i + 1], weight, bias, [1, 1]) for i in range(len(x))]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class _TrainingConv(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding=1)`` for training (module docstring, "Training"): forward and
    input gradient on NNPACK when ``nnpack`` (else oneDNN's), the weight gradient by
    :func:`segdet.ops.winograd.conv3x3_weight_grad` when ``winograd`` (else oneDNN's), the bias gradient
    a sum. Inputs: ``x`` [N, C_in, H, W] and ``weight`` [C_out, C_in, 3, 3], contiguous NCHW float32
    on the CPU."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, nnpack: bool, winograd: bool) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.nnpack, ctx.winograd = bias is not None, nnpack, winograd
        if nnpack:
            return _nnpack_per_image(x, weight, bias)
        return F.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if need_x and ctx.nnpack:
            # ∂L/∂x = conv_transpose(∂L/∂y, w) = (w with channels swapped, rotated 180°) ⋆ ∂L/∂y
            grad_x = _nnpack_per_image(grad_out, weight.transpose(0, 1).flip(2, 3).contiguous(), None)
        if need_w and ctx.winograd:
            grad_w = conv3x3_weight_grad(x, grad_out)
            if need_b:
                grad_b = grad_out.sum((0, 2, 3))
        mask = [need_x and grad_x is None, need_w and grad_w is None, need_b and grad_b is None]
        if any(mask):
            bias_sizes = [weight.shape[0]] if ctx.has_bias else None
            dnn = torch.ops.aten.convolution_backward(
                grad_out, x, weight, bias_sizes, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
            )
            ours = (grad_x, grad_w, grad_b)
            grad_x, grad_w, grad_b = (d if m else g for d, m, g in zip(dnn, mask, ours, strict=True))
        return grad_x, grad_w, grad_b, None, None


class NNPACKConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3x3, stride 1, padding 1) computed by NNPACK when that pays off: float32 on
    the CPU, not under autocast, inputs as large as the module docstring says; otherwise the usual kernel.

    When a gradient is needed the usual kernel runs unless ``training_path`` is set (``use_nnpack(...,
    training=True)``): then :class:`_TrainingConv` computes the products where NNPACK
    (``min_train_pixels``) or the Winograd weight gradient (``min_tiles``, ``min_grad_channels``) pays.
    The parameters and state-dict keys are the ``nn.Conv2d``'s. The output keeps the input's memory format
    (NNPACK itself reads and writes contiguous NCHW).
    """

    training_path: bool = False

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if (
            n == 0
            # under autocast the convolution is autocast's (reduced precision) to run
            or torch.is_autocast_enabled("cpu")
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or self.weight.dtype != torch.float32
        ):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        rule = rules()
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            nnpack = self.training_path and h * w >= rule.min_train_pixels
            tiles = n * ((h + 3) // 4) * ((w + 3) // 4)
            wide = min(self.in_channels, self.out_channels) >= rule.min_grad_channels
            winograd = self.training_path and tiles >= rule.min_tiles and wide and winograd_available()
            if not (nnpack or winograd):
                return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
            return self._run(x, lambda y, weight: _TrainingConv.apply(y, weight, self.bias, nnpack, winograd))
        if h * w >= rule.min_pixels:
            return self._run(x, lambda y, weight: _nnpack_per_image(y, weight, self.bias))
        if n >= rule.min_batch and min(h, w) >= rule.min_side:
            batch_path = torch._nnpack_spatial_convolution
            return self._run(x, lambda y, weight: batch_path(y, weight, self.bias, [1, 1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def _run(self, x: Tensor, kernel) -> Tensor:
        """``kernel(x, weight)`` on contiguous NCHW tensors, the output in ``x``'s memory format."""
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        out = kernel(x.contiguous(), self.weight.contiguous())
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def use_nnpack(model: nn.Module, *, training: bool = False) -> int:
    """Replace every eligible convolution of ``model`` (:func:`is_eligible`) by an
    :class:`NNPACKConv2d` sharing its parameters, in place; ``training``: also when gradients are
    needed (:class:`_TrainingConv`). Returns how many were replaced (0 when NNPACK is not available)."""
    if not nnpack_available():
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_eligible(child):
                setattr(parent, name, _as_nnpack(child))
                replaced += 1
            if isinstance(getattr(parent, name), NNPACKConv2d):
                getattr(parent, name).training_path = training
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
