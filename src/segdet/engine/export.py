"""Exporting a trained model to a file that runs without segdet: ONNX (for ONNX Runtime, TensorRT,
OpenVINO, ...) or a ``torch.export`` program (``.pt2``, for ``torch.export.load``, AOTInductor).

**Segmentation graph** (:class:`SegmentationGraph`)::

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

**Detection graph** (:class:`DetectionGraph`; Faster and Mask R-CNN (FPN and C4), RetinaNet,
EfficientDet, SSD, SSDLite, YOLO v1, CenterNet, YOLACT, TridentNet)::

    images  float32 1 x 3 x H x W, RGB in [0, 1]: any H, W from 32 to 8192 (to ONNX only SSD,
            SSDLite, YOLO v1); else exactly the exported H x W (default: the model's own input size)
      -> the detector as model([image]) runs it: normalisation, its resize, network, decoding, NMS
         (the R-CNNs: RPN proposals, RoIAlign / RoI pooling, box head, per-class NMS)
      -> boxes   float32 D x 4   xyxy pixels of the input image
      -> scores  float32 D       by decreasing score
      -> labels  int64   D       the run's classes, 0 .. K-1
      -> masks   float32 D x 1 x m x m   Mask R-CNN: each detection's mask probabilities inside its
                                         box (m = 28), not pasted into the image
                 float32 D x 1 x H x W   YOLACT: the probabilities in the image, zero outside the box

one image per call, ``D`` from 0 to ``detections_per_img``. With any size the graph resizes, builds
anchors and decodes for the input's size as the model does (sizes stay symbolic: ``as_size`` and
``sizes_tensor`` in :mod:`segdet.models.detection.image_list`); the program refuses (its own guard) a
size at which a feature level would be 1 px high or wide, as a very elongated image for the model's
size. The R-CNNs' RoI level scales are the traced example's, the same at every size
(:mod:`segdet.models.detection.rcnn.poolers`). To ONNX only the detectors that resize every image to
one size (:func:`takes_any_size`: ONNX's size arithmetic is float32). Sizes are computed in
non-negative integers (ONNX's integer division truncates where Python's floors) and resizes are given as
sizes, not factors.
Symbolic sizes cost time in torch.export's own steps: exporting and ``torch.export.load`` of such a
program (2 threads, small widths) took 1.2 / 1.1 s for YOLO v1 (fixed-size resize), 2.6 / 4.9 s for
CenterNet, 11 / 14 s for RetinaNet, 11 / 20 s for EfficientDet-D0, 31 / 28 s for YOLACT and about 65 s
in all for a small Mask R-CNN; running it
costs what the fixed-size program does. ``--size`` gives the one-size program, which loads in ~1 s.

Masks stay in their boxes as Detectron2's
exported Mask R-CNN leaves them: pasting resizes each to its box's size, a different size per detection
(:func:`segdet.ops.masks.paste_masks_in_image` does it; ``mask > 0.5`` after pasting is the instance).
The graph's NMS is one ONNX ``NonMaxSuppression`` in float32 per NMS step (classes kept apart by
shifting their boxes, as torchvision's ``batched_nms``; segdet's eager path shifts in float64), so a box
pair whose IoU is within ~1e-6 of the threshold may be decided differently; RoIAlign and RoI pooling
become ONNX ``RoiAlign`` / ``MaxRoiPool``. YOLACT's Fast NMS runs on every (class, candidate) slot
(eager skips the empty ones: the same result). Refused, with the reason: R-CNN and Fast R-CNN (selective
search runs outside the network, in OpenCV).

**Checked on export.** The written file is loaded back and run (ONNX Runtime, or ``torch.export.load``)
against the PyTorch model before it is put in place; beyond the tolerances nothing is written.
Segmentation: random batches of other sizes than the traced one, the largest logit difference
(:data:`LOGIT_TOLERANCE`) and the share of equal labels. Detection: the traced image and a blank one (few
or no detections), the detections paired (:func:`compare_detections`). Segmentation networks are exported
unfused (ONNX Runtime folds BatchNorm itself); detectors with their BatchNorms folded into the
convolutions (:func:`segdet.models.fuse.fold_batchnorm`, float rounding only), checked against the same
folded model: the C4 R-CNNs run BatchNorm on the RoIs, whose number the tracer cannot prove non-zero.

ONNX needs ``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install 'segdet[export]'``); ``.pt2`` needs
nothing beyond torch.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from segdet.errors import SegdetError

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
DIVISORS = (32, 64, 128)  # tried in turn: the first the network's strides allow
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
#: largest logit difference a segmentation export may show (float32 kernels in other orders: ~3e-7)
LOGIT_TOLERANCE = 1e-3
#: largest box (pixels) and score differences of paired detections (measured: 8e-4 px, 3e-6)
BOX_TOLERANCE, SCORE_TOLERANCE = 1e-2, 1e-4
#: largest mask probability difference of paired detections (Mask R-CNN's m x m masks)
MASK_TOLERANCE = 1e-3
#: the sides (pixels) an exported detector takes when exported for any size
DETECTION_SIDES = (32, 8192)


@dataclass(frozen=True)
class Check:
    """The exported file against PyTorch on one input: ``ok`` and a line saying what was compared."""

    ok: bool
    summary: str


@dataclass(frozen=True)
class Exported:
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


# -- segmentation ------------------------------------------------------------------------------------


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

    checks = _write(program, path, ["logits", "labels"], check)
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
            return _export(graph, example, ({0: batch, **sides},)), divisor
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


# -- detection ----------------------------------------------------------------------------------------


class DetectionGraph(nn.Module):
    """The exported detection computation (module docstring): ``model([image])`` for one image. Masks:
    :attr:`masks` is ``"box"`` for Mask R-CNN (``m x m`` in each box, not pasted into the image),
    ``"image"`` for YOLACT (in the image, as the model gives them), ``None`` for a box detector."""

    def __init__(self, model: nn.Module) -> None:
        from segdet.models.detection.yolact import YOLACT

        super().__init__()
        self.model = model
        self.masks = None
        if bool(getattr(getattr(model, "roi_heads", None), "has_mask", False)):
            self.masks = "box"
        elif isinstance(model, YOLACT):
            self.masks = "image"

    @property
    def outputs(self) -> list[str]:
        return ["boxes", "scores", "labels"] + (["masks"] if self.masks else [])

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        transform = self.model.transform
        transform.paste_masks = False
        try:
            detections = self.model(images)[0]
        finally:
            transform.paste_masks = True
        return tuple(detections[name] for name in self.outputs)


def detector_export_problem(model: nn.Module, name: str | None = None) -> str | None:
    """Why ``model`` (called ``name``) cannot be exported, or ``None`` when it can (module docstring)."""
    from segdet.models.detection.centernet import CenterNet
    from segdet.models.detection.rcnn.generalized_rcnn import GeneralizedRCNN
    from segdet.models.detection.retinanet import RetinaNet
    from segdet.models.detection.ssd import SSD
    from segdet.models.detection.yolact import YOLACT
    from segdet.models.detection.yolo import YOLOv1

    if isinstance(model, RetinaNet | SSD | YOLOv1 | CenterNet | GeneralizedRCNN | YOLACT):
        return None
    return (
        f"{name or type(model).__name__} is not exported: its proposals come from selective search, which "
        "runs outside the network (in OpenCV); the detectors that are exported: Faster and Mask R-CNN (FPN "
        "and C4), TridentNet, RetinaNet, EfficientDet, SSD, SSDLite, YOLO v1, CenterNet, YOLACT"
    )


def takes_any_size(model: nn.Module, fmt: str = "pt2") -> bool:
    """Whether ``model``'s exported ``fmt`` graph can take any image size: every detector to ``.pt2``; to
    ONNX only those that resize every image to one fixed size (SSD, SSDLite, YOLO v1). ONNX computes the
    graph's size arithmetic in float32, and a resize that keeps the aspect ratio takes ``floor(side *
    scale)``, which for ~5 % of sides lands a pixel below PyTorch's float64 (``97 * (256 / 97)`` is
    255.99998 in float32: an image 97 px wide became 255 px instead of 256). YOLACT's masks are resampled
    by ``RoiAlign``, whose output size ONNX takes as a fixed attribute."""
    from segdet.models.detection.yolact import YOLACT

    if fmt != "onnx":
        return True
    return model.transform.fixed_size is not None and not isinstance(model, YOLACT)


def default_detection_size(model: nn.Module) -> tuple[int, int]:
    """The detector's own input: its fixed size, else a square of its (test) ``min_size``."""
    transform = model.transform
    return transform.fixed_size or (transform.min_size[-1], transform.min_size[-1])


