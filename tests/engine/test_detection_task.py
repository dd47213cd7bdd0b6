"""The detection / instance task: COCO results conversion, metrics, and ``segdet train``/``eval``/``predict``
on a tiny instance segmentation run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils

from segdet.cli.main import main
from segdet.data import shapes
from segdet.data.formats.coco_write import to_coco_dict
from segdet.engine.detection import coco_metrics, detections_to_coco
from segdet.metrics.coco_eval import evaluate_coco


def test_detections_to_coco_matches_pycocotools():
    """Reference: hand-computed xywh boxes and category ids, and pycocotools' ``encode`` of the masks
    thresholded at 0.5 (decoded back: exact)."""
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 1, 20, 30, generator=g)
    output = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0], [0.5, 0.5, 3.5, 9.5], [4.0, 4.0, 5.0, 6.0]]),
        "labels": torch.tensor([1, 0, 1]),
        "scores": torch.tensor([0.9, 0.3, 0.01]),
        "masks": probs,
    }
    results = detections_to_coco(output, 7, [5, 9], masks=True, score_thresh=0.02)
    assert [r["category_id"] for r in results] == [9, 5]
    assert [r["image_id"] for r in results] == [7, 7]
    assert results[0]["bbox"] == [1.0, 2.0, 10.0, 5.0] and results[1]["bbox"] == [0.5, 0.5, 3.0, 9.0]
    assert results[0]["score"] == pytest.approx(0.9)
    for r, p in zip(results, probs[:2], strict=True):
        decoded = mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(decoded, (p[0] > 0.5).numpy().astype(np.uint8))
    assert "segmentation" not in detections_to_coco(output, 7, [5, 9], masks=False)[0]


def test_ground_truth_as_predictions_scores_one(tmp_path):
    """Reference: the ground truth returned as detections (score 1, masks as probabilities 0/1) is a
    perfect result, AP = AP50 = mask AP = 1 (COCO / pycocotools semantics)."""
    ann = shapes.generate(tmp_path, 3, seed=3, size=48)
    results = []
    for im in ann.images:
        output = {
            "boxes": torch.tensor([o.box for o in im.instances], dtype=torch.float32),
            "labels": torch.tensor([o.label for o in im.instances]),
            "scores": torch.ones(len(im.instances)),
            "masks": torch.from_numpy(np.stack([o.mask for o in im.instances])).float()[:, None],
        }
        results += detections_to_coco(output, im.id, ann.category_ids, masks=True)
    metrics = coco_metrics(to_coco_dict(ann), results, masks=True)
    for key in ("AP", "AP50", "AP75", "mask_AP", "mask_AP50"):
        assert metrics[key] == pytest.approx(1.0), key
    assert all(metrics[f"AP/{c}"] == pytest.approx(1.0) for c in ann.classes if f"AP/{c}" in metrics)


TINY_INSTANCE = {
    "task": "instance",
    "name": "tiny",
    "model": {
        "name": "maskrcnn_resnet50_fpn",
        "backbone": "resnet18",
        "min_size": 48,
        "max_size": 48,
        "anchor_sizes": [[6], [12], [24], [48], [96]],
        "rpn_batch_size_per_image": 32,
        "box_batch_size_per_image": 16,
        "rpn_post_nms_top_n_train": 50,
        "rpn_post_nms_top_n_test": 50,
        "box_detections_per_img": 20,
    },
    "data": {"synthetic": 4, "synthetic_size": 48, "batch_size": 2},
    "optim": {"name": "adamw", "lr": 0.0005},
    "train": {"epochs": 2, "seed": 0, "progress": False, "log_every": 1},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A two-epoch ``segdet train`` of a ResNet-18 Mask R-CNN on 4 synthetic 48 px images."""
    root = tmp_path_factory.mktemp("instance")
    cfg = {**TINY_INSTANCE, "output_dir": str(root / "runs")}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    return root / "runs" / "tiny"


def test_train_writes_checkpoints_and_coco_metrics(tiny_run):
    """Checkpoints exist; every epoch logged val AP and mask_AP (COCO numbers in [0, 1]); best_metric
    defaulted to box AP and was saved resolved in config.yaml."""
    assert (tiny_run / "last.safetensors").exists() and (tiny_run / "best.safetensors").exists()
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2]
    for r in val:
        for key in ("AP", "AP50", "AP75", "AR100", "mask_AP", "mask_AP50"):
            assert 0.0 <= r[key] <= 1.0, (key, r)
    train = [r for r in records if r["split"] == "train"]
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness"} <= set(train[0])
    # the loss logged is the sum of its parts
    parts = sum(v for k, v in train[0].items() if k.startswith("loss_"))
    assert train[0]["loss"] == pytest.approx(parts, rel=1e-5)
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert saved["train"]["best_metric"] == "AP"
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["best"] == max(r["AP"] for r in val)


