"""The one fit shell: everything around the :class:`~cnnlab.engine.trainer.Trainer` that every task's
training shares, written once so that classification, segmentation, detection and video runs behave
alike (resume, several processes, checkpoints, early stopping on any named metric, TensorBoard,
MLflow tracking, --compile, precision, the run folder, the final test evaluation).

A task brings a :class:`TaskSpec` (its name, command, config class and a ``prepare`` hook); its
``prepare`` reads the data and builds the model and returns a :class:`Plan` -- what is specific to
the task. :func:`fit` then runs the same steps for all of them::

    config (defaults < file < options) -> torchrun group (--devices N) -> --resume / torchrun restart
    -> task.configure (e.g. --lr auto) -> seed -> task.prepare (data, model, preprocessing)
    -> run folder (rank 0) -> precision, channels_last -> loaders -> optimiser + schedule
    -> callbacks -> DDP wrap -> Trainer (restored when resuming) -> fit -> run.json
    -> test split scored with the best weights (as `cnnlab evaluate RUN` would) -> run size printed
    -> callbacks' on_run_end (--track mlflow logs the test metrics, report and weights)

The shapes ``Trainer`` expects of a task object: ``loss(model, images, targets) -> {"loss", ...}``
and ``validate(trainer, loader) -> {name: value}``, recorded as ``val_<name>``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab import __version__
from cnnlab.config import PreprocessSpec, make_config
from cnnlab.engine import callbacks as cbs
from cnnlab.engine import compile_probe, distributed
from cnnlab.engine.assembly import TrainResult, optimizer_and_schedule, standard_callbacks
from cnnlab.engine.devices import (
    inference_precision,
    machine_info,
    resolve_channels_last,
    resolve_precision,
    seed_everything,
)
from cnnlab.engine.resume import (
    check_same_samples,
    check_unfinished,
    restore,
    resume_target,
    resumed_config,
)
from cnnlab.engine.timing import Timings
from cnnlab.engine.tracking import check_tracking
from cnnlab.engine.trainer import Trainer, check_monitor
from cnnlab.errors import ConfigError, DataError, Interrupted
from cnnlab.run import finish_run_dir, new_run_dir, recorded_config, write_json

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a task's ``prepare`` builds for one run: the part of training that is the task's own.

    ``loaders(device, channels_last, info)`` returns (train loader, val loader or None); the train
    loader's batches are this rank's under DDP (``info``: :class:`cnnlab.engine.distributed.DistInfo`).
    ``evaluate(run_dir, device, precision)`` scores the test split with the run's best weights and
    returns ``{"metrics": ..., "report": path | None}``, or None when there is no test split (or,
    under DDP, on the ranks that do not score it).
    """

    model: nn.Module
    task: Any  # loss + validate
    spec: PreprocessSpec
    metadata: dict[str, Any]  # stored in every checkpoint (task, classes, preprocessing, ...)
    files: dict[str, Any]  # run-folder files beside config.json: JSON-able values, or str as-is
    folder: str  # the model part of a new run folder's name
    loaders: Callable[[torch.device, bool, Any], tuple[Any, Any | None]]
    evaluate: Callable[[Path, torch.device, str], dict[str, Any] | None]
    describe: Callable[[int], str] = str  # training sample index -> its id (errors name samples)
    flops: float | None = None  # per sample: small models stay fp32 under precision "auto"
    # the shape of one training sample (1, C, H, W): the shell counts its FLOPs when ``flops`` is None
    sample_shape: tuple[int, ...] | None = None
    record: dict[str, Any] = field(default_factory=dict)  # extra run.json entries
    # classification's transfer learning: per-parameter lr scale, frozen params kept in the
    # optimiser, epoch callbacks (unfreezing), frozen BatchNorm kept in eval mode
    lr_scale: dict[str, float] | None = None
    include_frozen: bool = False
    callbacks: Sequence[cbs.Callback] = ()
    train_mode: Callable[[nn.Module], None] | None = None
    # DDP: classification shards its validation over the ranks and gathers it (DistributedTask),
    # with per-rank dropout masks; the other tasks validate the whole split on every rank
    sharded_validation: bool = False
    show: Sequence[Any] = ()  # printed once the run folder exists (rank 0, with a console)
    # the report's figure renderer (cnnlab.report.render) that ``prepare`` started and
    # ``evaluate`` draws with; the shell closes it (its worker processes end) once evaluate ends
    renderer: Any = None


