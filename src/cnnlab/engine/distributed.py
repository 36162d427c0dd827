"""Multi-process training and evaluation with PyTorch DistributedDataParallel (DDP).

One process per device, started by torchrun (`python -m torch.distributed.run`), which sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `cnnlab train --devices N` re-executes itself
through it (`launch`). Without those variables every function here is a no-op for a single process.

What each rank does (see `cnnlab.api.train`):
  * data: rank r takes samples r, r + W, ... of the epoch's seeded permutation
    (`TensorLoader.shard`), with a per-rank batch of b = B / W, so global step k sees exactly the B
    samples (and augmentations) a single process with batch B sees at step k; a checkpoint is
    therefore resumable under any world size.
  * gradients: DDP all-reduces the mean gradient  g = (1/W) sum_r g_r,  g_r the mean over rank r's b
    samples, so g = (1/B) sum_i grad loss_i, the single-process gradient up to floating-point
    summation order.
  * gradient accumulation (`accumulate_grad_batches` k): the trainer runs the first k - 1
    micro-batches of each group under `no_sync()`, so gradients are all-reduced once per optimizer
    step; unfreezing during a run (fine-tune / gradual) rebuilds the wrapper (`FollowTrainable`).
  * per step one extra all-reduce of 4 numbers (`DistributedTask.loss`): the global loss for logging
    and the NaN guard, the correct count, and any pending stop (SIGTERM / Ctrl-C), so all ranks stop
    at the same step.
  * evaluation: rank r predicts batches r, r + W, ... of the single-process batching; `gather_eval`
    puts the predictions back in sample order, so every metric equals the single-process one
    exactly.
  * rank 0 alone writes the run directory, checkpoints (weights of the unwrapped module: no
    `module.` prefix, world-size independent), logs and reports.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.engine.trainer import Callback, Trainer, autocast
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)

_INFO: DistInfo | None = None  # set once the process group is up (one per process)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. backend None: a single process, no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# -- process group
# -------------------------------------------------------------------------------------------
def launched() -> bool:
    """True inside a process started by torchrun (or any launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun restarted the workers (`--max-restarts`); 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def max_restarts() -> int:
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)


def _env_int(name: str) -> int:
    value = os.environ.get(name, "0")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer") from None


