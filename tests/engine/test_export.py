"""``segdet export``: a trained segmentation checkpoint as ONNX or a ``torch.export`` program.

Reference: the PyTorch model the checkpoint rebuilds, through ``segdet predict``'s path
(``SegmentationTask.infer``: the evaluation transform's normalisation, the network, argmax). The ONNX file
runs on ONNX Runtime (CPU), the ``.pt2`` on ``torch.export.load``. Tolerance: logits within 1e-4
(float32 kernels in other orders: measured ~3e-7), labels equal on every pixel of the trained model's
held-out images, hence the same mIoU.
"""

from __future__ import annotations

import re

import pytest
import torch

from segdet.cli.main import main
from segdet.data.dataset import SegDetDataset
from segdet.engine import export
from segdet.engine.inference import load_trained
from segdet.engine.segmentation import SegmentationTask
from segdet.errors import SegdetError
from segdet.metrics import ConfusionMatrix

onnxruntime = pytest.importorskip(
    "onnxruntime", reason="onnxruntime (segdet[export], in [dev]) is not installed"
)


def _held_out(trained) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The run's held-out images (float, [0, 1]) and their label maps."""
    task = SegmentationTask(trained.config)
    data = SegDetDataset(task.val_ann, None, semantic=True)
    samples = [data[i] for i in range(len(data))]
    return [image.as_subclass(torch.Tensor) for image, _ in samples], [t["semantic"] for _, t in samples]


def _miou(predictions: list[torch.Tensor], targets: list[torch.Tensor], num_classes: int) -> float:
    cm = ConfusionMatrix(num_classes)
    for p, t in zip(predictions, targets, strict=True):
        cm.update(p[None], t[None])
    return cm.compute().mean_iou


def test_onnx_export_predicts_as_segdet_predict(trained_segmenter, tmp_path, capsys):
    """The default export (dynamic batch and sides) of the trained U-Net: on its held-out images (64 px,
    one batch of all four) ONNX Runtime gives ``segdet predict``'s labels on every pixel and its mIoU;
    the command reports its own checks on two other sizes."""
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_segmenter), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("checked against PyTorch on") == 2 and "multiples of 32" in printed

    trained = load_trained(trained_segmenter)
    images, targets = _held_out(trained)
    expected = [SegmentationTask.infer(trained.model, image, torch.device("cpu"), 4096) for image in images]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits, labels = session.run(None, {"images": torch.stack(images).numpy()})
    with torch.no_grad():
        reference = export.SegmentationGraph(trained.model)(torch.stack(images))[0]
    torch.testing.assert_close(torch.from_numpy(logits), reference, rtol=0, atol=1e-4)
    assert torch.equal(torch.from_numpy(labels), torch.stack(expected))
    miou = _miou(expected, targets, len(trained.classes))
    assert miou > 0.5  # a trained model: the labels are not a trivial map
    assert _miou(list(torch.from_numpy(labels)), targets, len(trained.classes)) == miou


def test_pt2_export_at_a_fixed_size(tiny_segmentation_run, tmp_path):
    """``--size 40 56`` (not multiples of 32: a fixed size may be any) to ``.pt2``: ``torch.export.load``
    gives the model's logits on batches of 1 and 2 at that size, and refuses another size with an
    error instead of computing on it."""
    checkpoint = tiny_segmentation_run / "last.safetensors"
    out = tmp_path / "model.pt2"
    assert main(["export", str(checkpoint), "--out", str(out), "--size", "40", "56"]) == 0
    program = torch.export.load(out).module()
    graph = export.SegmentationGraph(load_trained(checkpoint).model).eval()
    for batch in (1, 2):
        images = torch.rand(batch, 3, 40, 56, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            got, expected = program(images), graph(images)
        torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-4)
        assert torch.equal(got[1], expected[1])
    with pytest.raises(Exception, match=r"(?i)shape|size|guard|dim"):
        program(torch.rand(1, 3, 64, 64))


