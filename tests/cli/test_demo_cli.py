"""``segdet demo`` shrunk to seconds (four 32 px images, one epoch per model): every output exists and
every number is in [0, 1]. The demo's speed and its targets at the defaults (mIoU >= 0.8, box AP50 >=
0.7 on held-out images, <= 3 minutes on 2 cores) are a benchmark: ``benchmarks/demo.py``."""

from __future__ import annotations

import json
from pathlib import Path

from segdet.cli.main import main
from segdet.engine.config import load_config


def test_demo_writes_every_output(tmp_path, capsys):
    """Both runs train and evaluate on the held-out images through the Trainer; metrics.json holds
    mIoU / Dice / pixel accuracy and COCO box AP / AP50 / AP75 in [0, 1]; summary.png shows the 2
    held-out images enlarged (5 tiles of 256 px per row); the runs' curves and checkpoints exist; the
    saved configs name the easy set and the held-out size; the last lines printed give the paths."""
    from PIL import Image

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-images", "4", "--val-images", "2", "--size", "32"]
    argv += ["--draw", "2", "--epochs", "1", "--detector-epochs", "1"]
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    for task, keys in (
        ("segmentation", ("mIoU", "mDice", "pixel_acc")),
        ("detection", ("AP", "AP50", "AP75")),
    ):
        for key in keys:
            assert 0.0 <= metrics[task][key] <= 1.0, (task, key, metrics[task])
    with Image.open(out / "summary.png") as im:
        assert im.width >= 5 * 256 and im.height >= 2 * 256
    for run in ("unet_shapes", "fasterrcnn_shapes"):
        folder = out / "runs" / run
        assert (folder / "last.safetensors").exists() and (folder / "plots" / "loss.png").exists()
        cfg = load_config(folder / "config.yaml")
        assert (cfg.data.synthetic_difficulty, cfg.data.synthetic_val) == ("easy", 2)
    assert (out / "runs" / "unet_shapes" / "plots" / "mIoU.png").exists()
    assert (out / "runs" / "fasterrcnn_shapes" / "plots" / "AP50.png").exists()
    tail = printed.strip().splitlines()[-4:]
    ends = ["summary.png", "unet_shapes/plots", "fasterrcnn_shapes/plots", "metrics.json"]
    for line, path in zip(tail, ends, strict=True):
        assert line.rstrip().endswith(path) and Path(line.split(": ")[-1]).exists(), tail