def export_detector(
    model: nn.Module, path: Path, size: tuple[int, int] | None = None, image: Tensor | None = None
) -> Exported:
    """Write the detector ``model`` (eval mode, CPU) to ``path``, for images of any size (``size=None``,
    sides :data:`DETECTION_SIDES`; to ONNX only SSD, SSDLite and YOLO v1 (:func:`takes_any_size`), the
    others take the model's own input size) or of exactly ``size``; traced and checked on
    ``image`` (``3 x H x W`` in [0, 1]; resized to ``size`` if given; default: a random smooth image of
    the model's own input size), on a blank image and, with any size, on ``image`` resized to two other
    sizes. The file appears whole or not at all."""
    from torch.export import Dim

    from segdet.models.fuse import fold_batchnorm

    problem = detector_export_problem(model)
    if problem:
        raise SegdetError(problem)
    if size is None and not takes_any_size(model, export_format(path)):
        size = default_detection_size(model)
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model)  # module docstring: BatchNorm over a data-dependent number of RoIs
    graph = DetectionGraph(model).eval()
    if image is None:
        coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        example = F.interpolate(
            coarse, size=size or default_detection_size(model), mode="bilinear", align_corners=False
        )
    elif size is not None:
        example = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)
    else:
        example = image[None]
    example = example.clamp(0, 1)
    sides = None
    if size is None:
        low, high = DETECTION_SIDES
        sides = ({2: Dim("h", min=low, max=high), 3: Dim("w", min=low, max=high)},)
    program = _export(graph, example, sides)
    h, w = example.shape[-2:]
    inputs = {"the traced image": example}
    if size is None:  # other sizes than the traced one, and another aspect ratio
        # mild changes of size and aspect: a program refuses sizes whose coarsest level is 1 px (module
        # docstring), which a small model meets at once
        others = {"it at 5/4 x 1": (5 * h // 4, w), "it at 1 x 5/4": (h, 5 * w // 4)}  # taller, wider
        for name, other in others.items():
            resized = F.interpolate(example, size=_within(other), mode="bilinear", antialias=True)
            inputs[f"{name}, {resized.shape[-2]} x {resized.shape[-1]}"] = resized
    blank_size = (h, w) if size is not None else _within((w, h))
    inputs["a blank image"] = torch.full((1, 3, *blank_size), 0.5)

    def check(run) -> list[Check]:
        return [check_detections(graph(x), run, x, name) for name, x in inputs.items()]

    checks = _write(program, path, graph.outputs, check)
    return Exported(path, export_format(path), size, 1, checks)


def check_detections(expected: tuple[Tensor, ...], run, image: Tensor, where: str) -> Check:
    """:func:`compare_detections` of ``run(image)`` with ``expected``; a program that fails on the image
    (e.g. torch.export's guard refusing its size: a feature level would be 1 px, module docstring) fails
    the check in one line with the error's first line."""
    try:
        got = run(image)
    except (AssertionError, RuntimeError) as e:
        first = (str(e).splitlines() or [""])[0][:160]
        size = f"{image.shape[-2]} x {image.shape[-1]}"
        return Check(False, f"on {where}: the exported program fails on a {size} image ({first})")
    return compare_detections(expected, got, where)


def _within(size: tuple[int, int]) -> tuple[int, int]:
    low, high = DETECTION_SIDES
    return (min(max(size[0], low), high), min(max(size[1], low), high))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def compare_detections(expected: tuple[Tensor, ...], got: tuple[Tensor, ...], where: str) -> Check:
    """Exported detections (``boxes, scores, labels`` and maybe ``masks``) against PyTorch's, robust to
    near-tied scores: the same count; the scores equal as sorted lists (``SCORE_TOLERANCE``); and each
    detection whose score is distinct (over ``SCORE_TOLERANCE`` from every other one) found among the
    exported ones with its label, its score and its box (``BOX_TOLERANCE`` px), and its mask
    probabilities (``MASK_TOLERANCE``). Tied detections may come in another order, or swap boxes at an
    NMS or cap decision between equals: both are float rounding."""
    (boxes, scores, labels), (got_boxes, got_scores, got_labels) = expected[:3], got[:3]
    if len(scores) != len(got_scores):
        return Check(False, f"on {where}: {_count(len(got_scores), 'detection')}, PyTorch {len(scores)}")
    if len(scores) == 0:
        return Check(True, f"on {where}: no detections, as PyTorch")
    score_difference = float((scores.sort().values - got_scores.sort().values).abs().max())
    gaps = (scores[:, None] - scores[None, :]).abs().fill_diagonal_(math.inf)
    distinct = gaps.min(dim=1).values > SCORE_TOLERANCE
    same = (labels[:, None] == got_labels[None, :]) & (
        (scores[:, None] - got_scores[None, :]).abs() <= SCORE_TOLERANCE
    )
    box_distance = torch.cdist(boxes.double(), got_boxes.double(), p=math.inf).masked_fill(~same, math.inf)
    nearest, match = box_distance.min(dim=1)
    box_difference = float(nearest[distinct].max()) if distinct.any() else 0.0
    ok = score_difference <= SCORE_TOLERANCE and box_difference <= BOX_TOLERANCE
    summary = (
        f"on {where}: {_count(len(scores), 'detection')} as PyTorch, scores within "
        f"{score_difference:.1e}, the {int(distinct.sum())} of distinct score at their boxes within "
        f"{box_difference:.1e} px"
    )
    if len(expected) > 3 and distinct.any() and box_difference <= BOX_TOLERANCE:
        masks, got_masks = expected[3][distinct], got[3][match[distinct]]
        mask_difference = (
            float((masks - got_masks).abs().max()) if masks.shape == got_masks.shape else math.inf
        )
        ok = ok and mask_difference <= MASK_TOLERANCE
        summary += f", their mask probabilities within {mask_difference:.1e}"
    return Check(ok, summary)


# -- both ---------------------------------------------------------------------------------------------


def _export(graph: nn.Module, example: Tensor, dynamic_shapes) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(graph, (example,), dynamic_shapes=dynamic_shapes)
    except torch._dynamo.exc.UserError:
        raise
    except Exception as e:  # anything else the tracer cannot follow: one line, whatever it is
        first = (str(e).splitlines() or [""])[0]
        raise SegdetError(f"torch.export cannot trace the model: {type(e).__name__}: {first}") from e


def _write(program: torch.export.ExportedProgram, path: Path, outputs: list[str], check) -> list[Check]:
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
    except Exception as e:
        raise SegdetError(f"{path.name}: ONNX conversion failed: {e} ({buffer.getvalue()[-300:]!r})") from e
    finally:
        optimiser_log.setLevel(level)


def load_exported(path: Path):
    """``run(images) -> tuple of output tensors`` for an exported file: ``torch.export.load`` of a
    ``.pt2``, an ONNX Runtime CPU session of an ``.onnx``."""
    if export_format(path) == "pt2":
        return torch.export.load(path).module()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: tuple(torch.from_numpy(a) for a in session.run(None, {"images": images.numpy()}))
