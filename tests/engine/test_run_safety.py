"""A run never writes over another, resumed logs hold every step once, config values are range-checked and
a full disk is one line (issue 11, items 4, 6, 13 and 14)."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from segdet.cli.main import main
from segdet.engine.checkpoint import load_checkpoint
from segdet.engine.config import load_config
from segdet.engine.run_folder import claim_run_dir
from segdet.errors import ConfigError, SegdetError


@pytest.fixture
def write_config(tmp_path, tiny_segmentation_config):
    """``write_config(name="run", **train)``: the tiny run's config with these train values, as a file."""

    def write(name: str = "run", **train) -> str:
        cfg = json.loads(json.dumps(tiny_segmentation_config))
        cfg["train"].update(train)
        cfg["name"], cfg["output_dir"] = name, str(tmp_path / "runs")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    return write


def digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def earlier_run(tmp_path, tiny_segmentation_run):
    """A copy of the session's tiny run as ``tmp_path/runs/tiny``, and the argv that trains it again."""
    import shutil

    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_segmentation_run, run)
    return run, ["train", str(SMOKE_CONFIG), f"output_dir={tmp_path / 'runs'}", "name=tiny"]


SMOKE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smoke_unet.yaml"


def test_a_second_run_of_the_same_name_gets_its_own_folder(capsys, earlier_run):
    """Item 4: a second ``segdet train`` with the same name overwrote the first run's checkpoints and
    config and appended to its metrics. Now it goes to ``name-2`` and says so."""
    first, argv = earlier_run
    before = digest(first)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{first} holds an earlier run; this run goes to {first}-2" in out
    assert digest(first) == before
    assert (first.parent / "tiny-2" / "last.safetensors").exists()


def test_overwrite_deletes_only_what_a_run_wrote(tmp_path):
    """``--overwrite`` reuses the folder: the earlier run's checkpoints, logs and curves go, a file of the
    user's stays."""
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    for name in ("last.safetensors", "metrics.jsonl", "plots/loss.png", "notes.txt"):
        (run / name).write_text("x")
    config = load_config(None, [f"output_dir={tmp_path}", "name=run"])
    assert claim_run_dir(config, overwrite=True) == run
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_runs_started_together_take_distinct_folders(tmp_path):
    """Item 4: two runs started at once with the same name interleaved their logs. Taking a folder is
    atomic (an O_EXCL marker), so the second claim of the same name gets the next number."""
    a = load_config(None, [f"output_dir={tmp_path}", "name=same"])
    b = load_config(None, [f"output_dir={tmp_path}", "name=same"])
    assert claim_run_dir(a) == tmp_path / "same"
    assert claim_run_dir(b) == tmp_path / "same-2"
    with pytest.raises(ConfigError):
        claim_run_dir(b, resume=True, overwrite=True)


def test_the_trainer_refuses_a_folder_holding_a_run(tiny_segmentation_run):
    """Python API users get the same protection: a Trainer on a folder holding a run, without resume."""
    from segdet.engine.config import from_dict
    from segdet.engine.trainer import Trainer

    config = from_dict(load_checkpoint(tiny_segmentation_run / "last.safetensors")["config"])
    assert config.run_dir == tiny_segmentation_run
    with pytest.raises(SegdetError, match="holds an earlier run"):
        Trainer(config, task=None)  # refused before the task is used


