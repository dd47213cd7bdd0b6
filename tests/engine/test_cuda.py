"""The engine's CUDA paths: mixed-precision training steps (bf16, and fp16 with its gradient scaler),
detection and segmentation evaluation on the GPU, and a run trained on CUDA resumed on the CPU.
Skipped where no GPU is available.

References: the CPU evaluation of the same checkpoint (``--no-fuse --no-nnpack``, float32) within 0.002
of COCO box / mask AP and mIoU (CUDA runs float32 convolutions on TF32 tensor cores by default, see
:func:`segdet.engine.inference.prepare_for_inference`; on trained models that moves no metric by more
than this); bf16 within 0.05 of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from segdet.cli.main import main
from segdet.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TOLERANCE = 0.002

TINY_UNET = {
    "task": "segmentation",
    "model": {"name": "unet_backbone", "backbone": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]},
    "data": {"synthetic": 8, "synthetic_size": 64, "size": 64, "batch_size": 4, "workers": 2},
    "optim": {"name": "adamw", "lr": 0.001},
    "train": {"epochs": 2, "seed": 0, "progress": False, "log_every": 1, "device": "cuda"},
}

TINY_DETECTOR = {
    "task": "instance",
    "model": {
        "name": "maskrcnn_resnet50_fpn",
        "backbone": "resnet18",
        "fpn_channels": 32,
        "representation_size": 64,
        "mask_channels": 32,
        "min_size": 64,
        "max_size": 64,
        "anchor_sizes": [[8], [16], [32], [64], [128]],
    },
    "data": {"synthetic": 8, "synthetic_size": 64, "batch_size": 4, "workers": 2, "cache": True},
    "optim": {"name": "adamw", "lr": 0.0005},
    "train": {"epochs": 1, "seed": 0, "progress": False, "log_every": 1, "device": "cuda"},
}


def _train(tmp_path: Path, name: str, config: dict, *overrides: str) -> Path:
    cfg = {**config, "name": name, "output_dir": str(tmp_path / "runs")}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), *overrides]) == 0
    return tmp_path / "runs" / name


def _train_losses(run: Path) -> list[float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_segmentation_trains_on_cuda_with_amp(tmp_path, amp):
    run = _train(tmp_path, f"unet_{amp}", TINY_UNET, f"train.amp={amp}")
    losses = _train_losses(run)
    assert losses and all(map(torch.isfinite, torch.tensor(losses)))
    ckpt = load_checkpoint(run / "last.safetensors")
    if amp == "fp16":  # the gradient scaler ran and its state is saved
        assert ckpt["scaler"] and float(ckpt["scaler"]["scale"]) > 0


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_detection_trains_on_cuda(tmp_path, amp):
    run = _train(tmp_path, f"det_{amp}", TINY_DETECTOR, f"train.amp={amp}")
    losses = _train_losses(run)
    assert losses and all(map(torch.isfinite, torch.tensor(losses)))
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["last_metrics"]["AP"] <= 1.0


def test_cuda_run_resumes_on_cpu(tmp_path):
    """Two epochs on CUDA, then ``--resume`` with ``train.device=cpu`` for a third: the checkpoint loads on
    the CPU (RNG states included) and training goes on from step 4."""
    run = _train(tmp_path, "moved", TINY_UNET)
    assert load_checkpoint(run / "last.safetensors")["step"] == 4
    cfg = tmp_path / "moved.yaml"
    assert main(["train", str(cfg), "train.device=cpu", "train.epochs=3", "--resume"]) == 0
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt["epoch"] == 3 and ckpt["step"] == 6


def _eval(checkpoint: Path, out: Path, *options: str) -> dict[str, float]:
    assert main(["eval", str(checkpoint), "--out", str(out), *options]) == 0
    return json.loads(out.read_text())


def test_detector_evaluates_on_cuda_as_on_cpu(trained_detector, tmp_path):
    cpu = _eval(trained_detector, tmp_path / "cpu.json", "--device", "cpu", "--no-fuse", "--no-nnpack")
    plain = _eval(trained_detector, tmp_path / "plain.json", "--device", "cuda", "--no-fuse")
    default = _eval(trained_detector, tmp_path / "default.json", "--device", "cuda")
    for key in ("AP", "AP50", "AP75", "mask_AP", "mask_AP50"):
        assert plain[key] == pytest.approx(cpu[key], abs=TOLERANCE), key
        assert default[key] == pytest.approx(cpu[key], abs=TOLERANCE), key
    low = _eval(trained_detector, tmp_path / "bf16.json", "--device", "cuda", "--precision", "bf16")
    for key in ("AP", "AP50", "mask_AP"):
        assert low[key] == pytest.approx(cpu[key], abs=0.05), key


def test_segmenter_evaluates_on_cuda_as_on_cpu(trained_segmenter, tmp_path):
    cpu = _eval(trained_segmenter, tmp_path / "cpu.json", "--device", "cpu", "--no-fuse")
    default = _eval(trained_segmenter, tmp_path / "default.json", "--device", "cuda")
    for key in ("mIoU", "pixel_acc"):
        assert default[key] == pytest.approx(cpu[key], abs=TOLERANCE), key
    low = _eval(trained_segmenter, tmp_path / "bf16.json", "--device", "cuda", "--precision", "bf16")
    assert low["mIoU"] == pytest.approx(cpu["mIoU"], abs=0.05)