def init_from_env(device: str | torch.device = "auto", *, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's RANK / WORLD_SIZE / LOCAL_RANK (idempotent).

    device: "auto" (CUDA when visible, else CPU), "cpu" or "cuda". CUDA ranks use cuda:LOCAL_RANK
    and the nccl backend; CPU ranks use gloo. Outside torchrun, or with WORLD_SIZE 1, returns
    single-process info (rank 0 of 1, backend None) and starts nothing. `timeout_s` bounds how long
    a collective waits for a rank that is gone (torchrun normally stops the others first).
    """
    global _INFO
    if _INFO is not None and dist.is_initialized():
        return _INFO
    want = str(device)
    if not launched() or _env_int("WORLD_SIZE") <= 1:
        dev = torch.device(
            "cuda"
            if want == "auto" and torch.cuda.is_available()
            else ("cpu" if want == "auto" else want)
        )
        return DistInfo(device=dev)
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if want == "mps":
        raise ConfigError(
            "--device mps cannot run DistributedDataParallel; use --device cpu or cuda"
        )
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    if use_cuda:
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(
                "--device cuda was asked for, but no CUDA GPU is visible; use --device cpu"
            )
        if local >= count:
            raise ConfigError(
                f"LOCAL_RANK {local} but only {count} GPU(s) are visible on this node: start "
                f"at most {count} processes per node (--devices / --nproc-per-node)"
            )
        dev, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(dev)
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kw: dict[str, Any] = {"device_id": dev} if backend == "nccl" else {}
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(
            backend,
            store=_attempt_store(rank, world, timeout),
            rank=rank,
            world_size=world,
            timeout=timeout,
            **kw,
        )
        atexit.register(shutdown)
    _INFO = DistInfo(rank, world, local, dev, backend)
    log.info("rank %d of %d on %s (%s)", rank, world, dev, backend)
    return _INFO


def _attempt_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """torchrun's store, with the keys of this restart attempt under their own prefix.

    Why: torchrun (c10d rendezvous, the default) hosts ONE TCPStore in the agent for the whole job
    and its workers reuse it on every restart (TORCHELASTIC_USE_AGENT_STORE). The process group's
    keys (gloo's per-rank listening addresses, the barrier counters) are the same names on every
    attempt, so after a restart rank 0 could read the address a killed rank 1 published in the
    previous attempt before the new rank 1 overwrote it, and gloo failed with "connectFullMesh
    failed ... Connection refused" about half the time. A prefix per attempt
    (TORCHELASTIC_RESTART_COUNT) gives every attempt fresh keys.
    """
    store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
    return dist.PrefixStore(f"cnnlab/attempt-{restart_count()}", store)


def join(command: str, devices: int, device: str) -> tuple[DistInfo, torch.device]:
    """(process-group info, this rank's device) for a training command: torchrun's group when
    launched by it, else one process; ``devices > 1`` outside torchrun is a one-line error."""
    from cnnlab.engine.devices import resolve_device

    info = init_from_env(device)
    if devices > 1 and not info.distributed:
        raise ConfigError(
            f"devices={devices} needs one process per device: run `{command} --devices "
            f"{devices} ...`"
        )
    return info, (info.device if info.distributed else resolve_device(device))


def current() -> DistInfo:
    """The info `init_from_env` returned in this process, or single-process info when none was set
    up."""
    if _INFO is not None and dist.is_initialized():
        return _INFO
    return DistInfo()


def shutdown() -> None:
    """Leave the process group (registered at exit; safe to call twice)."""
    global _INFO
    if dist.is_initialized():
        with contextlib.suppress(RuntimeError):
            dist.destroy_process_group()
    _INFO = None


def is_main() -> bool:
    """True on rank 0 and in a single process: the one process that writes files and prints."""
    return current().is_main


def barrier() -> None:
    info = current()
    if not info.distributed:
        return
    if info.backend == "nccl":
        dist.barrier(device_ids=[info.local_rank])
    else:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` (picklable; e.g. the run directory's path) on every rank."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_flag(flag: bool) -> bool:
    """True on every rank when `flag` is True on any rank (a logical OR over ranks)."""
    info = current()
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def local_batch_size(batch_size: int, info: DistInfo) -> int:
    """Per-rank batch b = B / W for a global batch B; B must split evenly so each step sees B
    samples."""
    if batch_size % info.world_size:
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch and must split evenly over "
            f"{info.world_size} processes; use a multiple of {info.world_size}, e.g. "
            f"{max(1, round(batch_size / info.world_size)) * info.world_size}"
        )
    return batch_size // info.world_size


def decorrelate_rng(info: DistInfo) -> None:
    """Give each rank its own torch RNG stream (dropout masks), derived from the shared one and the
    rank.

    Every rank starts from the same seed (same initial weights); without this, rank r's sample j
    would get the same dropout mask as rank 0's sample j. Deterministic given (seed or restored
    state, rank).
    """
    if not info.distributed:
        return
    base = int(torch.randint(0, 2**62, (1,)).item())  # the same draw on every rank
    torch.manual_seed((base + 0x9E3779B97F4A7C15 * (info.rank + 1)) % 2**63)


# -- the model
# -----------------------------------------------------------------------------------------------
class _DDP(nn.parallel.DistributedDataParallel):
    """DDP whose state_dict is the unwrapped model's: checkpoints carry no `module.` prefix, so they
    load into a plain model and resume under any world size."""

    def __init__(self, module: nn.Module, raw: nn.Module, **kw: Any):
        super().__init__(module, **kw)
        object.__setattr__(
            self, "_raw_module", raw
        )  # not a submodule: no second copy in state_dict
        # DDP builds its gradient buckets and hooks for these parameters only (see FollowTrainable)
        object.__setattr__(self, "_trainable", trainable_names(raw))

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._raw_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._raw_module.load_state_dict(state_dict, strict=strict, assign=assign)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and/or torch.compile wrappers."""
    raw = getattr(model, "_raw_module", None)
    if raw is not None:
        return raw
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


def trainable_names(model: nn.Module) -> frozenset[str]:
    """Names of the parameters that require a gradient now."""
    return frozenset(n for n, p in model.named_parameters() if p.requires_grad)


def rewrap_ddp(ddp: _DDP) -> _DDP:
    """A new DDP wrapper around the same module, for the parameters that require grad *now*.

    DDP registers its all-reduce hooks and buckets only for the parameters that require grad when
    it is built; one unfrozen later would never be averaged and the ranks would drift apart
    (`find_unused_parameters` does not help: it covers parameters in the buckets that get no
    gradient, not parameters left out of them). The old wrapper's hooks are removed first, and the
    new one broadcasts rank 0's parameters and buffers, as at the start (they are equal already).
    A collective: every rank must call it at the same point.
    """
    ddp._remove_autograd_hooks()
    return _DDP(ddp.module, ddp._raw_module, device_ids=ddp.device_ids)


def wrap_ddp(model: nn.Module, info: DistInfo, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` (already on `info.device`); the model itself when
    single.

    sync_bn: BatchNorm layers become SyncBatchNorm (batch statistics over the global batch, as a
    single process with batch B computes them); their parameters and buffers keep their names, so
    checkpoints stay plain. Without it each rank normalises with its own b = B / W samples'
    statistics and the running statistics of rank 0 are the ones kept (DDP broadcasts buffers from
    rank 0 before every forward).
    """
    if not info.distributed:
        if sync_bn:
            log.info("sync_bn has no effect in a single process")
        return model
    raw = unwrap(model)
    if sync_bn:
        if info.device.type != "cuda":
            raise ConfigError(
                "--sync-bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); drop "
                "--sync-bn or use --device cuda"
            )
        # in place on the children: the root object, its Parameters and the optimizer's references
        # survive
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
        assert converted is raw, (
            "a bare BatchNorm layer as the whole model cannot be converted in place"
        )
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return _DDP(model, raw, device_ids=device_ids)


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so evaluation on any rank
    uses the model rank 0 saves. (Between steps DDP's pre-forward broadcast left each rank's own
    last update.)"""
    if not current().distributed:
        return
    for buf in unwrap(model).buffers():
        dist.broadcast(buf, src=0)


# -- evaluation
# ----------------------------------------------------------------------------------------------
def gather_eval(
    probs: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, n_total: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's predictions, in sample order 0..n_total-1, on every rank (CPU tensors).

    probs: (n_r, K) scores, targets: (n_r,) or (n_r, L) (multi-label), indices: (n_r,) sample
    index of each row on this rank; counts may differ between ranks. Rows are padded to the
    longest rank (index -1), all-gathered, and put back at their index; a sample predicted on
    several ranks (DistributedSampler-style padding) keeps its first occurrence in rank order.
    Raises if a sample of 0..n_total-1 is missing.
    """
    info = current()
    probs, targets, indices = probs.detach(), targets.detach(), indices.detach().long()
    if info.distributed:
        dev = info.device
        count = torch.tensor([probs.shape[0]], device=dev)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        m, pad = int(count.item()), int(count.item()) - probs.shape[0]
        p = torch.cat([probs.to(dev), probs.new_zeros((pad, *probs.shape[1:]), device=dev)])
        # targets (n_r,) class indices or (n_r, L) multi-label rows: padded like the probs
        t = torch.cat(
            [targets.to(dev), targets.new_full((pad, *targets.shape[1:]), -1, device=dev)]
        )
        i = torch.cat([indices.to(dev), indices.new_full((pad,), -1, device=dev)])
        parts = {}
        for name, x in (("p", p), ("t", t), ("i", i)):
            out = [torch.empty_like(x) for _ in range(info.world_size)]
            dist.all_gather(out, x)
            parts[name] = torch.cat(out).cpu()
        probs, targets, indices = parts["p"], parts["t"], parts["i"]
        assert probs.shape[0] == m * info.world_size
    probs, targets, indices = probs.cpu(), targets.cpu(), indices.cpu()
    keep = indices >= 0
    probs, targets, indices = probs[keep], targets[keep], indices[keep]
    if indices.numel() and int(indices.max()) >= n_total:
        raise RuntimeError(f"gather_eval: sample index {int(indices.max())} >= n_total {n_total}")
    # first occurrence of each index: a stable sort keeps rank order among equal indices
    order = torch.sort(indices, stable=True).indices
    sorted_idx = indices[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    order = order[first]
    if order.numel() != n_total:
        raise RuntimeError(
            f"gather_eval: {n_total - order.numel()} of {n_total} samples were predicted on no rank"
        )
    return probs[order], targets[order]


@torch.inference_mode()
def predict_sharded(
    model: nn.Module,
    task: Any,
    loader: Any,
    *,
    device: torch.device,
    precision: str = "32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs N x K, targets N) over an unshuffled, unsharded loader, the batches split over the
    ranks.

    Rank r predicts batches r, r + W, ... of exactly the batches a single process predicts, so each
    sample's scores are computed in the same batch as there (bit-identical on the same hardware),
    then gathered. `model` must be the unwrapped model (its forward runs no collectives). Restores
    the training mode.
    """
    info = current()
    raw = unwrap(model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
    was_training = raw.training
    raw.eval()
    probs, targets, indices = [], [], []
    for step in range(info.rank, len(loader), info.world_size):
        images, y, idx = next(iter(loader.batches(0, start=step)))
        with autocast(device, precision):
            logits = raw(images)
        probs.append(task.scores(logits).float().cpu())
        targets.append(y.cpu())
        indices.append(idx.cpu())
    raw.train(was_training)
    k = int(getattr(task, "num_classes", 0)) or None
    if probs:
        p, t, i = torch.cat(probs), torch.cat(targets), torch.cat(indices)
    else:  # more ranks than batches: this rank contributes nothing
        if k is None:
            raise RuntimeError("predict_sharded: a rank without batches needs task.num_classes")
        row = tuple(getattr(loader, "targets", torch.empty(0)).shape[1:])  # (L,): multi-label
        p, t, i = (
            torch.empty(0, k),
            torch.empty((0, *row), dtype=torch.long),
            torch.empty(0, dtype=torch.long),
        )
    return gather_eval(p, t, i, loader.num_samples)


# -- the training step
# ---------------------------------------------------------------------------------------
class _ReportAs(torch.autograd.Function):
    """Forward: `value` (the global loss); backward: the gradient flows to `loss` unchanged."""

    @staticmethod
    def forward(ctx: Any, loss: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.detach().to(loss.dtype).reshape(loss.shape).clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class DistributedTask:
    """Wraps a task for DDP; every attribute but `loss` and `validate` is the wrapped task's.

    loss: one all-reduce of (loss * b, correct, b, stop) per step. The returned loss *value* is the
    global mean over the B samples (what the progress bar, the history and the NaN guard see,
    identical on every rank); its gradient is the local loss's, which DDP averages. `correct`
    becomes the global count / W, so the trainer's per-rank sums divided by its per-rank sample
    count give the global accuracy. validate: sharded prediction + `gather_eval` on the unwrapped
    model, so val metrics equal the single-process ones and are identical on every rank (early
    stopping and "best" agree everywhere).
    """

    def __init__(self, task: Any, info: DistInfo, eval_model: nn.Module):
        self.task, self.info, self.eval_model = task, info, eval_model
        self.pending_stop = ""  # set by a signal handler at any moment; agreed on at the next step
        self.agreed_stop = ""

    def __getattr__(self, name: str) -> Any:
        if name == "task":  # not yet set (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        out = dict(self.task.loss(model, images, targets))
        loss, n = out["loss"], images.shape[0]
        packed = torch.zeros(4, dtype=torch.float64, device=self.info.device)
        packed[0] = loss.detach().double() * n
        packed[1] = torch.as_tensor(out["correct"], dtype=torch.float64)
        packed[2] = float(n)
        packed[3] = 1.0 if self.pending_stop else 0.0
        dist.all_reduce(packed)
        if packed[3].item() > 0 and not self.agreed_stop:
            self.agreed_stop = self.pending_stop or "interrupted on another rank"
        out["loss"] = _ReportAs.apply(loss, packed[0] / packed[2])
        out["correct"] = packed[1] / self.info.world_size
        return out

    def validate(self, trainer: Trainer, loader: Any) -> dict[str, float]:
        """The wrapped task's validation metrics over the whole loader (its `metrics_from_probs`;
        else {"loss", "accuracy"}), as `Trainer.evaluate` computes them in one process."""
        sync_buffers(self.eval_model)
        probs, targets = predict_sharded(
            self.eval_model, self.task, loader, device=trainer.device, precision=trainer.precision
        )
        from_probs = getattr(self.task, "metrics_from_probs", None)
        if from_probs is not None:
            return from_probs(probs, targets)
        nll = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), targets).item()
        return {"loss": nll, "accuracy": (probs.argmax(1) == targets).float().mean().item()}


class DistributedSync(Callback):
    """Append LAST. Ctrl-C / SIGTERM on any rank stops every rank after the same step (then rank 0's
    Checkpoint callback saves a resumable checkpoint); at each epoch end the stop flag (early
    stopping) is OR-ed over ranks, which also waits for rank 0's checkpoint. Replaces
    GracefulInterrupt under DDP."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, task: DistributedTask):
        self.task = task
        self._previous: dict[int, Any] = {}

    def on_fit_start(self, trainer: Trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread

        def handler(signum: int, frame: Any) -> None:
            self.task.pending_stop = f"interrupted by {signal.Signals(signum).name}"
            signal.signal(
                signal.SIGINT, signal.default_int_handler
            )  # a second Ctrl-C stops at once

        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, handler)

    def on_batch_end(self, trainer: Trainer, loss: float, correct: int, size: int) -> None:
        if self.task.agreed_stop:  # decided in the step's all-reduce: the same step on every rank
            s = trainer.state
            s.stop = s.interrupted = True
            s.stop_reason = self.task.agreed_stop

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        s = trainer.state
        if all_reduce_flag(s.stop) and not s.stop:
            s.stop, s.stop_reason = True, "stopped on another rank"

    def on_fit_end(self, trainer: Trainer) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous = {}


class FollowTrainable(Callback):
    """Append AFTER the callbacks that change `requires_grad` (fine-tune / gradual unfreezing,
    `cnnlab.transfer.recipes.StagedUnfreeze`): at each epoch start, when the set of trainable
    parameters differs from the one the DDP wrapper was built for, rebuild it (`rewrap_ddp`).

    The schedule is a function of the epoch, so every rank rebuilds at the same epoch (resumed
    runs too). Frozen parameters get no gradient, so no rank's optimizer moves them: they stay
    equal to rank 0's on every rank.
    """

    def on_epoch_start(self, trainer: Trainer) -> None:
        ddp = trainer.model
        if not isinstance(ddp, _DDP) or trainable_names(ddp._raw_module) == ddp._trainable:
            return
        trainer.model = rewrap_ddp(ddp)
        log.info("DDP rebuilt for %d trainable parameter tensors", len(trainer.model._trainable))


class BatchShard:
    """Rank r of W takes micro-batches r, r + W, r + 2W, ... of a loader built with the per-rank
    batch b = B / W, so one optimizer step sees W x b = B samples, as one process with batch B.
    Every rank gets floor(len / W) batches (DDP needs the same number of steps on each). For the
    task loaders (masks, boxes) whose batches carry no shard parameter: the batches a rank skips are
    still drawn (their index_select and augmentation, cheap next to forward and backward), which
    keeps each batch's seeded augmentation that of the single-process run."""

    def __init__(self, loader: Any, info: DistInfo) -> None:
        self.loader, self.rank, self.world = loader, info.rank, info.world_size

    def __len__(self) -> int:
        return len(self.loader) // self.world

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples

    def batches(self, epoch: int = 0, start: int = 0) -> Any:
        """This rank's batches of `epoch`, from its `start`-th (a resumed epoch)."""
        first = start * self.world + self.rank
        stop = len(self) * self.world
        for i, batch in enumerate(self.loader.batches(epoch, start=first), start=first):
            if i >= stop:
                break
            if (i - self.rank) % self.world == 0:
                yield batch


class GlobalThroughput(Callback):
    """Insert FIRST: images/s summed over ranks, before the progress line and metrics.csv see it."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        metrics["train_images_per_s"] *= self.world_size


# -- launching
# -----------------------------------------------------------------------------------------------
def torchrun_command(
    argv: Sequence[str], nproc: int, *, max_restarts: int = 0, module: str = "cnnlab"
) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N [--max-restarts R] -m cnnlab
    ARGV`."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
    ]
    if max_restarts:
        cmd += ["--max-restarts", str(max_restarts)]
    return [*cmd, "-m", module, *argv]


def launch(argv: list[str], nproc: int, *, max_restarts: int = 0) -> int:
    """Re-run `cnnlab ARGV` as `nproc` processes on this node through torchrun; returns its exit
    status.

    For `cnnlab train ... --devices N`: the children see RANK / WORLD_SIZE and train instead of
    launching again. Multi-node jobs call torchrun themselves (docs/distributed.md).
    """
    if nproc < 1:
        raise ConfigError(f"--devices must be >= 1, got {nproc}")
    if launched():
        raise ConfigError("already running under torchrun: start the job once, without --devices")
    cuda = torch.cuda.is_available()
    if cuda and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"--devices {nproc} but {torch.cuda.device_count()} GPU(s) are visible; use at most "
            "that many (or --device cpu for CPU processes)"
        )
    env = dict(os.environ)
    if not cuda:
        # N CPU processes share the cores: one thread each unless the user chose (torchrun's own
        # default)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = torchrun_command(argv, nproc, max_restarts=max_restarts)
    log.info("launching: %s", " ".join(cmd))
    return subprocess.run(cmd, env=env, check=False).returncode


def restart_run_dir(
    out: str, name: str | None, resume: str | None
) -> tuple[str | None, Path | None]:
    """How a torchrun job with `--max-restarts` finds its run again: (resume, run_dir to reuse).

    First attempt: a restartable job needs `--name` and a fresh out/name (else a restart could not
    tell its run from an older one). A restart resumes ("auto") when out/name has checkpoints, else
    reuses out/name (killed before the first checkpoint). Outside torchrun or without restarts:
    (resume, None) unchanged.
    """
    if resume or not launched() or max_restarts() == 0:
        return resume, None
    if not name:
        raise ConfigError(
            "torchrun --max-restarts needs --name NAME: a restarted job finds its run as --out/NAME"
        )
    run_dir = Path(out) / name
    if restart_count() == 0:
        if run_dir.exists():
            raise ConfigError(
                f"{run_dir} exists; a job with --max-restarts needs a new --name (or --resume "
                "auto to continue that run)"
            )
        return None, None
    if (run_dir / "checkpoints" / "manifest.json").is_file():
        return "auto", None
    return None, run_dir if run_dir.is_dir() else None
