"""segdet.engine.perf.tune_malloc: accepted by glibc, and allocations still work afterwards."""

from __future__ import annotations

import sys

import pytest
import torch

from segdet.engine.perf import tune_malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_malloc_accepted_on_glibc():
    """mallopt returns 1 for each setting on glibc (both modes); tensors allocate and free normally."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert tune_malloc(disable_mmap=False)
    assert tune_malloc()
    x = torch.ones(8 * 1024 * 1024)  # 32 MiB, above glibc's largest mmap threshold
    assert float(x.sum()) == 8 * 1024 * 1024
