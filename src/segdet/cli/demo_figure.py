"""The demo's ``summary.png``: ground truth beside prediction for a few held-out images, with the metrics.

Each row is one held-out image: the image, the semantic ground truth, the segmentation model's
prediction, the ground-truth boxes and the detector's boxes. Tiles are drawn with
:mod:`segdet.ops.draw` on the image enlarged by an integer factor with nearest-neighbour sampling (every
pixel a ``scale x scale`` block: nothing is smoothed away, and captions stay readable on 64 px images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from segdet.ops.draw import color_palette, draw_detections, overlay_semantic

PAD = 6  # pixels between tiles and around the figure
FONT_SIZE = 15
MASK_ALPHA = 0.8  # opacity of the class colours over the objects


@dataclass
class Row:
    """One held-out image and what is drawn of it: ``image`` ``[3, H, W]`` uint8; semantic maps
    ``[H, W]`` (truth, prediction); boxes ``[N, 4]`` xyxy pixels with labels ``[N]`` (indices into the
    detector's classes) and, for predictions, scores ``[N]``."""

    image: Tensor
    semantic_truth: Tensor
    semantic_pred: Tensor
    boxes_truth: Tensor
    labels_truth: Tensor
    boxes_pred: Tensor
    labels_pred: Tensor
    scores_pred: Tensor


@dataclass
class Figure:
    """What the figure says: ``title`` and ``lines`` of text above the tiles (the metrics),
    ``semantic_classes`` (background first) and detector ``classes`` for colours and captions."""

    title: str
    lines: list[str]
    semantic_classes: Sequence[str]
    classes: Sequence[str]
    ignore_index: int = 255
    columns: tuple[str, ...] = field(
        default=("held-out image", "mask: truth", "mask: predicted", "boxes: truth", "boxes: predicted")
    )


def upscale(image: Tensor, scale: int) -> Tensor:
    """Nearest-neighbour enlargement of a ``[C, H, W]`` tensor by an integer ``scale``."""
    return image.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def tiles(row: Row, figure: Figure, scale: int) -> list[Tensor]:
    """The five ``[3, scale*H, scale*W]`` uint8 tiles of one row. A class has one colour in every
    tile: ``color_palette(K + 1)[k + 1]`` for class ``k`` (0 is the background, left uncoloured)."""
    big = upscale(row.image, scale)
    masks = [
        upscale(_paint(row.image, sem, figure), scale) for sem in (row.semantic_truth, row.semantic_pred)
    ]
    names = ["background", *figure.classes]
    # Detector labels count from 0 and the semantic classes from the background: shift them to match.
    truth = draw_detections(big, row.boxes_truth * scale, row.labels_truth + 1, class_names=names)
    pred = draw_detections(
        big, row.boxes_pred * scale, row.labels_pred + 1, row.scores_pred, class_names=names
    )
    return [big, *masks, truth, pred]


def _paint(image: Tensor, semantic: Tensor, figure: Figure) -> Tensor:
    """Class colours at ``MASK_ALPHA`` over the object pixels; background and ignored pixels unchanged
    (painting is per pixel, so painting then enlarging equals enlarging then painting)."""
    unpainted = (semantic == 0) | (semantic == figure.ignore_index)
    labels = semantic.masked_fill(unpainted, figure.ignore_index)
    return overlay_semantic(image, labels, len(figure.semantic_classes), figure.ignore_index, MASK_ALPHA)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def render(rows: Sequence[Row], figure: Figure, tile_size: int = 256) -> Image.Image:
    """The whole figure as a Pillow image: title, metric lines and a colour legend on top, column
    titles, then one row of tiles per held-out image (each enlarged to about ``tile_size`` pixels)."""
    if not rows:
        raise ValueError("the summary figure needs at least one image")
    h, w = rows[0].image.shape[-2:]
    scale = max(1, tile_size // max(h, w))
    grid = [tiles(r, figure, scale) for r in rows]
    th, tw = grid[0][0].shape[-2:]
    font, small = _font(FONT_SIZE + 3), _font(FONT_SIZE)
    line_h = FONT_SIZE + 6
    header_h = PAD + (FONT_SIZE + 9) + line_h * (len(figure.lines) + 2)
    ncol = len(figure.columns)
    width = PAD + ncol * (tw + PAD)
    height = header_h + len(grid) * (th + PAD) + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = PAD
    draw.text((PAD, y), figure.title, fill="black", font=font)
    y += FONT_SIZE + 9
    for line in figure.lines:
        draw.text((PAD, y), line, fill="black", font=small)
        y += line_h
    x = PAD
    palette = color_palette(len(figure.semantic_classes))
    for name, colour in zip(figure.semantic_classes[1:], palette[1:], strict=True):
        draw.rectangle((x, y + 2, x + FONT_SIZE, y + 2 + FONT_SIZE), fill=colour)
        draw.text((x + FONT_SIZE + 4, y), name, fill="black", font=small)
        x += FONT_SIZE + 12 + int(draw.textlength(name, font=small))
    y += line_h
    for c, title in enumerate(figure.columns):
        draw.text((PAD + c * (tw + PAD), y), title, fill="black", font=small)
    y += line_h
    for row in grid:
        for c, tile in enumerate(row):
            canvas.paste(Image.fromarray(tile.permute(1, 2, 0).numpy()), (PAD + c * (tw + PAD), y))
        y += th + PAD
    return canvas
