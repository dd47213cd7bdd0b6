"""Checkpoints: exact round trip of every state, atomic replacement, no unpickling, clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from segdet.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segdet.errors import SegdetError


def _trained_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()
    return model, opt


def test_round_trip_is_exact(tmp_path):
    model, opt = _trained_state()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 7,
        "best": 0.5,
        "classes": ["a", "b"],
        "history": [{"loss": 1.25}],
        "shape": (3, 4),
        "none": None,
    }
    path = save_checkpoint(tmp_path / "last.safetensors", state)
    back = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(back["model"][k], v) and back["model"][k].dtype == v.dtype
    assert back["step"] == 7 and back["classes"] == ["a", "b"] and back["shape"] == (3, 4)
    assert back["history"] == [{"loss": 1.25}] and back["none"] is None
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])  # int-keyed optimiser state survives
    for i, s in opt.state_dict()["state"].items():
        for key, value in s.items():
            assert torch.equal(opt2.state_dict()["state"][i][key], value)


def test_rng_state_restores_every_generator(tmp_path):
    save_checkpoint(tmp_path / "rng.safetensors", {"rng": rng_state()})
    expected = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "rng.safetensors")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]  # noqa: NPY002


def test_replacement_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact and no temporary file behind."""
    path = save_checkpoint(tmp_path / "last.safetensors", {"step": 1, "w": torch.ones(2)})

    import segdet.engine.checkpoint as ckpt

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(2)})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_pickles_are_refused(tmp_path):
    """A torch.save pickle is not read (it could run code); the error names the file."""
    bad = tmp_path / "evil.safetensors"
    torch.save({"x": torch.ones(1)}, bad)
    with pytest.raises(SegdetError, match=r"evil\.safetensors"):
        load_checkpoint(bad)
    with pytest.raises(SegdetError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_rng_state_loaded_onto_another_device_is_restored(monkeypatch):
    """A checkpoint read with ``map_location="cuda"`` (``--resume`` on a GPU) holds its RNG states on the
    GPU: NumPy's keys cannot be read there and a generator state must be a CPU ByteTensor. CUDA states of
    more GPUs than this machine has (a run moved to a smaller machine) restore the GPUs it has."""
    import segdet.engine.checkpoint as ckpt

    state = rng_state()
    restored: list = []
    monkeypatch.setattr(ckpt.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ckpt.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(ckpt.torch.cuda, "set_rng_state_all", restored.extend)
    cuda_states = [torch.full((16,), 7, dtype=torch.int64), torch.full((16,), 9, dtype=torch.uint8)]
    set_rng_state({**state, "cuda": cuda_states})
    assert len(restored) == 1 and torch.equal(restored[0], torch.full((16,), 7, dtype=torch.uint8))
    assert restored[0].device.type == "cpu" and restored[0].dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_rng_state_read_onto_cuda_restores_every_generator(tmp_path):
    save_checkpoint(tmp_path / "rng.safetensors", {"rng": rng_state()})
    expected = (torch.rand(3), torch.rand(3, device="cuda"), np.random.rand())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "rng.safetensors", map_location="cuda")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.rand(3, device="cuda"), expected[1])
    assert np.random.rand() == expected[2]  # noqa: NPY002


def test_deeply_nested_metadata_is_one_line(tmp_path):
    """A crafted checkpoint whose metadata nests deeper than Python's recursion limit is a bad file, not
    a traceback."""
    from safetensors.torch import save_file

    depth = 100_000
    meta = '{"version": 1, "state": ' + "[" * depth + "]" * depth + "}"
    path = tmp_path / "deep.safetensors"
    save_file({"w": torch.ones(1)}, str(path), metadata={"segdet": meta})
    with pytest.raises(SegdetError, match=r"deep\.safetensors: corrupt checkpoint metadata"):
        load_checkpoint(path)


def test_a_checkpoint_of_a_newer_format_or_without_state_is_one_line(tmp_path):
    """The format version was never read: a newer segdet's checkpoint would be misread. Now it names the
    format; metadata that is not a mapping with a state is a corrupt file."""
    from safetensors.torch import save_file

    for name, meta, message in [
        ("newer", '{"version": 2, "state": {}}', "checkpoint format 2 comes from a newer segdet"),
        ("list", "[1, 2]", "corrupt checkpoint metadata"),
        ("stateless", '{"version": 1}', "corrupt checkpoint metadata"),
    ]:
        path = tmp_path / f"{name}.safetensors"
        save_file({"w": torch.ones(1)}, str(path), metadata={"segdet": meta})
        with pytest.raises(SegdetError, match=message):
            load_checkpoint(path)
    save_checkpoint(tmp_path / "ok.safetensors", {"w": torch.ones(1), "step": 3})
    assert load_checkpoint(tmp_path / "ok.safetensors")["step"] == 3
