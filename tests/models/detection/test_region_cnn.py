"""R-CNN (Girshick et al. 2014): region warping, the hinge-loss SVM (its KKT conditions, a hand case),
hard negative mining, ridge regression (against torch.linalg.lstsq on the augmented system), the three
stages converging on shapes (AP50 >= 0.8, our COCO evaluator, equal to pycocotools) and ``segdet rcnn``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segdet.models.detection.region_cnn.ridge import fit_ridge
from segdet.models.detection.region_cnn.svm import (
    SVMSettings,
    mine_and_train,
    svm_objective,
    train_linear_svm,
)
from segdet.models.detection.region_cnn.warp import dilate, warp_regions


def test_dilate_and_warp():
    """The box grows by 1 / (1 - 2 c) about its centre; a region inside a constant area warps to that
    constant; a region outside the image reads the mean (0 in the normalised image)."""
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    torch.testing.assert_close(dilate(box, 0.25), torch.tensor([[0.0, 0.0, 40.0, 80.0]]))
    torch.testing.assert_close(dilate(box, 0.0), box)
    image = torch.zeros(3, 40, 40)
    image[:, :, :20] = 1.0
    crops = warp_regions(
        [image], [torch.tensor([[4.0, 4.0, 14.0, 30.0], [100.0, 100.0, 120.0, 130.0]])], 8, 0.1
    )
    assert crops.shape == (2, 3, 8, 8)
    torch.testing.assert_close(crops[0], torch.ones(3, 8, 8))
    torch.testing.assert_close(crops[1], torch.zeros(3, 8, 8))


def test_svm_hand_case_and_optimality():
    """Two 1-D points +-1: the maximum-margin separator is w = 1, b = 0 (large C). On random data the
    dual solution satisfies the primal optimality: its objective is not improved by small steps in any
    direction (to 1e-3 relative)."""
    s = SVMSettings(C=100.0, bias_multiplier=10.0, tol=1e-6, max_iter=10000)
    x, y = np.array([[1.0], [-1.0]]), np.array([1.0, -1.0])
    w, b = train_linear_svm(x, y, np.full(2, 100.0), s)
    assert w[0] == pytest.approx(1.0, abs=1e-3) and b == pytest.approx(0.0, abs=1e-2)

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(1.0, 1.0, (30, 5)), rng.normal(-1.0, 1.0, (60, 5))])
    y = np.concatenate([np.ones(30), -np.ones(60)])
    costs = np.where(y > 0, 2.0, 1.0) * 0.1
    s = SVMSettings(C=0.1, tol=1e-4, max_iter=10000)
    w, b = train_linear_svm(x, y, costs, s)
    best = svm_objective(x, y, costs, w, b, s.bias_multiplier)
    for _ in range(50):
        dw, db = rng.normal(0, 1e-2, 5), rng.normal(0, 1e-2)
        assert svm_objective(x, y, costs, w + dw, b + db, s.bias_multiplier) >= best * (1 - 1e-3)
    assert ((x @ w + b > 0) == (y > 0)).mean() > 0.9


def test_hard_negative_mining():
    """Every negative of the first images enters the cache before the first training; afterwards the
    easy ones (score < -1.2) are evicted and only hard ones (> -1.0001) added: the final cache holds
    only negatives the SVM scores above the eviction threshold, and far fewer than were seen."""
    g = torch.Generator().manual_seed(0)
    positives = torch.randn(20, 4, generator=g) + 3.0
    negatives = [torch.randn(200, 4, generator=g) - 3.0 for _ in range(5)]
    negatives[3][:5] = torch.randn(5, 4, generator=g) + 2.5  # a few hard ones, late
    s = SVMSettings(C=0.1, retrain_limit=150)
    w, b, stats = mine_and_train(positives, negatives, s)
    assert stats["trainings"] >= 2 and stats["cache"] < 1000
    easy = torch.cat([n[5:] if i == 3 else n for i, n in enumerate(negatives)])
    assert float((positives @ w + b).min()) > 0 > float((easy @ w + b).max())


def test_ridge_primal_and_dual_match_lstsq():
    """Both closed forms equal the least-squares solution of the augmented system [X_c; sqrt(l) I] w =
    [t_c; 0] (torch.linalg.lstsq in float64, 1e-8); the intercept makes the mean prediction the mean
    target."""
    g = torch.Generator().manual_seed(0)
    for n, d in ((50, 8), (6, 20)):  # primal, dual
        x, t = (
            torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, 4, generator=g, dtype=torch.float64),
        )
        w, b = fit_ridge(x, t, 3.0)
        xc, tc = x - x.mean(0), t - t.mean(0)
        a = torch.cat([xc, 3.0**0.5 * torch.eye(d, dtype=torch.float64)])
        ref = torch.linalg.lstsq(a, torch.cat([tc, torch.zeros(d, 4, dtype=torch.float64)])).solution
        torch.testing.assert_close(w, ref, atol=1e-8, rtol=0)
        torch.testing.assert_close((x @ w + b).mean(0), t.mean(0), atol=1e-10, rtol=0)


# The tiny set-up: 64 px shapes, 32 px warped regions of ResNet-18's layer3 (a 2 x 2 map), its trunk
# left at its random initialisation (trainable_layers 0: fine-tuning trains fc6 / fc7 / the classifier,
# 3x cheaper), 30 steps of 8 + 24 regions; SVM C = 1 (the paper's 0.001 is tuned for thousands of
# positives; with 1-6 per class here it leaves every score inside the margin).
TINY = {
    "backbone": "resnet18",
    "trainable_layers": 0,
    "input_size": 32,
    "pool_size": 2,
    "representation_size": 128,
}


@pytest.mark.opencv_contrib
@pytest.mark.slow
def test_rcnn_three_stages_converge_on_shapes(tmp_path):
    """The three stages on four shapes images, evaluated on them by our COCO evaluator (box AP50 >= 0.8,
    the issue's bound)."""
    from segdet.data import shapes
    from segdet.engine.timed_eval import evaluate_timed
    from segdet.models.detection.region_cnn.model import rcnn_resnet_c4
    from segdet.models.detection.region_cnn.stages import RCNNTrainSettings, train_rcnn, training_samples

    torch.manual_seed(0)
    ann = shapes.generate(tmp_path / "shapes", 4, seed=0, size=64)
    samples = training_samples(ann)
    model = rcnn_resnet_c4(4, **TINY, proposal_cache=str(tmp_path / "cache"))
    settings = RCNNTrainSettings(
        finetune_steps=30, lr=1e-3, positives=8, background=24, svm=SVMSettings(C=1.0)
    )
    stats = train_rcnn(model, samples, settings, progress=False)
    assert stats["finetune_loss"][-1] < stats["finetune_loss"][0]
    assert all(s["trainings"] >= 1 for s in stats["svms"]) and min(stats["regression_samples"]) > 0
    metrics = evaluate_timed(model, ann, progress=False)
    assert metrics["AP50"] >= 0.8, metrics
    assert metrics["proposal_seconds_per_image"] > 0 and metrics["network_seconds_per_image"] > 0


@pytest.fixture(scope="module")
def rcnn_run(tmp_path_factory):
    """``segdet rcnn`` on 4 synthetic 48 px images at the tiny sizes (2 fine-tuning steps): its output
    folder and what it printed."""
    import contextlib
    import io

    from segdet.cli.main import main

    tmp = tmp_path_factory.mktemp("rcnn")
    out = tmp / "o"
    argv = [
        "rcnn",
        "--synthetic",
        "4",
        "--synthetic-size",
        "48",
        "--out",
        str(out),
        "--cache",
        str(tmp / "c"),
    ]
    argv += [
        "--backbone",
        "resnet18",
        "--input-size",
        "32",
        "--pool-size",
        "2",
        "--representation-size",
        "16",
    ]
    argv += ["--steps", "2", "--positives", "4", "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return out, printed.getvalue()


@pytest.mark.opencv_contrib
def test_rcnn_command(rcnn_run, tmp_path, capsys):
    """``segdet rcnn`` runs the stages in order, writes the model (safetensors, with the run's config),
    the stages' statistics and the validation metrics."""
    from segdet.cli.main import main
    from segdet.engine.checkpoint import load_checkpoint

    out, printed = rcnn_run
    assert "AP50" in printed
    assert json.loads((out / "stages.json").read_text())["svms"]
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["AP50"] <= 1.0
    state = load_checkpoint(out / "rcnn.safetensors")
    assert state["kind"] == "rcnn" and "svm_weight" in state["model"]
    assert state["config"]["model"]["name"] == "rcnn_resnet_c4"
    assert state["config"]["model"]["kwargs"]["input_size"] == 32
    assert main(["rcnn", "--out", str(tmp_path / "p")]) == 1
    assert "--synthetic" in capsys.readouterr().err


BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


@pytest.mark.opencv_contrib
def test_rcnn_eval_and_predict(rcnn_run, tmp_path, capsys):
    """``segdet eval rcnn.safetensors`` rebuilds R-CNN from the file alone and gives the COCO box metrics
    of ``segdet rcnn``'s own metrics.json on its held-out images: exactly (the same proposals from the
    cache, the same float32 network, every detection scored) with ``--no-fuse``, and by default (BatchNorm
    folded: float32 rounding only) to 1e-6; the same again on those images written as a COCO set
    (``--data``). ``segdet predict`` writes an overlay per image and predictions.json, whose box AP by our
    COCO evaluator is that AP again (1e-9). Both end with the seconds per image."""
    from segdet.cli.main import main
    from segdet.data.formats import read_dataset, write_dataset
    from segdet.data.formats.coco_write import to_coco_dict
    from segdet.engine.checkpoint import load_checkpoint
    from segdet.engine.config import from_dict
    from segdet.engine.data_splits import train_val_splits
    from segdet.engine.detection import coco_metrics

    out, _ = rcnn_run
    expected = json.loads((out / "metrics.json").read_text())
    ckpt = out / "rcnn.safetensors"
    for extra, tol in (["--no-fuse"], 0.0), ([], 1e-6):
        assert main(["eval", str(ckpt), "--out", str(tmp_path / f"m{len(extra)}.json"), *extra]) == 0
        got = json.loads((tmp_path / f"m{len(extra)}.json").read_text())
        for k in BOX_METRICS:
            assert got[k] == pytest.approx(expected[k], abs=tol, rel=0), (k, extra)
        assert "s per image" in capsys.readouterr().out

    cfg = from_dict(load_checkpoint(ckpt)["config"])
    val = train_val_splits(cfg)[1]
    coco = write_dataset("coco", val, tmp_path / "val")
    assert main(["eval", str(ckpt), "--data", str(coco), "--no-fuse", "--out", str(tmp_path / "d.json")]) == 0
    got = json.loads((tmp_path / "d.json").read_text())
    assert all(got[k] == expected[k] for k in BOX_METRICS)

    gt = read_dataset("coco", coco)
    images = sorted(Path(r.path) for r in gt.images)
    argv = ["predict", str(ckpt), *map(str, images), "--out", str(tmp_path / "p"), "--no-fuse"]
    assert main([*argv, "--coco-gt", str(next((tmp_path / "val").rglob("*.json")))]) == 0
    assert "s per image" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "p" / "overlays").iterdir()) == [
        p.stem + ".png" for p in images
    ]
    results = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert results and all(r["category_name"] in val.classes for r in results)
    ap = coco_metrics(to_coco_dict(gt), results, masks=False)["AP"]
    assert ap == pytest.approx(expected["AP"], abs=1e-9)


