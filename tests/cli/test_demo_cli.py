"""``segdet demo`` with both training runs, shrunk to one epoch on four tiny images."""

from __future__ import annotations

import json

from segdet.cli.main import main


def test_demo_trains_segmentation_and_instance(tmp_path, capsys):
    """Both runs train, evaluate and draw: the segmentation metrics and COCO box/mask AP (in [0, 1])
    are written, and one side-by-side picture per drawn image (twice the image's width)."""
    from PIL import Image

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-images", "4", "--size", "64", "--draw", "2"]
    argv += ["--epochs", "1", "--minutes", "1", "--instance-epochs", "1", "--instance-minutes", "1"]
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[7/7]" in printed
    seg = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= seg["mIoU"] <= 1.0
    inst = json.loads((out / "instance_metrics.json").read_text())
    for key in ("AP", "AP50", "mask_AP", "mask_AP50"):
        assert 0.0 <= inst[key] <= 1.0, inst
    for run in ("unet_shapes", "maskrcnn_shapes"):
        pictures = sorted((out / "runs" / run / "predictions").glob("*.png"))
        assert len(pictures) == 2, run
        with Image.open(pictures[0]) as im:
            assert im.size == (128, 64)
