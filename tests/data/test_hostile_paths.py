"""Names inside annotation files never make a reader read, or a writer write, outside their folder
(issue 11, items 1, 14 and 15): one helper, :func:`segdet.data.paths.confined`, used by every reader and
writer; images are copied into a written dataset unless linking is asked for."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segdet.cli.main import main
from segdet.data.formats import read_dataset, write_dataset
from segdet.data.paths import confined
from segdet.data.structures import AnnotationSet, ImageRecord
from segdet.errors import DataError


def _png(path: Path, value: int = 90, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("name", "inside"),
    [
        ("a.png", "a.png"),
        ("sub/a.png", "sub/a.png"),
        ("sub/../a.png", "a.png"),
        ("./a.png", "a.png"),
        ("../a.png", None),
        ("../../../../../../etc/passwd", None),
        ("/etc/passwd", None),
        ("sub\\..\\..\\a.png", None),
        ("", None),
        (".", None),
        ("a\x00b.png", None),
        ("a\nb.png", None),
    ],
)
def test_confined_keeps_names_inside_their_folder(tmp_path, name, inside):
    if inside is None:
        with pytest.raises(DataError):
            confined(tmp_path / "images", name)
    else:
        assert confined(tmp_path / "images", name) == tmp_path / "images" / inside


def test_confined_accepts_an_absolute_name_inside_the_folder(tmp_path):
    assert confined(tmp_path, str(tmp_path / "x" / "a.png")) == tmp_path / "x" / "a.png"


def test_convert_never_reads_a_file_named_outside_the_dataset(tmp_path, capsys):
    """Item 1: a COCO ``file_name`` climbing out (``../``) or absolute names a file outside the dataset:
    before the fix ``data convert --to voc`` hard-linked it into the output (exit 0). Now the record is
    refused by the reader, and nothing of the outside file reaches the output."""
    secret = tmp_path / "secret.png"
    _png(secret, value=7)
    root = tmp_path / "ds"
    _png(root / "images" / "good.png")
    gt = {
        "images": [
            {"id": 1, "file_name": "good.png", "width": 16, "height": 16},
            {"id": 2, "file_name": "../../secret.png", "width": 16, "height": 16},
            {"id": 3, "file_name": str(secret), "width": 16, "height": 16},
        ],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [],
    }
    (root / "annotations").mkdir()
    ann = root / "annotations" / "instances.json"
    ann.write_text(json.dumps(gt))
    out = tmp_path / "out"
    code = main(["data", "convert", str(ann), "--from", "coco", "--to", "voc", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "2 records could not be read" in stdout
    written = [p for p in out.rglob("*") if p.is_file()]
    assert not any(os.path.samefile(p, secret) for p in written)
    assert not any(p.read_bytes() == secret.read_bytes() for p in written)
    problems = read_dataset("coco", ann).errors
    assert len(problems) == 2 and all("leads outside" in p.message for p in problems)


def test_voc_filename_outside_the_image_folder_is_an_error(tmp_path):
    _png(tmp_path / "secret.png")
    root = tmp_path / "voc"
    _png(root / "JPEGImages" / "a.png")
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>../../secret.png</filename><size><width>16</width><height>16</height>"
        "</size></annotation>"
    )
    dataset = read_dataset("voc", root)
    assert not dataset.images
    assert "leads outside" in dataset.errors[0].message


@pytest.mark.parametrize(
    "config",
    [
        {"path": "/etc", "train": "images", "names": ["a"]},  # item 15: the reader scanned /etc
        {"path": "../outside", "train": "images", "names": ["a"]},
        {"path": ".", "train": "../outside/images", "names": ["a"]},
    ],
)
def test_yolo_data_yaml_folders_outside_the_dataset_are_refused(tmp_path, config):
    _png(tmp_path / "outside" / "images" / "x.png")
    (tmp_path / "outside" / "labels").mkdir(parents=True)
    root = tmp_path / "yolo"
    _png(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(DataError, match="leads outside"):
        read_dataset("yolo", root, split="train")


def test_yolo_roboflow_split_folders_are_read_inside_the_dataset(tmp_path):
    """Roboflow's YOLO export: ``train: ../train/images`` beside ``data.yaml`` names ``root/train/images``
    (Ultralytics' ``check_det_dataset`` drops the ``../`` when that path does not exist): read inside the
    dataset. A ``../`` folder that is not there inside stays refused (the cases above)."""
    root = tmp_path / "yolo"
    for split, name in (("train", "a"), ("valid", "b")):
        _png(root / split / "images" / f"{name}.png")
        (root / split / "labels").mkdir()
        (root / split / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    config = {"train": "../train/images", "val": "../valid/images", "nc": 1, "names": ["a"]}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    for split, name in (("train", "a.png"), ("val", "b.png")):
        dataset = read_dataset("yolo", root, split=split)
        assert [im.path for im in dataset.images] == [
            root / ("valid" if split == "val" else split) / "images" / name
        ]
        assert dataset.num_instances == 1 and not dataset.problems


def test_yolo_data_yaml_path_to_its_own_folder_is_fine(tmp_path):
    root = tmp_path / "yolo"
    _png(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images", "names": ["a"]}))
    assert len(read_dataset("yolo", root, split="train").images) == 1


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
@pytest.mark.parametrize("name", ["a\x00b.png", "../escape.png", "/tmp/abs.png"])
def test_writers_refuse_file_names_outside_their_folder(tmp_path, fmt, name):
    """Item 14: a NUL byte in a ``file_name`` ended in a ValueError traceback in the YOLO writer."""
    image = _png(tmp_path / "a.png")
    dataset = AnnotationSet([ImageRecord(1, image, 16, 16, file_name=name)], ["a"])
    with pytest.raises(DataError):
        write_dataset(fmt, dataset, tmp_path / "out")
    assert not (tmp_path / "escape.png").exists()
