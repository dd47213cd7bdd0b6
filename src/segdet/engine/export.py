"""Exporting a trained semantic segmentation model to a file that runs without segdet: ONNX (for ONNX
Runtime, TensorRT, OpenVINO, ...) or a ``torch.export`` program (``.pt2``, for ``torch.export.load``,
AOTInductor, ExecuTorch).

**The exported graph** (the same for both formats)::

    images  float32 N x 3 x H x W, RGB in [0, 1]
      -> (images - mean) / std        the ImageNet mean and std of segdet's evaluation transform
      -> the network
      -> logits  float32 N x K x H x W
      -> labels  int64   N x H x W    argmax over the K classes

so ``labels`` is ``segdet predict``'s label map of an image of that size (``predict`` additionally
shrinks images larger than ``--max-size`` first; an exported graph runs at the size it is given).

**Sizes.** With ``size=None`` the graph takes any batch size and any ``H``, ``W`` that are multiples of
:attr:`Exported.divisor` (32 for every built-in encoder: the stride of its deepest features). Why not any
size: the networks pad or crop odd sizes at every skip connection, and a traced graph cannot keep such
size-dependent steps general (``torch.export`` proves each one for all sizes it allows, and pads in the
graph leave sizes it cannot prove to be multiples). The caller pads (or resizes) to a multiple. With
``size=(H, W)`` the graph is specialised to exactly that size (any ``H``, ``W``; the batch stays free).

**Checked on export.** The written file is loaded back and run (ONNX Runtime, or ``torch.export.load``)
on random batches of the exported size(s), against the PyTorch model: :class:`ExportCheck` holds the
largest logit difference and the share of equal labels (labels may differ only where two classes' logits
tie within float rounding); beyond :data:`LOGIT_TOLERANCE` nothing is written. The network is exported
unfused: ONNX Runtime folds BatchNorm itself.

ONNX needs ``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install 'segdet[export]'``); ``.pt2`` needs
nothing beyond torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from segdet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from segdet.errors import SegdetError

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
DIVISORS = (32, 64, 128)  # tried in turn: the first the network's strides allow
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
#: largest logit difference an export may show against PyTorch (float32 kernels in other orders: ~1e-6)
LOGIT_TOLERANCE = 1e-3


class SegmentationGraph(nn.Module):
    """The exported computation (module docstring): normalisation, ``model``, logits and labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model((images - self.mean) / self.std)
        return logits, logits.argmax(1)


@dataclass(frozen=True)
class ExportCheck:
    """The exported file against PyTorch on one random batch of ``shape``."""

    shape: tuple[int, ...]
    max_logit_difference: float
    equal_labels: float  # share of pixels


@dataclass(frozen=True)
class Exported:
    path: Path
    format: str
    size: tuple[int, int] | None  # None: dynamic, multiples of divisor
    divisor: int
    checks: list[ExportCheck]


def export_format(path: Path) -> str:
    """``"onnx"`` or ``"pt2"`` from the file's suffix (one-line error otherwise)."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(FORMATS)
        raise SegdetError(f"{path}: the export format is chosen by the suffix: {known}") from None


def require_onnx() -> None:
    missing = [name for name in ONNX_PACKAGES if not _importable(name)]
    if missing:
        raise SegdetError(
            f"ONNX export needs {', '.join(missing)}: pip install 'segdet[export]' (or export to .pt2)"
        )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def export_segmenter(model: nn.Module, path: Path, size: tuple[int, int] | None = None) -> Exported:
    """Write ``model`` (a segmentation network in eval mode, on the CPU) to ``path`` (``.onnx`` or
    ``.pt2``), dynamic (``size=None``) or at ``size``, then check the written file (module docstring).
    The file appears whole or not at all (written beside it, then renamed)."""
    fmt = export_format(path)
    if fmt == "onnx":
        require_onnx()
    graph = SegmentationGraph(model).eval()
    program, divisor = _trace(graph, size)
    shapes = _check_shapes(size, divisor)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # torch.export wants .pt2
    try:
        if fmt == "pt2":
            torch.export.save(program, partial)
        else:
            _save_onnx(program, partial)
        checks = [_check(graph, partial, fmt, shape) for shape in shapes]
        worst = max(c.max_logit_difference for c in checks)
        if worst > LOGIT_TOLERANCE:  # nothing is written
            raise SegdetError(f"{path}: the exported graph's logits differ from the model's by {worst:.2e}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return Exported(path, fmt, size, divisor, checks)


def _trace(
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
        sides = (
            {}
            if size
            else {
                2: divisor * Dim("h", min=1, max=8192 // divisor),
                3: divisor * Dim("w", min=1, max=8192 // divisor),
            }
        )
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.export.export(graph, (example,), dynamic_shapes=({0: batch, **sides},)), divisor
        except torch._dynamo.exc.UserError as e:  # a size constraint the network does not meet
            errors.append(f"{divisor}: {str(e).splitlines()[0]}")
        except Exception as e:  # anything else the tracer cannot follow: one line, whatever it is
            first = (str(e).splitlines() or [""])[0]
            raise SegdetError(f"torch.export cannot trace the network: {type(e).__name__}: {first}") from e
    raise SegdetError(f"the network cannot be exported for sizes that are multiples of {DIVISORS}: {errors}")


def _check_shapes(size: tuple[int, int] | None, divisor: int) -> list[tuple[int, int, int, int]]:
    """The batches the written file is checked on: two of other batch sizes and sides than the traced
    example when dynamic, two batch sizes at ``size`` otherwise."""
    if size is not None:
        return [(1, 3, *size), (3, 3, *size)]
    return [(1, 3, 3 * divisor, 5 * divisor), (3, 3, 7 * divisor, 2 * divisor)]


def _save_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    buffer = io.StringIO()  # the exporter narrates its steps on stdout; shown only if it fails
    try:
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(
                program, dynamo=True, input_names=["images"], output_names=["logits", "labels"]
            )
            onnx_program.save(str(path))
    except Exception as e:
        raise SegdetError(f"{path.name}: ONNX conversion failed: {e} ({buffer.getvalue()[-300:]!r})") from e


def _check(graph: SegmentationGraph, path: Path, fmt: str, shape: tuple[int, ...]) -> ExportCheck:
    """Run the written file and ``graph`` on one random batch of ``shape``."""
    images = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        expected_logits, expected_labels = graph(images)
        if fmt == "pt2":
            logits, labels = torch.export.load(path).module()(images)
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            logits, labels = (torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()}))
    if logits.shape != expected_logits.shape or labels.shape != expected_labels.shape:
        raise SegdetError(f"{path.name}: the exported graph gives {tuple(logits.shape)} logits on {shape}")
    return ExportCheck(
        shape,
        float((logits - expected_logits).abs().max()),
        float((labels == expected_labels).double().mean()),
    )
