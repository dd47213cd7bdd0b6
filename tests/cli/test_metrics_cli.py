"""Tests of ``segdet metrics coco|voc|seg``: exit codes, printed numbers against the library functions
(segdet.metrics.*, exact to the 4 printed decimals), the ``--out`` JSON keys, the ``--plots`` files,
and one-line errors (no traceback) on malformed input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from segdet.cli.main import main
from segdet.data.structures import AnnotationSet, ImageRecord, Instance
from segdet.metrics.confusion import ConfusionMatrix

COCO_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}


def assert_one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("segdet: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ----------------------------------------------------------------------------------------------- seg


def write_labels(folder, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        Image.fromarray(a.astype(np.uint8), mode="L").save(folder / f"{stem}.png")


def seg_case(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    gts, preds = {}, {}
    for k, shape in enumerate([(32, 40), (24, 24), (16, 48)]):
        t = rng.integers(0, 3, shape)  # class 3 of 4 never appears: NaN row
        t[rng.random(shape) < 0.05] = 255
        p = np.where(rng.random(shape) < 0.7, np.where(t == 255, 0, t), rng.integers(0, 3, shape))
        gts[f"im{k}"], preds[f"im{k}"] = t, p
    write_labels(tmp_path / "gt", gts)
    write_labels(tmp_path / "pred", preds)
    cm = ConfusionMatrix(4, ignore_index=255)
    for stem in gts:
        cm.update(preds[stem], gts[stem])
    return cm


def test_seg_takes_a_classes_txt_that_names_the_ignore_value(tmp_path, capsys) -> None:
    """CamVid's own classes.txt: 11 classes, then ``Unlabelled`` for value 11, its ignore value. With
    ``--num-classes 11 --ignore 11`` it was refused as "12 class names for --num-classes 11"; here 4
    classes and ``void`` for value 4. Another extra line (not an ignore name, or not at the ignore
    value) is still refused."""
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 4]])  # 4: the ignore value
    write_labels(tmp_path / "gt", {"a": labels})
    write_labels(tmp_path / "pred", {"a": np.where(labels == 4, 0, labels)})
    args = ["metrics", "seg", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]
    names = tmp_path / "classes.txt"
    names.write_text("bg\ncat\ndog\nbird\nvoid\n")
    assert main([*args, "--num-classes", "4", "--ignore", "4", "--class-names", str(names)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^bird\s", out, re.M) and not re.search(r"^void\s", out, re.M), out
    names.write_text("bg\ncat\ndog\nbird\nhorse\n")  # the extra line is not an ignore name
    assert main([*args, "--num-classes", "4", "--ignore", "4", "--class-names", str(names)]) == 1
    assert "5 class names for --num-classes 4" in capsys.readouterr().err


def test_seg_prints_library_numbers_and_writes_json(tmp_path, capsys) -> None:
    """Printed per-class IoU/Dice/Acc and means equal ConfusionMatrix.compute() on the same arrays."""
    cm = seg_case(tmp_path)
    (tmp_path / "names.txt").write_text("bg\ncat\ndog\nbird\n")
    code = main(
        [
            "metrics",
            "seg",
            "--gt",
            str(tmp_path / "gt"),
            "--pred",
            str(tmp_path / "pred"),
            "--num-classes",
            "4",
            "--class-names",
            str(tmp_path / "names.txt"),
            "--out",
            str(tmp_path / "seg.json"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    m = cm.compute()
    for i, name in enumerate(["bg", "cat", "dog"]):
        row = re.search(rf"^{name}\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
        assert row, out
        assert [float(v) for v in row.groups()] == pytest.approx(
            [m.iou[i], m.dice[i], m.class_accuracy[i]], abs=5e-5
        )
    assert re.search(r"^bird\s+-\s+-\s+-$", out, re.M), out
    mean = re.search(r"^mean\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
    assert [float(v) for v in mean.groups()] == pytest.approx(
        [m.mean_iou, m.mean_dice, m.mean_class_accuracy], abs=5e-5
    )
    assert float(re.search(r"pixel accuracy: (\S+)", out)[1]) == pytest.approx(m.pixel_accuracy, abs=5e-5)
    assert float(re.search(r"frequency-weighted IoU: (\S+)", out)[1]) == pytest.approx(m.fw_iou, abs=5e-5)

    report = json.loads((tmp_path / "seg.json").read_text())
    assert report["mean_iou"] == pytest.approx(m.mean_iou, abs=1e-12)
    assert report["per_class"]["bird"]["iou"] is None
    assert report["confusion_matrix"] == cm.matrix.tolist()
    with Image.open(tmp_path / "plots" / "confusion_matrix.png") as im:
        assert im.format == "PNG"


def run_seg(tmp_path) -> int:
    """``segdet metrics seg`` on the gt/ and pred/ folders of ``seg_case`` (4 classes)."""
    return main(
        [
            "metrics",
            "seg",
            "--gt",
            str(tmp_path / "gt"),
            "--pred",
            str(tmp_path / "pred"),
            "--num-classes",
            "4",
        ]
    )


def test_seg_missing_pair_names_the_file(tmp_path, capsys) -> None:
    seg_case(tmp_path)
    (tmp_path / "pred" / "im1.png").unlink()
    code = run_seg(tmp_path)
    assert code == 1
    assert_one_line_error(capsys, "im1.png", "no prediction")


def test_seg_size_mismatch_names_both_files(tmp_path, capsys) -> None:
    seg_case(tmp_path)
    write_labels(tmp_path / "pred", {"im0": np.zeros((10, 10))})
    code = run_seg(tmp_path)
    assert code == 1
    assert_one_line_error(capsys, str(tmp_path / "gt" / "im0.png"), str(tmp_path / "pred" / "im0.png"))


def test_seg_out_of_range_label_names_value_and_file(tmp_path, capsys) -> None:
    seg_case(tmp_path)
    write_labels(tmp_path / "gt", {"im2": np.full((16, 48), 9)})
    code = run_seg(tmp_path)
    assert code == 1
    assert_one_line_error(capsys, "im2.png", "value 9")


def test_seg_malformed_png(tmp_path, capsys) -> None:
    seg_case(tmp_path)
    (tmp_path / "pred" / "im0.png").write_bytes(b"not a png")
    code = run_seg(tmp_path)
    assert code == 1
    assert_one_line_error(capsys, "im0.png")


# ----------------------------------------------------------------------------------------------- voc


def detection_gt(tmp_path) -> AnnotationSet:
    """Two tiny images with boxes (one difficult), real image files so readers can size them."""
    images = []
    objects = {
        "a": [Instance(box=(4, 4, 30, 30), label=0), Instance(box=(40, 10, 60, 50), label=1)],
        "b": [
            Instance(box=(10, 10, 50, 40), label=0),
            Instance(box=(0, 40, 20, 60), label=0, difficult=True),
        ],
    }
    for k, (stem, inst) in enumerate(objects.items(), start=1):
        path = tmp_path / "src" / f"{stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (k * 40, 90, 120)).save(path)
        images.append(ImageRecord(id=k, path=path, width=64, height=64, instances=inst))
    return AnnotationSet(images=images, classes=["cat", "dog"])


def detections_for(gt: AnnotationSet, name_images_by_stem: bool) -> list[dict]:
    label_of_file = {im.file_name.rsplit(".", 1)[0]: im for im in gt.images}
    a, b = label_of_file["a"], label_of_file["b"]
    cat, dog = gt.category_ids[gt.classes.index("cat")], gt.category_ids[gt.classes.index("dog")]

    def ref(im):
        return im.file_name.rsplit(".", 1)[0] if name_images_by_stem else im.id

    return [
        {"image_id": ref(a), "category_id": cat, "bbox": [5, 5, 25, 25], "score": 0.9},
        {"image_id": ref(b), "category_id": cat, "bbox": [0, 0, 10, 10], "score": 0.8},
        {"image_id": ref(b), "category_id": cat, "bbox": [0, 40, 20, 20], "score": 0.7},
        {"image_id": ref(b), "category_id": cat, "bbox": [12, 10, 38, 30], "score": 0.6},
        {"image_id": ref(a), "category_id": dog, "bbox": [40, 12, 20, 36], "score": 0.5},
    ]


@pytest.mark.parametrize("fmt", ["voc", "coco"])
@pytest.mark.parametrize("metric", ["07", "10"])
def test_voc_prints_library_numbers(tmp_path, capsys, fmt: str, metric: str) -> None:
    """Ground truth written with the format's writer and read back: printed per-class AP and mAP equal
    evaluate_voc on the same files (4 decimals); --out JSON and --plots PNG are written."""
    from segdet.data import formats

    root = formats.write_dataset(fmt, detection_gt(tmp_path), tmp_path / fmt)
    gt = formats.read_dataset(fmt, root)
    from segdet.metrics.voc_eval import evaluate_voc

    dets = detections_for(gt, name_images_by_stem=fmt == "voc")
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    code = main(
        [
            "metrics",
            "voc",
            "--gt",
            str(root),
            "--format",
            fmt,
            "--dt",
            str(tmp_path / "dt.json"),
            "--metric",
            metric,
            "--out",
            str(tmp_path / "voc.json"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    expected = evaluate_voc(gt, dets, use_07_metric=metric == "07")
    for name in ("cat", "dog"):
        row = re.search(rf"^{name}\s+(\S+)\s+(\d+)\s+(\d+)$", out, re.M)
        assert float(row[1]) == pytest.approx(expected.ap[name], abs=5e-5)
        assert int(row[2]) == expected.npos[name]
    assert float(re.search(r"^mAP .*: (\S+)$", out, re.M)[1]) == pytest.approx(expected.map, abs=5e-5)
    # cat: npos 2, ranked TP FP (difficult dropped) TP -> 10: 1*.5 + 2/3*.5; dog: exact -> 1
    assert expected.ap["dog"] == pytest.approx(1.0)
    if metric == "10":
        assert expected.ap["cat"] == pytest.approx(0.5 + 1 / 3)
    report = json.loads((tmp_path / "voc.json").read_text())
    assert report["mAP"] == pytest.approx(expected.map) and set(report["per_class"]) == {"cat", "dog"}
    assert (tmp_path / "plots" / "pr_curves.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('[{"image_id": 1, ', "not valid JSON"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"image_id": 1, "category_id": 77, "bbox": [0, 0, 1, 1], "score": 1}]', "category_id 77"),
    ],
)
def test_voc_malformed_detections_one_line(tmp_path, capsys, content: str, needle: str) -> None:
    from segdet.data import formats

    root = formats.write_dataset("coco", detection_gt(tmp_path), tmp_path / "coco")
    (tmp_path / "dt.json").write_text(content)
    code = main(["metrics", "voc", "--gt", str(root), "--format", "coco", "--dt", str(tmp_path / "dt.json")])
    assert code == 1
    assert_one_line_error(capsys, needle, "dt.json")


# ---------------------------------------------------------------------------------------------- coco


def write_coco_pair(tmp_path) -> tuple:
    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for i in range(1, 4):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100})
        for _ in range(3):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(8, 40, 2)
            cat = int(rng.integers(1, 3))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
            j = rng.normal(0, 2, 4)
            bx, by, bw, bh = x + j[0], y + j[1], w + j[2], h + j[3]
            dets.append(
                {
                    "image_id": i,
                    "category_id": cat,
                    "bbox": [bx, by, bw, bh],
                    "score": float(rng.random()),
                    "segmentation": [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]],
                }
            )
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    return tmp_path / "gt.json", tmp_path / "dt.json"


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_prints_summary_and_writes_keys(tmp_path, capsys, iou_type: str) -> None:
    """The 12 summary lines are printed and --out holds the 12 keys with evaluate_coco's numbers."""
    from segdet.metrics import coco_eval

    gt_path, dt_path = write_coco_pair(tmp_path)
    code = main(
        [
            "metrics",
            "coco",
            "--gt",
            str(gt_path),
            "--dt",
            str(dt_path),
            "--iou-type",
            iou_type,
            "--out",
            str(tmp_path / "coco.json"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert len(re.findall(r"Average (Precision|Recall) +\(A[PR]\) @\[ IoU=", out)) == 12, out
    report = json.loads((tmp_path / "coco.json").read_text())
    assert COCO_KEYS <= set(report)
    expected = coco_eval.evaluate_coco(gt_path, dt_path, iou_type)
    assert report["AP"] == pytest.approx(float(expected.stats[0]), abs=1e-12)
    assert report["AR100"] == pytest.approx(float(expected.stats[8]), abs=1e-12)
    assert (tmp_path / "plots" / "pr_curves_iou50.png").is_file()


def test_coco_malformed_file_one_line(tmp_path, capsys) -> None:
    gt_path, dt_path = write_coco_pair(tmp_path)
    dt_path.write_text("[{]")
    code = main(["metrics", "coco", "--gt", str(gt_path), "--dt", str(dt_path), "--iou-type", "bbox"])
    assert code == 1
    assert_one_line_error(capsys, "dt.json")


def test_coco_missing_file_one_line(tmp_path, capsys) -> None:
    code = main(["metrics", "coco", "--gt", str(tmp_path / "nope.json"), "--dt", str(tmp_path / "dt.json")])
    assert code == 1
    assert_one_line_error(capsys, "nope.json")


# ------------------------------------------------------------------- user test of `segdet metrics`


def predict_style(dets: list[dict]) -> list[dict]:
    """What ``segdet predict`` without --coco-gt writes: images numbered 0, 1, ... and each detection's
    base file name."""
    return [{**d, "image_id": d["image_id"] - 1, "file_name": f"{d['image_id']}.jpg"} for d in dets]


@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_ids_that_disagree_with_file_names_are_one_error(tmp_path, capsys, kind: str) -> None:
    """Ids shifted against the ground truth but file names right: one error line naming the record, both
    names and the fix, instead of a silent AP of 0."""
    gt_path, dt_path = write_coco_pair(tmp_path)
    dets = [d for d in json.loads(dt_path.read_text()) if d["image_id"] >= 2]  # 0 would be unknown
    dt_path.write_text(json.dumps(predict_style(dets)))
    extra = ["--format", "coco"] if kind == "voc" else []
    code = main(["metrics", kind, "--gt", str(gt_path), "--dt", str(dt_path), *extra])
    assert code == 1
    assert_one_line_error(
        capsys,
        "dt.json: results[0]",
        "'2.jpg'",
        "'1.jpg'",
        "predict with --coco-gt GT.json numbers images as the ground truth does",
    )


@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_unknown_image_id_with_known_file_name_gets_the_hint(tmp_path, capsys, kind: str) -> None:
    gt_path, dt_path = write_coco_pair(tmp_path)
    dets = json.loads(dt_path.read_text())
    dt_path.write_text(json.dumps([{**dets[0], "image_id": 0, "file_name": "1.jpg"}]))
    extra = ["--format", "coco"] if kind == "voc" else []
    code = main(["metrics", kind, "--gt", str(gt_path), "--dt", str(dt_path), *extra])
    assert code == 1
    assert_one_line_error(
        capsys, "image_id 0 is not an image", "'1.jpg' is ground-truth image 1", "--coco-gt"
    )


def test_consistent_file_names_change_nothing(tmp_path, capsys) -> None:
    """file_name (base name, or the path as the ground truth stores it) is a check only."""
    from segdet.metrics import coco_eval

    gt_path, dt_path = write_coco_pair(tmp_path)
    gt = json.loads(gt_path.read_text())
    for im in gt["images"]:
        im["file_name"] = f"val/{im['file_name']}"
    gt_path.write_text(json.dumps(gt))
    dets = json.loads(dt_path.read_text())
    named = [
        {**d, "file_name": f"{d['image_id']}.jpg" if k % 2 else f"val/{d['image_id']}.jpg"}
        for k, d in enumerate(dets)
    ]
    expected = coco_eval.evaluate_coco(gt_path, dets, "bbox")
    got = coco_eval.evaluate_coco(gt_path, named, "bbox")
    np.testing.assert_array_equal(got.stats, expected.stats)
    np.testing.assert_array_equal(got.precision, expected.precision)
    dt_path.write_text(json.dumps(named))
    assert main(["metrics", "voc", "--gt", str(gt_path), "--format", "coco", "--dt", str(dt_path)]) == 0
    assert "note" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"score": "0.109"}, "score must be a finite number, got '0.109'"),
        ({"bbox": [0, 0, -3, 4]}, "negative width or height"),
        ({"bbox": [0, 0, 3], "score": 0.31}, "bbox must be 4 finite numbers [x, y, w, h], got [0, 0, 3]"),
        ({"bbox": None}, "bbox must be 4 finite numbers"),
        ({"image_id": "164"}, "image_id must be an integer"),
    ],
)
@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_voc_checks_records_as_coco_does(tmp_path, capsys, kind: str, bad: dict, needle: str) -> None:
    gt_path, dt_path = write_coco_pair(tmp_path)
    dets = json.loads(dt_path.read_text())
    dets[1] = {**dets[1], **bad}
    dets[1].pop("segmentation")
    dt_path.write_text(json.dumps(dets))
    extra = ["--format", "coco"] if kind == "voc" else []
    code = main(["metrics", kind, "--gt", str(gt_path), "--dt", str(dt_path), *extra])
    assert code == 1
    err = assert_one_line_error(capsys, "dt.json: results[1]: ", needle)
    assert "are not numbers" not in err