def test_resume_keeps_each_logged_step_once(earlier_run):
    """Item 6: after ``kill -9`` and ``--resume`` the steps logged since the last checkpoint appeared twice
    in metrics.jsonl / metrics.csv. Simulated exactly: the records a killed second epoch wrote after the
    epoch-1 checkpoint are appended, then the run resumes; every (split, step) is logged once."""
    run, argv = earlier_run
    step = load_checkpoint(run / "last.safetensors")["step"]
    with open(run / "metrics.jsonl", "a") as f:
        for k in (1, 2):
            f.write(json.dumps({"split": "train", "step": step + k, "epoch": 1.5, "loss": 9.0}) + "\n")
        f.write('{"split": "train", "st')  # torn by the kill
    with open(run / "metrics.csv", "a") as f:
        f.write(f"train,{step + 1},1.5,loss,9.0\n")
    assert main([*argv, "train.epochs=2", "--resume"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["split"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)) and max(r["epoch"] for r in records) == 2
    assert all(r.get("loss") != 9.0 for r in records)
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == len(set(rows)) and not any(",9.0" in r for r in rows)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", "optim.lr: -1.0 must be > 0"),
        ("optim.lr=.nan", "optim.lr: nan is not a finite number"),
        ("data.batch_size=0", "data.batch_size: 0 must be at least 1"),
        ("data.workers=-1", "data.workers: -1"),
        ("data.size=0", "data.size: 0"),
        ("data.scale_range=[2.0,0.5]", "0 < low <= high"),
        ("train.device=tpu", "train.device: 'tpu'"),
        ("train.epochs=0", "train.epochs: 0 must be at least 1"),
        ("name=../../elsewhere", "name: '../../elsewhere' must be a folder name"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("train.ema_decay=1", "train.ema_decay"),
    ],
)
def test_config_values_are_range_checked(tmp_path, capsys, write_config, override, message):
    """Item 13: these ended in tracebacks (or, for epochs=0, exit 0 having written nothing)."""
    code = main(["train", write_config(), override])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_output_dir_that_is_a_file_is_one_line(tmp_path, capsys, write_config):
    (tmp_path / "runs").write_text("mine")
    code = main(["train", write_config()])
    err = capsys.readouterr().err
    assert code == 1 and "output_dir" in err and "is a file" in err and err.count("\n") == 1
    assert (tmp_path / "runs").read_text() == "mine"


