"""``segdet eval`` never reports metrics over a set that silently lost images, and no image is counted
twice in place of an unreadable one (issue 11, item 7)."""

from __future__ import annotations

import json
import shutil

import pytest

from segdet.cli.main import main
from segdet.data import shapes
from segdet.data.dataset import SegDetDataset
from segdet.data.formats import read_dataset, write_dataset


@pytest.fixture
def mask_set(tmp_path):
    """The tiny run's classes as a mask-folder dataset of 4 images, and a copy whose second image is
    truncated (the PNG cut after 60 bytes)."""
    dataset = shapes.generate(tmp_path / "shapes", 4, seed=11, size=32)
    good = write_dataset("masks", dataset, tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    broken = sorted((bad / "images").iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:60])
    return good, bad, broken


def test_dataset_skips_without_counting_the_next_image_twice(mask_set):
    """The bug: ``__getitem__`` answered a bad index with the *next* image, so evaluation counted that
    one twice. With ``substitute=False`` (what evaluation uses) the bad index yields ``None``; it is
    counted in :meth:`unreadable` either way."""
    _, bad, broken = mask_set
    annotations = read_dataset("masks", bad)
    evaluation = SegDetDataset(annotations, semantic=True, substitute=False)
    samples = [evaluation[i] for i in range(len(evaluation))]
    assert samples[1] is None and all(s is not None for k, s in enumerate(samples) if k != 1)
    ids = [r.id for r in annotations.images]
    assert [s[1]["image_id"] for s in samples if s is not None] == [ids[0], ids[2], ids[3]]
    assert evaluation.unreadable() == [broken]
    training = SegDetDataset(annotations, semantic=True)
    assert training[1][1]["image_id"] == ids[2] and training.unreadable() == [broken]


def test_eval_refuses_a_set_that_lost_an_image_unless_skip_bad(
    tmp_path, capsys, mask_set, tiny_segmentation_run
):
    """Before the fix: exit 0, nothing on stderr, and metrics of a set in which the image after the
    truncated one counted twice. Now: one line naming the file and ``--skip-bad``; with ``--skip-bad``
    the metrics are exactly those of the set without that image (reference: ``segdet eval`` on a copy
    without it; tolerance 0) and the skip is said on stderr."""
    good, bad, broken = mask_set
    ckpt = str(tiny_segmentation_run / "last.safetensors")
    code = main(["eval", ckpt, "--data", str(bad), "--format", "masks"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert str(broken) in err and "--skip-bad" in err

    out = tmp_path / "skipped.json"
    code = main(["eval", ckpt, "--data", str(bad), "--format", "masks", "--skip-bad", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0 and "1 images could not be decoded" in err and "other 3 images" in err

    without = tmp_path / "without"
    shutil.copytree(good, without)
    (without / "images" / broken.name).unlink()
    (without / "labels" / f"{broken.stem}.png").unlink()
    reference = tmp_path / "reference.json"
    assert main(["eval", ckpt, "--data", str(without), "--format", "masks", "--out", str(reference)]) == 0
    assert json.loads(out.read_text()) == json.loads(reference.read_text())


def test_eval_refuses_records_the_reader_left_out(tmp_path, capsys, mask_set, tiny_segmentation_run):
    """A record the reader could not use (here an image without its label PNG) is as silent a loss."""
    good, _, _ = mask_set
    partial = tmp_path / "partial"
    shutil.copytree(good, partial)
    next((partial / "labels").iterdir()).unlink()
    ckpt = str(tiny_segmentation_run / "last.safetensors")
    argv = ["eval", ckpt, "--data", str(partial), "--format", "masks"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--skip-bad" in err
    assert main([*argv, "--skip-bad"]) == 0
    assert "1 records could not be read" in capsys.readouterr().err