@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_partial_and_empty_detections_are_noted(tmp_path, capsys, kind: str) -> None:
    gt_path, dt_path = write_coco_pair(tmp_path)
    dets = json.loads(dt_path.read_text())
    extra = ["--format", "coco"] if kind == "voc" else []
    for subset, note in [
        (dets, None),
        ([d for d in dets if d["image_id"] == 2], "note: detections for 1 of 3 ground-truth images"),
        ([], "note: 0 detections"),
    ]:
        dt_path.write_text(json.dumps(subset))
        code = main(["metrics", kind, "--gt", str(gt_path), "--dt", str(dt_path), *extra])
        out = capsys.readouterr().out
        assert code == 0
        if note is None:
            assert "note" not in out
        else:
            assert out.count("note") == 1 and note in out, out


def test_coco_gt_folder_says_a_json_file_is_expected(tmp_path, capsys) -> None:
    _gt_path, dt_path = write_coco_pair(tmp_path)
    (tmp_path / "folder").mkdir()
    code = main(["metrics", "coco", "--gt", str(tmp_path / "folder"), "--dt", str(dt_path)])
    assert code == 1
    assert_one_line_error(capsys, "folder: is a folder; a COCO instances JSON file is expected")


def test_seg_pairs_a_prediction_by_stem(tmp_path, capsys) -> None:
    """X.png, else the one prediction X.* (a lossless single-channel TIFF here); numbers as with PNGs."""
    seg_case(tmp_path)
    args = [
        "metrics",
        "seg",
        "--gt",
        str(tmp_path / "gt"),
        "--pred",
        str(tmp_path / "pred"),
        "--num-classes",
        "4",
    ]
    assert main(args) == 0
    expected = capsys.readouterr().out
    Image.open(tmp_path / "pred" / "im1.png").save(tmp_path / "pred" / "im1.tif")
    (tmp_path / "pred" / "im1.png").unlink()
    assert main(args) == 0
    assert capsys.readouterr().out == expected
    Image.open(tmp_path / "pred" / "im1.tif").save(tmp_path / "pred" / "im1.bmp")
    assert main(args) == 1
    assert_one_line_error(capsys, "im1.png", "several predictions", "im1.bmp, im1.tif")


def test_metric_07_help_names_the_thresholds(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["metrics", "voc", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exact recall thresholds k/10" in out and "np.arange(0, 1.1, 0.1)" in out


@pytest.mark.parametrize(("count", "why"), [("0", False), ("5000", True)])
def test_seg_class_count_out_of_range(tmp_path, capsys, count, why) -> None:
    """--num-classes outside [1, 4096] is one line; the confusion matrix's size is named only where it is
    the reason (a large count), not for 0."""
    seg_case(tmp_path)
    args = ["metrics", "seg", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]
    assert main([*args, "--num-classes", count]) == 1
    err = capsys.readouterr().err
    assert f"--num-classes must be in [1, 4096], got {count}" in err
    assert ("GiB" in err) == why
