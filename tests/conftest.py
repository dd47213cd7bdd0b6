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
