"""Images in every mode are read by their meaning, and a decompression bomb is a one-line error naming
the limit and how to raise it (issue 11, items 8 and 11)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.cli.main import main
from segdet.data.io import MAX_PIXELS_VARIABLE, load_image
from segdet.errors import DataError


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming ``width x height`` grey pixels, with one tiny IDAT: a few hundred
    bytes that would decode to ``width * height`` bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * (width + 1))  # one row; Pillow reads the size from the header first
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    """Item 8: an ``I;16`` PNG loaded almost white (values clipped at 255). Reference: value * 255 /
    65535, rounded (what an 8-bit export of the same image holds); tolerance 0."""
    values = np.array([[0, 257, 32768], [65535, 1000, 40000]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    image = load_image(path)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert image.shape == (3, 2, 3)
    for channel in image.numpy():
        np.testing.assert_array_equal(channel, expected)


def test_float_grey_images_in_unit_range_are_scaled(tmp_path):
    values = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    path = tmp_path / "grey.tif"
    Image.fromarray(values, mode="F").save(path)
    np.testing.assert_array_equal(load_image(path)[0].numpy(), np.rint(values * 255).astype(np.uint8))


def test_data_check_notes_converted_modes(tmp_path, capsys):
    """Item 8: ``data check`` said nothing about 16-bit images; now each is a warning."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / "images" / "b.png")
    gt = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 8, "height": 8},
            {"id": 2, "file_name": "b.png", "width": 8, "height": 8},
        ],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    code = main(["data", "check", str(tmp_path / "gt.json"), "--images", str(tmp_path / "images")])
    out = capsys.readouterr().out
    assert code == 0
    assert "warning: " in out and "a.png" in out and "16-bit grey image" in out
    assert "0 errors, 1 warnings" in out


def test_a_decompression_bomb_is_one_problem_among_others(tmp_path, capsys):
    """Item 11: a 20000 x 20000 PNG raised PIL's DecompressionBombError out of ``data check`` (no other
    problem reported) and ``predict``. Now it is one error naming the limit and the variable raising it,
    and the other problems are still reported."""
    (tmp_path / "images").mkdir()
    png_claiming(tmp_path / "images" / "bomb.png", 20000, 20000)
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / "images" / "small.png")
    gt = {
        "images": [
            {"id": 1, "file_name": "bomb.png", "width": 20000, "height": 20000},
            {"id": 2, "file_name": "small.png", "width": 9, "height": 8},  # another problem
        ],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    code = main(["data", "check", str(tmp_path / "gt.json"), "--images", str(tmp_path / "images")])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert "400000000 pixels" in captured.out and MAX_PIXELS_VARIABLE in captured.out
    assert "image is 8x8 but its annotation says 9x8" in captured.out
    assert "2 errors" in captured.out


def test_the_pixel_limit_can_be_lowered_and_raised(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "500")
    with pytest.raises(
        DataError, match=r"600 pixels, above the limit of 500 pixels.*SEGDET_MAX_IMAGE_PIXELS"
    ):
        load_image(path)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "600")
    assert load_image(path).shape == (3, 20, 30)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "many")
    with pytest.raises(DataError, match="not a whole number"):
        load_image(path)


def test_raising_the_limit_above_pillows_lets_large_images_through(tmp_path, monkeypatch):
    from segdet.data.io import image_size

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    bomb = png_claiming(tmp_path / "big.png", 20000, 20000)
    with pytest.raises(DataError, match="above the limit"):
        image_size(bomb)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, str(20000 * 20000))
    assert image_size(bomb) == (20000, 20000)  # header only: nothing is decoded


def _tagged(path: Path, orientation: int, size: tuple[int, int] = (100, 40)) -> Path:
    """An RGB image of ``size`` (w, h) as stored, with the EXIF orientation tag ``orientation``."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.full((size[1], size[0], 3), 9, np.uint8)).save(path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_read_from_jpeg_and_png_headers(tmp_path):
    """The tag as Pillow reads it (reference: ``PIL.Image.Exif``); 9 is no orientation, so 1."""
    from segdet.data.io import exif_orientation, open_image

    for name, value, expected in [("a.jpg", 6, 6), ("b.png", 8, 8), ("c.jpg", 1, 1), ("d.jpg", 9, 1)]:
        with open_image(_tagged(tmp_path / name, value)) as im:
            assert exif_orientation(im) == expected, name
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "plain.png")
    with open_image(tmp_path / "plain.png") as im:
        assert exif_orientation(im) == 1


@pytest.mark.parametrize("quick", [False, True])
def test_data_check_warns_of_an_exif_orientation_it_does_not_apply(tmp_path, capsys, quick):
    """A phone photo stored 100 x 40 with "turn 90 degrees clockwise to view": segdet uses the stored
    pixels (as pycocotools and torchvision do; Detectron2 and Ultralytics turn it). Annotated at the
    stored size it is a warning; annotated at the turned size (40 x 100, what a viewer shows) the size
    error names the tag as the cause."""
    (tmp_path / "images").mkdir()
    _tagged(tmp_path / "images" / "stored.jpg", 6)
    _tagged(tmp_path / "images" / "turned.jpg", 6)
    _tagged(tmp_path / "images" / "flipped.png", 3)
    gt = {
        "images": [
            {"id": 1, "file_name": "stored.jpg", "width": 100, "height": 40},
            {"id": 2, "file_name": "turned.jpg", "width": 40, "height": 100},
            {"id": 3, "file_name": "flipped.png", "width": 100, "height": 40},
        ],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    args = ["data", "check", str(tmp_path / "gt.json"), "--images", str(tmp_path / "images")]
    code = main(args + (["--quick"] if quick else []))
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    (stored,) = [line for line in lines if "stored.jpg" in line]
    assert stored.startswith("warning") and "EXIF orientation 6 (turn 90 degrees clockwise to view)" in stored
    (turned,) = [line for line in lines if "turned.jpg" in line]
    assert turned.startswith("error") and "image is 100x40 but its annotation says 40x100" in turned
    assert "EXIF orientation 6" in turned and "shows it as 40x100, the size annotated" in turned
    (flipped,) = [line for line in lines if "flipped.png" in line]
    assert flipped.startswith("warning") and "EXIF orientation 3 (turn 180 degrees to view)" in flipped
    assert "1 errors, 2 warnings" in lines[-1]
