"""Export of a segmentation network (:func:`export_segmenter`): the graph ::

    images  float32 N x 3 x H x W, RGB in [0, 1]
      -> (images - mean) / std        the ImageNet mean and std of segdet's evaluation transform
      -> the network
      -> logits  float32 N x K x H x W
      -> labels  int64   N x H x W    argmax over the K classes

``labels`` is ``segdet predict``'s label map of an image of that size (``predict`` additionally shrinks
images larger than ``--max-size`` first). With ``size=None`` the graph takes any batch size and any
``H``, ``W`` that are multiples of ``divisor`` (32 for every built-in encoder: the stride of its deepest
features). Why not any size: the networks pad or crop odd sizes at every skip connection, and a traced
graph cannot keep such size-dependent steps general (``torch.export`` proves each one for all sizes it
allows, and padding inside the graph leaves sizes it cannot prove to be multiples). With ``size=(H, W)``
the graph takes exactly that size (any ``H``, ``W``; the batch stays free).

Checked on export: random batches of other sizes than the traced one, the largest logit difference
(:data:`LOGIT_TOLERANCE`) and the share of equal labels. The network is exported unfused (ONNX Runtime
folds BatchNorm itself).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from segdet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from segdet.engine.export.program import Check, Exported, export_format, trace, write
from segdet.errors import SegdetError

DIVISORS = (32, 64, 128)  # tried in turn: the first the network's strides allow
#: largest logit difference a segmentation export may show (float32 kernels in other orders: ~3e-7)
LOGIT_TOLERANCE = 1e-3


class SegmentationGraph(nn.Module):
    """The exported segmentation computation (module docstring): normalisation, ``model``, logits and
    labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model((images - self.mean) / self.std)
        return logits, logits.argmax(1)


def export_segmenter(model: nn.Module, path: Path, size: tuple[int, int] | None = None) -> Exported:
    """Write ``model`` (a segmentation network in eval mode, on the CPU) to ``path`` (``.onnx`` or
    ``.pt2``), dynamic (``size=None``) or at ``size``, checked (module docstring). The file appears whole
    or not at all."""
    graph = SegmentationGraph(model).eval()
    program, divisor = _trace_segmenter(graph, size)
    if size is None:
        shapes = [(1, 3, 3 * divisor, 5 * divisor), (3, 3, 7 * divisor, 2 * divisor)]  # not the traced
    else:
        shapes = [(1, 3, *size), (3, 3, *size)]
    inputs = [torch.rand(s, generator=torch.Generator().manual_seed(sum(s))) for s in shapes]

    def check(run) -> list[Check]:
        return [_check_segmentation(graph(x), run(x), x.shape) for x in inputs]

    checks = write(program, path, ["logits", "labels"], check)
    return Exported(path, export_format(path), size, divisor, checks)


def _trace_segmenter(
    graph: SegmentationGraph, size: tuple[int, int] | None
) -> tuple[torch.export.ExportedProgram, int]:
    """``torch.export`` of ``graph`` with a free batch size and, without ``size``, sides that are any
    multiple of the first of :data:`DIVISORS` the network allows."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    errors = []
    for divisor in DIVISORS if size is None else (1,):
        h, w = size or (4 * divisor, 6 * divisor)
        example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
        sides = {}
        if size is None:
            most = 8192 // divisor
            sides = {2: divisor * Dim("h", min=1, max=most), 3: divisor * Dim("w", min=1, max=most)}
        try:
            return trace(graph, example, ({0: batch, **sides},)), divisor
        except torch._dynamo.exc.UserError as e:  # a size constraint the network does not meet
            errors.append(f"{divisor}: {str(e).splitlines()[0]}")
    raise SegdetError(f"the network cannot be exported for sizes that are multiples of {DIVISORS}: {errors}")


def _check_segmentation(expected: tuple[Tensor, Tensor], got: tuple[Tensor, Tensor], shape) -> Check:
    (expected_logits, expected_labels), (logits, labels) = expected, got
    where = "x".join(map(str, shape))
    if logits.shape != expected_logits.shape or labels.shape != expected_labels.shape:
        return Check(False, f"on {where}: the exported graph gives {tuple(logits.shape)} logits")
    difference = float((logits - expected_logits).abs().max())
    equal = float((labels == expected_labels).double().mean())
    return Check(
        difference <= LOGIT_TOLERANCE,
        f"on {where}: largest logit difference {difference:.2e}, {100 * equal:.3f} % equal labels",
    )
