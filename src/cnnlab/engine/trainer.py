"""The training loop, written once for every task: forward, loss, backward, step.

Everything else (progress, CSV logging, checkpoints, early stopping, interruption) is a callback with no-op hooks,
and stopping is a flag (Keras' `Callback`, fastai's event protocol).

Gradient accumulation: with `accumulate_grad_batches=k` the loader's batches are micro-batches and
k of them make one optimizer step (a group): the effective batch is k x batch_size, and the epoch's
last group may be shorter. Interruption waits for the end of the current group, so checkpoints and
resumes sit on group boundaries.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, ConfigError, close_matches

log = logging.getLogger(__name__)


class NonFiniteLossError(CnnlabError):
    """The loss became NaN or Inf; the message names the epoch, step and the batch's samples."""


@dataclass
class LoopState:
    epoch: int = 0  # 0-based epoch being run (or about to run)
    step: int = 0  # (micro-)batches done in this epoch: where the loader resumes
    global_step: int = 0  # optimizer steps since the start of the run
    stop: bool = False
    stop_reason: str = ""
    interrupted: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    # (images, summed loss, summed correct) of the epoch's batches so far: a checkpoint taken
    # mid-epoch keeps them, so the resumed epoch's train_loss averages all its batches
    epoch_sums: tuple[int, float, float] = (0, 0.0, 0.0)


def recorded_metrics(task: Any, validation: bool = True) -> list[str]:
    """The quality metrics a Trainer records each epoch for `task` (what --monitor may name):
    train_loss, train_accuracy (unless the task has no accuracy) and val_<name> for each name the
    task's validate returns (`metric_names`; classification: loss, accuracy)."""
    keys = ["train_loss"] + (["train_accuracy"] if getattr(task, "reports_accuracy", True) else [])
    if validation:
        keys += [f"val_{k}" for k in getattr(task, "metric_names", ("loss", "accuracy"))]
    return keys


def check_monitor(monitor: str, task: Any, what: str) -> None:
    """ConfigError naming the keys a `what` run records when `monitor` is not one of them."""
    keys = recorded_metrics(task)
    if monitor not in keys:
        notes = getattr(task, "metric_notes", {})  # {key: the runs that record it}
        shown = [f"{k} ({notes[k]})" if k in notes else k for k in keys]
        raise ConfigError(
            f"--monitor {monitor}: a {what} run does not record it{close_matches(monitor, keys)}; "
            f"choose from {', '.join(shown)}"
        )


