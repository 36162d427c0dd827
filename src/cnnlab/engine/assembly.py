"""What every task's ``train_*`` puts around the shared :class:`~cnnlab.engine.trainer.Trainer`.

Classification (``cnnlab.tasks.classify.train``), segmentation, detection and video all build the same
optimiser + schedule from their config, the same callbacks (progress, metrics.csv, checkpoints,
Ctrl-C, early stopping) and record the same ``run.json``. Written once here so that a fix reaches
every task; the task keeps what differs (data, model, task object, evaluation).

A task config passed in needs the TrainConfig field names it uses: ``epochs``, ``batch_size``,
``lr``, ``optimizer``, ``momentum``, ``nesterov``, ``weight_decay``, ``schedule``,
``warmup_epochs``, ``early_stopping``, ``val_fraction``, ``test_fraction``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab import __version__
from cnnlab.config import TrainConfig
from cnnlab.engine import callbacks as cbs
from cnnlab.engine import distributed
from cnnlab.engine.checkpoint import KEEP, CheckpointManager
from cnnlab.engine.devices import inference_precision, machine_info
from cnnlab.engine.optim import build_optimizer, build_scheduler, param_groups
from cnnlab.engine.trainer import LoopState, Trainer
from cnnlab.errors import ConfigError, Interrupted
from cnnlab.run import write_json


def check_common_options(
    cfg: Any, positive: Sequence[str] = ("epochs", "batch_size", "lr")
) -> None:
    """The checks every task config shares: ``positive`` fields > 0, split fractions in [0, 1)
    leaving samples for training. Raises :class:`ConfigError` naming the option."""
    for key in positive:
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"option {key} must be > 0, got {value}")
    for key in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"option {key} must be in [0, 1), got {getattr(cfg, key)}")
    if getattr(cfg, "keep", "best") not in KEEP:
        raise ConfigError(f"option keep must be one of {', '.join(KEEP)}, got {cfg.keep!r}")
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise ConfigError("val_fraction + test_fraction must leave samples for training")


def optimizer_and_schedule(
    model: nn.Module, cfg: Any, steps_per_epoch: int, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The config's optimiser (no weight decay on norms and biases) and per-step schedule."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr)
    optimizer = build_optimizer(
        cfg.optimizer, groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        device=device,
    )  # fmt: skip
    scheduler = build_scheduler(
        optimizer, cfg.schedule, cfg.epochs * steps_per_epoch,
        int(cfg.warmup_epochs * steps_per_epoch),
    )  # fmt: skip
    return optimizer, scheduler


def standard_callbacks(
    cfg: Any,
    run_dir: Path,
    steps_per_epoch: int,
    metadata: Callable[[], dict[str, Any]],
    monitor: str,
    *,
    console: Any = None,
    first: Sequence[cbs.Callback] = (),
) -> list[cbs.Callback]:
    """``first`` (callbacks that add metrics the others read), progress bar, metrics.csv,
    checkpoints (best by ``monitor``), graceful Ctrl-C/SIGTERM and, when asked, early stopping.

    DDP (torchrun): images/s summed over ranks first; only rank 0 prints and writes; no Ctrl-C
    handler (torchrun stops the ranks); early stopping on every rank (each validates the whole
    split, so they stop together)."""
    info = distributed.current()
    callbacks: list[cbs.Callback] = [*first]
    if info.distributed:
        callbacks.insert(0, distributed.GlobalThroughput(info.world_size))
    if info.is_main:
        callbacks += [
            cbs.Progress(cfg.epochs, steps_per_epoch, console=console, enabled=console is not None),
            cbs.CSVLogger(run_dir / "metrics.csv"),
            cbs.Checkpoint(
                CheckpointManager.for_policy(run_dir / "checkpoints", getattr(cfg, "keep", "best")),
                metadata,
                monitor,
            ),
        ]
    if not info.distributed:
        callbacks.append(cbs.GracefulInterrupt())
    if cfg.early_stopping:
        callbacks.append(cbs.EarlyStopping(monitor, cfg.early_stopping))
    return callbacks


def fit_and_record(
    trainer: Trainer,
    train_loader: Any,
    val_loader: Any | None,
    epochs: int,
    run_dir: Path,
    t_call: float,
    **record: Any,
) -> tuple[LoopState, float]:
    """Run the loop, raise :class:`cnnlab.errors.Interrupted` after Ctrl-C (the checkpoint is
    saved by then) and write ``run.json`` (times in seconds, ``record`` added). Returns the loop
    state and the training time in seconds."""
    t0 = time.perf_counter()
    state = trainer.fit(train_loader, val_loader, epochs)
    train_time = time.perf_counter() - t0
    if state.interrupted:
        raise Interrupted(f"{state.stop_reason}; resume with --resume {run_dir}")
    if not distributed.current().is_main:  # DDP: rank 0 writes
        return state, train_time
    write_json(
        run_dir / "run.json",
        {"train_time_s": train_time, "setup_time_s": t0 - t_call, "precision": trainer.precision,
         "inference_precision": inference_precision("auto", trainer.device, trainer.precision),
         "device": str(trainer.device), "machine": machine_info(trainer.device),
         "stop_reason": state.stop_reason,
         "cnnlab_version": __version__, **record},
    )  # fmt: skip
    return state, train_time


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    test_metrics: dict[str, Any] | None
    train_time_s: float
    config: TrainConfig
    stop_reason: str = ""
    report: Path | None = None
