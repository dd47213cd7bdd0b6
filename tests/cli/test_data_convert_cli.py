"""``segdet data convert``: what it prints is what it wrote; what a format cannot hold is said in one line
without ``-v``, and a conversion that would lose every label is refused. Small generated datasets; the
real-data checks at the end skip without ../shared/data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.cli.main import main
from segdet.data.formats import read_dataset


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _png(path: Path, size: tuple[int, int] = (32, 32), value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _square(x1: float, y1: float, x2: float, y2: float) -> list[list[float]]:
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _coco_with_crowd_and_hidden(tmp_path: Path) -> Path:
    """4 objects: in a.png a cat entirely covered by the dog written after it and a crowd region; in
    b.png one cat. Source counts: 4 objects, 1 crowd, 1 with no visible pixel once painted."""
    root = tmp_path / "coco"
    _png(root / "images" / "a.png")
    _png(root / "images" / "b.png")

    def ann(aid, image_id, cid, box, crowd=0):
        x1, y1, x2, y2 = box
        seg = _square(*box)
        if crowd:
            seg = {"size": [32, 32], "counts": [32 * 24, 32 * 8]}  # the last 8 columns
        return {
            "id": aid,
            "image_id": image_id,
            "category_id": cid,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "iscrowd": crowd,
            "segmentation": seg,
        }

    gt = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 32, "height": 32},
            {"id": 2, "file_name": "b.png", "width": 32, "height": 32},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            ann(1, 1, 1, (6, 6, 12, 12)),  # hidden behind object 2
            ann(2, 1, 2, (2, 2, 20, 20)),
            ann(3, 1, 1, (24, 0, 32, 32), crowd=1),
            ann(4, 2, 1, (4, 4, 16, 16)),
        ],
    }
    (root / "annotations").mkdir()
    path = root / "annotations" / "instances.json"
    path.write_text(json.dumps(gt))
    return path


def _wrote(out: str) -> int:
    m = re.search(r"wrote \d+ images \([^)]*\), (\d+) objects as", out)
    assert m, out
    return int(m.group(1))


@pytest.mark.parametrize(
    ("fmt", "written", "left_out"),
    [
        ("coco", 4, None),
        ("yolo", 3, r"left out 1 of 4 objects: 1 crowd \(YOLO has no crowd regions\)"),
        ("voc", 3, r"left out 1 of 4 objects: 1 crowd \(VOC has no crowd regions\)"),
        (
            "pennfudan",
            2,
            r"left out 2 of 4 objects: 1 crowd \(Penn-Fudan has no crowd regions\), "
            r"1 with no visible pixel \(covered by objects after it\)",
        ),
    ],
)
def test_convert_prints_what_it_wrote_and_what_it_left_out(tmp_path, capsys, fmt, written, left_out):
    """The printed object count is the written dataset's (it was the source's), and one line without -v
    says how many objects were left out and why (said only in -v's log before)."""
    src = _coco_with_crowd_and_hidden(tmp_path)
    out = tmp_path / f"to-{fmt}"
    code, stdout, err = run_cli(capsys, "data", "convert", str(src), "--to", fmt, "--out", str(out))
    assert code == 0, stdout + err
    assert _wrote(stdout) == written
    back = read_dataset(fmt, out / "annotations" / "instances.json" if fmt == "coco" else out)
    assert back.num_instances == written
    lines = [line for line in stdout.splitlines() if line.startswith("left out")]
    if left_out is None:
        assert not lines, stdout
    else:
        assert len(lines) == 1 and re.fullmatch(left_out, lines[0]), stdout


def test_convert_to_voc_keeps_hidden_objects_as_boxes_and_passes_check(tmp_path, capsys):
    """Item 2: an object covered by later ones keeps its XML entry (its box) with no SegmentationObject
    value, marked <segmented>0</segmented>; the converted dataset passes `data check`, and the convert
    says which objects lost their mask."""
    src = _coco_with_crowd_and_hidden(tmp_path)
    out = tmp_path / "voc"
    code, stdout, _ = run_cli(capsys, "data", "convert", str(src), "--to", "voc", "--out", str(out))
    assert code == 0
    assert re.search(
        r"^1 objects? written without (its|their) mask: 1 with no visible pixel", stdout, re.M
    ), stdout
    code, stdout, _ = run_cli(capsys, "data", "check", str(out))
    assert code == 0, stdout
    assert "0 errors, 0 warnings" in stdout


def _mask_folder(tmp_path: Path) -> Path:
    """A CamVid-like mask folder: 3 classes without background, value 3 ``Unlabelled`` (ignored)."""
    root = tmp_path / "masks"
    for i in range(2):
        _png(root / "images" / f"x{i}.png", (16, 12))
        labels = np.zeros((12, 16), np.uint8)
        labels[:, 5:] = 1
        labels[6:, 10:] = 2
        labels[0, :] = 3
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(root / "labels" / f"x{i}.png")
    (root / "classes.txt").write_text("Sky\nRoad\nCar\nUnlabelled\n")
    return root


def test_semantic_only_to_voc_round_trips_the_classes(tmp_path, capsys):
    """Item 1: semantic classes without a background come back under the same names and values (they
    read as 'background' + the names shifted by one); the ignore value is VOC's 255."""
    src = _mask_folder(tmp_path)
    out = tmp_path / "voc"
    code, stdout, _ = run_cli(capsys, "data", "convert", str(src), "--to", "voc", "--out", str(out))
    assert code == 0, stdout
    code, stdout, _ = run_cli(capsys, "data", "stats", str(out))
    assert code == 0
    assert "semantic masks: 3 classes (values 0..2), ignore value 255" in stdout
    assert "background" not in stdout
    back = read_dataset("voc", out)
    assert back.semantic_classes == ["Sky", "Road", "Car"] and back.classes == ["Sky", "Road", "Car"]
    code, stdout, _ = run_cli(capsys, "data", "check", str(out))
    assert code == 0 and "0 errors, 0 warnings" in stdout


@pytest.mark.parametrize("fmt", ["coco", "yolo", "pennfudan"])
def test_semantic_only_to_an_object_format_is_refused(tmp_path, capsys, fmt):
    """Item 4: every label would be lost (it wrote '0 objects', exit 0); refused in one line naming the
    formats that hold semantic masks, before the output folder is made."""
    src = _mask_folder(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "data", "convert", str(src), "--to", fmt, "--out", str(out))
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "semantic masks" in err and "voc, masks" in err and str(src) in err
    assert "wrote" not in stdout
    assert not out.exists()


def test_objects_only_to_masks_is_refused(tmp_path, capsys):
    src = _coco_with_crowd_and_hidden(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "data", "convert", str(src), "--to", "masks", "--out", str(out))
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "semantic masks only" in err and "coco, voc, yolo, pennfudan" in err
    assert not out.exists()


def test_objects_and_semantic_to_coco_warns_of_the_masks_left_out(tmp_path, capsys):
    """Item 4: with objects as well, the conversion goes on and one line says the semantic masks are
    left out; to masks, one line says the objects are."""
    from segdet.data import shapes
    from segdet.data.formats import write_dataset

    ds = shapes.generate(tmp_path / "s", 3, seed=4, size=48)
    src = write_dataset("voc", ds, tmp_path / "voc")
    code, stdout, _ = run_cli(
        capsys, "data", "convert", str(src), "--to", "coco", "--out", str(tmp_path / "c")
    )
    assert code == 0
    assert _wrote(stdout) == ds.num_instances
    notes = [line for line in stdout.splitlines() if "semantic masks" in line]
    assert len(notes) == 1 and "3 images" in notes[0] and "voc, masks" in notes[0], stdout
    code, stdout, _ = run_cli(
        capsys, "data", "convert", str(src), "--to", "masks", "--out", str(tmp_path / "m")
    )
    assert code == 0
    assert _wrote(stdout) == 0
    assert f"left out {ds.num_instances} of {ds.num_instances} objects" in stdout


def test_real_camvid_to_voc_round_trip(tmp_path, capsys, shared_dataset):
    src = shared_dataset("camvid")
    out = tmp_path / "cv2voc"
    code, _, _ = run_cli(capsys, "data", "convert", str(src), "--to", "voc", "--out", str(out), "--link")
    assert code == 0
    code, stdout, _ = run_cli(capsys, "data", "stats", str(out))
    assert "semantic masks: 11 classes (values 0..10), ignore value 255" in stdout
    assert "background" not in stdout and "Bicyclist" in stdout


def test_real_coco128_to_voc_passes_check(tmp_path, capsys, shared_dataset):
    src = shared_dataset("coco128") / "annotations" / "instances.json"
    out = tmp_path / "co2voc"
    code, stdout, _ = run_cli(capsys, "data", "convert", str(src), "--to", "voc", "--out", str(out), "--link")
    assert code == 0
    assert _wrote(stdout) == 929 and "left out 10 of 939 objects: 10 crowd" in stdout
    code, stdout, _ = run_cli(capsys, "data", "check", str(out), "--quick")
    assert code == 0, stdout
    assert "0 errors" in stdout
