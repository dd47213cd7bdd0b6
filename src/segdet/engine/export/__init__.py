"""Exporting a trained model to a file that runs without segdet: ONNX (for ONNX Runtime, TensorRT,
OpenVINO, ...) or a ``torch.export`` program (``.pt2``, for ``torch.export.load``, AOTInductor).

- :mod:`~segdet.engine.export.segmentation`: the segmentation graph, ``images -> logits, labels``, for
  any batch and sides that are multiples of 32 (or one size);
- :mod:`~segdet.engine.export.detection`: the detection graph, ``image -> boxes, scores, labels
  (, masks)``, for any size from 32 to 8192 px or one size;
- :mod:`~segdet.engine.export.onnx_sizes`: an ONNX graph's size arithmetic in float64, as PyTorch's;
- :mod:`~segdet.engine.export.compare`: exported detections paired with PyTorch's;
- :mod:`~segdet.engine.export.program`: tracing, writing and loading the file.

**Checked on export.** The written file is loaded back and run (ONNX Runtime, or ``torch.export.load``)
against the PyTorch model before it is put in place; beyond the tolerances nothing is written.
"""

from segdet.engine.export.compare import (
    BOX_TOLERANCE,
    MASK_TOLERANCE,
    SCORE_TOLERANCE,
    check_detections,
    compare_detections,
)
from segdet.engine.export.detection import (
    DETECTION_SIDES,
    DetectionGraph,
    default_detection_size,
    detector_export_problem,
    export_detector,
)
from segdet.engine.export.program import (
    FORMATS,
    ONNX_PACKAGES,
    Check,
    Exported,
    export_format,
    load_exported,
    require_onnx,
)
from segdet.engine.export.segmentation import (
    DIVISORS,
    LOGIT_TOLERANCE,
    SegmentationGraph,
    export_segmenter,
)

__all__ = [
    "BOX_TOLERANCE",
    "DETECTION_SIDES",
    "DIVISORS",
    "FORMATS",
    "LOGIT_TOLERANCE",
    "MASK_TOLERANCE",
    "ONNX_PACKAGES",
    "SCORE_TOLERANCE",
    "Check",
    "DetectionGraph",
    "Exported",
    "SegmentationGraph",
    "check_detections",
    "compare_detections",
    "default_detection_size",
    "detector_export_problem",
    "export_detector",
    "export_format",
    "export_segmenter",
    "load_exported",
    "require_onnx",
]
