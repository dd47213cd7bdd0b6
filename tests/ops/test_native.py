"""segdet.ops.native: building, caching and loading the C++ kernels, and the fallback without them.

The kernels' results are tested against their references where they are used (``test_roi_pool.py``:
``torch.equal`` to torchvision, on the C++ path and on the pure-torch one)."""

from __future__ import annotations

import ctypes
import subprocess

import pytest
import torch
import torchvision

from segdet.ops import native, roi_pool

needs_compiler = pytest.mark.skipif(native.find_compiler() is None, reason="no C++ compiler here")

SOURCE = 'extern "C" int segdet_answer(int x) { return 2 * x + 1; }\n'


@pytest.fixture
def fresh_loader():
    """An empty memo of loaded libraries before and after (other tests load the real ones again)."""
    native._load.cache_clear()
    yield
    native._load.cache_clear()


@needs_compiler
def test_build_caches_by_content_and_loads(tmp_path):
    source = tmp_path / "answer.cpp"
    source.write_text(SOURCE)
    built = native.build(source, native.find_compiler(), tmp_path / "cache")
    assert built.parent == tmp_path / "cache" and built.name.startswith("answer-")
    assert ctypes.CDLL(str(built)).segdet_answer(20) == 41
    stamp = built.stat().st_mtime_ns
    assert native.build(source, native.find_compiler(), tmp_path / "cache") == built  # not rebuilt
    assert built.stat().st_mtime_ns == stamp
    source.write_text(SOURCE.replace("2 * x", "3 * x"))
    rebuilt = native.build(source, native.find_compiler(), tmp_path / "cache")
    assert rebuilt != built and ctypes.CDLL(str(rebuilt)).segdet_answer(20) == 61
    (tmp_path / "shared.h").write_text("// a header the kernels may include\n")
    with_header = native.build(source, native.find_compiler(), tmp_path / "cache")
    assert with_header not in (built, rebuilt)  # an edited header rebuilds too
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".so"] * 3  # no leftovers


@needs_compiler
def test_a_failing_build_raises_with_the_compiler_output_and_leaves_nothing(tmp_path):
    source = tmp_path / "broken.cpp"
    source.write_text("this is not C++\n")
    with pytest.raises(subprocess.CalledProcessError) as error:
        native.build(source, native.find_compiler(), tmp_path / "cache")
    assert "error" in error.value.stderr
    assert list((tmp_path / "cache").iterdir()) == []


def test_without_a_compiler_roi_pool_takes_its_torch_path(monkeypatch, tmp_path, fresh_loader):
    """A compiler that does not exist: one warning naming the kernel, ``None``, and roi_pool still
    equal to torchvision's (its sparse-table path)."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SEGDET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SEGDET_NATIVE", raising=False)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ kernel 'roi_pool' is not available"):
        assert native.library("roi_pool") is None
    features = torch.randn(1, 4, 12, 12)
    rois = torch.tensor([[0.0, 1, 2, 40, 44], [0.0, 10, 0, 47, 20]])
    assert torch.equal(roi_pool(features, rois, 3, 0.25), torchvision.ops.roi_pool(features, rois, 3, 0.25))


def test_segdet_native_0_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("SEGDET_NATIVE", "0")
    assert native.library("roi_pool") is None


@needs_compiler
def test_the_library_is_built_in_segdets_cache(monkeypatch, tmp_path, fresh_loader):
    monkeypatch.setenv("SEGDET_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SEGDET_NATIVE", raising=False)
    assert native.library("roi_pool") is not None
    assert [p.name.split("-")[0] for p in (tmp_path / "native").iterdir()] == ["roi_pool"]
