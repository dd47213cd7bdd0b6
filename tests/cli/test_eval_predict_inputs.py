"""``segdet eval`` / ``predict`` / ``export`` on inputs that do not fit the checkpoint: a segmentation set
of other classes, NaN metrics, a dataset of another format than the run's, an output folder inside the
input images, detector-only options given to a segmentation model, and files that are not checkpoints
(user test of eval / predict / export, items 1-5)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.cli.main import main
from segdet.data import shapes
from segdet.data.formats import write_dataset
from segdet.engine.checkpoint import load_checkpoint, save_checkpoint

SHAPES = ["background", "circle", "rectangle", "triangle", "ellipse"]  # the tiny run's classes


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> str:
    """Exactly one line on stderr, ``segdet: error: ...`` holding every needle; no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segdet: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def strict_json(path: Path) -> dict:
    """``path`` parsed as standard JSON: Python's ``NaN`` / ``Infinity`` tokens are refused."""

    def refuse(token: str):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def mask_set(tmp_path) -> Path:
    """The tiny run's classes as a mask-folder dataset of 4 images (root folder with classes.txt)."""
    return write_dataset(
        "masks", shapes.generate(tmp_path / "shapes", 4, seed=11, size=32), tmp_path / "masks"
    )


def with_classes(root: Path, names: list[str]) -> Path:
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    return root


@pytest.fixture
def checkpoint_with(tmp_path, tiny_segmentation_run):
    """``checkpoint_with(change)``: a copy of the tiny run's checkpoint after ``change(state)``."""

    def make(change) -> Path:
        state = load_checkpoint(tiny_segmentation_run / "last.safetensors")
        change(state)
        path = tmp_path / "changed" / "model.safetensors"
        save_checkpoint(path, state)
        return path

    return make


# --------------------------------------------------------------------------- 1. classes and NaN metrics
@pytest.mark.parametrize(
    "names",
    [
        ["background", "pedestrian"],  # Penn-Fudan's semantic classes
        ["background", "circle", "rectangle", "triangle", "car"],  # as many classes, one other
        ["background", "circle", "rectangle", "triangle", "void"],  # ellipse is the set's ignore value
        ["Background", "circle", "rectangle", "triangle", "ellipse"],  # names are compared exactly
    ],
)
def test_eval_refuses_a_segmentation_set_of_other_classes(
    tmp_path, capsys, mask_set, tiny_segmentation_run, names
):
    """Before: exit 0 and NaN / meaningless metrics (a label index meant another class). Now the refusal
    detection checkpoints already gave, naming the set, both class lists, and nothing written."""
    with_classes(mask_set, names)
    out = tmp_path / "ev.json"
    ckpt = tiny_segmentation_run / "best.safetensors"
    code, stdout, err = run_cli(capsys, "eval", ckpt, "--data", mask_set, "--format", "masks", "--out", out)
    assert code == 1 and "mIoU" not in stdout
    one_line_error(err, str(mask_set), "the evaluation set's classes", "are not the checkpoint's", "ellipse")
    assert not out.exists()


def test_the_ignore_class_listed_or_not_is_the_same_classes(capsys, mask_set, checkpoint_with):
    """The ignore class is no class to compare: a set whose classes.txt lists ``Unlabelled`` after the
    checkpoint's classes (read as the ignore value 5) has the checkpoint's classes; a checkpoint that lists
    an ignore class where the set has its ignore value has the set's."""
    with_classes(mask_set, [*SHAPES, "Unlabelled"])
    assert run_cli(capsys, "eval", checkpoint_with(lambda s: None), "--data", mask_set)[0] == 0

    with_classes(mask_set, [*SHAPES[:4], "void"])  # value 4 is ignored in the set

    def listed(state):
        state["classes"] = [*SHAPES[:4], "Unlabelled"]

    code, stdout, err = run_cli(capsys, "eval", checkpoint_with(listed), "--data", mask_set)
    assert code == 0, err
    printed = {line.split()[0] for line in stdout.splitlines()}
    assert {f"IoU/{c}" for c in SHAPES[:4]} <= printed and "IoU/Unlabelled" not in printed


