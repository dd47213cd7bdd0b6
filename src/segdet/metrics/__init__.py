"""Evaluation metrics: segmentation scores from a streaming confusion matrix, Pascal VOC and COCO
detection AP, and report figures.

``evaluate_coco`` / ``CocoEvalResult`` (pycocotools-based) are loaded on first use, so importing this
package does not import pycocotools' evaluator; the plotting functions import matplotlib only when called.
"""

from __future__ import annotations

from segdet.metrics.confusion import ConfusionMatrix, SegMetrics
from segdet.metrics.plots import plot_confusion_matrix, plot_pr_curves, pr_curves_from_coco
from segdet.metrics.voc_eval import VocResult, evaluate_voc, voc_ap

# COCO evaluation lives in segdet.metrics.coco_eval; its names are resolved lazily by __getattr__ below.
_LAZY = {"evaluate_coco": "segdet.metrics.coco_eval", "CocoEvalResult": "segdet.metrics.coco_eval"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segdet.metrics' has no attribute {name!r}")


__all__ = [
    "CocoEvalResult",
    "ConfusionMatrix",
    "SegMetrics",
    "VocResult",
    "evaluate_coco",
    "evaluate_voc",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "pr_curves_from_coco",
    "voc_ap",
]