@pytest.mark.opencv_contrib
def test_rcnn_checkpoint_errors(rcnn_run, tmp_path, capsys):
    """A wrong or incomplete R-CNN output is a one-line error naming the file and the problem: the
    folder instead of its rcnn.safetensors, a stage's tensors missing (the SVMs), no saved config, an
    evaluation set with other classes, and ``segdet train`` asked to train R-CNN."""
    from segdet.cli.main import main
    from segdet.data.formats import write_dataset
    from segdet.engine.checkpoint import load_checkpoint, save_checkpoint
    from segdet.engine.config import from_dict
    from segdet.engine.data_splits import train_val_splits

    out, _ = rcnn_run
    ckpt = out / "rcnn.safetensors"
    state = load_checkpoint(ckpt)
    no_svm = {**state, "model": {k: v for k, v in state["model"].items() if not k.startswith("svm_")}}
    save_checkpoint(tmp_path / "no_svm.safetensors", no_svm)
    save_checkpoint(tmp_path / "old.safetensors", {k: v for k, v in state.items() if k != "config"})
    val = train_val_splits(from_dict(state["config"]))[1]
    val.classes = [f"not_{name}" for name in val.classes]
    other = write_dataset("coco", val, tmp_path / "other")
    images = out / "synthetic" / "val" / "images"
    run = {**state["config"], "output_dir": str(tmp_path / "runs"), "train": {"epochs": 1, "progress": False}}
    (tmp_path / "train.yaml").write_text(json.dumps(run))  # JSON is YAML
    cases = [
        (
            ["eval", str(out)],
            "a folder, not a checkpoint file; give one of its checkpoints: rcnn.safetensors",
        ),
        (["eval", str(tmp_path / "no_svm.safetensors")], "missing keys (svm_weight, svm_bias)"),
        (
            ["predict", str(tmp_path / "old.safetensors"), str(images), "--out", str(tmp_path / "p")],
            "an incomplete R-CNN checkpoint (no 'config')",
        ),
        (["eval", str(ckpt), "--data", str(other)], f"{other}: the evaluation set's classes"),
        (["train", str(tmp_path / "train.yaml")], "trained stage by stage by `segdet rcnn`"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (argv, err)
