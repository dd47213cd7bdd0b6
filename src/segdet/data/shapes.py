"""A synthetic *shapes* dataset with exact ground truth, for tests, demos and smoke training.

Each image shows circles, rectangles, triangles and ellipses (:data:`CLASSES`, in that label order) of
varied colour, size, aspect and rotation on a textured background (a smooth gradient, value-noise
blotches or stripes, in muted colours kept far from the shapes' saturated ones). Shapes are painted one
after the other (painter's order), so later shapes occlude earlier ones.

Ground truth is exact because the rasteriser is: a pixel ``(i, j)`` (covering ``[i, i+1) x [j, j+1)``)
belongs to a shape when its centre ``(i + 0.5, j + 0.5)`` satisfies the shape's implicit inequality
(disc and ellipse equations, half-planes for rectangles and triangles), evaluated with numpy over the
whole pixel grid; there is no anti-aliasing, so every drawn pixel has exactly one owner. An object's mask
is its *visible* pixels (its full bitmap minus the bitmaps painted after it), its box is that mask's
tight box (:func:`segdet.data.masks.bitmap_box`), and the semantic mask holds ``label + 1`` at each
object's visible pixels, 0 elsewhere (``semantic_classes = ["background", *CLASSES]``).

An object left with fewer than ``MIN_VISIBLE_PIXELS`` pixels or less than ``MIN_VISIBLE_FRACTION`` of its
area is neither kept nor drawn: every shape pixel in an image belongs to a ground-truth object. (Removing
an object only uncovers the others, so one removal pass is enough.)

Image ``i`` of seed ``s`` is drawn from ``np.random.default_rng([s, i])`` alone: it is the same whether 3
or 3000 images are generated.

**Difficulty.** The defaults make a set that is hard for its size (up to 6 objects of 8-28 % of the
image side, overlapping each other and the border, on textured backgrounds). Four knobs of
:func:`render` / :func:`generate` / :func:`write` make it easier for a quick demonstration (``segdet
demo``) without changing it for other uses (at their defaults the images are byte for byte the same):
``min_objects`` / ``max_objects`` (how many shapes are drawn), ``radius`` (the range of a shape's
size, as a fraction of the shorter image side), ``background`` (``"textured"`` or ``"plain"``: one
muted colour) and ``occlusion`` (``False``: every shape lies wholly inside the image and overlaps no
other; a shape that finds no free place in a few tries is left out, so crowded images may get fewer
shapes) and ``class_colours`` (``True``: each class has its own hue, :data:`CLASS_COLOURS` jittered by
up to ``CLASS_COLOUR_JITTER`` per channel, so colour tells the class and only the shape's place and
extent are left to learn; by default colours are random and only the shape tells the class).
:data:`EASY` is the setting the demo uses.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdet.data.masks import bitmap_box
from segdet.data.structures import AnnotationSet, Box, ImageRecord, Instance

CLASSES: tuple[str, ...] = ("circle", "rectangle", "triangle", "ellipse")

MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.3
# A sampled shape smaller than this inside the image is redrawn, so the topmost one always survives.
MIN_SHAPE_PIXELS = 40
# Smallest RGB (Euclidean) distance between a shape's colour and the background's colours, and between
# two shapes' colours: wide enough that a person (or a model) can tell them apart.
MIN_BACKGROUND_CONTRAST = 110.0
MIN_SHAPE_CONTRAST = 60.0
# The default range of a shape's radius, as a fraction of the image's shorter side.
RADIUS = (0.08, 0.28)
# Tries to place a shape (inside the image; apart from the others when occlusion is off) before giving up.
PLACEMENT_TRIES = 32
BACKGROUNDS = ("textured", "plain")

#: Each class's colour with ``class_colours=True`` (circle red, rectangle green, triangle blue, ellipse
#: yellow: saturated, so far from the plain backgrounds' muted greys).
CLASS_COLOURS = np.array([[220, 40, 40], [40, 190, 60], [50, 80, 230], [230, 200, 40]])
CLASS_COLOUR_JITTER = 20

#: The demo's easy setting: 1-3 large shapes, wholly visible, coloured by class, on plain backgrounds.
EASY: dict[str, object] = {
    "min_objects": 1,
    "max_objects": 3,
    "radius": (0.16, 0.3),
    "background": "plain",
    "occlusion": False,
    "class_colours": True,
}
#: The named settings a config chooses with ``data.synthetic_difficulty``.
DIFFICULTIES: dict[str, dict[str, object]] = {"standard": {}, "easy": EASY}


@dataclass
class ShapesSample:
    """One rendered image and its ground truth (objects in painting order, back to front).

    ``background`` is the texture before any shape was painted (``image`` equals it outside the
    semantic foreground).
    """

    image: np.ndarray  # H x W x 3 uint8
    labels: list[int]
    masks: list[np.ndarray]  # H x W bool, visible pixels
    boxes: list[Box]  # xyxy, tight boxes of the masks
    semantic: np.ndarray  # H x W uint8, label + 1 on objects, 0 = background
    background: np.ndarray  # H x W x 3 uint8


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``; an int is a square image."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


# ----------------------------------------------------------------------------------------- background
def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: random values on a coarse ``(cells+1)^2`` lattice, bilinearly interpolated
    to the pixel grid (Perlin's "value noise", the simplest smooth random field)."""
    lattice = rng.random((cells + 1, cells + 1))
    ys = (np.arange(h) + 0.5) / h * cells
    xs = (np.arange(w) + 0.5) / w * cells
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    # Smoothstep weights hide the lattice's straight lines.
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    a = lattice[y0][:, x0]
    b = lattice[y0][:, x0 + 1]
    c = lattice[y0 + 1][:, x0]
    d = lattice[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _background(
    rng: np.random.Generator, h: int, w: int, kind: str = "textured"
) -> tuple[np.ndarray, np.ndarray]:
    """A muted textured background and its two end colours (``bg = c0 + t * (c1 - c0)``, t in [0, 1]).

    The pattern ``t`` is a linear gradient, value-noise blotches or stripes, or a blend of two of them;
    ``kind="plain"``: the one colour ``c0`` (both end colours are ``c0``).
    """
    if kind == "plain":
        c0 = rng.uniform(60, 190) + rng.uniform(-25, 25, size=3)
        image = np.broadcast_to(np.clip(np.rint(c0), 0, 255).astype(np.uint8), (h, w, 3)).copy()
        return image, np.stack([c0, c0])
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    angle = rng.uniform(0, np.pi)
    along = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w)

    def pattern(kind: int) -> np.ndarray:
        if kind == 0:  # gradient
            return (along - along.min()) / max(float(np.ptp(along)), 1e-6)
        if kind == 1:  # blotches
            return _value_noise(rng, h, w, int(rng.integers(2, 7)))
        period = rng.uniform(6, 24) / max(h, w)  # stripes
        return 0.5 + 0.5 * np.sin(2 * np.pi * along / period)

    kinds = rng.choice(3, size=int(rng.integers(1, 3)), replace=False)
    t = np.mean([pattern(int(k)) for k in kinds], axis=0)
    # Muted colours: a grey-ish base with a small tint, and a second colour close to it.
    c0 = rng.uniform(60, 190) + rng.uniform(-25, 25, size=3)
    c1 = np.clip(c0 + rng.uniform(-45, 45, size=3), 0, 255)
    image = c0 + t[..., None] * (c1 - c0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), np.stack([c0, c1])


