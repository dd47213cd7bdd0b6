"""What happened to each image ``segdet predict`` reads: the images it could not read, those whose
prediction failed, and those with an EXIF orientation tag. Each problem is one line on stderr when met;
the counts close the run.

One image must not cost the others their outputs: an error while predicting one (a model that cannot
take an odd size, an out-of-memory) skips that image only, as an unreadable file does, and the rest are
predicted and written. Errors that are not the image's go on up and stop the run: ``OSError`` (the
machine's side: a full disk, a permission, which every next image would meet too) and
``KeyboardInterrupt``. Errors common to every image (a bug) are not hidden: each image says its error
and the last line how many of all failed.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class ImageLog:
    """Per-image problems of a ``predict`` run over ``total`` images (module docstring)."""

    def __init__(self, total: int, verbose: bool = False) -> None:
        self.total, self.verbose = total, verbose
        self.unreadable: list[str] = []
        self.failed: list[str] = []
        self.tagged = 0  # images read that carry an EXIF orientation other than 1

    @property
    def done(self) -> int:
        return self.total - len(self.unreadable) - len(self.failed)

    def load(self, path: Path):
        """The image as :func:`segdet.data.io.load_image` gives it (pixels as stored), or None (reported)
        when it cannot be read; counts an EXIF orientation tag."""
        import torch

        from segdet.data.io import exif_orientation, open_image, to_rgb8
        from segdet.errors import DataError

        try:
            with open_image(path) as im:
                array = to_rgb8(im)
                # after decoding: a PNG's eXIf chunk may follow the pixels (segdet.data.io.exif_orientation)
                self.tagged += exif_orientation(im) != 1
        except DataError as e:
            self.unreadable.append(str(e))
            print(f"segdet: skipped: {e}", file=sys.stderr)
            return None
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def attempt(self, path: Path, work: Callable[[], T]) -> T | None:
        """``work()``, or None when it raised an error of this image (module docstring): said in one line
        naming ``path`` (``-v``: with the traceback), counted, and the run goes on."""
        from segdet.errors import SegdetError

        try:
            return work()
        except OSError:
            raise
        except Exception as e:
            what = str(e) if isinstance(e, SegdetError) else f"unexpected {type(e).__name__}: {e}"
            self.failed.append(f"{path}: {what}")
            if self.verbose:
                traceback.print_exc()
            hint = "" if self.verbose else " (-v prints the traceback)"
            print(f"segdet: skipped: {path}: {' '.join(what.split())}{hint}", file=sys.stderr)
            return None

    def report(self) -> int:
        """The closing lines on stderr (images with an EXIF tag; then how many were skipped, the last line);
        the exit status: 1 when some image was skipped, else 0."""
        if self.tagged:
            print(
                f"segdet: {self.tagged} {'image has' if self.tagged == 1 else 'images have'} an EXIF "
                "orientation tag; predicted on the pixels as stored (rotate them first to use the tag)",
                file=sys.stderr,
            )
        parts = []
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} of {self.total} images could not be read")
        if self.failed:
            parts.append(f"{len(self.failed)} of {self.total} images failed while predicting")
        if not parts:
            return 0
        print(f"segdet: {' and '.join(parts)}; skipped (listed above)", file=sys.stderr)
        return 1