@pytest.mark.parametrize(
    ("checkpoint", "dataset", "ignore", "same"),
    [
        (["a", "b"], ["a", "b"], 255, True),
        (["a", "b"], ["a", "b", "c"], 255, False),
        (["a", "b", "c"], ["a", "b"], 255, False),  # the set has no c: a model's c would be no class of it
        (["a", "b"], ["b", "a"], 255, False),
        (["a", "b", "Unlabelled"], ["a", "b"], 2, True),  # the checkpoint lists the set's ignore class
        (["a", "b", "void"], ["a", "b"], 255, True),  # ... or an ignore class the set has not
        (["a", "b", "c"], ["a", "b"], 2, False),  # c is a class, not an ignore class
        (["a", "b"], ["a", "b", "void"], 255, False),  # the set scores its value 2 as a class
        (["a", "b"], ["a", "b", "void"], 2, False),  # the model has no output 2 to compare
        (["void", "a", "b"], ["ignore", "a", "b"], 0, True),  # an ignore class kept in the middle
        (["void", "a", "b"], ["a", "b"], 255, False),  # renumbered
    ],
)
def test_semantic_class_equality(checkpoint, dataset, ignore, same):
    from segdet.engine.segmentation import same_semantic_classes

    assert same_semantic_classes(checkpoint, dataset, ignore) is same


def test_eval_never_writes_nan_to_json(tmp_path, capsys, mask_set, tiny_segmentation_run):
    """Labels that are all the ignore value leave every score undefined (NaN, printed as such): the JSON
    file says ``null`` (standard JSON, as ``segdet metrics`` writes), not ``NaN``."""
    for label in (mask_set / "labels").iterdir():
        size = Image.open(label).size
        Image.fromarray(np.full(size[::-1], 255, np.uint8)).save(label)
    out = tmp_path / "ev.json"
    code, stdout, _ = run_cli(
        capsys, "eval", tiny_segmentation_run / "best.safetensors", "--data", mask_set, "--out", out
    )
    assert code == 0 and "mIoU" in stdout
    metrics = strict_json(out)
    assert metrics["mIoU"] is None and all(metrics[f"IoU/{c}"] is None for c in SHAPES)


def test_eval_json_keeps_finite_metrics(tmp_path, capsys, mask_set, tiny_segmentation_run):
    out = tmp_path / "ev.json"
    assert (
        run_cli(capsys, "eval", tiny_segmentation_run / "best.safetensors", "--data", mask_set, "--out", out)[
            0
        ]
        == 0
    )
    metrics = strict_json(out)
    assert isinstance(metrics["pixel_acc"], float) and math.isfinite(metrics["pixel_acc"])


# ------------------------------------------------------------------------------- 3. the format of --data
def test_eval_recognises_the_format_of_data(capsys, mask_set, checkpoint_with):
    """Before: ``--data`` was read in the run's format (here Penn-Fudan: "Penn-Fudan root folder not
    found"). Now, without ``--format``, the layout says it is a mask folder."""

    def pennfudan(state):
        state["config"]["data"]["format"] = "pennfudan"

    ckpt = checkpoint_with(pennfudan)
    code, stdout, err = run_cli(capsys, "eval", ckpt, "--data", mask_set)
    assert code == 0, err
    assert "mIoU" in stdout
    code, _, err = run_cli(capsys, "eval", ckpt, "--data", mask_set, "--format", "pennfudan")  # as given
    assert code == 1
    one_line_error(err, "PNGImages")


def test_evaluation_format_falls_back_to_the_runs(tmp_path, mask_set):
    from segdet.cli.evaluate import evaluation_format

    coco = write_dataset("coco", shapes.generate(tmp_path / "s", 1, seed=1, size=32), tmp_path / "coco")
    assert evaluation_format(coco, None, "pennfudan") == "coco"
    assert evaluation_format(coco.parents[1], None, "pennfudan") == "coco"
    assert evaluation_format(mask_set, None, "coco") == "masks"
    assert evaluation_format(mask_set, "yolo", "coco") == "yolo"  # --format as given
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    assert evaluation_format(unknown, None, "pennfudan") == "pennfudan"  # layout unknown: the run's


# ---------------------------------------------------------------------- 2. an output inside the inputs
@pytest.mark.parametrize("kind", ["segmentation", "detection"])
def test_predict_refuses_an_output_inside_the_input_folder(
    tmp_path, capsys, tiny_segmentation_run, detection_checkpoint, kind
):
    """README: an output that is, contains or lies inside one of the command's inputs is refused whatever
    the flags. ``predict imgs --out imgs/out2`` was accepted and wrote into the image folder."""
    ckpt = tiny_segmentation_run / "best.safetensors" if kind == "segmentation" else detection_checkpoint
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    for flags in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, "predict", ckpt, images, "--out", images / "out2", *flags)
        assert code == 1
        one_line_error(err, str(images / "out2"), "overlaps the input")
        assert sorted(p.name for p in images.iterdir()) == ["a.png"]
    # an image file given by name: its folder is not an input, an output beside it is fine
    code, _, err = run_cli(capsys, "predict", ckpt, images / "a.png", "--out", images / "out2")
    assert code == 0, err


