"""Fixtures of the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from segdet.engine.checkpoint import save_checkpoint

SHAPES = ["background", "circle", "rectangle", "triangle", "ellipse"]  # the tiny run's classes


@pytest.fixture(scope="session")
def detection_checkpoint(tmp_path_factory) -> Path:
    """An untrained Faster R-CNN (ResNet-18 FPN, narrow heads) saved as ``segdet train`` saves one."""
    from segdet.engine.config import from_dict, to_dict
    from segdet.models.build import build_from_config

    root = tmp_path_factory.mktemp("detector")
    model = {"name": "fasterrcnn_resnet50_fpn", "backbone": "resnet18", "fpn_channels": 16}
    model.update(representation_size=32, min_size=32, max_size=32)
    cfg = from_dict({"task": "detection", "name": "d", "output_dir": str(root), "model": model})
    kwargs = {k: v for k, v in model.items() if k != "name"}
    network = build_from_config("fasterrcnn_resnet50_fpn", 4, kwargs)
    state = {
        "model": network.state_dict(),
        "config": to_dict(cfg),
        "classes": SHAPES[1:],
        "task": "detection",
    }
    return save_checkpoint(root / "best.safetensors", state)
