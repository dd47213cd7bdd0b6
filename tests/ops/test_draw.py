"""segdet.ops.draw: pixel-exact checks of palettes, mask blending, box outlines, semantic colouring and
PNG round trips (references: hand-computed palette values, the alpha-blend formula, Pillow read-back)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import segdet.ops.draw as draw_module
from segdet.ops import color_palette, colorize_semantic, draw_detections, overlay_semantic, save_png


def random_image(h: int = 64, w: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_color_palette_values_distinct_deterministic():
    """The first entries are Pascal VOC's colours 1..5 (by hand from the bit-interleaving rule); 1000
    colours are pairwise distinct, none is black, and a shorter palette is a prefix of a longer one."""
    assert color_palette(5) == [(128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128)]
    # VOC index 8 = 0b001_000: its second group of bits sets the next bit of R.
    assert color_palette(8)[7] == (64, 0, 0)
    palette = color_palette(1000)
    assert len(set(palette)) == 1000 and (0, 0, 0) not in palette
    assert palette[:20] == color_palette(20) and color_palette(0) == []
    assert all(0 <= c <= 255 for color in palette for c in color)


def test_color_palette_is_the_voc_devkit_palette_from_index_1():
    """color_palette(255) == segdet.ops.palette.voc_palette (the VOC devkit's labelcolormap, written
    independently, vectorised over bits) entries 1..255."""
    from segdet.ops.palette import voc_palette

    assert color_palette(255) == [tuple(int(c) for c in rgb) for rgb in voc_palette(256)[1:]]


def test_colorize_semantic_maps_values_exactly():
    """Every class value k becomes palette[k] exactly, ignore_index becomes black; out-of-range raises."""
    num_classes = 7
    g = torch.Generator().manual_seed(1)
    sem = torch.randint(0, num_classes, (32, 48), generator=g)
    sem[torch.rand(32, 48, generator=g) < 0.2] = 255
    colors = colorize_semantic(sem, num_classes, ignore_index=255)
    assert colors.shape == (3, 32, 48) and colors.dtype == torch.uint8
    palette = color_palette(num_classes)
    for y, x in [(0, 0), (5, 7), (31, 47), *zip(range(32), range(0, 48, 2), strict=False)]:
        value = int(sem[y, x])
        expected = (0, 0, 0) if value == 255 else palette[value]
        assert tuple(colors[:, y, x].tolist()) == expected
    # Whole-image check against a numpy lookup.
    lut = np.array([*palette, *([(0, 0, 0)] * (256 - num_classes))], dtype=np.uint8)
    np.testing.assert_array_equal(colors.permute(1, 2, 0).numpy(), lut[sem.numpy()])
    with pytest.raises(ValueError, match="7"):
        colorize_semantic(torch.full((4, 4), 7), num_classes)
    with pytest.raises(ValueError):
        colorize_semantic(torch.full((4, 4), -1), num_classes)


def test_overlay_semantic_blends_labelled_pixels_only():
    """overlay = round((1 - alpha) image + alpha colour) on labelled pixels, the image on ignored ones."""
    image = random_image(16, 20)
    sem = torch.randint(0, 3, (16, 20), generator=torch.Generator().manual_seed(2))
    sem[:4] = 255
    out = overlay_semantic(image, sem, num_classes=3, ignore_index=255, alpha=0.4)
    colors = colorize_semantic(sem, 3).float()
    expected = (0.6 * image.float() + 0.4 * colors).round().to(torch.uint8)
    assert torch.equal(out[:, 4:], expected[:, 4:])
    assert torch.equal(out[:, :4], image[:, :4])


def test_mask_pixels_move_toward_colour_and_others_stay():
    """Inside a drawn mask every pixel is the alpha blend (1 - a) image + a colour (to 1 grey level,
    torchvision truncates); outside masks and box outlines pixels are unchanged; the input is not modified."""
    image = random_image()
    before = image.clone()
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0]])
    mask = torch.zeros(1, 64, 80, dtype=torch.bool)
    mask[0, 26:36, 15:35] = True  # below the caption in the top-left corner of the box
    out = draw_detections(image, boxes, labels=torch.tensor([2]), masks=mask, alpha=0.5)
    assert torch.equal(image, before)
    color = torch.tensor(color_palette(3)[2], dtype=torch.float32)[:, None]
    inside = out[:, mask[0]].float()
    expected = 0.5 * image[:, mask[0]].float() + 0.5 * color
    assert (inside - expected).abs().max() <= 1
    # Pixels move toward the colour: never further from it than before.
    assert ((inside - color).abs() <= (image[:, mask[0]].float() - color).abs() + 1).all()
    outside = torch.ones(64, 80, dtype=torch.bool)
    outside[8:42, 8:42] = False  # the box, its 2 px outline and the caption lie in here
    assert torch.equal(out[:, outside], image[:, outside])


def test_box_outline_pixels_have_the_box_colour():
    """A box [10, 40) x [20, 50) covers pixel columns 10..39 and rows 20..49: its 2 px outline is on
    columns 10-11 and 38-39 and rows 20-21 and 48-49 in its class colour; column 40 and row 50 (outside
    the box) are unchanged; colours follow labels (class 0 and 4 here)."""
    image = random_image()
    boxes = torch.tensor([[10.0, 20.0, 40.0, 50.0], [50.0, 5.0, 70.0, 25.0]])
    out = draw_detections(image, boxes, labels=torch.tensor([0, 4]))
    palette = color_palette(5)
    for i, (x1, y1, x2, y2) in enumerate([(10, 20, 40, 50), (50, 5, 70, 25)]):
        color = torch.tensor(palette[[0, 4][i]], dtype=torch.uint8)[:, None]
        rows = torch.arange(y1 + 12, y2)  # below the caption, which sits in the top-left corner
        for x in (x1, x1 + 1, x2 - 2, x2 - 1):
            assert torch.equal(out[:, rows, x], color.expand(3, len(rows))), (i, x)
        cols = torch.arange(x1, x2)
        for y in (y2 - 2, y2 - 1):
            assert torch.equal(out[:, y, cols], color.expand(3, len(cols))), (i, y)
        assert torch.equal(out[:, y1 + 12 : y2, x2], image[:, y1 + 12 : y2, x2])
        assert torch.equal(out[:, y2, x1:x2], image[:, y2, x1:x2])


def test_captions_and_overlaps(monkeypatch):
    """Captions are "name score" with two decimals (the class index without names, the score alone
    without labels); overlapping masks go to the higher-scoring detection instead of torchvision's black."""
    seen = {}
    real = draw_module.draw_bounding_boxes

    def spy(image, boxes, labels=None, **kwargs):
        seen["labels"] = labels
        return real(image, boxes, labels=labels, **kwargs)

    monkeypatch.setattr(draw_module, "draw_bounding_boxes", spy)
    image = random_image()
    boxes = torch.tensor([[0.0, 0.0, 30.0, 60.0], [20.0, 0.0, 60.0, 60.0]])
    labels, scores = torch.tensor([1, 0]), torch.tensor([0.5, 0.874])
    masks = torch.zeros(2, 64, 80, dtype=torch.bool)  # below the captions at the top of the boxes
    masks[0, 30:50, 5:30] = True
    masks[1, 30:55, 20:50] = True
    out = draw_detections(image, boxes, labels, scores, masks, class_names=["cat", "dog"], alpha=1.0)
    assert seen["labels"] == ["dog 0.50", "cat 0.87"]
    # alpha 1: mask pixels are exactly the colour; the overlap (rows 30-49, columns 20-29) belongs to
    # detection 1 (score 0.874, class 0).
    palette = color_palette(2)
    assert tuple(out[:, 40, 25].tolist()) == palette[0]
    assert tuple(out[:, 40, 10].tolist()) == palette[1]

    draw_detections(image, boxes, labels)
    assert seen["labels"] == ["1", "0"]
    draw_detections(image, boxes, scores=scores)
    assert seen["labels"] == ["0.50", "0.87"]
    draw_detections(image, boxes)
    assert seen["labels"] is None


