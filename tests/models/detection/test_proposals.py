"""Selective-search proposals (OpenCV contrib, the ``proposals`` extra that ``dev`` pulls in: these tests
require cv2 and never skip), their disk cache, their recall and ``segdet proposals``.

References: recall against hand-made cases; the synthetic shapes' ground truth (recall bounds measured:
fast mode at the default 128 px short side covers every object at IoU 0.5 with under 100 boxes per
64 px image; the bound is 1.0, at 0.7 it is 0.9 (measured 0.94))."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segdet.data import shapes
from segdet.data.io import load_image
from segdet.models.detection.proposals import (
    ProposalCache,
    SelectiveSearchProposals,
    SelectiveSearchSettings,
    image_key,
    image_pixels,
    proposal_recall,
    selective_search,
)
from segdet.models.detection.proposals.cache import CacheEntry
from segdet.models.detection.proposals.dataset import dataset_proposals, recall_table


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    return shapes.generate(tmp_path_factory.mktemp("shapes") / "s", 2, seed=0, size=64)


def pixels_of(record) -> np.ndarray:
    return load_image(record.path).permute(1, 2, 0).numpy()


@pytest.mark.opencv_contrib
def test_selective_search_boxes_are_deterministic_and_inside(shapes_set):
    """Float32 xyxy boxes of positive size inside the image, the same list on every call (the ranking's
    ``rand()`` is seeded); quality mode gives more boxes than fast mode."""
    pixels = pixels_of(shapes_set.images[0])
    fast = selective_search(pixels, SelectiveSearchSettings())
    again = selective_search(pixels, SelectiveSearchSettings())
    quality = selective_search(pixels, SelectiveSearchSettings(mode="quality"))
    assert fast.dtype == np.float32 and fast.ndim == 2 and fast.shape[1] == 4
    np.testing.assert_array_equal(fast, again)
    assert (fast[:, 2:] > fast[:, :2]).all()
    assert fast.min() >= 0 and fast[:, [0, 2]].max() <= 64 and fast[:, [1, 3]].max() <= 64
    assert len(quality) > len(fast) > 10


def test_settings_validate_and_key():
    with pytest.raises(ValueError, match="mode"):
        SelectiveSearchSettings(mode="slow")
    with pytest.raises(ValueError, match="min_side"):
        SelectiveSearchSettings(min_side=600, max_side=500)
    assert SelectiveSearchSettings().key() == SelectiveSearchSettings().key()
    assert SelectiveSearchSettings().key() != SelectiveSearchSettings(mode="quality").key()
    assert SelectiveSearchSettings().key() != SelectiveSearchSettings(seed=1).key()


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((64, 64), 2.0),
        ((1000, 800), 0.5),
        ((300, 400), 1.0),
        ((100, 1000), 1.28),
        ((4, 2000), 500 / 8000**0.5),
    ],
)
def test_search_scale_upscales_small_images_within_a_pixel_budget(size, expected):
    """The resize of the module docstring, hand-computed: the longer side at most 500, the shorter at
    least 128 (which wins) -- but never past 500² pixels, so a 4 x 2000 strip is not made 128 x 64000.
    Exact to 1e-12."""
    from segdet.models.detection.proposals.selective_search import search_scale

    scale = search_scale(*size, SelectiveSearchSettings())
    assert scale == pytest.approx(expected, abs=1e-12)
    assert size[0] * size[1] * scale**2 <= 500**2 * (1 + 1e-12)


def test_recall_hand_computed():
    """Two objects; the first proposal hits object 0 at IoU 0.6, the second object 1 at IoU 1."""
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float64)]
    props = [np.array([[0, 0, 10, 6], [20, 20, 30, 30], [50, 50, 60, 60]], dtype=np.float32)]
    r = proposal_recall(gt, props, counts=[1, 2, 5])
    assert r["recall@0.5"] == [0.5, 1.0, 1.0]
    assert r["recall@0.7"] == [0.0, 0.5, 0.5]
    # AR: object 0 counts at t = 0.5, 0.55, 0.6 (3 of 10 thresholds), object 1 at all 10
    assert r["AR"] == pytest.approx([0.15, 0.65, 0.65])
    assert np.isnan(proposal_recall([np.zeros((0, 4))], [props[0]], [1])["recall@0.5"][0])


def test_image_pixels_round_trip():
    """The float image the data pipeline gives (``uint8 / 255``) keys the cache like its pixels."""
    pixels = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    back = image_pixels(pixels.float().div_(255.0))
    np.testing.assert_array_equal(back, pixels.permute(1, 2, 0).numpy())
    assert image_key(back) == image_key(pixels.permute(1, 2, 0).numpy())
    assert image_key(back) != image_key(back[:, ::-1])


def test_cache_round_trip_no_pickle_and_bad_entries(tmp_path, caplog):
    """safetensors entries (the header is JSON: nothing is unpickled), read back exactly; an entry of
    another size or a corrupt file is reported and treated as missing."""
    cache = ProposalCache(tmp_path, SelectiveSearchSettings())
    boxes = np.array([[1, 2, 3, 4], [0, 0, 5, 5]], dtype=np.float32)
    path = cache.put("ab" * 32, (10, 12), CacheEntry(boxes, 0.25))
    assert path.suffix == ".safetensors" and path.parent.parent == cache.folder
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert json.loads(path.read_bytes()[8 : 8 + header_len])["boxes"]["dtype"] == "F32"
    entry = cache.get("ab" * 32, (10, 12))
    np.testing.assert_array_equal(entry.boxes, boxes)
    assert entry.seconds == 0.25
    assert cache.get("ab" * 32, (11, 12)) is None
    path.write_bytes(b"\x80\x04garbage")
    assert cache.get("ab" * 32, (10, 12)) is None
    assert "unreadable" in caplog.text
    assert json.loads((cache.folder / "settings.json").read_text())["mode"] == "fast"


@pytest.mark.opencv_contrib
def test_source_caches_and_mirrors(shapes_set, tmp_path, monkeypatch):
    """First call searches and writes the cache; a second source on the same folder reads it; the
    mirrored image's proposals are the mirrored cached boxes (no search); ``num_proposals`` and
    ``min_size`` cut the list."""
    from segdet.models.detection.proposals import source as source_module

    pixels = pixels_of(shapes_set.images[0])
    settings = SelectiveSearchSettings()
    first = SelectiveSearchProposals(settings, tmp_path, num_proposals=(5, 1000))
    entry, hit = first.lookup(pixels)
    assert not hit and len(list(tmp_path.rglob("*.safetensors"))) == 1

    def no_search(*args):
        raise AssertionError("searched although cached")

    monkeypatch.setattr(source_module, "selective_search", no_search)
    second = SelectiveSearchProposals(settings, tmp_path, num_proposals=(5, 1000), min_size=4.0)
    again, hit = second.lookup(pixels)
    assert hit
    np.testing.assert_array_equal(again.boxes, entry.boxes)
    mirrored, hit = second.lookup(np.ascontiguousarray(pixels[:, ::-1]))
    assert hit
    np.testing.assert_allclose(mirrored.boxes[:, [0, 2]], 64 - entry.boxes[:, [2, 0]])
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    train, test = second([image], training=True)[0], second([image])[0]
    assert len(train) == 5
    sides = torch.minimum(test[:, 2] - test[:, 0], test[:, 3] - test[:, 1])
    assert len(test) <= len(entry.boxes) and (sides >= 4.0).all()


@pytest.mark.opencv_contrib
def test_shapes_recall(shapes_set):
    """Every object of the synthetic shapes is covered at IoU 0.5 by the top 100 fast-mode boxes."""
    source = SelectiveSearchProposals(SelectiveSearchSettings(), "")
    table = recall_table(dataset_proposals(shapes_set, source, progress=False), [100, 2000])
    assert table["recall@0.5"][0] == 1.0, table
    assert table["recall@0.7"][1] >= 0.9, table
    assert table["images"] == 2 and table["computed"] == 2


@pytest.mark.opencv_contrib
def test_proposals_command(shapes_set, tmp_path, capsys):
    """``segdet proposals`` writes the cache, prints the recall table and the JSON report; the second run
    computes nothing; a cache inside the dataset is refused."""
    from segdet.cli.main import main
    from segdet.data.formats import write_dataset

    root = tmp_path / "coco"
    write_dataset("coco", shapes_set, root)
    argv = ["proposals", str(root), "--cache", str(tmp_path / "c"), "--counts", "10", "100", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "recall@0.5" in printed and "(2 computed now)" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == [10, 100] and report["recall@0.5"][1] == 1.0
    assert len(list((tmp_path / "c").rglob("*.safetensors"))) == 2
    assert main(argv) == 0
    assert "(0 computed now)" in capsys.readouterr().out
    assert main(["proposals", str(root), "--cache", str(root / "images" / "cache")]) == 1
    assert "inside the dataset" in capsys.readouterr().err