def _shape_colour(rng: np.random.Generator, avoid_bg: np.ndarray, avoid: list[np.ndarray]) -> np.ndarray:
    """A saturated colour far from the background's colours and, when possible, from earlier shapes'."""
    colour = rng.integers(0, 256, size=3)
    for _ in range(64):
        colour = rng.integers(0, 256, size=3)
        # Distance to the background's colour segment, sampled at its ends and middle.
        bg = np.stack([avoid_bg[0], avoid_bg.mean(0), avoid_bg[1]])
        if np.linalg.norm(bg - colour, axis=1).min() < MIN_BACKGROUND_CONTRAST:
            continue
        if all(np.linalg.norm(colour - c) >= MIN_SHAPE_CONTRAST for c in avoid):
            return colour
    return colour


# ----------------------------------------------------------------------------------------- shapes
def _shape_bitmap(
    rng: np.random.Generator, label: int, h: int, w: int, radius: tuple[float, float] = RADIUS
) -> np.ndarray:
    """The full (unoccluded) bitmap of one randomly placed shape of class ``label``, of radius
    ``r ~ U(radius) * min(h, w)`` (a rectangle's and an ellipse's longer half-axis).

    Pixel centres ``(x, y)`` are rotated into the shape's frame, ``u = dx cos a + dy sin a``,
    ``v = -dx sin a + dy cos a``; then circle: ``u² + v² <= r²``; rectangle: ``|u| <= a, |v| <= b``;
    ellipse: ``(u/a)² + (v/b)² <= 1``; triangle: the three edge functions
    ``cross(v_{k+1} - v_k, p - v_k)`` share one sign.
    """
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    side = min(h, w)
    r = rng.uniform(*radius) * side
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    angle = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if label == 0:  # circle
        return u * u + v * v <= r * r
    if label == 1:  # rectangle, aspect 1..3
        b = r / rng.uniform(1.0, 3.0)
        return (np.abs(u) <= r) & (np.abs(v) <= b)
    if label == 3:  # ellipse, aspect 1.5..3 so it does not pass for a circle
        b = r / rng.uniform(1.5, 3.0)
        return (u / r) ** 2 + (v / b) ** 2 <= 1.0
    # triangle: vertices on a circle of radius r at jittered angles around thirds of a turn
    angles = angle + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, size=3)
    vx, vy = cx + r * np.cos(angles), cy + r * np.sin(angles)
    edges = [
        (vx[(k + 1) % 3] - vx[k]) * (yy - vy[k]) - (vy[(k + 1) % 3] - vy[k]) * (xx - vx[k]) for k in range(3)
    ]
    return ((edges[0] >= 0) & (edges[1] >= 0) & (edges[2] >= 0)) | (
        (edges[0] <= 0) & (edges[1] <= 0) & (edges[2] <= 0)
    )


