"""Where segdet keeps what it computes once per machine: selective-search proposals
(``proposals/``) and its built C++ kernels (``native/``)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_VARIABLE = "SEGDET_CACHE_DIR"


def cache_root() -> Path:
    """``$SEGDET_CACHE_DIR``, else ``$XDG_CACHE_HOME/segdet``, else ``~/.cache/segdet``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segdet"