def test_eval_and_predict_agree_with_our_evaluator(tiny_run, tmp_path, capsys):
    """``segdet eval`` prints the box and mask AP of the run's validation images; ``segdet predict`` on
    the same images writes one overlay each and a predictions.json that our COCO evaluator accepts and
    that scores exactly what ``segdet eval`` printed (same model, images and detections).
    Reference: ``evaluate_coco`` on the validation set's COCO dict; tolerance 1e-9."""
    from segdet.engine.data_splits import synthetic_split
    from segdet.engine.inference import load_trained

    ckpt = tiny_run / "best.safetensors"
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--out", str(tmp_path / "metrics.json")]) == 0
    printed = capsys.readouterr().out
    assert any(line.split()[0] == "AP" for line in printed.splitlines())
    assert any(line.split()[0] == "mask_AP" for line in printed.splitlines())
    evaluated = json.loads((tmp_path / "metrics.json").read_text())

    val = synthetic_split(load_trained(ckpt).config, "val")
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(to_coco_dict(val)))
    images = val.images[0].path.parent
    out = tmp_path / "pred"
    argv = ["predict", str(ckpt), str(images), "--out", str(out), "--coco-gt", str(gt_path)]
    assert main([*argv, "--json-thresh", "0"]) == 0
    assert len(list((out / "overlays").glob("*.png"))) == len(val.images)
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and {"file_name", "category_name", "segmentation"} <= set(predictions[0])
    box = evaluate_coco(gt_path, predictions, "bbox")
    segm = evaluate_coco(gt_path, predictions, "segm")
    assert box.stats[0] == pytest.approx(evaluated["AP"], abs=1e-9)
    assert segm.stats[0] == pytest.approx(evaluated["mask_AP"], abs=1e-9)


def test_predict_overlay_draws_only_confident_detections(tiny_run, tmp_path):
    """With ``--score-thresh 1.01`` nothing is drawn: the overlay equals the input image (exactly)."""
    from PIL import Image

    image = next((tiny_run / "synthetic" / "val" / "images").glob("*.png"))
    out = tmp_path / "pred"
    ckpt = str(tiny_run / "last.safetensors")
    code = main(["predict", ckpt, str(image), "--out", str(out), "--score-thresh", "1.01"])
    assert code == 0
    with Image.open(image) as a, Image.open(out / "overlays" / image.name) as b:
        np.testing.assert_array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    ids = {p["image_id"] for p in json.loads((out / "predictions.json").read_text())}
    assert ids <= {0}  # without --coco-gt, images are numbered in the order read


def test_eval_batches_as_the_run_validated(tiny_run, tmp_path, monkeypatch):
    """``segdet eval`` without ``--batch-size`` batches the images as the run's validation did
    (``data.batch_size`` 2 here; a detector pads a batch to one size, which moves its detections), so it
    prints the AP and mask AP that the run logged for its best epoch. Reference: metrics.jsonl; exact
    (``--no-fuse --no-nnpack``: the training's arithmetic). ``--batch-size`` still overrides."""
    import torch.utils.data

    from segdet.engine.config import DataConfig

    real = torch.utils.data.DataLoader
    sizes: list[int] = []
    monkeypatch.setattr(
        torch.utils.data, "DataLoader", lambda *a, **k: sizes.append(k["batch_size"]) or real(*a, **k)
    )
    out = tmp_path / "metrics.json"
    assert (
        main(["eval", str(tiny_run / "best.safetensors"), "--no-fuse", "--no-nnpack", "--out", str(out)]) == 0
    )
    assert main(["eval", str(tiny_run / "best.safetensors"), "--batch-size", "3"]) == 0
    assert sizes == [2, 3]
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if r["split"] == "val"), key=lambda r: r["AP"])
    evaluated = json.loads(out.read_text())
    for key in ("AP", "AP50", "mask_AP"):
        assert evaluated[key] == pytest.approx(best[key], abs=1e-12), key
    assert DataConfig(batch_size=8, val_batch_size=1).validation_batch_size == 1
    assert DataConfig(batch_size=8).validation_batch_size == 8
