"""The learning-rate range test (Smith 2017; fastai's ``lr_find``).

Train a fresh copy of the configured model for ``steps`` mini-batches while the learning rate grows
exponentially from ``start`` to ``end``::

    lr_i = start * (end / start) ** (i / (steps - 1))          i = 0 .. steps-1

and record the loss of each batch. The raw losses are noisy, so they are smoothed exponentially and
debiased as fastai does (``beta = 0.98``)::

    avg_i = beta * avg_{i-1} + (1 - beta) * loss_i,   avg_{-1} = 0
    smooth_i = avg_i / (1 - beta ** (i + 1))

The run stops early once ``smooth_i > 4 * min(smooth)`` (the loss has blown up).

Suggested rate (``suggested_lr``): the **steepest descent** of the smoothed curve, i.e. the lr at
the most negative ``d smooth / d log10(lr)`` (``numpy.gradient``), searched after the curve's
first tenth (fastai's rule) and before its minimum. ``min_lr_div10`` (the lr at the minimum of the
smoothed loss, divided by 10, fastai's older rule) is returned as well. Everything is seeded, so
the same config and seed give the same curve.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BETA = 0.98  # smoothing of the loss curve (fastai's value)
DIVERGE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


def smooth_losses(losses: list[float] | np.ndarray, beta: float = BETA) -> np.ndarray:
    """Debiased exponential moving average of ``losses`` (see the module docstring)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray) -> dict[str, float | None]:
    """Suggested rates from a smoothed curve.

    ``steepest``: lr of the most negative slope of smoothed loss vs log10(lr) before the minimum;
    ``min_div10``: lr at the minimum / 10. None when the curve is too short (< 3 points).
    """
    if len(lrs) < 3:
        return {"steepest": None, "min_div10": None}
    i_min = int(np.argmin(smoothed))
    slope = np.gradient(smoothed, np.log10(lrs))
    # The first tenth of the curve is left out of the search, as fastai's lr_find leaves it out
    # (``num_it // 10``): there the debiased average is still mostly the first few raw losses and
    # its swings are no descent (builtin:digits, batch 16: "steepest" at the 2nd of 100 batches,
    # 1.1e-5, a rate that does not train).
    first = len(lrs) // 10
    upto = max(i_min, first + 2)  # at least a few points to search
    i_steep = first + int(np.argmin(slope[first:upto]))
    return {"steepest": float(lrs[i_steep]), "min_div10": float(lrs[i_min] / 10)}


