"""``segdet predict`` over many images (user test of predict, items 1-4): one image whose prediction fails,
images in sub-folders and glob patterns, outputs of images of the same name, EXIF orientation tags; and
``segdet eval``'s dataset options without ``--data`` (item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdet.cli.main import main
from segdet.engine.detection import DetectionTask
from segdet.engine.segmentation import SegmentationTask

ODD = (24, 40)  # height, width of the image whose prediction the tests make fail


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def save(path: Path, size: tuple[int, int] = (32, 32), seed: int = 0, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, **kwargs)
    return path


def one_box(model, image, device) -> dict[str, torch.Tensor]:
    """A detector's output for any image: one box of the first class scoring 0.9."""
    return {
        "boxes": torch.tensor([[2.0, 3.0, 12.0, 15.0]]),
        "labels": torch.tensor([0]),
        "scores": torch.tensor([0.9]),
    }


@pytest.fixture
def checkpoint(request, tiny_segmentation_run, detection_checkpoint, monkeypatch) -> Path:
    """The tiny segmentation run's checkpoint, or the untrained detector's answering :func:`one_box`."""
    if request.param == "segmentation":
        return tiny_segmentation_run / "last.safetensors"
    monkeypatch.setattr(DetectionTask, "infer", staticmethod(one_box))
    return detection_checkpoint


def fail_on(monkeypatch, error: BaseException, when=lambda image: tuple(image.shape[-2:]) == ODD) -> list:
    """Make both tasks' ``infer`` raise ``error`` on the images ``when`` picks; returns the shapes seen."""
    seen = []
    for task in (SegmentationTask, DetectionTask):
        infer = task.infer

        def failing(model, image, *rest, infer=infer):
            seen.append(tuple(image.shape[-2:]))
            if when(image):
                raise error
            return infer(model, image, *rest)

        monkeypatch.setattr(task, "infer", staticmethod(failing))
    return seen


# ----------------------------------------------------------------- 1. one image whose prediction fails
@pytest.mark.parametrize("checkpoint", ["segmentation", "detection"], indirect=True)
def test_an_image_whose_prediction_fails_is_skipped(tmp_path, capsys, monkeypatch, checkpoint):
    """Before: ``segdet: error: unexpected RuntimeError ...``, the images after it not predicted and no
    predictions.json. Now that image is one line, the others are predicted and written, exit status 1."""
    images = tmp_path / "imgs"
    save(images / "a.png"), save(images / "b.png", ODD), save(images / "c.png", seed=1)
    fail_on(monkeypatch, RuntimeError("odd size\nin the head"))
    out = tmp_path / "p"
    code, stdout, err = run_cli(capsys, "predict", checkpoint, images, "--out", out)
    assert code == 1 and "predicted 2 images" in stdout
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert str(images / "b.png") in lines[0] and "RuntimeError: odd size in the head" in lines[0]
    assert lines[-1] == "segdet: 1 of 3 images failed while predicting; skipped (listed above)"
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "c.png"]
    sources = json.loads((out / "sources.json").read_text())
    assert sources == {"a.png": str(images / "a.png"), "c.png": str(images / "c.png")}
    if "labels" not in {p.name for p in out.iterdir()}:  # a detector
        records = json.loads((out / "predictions.json").read_text())
        assert [r["file_name"] for r in records] == ["a.png", "c.png"]
        assert [r["image_id"] for r in records] == [0, 2]


@pytest.mark.parametrize("checkpoint", ["detection"], indirect=True)
def test_every_image_failing_alike_is_counted(tmp_path, capsys, monkeypatch, checkpoint):
    """A systematic failure is not hidden: each image says it, the last line counts all of them."""
    images = tmp_path / "imgs"
    for name in "abc":
        save(images / f"{name}.png")
    seen = fail_on(monkeypatch, ValueError("bad weights"), when=lambda image: True)
    code, stdout, err = run_cli(capsys, "predict", checkpoint, images, "--out", tmp_path / "p")
    assert code == 1 and "predicted 0 images" in stdout and len(seen) == 3
    assert err.count("unexpected ValueError: bad weights") == 3
    assert (
        err.strip().splitlines()[-1]
        == "segdet: 3 of 3 images failed while predicting; skipped (listed above)"
    )
    assert json.loads((tmp_path / "p" / "predictions.json").read_text()) == []


