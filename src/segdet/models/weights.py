"""Safe loading of pretrained weights into a model.

A source is one of:

* a torchvision weights enum member or its name, ``"ResNet50_Weights.IMAGENET1K_V2"`` (resolved with
  ``torchvision.models.get_weight``; the file is downloaded by ``torch.hub`` into its cache);
* a local ``.safetensors`` file, or a ``.pth`` / ``.pt`` / ``.bin`` file read with
  ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers: a pickle that
  would construct any other object is refused, never executed;
* an ``http(s)://`` URL of either kind, downloaded into the ``torch.hub`` cache.

A checkpoint that wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped, and a
``"module."`` prefix left by DistributedDataParallel is removed. Matching is strict by default: every
parameter and buffer must be present with the same shape; the model's ``ignored_weight_prefixes``
(a backbone's ``"fc."`` classifier) are dropped from the source first. Mismatches raise a
:class:`~segdet.errors.DataError` whose one line names the source and lists the first missing,
unexpected and mis-shaped keys with their counts.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from segdet.errors import DataError

_SHOWN_KEYS = 4
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class _FromCheckpoint:
    """The type of :data:`FROM_CHECKPOINT`."""

    def __repr__(self) -> str:
        return "FROM_CHECKPOINT"


#: A weights source that loads nothing: a model rebuilt from a trained checkpoint passes it where its
#: config names pretrained weights (``backbone_weights``), so the model is built as it was trained
#: (pretrained defaults such as frozen BatchNorm) without fetching or reading anything but the
#: checkpoint, whose own weights are loaded next.
FROM_CHECKPOINT = _FromCheckpoint()


def _load_file(path: Path) -> Mapping:
    if not path.is_file():
        raise DataError("no such weights file", file=path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"not a readable safetensors file ({e})", file=path) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"refused to load: the file holds objects other than tensors (weights_only=True: {first})",
            file=path,
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise DataError(f"not a readable PyTorch checkpoint ({type(e).__name__}: {e})", file=path) from None


def _load_url(url: str) -> Mapping:
    """The state dict at ``url``, downloaded once into torch.hub's cache; a failed download (no network,
    HTTP 404, a timeout) or an unreadable cached ``.pth`` is one :class:`DataError` naming the URL."""
    name = os.path.basename(urlparse(url).path)
    try:
        if name.endswith(".safetensors"):
            # keyed by the whole URL: Hugging Face / timm name every model's file "model.safetensors",
            # and a cache keyed by the file name alone would hand one model's weights to the next
            key = hashlib.sha256(url.encode()).hexdigest()[:16]
            directory = Path(torch.hub.get_dir()) / "checkpoints"
            directory.mkdir(parents=True, exist_ok=True)
            target = directory / f"{name[: -len('.safetensors')]}-{key}.safetensors"
            if not target.exists():
                torch.hub.download_url_to_file(url, str(target), progress=True)
            return _load_file(target)
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DataError(
            f"refused to load: the file holds objects other than tensors ({e})", file=url
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as e:  # urllib's errors are OSErrors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot download or read the weights ({type(e).__name__}: {reason})", file=url
        ) from None


def _unwrap(obj: object, source: str) -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` dict inside a checkpoint."""
    for _ in range(3):  # {"model": {"state_dict": ...}} exists in the wild
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise DataError(f"expected a state dict (name -> tensor), found {type(obj).__name__}", file=source)
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise DataError("the checkpoint holds no tensors", file=source)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_state_dict(source: object) -> dict[str, Tensor]:
    """Read the state dict of ``source`` (see the module docstring) on the CPU."""
    from torchvision.models import WeightsEnum, get_weight

    if isinstance(source, WeightsEnum):
        return _unwrap(_load_url(source.url), str(source))
    if isinstance(source, os.PathLike):
        return _unwrap(_load_file(Path(source)), str(source))
    if not isinstance(source, str):
        raise DataError(f"weights source must be a name, path or URL, got {type(source).__name__}")
    if source.startswith(("http://", "https://")):
        return _unwrap(_load_url(source), source)
    path = Path(source).expanduser()
    if path.exists() or path.suffix in (".pth", ".pt", ".bin", ".safetensors", ".ckpt"):
        return _unwrap(_load_file(path), source)
    if "_Weights." in source:
        try:
            weights = get_weight(source)
        except (ValueError, KeyError, AttributeError):
            raise DataError(
                "not a torchvision weights name (e.g. ResNet50_Weights.IMAGENET1K_V2)", file=source
            ) from None
        return _unwrap(_load_url(weights.url), source)
    raise DataError("neither an existing file, a URL nor a torchvision weights name", file=source)


def _listed(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", ... (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def load_weights(
    model: nn.Module,
    source: object,
    *,
    strict: bool = True,
    ignore_prefixes: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Load ``source`` into ``model`` and return ``{"missing": [...], "unexpected": [...]}``.

    ``ignore_prefixes`` (default: ``model.ignored_weight_prefixes``) are dropped from the source. With
    ``strict`` any remaining missing or unexpected key raises :class:`DataError`; without it they are
    only returned (use it to load a classifier's trunk into a model with new heads). A key present on
    both sides with different shapes is an error in both modes.
    """
    if source is FROM_CHECKPOINT:
        return {"missing": [], "unexpected": []}
    state = load_state_dict(source)
    prefixes = tuple(
        getattr(model, "ignored_weight_prefixes", ()) if ignore_prefixes is None else ignore_prefixes
    )
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)} if prefixes else state
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = mismatch(own, state, strict=strict)
    if problems:
        label = source if isinstance(source, str | os.PathLike) else str(source)
        raise DataError(f"weights do not match {type(model).__name__}: {problems}", file=label)
    model.load_state_dict(state, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def mismatch(own: Mapping[str, Tensor], state: Mapping[str, object], *, strict: bool = True) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``own``, in one line (empty
    when it fits): the first missing and unexpected keys (``strict``) and those of another shape, with
    their counts."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and getattr(state[k], "shape", None) != own[k].shape
    ]
    problems = []
    if missing and strict:
        problems.append(f"{len(missing)} missing keys ({_listed(missing)})")
    if unexpected and strict:
        problems.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
    if misshaped:
        problems.append(f"{len(misshaped)} keys of another shape ({_listed(misshaped)})")
    return "; ".join(problems)