def test_disk_full_while_writing_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    """Item 14: ENOSPC while saving ended in a traceback; the old checkpoint must stay intact."""
    import segdet.engine.checkpoint as checkpoint

    path = tmp_path / "last.safetensors"
    checkpoint.save_checkpoint(path, {"w": torch.ones(3)})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(SegdetError, match=r"No space left on device.*previous checkpoint is kept"):
        checkpoint.save_checkpoint(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_overwrite_removes_the_temporary_files_of_a_killed_checkpoint_write(tmp_path):
    """``kill -9`` while a checkpoint (or a log rewrite) is written leaves ``.last.safetensors.tmp-PID``
    (the ``finally`` that removes it never runs): ``--overwrite`` deletes it with the run's other files."""
    from segdet.engine.run_folder import clear_run

    run = tmp_path / "run"
    run.mkdir()
    for name in (".last.safetensors.tmp-123", ".metrics.jsonl.tmp-9", "last.safetensors", "notes.txt"):
        (run / name).write_text("x")
    clear_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_resume_with_a_model_the_checkpoint_does_not_fit_is_one_line(earlier_run, capsys):
    """The run's config edited before ``--resume`` (8 channels instead of 4): PyTorch's many-line
    load_state_dict error became one line naming the checkpoint; the run folder is left as it was."""
    run, argv = earlier_run
    before = digest(run)
    assert main([*argv, "model.base_channels=8", "train.epochs=2", "--resume"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert f"{run / 'last.safetensors'}: cannot resume: the checkpoint's weights do not fit" in err[0]
    assert "size mismatch" in err[0]
    assert digest(run) == before


def test_a_run_folder_resumes_wherever_it_is(earlier_run, tmp_path, capsys):
    """``segdet train RUN --resume`` continues the run of that folder from its config.yaml, even moved
    elsewhere (its saved output_dir names the old place); without --resume, or without any config, it is
    one line saying what to give."""
    import shutil

    run, _ = earlier_run
    moved = tmp_path / "elsewhere" / "tiny2"
    shutil.copytree(run, moved)
    before = (run / "last.safetensors").read_bytes()
    assert main(["train", str(moved), "--resume", "train.epochs=2"]) == 0  # overrides after --resume too
    assert load_checkpoint(moved / "last.safetensors")["epoch"] == 2
    assert (run / "last.safetensors").read_bytes() == before  # the old place is not touched
    capsys.readouterr()
    for argv, message in (
        (["train", "--resume"], "--resume needs the run: its folder"),
        (["train", str(moved)], "a run folder; to continue it add --resume"),
    ):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_resume_with_edited_settings_says_what_they_do(earlier_run, capsys):
    """A longer run (``train.epochs``) is a usual resume, but its schedule is rebuilt, so the rate may
    jump; an edited ``optim`` has no effect (PyTorch's ``load_state_dict`` restores the optimiser's and
    the scheduler's saved rates): each is one warning line, and the run goes on. Checked: the resumed
    run's scheduler still holds the checkpoint's base rate."""
    run, argv = earlier_run
    base = load_checkpoint(run / "last.safetensors")["scheduler"]["base_lrs"]
    assert main([*argv, "train.epochs=2", "optim.lr=0.5", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "segdet: warning: resuming with train.epochs 1 -> 2: the learning-rate schedule is rebuilt" in err
    assert "resuming with optim.lr" in err and "-> 0.5: no effect" in err
    assert load_checkpoint(run / "last.safetensors")["scheduler"]["base_lrs"] == base != [0.5]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "detection"}, "the checkpoint's task 'detection' differs from this run's 'segmentation'"),
        ({"model": "fcn"}, "the checkpoint's model 'fcn' differs from this run's 'unet'"),
        ({"classes": ["b", "a"]}, "the checkpoint's classes ['b', 'a'] differs from this run's ['a', 'b']"),
        ({"optim": "adamw"}, "the checkpoint's optimiser 'adamw' differs from this run's 'sgd'"),
    ],
)
def test_resume_from_another_task_model_or_class_list_is_refused(change, message):
    """Same-count classes renamed or reordered would resume silently with each output meaning another
    class; another task or model name is refused before any weight is loaded."""
    from segdet.engine.config import from_dict
    from segdet.engine.resume import check_resumable

    config = from_dict({"task": "segmentation", "model": {"name": "unet"}})
    ckpt = {"task": "segmentation", "config": {"model": {"name": "unet"}}, "classes": ["a", "b"]}
    check_resumable(ckpt, config, ["a", "b"], Path("last.safetensors"))  # the same: fine
    ckpt = {**ckpt, **{k: v for k, v in change.items() if k not in ("model", "optim")}}
    if "model" in change:
        ckpt["config"] = {"model": {"name": change["model"]}}
    if "optim" in change:
        ckpt["config"] = {"model": {"name": "unet"}, "optim": {"name": change["optim"]}}
    with pytest.raises(SegdetError, match="cannot resume") as info:
        check_resumable(ckpt, config, ["a", "b"], Path("last.safetensors"))
    assert message in str(info.value)


def test_a_run_that_fails_before_training_gives_its_folder_back(tmp_path, capsys, write_config):
    """A misspelt model option is found after the run folder was taken and the synthetic images were
    written into it: the folder stayed, and the corrected run went to ``run-2``. Now the failed run
    leaves nothing, and the next one gets the name."""
    config = write_config("run")
    assert main(["train", config, "model.bse_channels=8"]) != 0
    assert "bse_channels" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "run").exists()
    (tmp_path / "runs" / "keep").mkdir(parents=True)
    (tmp_path / "runs" / "keep" / "notes.txt").write_text("mine")
    assert main(["train", config, "name=keep", "model.name=unett"]) != 0  # takes keep-2, gives it back
    assert (tmp_path / "runs" / "keep" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "runs" / "keep-2").exists()


def test_a_run_stopped_inside_an_epoch_names_that_epoch(tmp_path, capsys, write_config):
    """``train.max_minutes`` ran out inside epoch 1: "epoch 1/3: mIoU ..." was followed by "done: 0 epochs,
    best mIoU ... (epoch 0)" and summary.json's best_epoch 0. The best is that of epoch 1, and the end
    line says how far the run got."""
    assert main(["train", write_config("run"), "train.max_minutes=1e-6", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/3: " in out
    assert "done: 1 batch of epoch 1, best mIoU" in out and "(epoch 1)" in out
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert (summary["epochs"], summary["position"], summary["best_epoch"]) == (0, 1, 1)


@pytest.mark.parametrize(("rank", "said"), [("0", True), ("1", False), (None, True)])
def test_a_config_error_under_torchrun_is_said_once(capsys, monkeypatch, rank, said):
    """Every torchrun process reads the same config and meets the same error: only rank 0 prints it (the
    others exit with the same status, silent), instead of one copy per process."""
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert main(["train", str(SMOKE_CONFIG), "optim.lrr=0.1"]) == 1
    err = capsys.readouterr().err
    assert ("optim.lrr" in err) == said and (err == "") != said
