"""Reading images: header-only size look-ups for checks, full decoding for training."""

from __future__ import annotations

from pathlib import Path

import torch

from segdet.errors import DataError


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` read from the file's header only (fast: no pixel decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image ({e})", path) from None


def verify_image(path: Path) -> tuple[int, int]:
    """Decode the whole image (catches truncated files a header read misses); returns ``(w, h)``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image ({e})", path) from None


def load_image(path: Path) -> torch.Tensor:
    """Decode an image to a ``uint8`` RGB tensor of shape ``3 x H x W``."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image ({e})", path) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
