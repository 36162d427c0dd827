"""The parts of the fit shell (:mod:`cnnlab.engine.fit`) that other commands reuse: the optimiser and
schedule from a config, the standard callbacks, and the result of a training run.

A config passed in is a :class:`cnnlab.config.RunConfig` (any task's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.config import RunConfig
from cnnlab.engine import callbacks as cbs
from cnnlab.engine import distributed
from cnnlab.engine.checkpoint import CheckpointManager
from cnnlab.engine.optim import build_optimizer, build_scheduler, param_groups
from cnnlab.errors import ConfigError


def optimizer_and_schedule(
    model: nn.Module,
    cfg: Any,
    steps_per_epoch: int,
    device: torch.device,
    *,
    lr_scale: dict[str, float] | None = None,
    include_frozen: bool = False,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The config's optimiser (no weight decay on norms and biases; ``lr_scale``: transfer
    learning's per-parameter rate factors) and its schedule over ``steps_per_epoch`` optimizer
    steps per epoch."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr, lr_scale, include_frozen=include_frozen)
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
    extra: Sequence[cbs.Callback] = (),
    sync: Any = None,
) -> list[cbs.Callback]:
    """Progress bar, metrics.csv, checkpoints (best by ``monitor``), graceful Ctrl-C/SIGTERM,
    early stopping, TensorBoard and MLflow tracking when asked, then ``extra`` (the task's epoch
    callbacks).

    DDP (torchrun): images/s summed over ranks first; only rank 0 prints and writes; no Ctrl-C
    handler of its own. With ``sync`` (a :class:`distributed.DistributedTask`: sharded
    validation) the DDP wrapper follows unfreezing and a stop on any rank stops all at the same
    step; without it every rank validates the whole split, so early stopping agrees anyway."""
    info = distributed.current()
    callbacks: list[cbs.Callback] = []
    if info.distributed:
        callbacks.append(distributed.GlobalThroughput(info.world_size))
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
    if getattr(cfg, "tensorboard", False) and info.is_main:
        callbacks.append(tensorboard(run_dir))
    if getattr(cfg, "track", "none") == "mlflow" and info.is_main:  # DDP: rank 0 logs
        from cnnlab.engine.tracking import MLflowTracker

        callbacks.append(MLflowTracker(cfg, run_dir, metadata))
    callbacks += extra
    if info.distributed and sync is not None:  # DDP: rewrap after unfreezing; stops agreed last
        callbacks += [distributed.FollowTrainable(), distributed.DistributedSync(sync)]
    return callbacks


def tensorboard(run_dir: Path) -> cbs.Callback:
    """Per-epoch metrics to ``run_dir/tensorboard`` (``tensorboard --logdir RUN``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None

    class TensorBoard(cbs.Callback):
        def __init__(self) -> None:
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

        def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, int(metrics["epoch"]))

        def on_fit_end(self, trainer: Any) -> None:
            self.writer.close()

    return TensorBoard()


@dataclass
class TrainResult:
    """What a training run returns (every task): its folder, per-epoch history, test metrics."""

    run_dir: Path
    history: list[dict[str, float]]
    test_metrics: dict[str, Any] | None
    train_time_s: float
    config: RunConfig
    stop_reason: str = ""
    report: Path | None = None