@dataclass(frozen=True)
class TaskSpec:
    """A task as the fit shell sees it."""

    name: str  # recorded in every checkpoint: "classification", "segmentation", ...
    command: str  # the CLI command that trains it ("cnnlab segment train"), named in messages
    config: type  # the task's RunConfig subclass
    validator: type  # the task object class (its METRICS name what --monitor may choose)
    # (cfg, info, device, resumed, timings) -> Plan; it laps "scan" / "decode" on ``timings``
    prepare: Callable[[Any, Any, torch.device, Any, Timings], Plan]
    configure: Callable[[Any], Any] | None = None  # cfg -> cfg, before seeding (--lr auto)


def fit(
    spec: TaskSpec,
    config: Any = None,
    *,
    console: Any = None,
    timings: Timings | None = None,
    callbacks: Sequence[cbs.Callback] = (),
    **options: Any,
) -> TrainResult:
    """Train ``spec``'s task: ``config`` (a config object or a JSON/TOML file) < ``options``.

    ``callbacks``: the caller's epoch callbacks (experiment tracking, a tuner's pruning), run after
    the standard ones and the task's own; every task's train function passes them through.

    ``timings``: where the run's seconds go (the CLI's carries the start-up; `cnnlab -v` prints
    it); recorded in run.json as "time_split_s" either way."""
    timings = timings if timings is not None else Timings()
    if isinstance(config, spec.config):
        cfg = make_config(spec.config, **(config.to_dict() | options))
    else:
        cfg = make_config(spec.config, config, **options)
    check_monitor(cfg.monitor, spec.validator, spec.name)
    if cfg.lr == "auto" and spec.configure is None:
        raise ConfigError(f"--lr auto is for classification; give {spec.command} a number")
    t_call = time.perf_counter()
    # DDP: torchrun's process group and this rank's device (one process outside torchrun)
    info, device = distributed.join(spec.command, cfg.devices, cfg.device)
    # DDP: a torchrun restart (--max-restarts) resumes the run its first attempt started
    resume, restart_dir = distributed.restart_run_dir(cfg.out, cfg.name, cfg.resume)
    resumed = resume_target(resume, cfg.out, cfg.name, spec.name) if resume else None
    if resumed:  # the run's own config; only epochs, device, precision, early stopping may change
        cfg = make_config(spec.config, **resumed_config(spec.config, cfg, resumed[0]))
        check_unfinished(*resumed, cfg.epochs)
    if info.is_main:  # a store that will not open: one line before the run folder exists
        check_tracking(cfg)
    if spec.configure is not None:
        cfg = spec.configure(cfg)
    seed_everything(cfg.seed, cfg.deterministic)
    timings.lap("setup")
    plan = spec.prepare(cfg, info, device, resumed, timings)
    if console is not None and info.is_main:
        for item in plan.show:
            console.print(item)
    if plan.flops is None and plan.sample_shape is not None:
        plan.flops = flops_per_sample(plan.model, plan.sample_shape)
    precision = resolve_precision(cfg.precision, device, plan.flops)
    # the final test evaluation runs as `cnnlab evaluate RUN` will by default, so the two agree
    test_precision = inference_precision("auto", device, precision)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    model = plan.model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader, val_loader = plan.loaders(device, channels_last, info)
    if len(train_loader) == 0:
        raise DataError(
            cfg.data,
            f"the training split has {train_loader.num_samples} samples, fewer than one batch of "
            f"{cfg.batch_size}; lower --batch-size",
        )
    # schedules count optimizer steps: one per group of accumulate_grad_batches micro-batches
    steps = -(-len(train_loader) // cfg.accumulate_grad_batches)
    optimizer, scheduler = optimizer_and_schedule(
        model, cfg, steps, device, lr_scale=plan.lr_scale, include_frozen=plan.include_frozen
    )
    # --compile true | false | auto (a timed probe on the first batch decides; recorded)
    net, compile_record = compile_probe.resolve(
        cfg.compile, model, plan.task, train_loader, device, precision, cfg.epochs
    )
    # the run folder only now: a set-up error above (one batch larger than the data ...) leaves
    # no half-made folder behind to take the name --name asked for
    run_dir = _run_folder(cfg, plan, info, resumed[0] if resumed else restart_dir)
    task = plan.task
    if info.distributed and plan.sharded_validation:
        task = distributed.DistributedTask(task, info, net)
    monitor = cfg.monitor if val_loader is not None else "train_loss"
    # --ema: every rank averages (identical weights under DDP) and validates the averaged weights
    averaging = [cbs.WeightAveraging(model, cfg.ema)] if cfg.ema else []
    callbacks = standard_callbacks(
        cfg, run_dir, len(train_loader), lambda: plan.metadata, monitor,
        console=console, extra=[*averaging, *plan.callbacks, *callbacks],
        sync=task if isinstance(task, distributed.DistributedTask) else None,
    )  # fmt: skip
    trainer = Trainer(
        # DDP: gradient all-reduce; checkpoints keep the unwrapped model's keys
        distributed.wrap_ddp(net, info, sync_bn=cfg.sync_bn),
        task, optimizer, scheduler, device=device, precision=precision,
        grad_clip=cfg.grad_clip, callbacks=callbacks,
        describe_batch=lambda idx: [plan.describe(int(i)) for i in idx[:8]],
        train_mode=plan.train_mode, accumulate_grad_batches=cfg.accumulate_grad_batches,
    )  # fmt: skip
    if resumed:
        restore(trainer, model, *resumed)
    if plan.sharded_validation:
        distributed.decorrelate_rng(info)  # DDP: per-rank dropout masks (no-op in one process)

    timings.lap("setup")
    t0 = time.perf_counter()
    state = trainer.fit(train_loader, val_loader, cfg.epochs)
    train_time = time.perf_counter() - t0
    timings.lap("train")
    if state.interrupted:
        raise Interrupted(f"{state.stop_reason}; resume with: {spec.command} --resume {run_dir}")
    final = next((c.final_weights() for c in callbacks if isinstance(c, cbs.Checkpoint)), None)
    if final is not None and cfg.ema:  # which weights the final model (test, evaluate) holds
        kind = "averaged (--ema)" if final["weights"] == "ema" else "trained (not averaged)"
        line = f"final model: the {kind} weights of {final['file']}"
        if console is not None:
            console.print(line)
        else:
            log.info(line)
    if info.is_main:  # DDP: rank 0 writes
        write_json(
            run_dir / "run.json",
            {"task": spec.name, "train_time_s": train_time, "setup_time_s": t0 - t_call,
             "precision": precision, "inference_precision": test_precision,
             "device": str(device), "machine": machine_info(device), "channels_last": channels_last,
             "stop_reason": state.stop_reason, "flops_per_image": plan.flops,
             "cnnlab_version": __version__, "world_size": info.world_size,
             "ema_decay": cfg.ema or None, "final_weights": final,
             **({"compile_probe": compile_record} if compile_record else {}), **plan.record},
        )  # fmt: skip
    distributed.barrier()  # DDP: rank 0's last checkpoint is on disk before the others read best
    result = TrainResult(run_dir, state.history, None, train_time, cfg, state.stop_reason)
    # DDP: every rank calls it; a task that gathers its predictions over the ranks shares the work
    # (classification, video), the others score on rank 0 and return None elsewhere
    try:
        evaluation = plan.evaluate(run_dir, device, test_precision)
    finally:
        if plan.renderer is not None:  # the workers end with the run, raised or not
            plan.renderer.close()
    if evaluation is not None:
        result.test_metrics, result.report = evaluation["metrics"], evaluation.get("report")
    timings.lap("evaluate")
    if info.is_main:  # DDP: rank 0 owns the folder
        timings.record(run_dir / "run.json")
        finish_run_dir(run_dir, console)
    for callback in callbacks:  # the run is complete: a tracker logs test metrics, report, weights
        callback.on_run_end(result)
    return result


def _run_folder(cfg: Any, plan: Plan, info: Any, existing: Path | None) -> Path:
    """Rank 0 creates (or reuses, when resuming) the run folder and writes config.json and the
    plan's files; every rank gets its path."""
    if existing is not None:  # every rank: none may wait on a rank 0 that refused
        check_same_samples(existing, plan.files, cfg.data)  # the samples, splits it began with
    if info.is_main:
        run_dir = existing or new_run_dir(
            cfg.out, cfg.name, plan.folder, cfg.data, private=cfg.private
        )
        write_json(run_dir / "config.json", recorded_config(cfg))
        for name, content in plan.files.items():
            if isinstance(content, str):
                (run_dir / name).write_text(content)
            else:
                write_json(run_dir / name, content)
    return Path(distributed.broadcast_object(str(run_dir) if info.is_main else None))


def flops_per_sample(model: nn.Module, shape: tuple[int, ...]) -> float | None:
    """FLOPs of one eval-mode forward pass on zeros of ``shape`` (multiply-add = 2); None when the
    model cannot be counted that way."""
    from cnnlab.models.summary import flops_of

    try:
        return float(flops_of(model, torch.zeros(shape)))
    except (RuntimeError, TypeError, ValueError):
        return None
