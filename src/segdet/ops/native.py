"""segdet's few C++ kernels (``segdet/ops/csrc/*.cpp``), compiled on first use and loaded with ctypes.

A kernel is a plain C ABI on raw pointers, with no Python or torch headers, so the system's C++
compiler (``$CXX``, else ``c++`` / ``g++`` / ``clang++``) builds it in about a second, for this CPU
(``-O3 -march=native``). The library is cached in ``native/`` of segdet's cache folder (``$SEGDET_CACHE_DIR``,
else ``$XDG_CACHE_HOME/segdet`` or ``~/.cache/segdet``) under a name keyed by the source, the compiler, its
flags and the CPU's features, so an edit, another compiler or another machine sharing the home folder
builds its own; a build goes to a temporary file renamed into place, so processes building at once
(pytest workers, DDP ranks) never load a half-written file.

Every caller has a pure-torch path: without a compiler, with ``SEGDET_NATIVE=0``, or when the build
fails (one warning says why), :func:`library` returns ``None`` and the caller takes it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from segdet.cache import cache_root

SOURCES = Path(__file__).parent / "csrc"
# no fused multiply-adds: the kernels must round as their references do
FLAGS = ("-O3", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", "-pthread")
# tried first; dropped when the compiler refuses it (e.g. some clang builds on arm64)
NATIVE_ARCH = "-march=native"


def cache_dir() -> Path:
    """``native/`` in segdet's cache (:func:`segdet.cache.cache_root`)."""
    return cache_root() / "native"


def find_compiler() -> str | None:
    """``$CXX`` if set (a command line, e.g. ``ccache g++``; if it does not work the build fails and
    says so), else the first of ``c++``, ``g++``, ``clang++`` on the PATH."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def _cpu_features() -> str:
    """The CPU's feature flags (``-march=native`` builds for them): Linux's ``/proc/cpuinfo``, else
    the processor's name."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def build(source: Path, compiler: str, directory: Path) -> Path:
    """Compile ``source`` into a shared library in ``directory`` (reused when already built: the name
    hashes everything that changes the binary, the headers beside ``source`` included) and return its
    path. Raises ``OSError`` / ``subprocess.CalledProcessError`` when the compiler is missing or fails."""
    key = hashlib.sha256()
    flags = " ".join((*FLAGS, NATIVE_ARCH))
    headers = [h.read_bytes() for h in sorted(source.parent.glob("*.h"))]
    for part in (source.read_bytes(), *headers, compiler.encode(), flags.encode(), _cpu_features().encode()):
        key.update(part)
        key.update(b"\0")
    target = directory / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        for arch in ((NATIVE_ARCH,), ()):
            command = [*shlex.split(compiler), *FLAGS, *arch, str(source), "-o", tmp]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                break
        else:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


@functools.cache
def _load(name: str) -> ctypes.CDLL | None:
    compiler = find_compiler()
    try:
        if compiler is None:
            raise OSError("no C++ compiler found (set CXX, or install g++ or clang++)")
        return ctypes.CDLL(str(build(SOURCES / f"{name}.cpp", compiler, cache_dir())))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or str(error)
        warnings.warn(
            f"segdet: the C++ kernel {name!r} is not available ({detail.strip().splitlines()[-1]}); "
            "its pure-torch path is used instead (slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def library(name: str) -> ctypes.CDLL | None:
    """The loaded ``csrc/{name}.cpp`` library, built on first use, or ``None`` (no compiler, a failed
    build, or ``SEGDET_NATIVE=0``: the caller's pure-torch path)."""
    if os.environ.get("SEGDET_NATIVE", "1") == "0":
        return None
    return _load(name)
