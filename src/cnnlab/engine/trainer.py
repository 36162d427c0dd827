"""The training loop, written once for every task: forward, loss, backward, step.

Everything else (progress, CSV logging, checkpoints, early stopping, interruption) is a callback with no-op hooks,
and stopping is a flag (Keras' `Callback`, fastai's event protocol).
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

from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)


class NonFiniteLossError(CnnlabError):
    """The loss became NaN or Inf; the message names the epoch, step and the batch's samples."""


@dataclass
class LoopState:
    epoch: int = 0  # 0-based epoch being run (or about to run)
    step: int = 0  # batches done in this epoch
    global_step: int = 0
    stop: bool = False
    stop_reason: str = ""
    interrupted: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


class Callback:
    """No-op hooks; subclasses override what they need. `state_dict` travels in checkpoints."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer, loss: float, correct: int, size: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
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
    ):
        self.model, self.task = model, task
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.precision, self.grad_clip = device, precision, grad_clip
        self.callbacks = list(callbacks)
        self.describe_batch = describe_batch or (lambda idx: [str(int(i)) for i in idx[:8]])
        # Transfer learning keeps frozen BatchNorm layers in eval mode; plain training just calls .train().
        self.train_mode = train_mode or (lambda m: m.train())
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
        self.state = LoopState()

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def fit(self, train_loader: Any, val_loader: Any | None, epochs: int) -> LoopState:
        s = self.state
        self._emit("on_fit_start")
        while s.epoch < epochs and not s.stop:
            self.train_mode(self.model)
            self._emit("on_epoch_start")
            t0, seen, loss_sum, correct_sum = time.perf_counter(), 0, 0.0, 0
            for images, targets, idx in train_loader.batches(s.epoch, start=s.step):
                with autocast(self.device, self.precision):
                    out = self.task.loss(self.model, images, targets)
                loss = out["loss"]
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                loss_value = (
                    loss.item()
                )  # one sync per step: needed for the NaN guard and the progress bar
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"loss became {loss_value} at epoch {s.epoch + 1}, step {s.step + 1}; batch samples: "
                        f"{', '.join(self.describe_batch(idx))}. Lower --lr, add --grad-clip, or check these "
                        "files; the last good checkpoint is kept."
                    )
                if self.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                # "correct": the batch's summed per-sample accuracy (1/0 per image; pixel accuracy per mask)
                n, correct = images.shape[0], float(out["correct"])
                seen, loss_sum, correct_sum = (
                    seen + n,
                    loss_sum + loss_value * n,
                    correct_sum + correct,
                )
                s.step, s.global_step = s.step + 1, s.global_step + 1
                self._emit("on_batch_end", loss_value, correct, n)
                if (
                    s.stop
                ):  # interruption: leave mid-epoch, the checkpoint callback saves (epoch, step)
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
                "train_images_per_s": seen / max(elapsed, 1e-9),
            }
            if val_loader is not None:
                val = self.evaluate(val_loader)
                metrics |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
            s.history.append(metrics)
            self._emit("on_epoch_end", metrics)
            s.epoch, s.step = s.epoch + 1, 0
        self._emit("on_fit_end")
        return s

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

    def evaluate(self, loader: Any) -> dict[str, float]:
        """Validation {"loss", "accuracy"}; tasks other than classification supply `validate(trainer, loader)`."""
        if hasattr(self.task, "validate"):
            return self.task.validate(self, loader)
        probs, targets = self.predict(loader)
        nll = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), targets).item()
        return {"loss": nll, "accuracy": (probs.argmax(1) == targets).float().mean().item()}
