"""Loading a trained checkpoint reads that file only, refuses one that does not fit its model in one line,
and refuses NaN weights; NaN outputs stop an evaluation (issue 11, items 2, 10 and 12)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segdet.cli.main import main
from segdet.engine.checkpoint import load_checkpoint, save_checkpoint
from segdet.engine.inference import load_trained
from segdet.errors import SegdetError


@pytest.fixture
def damaged(tmp_path, tiny_segmentation_run):
    """``damaged(change)``: a copy of the tiny run's checkpoint after ``change(state)``, and its path."""

    def make(change) -> str:
        state = load_checkpoint(tiny_segmentation_run / "last.safetensors")
        change(state)
        path = tmp_path / "damaged.safetensors"
        save_checkpoint(path, state)
        return str(path)

    return make


def eval_error(capsys, path: str) -> str:
    code = main(["eval", path])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segdet: error: ") and "Traceback" not in err, err
    return lines[0]


def _set(path: str, value):
    def change(state):
        node = state
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value

    return change


def _drop(key: str):
    return lambda state: state.pop(key)


def _misshape(state):
    name = next(k for k, v in state["model"].items() if v.ndim == 4)
    state["model"][name] = torch.zeros(3, 3, 1, 1)


def _nan(state):
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop("model"), "not a training checkpoint (no 'model')"),
        (_misshape, "the weights do not fit the model UNet: 1 keys of another shape"),
        (_set("config.model.base_channels", 8), "the weights do not fit the model UNet"),
        (_set("config.model.num_classes", 2), "model.num_classes=2 but the checkpoint has 5 classes"),
        (_set("classes", ["a", "b", "c", "d", "e", "f", "g"]), "do not fit the model"),
        (_set("config.task", "detection"), "the checkpoint's task 'segmentation' is not its config's"),
        (_set("config.model.name", "fcn8s"), "cannot rebuild the model"),
        (_set("config.optim.lr", -1.0), "the saved config is not valid: optim.lr"),
        (_set("classes", "abc"), "'classes' is not a non-empty list"),
        (_nan, "has NaN or infinite values"),
    ],
)
def test_checkpoints_that_do_not_fit_are_one_line(capsys, damaged, change, message):
    """Items 10 and 12: each of these ended in a RuntimeError / KeyError / AttributeError traceback, or
    (NaN weights) in plausible metrics with exit status 0."""
    line = eval_error(capsys, damaged(change))
    assert message in line, line
    assert "damaged.safetensors" in line


def test_a_flipped_task_is_one_line(capsys, damaged):
    def flip(state):
        state["task"] = "detection"
        state["config"]["task"] = "detection"

    assert "task 'detection' but the model UNet is a segmentation model" in eval_error(capsys, damaged(flip))


def test_loading_never_fetches_the_backbone_weights_its_config_names(tmp_path, monkeypatch):
    """Item 2: a checkpoint whose config names ``backbone_weights`` (a URL, a path) made eval / predict
    fetch or read it before loading the checkpoint's own weights. A detector keeps the architecture
    pretrained weights imply (frozen BatchNorm, torchvision's rule) without reading them."""
    import segdet.models.weights as weights
    from segdet.models import build
    from segdet.models.backbones import FrozenBatchNorm2d

    def fetch(*args, **kwargs):
        raise AssertionError(f"fetched {args}")

    monkeypatch.setattr(weights, "load_state_dict", fetch)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fetch)
    options = {"backbone": "resnet18", "min_size": 64, "max_size": 64, "fpn_channels": 16}
    model = build(
        "fasterrcnn_resnet50_fpn", num_classes=2, backbone_weights=weights.FROM_CHECKPOINT, **options
    )
    for source in ("http://127.0.0.1:9/evil.pth", str(tmp_path / "elsewhere.pth")):
        config = {
            "task": "detection",
            "model": {"name": "fasterrcnn_resnet50_fpn", **options, "backbone_weights": source},
        }
        path = tmp_path / "ckpt.safetensors"
        save_checkpoint(path, {"model": model.state_dict(), "config": config, "classes": ["a", "b"]})
        trained = load_trained(path)
        assert any(isinstance(m, FrozenBatchNorm2d) for m in trained.model.modules())
        for name, value in trained.model.state_dict().items():
            assert torch.equal(value, model.state_dict()[name]), name


class _NaNModel(nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 5, *x.shape[-2:]), float("nan"))


def test_nan_outputs_stop_an_evaluation(tiny_segmentation_run):
    """Item 10: NaN outputs (finite weights, broken numerics) must not become metrics."""
    from torch.utils.data import DataLoader

    from segdet.engine.config import from_dict
    from segdet.engine.segmentation import SegmentationTask

    config = from_dict(load_checkpoint(tiny_segmentation_run / "last.safetensors")["config"])
    config.output_dir = str(tiny_segmentation_run.parent.parent / "eval_copy")
    task = SegmentationTask(config)
    loader = DataLoader(task.val_dataset(), batch_size=2, collate_fn=task.val_collate)
    with pytest.raises(SegdetError, match="NaN or infinite"):
        task.evaluate(_NaNModel(), loader, torch.device("cpu"))