class Callback:
    """No-op hooks; subclasses override what they need. `state_dict` travels in checkpoints.

    `on_run_end(result)` is the fit shell's, not the loop's: called once the test split is scored
    and run.json written (`result`: a TrainResult), e.g. for a tracker to log the test metrics."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer, loss: float, correct: int, size: int) -> None: ...
    def on_optimizer_step(self, trainer: Trainer) -> None: ...
    # after the epoch's validation, before on_epoch_end: `metrics` may gain entries (EMA's val_ema_*)
    def on_validation_end(
        self, trainer: Trainer, loader: Any, metrics: dict[str, float]
    ) -> None: ...
    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_run_end(self, result: Any) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        task: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        device: torch.device,
        precision: str = "32",
        grad_clip: float | None = None,
        callbacks: Sequence[Callback] = (),
        describe_batch: Callable[[torch.Tensor], list[str]] | None = None,
        train_mode: Callable[[nn.Module], None] | None = None,
        accumulate_grad_batches: int = 1,
    ):
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        self.accumulate_grad_batches = accumulate_grad_batches  # micro-batches per optimizer step
        self.model, self.task = model, task
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.precision, self.grad_clip = device, precision, grad_clip
        self.callbacks = list(callbacks)
        self.describe_batch = describe_batch or (lambda idx: [str(int(i)) for i in idx[:8]])
        # Transfer learning keeps frozen BatchNorm layers in eval mode; plain training just calls .train().
        self.train_mode = train_mode or (lambda m: m.train())
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
        self.state = LoopState()
        # detection has no per-image accuracy: its epochs record no train_accuracy
        self.reports_accuracy = bool(getattr(task, "reports_accuracy", True))

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def fit(self, train_loader: Any, val_loader: Any | None, epochs: int) -> LoopState:
        s = self.state
        self._emit("on_fit_start")
        while s.epoch < epochs and not s.stop:
            self.train_mode(self.model)
            self._emit("on_epoch_start")
            t0 = time.perf_counter()
            seen, loss_sum, correct_sum = s.epoch_sums if s.step else (0, 0.0, 0.0)
            seen_before = seen  # a resumed epoch's images before the resume (not timed here)
            n_batches = len(train_loader)
            self._check_group_boundary(s.step, n_batches)
            for images, targets, idx in train_loader.batches(s.epoch, start=s.step):
                first, group_size, last = self.group_of(s.step, n_batches)
                loss_value, correct = self._forward_backward(
                    images, targets, idx, zero_grad=first, group_size=group_size, sync=last
                )
                if last:  # one optimizer step per group of micro-batches
                    self._optimizer_step()
                    s.global_step += 1
                    self._emit("on_optimizer_step")
                n = images.shape[0]
                seen, loss_sum = seen + n, loss_sum + loss_value * n
                correct_sum += correct
                s.step, s.epoch_sums = s.step + 1, (seen, loss_sum, correct_sum)
                self._emit("on_batch_end", loss_value, correct, n)
                if s.stop and last:  # interruption: leave at a group boundary; Checkpoint saves it
                    break
            if s.stop and s.interrupted:
                break
            elapsed = time.perf_counter() - t0
            metrics = {
                "epoch": s.epoch + 1,
                "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_time_s": elapsed,
                "train_loss": loss_sum / max(seen, 1),
                "train_accuracy": correct_sum / max(seen, 1),
                "train_images_per_s": (seen - seen_before) / max(elapsed, 1e-9),
            }
            if not self.reports_accuracy:
                del metrics["train_accuracy"]
            if val_loader is not None:  # every named metric of the task's validate, as val_<name>
                metrics |= {f"val_{k}": float(v) for k, v in self.evaluate(val_loader).items()}
                self._emit("on_validation_end", val_loader, metrics)
            s.history.append(metrics)
            self._emit("on_epoch_end", metrics)
            s.epoch, s.step = s.epoch + 1, 0
        self._emit("on_fit_end")
        return s

    def group_of(self, step: int, n_batches: int) -> tuple[bool, int, bool]:
        """(first in its group, micro-batches in the group, last in its group) for 0-based
        micro-batch `step` of an epoch of `n_batches`: groups are [0, k), [k, 2k), ... and the
        epoch's last group holds the n_batches % k that remain (stepped, not carried over)."""
        k = self.accumulate_grad_batches
        start = step - step % k
        size = min(k, n_batches - start)
        return step == start, size, step == start + size - 1

    def _check_group_boundary(self, step: int, n_batches: int) -> None:
        # A checkpoint is written only between groups (see `fit`), so a resumed epoch starts on a
        # group boundary; anything else would step on a partial group and break bit-identity.
        if step % self.accumulate_grad_batches and step < n_batches:
            raise RuntimeError(
                f"resuming at micro-batch {step}, inside a group of "
                f"{self.accumulate_grad_batches}; the checkpoint does not match "
                "accumulate_grad_batches"
            )

    def _forward_backward(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        idx: torch.Tensor,
        *,
        zero_grad: bool,
        group_size: int,
        sync: bool,
    ) -> tuple[float, float]:
        """Forward + backward of one micro-batch, gradients added to .grad; (loss, correct)."""
        s = self.state
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        # DDP all-reduces gradients during backward; under no_sync() they only add up locally and
        # the group's last backward all-reduces the sum: one all-reduce per optimizer step. The
        # forward must run inside the context too (DDP's docs).
        no_sync = getattr(self.model, "no_sync", None)
        local = contextlib.nullcontext() if sync or no_sync is None else no_sync()
        with local:
            with autocast(self.device, self.precision):
                out = self.task.loss(self.model, images, targets)
            # Equal micro-batches (the loader drops an incomplete last batch), so the mean over the
            # group's samples is the mean of the micro-batch means: each loss / group_size.
            self.scaler.scale(out["loss"] / group_size).backward()
        # one sync per micro-batch: the NaN guard and the progress bar need the value
        loss_value = out["loss"].item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss became {loss_value} at epoch {s.epoch + 1}, step {s.step + 1}; batch "
                f"samples: {', '.join(self.describe_batch(idx))}. Lower --lr, add --grad-clip, or "
                "check these files; the last good checkpoint is kept."
            )
        # "correct": the batch's summed per-sample accuracy (1/0 per image; pixel accuracy per mask)
        return loss_value, float(out["correct"])

    def _optimizer_step(self) -> None:
        """Clip, step and schedule once per group (the AMP scaler's scale is fixed within it)."""
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    @torch.inference_mode()
    def predict(self, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs N x K float32, targets N) over a loader, in eval mode with autocast; restores the mode after."""
        was_training = self.model.training
        self.model.eval()
        probs, targets = [], []
        for images, y, _ in loader.batches(0):
            with autocast(self.device, self.precision):
                logits = self.model(images)
            probs.append(self.task.scores(logits).cpu())
            targets.append(y.cpu())
        self.model.train(was_training)
        return torch.cat(probs), torch.cat(targets)

    @contextlib.contextmanager
    def evaluating(self, model: nn.Module):
        """Validation and prediction on ``model`` (averaged weights) instead of the trained one
        meanwhile; under DDP the sharded validation's model too."""
        saved = self.model
        task_vars = getattr(self.task, "__dict__", {})
        saved_eval = task_vars.get("eval_model")  # DDP's DistributedTask
        self.model = model
        if saved_eval is not None:
            self.task.eval_model = model
        try:
            yield
        finally:
            self.model = saved
            if saved_eval is not None:
                self.task.eval_model = saved_eval

    def evaluate(self, loader: Any) -> dict[str, float]:
        """Validation metrics by name: the task's `validate(trainer, loader)` when it has one (segmentation:
        loss, accuracy, miou; detection: map50, map), else classification's {"loss", "accuracy"}."""
        if hasattr(self.task, "validate"):
            return self.task.validate(self, loader)
        probs, targets = self.predict(loader)
        nll = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), targets).item()
        return {"loss": nll, "accuracy": (probs.argmax(1) == targets).float().mean().item()}
