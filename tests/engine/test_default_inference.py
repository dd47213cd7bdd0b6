"""``segdet eval``'s default inference (BatchNorm folded, channels-last or NNPACK where chosen) scores a
*trained* model exactly as the plain model does.

Reference: the same checkpoint evaluated with ``--no-fuse --no-nnpack`` (the model as trained, eval
mode), by our COCO evaluator (equal to pycocotools) and confusion matrix. Tolerance: 0.002 on COCO box
AP, AP50, mask AP and on mIoU, the issue's bound. The models (``trained_detector``, ``trained_segmenter``
in ``tests/engine/conftest.py``) are trained until they reach a real score (box and mask AP50 >= 0.9,
mIoU >= 0.8 on the images they are evaluated on), so that detections and pixels sit where a trained
model puts them, not on the near-ties of random weights (on an untrained R50-FPN detector, rounding as
small as TF32's changes nearly every detection: ``benchmarks/fused_agreement.py``). On the CPU here;
``test_cuda.py`` compares CUDA's default path with the same CPU numbers.
bf16 autocast (opt-in) is checked against the same float32 numbers within 0.05.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from segdet.cli.main import main
from segdet.ops.nnpack_conv import nnpack_available

TOLERANCE = 0.002


def _eval(checkpoint: Path, out: Path, *options: str, device: str = "cpu") -> dict[str, float]:
    assert main(["eval", str(checkpoint), "--out", str(out), "--device", device, *options]) == 0
    return json.loads(out.read_text())


def test_detector_default_inference_keeps_box_and_mask_ap(trained_detector, tmp_path):
    plain = _eval(trained_detector, tmp_path / "plain.json", "--no-fuse", "--no-nnpack")
    assert plain["AP50"] >= 0.9 and plain["mask_AP50"] >= 0.9, plain  # a trained model
    default = _eval(trained_detector, tmp_path / "default.json")
    for key in ("AP", "AP50", "AP75", "mask_AP", "mask_AP50"):
        assert default[key] == pytest.approx(plain[key], abs=TOLERANCE), key
    low = _eval(trained_detector, tmp_path / "bf16.json", "--precision", "bf16")
    for key in ("AP", "AP50", "mask_AP"):
        assert low[key] == pytest.approx(plain[key], abs=0.05), key


@pytest.mark.skipif(not nnpack_available(), reason="torch was built without NNPACK")
def test_detector_on_nnpack_everywhere_keeps_box_and_mask_ap(trained_detector, tmp_path, monkeypatch):
    """NNPACK's Winograd / FFT rounding on a trained model: with its size rules lowered, every 3x3
    convolution of the small detector runs on NNPACK (they are too narrow for the defaults)."""
    from segdet.models.detection import detector
    from segdet.ops import nnpack_conv

    calls = []
    original = nnpack_conv.NNPACKConv2d.forward
    everywhere = dataclasses.replace(nnpack_conv.AVX2, min_pixels=1, min_batch=1, min_side=1)
    monkeypatch.setattr(nnpack_conv, "MIN_CHANNELS", 1)
    monkeypatch.setattr(nnpack_conv, "rules", lambda: everywhere)
    monkeypatch.setattr(detector, "nnpack_pays", lambda model: True)  # also on unmeasured CPUs

    def counted(self, x):
        calls.append(1)
        return original(self, x)

    monkeypatch.setattr(nnpack_conv.NNPACKConv2d, "forward", counted)
    plain = _eval(trained_detector, tmp_path / "plain.json", "--no-fuse", "--no-nnpack")
    assert not calls
    winograd = _eval(trained_detector, tmp_path / "nnpack.json")
    assert calls
    for key in ("AP", "AP50", "AP75", "mask_AP", "mask_AP50"):
        assert winograd[key] == pytest.approx(plain[key], abs=TOLERANCE), key


def test_segmenter_default_inference_keeps_miou(trained_segmenter, tmp_path):
    plain = _eval(trained_segmenter, tmp_path / "plain.json", "--no-fuse", "--no-nnpack")
    assert plain["mIoU"] >= 0.8, plain  # a trained model
    default = _eval(trained_segmenter, tmp_path / "default.json")
    for key in ("mIoU", "pixel_acc", "mDice"):
        assert default[key] == pytest.approx(plain[key], abs=TOLERANCE), key
    low = _eval(trained_segmenter, tmp_path / "bf16.json", "--precision", "bf16")
    assert low["mIoU"] == pytest.approx(plain["mIoU"], abs=0.05)
