"""The synthetic train / validation split of a config (``data.synthetic*``): sizes, difficulty, and a
validation set that is held out (another seed: no image of it is a training image).

Reference: :func:`segdet.data.shapes.render` itself (exact: the split's images are its images at the
config's seed, size and difficulty).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segdet.data import shapes
from segdet.engine.config import load_config
from segdet.engine.data_splits import VAL_SEED_OFFSET, train_val_splits
from segdet.errors import ConfigError


def _config(tmp_path, *overrides: str):
    base = [f"output_dir={tmp_path}", "data.synthetic=6", "data.synthetic_size=32", "train.seed=3"]
    return load_config(None, [*base, *overrides])


def test_easy_split_with_its_own_validation_size(tmp_path):
    """``synthetic_difficulty=easy``, ``synthetic_val=5``: 6 training images equal to the easy renders
    of ``train.seed``, 5 validation images equal to those of ``train.seed + VAL_SEED_OFFSET``; no
    validation image equals any training image."""
    train, val = train_val_splits(_config(tmp_path, "data.synthetic_difficulty=easy", "data.synthetic_val=5"))
    assert (len(train.images), len(val.images)) == (6, 5)
    pixels = {}
    for split, seed in ((train, 3), (val, 3 + VAL_SEED_OFFSET)):
        pixels[seed] = []
        for i, record in enumerate(split.images):
            expected = shapes.render(i, seed=seed, size=32, **shapes.EASY)
            got = np.asarray(Image.open(record.path).convert("RGB"))
            assert np.array_equal(got, expected.image)
            assert np.array_equal(record.semantic, expected.semantic)
            pixels[seed].append(got.tobytes())
    assert not set(pixels[3]) & set(pixels[3 + VAL_SEED_OFFSET])


def test_defaults_keep_the_standard_set_and_a_quarter(tmp_path):
    """Without the new keys: the standard set and max(4, synthetic // 4) validation images, as before."""
    train, val = train_val_splits(_config(tmp_path))
    assert len(val.images) == 4
    first = np.asarray(Image.open(train.images[0].path).convert("RGB"))
    assert np.array_equal(first, shapes.render(0, seed=3, size=32).image)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.synthetic_difficulty=hard", "data.synthetic_difficulty: 'hard' must be standard or easy"),
        ("data.synthetic_val=-1", "data.synthetic_val: -1 must be 0"),
        ("data.fraction=0", r"data.fraction: 0.0 must be in \(0, 1\]"),
        ("data.fraction=1.5", r"data.fraction: 1.5 must be in \(0, 1\]"),
    ],
)
def test_bad_values_are_named(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, override)


def test_records_left_out_while_reading_are_reported_in_one_line(tmp_path, capsys):
    """Training on a YOLO set with a 4-value row and a box sticking out said nothing (the reader's lines
    are logged with ``-v`` only): one line on stderr counts what was left out and repaired."""
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (40, 30)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n0 0.95 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("names: [thing]\n")
    cfg = load_config(None, ["task=detection", "data.format=yolo", f"data.train.path={root}"])
    train_val_splits(cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"segdet: {root}: 1 records left out as unusable and 1 warnings (boxes clipped, files ignored) "
        f"while reading; `segdet data check {root}` lists them, data.strict: true refuses the set"
    ]


def test_data_paths_are_made_absolute_from_where_the_run_starts(tmp_path, monkeypatch, capsys):
    """A config's ``../shared/data/camvid`` is relative to the current folder; the run's saved config kept
    it so, and ``segdet eval RUN/best.safetensors`` failed from any other folder. ``segdet train`` makes
    the paths absolute first (so a missing folder is named in full, too)."""
    from segdet.cli.main import main
    from segdet.engine.data_splits import absolute_data_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.train.path=ds", "data.val.path=../v", "data.val.images=img"])
    absolute_data_paths(cfg)
    assert cfg.data.train.path == str(tmp_path / "ds") and cfg.data.train.images is None
    assert (cfg.data.val.path, cfg.data.val.images) == (str(tmp_path.parent / "v"), str(tmp_path / "img"))
    code = main(
        ["train", "task=segmentation", "data.format=masks", "data.train.path=nowhere", "output_dir=runs"]
    )
    assert code == 1 and str(tmp_path / "nowhere") in capsys.readouterr().err


def test_fraction_keeps_part_of_the_training_images_and_the_whole_validation_set(tmp_path):
    """``data.fraction=0.25`` of 40 files held out at 0.2: 8 validation images as without it, and 8 of
    the 32 training images, a seeded choice (the same on every run) in the set's order."""
    from segdet.data.formats import write_dataset

    source = write_dataset("coco", shapes.generate(tmp_path / "s", 40, seed=0, size=32), tmp_path / "c")
    base = [f"output_dir={tmp_path}", "data.format=coco", f"data.train.path={source}"]
    base.append("data.val_fraction=0.2")
    full_train, full_val = train_val_splits(load_config(None, base))
    train, val = train_val_splits(load_config(None, [*base, "data.fraction=0.25"]))
    again, _ = train_val_splits(load_config(None, [*base, "data.fraction=0.25"]))
    assert [im.id for im in val.images] == [im.id for im in full_val.images]
    ids = [im.id for im in train.images]
    assert len(ids) == 8 and ids == sorted(ids) and ids == [im.id for im in again.images]
    assert set(ids) <= {im.id for im in full_train.images}
