"""Report figures: precision-recall curves and confusion-matrix heatmaps, written as PNG.

matplotlib is imported inside the functions (so ``import segdet`` stays light) and figures are built
with ``matplotlib.figure.Figure`` and the Agg canvas directly rather than through ``pyplot``, so no
global figure state or GUI backend is involved and the functions are safe to call from any thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# Above this many classes the cells are too small for their numbers to be readable.
_MAX_ANNOTATED_CLASSES = 25


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_pr_curves(
    curves: Mapping[str, tuple[np.ndarray | Sequence[float], np.ndarray | Sequence[float]]],
    out_png: str | Path,
    title: str = "Precision-recall",
    ap: Mapping[str, float] | None = None,
) -> Path:
    """Draw one precision-recall curve per class (``{name: (recall, precision)}``) into ``out_png``.

    Curves are drawn as given, points joined by lines (raw points in rank order, or COCO's
    interpolated precision at fixed recalls); NaN points are left as gaps and classes with no finite
    point appear only in the legend. ``ap`` (per class) is shown in the legend when given.
    """
    fig = _new_figure(7, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, (recall, precision) in curves.items():
        r = np.asarray(recall, dtype=np.float64).reshape(-1)
        p = np.asarray(precision, dtype=np.float64).reshape(-1)
        label = str(name) if ap is None or name not in ap else f"{name} (AP {ap[name]:.3f})"
        ax.plot(r, p, label=label, linewidth=1.2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize="small", ncol=1 + len(curves) // 15)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_confusion_matrix(
    matrix: np.ndarray | Sequence[Sequence[float]],
    class_names: Sequence[str],
    out_png: str | Path,
    normalize: str | None = "true",
    title: str = "Confusion matrix",
) -> Path:
    """Draw a ``C x C`` confusion matrix (rows: truth, columns: prediction) as a heatmap.

    ``normalize="true"`` divides each row by its sum (each cell is then the fraction of that class's
    pixels predicted as the column's class; the diagonal is the class accuracy), ``None`` draws raw
    counts. Rows with no truth are left blank (NaN) rather than failing. Accepts a torch tensor too.
    """
    if normalize not in ("true", None):
        raise ValueError(f"normalize must be 'true' or None, got {normalize!r}")
    m = np.asarray(matrix.cpu() if hasattr(matrix, "cpu") else matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(class_names):
        raise ValueError(f"matrix of shape {m.shape} for {len(class_names)} class names")
    if normalize == "true":
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.full_like(m, np.nan), where=rows > 0)

    c = len(class_names)
    size = min(4 + 0.35 * c, 16)
    fig = _new_figure(size + 1.5, size)
    ax = fig.add_subplot(1, 1, 1)
    shown = np.ma.masked_invalid(m)
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), labels=list(class_names), rotation=90)
    ax.set_yticks(range(c), labels=list(class_names))
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(title + (" (row-normalised)" if normalize else ""))
    if c <= _MAX_ANNOTATED_CLASSES:
        finite = m[np.isfinite(m)]
        threshold = (finite.max() if finite.size else 0) / 2
        for i in range(c):
            for j in range(c):
                if np.isfinite(m[i, j]):
                    text = f"{m[i, j]:.2f}" if normalize else f"{int(m[i, j])}"
                    colour = "white" if m[i, j] > threshold else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    return _save(fig, out_png)


def pr_curves_from_coco(
    precision: np.ndarray,
    category_names: Sequence[str],
    iou_index: int = 0,
    area_index: int = 0,
    max_dets_index: int = -1,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-class curves from pycocotools' ``COCOeval.eval["precision"]`` array.

    That array is ``T x R x K x A x M`` (IoU thresholds 0.50:0.05:0.95, the 101 recall thresholds
    ``linspace(0, 1, 101)``, categories, area ranges all/small/medium/large, max detections 1/10/100)
    and holds -1 where a category has no ground truth. The defaults pick IoU 0.5, all areas and 100
    detections; -1 becomes NaN.
    """
    p = np.asarray(precision, dtype=np.float64)
    if p.ndim != 5:
        raise ValueError(f"expected a T x R x K x A x M precision array, got shape {p.shape}")
    if p.shape[2] != len(category_names):
        raise ValueError(f"precision has {p.shape[2]} categories, {len(category_names)} names given")
    recall = np.linspace(0.0, 1.0, p.shape[1])
    curves = {}
    for k, name in enumerate(category_names):
        prec = p[iou_index, :, k, area_index, max_dets_index].copy()
        prec[prec < 0] = np.nan
        curves[str(name)] = (recall, prec)
    return curves
