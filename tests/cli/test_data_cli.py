"""``segdet data`` end to end: real datasets read with the right counts, planted errors all reported."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from segdet.cli.main import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "data", "metrics"):
        assert command in out


def _planted_coco(tmp_path):
    """A COCO dataset with one of each problem the checker must find, beside good records."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("good.png", "small.png"):
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(images / name)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # a truncated PNG
    gt = {
        "images": [
            {"id": 1, "file_name": "good.png", "width": 64, "height": 64},
            {"id": 2, "file_name": "missing.png", "width": 64, "height": 64},
            {"id": 3, "file_name": "small.png", "width": 80, "height": 80},  # size differs from the file
            {"id": 4, "file_name": "broken.png", "width": 64, "height": 64},
            {"id": 1, "file_name": "good.png", "width": 64, "height": 64},  # duplicate image id
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
            {
                "id": 12,
                "image_id": 1,
                "category_id": 1,
                "bbox": [100, 100, 10, 10],
                "area": 100,
                "iscrowd": 0,
            },
            {"id": 13, "image_id": 1, "category_id": 2, "bbox": [4, 4, -3, 5], "area": 1, "iscrowd": 0},
            {
                "id": 14,
                "image_id": 1,
                "category_id": 2,
                "bbox": [float("nan"), 4, 3, 5],
                "area": 1,
                "iscrowd": 0,
            },
            {
                "id": 15,
                "image_id": 1,
                "category_id": 2,
                "bbox": [4, 4, 5, 5],
                "area": 25,
                "iscrowd": 1,
                "segmentation": {"size": [32, 32], "counts": [0, 1024]},
            },  # RLE of another size
            {"id": 10, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 16, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
        ],
    }
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances.json"
    path.write_text(json.dumps(gt))
    return path


def test_check_lists_every_planted_error(tmp_path, capsys):
    path = _planted_coco(tmp_path)
    code, out, err = run_cli(capsys, "data", "check", str(path), "--format", "coco")
    assert code == 1
    assert "Traceback" not in out + err
    expected = {
        "missing image": r"missing\.png.*not found",
        "unreadable image": r"broken\.png.*cannot read",
        "size mismatch": r"small\.png.*64x64.*80x80",
        "duplicate image id": r"image.*duplicate.*id 1",
        "unknown category": r"annotation id=11.*class",
        "box outside": r"annotation id=12.*outside",
        "non-positive box": r"annotation id=13.*non-positive",
        "NaN box": r"annotation id=14.*non-finite",
        "mask size": r"annotation id=15.*(size|32)",
        "duplicate annotation id": r"duplicate annotation id 10",
        "unknown image": r"annotation id=16.*image",
    }
    for what, pattern in expected.items():
        assert re.search(pattern, out, flags=re.IGNORECASE), f"{what} not reported:\n{out}"
    assert re.search(r"\d+ errors", out)


def test_check_good_dataset_exits_zero(tmp_path, capsys):
    from segdet.data import shapes
    from segdet.data.formats import write_dataset

    path = write_dataset("coco", shapes.generate(tmp_path / "s", 3, seed=1, size=64), tmp_path / "coco")
    code, out, _ = run_cli(capsys, "data", "check", str(path))
    assert code == 0, out
    assert "0 errors" in out


def test_unreadable_json_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    code, _, err = run_cli(capsys, "data", "check", str(bad), "--format", "coco")
    assert code == 1
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "bad.json" in err


def _summary(out: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+) images, (\d+) objects, (\d+) classes", out)
    assert m, out
    return tuple(int(g) for g in m.groups())


def test_real_coco128_coco(capsys, shared_dataset):
    path = shared_dataset("coco128") / "annotations" / "instances.json"
    code, out, _ = run_cli(capsys, "data", "check", str(path), "--format", "coco", "--quick")
    assert code == 0, out
    assert _summary(out) == (128, 939, 80)


def test_real_coco128_yolo(capsys, shared_dataset):
    code, out, _ = run_cli(
        capsys, "data", "check", str(shared_dataset("coco128")), "--format", "yolo", "--quick"
    )
    assert code == 0, out
    # The YOLO labels leave out COCO's 10 crowd objects; 2 label files have no image (warned), 2 images
    # have no label file (background images).
    assert _summary(out) == (128, 929, 80)
    assert "0 errors, 2 warnings" in out


def test_real_pennfudan(capsys, shared_dataset):
    code, out, _ = run_cli(
        capsys, "data", "check", str(shared_dataset("pennfudan")), "--format", "pennfudan", "--quick"
    )
    assert code == 0, out
    images, objects, classes = _summary(out)
    assert (images, classes) == (120, 1) and objects > 120


def test_real_camvid(capsys, shared_dataset):
    code, out, _ = run_cli(
        capsys, "data", "check", str(shared_dataset("camvid")), "--format", "masks", "--quick"
    )
    assert code == 0, out
    assert _summary(out)[0] == 367
    assert "semantic masks: 11 classes (values 0..10), ignore value 11" in out


def test_stats_and_show(tmp_path, capsys):
    from segdet.data import shapes
    from segdet.data.formats import write_dataset

    ds = shapes.generate(tmp_path / "s", 4, seed=2, size=64)
    path = write_dataset("voc", ds, tmp_path / "voc")
    code, out, _ = run_cli(capsys, "data", "stats", str(path))
    assert code == 0
    assert f"objects: {ds.num_instances}" in out
    code, out, _ = run_cli(capsys, "data", "show", str(path), "--out", str(tmp_path / "drawn"))
    assert code == 0
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 4


def test_convert_between_formats(tmp_path, capsys):
    from segdet.data import shapes
    from segdet.data.formats import read_dataset, write_dataset

    ds = shapes.generate(tmp_path / "s", 3, seed=5, size=64)
    src = write_dataset("coco", ds, tmp_path / "coco")
    code, out, _ = run_cli(
        capsys, "data", "convert", str(src), "--from", "coco", "--to", "yolo", "--out", str(tmp_path / "yolo")
    )
    assert code == 0, out
    assert read_dataset("yolo", tmp_path / "yolo").num_instances == ds.num_instances


def test_demo_data_part(tmp_path, capsys):
    code, out, _ = run_cli(
        capsys,
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--num-images",
        "6",
        "--size",
        "64",
        "--draw",
        "2",
        "--epochs",
        "0",
    )
    assert code == 0, out
    assert "0 errors" in out
    assert len(list((tmp_path / "demo" / "annotations").glob("*.png"))) == 2


def _yolo_with_stray_label(tmp_path):
    """A YOLO dataset of one image with one box, and a label file without an image (a warning)."""
    import yaml

    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "labels" / "stray.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images", "names": ["a"]}))
    return root


