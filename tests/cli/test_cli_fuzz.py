"""A hypothesis fuzz of the command line with bad configs, overrides and paths (issue 11): whatever comes
in, what comes out is an exit status 0, 1 (one ``segdet: error:`` line naming what is wrong) or 2 (a usage
error) -- never a traceback, and never the catch-all ``unexpected`` line that stands in for one.

Kept cheap (a few seconds): training is cut to one optimiser step and one evaluation on at most a few
synthetic 16-32 px images, and every path command fails or finishes on tiny files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segdet.cli.main import UNEXPECTED, main
from segdet.engine.config import Config, to_dict

# SEGDET_FUZZ_EXAMPLES=500 fuzzes longer (the suite runs the defaults: a few seconds).
EXAMPLES = int(os.environ.get("SEGDET_FUZZ_EXAMPLES", "20"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        keys += dotted_keys(v, key + ".") if isinstance(v, dict) and v else [key]
    return keys


CONFIG_KEYS = [k for k in dotted_keys(to_dict(Config())) if k != "model.kwargs"]
CONFIG_KEYS += ["data.train.path", "data.val.path", "train.epoch", "optim", "data.train", "nosuch.key"]


def yaml_scalar(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return json.dumps(value)


VALUES = st.one_of(
    st.integers(-2, 3),
    st.sampled_from([0.0, -0.5, 0.5, 1.0, 1.5, 1e300, math.nan, math.inf]),
    st.sampled_from(["", "x", "cpu", "tpu", "cuda:7", "bf16", "fp16", "../up", "/etc", "a\x00b", "adamw"]),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(-1, 3), st.floats(-1, 3)), max_size=3),
).map(yaml_scalar)
OVERRIDES = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(CONFIG_KEYS), VALUES).map("=".join),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    ),
    max_size=4,
)

BASE = {
    "task": "segmentation",
    "model": {"name": "unet", "base_channels": 2, "depth": 2, "norm": False},
    "data": {"synthetic": 4, "synthetic_size": 16, "size": 16, "batch_size": 2},
    "train": {"epochs": 1, "progress": False},
}


def quick_fit(self) -> dict:
    """One optimiser step and one evaluation: enough for every config value to be used."""
    batch = self.task.to_device(next(iter(self.train_loader)), self.device)
    loss, _ = self.task.loss(self.model, batch)
    loss.backward()
    self.optimizer.step()
    self.scheduler.step()
    if self.val_loader is not None:
        self.evaluate()
    return {"epochs": 1, "best": None, "best_epoch": None, "run_dir": str(self.run_dir)}


def assert_clean(code: int, err: str) -> None:
    """Exit status 0, 1 or 2; no traceback; a failure ends with our line (``segdet: error: ...``, or the
    count of skipped images), never the catch-all."""
    assert code in (0, 1, 2), code
    assert "Traceback" not in err, err
    if code == 1:
        last = err.strip().splitlines()[-1]
        assert last.startswith("segdet: "), err
        assert not last.startswith(f"segdet: error: {UNEXPECTED} "), err


def run(capsys, argv: list[str], cwd: Path) -> tuple[int, str]:
    """``segdet argv`` in the folder ``cwd`` (relative paths a fuzzed config names stay in it)."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage errors
        code = e.code if isinstance(e.code, int) else 2
    finally:
        os.chdir(here)
    return code, capsys.readouterr().err


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder two levels down in another (``../x`` stays inside), deleted afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        inner = Path(tmp) / "a" / "b"
        inner.mkdir(parents=True)
        yield inner


