"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

# The real datasets live beside the checkout (../shared/data), never inside it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture
def shared_dataset():
    """``shared_dataset(name)``: path of a real dataset in ../shared/data; skips the test without it."""
    return _shared_dataset


# A tiny segmentation run (U-Net, 4 channels, 8 synthetic 32 px images, one epoch): what the checkpoint
# tests load, evaluate and damage. Trained once per session, in about a second.
TINY_SEGMENTATION = {
    "task": "segmentation",
    "name": "tiny",
    "model": {"name": "unet", "base_channels": 4, "depth": 2, "norm": False},
    "data": {
        "synthetic": 8,
        "synthetic_size": 32,
        "size": 32,
        "scale_range": [1.0, 1.0],
        "hflip": 0.0,
        "batch_size": 4,
    },
    "optim": {"name": "sgd", "lr": 0.05},
    "train": {"epochs": 1, "seed": 0, "progress": False, "log_every": 1},
}


@pytest.fixture
def tiny_segmentation_config() -> dict:
    """A fresh copy of :data:`TINY_SEGMENTATION` (without ``name`` and ``output_dir``)."""
    import copy

    return copy.deepcopy(TINY_SEGMENTATION)


@pytest.fixture(scope="session")
def tiny_segmentation_run(tmp_path_factory):
    """The run folder of a one-epoch ``segdet train`` of :data:`TINY_SEGMENTATION` (read it, never write)."""
    import yaml

    from segdet.cli.main import main

    root = tmp_path_factory.mktemp("tiny_segmentation")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_SEGMENTATION, "output_dir": str(root / "runs")}))
    assert main(["train", str(config)]) == 0
    return root / "runs" / "tiny"
