"""The training loop shared by every task.

What it owns: devices and processes (one CPU, one GPU, or torchrun's DDP group), the optimiser and the
warm-up + decay schedule, mixed precision, gradient accumulation and clipping, the EMA of the weights,
detection of a non-finite loss, periodic evaluation, logs, and checkpoints that resume exactly.
What it does not own: what a batch is, how the loss is computed and how a model is evaluated — those
belong to a *task* (:class:`Task`), e.g. :class:`segdet.engine.segmentation.SegmentationTask`.

Exact resume: a checkpoint is written at the end of every epoch (and inside epochs every
``train.checkpoint_every`` steps / ``train.checkpoint_minutes``, with the position in the epoch) with the
model, optimiser, scheduler, EMA and every RNG state; the sampler's order and every sample's augmentation
are pure functions of ``(seed, epoch, index)`` (:mod:`segdet.engine.loader`), whatever the number of
workers, so a resumed epoch skips the batches already trained and goes on with the next. On the CPU with
``train.deterministic``, a run killed at any moment and resumed from its last checkpoint ends with the
same weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segdet.engine import distributed as dist_utils
from segdet.engine.atomic import write_text_atomic
from segdet.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segdet.engine.config import Config, save_config, to_dict
from segdet.engine.devices import (
    seed_everything,
    select_device,
    training_uses_channels_last,
    training_uses_nnpack,
)
from segdet.engine.ema import ModelEMA
from segdet.engine.finite import FiniteGuard, StepInfo
from segdet.engine.loader import EpochTagged, build_loader, sampler_for
from segdet.engine.logs import MetricLog, Progress, plot_curves
from segdet.engine.optimizer import build_optimizer
from segdet.engine.resume import TrainState, check_resumable, load_model_state, warn_resume_changes
from segdet.engine.schedule import build_scheduler
from segdet.errors import SegdetError
from segdet.ops.nnpack_conv import use_nnpack


class Task(Protocol):
    """What the trainer needs from a task. ``best_metric`` is the metric of :meth:`evaluate` that
    ``train.best_metric`` defaults to (e.g. ``mIoU``, ``AP``); ``category_ids`` (optional) are the
    dataset's ids of ``classes``, kept in checkpoints so predictions can be written in COCO's ids."""

    classes: list[str]
    best_metric: str

    def build_model(self) -> nn.Module: ...
    def train_dataset(self) -> Dataset: ...
    def val_dataset(self) -> Dataset | None: ...
    def collate(self, batch: list) -> Any: ...
    def val_collate(self, batch: list) -> Any: ...
    def to_device(self, batch: Any, device: torch.device) -> Any: ...
    def batch_image_ids(self, batch: Any) -> list: ...
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]: ...


class Trainer:
    """Trains ``task`` as ``config`` says. ``resume``: continue from the run's ``last.safetensors``."""

    def __init__(self, config: Config, task: Task, *, resume: bool = False) -> None:
        if config.train.best_metric is None:  # resolved here so the saved config names it
            config.train.best_metric = getattr(task, "best_metric", "mIoU")
        self.cfg = config
        self.task = task
        self.device = select_device(config.train.device)
        self.dist = dist_utils.init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.run_dir = config.run_dir
        self.resume = resume
        if not resume and (self.run_dir / "last.safetensors").exists():
            raise SegdetError(
                f"{self.run_dir} holds an earlier run: resume it, or choose another name "
                "(segdet train numbers a new run folder itself; --overwrite replaces the run)"
            )
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(config.train.seed + self.dist.rank)

        self.model = task.build_model().to(self.device)
        if config.train.channels_last is None:  # resolved here so the saved config says it
            config.train.channels_last = training_uses_channels_last(self.model, self.device, config.train)
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if training_uses_nnpack(config.train, self.device, self.model):
            count = use_nnpack(self.model, training=True)
            if count:
                self._print(f"{count} 3x3 convolutions train on NNPACK and Winograd kernels (train.nnpack)")
        self.train_set = task.train_dataset()
        self.val_set = task.val_dataset()
        self.train_loader = self._loader(self.train_set, train=True)
        self.val_loader = self._loader(self.val_set, train=False) if self.val_set is not None else None

        self.optimizer = build_optimizer(self.model, config)
        accumulate = max(1, config.train.accumulate)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / accumulate)
        self.total_steps = self.steps_per_epoch * config.train.epochs
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, config.schedule)
        self.ema = ModelEMA(self.model, config.train.ema_decay) if config.train.ema_decay else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.train.amp == "fp16")
        self.state = TrainState()
        self._deadline: float | None = None
        self._saved_at = time.perf_counter()  # the last checkpoint's time (train.checkpoint_minutes)
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.guard = FiniteGuard(
            deferred=self.device.type != "cpu",
            distributed=self.dist.enabled,
            checkpoint=str(self.run_dir / "last.safetensors"),
        )
        if resume:  # checked and loaded before anything is written to the run folder
            self._load_last()
        self.log = MetricLog(self.run_dir, tensorboard=True) if self.dist.is_main else None
        if resume and self.log is not None:  # what a killed run logged after the checkpoint goes
            self.log.truncate(self.state.step)

    # ----------------------------------------------------------------------------------------- setup
    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        cfg = self.cfg.data
        batch = cfg.batch_size if train else cfg.validation_batch_size
        if self.dist.enabled and train:
            if cfg.batch_size % self.dist.world_size:
                raise SegdetError(
                    f"data.batch_size={cfg.batch_size} (the global batch) is not divisible by the "
                    f"{self.dist.world_size} processes"
                )
            batch //= self.dist.world_size
        return build_loader(
            dataset,
            batch_size=batch,
            sampler=sampler_for(dataset, self.dist, self.cfg.train.seed, train=train),
            collate=self.task.collate if train else self.task.val_collate,
            workers=cfg.workers,
            device=self.device,
            seed=self.cfg.train.seed + self.dist.rank if train else None,
        )

    # ---------------------------------------------------------------------------------------- train
    def fit(self) -> dict[str, Any]:
        """Train to ``train.epochs``; returns the final summary (also written to ``summary.json``)."""
        cfg = self.cfg
        if self.dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        start = time.perf_counter()
        self._deadline = None if cfg.train.max_minutes is None else start + 60.0 * cfg.train.max_minutes
        try:
            for epoch in range(self.state.epoch, cfg.train.epochs):
                finished = self._train_epoch(epoch)
                if finished:  # else the position inside the epoch is kept: --resume continues it
                    self.state.epoch, self.state.position = epoch + 1, 0
                last = epoch + 1 == cfg.train.epochs or not finished
                evaluate = self.val_loader is not None and (
                    (epoch + 1) % max(1, cfg.train.eval_every) == 0 or last
                )
                improved = self._evaluate_epoch(epoch) if evaluate else False
                self._save("last.safetensors")
                if improved:
                    self._save("best.safetensors")
                if not finished:
                    self._print(f"stopped after {cfg.train.max_minutes} minutes (train.max_minutes)")
                    break
        finally:
            if self.log is not None:
                self.log.close()
        summary = {
            "epochs": self.state.epoch,
            "position": self.state.position,
            "steps": self.state.step,
            "best": self.state.best,
            "best_epoch": self.state.best_epoch,
            "best_metric": cfg.train.best_metric,
            "last_metrics": self.state.last_metrics,
            "seconds": round(time.perf_counter() - start, 2),
            "run_dir": str(self.run_dir),
        }
        if self.dist.is_main:
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            plot_curves(MetricLog(self.run_dir, tensorboard=False).records(), self.run_dir / "plots")
        dist_utils.barrier()
        return summary

    def _train_epoch(self, epoch: int) -> bool:
        """One epoch, from batch ``state.position`` on (a run resumed inside it); False when
        ``train.max_minutes`` ran out before its end (``state.position`` then says where).

        Nothing here reads a device tensor on the host except every ``log_every`` steps (the logged
        values, :class:`~segdet.engine.finite.FiniteGuard`'s check) and at checkpoints: on a GPU the
        host stays ahead, queueing the next step while the current one runs."""
        cfg = self.cfg.train
        start = self.state.position
        sampler = self.train_loader.sampler
        if isinstance(sampler, EpochTagged):
            sampler.set_epoch(epoch, skip=start * self.train_loader.batch_size)
        elif start:
            raise SegdetError("a run can resume inside an epoch only with the trainer's own sampler")
        self.ddp_model.train()
        accumulate = max(1, cfg.accumulate)
        every = max(1, cfg.log_every)
        n = start + len(self.train_loader)
        progress = Progress(
            n, f"epoch {epoch + 1}/{cfg.epochs}", enabled=cfg.progress and self.dist.is_main, every=every
        )
        running: torch.Tensor | None = None  # the smoothed loss, on the device
        shown: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.train_loader, start=start):
            batch = self.task.to_device(batch, self.device)
            last_micro = (i + 1) % accumulate == 0 or i + 1 == n
            micro = min(accumulate, n - (i // accumulate) * accumulate)
            where = StepInfo(self.state.step, epoch + 1, i, self.task.batch_image_ids(batch))
            loss, parts = self._forward_backward(batch, micro, sync=last_micro, where=where)
            if not last_micro:
                continue
            self._optimizer_step()
            self.state.position = i + 1
            running = loss if running is None else running.mul(0.9).add_(loss, alpha=0.1)
            if self.state.step % every == 0 or i + 1 == n:
                self.guard.check()
                lr = self.optimizer.param_groups[0]["lr"]
                shown = {"loss": float(running), "lr": lr}
                if self.log is not None:
                    values = {"loss": float(loss), "lr": lr, **{k: float(v) for k, v in parts.items()}}
                    self.log.log("train", self.state.step, epoch + (i + 1) / n, values)
            progress.update(i + 1, **shown)
            if self._out_of_time():
                self.guard.check()
                progress.close()
                return False
            if i + 1 < n and self._checkpoint_due():
                self.guard.check()
                self._save("last.safetensors")
        self.guard.check()
        progress.close()
        return True

    def _checkpoint_due(self) -> bool:
        """Whether ``train.checkpoint_every`` steps or ``train.checkpoint_minutes`` have passed since the
        last checkpoint (the clock decided by rank 0, so every process saves at the same step)."""
        cfg = self.cfg.train
        due = bool(cfg.checkpoint_every) and self.state.step % cfg.checkpoint_every == 0
        if cfg.checkpoint_minutes is not None and not due:
            late = time.perf_counter() - self._saved_at > 60.0 * cfg.checkpoint_minutes
            due = bool(dist_utils.broadcast_object(late)) if self.dist.enabled else late
        return due

    def _forward_backward(
        self, batch: Any, micro: int, *, sync: bool, where: StepInfo
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The task's loss on ``batch`` (under ``train.amp``'s autocast) and its backward pass, scaled by
        ``1 / micro`` (gradient accumulation); DDP all-reduces the gradients only when ``sync``. Returns
        the detached loss and the task's parts (tensors or floats), left on the device."""
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.train.amp)
        no_sync = not sync and self.dist.enabled
        with self.ddp_model.no_sync() if no_sync else contextlib.nullcontext():
            with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, parts = self.task.loss(self.ddp_model, batch)
            self.guard.observe(loss, where)
            self.scaler.scale(loss / micro).backward()
        return loss.detach(), parts

    def _optimizer_step(self) -> None:
        """Clip (``train.clip_grad_norm``), step the optimiser (through the fp16 gradient scaler), the
        schedule and the EMA."""
        if self.cfg.train.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        if self.ema is not None:
            self.ema.update(self.model)

    def train_step(self, batch: Any) -> torch.Tensor:
        """One optimiser step on ``batch`` (already on the device) as :meth:`fit` does it, without
        accumulation; returns the detached loss. For benchmarks of the model-bound step time."""
        self.ddp_model.train()
        where = StepInfo(self.state.step, self.state.epoch + 1, 0, self.task.batch_image_ids(batch))
        loss, _ = self._forward_backward(batch, 1, sync=True, where=where)
        self._optimizer_step()
        return loss

    def _out_of_time(self) -> bool:
        """Whether the budget is spent, decided by rank 0 so every process stops at the same step."""
        if self._deadline is None:
            return False
        out = time.perf_counter() > self._deadline
        return bool(dist_utils.broadcast_object(out)) if self.dist.enabled else out

    def evaluate(self) -> dict[str, float]:
        model = self.ema.module if self.ema is not None else self.model
        dist_utils.broadcast_buffers(model)  # DDP: every process scores with rank 0's (saved) statistics
        model.eval()
        with torch.no_grad():
            return self.task.evaluate(model, self.val_loader, self.device)

    def _evaluate_epoch(self, epoch: int) -> bool:
        """Evaluate after epoch ``epoch`` (0-based): log and print the metrics; whether they are the
        best so far (``train.best_metric``)."""
        metrics = self.evaluate()
        self.state.last_metrics = metrics
        if self.log is not None:
            self.log.log("val", self.state.step, epoch + 1, metrics)
        self._print(
            f"epoch {epoch + 1}/{self.cfg.train.epochs}: "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k)
        )
        return self._update_best(metrics, epoch + 1)

    def _update_best(self, metrics: dict[str, float], epoch: int) -> bool:
        """Keep ``metrics`` as the best when ``train.best_metric`` improved; ``epoch``: the 1-based epoch
        they were measured in, as printed (a run stopped by ``train.max_minutes`` inside an epoch
        evaluates that epoch)."""
        key = self.cfg.train.best_metric
        if key not in metrics:
            raise SegdetError(f"train.best_metric={key!r} is not among the metrics {sorted(metrics)}")
        value = float(metrics[key])
        better = self.state.best is None or (
            value > self.state.best if self.cfg.train.best_mode == "max" else value < self.state.best
        )
        if better:
            self.state.best, self.state.best_epoch = value, epoch
        return better

    # ----------------------------------------------------------------------------------- checkpoints
    def checkpoint_state(self, *, resumable: bool = True) -> dict[str, Any]:
        """What a checkpoint holds. ``resumable=False`` (``best.safetensors``: evaluated, predicted with,
        exported, fine-tuned from; runs resume from ``last``) leaves out the optimiser, schedule, scaler
        and RNG states: a third of the file for SGD with momentum, two thirds for Adam, as Ultralytics
        strips its ``best.pt``."""
        training = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }
        return {
            "model": self.model.state_dict(),
            **(training if resumable else {}),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.state.epoch,
            "position": self.state.position,
            "step": self.state.step,
            "best": self.state.best,
            "best_epoch": self.state.best_epoch,
            "last_metrics": self.state.last_metrics,
            "config": to_dict(self.cfg),
            "classes": list(self.task.classes),
            "category_ids": list(getattr(self.task, "category_ids", None) or []) or None,
            "task": self.cfg.task,
        }

    def _save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self.run_dir / name, self.checkpoint_state(resumable=name == "last.safetensors"))
        dist_utils.barrier()
        self._saved_at = time.perf_counter()

    def _load_last(self) -> None:
        path = self.run_dir / "last.safetensors"
        if not path.exists():
            raise SegdetError(f"{path}: no checkpoint to resume from")
        # Read onto the CPU: load_state_dict copies each tensor to its parameter's device, and the
        # optimisers' step counters stay on the CPU, where PyTorch keeps them (on the GPU every step
        # would read each one back to the host).
        ckpt = load_checkpoint(path, map_location="cpu")
        check_resumable(ckpt, self.cfg, list(self.task.classes), path)
        load_model_state(self.model, ckpt["model"], path)
        warn_resume_changes(ckpt, self.cfg, self.dist.is_main)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.state = TrainState.from_checkpoint(ckpt)
        set_rng_state(ckpt["rng"])
        position, epoch = self.state.position, self.state.epoch + 1
        inside = f", batch {position} of epoch {epoch}" if position else ""
        self._print(f"resumed from {path} at epoch {self.state.epoch}, step {self.state.step}{inside}")

    def _print(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)