@settings(FUZZ, max_examples=max(12, EXAMPLES // 2))
@given(OVERRIDES)
def test_train_with_random_overrides(capsys, monkeypatch, overrides):
    from segdet.engine.trainer import Trainer

    monkeypatch.setattr(Trainer, "fit", quick_fit)
    with scratch() as tmp:
        config = tmp / "base.yaml"
        config.write_text(yaml.safe_dump({**BASE, "output_dir": "runs"}))
        code, err = run(capsys, ["train", str(config), *overrides], tmp)
    assert_clean(code, err)


@FUZZ
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), VALUES, max_size=3), st.booleans())
def test_train_with_random_config_files(capsys, monkeypatch, values, as_yaml):
    """The same values written into the config file itself (nested), or the file replaced by junk."""
    from segdet.engine.trainer import Trainer

    monkeypatch.setattr(Trainer, "fit", quick_fit)
    with scratch() as tmp:
        raw = json.loads(json.dumps({**BASE, "output_dir": "runs"}))
        for key, text in values.items():
            *parents, last = key.split(".")
            node = raw
            for part in parents:
                node = node.setdefault(part, {}) if isinstance(node, dict) else node
            if isinstance(node, dict):
                node[last] = yaml.safe_load(text)
        config = tmp / "base.yaml"
        config.write_text(yaml.safe_dump(raw) if as_yaml else json.dumps(values)[:40] + ": [")
        code, err = run(capsys, ["train", str(config)], tmp)
    assert_clean(code, err)


@pytest.fixture(scope="module")
def junk(tmp_path_factory, tiny_segmentation_run) -> dict[str, Path]:
    """Paths a careless or hostile user could give: missing, empty, junk, truncated, wrong kinds."""
    root = tmp_path_factory.mktemp("junk")
    (root / "empty_dir").mkdir()
    (root / "text.txt").write_text("not an image\n")
    (root / "junk.json").write_text('{"images": 3')
    (root / "list.json").write_text("[1, 2]")
    (root / "coco.json").write_text(json.dumps({"images": [{"id": 1}], "categories": [], "annotations": 1}))
    (root / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "ok.png")
    (root / "images").mkdir()
    (root / "images" / "x.png").write_bytes(b"junk")
    (root / "fake.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    return {
        "missing": root / "missing",
        "empty_dir": root / "empty_dir",
        "text": root / "text.txt",
        "junk_json": root / "junk.json",
        "list_json": root / "list.json",
        "coco_json": root / "coco.json",
        "truncated": root / "truncated.png",
        "ok_png": root / "ok.png",
        "images": root / "images",
        "fake_ckpt": root / "fake.safetensors",
        "ckpt": tiny_segmentation_run / "last.safetensors",
        "long": root / ("x" * 300),
        "dotdot": root / ".." / ".." / "nowhere",
    }


COMMANDS = [
    ["data", "check", "{a}"],
    ["data", "check", "{a}", "--format", "coco", "--images", "{b}"],
    ["data", "stats", "{a}", "--format", "yolo"],
    ["data", "show", "{a}", "--format", "voc", "--out", "{out}"],
    ["data", "convert", "{a}", "--from", "masks", "--to", "coco", "--out", "{b}"],
    ["eval", "{a}", "--data", "{b}"],
    ["eval", "{ckpt}", "--data", "{a}", "--format", "coco", "--out", "{b}"],
    ["predict", "{a}", "{b}", "--out", "{out}"],
    ["predict", "{ckpt}", "{a}", "{b}", "--out", "{out}"],
    ["metrics", "coco", "--gt", "{a}", "--dt", "{b}"],
    ["metrics", "voc", "--gt", "{a}", "--dt", "{b}"],
    ["metrics", "seg", "--gt", "{a}", "--pred", "{b}", "--num-classes", "3"],
    ["proposals", "{a}", "--cache", "{b}", "--num", "1", "--no-progress"],
    ["export", "{a}", "--out", "{b}"],
]


@FUZZ
@given(st.sampled_from(COMMANDS), st.sampled_from(range(13)), st.sampled_from(range(13)))
def test_commands_with_random_paths(capsys, junk, command, a, b):
    names = list(junk)
    with scratch() as tmp:
        values = {"a": junk[names[a]], "b": junk[names[b]], "ckpt": junk["ckpt"], "out": tmp / "o"}
        argv = [part.format(**values) for part in command]
        code, err = run(capsys, argv, tmp)
    assert_clean(code, err)
