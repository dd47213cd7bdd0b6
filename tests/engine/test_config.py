"""Config validation: every bad key or value is named by its dotted path, before anything runs."""

from __future__ import annotations

import pytest

from segdet.engine.config import Config, load_config, save_config, to_dict
from segdet.errors import ConfigError


def test_defaults_and_overrides():
    c = load_config(
        None, ["optim.lr=0.1", "train.amp=bf16", "data.scale_range=[0.5, 1.5]", "model.backbone=r18"]
    )
    assert c.optim.lr == 0.1 and isinstance(c.optim.lr, float)
    assert c.train.amp == "bf16"
    assert c.data.scale_range == (0.5, 1.5)
    assert c.model.kwargs == {"backbone": "r18"}


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: segmentation\nmodel:\n  name: unet\n  base_width: 8\ntrain:\n  epochs: 3\n")
    c = load_config(path, ["train.epochs=5"])
    assert c.train.epochs == 5 and c.model.kwargs == {"base_width": 8}
    save_config(c, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(c)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "optim.lrr: unknown key; did you mean 'lr'?"),
        ("train.epochs=ten", "train.epochs: expected int, got str 'ten'"),
        ("train.epochs=2.5", "train.epochs: expected int, got float 2.5"),
        ("train.amp=fp8", "train.amp: 'fp8' is not one of 'none', 'bf16', 'fp16'"),
        ("data.train=3", "data.train: expected a mapping of keys, got int 3"),
        ("data.scale_range=[1]", "data.scale_range: expected 2 values, got 1"),
        ("trian.epochs=1", "trian: unknown key; did you mean 'train'?"),
        ("train.deterministic=yes please", "train.deterministic: expected bool"),
        ("noequals", "is not of the form key=value"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+"):
        load_config(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_a_checkpoint_or_binary_file_given_as_config_is_one_line(tmp_path):
    """``segdet train best.safetensors`` said "unexpected UnicodeDecodeError ... (a bug ...)" without
    naming the file."""
    import torch

    from segdet.engine.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "best.safetensors", {"w": torch.full((64,), 0.5), "step": 1})
    with pytest.raises(ConfigError, match=r"best\.safetensors: not a config: a segdet checkpoint"):
        load_config(ckpt)
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ConfigError, match=r"photo\.png: not a config: a binary file"):
        load_config(image)


def test_run_dir():
    c = Config(name="x", output_dir="out")
    assert str(c.run_dir) == "out/x"


def test_exponent_numbers_are_floats_in_files_and_overrides(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-4`` without a dot as a string: ``optim.lr: 1e-4`` was refused with
    "expected float, got str '1e-4'". Float fields take it as Python does; other fields do not."""
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  weight_decay: 5E-5\n")
    cfg = load_config(path, ["train.max_minutes=1e-6"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.max_minutes) == (1e-4, 5e-5, 1e-6)
    with pytest.raises(ConfigError, match=r"data\.batch_size: expected int, got str '1e2'"):
        load_config(None, ["data.batch_size=1e2"])
    with pytest.raises(ConfigError, match=r"optim\.lr: expected float, got str 'fast'"):
        load_config(None, ["optim.lr=fast"])
