"""Outputs never replace a user's files, never go into the data they are made from, and never collide
with each other; a bad image is reported and skipped, not the end of the command (issue 11, items 3, 5,
14 and 15)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.cli.main import main
from segdet.data import shapes
from segdet.data.formats import write_dataset


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> None:
    """Exactly one line on stderr, ``segdet: error: ...`` holding every needle; no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segdet: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def coco_set(tmp_path) -> Path:
    dataset = shapes.generate(tmp_path / "shapes", 3, seed=3, size=48)
    return write_dataset("coco", dataset, tmp_path / "coco")


def test_convert_refuses_a_non_empty_output_folder(tmp_path, capsys, coco_set):
    """Item 3: converting into an existing non-empty folder silently replaced the user's files."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.yaml").write_text("names: [mine]\n")
    before = tree_digest(out)
    code, _, err = run_cli(capsys, "data", "convert", coco_set, "--to", "yolo", "--out", out)
    assert code == 1
    one_line_error(err, str(out), "not empty", "--overwrite")
    assert tree_digest(out) == before
    code, _, _ = run_cli(capsys, "data", "convert", coco_set, "--to", "yolo", "--out", out, "--overwrite")
    assert code == 0 and (out / "labels").is_dir()


@pytest.mark.parametrize("where", ["root", "inside"])
def test_convert_never_writes_into_the_source_dataset(tmp_path, capsys, coco_set, where):
    """Item 3: converting a dataset into itself rewrote its files; refused even with --overwrite."""
    root = coco_set.parents[1]
    before = tree_digest(root)
    out = root if where == "root" else root / "converted"
    code, _, err = run_cli(capsys, "data", "convert", coco_set, "--to", "yolo", "--out", out, "--overwrite")
    assert code == 1
    one_line_error(err, "overlaps the input")
    assert tree_digest(root) == before


def test_convert_copies_images_and_links_only_with_link(tmp_path, capsys, coco_set):
    """Item 1: a linked output *is* the source (editing one edits the other): copies by default."""
    source = next((coco_set.parents[1] / "images").glob("*.png"))
    for flag, linked in (([], False), (["--link"], True)):
        out = tmp_path / f"voc{len(flag)}"
        code, stdout, _ = run_cli(capsys, "data", "convert", coco_set, "--to", "voc", "--out", out, *flag)
        assert code == 0 and ("hard-linked" if linked else "copied") in stdout
        written = out / "JPEGImages" / source.name
        assert os.path.samefile(written, source) == linked
        assert written.read_bytes() == source.read_bytes()


def test_show_and_predict_name_outputs_apart(tmp_path, capsys, tiny_segmentation_run):
    """Item 5: ``a.png`` and ``a.jpg`` (or ``x/a.png`` and ``y/a.png``) wrote the same output file."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "pred"
    code, stdout, _ = run_cli(
        capsys, "predict", tiny_segmentation_run / "last.safetensors", images, "--out", out
    )
    assert code == 0 and "predicted 3 images" in stdout
    assert sorted(p.name for p in (out / "labels").glob("*.png")) == ["a_jpg.png", "a_png.png", "b.png"]
    assert len(list((out / "overlays").glob("*.png"))) == 3

    dataset = shapes.generate(tmp_path / "s", 2, seed=1, size=32)
    for record, folder in zip(dataset.images, ("x", "y"), strict=True):
        record.file_name = f"{folder}/a.png"
    coco = tmp_path / "nested"
    for record in dataset.images:
        target = coco / "images" / record.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(record.path.read_bytes())
    ann = write_dataset("coco", dataset, coco, copy_images=False)
    code, _, _ = run_cli(capsys, "data", "show", ann, "--out", tmp_path / "drawn")
    assert code == 0 and len(list((tmp_path / "drawn").glob("*.png"))) == 2


def test_show_and_predict_report_unreadable_images_and_go_on(tmp_path, capsys, tiny_segmentation_run):
    """Item 15: ``data show`` and ``predict`` stopped at the first unreadable image."""
    dataset = shapes.generate(tmp_path / "s", 3, seed=4, size=32)
    ann = write_dataset("coco", dataset, tmp_path / "coco")
    broken = tmp_path / "coco" / "images" / dataset.images[0].file_name
    broken.write_bytes(broken.read_bytes()[:60])  # a truncated PNG
    code, stdout, err = run_cli(capsys, "data", "show", ann, "--out", tmp_path / "drawn")
    assert code == 1
    assert "drew 2 images" in stdout and broken.name in err and "Traceback" not in err
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 2

    images = tmp_path / "coco" / "images"
    ckpt = tiny_segmentation_run / "last.safetensors"
    code, stdout, err = run_cli(capsys, "predict", ckpt, images, "--out", tmp_path / "pred")
    assert code == 1
    assert "predicted 2 images" in stdout and "1 of 3 images could not be read" in err
    assert len(list((tmp_path / "pred" / "labels").glob("*.png"))) == 2


