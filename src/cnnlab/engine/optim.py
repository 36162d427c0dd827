"""Optimizers and learning-rate schedules (pure functions of the step: easy to test and to resume)."""

from __future__ import annotations

import functools
import inspect
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    lr_scale: dict[str, float] | None = None,
    *,
    include_frozen: bool = False,
) -> list[dict]:
    """Trainable parameters, split so that norms and biases (1-D tensors) get no weight decay.

    `lr_scale` maps a parameter-name prefix to a learning-rate multiplier (discriminative rates for fine-tuning);
    frozen parameters (requires_grad=False) get no group, hence no optimizer state -- unless `include_frozen`
    (recipes that unfreeze later): they then sit in a group but still get no state while they have no gradient.
    """
    lr_scale = lr_scale or {}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad and not include_frozen:
            continue
        scale = next((s for prefix, s in lr_scale.items() if name.startswith(prefix)), 1.0)
        decay = p.ndim > 1
        groups.setdefault((scale, decay), []).append(p)
    return [
        {
            "params": ps,
            "lr": lr * scale,
            "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": scale,
        }
        for (scale, decay), ps in groups.items()
    ]


def _dynamo_only_when_loaded(name: str, raw: Callable[..., Any]) -> Callable[..., Any]:
    """torch.optim.Optimizer's method `name` (its own function `raw`), with torch's dynamo wrapper
    applied only once torch._dynamo is imported.

    Why: torch wraps `step` in `_use_grad_for_differentiable`, which runs `import torch._dynamo` and
    `torch._dynamo.graph_break()` on every call, and `zero_grad`, `add_param_group`, `state_dict` and
    `load_state_dict` in `torch._disable_dynamo`, which imports it on the first call. Importing
    torch._dynamo costs 1.0-1.4 s on a 2-core CPU (sympy, torch.fx's symbolic shapes, FSDP): a
    sixth of a short LeNet run, for wrappers that do nothing unless dynamo is tracing, and nothing
    can be tracing before torch._dynamo is imported. So until it is (by torch.compile, cnnlab's
    compile probe, torchvision.ops or anyone else) `raw` runs as the wrapper would run it (`step`
    with grad mode set to the optimizer's `differentiable`, as torch's wrapper sets it); from then
    on, through torch's own wrapper. tests/test_optim.py checks the parameters and state bit-identical
    to torch's optimizers, and that a training run does not import torch._dynamo.
    """
    from torch.optim.optimizer import _use_grad_for_differentiable

    wrapped = _use_grad_for_differentiable(raw) if name == "step" else torch._disable_dynamo(raw)

    @functools.wraps(raw)
    def call(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" in sys.modules:
            return wrapped(self, *args, **kwargs)
        if name == "step":
            with torch.set_grad_enabled(self.defaults["differentiable"]):
                return raw(self, *args, **kwargs)
        return raw(self, *args, **kwargs)

    return call


def _optimizer(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """`cls` with the methods torch wraps for dynamo run as `_dynamo_only_when_loaded` says; same
    name and docs, so profiler labels, state dicts and isinstance checks read as torch's."""
    # unwrap: through torch's profiling wrapper (added to cls.step once an instance exists) and
    # its dynamo wrapper, to the function torch's source defines
    methods = {
        name: _dynamo_only_when_loaded(name, inspect.unwrap(getattr(cls, name)))
        for name in ("step", "zero_grad", "add_param_group", "state_dict", "load_state_dict")
    }
    return type(cls.__name__, (cls,), {"__module__": __name__, "__doc__": cls.__doc__, **methods})


SGD = _optimizer(torch.optim.SGD)
AdamW = _optimizer(torch.optim.AdamW)


def build_optimizer(
    name: str,
    groups: Iterable[dict],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    device: torch.device,
) -> torch.optim.Optimizer:
    # Fused kernels exist for CUDA (and CPU for AdamW/SGD in recent torch); foreach is the portable fallback.
    fused = device.type in ("cuda", "cpu")
    if name == "adamw":
        return AdamW(groups, lr=lr, fused=fused)
    return SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, fused=fused)


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based) of `total`.

    onecycle: linear warm-up from 1/25 of the peak over the first 25% of steps, then cosine down to ~0
      (Smith & Topin 2019, as torch's OneCycleLR with anneal_strategy="cos" but linear warm-up);
    cosine: linear warm-up over `warmup` steps, then cosine to 0;
    constant: 1 after `warmup` linear steps.
    """
    total = max(total, 1)
    if schedule == "onecycle":
        up = max(1, int(0.25 * total))
        if step < up:
            return 1 / 25 + (1 - 1 / 25) * step / up
        t = (step - up) / max(1, total - up)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0))) + 1e-4
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, schedule, warmup_steps)
    )
