"""``segdet export``: trained checkpoints as ``torch.export`` programs, the ONNX graphs, and the command's
errors.

Reference: the PyTorch model, through ``segdet predict``'s path (``SegmentationTask.infer``: the
evaluation transform's normalisation, the network, argmax) for a checkpoint; torchvision's
``batched_nms`` for the exported NMS. ``.pt2`` programs run PyTorch's own kernels (``torch.export.load``):
labels and detections equal exactly, logits within 1e-4. ONNX graphs run on ONNX Runtime (CPU): logits
within 1e-4, the same labels and kept boxes. (ONNX conversion costs ~10 s per real network, so whole
trained networks go through ONNX in ``benchmarks/export.py`` and by hand, not here; the trained Mask
R-CNN is exported here to ``.pt2``, a trained YOLO v1 by ``tests/engine/test_detection_convergence.py``.)
"""

from __future__ import annotations

import re

import pytest
import torch

from segdet.cli.main import main
from segdet.data.dataset import SegDetDataset
from segdet.engine import export
from segdet.engine.detection import DetectionTask
from segdet.engine.inference import load_trained
from segdet.engine.segmentation import SegmentationTask
from segdet.errors import SegdetError
from segdet.metrics import ConfusionMatrix

NEEDS_ONNX = "onnxruntime (segdet[export], in [dev]) is not installed"


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


