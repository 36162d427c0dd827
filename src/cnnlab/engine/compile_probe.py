"""``--compile auto``: torch.compile (inductor) only where it pays on the machine at hand, decided by a
short timed probe that is recorded in run.json -- never by guesswork about the CPU or GPU.

Whether inductor's fused kernels beat eager mode depends on the model, the input size, the precision
and the machine (on a 2-core CPU a ResNet-18 compile takes minutes; on a GPU it often pays within an
epoch). The probe times forward + backward of the run's first training batch in eager mode, compiles,
times the same steps compiled, and keeps the compiled model only when the seconds it saves over the
run's optimizer steps exceed the compile time once more (validation in eval mode and a differently
sized last batch each cost a further compilation of about that order).

The probe leaves the run as it found it: the model's weights and buffers (BatchNorm statistics) and
the random-number state are restored and the gradients cleared, so ``--compile auto`` trains the same
as ``--compile`` or ``--no-compile`` would from that point (up to the usual compiled-kernel rounding).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnlab.engine import distributed
from cnnlab.engine.trainer import autocast


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_step(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def probe(
    model: nn.Module,
    task: Any,
    batch: tuple[Any, Any],
    device: torch.device,
    precision: str,
    total_steps: int,
    repeats: int = 3,
) -> tuple[nn.Module, dict[str, Any]]:
    """(the module to train: ``torch.compile(model)`` or ``model``, the record for run.json).

    ``batch``: (images, targets) as the train loader yields them; ``total_steps``: the run's
    forward/backward steps still to come (epochs x batches). Under DDP rank 0 decides for all."""
    images, targets = batch
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None

    def step_with(net: nn.Module) -> Callable[[], None]:
        def step() -> None:
            with autocast(device, precision):
                loss = task.loss(net, images, targets)["loss"]
            loss.backward()
            model.zero_grad(set_to_none=True)

        return step

    model.train()
    eager_s = _median_step(step_with(model), device, repeats)
    t0 = time.perf_counter()
    compiled = torch.compile(model)
    compiled_step = step_with(compiled)
    compiled_step()  # the first call compiles forward and backward
    _sync(device)
    compile_s = time.perf_counter() - t0
    compiled_s = _median_step(compiled_step, device, repeats)

    model.load_state_dict(weights)
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)

    saved_s = (eager_s - compiled_s) * total_steps
    use = bool(saved_s > compile_s)
    use = bool(distributed.broadcast_object(use))  # DDP: every rank trains the same way
    record = {
        "eager_step_s": eager_s,
        "compiled_step_s": compiled_s,
        "compile_s": compile_s,
        "steps": total_steps,
        "projected_saving_s": saved_s,
        "compiled": use,
        "rule": "compile when (eager - compiled step) x steps > compile time",
    }
    return (compiled if use else model), record


def resolve(
    setting: bool | str,
    model: nn.Module,
    task: Any,
    loader: Any,
    device: torch.device,
    precision: str,
    epochs: int,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The ``compile`` option -> (the module to train, the probe's record or None)."""
    if setting == "auto":
        batch = next(iter(loader.batches(0)))[:2]  # batches are seeded by (seed, epoch, step)
        # at most this many steps to go (a resumed run has fewer)
        return probe(model, task, batch, device, precision, epochs * len(loader))
    return (torch.compile(model) if setting else model), None
