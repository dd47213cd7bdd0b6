"""The on-disk cache of region proposals: computed once per image and settings, read back without
unpickling.

**Key.** An entry is named by the SHA-256 of the image's *decoded pixels* (``H x W x 3`` uint8 RGB,
with the height and width) and by the settings' key
(:meth:`~.selective_search.SelectiveSearchSettings.key`)::

    <root>/<settings key>/<first 2 hex digits>/<pixel hash>.safetensors
    <root>/<settings key>/settings.json          (the settings, for people)

so the same picture saved as PNG or copied elsewhere hits the same entry, a changed image or setting
never reads a stale one, and a model can find the proposals of the image it is given (a float tensor
``x = pixels / 255`` gives its pixels back exactly as ``round(255 x)``).

**Format.** One safetensors file per image: tensor ``boxes`` (float32 ``[R, 4]`` xyxy, original
pixels, best first) and JSON metadata (image size, seconds the search took, settings, OpenCV
version). Files are written to a temporary name and renamed (atomic on POSIX), so a killed run
leaves whole entries only; an entry that cannot be read or does not fit its image is reported
(logged) and computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdet.cache import cache_root
from segdet.models.detection.proposals.selective_search import SelectiveSearchSettings

logger = logging.getLogger("segdet.proposals")


def default_cache_dir() -> Path:
    """``proposals/`` in segdet's cache (:func:`segdet.cache.cache_root`: ``$SEGDET_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/segdet`` or ``~/.cache/segdet``)."""
    return cache_root() / "proposals"


def image_key(pixels: np.ndarray) -> str:
    """SHA-256 (hex) of ``H x W x 3`` uint8 pixels and their shape."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"expected H x W x 3 uint8 pixels, got {pixels.dtype} {pixels.shape}")
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}x{pixels.shape[2]};".encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


@dataclass
class CacheEntry:
    boxes: np.ndarray  # float32 [R, 4] xyxy
    seconds: float  # how long the search took when it was computed


class ProposalCache:
    """Proposals of one setting under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path, settings: SelectiveSearchSettings) -> None:
        self.root = Path(root).expanduser()
        self.settings = settings
        self.folder = self.root / settings.key()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str, size: tuple[int, int]) -> CacheEntry | None:
        """The entry of image ``key`` (of ``size = (h, w)``), or None when there is none usable."""
        from safetensors import SafetensorError, safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                boxes = f.get_tensor("boxes")
            height, width, seconds = int(meta["height"]), int(meta["width"]), float(meta["seconds"])
        except (OSError, SafetensorError, KeyError, ValueError) as e:
            logger.warning("%s: unreadable proposal cache entry (%s); computing it again", path, e)
            return None
        if (
            (height, width) != tuple(size)
            or boxes.dtype != np.float32
            or boxes.ndim != 2
            or boxes.shape[1] != 4
        ):
            logger.warning(
                "%s: the cache entry does not fit its %dx%d image; computing it again", path, *size
            )
            return None
        return CacheEntry(boxes, seconds)

    def put(self, key: str, size: tuple[int, int], entry: CacheEntry, opencv: str = "") -> Path:
        """Write the entry of image ``key`` atomically."""
        from safetensors.numpy import save_file

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        settings_file = self.folder / "settings.json"
        if not settings_file.exists():
            _atomic_text(settings_file, json.dumps(self.settings.as_dict(), indent=2))
        meta = {
            "height": str(size[0]),
            "width": str(size[1]),
            "seconds": repr(float(entry.seconds)),
            "settings": json.dumps(self.settings.as_dict(), sort_keys=True),
            "opencv": opencv,
        }
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file({"boxes": np.ascontiguousarray(entry.boxes, dtype=np.float32)}, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