@pytest.mark.parametrize("checkpoint", ["segmentation"], indirect=True)
@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_an_interrupt_or_a_machine_error_still_stops_at_once(
    tmp_path, capsys, monkeypatch, checkpoint, error
):
    images = tmp_path / "imgs"
    for name in "abc":
        save(images / f"{name}.png")
    seen = fail_on(monkeypatch, error, when=lambda image: True)
    code, _, err = run_cli(capsys, "predict", checkpoint, images, "--out", tmp_path / "p")
    assert len(seen) == 1 and "skipped" not in err
    if isinstance(error, KeyboardInterrupt):
        assert (code, err) == (130, "segdet: interrupted\n")
    else:  # a full disk would fail every image: main's one line
        assert (code, err) == (1, "segdet: error: segdet: No space left on device\n")


# --------------------------------------------------------------------- 2. sub-folders and glob patterns
def nested(root: Path) -> Path:
    """``root/a.png``, ``root/sub1/x.png``, ``root/sub1/deep/y.jpg``, ``root/sub2/z.png`` (beside a text
    file) and an empty ``root/empty``."""
    save(root / "a.png"), save(root / "sub1" / "x.png"), save(root / "sub2" / "z.png")
    save(root / "sub1" / "deep" / "y.jpg", format="JPEG")
    (root / "sub2" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def test_images_in_sub_folders_are_counted(tmp_path, capsys):
    from segdet.cli.image_inputs import list_images

    root = nested(tmp_path / "imgs")
    assert list_images([root]) == [root / "a.png"]
    err = capsys.readouterr().err
    assert err == (
        f"segdet: 3 images in 3 sub-folders of {root} not searched (give them, or a pattern such as "
        f"'{root}/**/*.png')\n"
    )
    list_images([root / "sub2"])  # no sub-folder: no word
    assert capsys.readouterr().err == ""


def test_glob_patterns_are_expanded_recursively(tmp_path, capsys, monkeypatch):
    from segdet.cli.image_inputs import input_roots, list_images
    from segdet.errors import DataError

    root = nested(tmp_path / "imgs")
    assert list_images([root / "**" / "*.png"]) == [
        root / "a.png",
        root / "sub1" / "x.png",
        root / "sub2" / "z.png",
    ]
    assert list_images([root / "sub?" / "**" / "*"]) == [
        root / "sub1" / "deep" / "y.jpg",
        root / "sub1" / "x.png",
        root / "sub2" / "z.png",
    ]
    monkeypatch.chdir(root)
    assert list_images([Path("[ab].png")]) == [Path("a.png")]
    assert input_roots([root / "**" / "*.png", Path("*.png"), root]) == [root, Path("."), root]
    with pytest.raises(DataError, match=r"\*\*/\*\.gif: the pattern matches no file"):
        list_images([root / "**" / "*.gif"])
    with pytest.raises(DataError, match="the pattern matches 1 paths, none an image"):
        list_images([root / "sub2" / "*.txt"])
    with pytest.raises(DataError, match="no such image file or folder"):
        list_images([root / "missing.png"])
    assert capsys.readouterr().err == ""


def test_predict_reads_a_pattern_and_keeps_out_of_its_folder(tmp_path, capsys, tiny_segmentation_run):
    root = nested(tmp_path / "imgs")
    ckpt = tiny_segmentation_run / "last.safetensors"
    pattern = f"{root}/**/*.png"
    code, _, err = run_cli(capsys, "predict", ckpt, pattern, "--out", root / "sub1" / "out")
    assert code == 1 and "overlaps the input" in err and not (root / "sub1" / "out").exists()
    code, stdout, err = run_cli(capsys, "predict", ckpt, pattern, "--out", tmp_path / "p")
    assert code == 0 and "predicted 3 images" in stdout and err == ""
    code, _, err = run_cli(capsys, "predict", ckpt, f"{root}/*.gif", "--out", tmp_path / "q")
    assert code == 1 and err.startswith("segdet: error: ") and "the pattern matches no file" in err


# --------------------------------------------------------------------------- 3. images of the same name
@pytest.mark.parametrize("checkpoint", ["detection"], indirect=True)
def test_outputs_of_images_of_the_same_name_say_their_source(tmp_path, capsys, checkpoint):
    """Before: ``same_png.png`` and ``same_png_2.png``, and two detections of ``"file_name": "same.png"``,
    with nothing saying which image each came from. Now ``sources.json`` and each record's ``path`` say it;
    with ``--coco-gt`` each gets the id of the ground-truth image its path ends as, and ``segdet metrics``
    and pycocotools read predictions.json."""
    one, two = save(tmp_path / "a" / "sub1" / "same.png"), save(tmp_path / "a" / "sub2" / "same.png", seed=1)
    gt = tmp_path / "gt.json"
    category = {"id": 1, "name": "circle"}
    gt.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 7, "file_name": "sub1/same.png", "width": 32, "height": 32},
                    {"id": 9, "file_name": "sub2\\same.png", "width": 32, "height": 32},
                ],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 7,
                        "category_id": 1,
                        "bbox": [2, 3, 10, 12],
                        "area": 120,
                        "iscrowd": 0,
                    }
                ],
                "categories": [category, {"id": 2, "name": "rectangle"}, {"id": 3, "name": "triangle"}],
            }
        )
    )
    out = tmp_path / "p"
    code, _, err = run_cli(
        capsys, "predict", checkpoint, one.parent, two.parent, "--out", out, "--coco-gt", gt
    )
    assert code == 0, err
    assert json.loads((out / "sources.json").read_text()) == {
        "same_png.png": str(one),
        "same_png_2.png": str(two),
    }
    records = json.loads((out / "predictions.json").read_text())
    assert [(r["image_id"], r["file_name"], r["path"]) for r in records] == [
        (7, "same.png", str(one)),
        (9, "same.png", str(two)),
    ]
    code, _, err = run_cli(capsys, "metrics", "coco", "--gt", gt, "--dt", out / "predictions.json")
    assert code == 0, err
    pycocotools = pytest.importorskip("pycocotools.coco")
    loaded = pycocotools.COCO(str(gt)).loadRes(str(out / "predictions.json"))
    assert sorted(loaded.imgToAnns) == [7, 9]


