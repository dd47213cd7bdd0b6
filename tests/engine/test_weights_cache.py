"""Pretrained ``.safetensors`` URLs are cached per URL: two URLs whose files share a name (every
Hugging Face / timm model is ``model.safetensors``) are two downloads, never one silently reused."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from segdet.models.weights import load_state_dict


def test_safetensors_urls_with_the_same_file_name_are_cached_apart(tmp_path, monkeypatch):
    fetched: list[str] = []

    def download(url, dst, progress=True):
        fetched.append(url)
        save_file({"w": torch.full((2,), float(len(fetched)))}, dst)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    a = "https://example.com/org/model-a/resolve/main/model.safetensors"
    b = "https://example.com/org/model-b/resolve/main/model.safetensors"
    assert torch.equal(load_state_dict(a)["w"], torch.full((2,), 1.0))
    assert torch.equal(load_state_dict(b)["w"], torch.full((2,), 2.0))
    assert torch.equal(load_state_dict(a)["w"], torch.full((2,), 1.0))  # cached: not fetched again
    assert fetched == [a, b]


def test_a_failed_download_is_one_line_naming_the_url(tmp_path, monkeypatch):
    """No network, a 404 or a timeout came out of torch.hub as urllib's traceback; now one DataError
    naming the URL, for .safetensors and .pth URLs alike (nothing is left in the cache)."""
    import urllib.error

    import pytest

    from segdet.errors import DataError

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    for url in ("https://example.com/m/model.safetensors", "https://example.com/resnet18-f37072fd.pth"):
        with pytest.raises(DataError, match="cannot download or read the weights") as info:
            load_state_dict(url)
        assert url in str(info.value) and "name resolution" in str(info.value)
        assert "\n" not in str(info.value)
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())