def test_check_missing_path_says_so(tmp_path, capsys):
    """Item 5: a path that does not exist is named as such (was: cannot tell the format)."""
    missing = tmp_path / "nope"
    code, _, err = run_cli(capsys, "data", "check", str(missing))
    assert code == 1
    assert err.strip() == f"segdet: error: {missing}: no such file or folder"
    code, _, err = run_cli(capsys, "data", "stats", str(missing), "--format", "voc")
    assert code == 1 and err.strip() == f"segdet: error: {missing}: no such file or folder"


@pytest.mark.parametrize("name", ["data.yaml", "classes.txt"])
def test_yolo_config_file_is_detected(tmp_path, capsys, name):
    """Item 6: YOLO users pass data.yaml (or the classes.txt of the Darknet form): read as YOLO."""
    root = _yolo_with_stray_label(tmp_path)
    if name == "classes.txt":
        (root / "data.yaml").unlink()
        (root / "classes.txt").write_text("a\n")
    code, out, err = run_cli(capsys, "data", "check", str(root / name), "--quick")
    assert code == 0, out + err
    assert out.splitlines()[-2].startswith(f"yolo dataset {root / name}: 1 images, 1 objects, 1 classes")


def test_classes_txt_of_a_mask_folder_asks_for_the_folder(tmp_path, capsys):
    root = tmp_path / "masks"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("a\n")
    code, _, err = run_cli(capsys, "data", "check", str(root / "classes.txt"))
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and str(root) in err and "folder" in err


def test_stats_says_reading_problems_are_warnings(tmp_path, capsys):
    """Item 7: stats said '(1 problems while reading ...)': it now says how many are errors and warnings,
    as check does, and that `segdet data check` lists them."""
    root = _yolo_with_stray_label(tmp_path)
    code, out, _ = run_cli(capsys, "data", "stats", str(root))
    assert code == 0
    assert "problems while reading" not in out
    assert "reading found 0 errors, 1 warnings: `segdet data check` lists them" in out
