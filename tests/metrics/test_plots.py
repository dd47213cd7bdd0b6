"""Tests of segdet.metrics.plots: the files are PNGs Pillow can open, of the requested figure size,
with drawn content, and degenerate inputs (NaN rows, -1 precision, empty curves) do not crash."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from segdet.metrics.plots import plot_confusion_matrix, plot_pr_curves, pr_curves_from_coco


def assert_png(path, min_size=(300, 300)) -> None:
    """A real PNG, at least ``min_size`` pixels, not a single flat colour."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1]
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 1.0


def test_pr_curves_png(tmp_path) -> None:
    curves = {
        "cat": (np.array([0.25, 0.5, 0.75]), np.array([1.0, 0.67, 0.75])),
        "dog": ([0.0, 1.0], [1.0, 0.5]),
        "empty": (np.array([]), np.array([])),
        "nan": (np.array([np.nan, 0.5]), np.array([1.0, np.nan])),
    }
    out = plot_pr_curves(curves, tmp_path / "sub" / "pr.png", title="test", ap={"cat": 0.5})
    assert out == tmp_path / "sub" / "pr.png"
    assert_png(out)
    with Image.open(out) as im:
        assert im.size == (700, 550)  # 7 x 5.5 inches at 100 dpi


def test_confusion_matrix_png_with_nan_row(tmp_path) -> None:
    """A class with no truth (an all-zero row -> NaN after row normalisation) is drawn blank."""
    m = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])
    assert_png(plot_confusion_matrix(m, ["a", "b", "c"], tmp_path / "cm.png"))
    assert_png(plot_confusion_matrix(m, ["a", "b", "c"], tmp_path / "raw.png", normalize=None))
    with pytest.raises(ValueError):
        plot_confusion_matrix(m, ["a", "b"], tmp_path / "bad.png")


def test_confusion_matrix_accepts_tensor_and_many_classes(tmp_path) -> None:
    import torch

    m = torch.randint(0, 50, (30, 30), generator=torch.Generator().manual_seed(0))
    assert_png(plot_confusion_matrix(m, [f"class{i}" for i in range(30)], tmp_path / "big.png"))


def test_pr_curves_from_coco_array(tmp_path) -> None:
    """Slicing matches COCOeval's T x R x K x A x M layout; -1 (no ground truth) becomes NaN."""
    rng = np.random.default_rng(0)
    precision = rng.random((10, 101, 3, 4, 3))
    precision[:, :, 1] = -1
    curves = pr_curves_from_coco(precision, ["a", "b", "c"], iou_index=0)
    recall, prec = curves["c"]
    np.testing.assert_array_equal(recall, np.linspace(0, 1, 101))
    np.testing.assert_array_equal(prec, precision[0, :, 2, 0, -1])
    assert all(math.isnan(v) for v in curves["b"][1])
    assert_png(plot_pr_curves(curves, tmp_path / "coco_pr.png"))
    with pytest.raises(ValueError):
        pr_curves_from_coco(precision, ["a", "b"])
