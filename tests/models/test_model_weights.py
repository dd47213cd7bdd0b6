"""Safe weight loading: .pth / .safetensors round trips, clear mismatch errors, pickles refused."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from segdet.errors import DataError
from segdet.models.backbones import build_backbone
from segdet.models.weights import load_state_dict, load_weights


def _small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    """A state dict saved with torch.save / safetensors loads back bit for bit (reference: the saved
    tensors themselves)."""
    torch.manual_seed(0)
    src, dst = _small(), _small()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(src.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    result = load_weights(dst, str(path))
    assert result == {"missing": [], "unexpected": []}
    _assert_same(src, dst)


def test_wrapped_checkpoint_and_ddp_prefix(tmp_path):
    """{"state_dict": {"module.<key>": ...}} (Lightning / DDP) is unwrapped to the plain keys."""
    src = _small()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    assert set(load_state_dict(path)) == set(src.state_dict())


def test_backbone_loads_classifier_checkpoint(tmp_path):
    """A full torchvision ResNet-18 checkpoint loads strictly into the backbone: its fc.* keys are
    dropped by ignored_weight_prefixes, every backbone key is filled."""
    import torchvision

    ref = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    backbone = build_backbone("resnet18", weights=str(path))
    torch.testing.assert_close(backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight, rtol=0, atol=0)


def test_mismatch_message(tmp_path):
    """Missing, unexpected and mis-shaped keys raise one DataError line naming the file and the keys,
    with counts; strict=False loads the rest and reports them; a shape mismatch fails in both modes."""
    src = _small()
    state = src.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["2.bias"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(DataError) as err:
        load_weights(_small(), path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "1 missing keys (2.bias)" in msg and "1 unexpected keys (extra.weight)" in msg
    dst = _small()
    assert load_weights(dst, path, strict=False) == {"missing": ["2.bias"], "unexpected": ["extra.weight"]}
    torch.testing.assert_close(dst[0].weight, src[0].weight, rtol=0, atol=0)

    state = _small().state_dict()
    state["0.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(
        DataError, match=r"1 keys of another shape \(0.weight \(5, 3, 3, 3\) vs \(4, 3, 3, 3\)\)"
    ):
        load_weights(_small(), path, strict=False)


class _Evil:
    """Unpickling this would run os.system: weights_only=True must refuse it, never execute it."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/segdet_pwned_by_pickle",))


def test_arbitrary_pickle_refused(tmp_path):
    """A checkpoint holding an arbitrary object is refused with DataError and its code does not run."""
    import os

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Evil()}, f, protocol=2)
    marker = "/tmp/segdet_pwned_by_pickle"
    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(DataError, match="refused to load"):
        load_weights(_small(), path)
    assert not os.path.exists(marker)


def test_bad_sources(tmp_path):
    """Unknown torchvision name, missing file, non-checkpoint file: one DataError each."""
    with pytest.raises(DataError, match="not a torchvision weights name"):
        load_state_dict("ResNet50_Weights.NOPE")
    with pytest.raises(DataError, match="no such weights file"):
        load_state_dict(str(tmp_path / "missing.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(DataError):
        load_state_dict(tmp_path / "junk.pth")


def test_torchvision_name_and_url_resolve(monkeypatch):
    """A torchvision weights name resolves (torchvision.models.get_weight) to its URL, and URLs go to
    torch.hub; the download itself is replaced here (no network in tests)."""
    import torchvision

    from segdet.models import weights as module

    seen = []
    src = _small()
    monkeypatch.setattr(module, "_load_url", lambda url: seen.append(url) or src.state_dict())
    load_weights(_small(), "ResNet18_Weights.IMAGENET1K_V1")
    load_weights(_small(), torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    load_weights(_small(), "https://example.com/w.safetensors")
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert seen == [url, url, "https://example.com/w.safetensors"]
