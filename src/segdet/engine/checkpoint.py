"""Checkpoints: one safetensors file per checkpoint, written atomically, read without unpickling.

A checkpoint holds a nested *state* (the model's, optimiser's, scheduler's and EMA's state dicts, RNG
states, step, config, class names): its tensors are stored as safetensors tensors under their dotted
path, everything else as JSON in the file's metadata. Writing goes to a temporary file in the same
folder which is fsync'ed and then renamed over the target (``os.replace`` is atomic on POSIX), so a
run killed at any moment leaves either the old checkpoint or the new one, never a torn file. Reading
uses ``safetensors`` only: nothing a user hands us is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from segdet.data.formats.layout import IMAGE_EXTENSIONS
from segdet.engine.atomic import fsync_folder
from segdet.errors import SegdetError

_META_KEY = "segdet"
_FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and JSON values) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    meta = json.dumps({"version": _FORMAT_VERSION, "state": skeleton})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={_META_KEY: meta})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:  # a full disk, a quota, a vanished folder
        reason = getattr(e, "strerror", None) or str(e)
        kept = "the previous checkpoint is kept" if path.exists() else "nothing was written"
        raise SegdetError(f"{path}: cannot write the checkpoint ({reason}); {kept}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_folder(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a bad file is a one-line error."""
    path = Path(path)
    if path.is_dir():  # a run folder (segdet train's, segdet rcnn's): name the files it holds
        found = sorted(p.name for p in path.glob("*.safetensors"))
        inside = f"give one of its checkpoints: {', '.join(found)}" if found else "it holds no .safetensors"
        raise SegdetError(f"{path}: a folder, not a checkpoint file; {inside}")
    if not path.is_file():
        raise SegdetError(f"{path}: checkpoint not found")
    kind = _not_safetensors(path)
    if kind is not None:
        raise SegdetError(
            f"{path}: not a segdet checkpoint (a .safetensors file written by segdet train); {kind}"
        )
    try:
        tensors = load_file(str(path), device=str(map_location))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise SegdetError(f"{path}: a damaged safetensors file, not a readable checkpoint ({e})") from None
    if meta is None:
        raise SegdetError(f"{path}: a safetensors file without segdet checkpoint metadata")
    try:
        document = json.loads(meta)
        version = document.get("version")
        if isinstance(version, int) and version > _FORMAT_VERSION:
            raise SegdetError(
                f"{path}: checkpoint format {version} comes from a newer segdet; this one reads format "
                f"{_FORMAT_VERSION} (upgrade segdet)"
            )
        return _unflatten(document["state"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:  # Recursion: too deep
        raise SegdetError(f"{path}: corrupt checkpoint metadata ({e})") from None


# File signatures (their first bytes) of what is given by mistake for a checkpoint.
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _not_safetensors(path: Path) -> str | None:
    """``None`` when ``path`` starts as a safetensors file does (an 8-byte little-endian header length
    that fits the file, then the JSON header's ``{``); else what it seems to be, from its first bytes or
    its suffix, in words ("this is an ONNX graph")."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return None
    suffix = path.suffix.lower()
    if not head:
        return "the file is empty"
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "this is an image"
    if suffix == ".onnx":
        return "this is an ONNX graph (segdet export writes them from a checkpoint)"
    if suffix == ".pt2":
        return "this is a torch.export program (segdet export writes them from a checkpoint)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or suffix in (".pt", ".pth", ".ckpt", ".bin"):
        return (
            "this is a PyTorch file written by torch.save (a config's model.weights takes such weights to "
            "start a training from)"
        )
    if suffix in IMAGE_EXTENSIONS:  # an image whose first bytes are not one of the signatures above
        return "this is an image"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # text cut inside a multi-byte character at byte 512 is still text
        text = head[: e.start].decode("utf-8") if len(head) == 512 and e.start >= 509 else None
    if text is None or "\x00" in text:
        return "its first bytes are not a safetensors header"
    if suffix in (".yaml", ".yml"):
        return "this is a YAML file (a config? segdet train takes it)"
    if suffix == ".json" or text.lstrip()[:1] in ("{", "["):
        return "this is a JSON file"
    return "this is a text file"


def _flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        # safetensors refuses tensors sharing storage; a contiguous CPU copy is also what we want to store
        tensors[prefix] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        # keys keep their type (optimiser state is keyed by int parameter indices)
        items = [[k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)] for k, v in value.items()]
        if not all(isinstance(k, str | int) and not isinstance(k, bool) for k, _ in items):
            raise TypeError(f"checkpoint state keys must be str or int at {prefix!r}")
        return {"__dict__": items}
    if isinstance(value, list | tuple):
        kind = "__tuple__" if isinstance(value, tuple) else "__list__"
        return {kind: [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, np.ndarray):
        return _flatten(torch.from_numpy(np.ascontiguousarray(value)), prefix, tensors)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {prefix!r} in a checkpoint")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            return [_unflatten(v, tensors) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
        raise ValueError(f"unknown node {list(node)}")
    return node


def rng_state() -> dict[str, Any]:
    """Every random generator's state (Python, NumPy's global, torch CPU and CUDA)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 -- user transforms may draw from the global RNG
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "keys": np_state[1].astype(np.int64),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned, wherever its tensors were loaded (a checkpoint read with
    ``map_location="cuda"`` holds them on the GPU; generator states must be CPU byte tensors). CUDA states
    of GPUs this machine lacks are dropped."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].cpu().numpy() if isinstance(n["keys"], torch.Tensor) else np.asarray(n["keys"])
    np.random.set_state(  # noqa: NPY002
        ("MT19937", keys.astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in cuda])