def test_export_predicts_as_segdet_predict(trained_segmenter, tmp_path, capsys):
    """The trained U-Net through the command to ``.pt2`` for its 64 x 64 images (``--size``; dynamic
    sides: ``test_onnx_segmentation_graph``): on its four held-out images, in one batch, the program gives
    ``segdet predict``'s labels on every pixel and its mIoU (a real one); the command prints its checks on
    batches of 1 and 3; another image size is refused with an error, not computed."""
    out = tmp_path / "model.pt2"
    assert main(["export", str(trained_segmenter), "--out", str(out), "--size", "64", "64"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("checked against PyTorch on") == 2 and "N x 3 x 64 x 64" in printed

    trained = load_trained(trained_segmenter)
    images, targets = _held_out(trained)
    expected = [SegmentationTask.infer(trained.model, image, torch.device("cpu"), 4096) for image in images]
    program = export.load_exported(out)
    with torch.no_grad():
        logits, labels = program(torch.stack(images))
        reference = export.SegmentationGraph(trained.model)(torch.stack(images))[0]
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-4)
    assert torch.equal(labels, torch.stack(expected))
    miou = _miou(expected, targets, len(trained.classes))
    assert miou > 0.5  # a trained model: the labels are not a trivial map
    assert _miou(list(labels), targets, len(trained.classes)) == miou
    with pytest.raises(Exception, match=r"(?i)shape|size|guard|dim"):
        program(torch.rand(1, 3, 96, 64))


def test_onnx_segmentation_graph(tmp_path):
    """A small conv net with a stride-4 encoder and a skip (the U-Net pattern) through
    ``export_segmenter`` to ONNX, dynamic: ONNX Runtime gives its logits (1e-4) and labels on batches
    and sides it was not traced with; the divisor found is 32 (the first tried, which stride 4 allows)."""
    pytest.importorskip("onnxruntime", reason=NEEDS_ONNX)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.up = torch.nn.ConvTranspose2d(8, 8, 4, stride=4)
            self.head = torch.nn.Conv2d(8 + 3, 5, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.up(torch.relu(self.down(x))), x], dim=1))

    torch.manual_seed(0)
    net = Net().eval()
    exported = export.export_segmenter(net, tmp_path / "net.onnx")
    assert exported.divisor == 32 and exported.size is None and len(exported.checks) == 2
    run = export.load_exported(tmp_path / "net.onnx")
    for shape in [(2, 3, 64, 96), (1, 3, 160, 32)]:
        images = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        logits, labels = run(images)
        with torch.no_grad():
            expected_logits, expected_labels = export.SegmentationGraph(net)(images)
        torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-4)
        assert labels.dtype == torch.int64 and torch.equal(labels, expected_labels)


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` boxes of 5-35 px in a 85 px square, their scores and classes 0-2."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g) * 50
    boxes = torch.cat([corner, corner + 5 + torch.rand(n, 2, generator=g) * 30], dim=1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def onnx_nms(tmp_path_factory):
    """``segdet.ops.nms.batched_nms`` (IoU 0.5) traced with a free box count and converted to ONNX: an
    ONNX Runtime session."""
    pytest.importorskip("onnxruntime", reason=NEEDS_ONNX)
    import onnxruntime

    from segdet.ops.nms import batched_nms, onnx_translations

    class Keep(torch.nn.Module):
        def forward(self, boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            return batched_nms(boxes, scores, classes, 0.5)

    n = torch.export.Dim("n", min=0, max=10_000)
    program = torch.export.export(Keep(), _random_boxes(8, 0), dynamic_shapes=({0: n}, {0: n}, {0: n}))
    path = tmp_path_factory.mktemp("nms") / "nms.onnx"
    torch.onnx.export(program, dynamo=True, custom_translation_table=onnx_translations()).save(str(path))
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("count", [0, 1, 2, 40])
def test_onnx_nms_keeps_torchvisions_boxes(onnx_nms, count):
    """The exported NMS (``segdet::nms`` as ONNX ``NonMaxSuppression``) on ``count`` random boxes of 3
    classes keeps the indices torchvision's ``batched_nms`` keeps, in its order; 0 and 1 boxes included
    (torchvision's own op would make a traced graph assert at least 2)."""
    from torchvision.ops import batched_nms as reference

    boxes, scores, classes = _random_boxes(count, count)
    names = [i.name for i in onnx_nms.get_inputs()]
    (kept,) = onnx_nms.run(
        None, dict(zip(names, (boxes.numpy(), scores.numpy(), classes.numpy()), strict=True))
    )
    assert torch.equal(torch.from_numpy(kept), reference(boxes, scores, classes, 0.5))


def test_a_wrong_export_writes_nothing(tiny_segmentation_run, tmp_path, monkeypatch):
    """A graph whose checks fail (simulated: every check reports a failure) leaves no file, neither the
    output nor the partial one, and says which check failed."""
    monkeypatch.setattr(
        export.segmentation, "_check_segmentation", lambda *args: export.Check(False, "on 1x3x32x32: bad")
    )
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


def test_trained_mask_rcnn_exports_its_detections_and_masks(trained_detector, tmp_path, capsys):
    """The trained Mask R-CNN (box and mask AP50 >= 0.9 on these images: ``test_detection_convergence``)
    through the command to ``.pt2``, traced on its first held-out image: on each of its four images the
    program gives the trained model's detections (paired by :func:`export.compare_detections`: boxes
    within 0.01 px, scores 1e-4, mask probabilities 1e-3; the program holds the folded network), and
    its ``m x m`` masks pasted with ``segdet.ops.masks.paste_masks_in_image`` are the model's masks on
    99.9 % of the pixels at 0.5. RPN, RoIAlign, both heads, NMS and the mask selection are in the graph.
    Exported with ``--size 64 64`` (one size: for any size the export and the load take ~65 s here, too
    slow for the suite; run by hand, that program also gave the model's detections on each image at
    80 x 120, resized to 43 x 64 and padded to 64 x 64, the RoI level scales' case, and at 97 x 53).
    An empty result runs too: with
    every foreground logit of the box classifier pushed down by 1e4 (in the program's weights and the
    model's alike) both detect nothing, whatever the host's float rounding made of the training (whether
    the blank image of the command's second check gets detections does)."""
    from segdet.ops.masks import paste_masks_in_image

    trained = load_trained(trained_detector)
    task = DetectionTask(trained.config)
    images = [task.val_dataset()[i][0].as_subclass(torch.Tensor) for i in range(len(task.val_ann.images))]
    first = task.val_ann.images[0].path
    out = tmp_path / "maskrcnn.pt2"
    argv = ["export", str(trained_detector), "--out", str(out), "--image", str(first), "--size", "64", "64"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "masks float32 D x 1 x m x m" in printed and "mask probabilities within" in printed
    assert "load it after `import segdet.ops`" in printed  # the program calls segdet::nms
    assert "float32 1 x 3 x 64 x 64," in printed
    blank = r"on a blank image: (no detections, as PyTorch|\d+ detections? as PyTorch)"
    assert re.search(blank, printed), printed

    program = export.load_exported(out)
    with torch.no_grad():
        for i, image in enumerate(images):
            expected = trained.model([image])[0]
            got = program(image[None])
            assert len(expected["scores"]) > 0 and float(expected["scores"].max()) > 0.5
            boxes, masks = got[0], got[3]
            assert masks.shape[1:] == (1, 28, 28)
            # The check compares m x m masks: the model's own, before the transform pastes them.
            check = export.compare_detections(export.DetectionGraph(trained.model)(image[None]), got, f"{i}")
            assert check.ok, check.summary
            pasted = paste_masks_in_image(masks, boxes, tuple(image.shape[-2:]))
            order = torch.cdist(expected["boxes"], boxes).argmin(dim=1)
            agree = ((pasted[order] > 0.5) == (expected["masks"] > 0.5)).double().mean()
            assert agree >= 0.999, (i, float(agree))
        # The program keeps the parameters' names: the same change to both, then nothing is detected.
        for net in (program, trained.model):
            name = next(n for n, _ in net.named_parameters() if n.endswith("box_predictor.cls_score.bias"))
            net.get_parameter(name)[1:] -= 1e4
        expected, got = trained.model([images[0]])[0], program(images[0][None])
        assert len(expected["scores"]) == 0 and all(len(t) == 0 for t in got), [t.shape for t in got]


def test_which_detectors_take_any_size(monkeypatch, tmp_path):
    """By default a detector is traced at its own input size with dynamic sides, 32 to 8192, to ``.pt2``
    and to ``.onnx``: YOLO v1 (a fixed-size resize), an R-CNN (an aspect-keeping one) and YOLACT (its
    masks resampled to the image's size)."""
    from segdet.models import build

    traced = []

    def stop(graph, example, dynamic_shapes):
        traced.append((tuple(example.shape), dynamic_shapes))
        raise SegdetError("traced")

    monkeypatch.setattr(export.detection, "trace", stop)
    yolo = build("yolov1_mobilenet_v3_small", 2).eval()
    rcnn = build("fasterrcnn_resnet50_fpn", 2, backbone="resnet18", min_size=96, max_size=128).eval()
    yolact = build("yolact_resnet50_fpn", 2, backbone="resnet18").eval()
    cases = [(model, suffix) for model in (yolo, rcnn, yolact) for suffix in (".pt2", ".onnx")]
    for model, suffix in cases:
        with pytest.raises(SegdetError, match="traced"):
            export.export_detector(model, tmp_path / f"y{suffix}")
    for (model, suffix), (shape, sides) in zip(cases, traced, strict=True):
        assert shape == (1, 3, *export.default_detection_size(model)), (type(model), suffix)
        h, w = sides[0][2], sides[0][3]
        assert (h.min, h.max, w.min, w.max) == (32, 8192, 32, 8192)


def test_a_size_the_program_refuses_fails_its_check_in_one_line():
    """A program that refuses an image's size (torch.export's guard, e.g. a 1 px feature level) fails
    that check with the size and the guard's first line, instead of an unexpected error."""

    def refuse(image):
        raise AssertionError("Guard failed: 1 + (h // 64) != 1\nmore lines")

    expected = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    check = export.check_detections(expected, refuse, torch.zeros(1, 3, 40, 500), "it at 1 x 5/4")
    assert not check.ok
    assert check.summary == (
        "on it at 1 x 5/4: the exported program fails on a 40 x 500 image (Guard failed: 1 + (h // 64) != 1)"
    )
    assert export.check_detections(expected, lambda image: expected, torch.zeros(1, 3, 8, 8), "x").ok


def test_detectors_that_are_refused_say_why():
    """R-CNN and Fast R-CNN (selective search outside the network) are refused in one line that names
    them and the reason; every other family is accepted."""
    from segdet.models import build

    for name in ("fastrcnn_resnet50_c4", "rcnn_resnet_c4"):
        problem = export.detector_export_problem(build(name, 2, backbone="resnet18"), name)
        assert problem and problem.startswith(f"{name} is not exported") and "selective search" in problem
        assert "\n" not in problem
    for name in (
        "maskrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_c4",
        "tridentnet_resnet50_c4",
        "yolact_resnet50_fpn",
    ):
        assert export.detector_export_problem(build(name, 2, backbone="resnet18")) is None


def test_missing_onnx_packages_are_named(tiny_segmentation_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export.program, "_importable", lambda name: name != "onnxscript")
    assert (
        main(["export", str(tiny_segmentation_run / "last.safetensors"), "--out", str(tmp_path / "m.onnx")])
        == 1
    )
    assert "needs onnxscript: pip install 'segdet[export]'" in capsys.readouterr().err


def test_the_command_says_how_to_use_other_sizes(tiny_segmentation_run, tmp_path, capsys):
    """A segmenter exported for any size takes only multiples of 32 (a runtime refuses other sides with
    a shape error from deep in the graph): the command says how to run other sizes."""
    out = tmp_path / "unet.pt2"
    assert main(["export", str(tiny_segmentation_run / "last.safetensors"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "H and W multiples of 32" in printed
    assert "other sizes: pad the image (e.g. zeros at the bottom and right) to multiples of 32" in printed
    assert "import segdet.ops" not in printed  # no segdet operator in a segmentation graph