def _visible(bitmaps: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each bitmap under painter's order: ``bitmap_k & ~(bitmap_{k+1} | ... )``."""
    covered = np.zeros_like(bitmaps[0]) if bitmaps else None
    out: list[np.ndarray] = [None] * len(bitmaps)  # type: ignore[list-item]
    for k in range(len(bitmaps) - 1, -1, -1):
        out[k] = bitmaps[k] & ~covered
        covered |= bitmaps[k]
    return out


def _check_options(min_objects: int, max_objects: int, radius: tuple[float, float], background: str) -> None:
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if len(radius) != 2 or not 0 < radius[0] <= radius[1] <= 1:
        raise ValueError(f"radius must be (low, high) with 0 < low <= high <= 1, got {radius}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")


def _fits(bitmap: np.ndarray, taken: np.ndarray | None) -> bool:
    """Whether ``bitmap`` lies wholly inside the image (no pixel on its border rows and columns: the
    shapes are convex) and overlaps none of the ``taken`` pixels."""
    inside = not (bitmap[0].any() or bitmap[-1].any() or bitmap[:, 0].any() or bitmap[:, -1].any())
    return inside and (taken is None or not (bitmap & taken).any())


def render(
    index: int,
    *,
    seed: int = 0,
    size: int | tuple[int, int] = 128,
    min_objects: int = 1,
    max_objects: int = 6,
    radius: tuple[float, float] = RADIUS,
    background: str = "textured",
    occlusion: bool = True,
    class_colours: bool = False,
) -> ShapesSample:
    """Render image ``index`` of the shapes set of ``seed``.

    ``size`` is the side of a square image or ``(height, width)``. Between ``min_objects`` and
    ``max_objects`` shapes are drawn; shapes hidden behind later ones are then removed, so an image can
    end with fewer than ``min_objects`` objects, but not with none (the topmost shape is never occluded
    and is redrawn until at least ``MIN_SHAPE_PIXELS`` of it fall inside the image, which needs images of
    about 32 px or more). ``radius``, ``background``, ``occlusion`` and ``class_colours``: the difficulty
    knobs of the module docstring (with ``occlusion=False`` the first shape is kept even if it found no
    place wholly inside the image, so that no image is empty).
    """
    _check_options(min_objects, max_objects, radius, background)
    h, w = _hw(size)
    rng = np.random.default_rng([seed, index])
    background_image, bg_colours = _background(rng, h, w, background)

    labels: list[int] = []
    bitmaps: list[np.ndarray] = []
    colours: list[np.ndarray] = []
    taken = np.zeros((h, w), dtype=bool) if not occlusion else None
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        label = int(rng.integers(len(CLASSES)))
        placed = False
        for _ in range(PLACEMENT_TRIES):  # redraw shapes that fall (almost) outside the image
            bitmap = _shape_bitmap(rng, label, h, w, radius)
            placed = bitmap.sum() >= MIN_SHAPE_PIXELS and (occlusion or _fits(bitmap, taken))
            if placed:
                break
        if taken is not None:
            if not placed and bitmaps:
                continue  # no free place left: fewer shapes, never an overlap
            taken |= bitmap
        labels.append(label)
        bitmaps.append(bitmap)
        if class_colours:
            jitter = rng.integers(-CLASS_COLOUR_JITTER, CLASS_COLOUR_JITTER + 1, size=3)
            colours.append(np.clip(CLASS_COLOURS[label] + jitter, 0, 255))
        else:
            colours.append(_shape_colour(rng, bg_colours, colours))

    def keep_mask(visible: list[np.ndarray]) -> list[bool]:
        return [
            int(v.sum()) >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * int(b.sum()))
            for v, b in zip(visible, bitmaps, strict=True)
        ]

    keep = keep_mask(_visible(bitmaps))
    labels, bitmaps, colours = (
        [x for x, k in zip(seq, keep, strict=True) if k] for seq in (labels, bitmaps, colours)
    )
    visible = _visible(bitmaps)

    image = background_image.copy()
    semantic = np.zeros((h, w), dtype=np.uint8)
    for label, mask, colour in zip(labels, visible, colours, strict=True):
        image[mask] = colour
        semantic[mask] = label + 1
    boxes = [bitmap_box(m) for m in visible]
    return ShapesSample(image, labels, visible, boxes, semantic, background_image)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- datasets