def test_predict_caps_the_image_size(tmp_path, capsys, monkeypatch, tiny_segmentation_run):
    """Item 15: ``predict`` ran a 4000 x 3000 image at full resolution. Now an image whose longer side
    exceeds ``--max-size`` runs at that size and its label map is scaled back to the image's size."""
    from segdet.engine.segmentation import SegmentationTask

    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(image)
    seen = []
    infer = SegmentationTask.infer

    def spy(model, x, device, max_size):
        seen.append(max_size)
        wrapped = lambda batch: (seen.append(tuple(batch.shape[-2:])), model(batch))[1]  # noqa: E731
        return infer(wrapped, x, device, max_size)

    monkeypatch.setattr(SegmentationTask, "infer", staticmethod(spy))
    argv = ["predict", tiny_segmentation_run / "last.safetensors", image, "--out", tmp_path / "p"]
    code, _, _ = run_cli(capsys, *argv, "--max-size", "100")
    assert code == 0 and seen == [100, (75, 100)]
    with Image.open(tmp_path / "p" / "labels" / "big.png") as labels:
        assert labels.size == (400, 300)


@pytest.mark.parametrize("kind", ["predict", "show", "convert"])
def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, capsys, coco_set, tiny_segmentation_run, kind):
    """Item 14: ``--out`` naming a file where a folder is expected ended in a traceback."""
    out = tmp_path / "file.txt"
    out.write_text("mine")
    images = coco_set.parents[1] / "images"
    argv = {
        "predict": ["predict", tiny_segmentation_run / "last.safetensors", images],
        "show": ["data", "show", coco_set],
        "convert": ["data", "convert", coco_set, "--to", "voc"],
    }[kind]
    code, _, err = run_cli(capsys, *argv, "--out", out, "--overwrite")
    assert code == 1
    one_line_error(err, "is a file")
    assert out.read_text() == "mine"


def test_eval_out_rules(tmp_path, capsys, tiny_segmentation_run):
    """Item 14: ``eval --out`` naming a folder ended in a traceback; an existing file is kept unless
    ``--overwrite``, and the checkpoint itself can never be the output."""
    ckpt = tiny_segmentation_run / "last.safetensors"
    folder = tmp_path / "folder"
    folder.mkdir()
    code, _, err = run_cli(capsys, "eval", ckpt, "--out", folder)
    assert code == 1
    one_line_error(err, "is a folder")
    mine = tmp_path / "metrics.json"
    mine.write_text("mine")
    code, _, err = run_cli(capsys, "eval", ckpt, "--out", mine)
    assert code == 1 and mine.read_text() == "mine"
    one_line_error(err, "exists", "--overwrite")
    code, _, err = run_cli(capsys, "eval", ckpt, "--out", ckpt, "--overwrite")
    assert code == 1 and "overlaps the input" in err
    code, _, _ = run_cli(capsys, "eval", ckpt, "--out", mine, "--overwrite")
    assert code == 0 and "mIoU" in json.loads(mine.read_text())


def test_metrics_seg_num_classes_is_bounded(tmp_path, capsys):
    """Item 14: ``--num-classes 100000`` tried to allocate an 80 GB confusion matrix."""
    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / folder / "a.png")
    argv = ["metrics", "seg", "--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--num-classes"]
    code, _, err = run_cli(capsys, *argv, "100000")
    assert code == 1
    one_line_error(err, "--num-classes", "100000", "4096")
    assert run_cli(capsys, *argv, "3")[0] == 0


def test_nul_bytes_in_path_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "check", "a\x00b"])
    assert e.value.code == 2
    assert "NUL" in capsys.readouterr().err


def test_predict_never_writes_over_its_inputs(tmp_path, capsys, tiny_segmentation_run):
    """``--out`` that is, contains or lies inside a folder of input images is refused (``root/labels`` of
    a mask dataset would be overwritten by ``predict root/images --out root``; README: refused whatever the
    flags, a new folder inside the image folder included); a folder beside it is fine."""
    ckpt = tiny_segmentation_run / "last.safetensors"
    images = tmp_path / "root" / "images"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    for out in (images, tmp_path / "root", images / "pred"):
        code, _, err = run_cli(capsys, "predict", ckpt, images, "--out", out, "--overwrite")
        assert code == 1
        one_line_error(err, "overlaps the input")
    assert sorted(p.name for p in images.iterdir()) == ["a.png"]
    code, _, _ = run_cli(capsys, "predict", ckpt, images, "--out", tmp_path / "root" / "pred")
    assert code == 0 and (tmp_path / "root" / "pred" / "labels" / "a.png").exists()
    assert sorted(p.name for p in images.iterdir()) == ["a.png"]
