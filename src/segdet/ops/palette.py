"""The Pascal VOC colour palette, shared by drawing (:mod:`segdet.ops.draw`) and the writers of palette
label PNGs (:mod:`segdet.data.palette`).

VOC stores its masks as palette PNGs: each pixel holds a class or instance index, and the palette only
makes the indices visible. The palette is the VOC devkit's ``labelcolormap``
(VOCdevkit/VOCcode/VOClabelcolormap.m): the bits of index ``i`` are dealt out to the three channels,
most significant bit first::

    for j in 0..7:
        r |= bit(i, 3j) << (7 - j);  g |= bit(i, 3j + 1) << (7 - j);  b |= bit(i, 3j + 2) << (7 - j)

so index 1 is dark red (128, 0, 0), 15 (person) is (192, 128, 128) and 255 (void) is (224, 224, 192).
"""

from __future__ import annotations

import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """The first ``n`` colours of the VOC palette, an ``n x 3`` uint8 array (see the module docstring)."""
    index = np.arange(n, dtype=np.int64)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):
        for channel in range(3):
            bit = (index >> (3 * j + channel)) & 1
            rgb[:, channel] |= bit << (7 - j)
    return rgb.astype(np.uint8)