def generate(
    out_dir: str | Path,
    num_images: int,
    *,
    seed: int = 0,
    size: int | tuple[int, int] = 128,
    min_objects: int = 1,
    max_objects: int = 6,
    radius: tuple[float, float] = RADIUS,
    background: str = "textured",
    occlusion: bool = True,
    class_colours: bool = False,
) -> AnnotationSet:
    """Render ``num_images`` images to ``out_dir/images/shapes_00000.png`` ... and return their
    annotations (bitmap masks and semantic masks as arrays, ``classes = CLASSES``, ids from 0).
    The keyword options are :func:`render`'s."""
    from PIL import Image

    _check_options(min_objects, max_objects, radius, background)
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records: list[ImageRecord] = []
    next_id = 1
    options = {
        "min_objects": min_objects,
        "max_objects": max_objects,
        "radius": radius,
        "background": background,
        "occlusion": occlusion,
        "class_colours": class_colours,
    }
    for i in range(num_images):
        s = render(i, seed=seed, size=size, **options)  # type: ignore[arg-type]
        name = f"shapes_{i:05d}.png"
        Image.fromarray(s.image).save(image_dir / name)
        instances = []
        for label, mask, box in zip(s.labels, s.masks, s.boxes, strict=True):
            instances.append(Instance(box=box, label=label, mask=mask, id=next_id))
            next_id += 1
        h, w = s.semantic.shape
        records.append(ImageRecord(i, image_dir / name, w, h, instances, semantic=s.semantic, file_name=name))
    return AnnotationSet(records, classes=list(CLASSES), source=str(out_dir))


def write(
    out_dir: str | Path,
    fmt: str,
    num_images: int,
    *,
    seed: int = 0,
    size: int | tuple[int, int] = 128,
    min_objects: int = 1,
    max_objects: int = 6,
    radius: tuple[float, float] = RADIUS,
    background: str = "textured",
    occlusion: bool = True,
    class_colours: bool = False,
    **options,
) -> Path:
    """Generate the shapes set and write it under ``out_dir`` in format ``fmt`` (a name of
    :data:`segdet.data.formats.FORMATS`; ``options`` go to its writer; the others are :func:`render`'s).
    Returns the path its reader takes back.

    Images are rendered into a scratch folder inside ``out_dir`` (same file system, so the writer can
    hard-link them) that is removed afterwards, leaving only the format's own layout.
    """
    from segdet.data.formats import write_dataset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".shapes-", dir=out_dir) as scratch:
        dataset = generate(
            scratch,
            num_images,
            seed=seed,
            size=size,
            min_objects=min_objects,
            max_objects=max_objects,
            radius=radius,
            background=background,
            occlusion=occlusion,
            class_colours=class_colours,
        )
        dataset.source = str(out_dir)
        path = write_dataset(fmt, dataset, out_dir, **options)
    return path
