"""Export of a detector (:func:`export_detector`): the graph (:class:`DetectionGraph`; Faster and Mask
R-CNN (FPN and C4), RetinaNet, EfficientDet, SSD, SSDLite, YOLO v1, CenterNet, YOLACT, TridentNet)::

    images  float32 1 x 3 x H x W, RGB in [0, 1]: any H, W from 32 to 8192; else exactly the
            exported H x W (``size``; the model's own input size by default)
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
(:mod:`segdet.models.detection.rcnn.poolers`). To ONNX: ``torch.onnx`` writes the size arithmetic of
an aspect-keeping resize in float32, a pixel short of PyTorch's for ~5 % of sides, and
:mod:`segdet.engine.export.onnx_sizes` recomputes those sizes in float64. With any size (both formats)
YOLACT's masks are resampled to the image by two 1-D interpolations instead of ``roi_align``
(:func:`segdet.models.detection.yolact.model.resample_region`: ONNX's ``RoiAlign`` takes a fixed output
size). An ONNX graph has no guards: it also runs at the sizes a ``.pt2`` program refuses (a 1 px
feature level), where it was checked to agree with PyTorch for CenterNet, RetinaNet, EfficientDet,
Mask R-CNN and YOLACT (trained on shapes; e.g. 32 x 300, 1000 x 35, 44 x 194). Sizes are computed
in non-negative integers (ONNX's integer division truncates where Python's floors) and resizes are given as
sizes, not factors.

Symbolic sizes cost time in torch.export's own steps: exporting and ``torch.export.load`` of such a
program (2 threads, small widths) took 1.2 / 1.1 s for YOLO v1 (fixed-size resize), 2.6 / 4.9 s for
CenterNet, 11 / 14 s for RetinaNet, 11 / 20 s for EfficientDet-D0, 31 / 28 s for YOLACT and about 65 s
in all for a small Mask R-CNN; running it costs what the fixed-size program does. To ONNX, converting
and checking took 14 s (CenterNet), 38 s (RetinaNet), 48 s (EfficientDet-D0), 56 s (Mask R-CNN) and
85 s (YOLACT). ``--size`` gives the one-size program, which loads in ~1 s.

Masks stay in their boxes as Detectron2's exported Mask R-CNN leaves them: pasting resizes each to its
box's size, a different size per detection
(:func:`segdet.ops.masks.paste_masks_in_image` does it; ``mask > 0.5`` after pasting is the instance).
The graph's NMS is one ONNX ``NonMaxSuppression`` in float32 per NMS step (classes kept apart by
shifting their boxes, as torchvision's ``batched_nms``; segdet's eager path shifts in float64), so a box
pair whose IoU is within ~1e-6 of the threshold may be decided differently; RoIAlign and RoI pooling
become ONNX ``RoiAlign`` / ``MaxRoiPool``. YOLACT's Fast NMS runs on every (class, candidate) slot
(eager skips the empty ones: the same result). Refused, with the reason: R-CNN and Fast R-CNN (selective
search runs outside the network, in OpenCV).

Checked on export (:mod:`segdet.engine.export.compare`): the traced image, a blank one (few or no
detections) and, with any size, the traced image 5/4 taller and 5/4 wider. Detectors are exported with
their BatchNorms folded into the convolutions (:func:`segdet.models.fuse.fold_batchnorm`, float rounding
only), checked against the same folded model: the C4 R-CNNs run BatchNorm on the RoIs, whose number the
tracer cannot prove non-zero.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segdet.engine.export.compare import check_detections
from segdet.engine.export.program import Check, Exported, export_format, trace, write
from segdet.errors import SegdetError

#: the sides (pixels) an exported detector takes when exported for any size
DETECTION_SIDES = (32, 8192)


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


def default_detection_size(model: nn.Module) -> tuple[int, int]:
    """The detector's own input: its fixed size, else a square of its (test) ``min_size``."""
    transform = model.transform
    return transform.fixed_size or (transform.min_size[-1], transform.min_size[-1])


def export_detector(
    model: nn.Module, path: Path, size: tuple[int, int] | None = None, image: Tensor | None = None
) -> Exported:
    """Write the detector ``model`` (eval mode, CPU) to ``path``, for images of any size (``size=None``,
    sides :data:`DETECTION_SIDES`) or of exactly ``size``; traced and checked on
    ``image`` (``3 x H x W`` in [0, 1]; resized to ``size`` if given; default: a random smooth image of
    the model's own input size), on a blank image and, with any size, on ``image`` resized to two other
    sizes. The file appears whole or not at all."""
    from torch.export import Dim

    from segdet.models.fuse import fold_batchnorm

    problem = detector_export_problem(model)
    if problem:
        raise SegdetError(problem)
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
    program = trace(graph, example, sides)
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

    checks = write(program, path, graph.outputs, check)
    return Exported(path, export_format(path), size, 1, checks)


def _within(size: tuple[int, int]) -> tuple[int, int]:
    low, high = DETECTION_SIDES
    return (min(max(size[0], low), high), min(max(size[1], low), high))
