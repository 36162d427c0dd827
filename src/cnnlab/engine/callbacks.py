"""Small single-purpose callbacks (Keras style): progress, CSV log, checkpoints, early stopping, interruption."""

from __future__ import annotations

import csv
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cnnlab.engine.checkpoint import CheckpointManager
from cnnlab.engine.distributed import unwrap
from cnnlab.engine.trainer import Callback, Trainer

log = logging.getLogger(__name__)


def better(monitor: str, new: float, old: float | None) -> bool:
    """`*_loss` is lower-better; everything else (accuracy, *_score) higher-better (scikit-learn's convention)."""
    if old is None:
        return math.isfinite(new)
    return new < old if monitor.endswith("loss") else new > old


class Progress(Callback):
    """Live rich progress bar with loss, accuracy and images/s; one summary line per epoch with every
    val_<name> metric the task's validation reported."""

    def __init__(
        self, epochs: int, steps_per_epoch: int, console: Any = None, enabled: bool = True
    ):
        self.epochs, self.steps, self.enabled = epochs, steps_per_epoch, enabled
        self.console = console
        self._bar = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        acc = "  acc {task.fields[acc]:.3f}" if trainer.reports_accuracy else ""
        self._bar = RichProgress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}" + acc + "  {task.fields[ips]:,.0f} img/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._bar.start()

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._t0, self._seen, self._loss, self._correct = time.perf_counter(), 0, 0.0, 0
        if self._bar is not None:
            self._task = self._bar.add_task(
                "train",
                total=self.steps,
                completed=trainer.state.step,
                epoch=f"{trainer.state.epoch + 1}/{self.epochs}",
                loss=0.0,
                acc=0.0,
                ips=0.0,
            )

    def on_batch_end(self, trainer: Trainer, loss: float, correct: int, size: int) -> None:
        self._seen += size
        self._loss += loss * size
        self._correct += correct
        if self._bar is not None:
            dt = max(time.perf_counter() - self._t0, 1e-9)
            self._bar.update(
                self._task,
                advance=1,
                loss=self._loss / self._seen,
                acc=self._correct / self._seen,
                ips=self._seen / dt,
            )

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)
        if self.enabled and self.console is not None:
            acc = f"  acc {metrics['train_accuracy']:.4f}" if "train_accuracy" in metrics else ""
            val = "".join(f"  {k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_"))
            self.console.print(
                f"epoch {int(metrics['epoch']):>3}/{self.epochs}  loss {metrics['train_loss']:.4f}"
                f"{acc}{val}  {metrics['train_images_per_s']:,.0f} img/s  "
                f"{metrics['epoch_time_s']:.1f}s"
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.stop()


class CSVLogger(Callback):
    """Appends one row per epoch to metrics.csv (re-written from history on resume, so rows never repeat)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._write(trainer.state.history)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._write(trainer.state.history)

    def _write(self, rows: list[dict[str, float]]) -> None:
        if not rows:
            return
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)


class EarlyStopping(Callback):
    def __init__(self, monitor: str = "val_accuracy", patience: int = 5):
        self.monitor, self.patience = monitor, patience
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None:
            return
        if better(self.monitor, value, self.best):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.state.stop = True
            trainer.state.stop_reason = (
                f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                f"(best {self.best:.4f})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))


class WeightAveraging(Callback):
    """``--ema DECAY``: an exponential moving average of the weights, beside the trained ones.

    torch.optim.swa_utils.AveragedModel with use_buffers=True (BatchNorm's running statistics are
    averaged too, as torchvision's reference does): after optimizer step t + 1 (t updates averaged
    so far) ema = d_t * ema + (1 - d_t) * weights, starting from the weights after the first step,
    with the warm-up d_t = min(decay, (1 + t) / (10 + t)) of TensorFlow's ExponentialMovingAverage
    (``num_updates``). Without it a short run's average spans the far-apart weights of its
    high-learning-rate start: measured with --recipe strong --ema 0.99 on ResNet-18 (90 steps,
    benchmarks/bench_recipes.py), the average stayed at chance (val accuracy 0.10-0.32) while
    the trained weights reached 0.76-0.91. The decay reaches 0.99 after 890 steps, 0.999 after
    8,990. Each epoch's validation runs on the averaged weights too, recorded as
    ``val_ema_<name>`` beside ``val_<name>``; :class:`Checkpoint` keeps whichever of the two is
    better as best. Its state (the averaged weights and step count) travels in every resumable
    checkpoint, so a resumed run averages exactly as an uninterrupted one.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel

        self.model, self.decay = model, decay  # the plain model (no DDP / compile wrapper)
        self.averaged = AveragedModel(model, multi_avg_fn=warmed_up_ema(decay), use_buffers=True)

    def on_optimizer_step(self, trainer: Trainer) -> None:
        self.averaged.update_parameters(self.model)

    def on_validation_end(self, trainer: Trainer, loader: Any, metrics: dict[str, float]) -> None:
        if int(self.averaged.n_averaged) == 0:
            return  # no step yet: nothing averaged
        self.averaged.module.eval()
        with trainer.evaluating(self.averaged.module):
            found = trainer.evaluate(loader)
        metrics.update({f"val_ema_{k}": float(v) for k, v in found.items()})

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's own keys (what a checkpoint stores)."""
        return self.averaged.module.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "averaged": self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "averaged" in state:
            self.averaged.load_state_dict(state["averaged"])


def warmed_up_ema(decay: float) -> Callable[[list, list, Any], None]:
    """AveragedModel's ``multi_avg_fn`` for an EMA whose decay warms up with the number of updates
    averaged (``num_averaged``, a tensor): d_t = min(decay, (1 + t) / (10 + t)). By hand because
    torch.optim.swa_utils.get_ema_multi_avg_fn has a fixed decay; the update itself is its
    ``_foreach_lerp_`` (integer buffers, such as BatchNorm's step count, as a weighted sum)."""

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        t = int(num_averaged)
        d = min(decay, (1 + t) / (10 + t))
        if torch.is_floating_point(ema[0]) or torch.is_complex(ema[0]):
            torch._foreach_lerp_(ema, current, 1 - d)
        else:
            for e, c in zip(ema, current, strict=True):
                e.copy_(e * d + c * (1 - d))

    return update


def ema_key(monitor: str) -> str | None:
    """``val_accuracy`` -> ``val_ema_accuracy``: the averaged weights' value of a monitored metric
    (None for a training metric, which the averaged weights do not have)."""
    return "val_ema_" + monitor.removeprefix("val_") if monitor.startswith("val_") else None


class Checkpoint(Callback):
    """Saves a resumable checkpoint after every completed epoch (and on interruption), plus best weights.

    `best` is updated only from a completed epoch whose monitored value is finite. Weights are the
    plain model's (`weights`): never torch.compile's `_orig_mod.` or DDP's `module.` prefixes, so a
    checkpoint loads into an uncompiled model in one process.

    With weight averaging (:class:`WeightAveraging`) the epoch's candidate for best is whichever of
    the trained and the averaged weights has the better monitored value (``val_ema_<name>``); the
    best file's metadata says which (``"weights": "ema"`` or ``"raw"``), and so does
    :meth:`final_weights`. Epoch checkpoints hold the trained weights; the averaged ones travel in
    their resumable state.
    """

    def __init__(
        self, manager: CheckpointManager, metadata: Callable[[], dict[str, Any]], monitor: str
    ):
        self.manager, self.metadata, self.monitor = manager, metadata, monitor
        self.best: float | None = None
        self.best_weights, self.best_epoch = "raw", 0  # which weights best holds, from which epoch

    @staticmethod
    def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
        return unwrap(trainer.model).state_dict()

    def _state(self, trainer: Trainer, complete: bool) -> dict[str, Any]:
        s = trainer.state
        return {
            "epoch": s.epoch,
            "step": s.step,
            "complete_epoch": complete,
            "global_step": s.global_step,
            "epoch_sums": list(s.epoch_sums),
            "history": s.history,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in trainer.callbacks},
        }

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor, metrics.get("train_loss"))
        key = self.monitor if self.monitor in metrics else "train_loss"
        source, averaged = "raw", None
        ema_value = metrics.get(ema_key(key) or "")
        if ema_value is not None and better(key, ema_value, value):
            averaged = next(cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging))
            source, value = "ema", ema_value
        is_best = better(key, value, self.best)
        if is_best:
            self.best, self.best_weights = value, source
            self.best_epoch = trainer.state.epoch + 1
        tag = f"epoch-{trainer.state.epoch + 1:04d}"
        self.manager.save(
            tag,
            self.weights(trainer),
            self.metadata(),
            self._state(trainer, complete=True),
            is_best=is_best,
            best=(averaged.weights(), self.metadata() | {"weights": "ema"}) if averaged else None,
        )

    def final_weights(self) -> dict[str, Any]:
        """Which weights the run's final model (what evaluate and predict load) holds, for
        run.json: best.safetensors (trained or averaged, and its epoch) or the last epoch's."""
        if self.manager.best and self.best is not None:
            return {"file": "best.safetensors", "weights": self.best_weights,
                    "epoch": self.best_epoch, "monitor": self.monitor, "value": self.best}  # fmt: skip
        return {"file": "the last epoch's checkpoint", "weights": "raw"}

    def on_fit_end(self, trainer: Trainer) -> None:
        s = trainer.state
        if s.interrupted and s.step > 0:
            tag = f"epoch-{s.epoch + 1:04d}-step-{s.step:06d}"
            self.manager.save(
                tag, self.weights(trainer), self.metadata(), self._state(trainer, False)
            )
            log.warning("interrupted: saved a resumable checkpoint %s", tag)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_weights": self.best_weights, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_weights = state.get("best_weights", "raw")
        self.best_epoch = int(state.get("best_epoch", 0))


class GracefulInterrupt(Callback):
    """Ctrl-C / SIGTERM: finish the current step, save a resumable checkpoint, exit non-zero.

    A second Ctrl-C falls back to the default handler (immediate KeyboardInterrupt).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def on_fit_start(self, trainer: Trainer) -> None:
        self._previous = {}
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread

        def handler(signum: int, frame: Any) -> None:
            trainer.state.stop = trainer.state.interrupted = True
            trainer.state.stop_reason = f"interrupted by {signal.Signals(signum).name}"
            signal.signal(signal.SIGINT, signal.default_int_handler)

        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, handler)

    def on_fit_end(self, trainer: Trainer) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