def test_draw_detections_inputs():
    """No detections returns the image unchanged; grey images become RGB; probability masks [N, 1, H, W]
    are drawn where > 0.5; mismatched lengths raise."""
    image = random_image()
    assert torch.equal(draw_detections(image, torch.zeros(0, 4)), image)
    grey = draw_detections(image[:1], torch.tensor([[1.0, 1.0, 9.0, 9.0]]))
    assert grey.shape == (3, 64, 80) and torch.equal(grey[:, 30:, 30:], image[:1, 30:, 30:].expand(3, -1, -1))
    probs = torch.zeros(1, 1, 64, 80)
    probs[0, 0, 20:30, 20:30] = 0.9
    probs[0, 0, 40:50, 40:50] = 0.3
    out = draw_detections(image, torch.tensor([[15.0, 15.0, 55.0, 55.0]]), masks=probs, alpha=1.0)
    assert tuple(out[:, 25, 25].tolist()) == color_palette(1)[0]
    assert torch.equal(out[:, 40:50, 40:50], image[:, 40:50, 40:50])
    with pytest.raises(ValueError, match="labels"):
        draw_detections(image, torch.zeros(2, 4), labels=torch.tensor([1]))


def test_save_png_round_trip(tmp_path):
    """save_png creates missing parent folders and the PNG reads back (Pillow) identical, RGB and grey."""
    image = random_image(33, 47, seed=3)
    path = save_png(image, tmp_path / "a" / "b" / "img.png")
    assert path.exists()
    with Image.open(path) as png:
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), image.permute(1, 2, 0).numpy())
    grey = save_png(image[:1], tmp_path / "grey.png")
    with Image.open(grey) as png:
        assert png.mode == "L"
        np.testing.assert_array_equal(np.asarray(png), image[0].numpy())
    with pytest.raises(ValueError):
        save_png(image.float(), tmp_path / "bad.png")