def test_a_wrong_export_writes_nothing(tiny_segmentation_run, tmp_path, monkeypatch):
    """A graph whose checks fail (simulated: every check reports a failure) leaves no file, neither the
    output nor the partial one, and says which check failed."""
    monkeypatch.setattr(export, "_check_segmentation", lambda *args: export.Check(False, "on 1x3x32x32: bad"))
    model = load_trained(tiny_segmentation_run / "last.safetensors").model
    with pytest.raises(SegdetError, match="differs from the model on 1x3x32x32: bad"):
        export.export_segmenter(model, tmp_path / "model.pt2", (32, 32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/model.tflite"], r"model\.tflite: the export format is chosen by the suffix"),
        (["--out", "{tmp}/exists.onnx"], r"exists\.onnx: --out exists"),
        (["--size", "0", "32", "--out", "{tmp}/m.pt2"], "--size must be positive"),
    ],
    ids=["suffix", "exists", "size"],
)
def test_bad_requests_are_one_line_errors(tiny_segmentation_run, tmp_path, capsys, args, message):
    (tmp_path / "exists.onnx").write_text("a user's file")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["export", str(tiny_segmentation_run / "last.safetensors"), *args]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and re.search(message, error), error
    assert (tmp_path / "exists.onnx").read_text() == "a user's file"


def test_a_two_stage_detector_is_refused_with_the_reason(trained_detector, tmp_path, capsys):
    assert main(["export", str(trained_detector), "--out", str(tmp_path / "d.onnx")]) == 1
    error = capsys.readouterr().err
    assert (
        "maskrcnn_resnet50_fpn is not exported yet" in error
        and "RoI pooling" in error
        and error.count("\n") == 1
    )
    assert not (tmp_path / "d.onnx").exists()


def test_missing_onnx_packages_are_named(tiny_segmentation_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "_importable", lambda name: name != "onnxscript")
    assert (
        main(["export", str(tiny_segmentation_run / "last.safetensors"), "--out", str(tmp_path / "m.onnx")])
        == 1
    )
    assert "needs onnxscript: pip install 'segdet[export]'" in capsys.readouterr().err


def test_a_detector_through_the_command(tmp_path, capsys):
    """``segdet export`` of a YOLO v1 checkpoint (1/8 width, random weights, no score threshold so that
    it detects) to ``.pt2`` with ``--image``: its default size (the model's 64 x 64), both checks
    printed, and the program gives the model's detections on that image exactly (``torch.export.load``
    runs PyTorch's kernels). Trained detectors: the convergence tests of RetinaNet and YOLO v1."""
    import numpy as np
    from PIL import Image

    from segdet.engine.checkpoint import save_checkpoint
    from segdet.engine.config import from_dict, to_dict
    from segdet.models import build

    options = {"width": 0.125, "fc_channels": 64, "size": [64, 64], "score_thresh": 0.0}
    cfg = from_dict(
        {"task": "detection", "name": "r", "output_dir": str(tmp_path), "model": {"name": NAME, **options}}
    )
    torch.manual_seed(0)
    model = build(NAME, 3, **options).eval()
    checkpoint = tmp_path / "yolo.safetensors"
    save_checkpoint(
        checkpoint,
        {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "classes": ["a", "b", "c"],
            "epoch": 1,
            "task": "detection",
        },
    )
    pixels = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    out = tmp_path / "yolo.pt2"
    assert main(["export", str(checkpoint), "--out", str(out), "--image", str(tmp_path / "image.png")]) == 0
    printed = capsys.readouterr().out
    assert (
        "float32 1 x 3 x 64 x 64" in printed
        and "on the traced image" in printed
        and "on a blank image" in printed
    )
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=(64, 64), mode="bilinear", antialias=True)
    with torch.no_grad():
        expected = model(image)[0]
        boxes, scores, labels = torch.export.load(out).module()(image)
    assert len(scores) > 10
    assert torch.equal(boxes, expected["boxes"]) and torch.equal(scores, expected["scores"])
    assert torch.equal(labels, expected["labels"])


NAME = "yolov1"