# -------------------------------------------------------------------------- 4. detector-only options
@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--score-thresh", "0.3"], ["--score-thresh"]),
        (["--json-thresh", "0.2"], ["--json-thresh"]),
        (["--coco-gt", "GT"], ["--coco-gt"]),
        (
            ["--coco-gt", "GT", "--score-thresh", "0.3", "--json-thresh", "0.2"],
            ["--coco-gt", "--json-thresh"],
        ),
    ],
)
def test_predict_refuses_detector_options_for_a_segmentation_model(
    tmp_path, capsys, tiny_segmentation_run, options, named
):
    """Before: run with exit 0 and the options silently ignored."""
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    options = [str(gt) if o == "GT" else o for o in options]
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "predict", tiny_segmentation_run / "best.safetensors", images, "--out", out, *options
    )
    assert code == 1
    one_line_error(err, *named, "detectors only", "segmentation")
    assert not out.exists()


def test_predict_refuses_max_size_for_a_detector(tmp_path, capsys, detection_checkpoint):
    """The mirror: ``--max-size`` (segmentation only; a detector resizes as its model options say) was
    silently ignored for a detector."""
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "predict", detection_checkpoint, images, "--out", out, "--max-size", "64")
    assert code == 1
    one_line_error(err, "--max-size applies to segmentation models only", "detection checkpoint")
    assert not out.exists()


def test_export_refuses_image_for_a_segmentation_model(tmp_path, capsys, tiny_segmentation_run):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    out = tmp_path / "out" / "model.pt2"
    code, _, err = run_cli(
        capsys, "export", tiny_segmentation_run / "best.safetensors", "--image", image, "--out", out
    )
    assert code == 1
    one_line_error(err, "--image", "detectors only", "segmentation")
    assert not out.parent.exists()


# ------------------------------------------------------------------------ 5. files that are not checkpoints
def _png(path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="PNG")


def _jpeg(path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="JPEG")


NOT_CHECKPOINTS = {
    # name: (how to write it, what the message must say)
    "y.onnx": (lambda p: p.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(range(256)) * 4), "an ONNX graph"),
    "model.pt2": (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 64), "torch.export"),
    "model.pth": (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=2)), "PyTorch"),
    "zip.pt": (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 64), "PyTorch"),
    "config.yaml": (lambda p: p.write_text("task: segmentation\nmodel:\n  name: unet\n"), "a YAML file"),
    "a.jpg": (_jpeg, "an image"),
    "renamed.safetensors": (_png, "an image"),  # the content, not the name, says what it is
    "metrics.json": (lambda p: p.write_text('{"mIoU": 0.5}'), "a JSON file"),
    "empty.safetensors": (lambda p: p.write_bytes(b""), "empty"),
    "notes.txt": (lambda p: p.write_text("some notes about the run\n" * 10), "a text file"),
}


@pytest.mark.parametrize("name", list(NOT_CHECKPOINTS))
@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, capsys, name, command):
    """Before: ``not a readable safetensors checkpoint (Error while deserializing header: header too
    large)``. Now one line saying it is not a segdet checkpoint and what it seems to be."""
    path = tmp_path / name
    write, says = NOT_CHECKPOINTS[name]
    write(path)
    image = tmp_path / "img.png"
    _png(image)
    argv = {
        "predict": ["predict", path, image, "--out", tmp_path / "out"],
        "eval": ["eval", path],
        "export": ["export", path, "--out", tmp_path / "out.pt2"],
    }[command]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    line = one_line_error(err, f"{path}: not a segdet checkpoint", ".safetensors", says)
    assert "header" not in line and "deserializ" not in line


def test_a_damaged_safetensors_file_is_still_said_to_be_one(tmp_path, capsys, tiny_segmentation_run):
    data = (tiny_segmentation_run / "best.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(capsys, "eval", path)
    assert code == 1
    one_line_error(err, str(path), "damaged")
