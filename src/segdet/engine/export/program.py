"""The exported file: trace (``torch.export``), write it whole or not at all after checking it against
PyTorch, and load it back (``torch.export.load`` for ``.pt2``, ONNX Runtime for ``.onnx``).

Writing goes to a hidden ``.NAME.partial.SUFFIX`` beside the target; the written file is loaded back and
run on the caller's check inputs; only if every :class:`Check` passes is it renamed into place (an atomic
``os.replace``), else it is removed and the first failed check is the error. ONNX needs ``onnx``,
``onnxscript`` and ``onnxruntime`` (``pip install 'segdet[export]'``); ``.pt2`` needs nothing beyond torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from segdet.errors import SegdetError

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@dataclass(frozen=True)
class Check:
    """The exported file against PyTorch on one input: ``ok`` and a line saying what was compared."""

    ok: bool
    summary: str


@dataclass(frozen=True)
class Exported:
    """A written export: its file and format, the size it takes, and the checks it passed."""

    path: Path
    format: str
    size: tuple[int, int] | None  # None: dynamic sides, multiples of divisor
    divisor: int
    checks: list[Check]


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
    return importlib.util.find_spec(name) is not None


def trace(graph: nn.Module, example: Tensor, dynamic_shapes) -> torch.export.ExportedProgram:
    """``torch.export`` of ``graph(example)`` without gradients; a size constraint the graph does not meet
    is torch's ``UserError``, anything else it cannot follow one :class:`SegdetError` line."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(graph, (example,), dynamic_shapes=dynamic_shapes)
    except torch._dynamo.exc.UserError:
        raise
    except Exception as e:  # anything else the tracer cannot follow: one line, whatever it is
        first = (str(e).splitlines() or [""])[0]
        raise SegdetError(f"torch.export cannot trace the model: {type(e).__name__}: {first}") from e


def write(program: torch.export.ExportedProgram, path: Path, outputs: list[str], check) -> list[Check]:
    """Save ``program`` beside ``path``, run ``check(run)`` with ``run`` the saved file's forward, and
    rename it to ``path`` if every check passes (else remove it and raise)."""
    fmt = export_format(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # torch.export wants .pt2
    try:
        if fmt == "pt2":
            torch.export.save(program, partial)
        else:
            _save_onnx(program, partial, outputs)
        run = load_exported(partial)
        with torch.no_grad():
            checks = check(run)
        failed = [c.summary for c in checks if not c.ok]
        if failed:  # nothing is written
            raise SegdetError(f"{path}: the exported graph differs from the model {failed[0]}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return checks


def _save_onnx(program: torch.export.ExportedProgram, path: Path, outputs: list[str]) -> None:
    from segdet.ops.nms import onnx_translations

    buffer = io.StringIO()  # the exporter narrates its steps on stdout; shown only if it fails
    # onnxscript's optimiser logs a warning for each constant it leaves unfolded (e.g. an RoI head's
    # Split): harmless, and not the user's to act on.
    optimiser_log = logging.getLogger("onnxscript")
    level = optimiser_log.level
    optimiser_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                input_names=["images"],
                output_names=outputs,
                custom_translation_table=onnx_translations(),
            )
            onnx_program.save(str(path))
        _sizes_in_float64(path)
    except Exception as e:
        raise SegdetError(f"{path.name}: ONNX conversion failed: {e} ({buffer.getvalue()[-300:]!r})") from e
    finally:
        optimiser_log.setLevel(level)


def _sizes_in_float64(path: Path) -> None:
    """Rewrite the saved graph's size arithmetic to float64, as PyTorch computes it
    (:mod:`segdet.engine.export.onnx_sizes`), if it has any."""
    import onnx

    from segdet.engine.export.onnx_sizes import promote_size_arithmetic

    model = onnx.load(str(path))
    if promote_size_arithmetic(model):
        onnx.save(model, str(path))


def load_exported(path: Path):
    """``run(images) -> tuple of output tensors`` for an exported file: ``torch.export.load`` of a
    ``.pt2``, an ONNX Runtime CPU session of an ``.onnx``."""
    if export_format(path) == "pt2":
        return torch.export.load(path).module()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: tuple(torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()}))