def lr_find(
    cfg: Any, *, start: float = 1e-5, end: float = 1.0, steps: int = 100, seed: int = 0
) -> dict[str, Any]:
    """Run the range test for a :class:`~cnnlab.config.TrainConfig` (its data, model, optimizer,
    batch size, augmentation, transfer settings); nothing is written and nothing of ``cfg`` changes.

    Returns ``{"lrs", "losses", "smoothed", "suggested_lr", "min_lr_div10", "suggestion_rule",
    "stopped_early", "steps_run", "seed", "model", "data"}`` (JSON-able).
    """
    from cnnlab.config import (
        AugmentParams,
        PreprocessSpec,
        TrainConfig,
        augmentations,
        make_config,
    )
    from cnnlab.data.sources import few_shot, load_source
    from cnnlab.data.tensors import channel_stats
    from cnnlab.engine.devices import resolve_device, seed_everything
    from cnnlab.engine.loaders import make_loader, resolve_image_size, split_to_uint8
    from cnnlab.engine.optim import build_optimizer, param_groups
    from cnnlab.engine.trainer import autocast
    from cnnlab.engine.weights import build_model
    from cnnlab.tasks.classification import ClassificationTask

    if not isinstance(cfg, TrainConfig):
        cfg = make_config(TrainConfig, **dict(cfg))
    if not (0 < start < end):
        raise ConfigError(f"lr_find needs 0 < start < end, got start={start}, end={end}")
    if steps < 3:
        raise ConfigError(f"lr_find needs steps >= 3, got {steps}")
    cfg = replace(cfg, seed=seed)
    seed_everything(seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    bundle = load_source(cfg)
    train = bundle.splits["train"]
    if cfg.shots:
        train = few_shot(train, cfg.shots, seed)
    in_channels = cfg.in_channels or bundle.channels
    image_size = resolve_image_size(cfg, bundle)
    decode = {"max_pixels": cfg.max_image_pixels}
    unit = PreprocessSpec(image_size, in_channels, (0.0,) * in_channels, (1.0,) * in_channels,
                          cfg.resize, decode)  # fmt: skip
    images = split_to_uint8(train, unit)
    mean, std = channel_stats(images)
    model = build_model(cfg.model, len(bundle.class_names), in_channels, image_size, cfg.weights)
    lr_scale, include_frozen, train_mode = None, False, None
    if cfg.init_from or cfg.freeze != "none" or cfg.strategy != "full":
        from cnnlab.transfer.recipes import prepare_transfer

        plan = prepare_transfer(model, cfg, class_names=bundle.class_names, in_channels=in_channels)
        pre = plan.source_preprocess or {}
        if len(pre.get("mean") or ()) == in_channels:
            mean, std = tuple(pre["mean"]), tuple(pre["std"])
        # The range test probes the rates of the recipe's first phase (what trains in epoch 1).
        lr_scale, train_mode = plan.lr_scale, plan.train_mode
    spec = PreprocessSpec(image_size, in_channels, mean, std, cfg.resize, decode)
    model.to(device)
    loader = make_loader(images, train.targets, spec, device, cfg.batch_size, shuffle=True,
                         augment=augmentations(cfg), seed=seed, drop_last=True,
                         num_classes=len(bundle.class_names),
                         augment_params=AugmentParams.of(cfg))  # fmt: skip
    if len(loader) == 0:
        raise DataError(cfg.data, f"fewer training images than one batch of {cfg.batch_size}")
    groups = param_groups(model, cfg.weight_decay, start, lr_scale, include_frozen=include_frozen)
    optimizer = build_optimizer(cfg.optimizer, groups, lr=start, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, device=device)  # fmt: skip
    task = ClassificationTask(len(bundle.class_names), cfg.label_smoothing)
    precision = "32" if cfg.precision == "auto" else cfg.precision  # exact repeats: fp32 by default
    (train_mode or (lambda m: m.train()))(model)

    ratio = end / start
    lrs, losses = [], []
    best, stopped = math.inf, False
    epoch, batches = 0, iter(())
    for i in range(steps):
        lr = start * ratio ** (i / (steps - 1))
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        try:
            images_b, targets_b, _ = next(batches)
        except StopIteration:
            batches = loader.batches(epoch)
            epoch += 1
            images_b, targets_b, _ = next(batches)
        with autocast(device, precision):
            loss = task.loss(model, images_b, targets_b)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.item())
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value):
            stopped = True
            break
        optimizer.step()
        smooth = smooth_losses(losses)[-1]
        best = min(best, smooth)
        if i > 0 and smooth > DIVERGE * best:
            stopped = True
            break
    finite = [k for k, v in enumerate(losses) if math.isfinite(v)]
    lr_arr = np.asarray(lrs)[finite]
    smoothed = smooth_losses(np.asarray(losses)[finite])
    suggestion = suggest_lr(lr_arr, smoothed)
    log.info(
        "lr_find: %d steps, suggested lr %s (steepest descent), min/10 %s",
        len(lrs),
        suggestion["steepest"],
        suggestion["min_div10"],
    )
    return {
        "lrs": [float(x) for x in lrs],
        "losses": [float(x) for x in losses],
        "smoothed": [float(x) for x in smoothed],
        "suggested_lr": suggestion["steepest"],
        "min_lr_div10": suggestion["min_div10"],
        "suggestion_rule": "steepest descent of the smoothed loss vs log10(lr), before its minimum",
        "stopped_early": stopped,
        "steps_run": len(lrs),
        "seed": seed,
        "start": start,
        "end": end,
        "model": cfg.model,
        "data": cfg.data,
    }


def check_plot_path(path: str | Path) -> None:
    """A ConfigError naming --plot when matplotlib cannot write ``path``'s format: said before the
    range test runs (matplotlib's own ValueError came after it, as a traceback)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = (
        FigureCanvasBase.get_supported_filetypes()
    )  # {"png": "Portable Network Graphics", ...}
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ConfigError(
            f"--plot {path}: matplotlib cannot write {'.' + suffix if suffix else 'a file without an extension'}; "
            f"end the name with one of {', '.join('.' + f for f in sorted(formats))} (.png is usual)"
        )


def plot_lr_find(result: dict[str, Any], path: str | Path) -> Path:
    """PNG of loss vs learning rate (log x): raw losses, smoothed curve, the suggestion marked."""
    from cnnlab.report import use_file_backend

    use_file_backend()
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lrs = np.asarray(result["lrs"])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(lrs, result["losses"], color="0.75", lw=1, label="loss per batch")
    n = len(result["smoothed"])
    finite = np.isfinite(np.asarray(result["losses"], dtype=float))
    ax.plot(lrs[finite][:n], result["smoothed"], color="C0", lw=2, label="smoothed")
    if result.get("suggested_lr"):
        lr = result["suggested_lr"]
        ax.axvline(lr, color="C3", ls="--", label=f"suggested {lr:.2g} (steepest)")
    if result.get("min_lr_div10"):
        ax.axvline(result["min_lr_div10"], color="C2", ls=":", label="min / 10")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr range test: {result.get('model', '')} on {result.get('data', '')}")
    smooth = np.asarray(result["smoothed"])
    raw = np.asarray(result["losses"], dtype=float)[finite]
    if len(smooth) and len(raw):  # keep the divergence from squashing the interesting part
        ax.set_ylim(top=min(float(raw.max()), 3 * float(smooth.min()) + 1))
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
