"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The real datasets live beside the checkout (../shared/data), never inside it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


# Tests marked ``opencv_contrib`` (selective search) need OpenCV's contrib modules. They never skip: where
# ``cv2.ximgproc`` is missing they fail with segdet's install hint, so that an install that lost the contrib
# wheel (CI installs it with ``.[dev]``) cannot pass silently. The one exception is a machine that cannot
# get the wheel: SEGDET_TESTS_OPENCV_CONTRIB=optional skips them there, with the reason printed under -rs.
# benchmarks/gpu_checks.sh sets it: the GPU machine's image has opencv-python-headless and no network, and
# the contrib wheel (69 MB) is over what travels to it.
OPENCV_CONTRIB_OPTIONAL = "SEGDET_TESTS_OPENCV_CONTRIB"


def _has_opencv_contrib() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "ximgproc")


def pytest_collection_modifyitems(config, items):
    if os.environ.get(OPENCV_CONTRIB_OPTIONAL) != "optional" or _has_opencv_contrib():
        return
    skip = pytest.mark.skip(
        reason=f"OpenCV without contrib modules (cv2.ximgproc) and {OPENCV_CONTRIB_OPTIONAL}=optional"
    )
    for item in items:
        if "opencv_contrib" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_dataset():
    """``shared_dataset(name)``: path of a real dataset in ../shared/data; skips the test without it."""
    return _shared_dataset


# The smoke-test run (configs/smoke_unet.yaml: U-Net, 4 channels, 8 synthetic 32 px images, one epoch):
# what the checkpoint tests load, evaluate and damage. Trained once per session, in about a second.
SMOKE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke_unet.yaml"


@pytest.fixture
def tiny_segmentation_config() -> dict:
    """A fresh copy of the smoke-test config (``name`` and ``output_dir`` to be set by the test)."""
    import yaml

    return yaml.safe_load(SMOKE_CONFIG.read_text())


@pytest.fixture(scope="session")
def tiny_segmentation_run(tmp_path_factory):
    """The run folder of a ``segdet train`` of the smoke-test config (read it, never write)."""
    from segdet.cli.main import main

    root = tmp_path_factory.mktemp("tiny_segmentation")
    assert main(["train", str(SMOKE_CONFIG), f"output_dir={root / 'runs'}", "name=tiny"]) == 0
    return root / "runs" / "tiny"
