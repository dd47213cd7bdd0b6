"""The "PASCAL Annotation Version 1.00" text files of the Penn-Fudan pedestrian database.

One file per image (``Annotation/X.txt``), as in the database's ``readme.txt``::

    # Compatible with PASCAL Annotation Version 1.00
    Image filename : "PennFudanPed/PNGImages/FudanPed00001.png"
    Image size (X x Y x C) : 559 x 536 x 3
    Database : "The Penn-Fudan-Pedestrian Database"
    Objects with ground truth : 2 { "PASpersonWalking" "PASpersonWalking" }
    # Top left pixel co-ordinates : (1, 1)
    # Details for pedestrian 1 ("PASpersonWalking")
    Original label for object 1 "PASpersonWalking" : "PennFudanPed"
    Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (160, 182) - (302, 431)
    Pixel mask for object 1 "PASpersonWalking" : "PennFudanPed/PedMasks/FudanPed00001_mask.png"

Object ``k`` is the pixels of value ``k`` in the mask. Boxes are 1-based inclusive pixel indices and are
read as continuous ``xyxy`` (``x1 = Xmin - 1, x2 = Xmax``). The masks are the ground truth; this file
only names each object's class and lets the reader cross-check the masks, so its problems are warnings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from segdet.data.structures import Box
from segdet.data.validate import ProblemLog

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_BOX = rf"\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)\s*-\s*\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)"

# line prefix -> the whole line's pattern
_LINES = {
    "Image filename": re.compile(r'Image filename\s*:\s*"(?P<name>[^"]*)"'),
    "Image size": re.compile(r"Image size \(X x Y x C\)\s*:\s*(?P<w>\d+)\s*x\s*(?P<h>\d+)\s*x\s*(?P<c>\d+)"),
    "Database": re.compile(r"Database\s*:.*"),
    "Objects with ground truth": re.compile(
        r"Objects with ground truth\s*:\s*(?P<n>\d+)\s*\{(?P<labels>.*)\}"
    ),
    "Original label for object": re.compile(r'Original label for object (?P<k>\d+) "(?P<label>[^"]*)"\s*:.*'),
    "Bounding box for object": re.compile(
        rf'Bounding box for object (?P<k>\d+) "(?P<label>[^"]*)" \(Xmin, Ymin\) - \(Xmax, Ymax\)\s*:\s*{_BOX}'
    ),
    "Pixel mask for object": re.compile(r'Pixel mask for object (?P<k>\d+) "(?P<label>[^"]*)"\s*:.*'),
}
_DETAILS = re.compile(r'#\s*Details for \w+ (?P<k>\d+) \("(?P<label>[^"]*)"\)')


@dataclass
class PascalText:
    """What a Penn-Fudan annotation file says; ``line_of`` locates each fact for problem reports."""

    size: tuple[int, int] | None = None
    count: int | None = None
    listed_labels: list[str] = field(default_factory=list)  # from "Objects with ground truth"
    labels: dict[int, str] = field(default_factory=dict)  # object number -> label
    boxes: dict[int, Box] = field(default_factory=dict)  # object number -> continuous xyxy
    line_of: dict[str, int] = field(default_factory=dict)  # "count", "box k" -> line number

    def label(self, k: int) -> str | None:
        """Object ``k``'s label: from its own lines, else its place in the ground-truth list."""
        if k in self.labels:
            return self.labels[k]
        return self.listed_labels[k - 1] if 0 < k <= len(self.listed_labels) else None


def parse_pascal_text(text: str, path: Path, log: ProblemLog) -> PascalText:
    """Parse an annotation file; lines that are not understood are reported as warnings."""
    out = PascalText()
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            details = _DETAILS.fullmatch(line)
            if details:
                out.labels.setdefault(int(details["k"]), details["label"])
            continue
        prefix = next((p for p in _LINES if line.startswith(p)), None)
        if prefix is None:
            log.warning(path, f"line {n}", f"unrecognised line {_short(line)}")
            continue
        match = _LINES[prefix].fullmatch(line)
        if match is None:
            log.warning(path, f"line {n}", f"malformed '{prefix}' line {_short(line)}")
            continue
        _take(prefix, match, n, out, path, log)
    return out


def _take(prefix: str, match: re.Match, n: int, out: PascalText, path: Path, log: ProblemLog) -> None:
    if prefix == "Image size":
        out.size = (int(match["w"]), int(match["h"]))
        out.line_of["size"] = n
    elif prefix == "Objects with ground truth":
        out.count = int(match["n"])
        out.listed_labels = re.findall(r'"([^"]*)"', match["labels"])
        out.line_of["count"] = n
    elif "k" in match.groupdict():
        k = int(match["k"])
        out.labels.setdefault(k, match["label"])
        if prefix == "Bounding box for object":
            if k in out.boxes:
                log.warning(path, f"line {n}", f"second bounding box for object {k}; the first is kept")
                return
            xmin, ymin, xmax, ymax = (float(v) for v in match.groups()[2:6])
            out.boxes[k] = (xmin - 1, ymin - 1, xmax, ymax)
            out.line_of[f"box {k}"] = n


def format_pascal_text(
    image_file: str, mask_file: str, width: int, height: int, labels: list[str], boxes: list[tuple[int, ...]]
) -> str:
    """An annotation file in the database's layout; ``boxes`` are 1-based inclusive
    ``(Xmin, Ymin, Xmax, Ymax)``, object ``k`` (1-based) being mask value ``k``."""
    listed = " ".join(f'"{label}"' for label in labels)
    lines = [
        "# Compatible with PASCAL Annotation Version 1.00",
        f'Image filename : "{image_file}"',
        f"Image size (X x Y x C) : {width} x {height} x 3",
        'Database : "segdet"',
        f"Objects with ground truth : {len(labels)} {{ {listed} }}",
        "# Note there may be some objects not included in the ground truth list for they are severe-occluded",
        "# or have very small size.",
        "# Top left pixel co-ordinates : (1, 1)",
    ]
    for k, (label, (x1, y1, x2, y2)) in enumerate(zip(labels, boxes, strict=True), start=1):
        lines += [
            f'# Details for object {k} ("{label}")',
            f'Original label for object {k} "{label}" : "segdet"',
            f'Bounding box for object {k} "{label}" (Xmin, Ymin) - (Xmax, Ymax) : '
            f"({x1}, {y1}) - ({x2}, {y2})",
            f'Pixel mask for object {k} "{label}" : "{mask_file}"',
            "",
        ]
    return "\n".join(lines) + "\n"


def _short(line: str, limit: int = 60) -> str:
    return repr(line if len(line) <= limit else line[:limit] + "...")