def test_an_ambiguous_ground_truth_name_is_refused(tmp_path):
    from segdet.cli.predict import image_ids
    from segdet.errors import DataError

    gt = tmp_path / "gt.json"
    names = ["sub1/same.png", "sub2/same.png", "other.png"]
    gt.write_text(json.dumps({"images": [{"id": i, "file_name": n} for i, n in enumerate(names)]}))
    assert image_ids([Path("x/sub2/same.png"), Path("y/other.png")], gt) == [1, 2]
    with pytest.raises(DataError, match="has the base name of 2 ground-truth images"):
        image_ids([Path("x/sub3/same.png")], gt)


# ------------------------------------------------------------------------------- 4. EXIF orientation
@pytest.mark.parametrize("checkpoint", ["segmentation"], indirect=True)
def test_predict_says_how_many_images_have_an_exif_orientation(tmp_path, capsys, checkpoint):
    """Before: the tag was ignored without a word (``data check`` warns of it). Pixels stay as stored."""
    images = tmp_path / "imgs"
    exif = Image.Exif()
    exif[0x0112] = 6
    save(images / "portrait.jpg", (24, 40), format="JPEG", exif=exif)
    save(images / "plain.png")
    out = tmp_path / "p"
    code, _, err = run_cli(capsys, "predict", checkpoint, images, "--out", out)
    assert code == 0
    assert err == (
        "segdet: 1 image has an EXIF orientation tag; predicted on the pixels as stored (rotate them first "
        "to use the tag)\n"
    )
    with Image.open(out / "labels" / "portrait.png") as labels:
        assert labels.size == (40, 24)  # not turned


# ------------------------------------------------------------------- 5. eval's dataset options, no --data
@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--format", "yolo"], "segdet: error: --format needs --data"),
        (["--split", "val", "--images", "imgs"], "segdet: error: --images and --split need --data"),
    ],
)
def test_eval_refuses_dataset_options_without_data(tmp_path, capsys, tiny_segmentation_run, options, line):
    """Before: ``--format yolo`` without ``--data`` was ignored and the run's split evaluated."""
    code, stdout, err = run_cli(capsys, "eval", tiny_segmentation_run / "best.safetensors", *options)
    assert code == 1 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line + " (without it the run's validation split"), err
