"""Classification training: data, model, transfer plan and the Trainer, in one run directory."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from cnnlab import __version__
from cnnlab.config import PreprocessSpec, TrainConfig, make_config
from cnnlab.data.sources import DataBundle, few_shot, load_source
from cnnlab.engine import callbacks as cbs
from cnnlab.engine import distributed
from cnnlab.engine.assembly import TrainResult
from cnnlab.engine.checkpoint import CheckpointManager, read_weights
from cnnlab.engine.devices import (
    inference_precision,
    machine_info,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from cnnlab.engine.loaders import (
    make_loader,
    resolve_image_size,
    split_channel_stats,
    split_to_uint8,
    use_streaming,
)
from cnnlab.engine.optim import build_optimizer, build_scheduler, param_groups
from cnnlab.engine.resume import restore, resume_target, resumed_config
from cnnlab.engine.trainer import Trainer, check_monitor
from cnnlab.engine.weights import build_model, load_checkpoint_model
from cnnlab.errors import CheckpointError, ConfigError, DataError, Interrupted
from cnnlab.run import finish_run_dir, new_run_dir, write_json
from cnnlab.tasks.classification import ClassificationTask
from cnnlab.tasks.classify.evaluate import evaluate_model
from cnnlab.tasks.classify.imbalance import class_balance
from cnnlab.transfer.lr_find import lr_find

log = logging.getLogger(__name__)


def train(
    config: TrainConfig | str | Path | None = None, *, console: Any = None, **overrides: Any
) -> TrainResult:
    """Train a classifier; returns the run directory and metrics. `config` may be a TrainConfig or a file path."""
    if isinstance(config, TrainConfig):
        cfg = make_config(TrainConfig, **(config.to_dict() | overrides))
    else:
        cfg = make_config(TrainConfig, config, **overrides)
    check_monitor(cfg.monitor, ClassificationTask, "classification")
    t_call = time.perf_counter()
    # DDP: join torchrun's process group (no-op in a single process); see cnnlab.engine.distributed
    info = distributed.init_from_env(cfg.device)
    if (getattr(cfg, "devices", 1) or 1) > 1 and not info.distributed:
        raise ConfigError(
            f"devices={cfg.devices} needs one process per device: run `cnnlab train --devices "
            f"{cfg.devices} ...` or `torchrun --nproc-per-node {cfg.devices} -m cnnlab train ...`"
        )
    # DDP: a torchrun restart (--max-restarts) resumes the run its first attempt started
    restart_resume, restart_dir = distributed.restart_run_dir(cfg.out, cfg.name, cfg.resume)
    if restart_resume != cfg.resume:
        cfg = make_config(TrainConfig, **(cfg.to_dict() | {"resume": restart_resume}))
    resume_from = None
    if cfg.resume:
        resume_from = resume_target(cfg.resume, cfg.out, cfg.name)
        cfg = make_config(TrainConfig, **resumed_config(TrainConfig, cfg, resume_from[0]))
    if cfg.lr == "auto":  # the learning-rate range test on a copy of the model picks the peak rate
        found = lr_find(dataclasses.replace(cfg, lr=1e-3), seed=cfg.seed)
        log.warning("--lr auto: the range test suggests lr=%.3g", found["suggested_lr"])
        if cfg.accumulate_grad_batches > 1:
            log.warning(
                "--lr auto tested batches of %d, but each step averages %d batches: the rate is "
                "used as found (scale it by hand for the larger batch; docs/distributed.md)",
                cfg.batch_size,
                cfg.accumulate_grad_batches,
            )
        cfg = dataclasses.replace(cfg, lr=float(found["suggested_lr"]))
    seed_everything(cfg.seed, cfg.deterministic)
    device = info.device if info.distributed else resolve_device(cfg.device)  # DDP: cuda:LOCAL_RANK
    if not info.is_main:
        distributed.barrier()  # DDP: rank 0 scans and decodes first; the others then hit its cache
    bundle = load_source(cfg)
    if (
        resume_from
    ):  # bad-inputs #44: a resumed run must see the classes it was trained on, in the same order
        _, saved_meta = read_weights(
            resume_from[0] / "checkpoints" / resume_from[1]["weights"]["file"]
        )
        if saved_meta.get("class_names") != bundle.class_names:
            raise CheckpointError(
                f"checkpoint classes {saved_meta.get('class_names')} != dataset classes "
                f"{bundle.class_names}; resume needs the same classes (use --init-from to fine-tune instead)"
            )
    if cfg.shots:
        bundle.splits["train"] = few_shot(bundle.splits["train"], cfg.shots, cfg.seed)
    recorded = resume_from[0] if resume_from else None  # a resumed run keeps its class weights
    balance = class_balance(
        cfg, bundle.splits["train"].targets, bundle.class_names, recorded=recorded
    )
    in_channels = cfg.in_channels or bundle.channels
    image_size = resolve_image_size(cfg, bundle)
    decode_policy = {"max_pixels": cfg.max_image_pixels}
    provisional = PreprocessSpec(
        image_size,
        in_channels,
        (0.0,) * in_channels,
        (1.0,) * in_channels,
        cfg.resize,
        decode_policy,
    )
    stream = use_streaming(cfg, bundle, provisional)
    tensors = {k: split_to_uint8(s, provisional, stream=stream) for k, s in bundle.splits.items()}
    if info.is_main:
        distributed.barrier()  # DDP: pairs with the others' barrier above
    mean, std = split_channel_stats(tensors["train"], cfg.seed)  # from the training split only
    model = build_model(cfg.model, len(bundle.class_names), in_channels, image_size, cfg.weights)
    pretrained_cfg = getattr(model, "default_cfg", {})
    if cfg.weights and len(pretrained_cfg.get("mean") or ()) == in_channels:
        mean, std = (
            tuple(pretrained_cfg["mean"]),
            tuple(pretrained_cfg["std"]),
        )  # the weights' own stats
    plan = None
    if cfg.init_from or cfg.freeze != "none" or cfg.strategy != "full":
        from cnnlab.transfer.recipes import prepare_transfer

        plan = prepare_transfer(model, cfg, class_names=bundle.class_names, in_channels=in_channels)
        source_pre = plan.source_preprocess or {}
        if len(source_pre.get("mean") or ()) == in_channels:
            mean, std = (
                tuple(source_pre["mean"]),
                tuple(source_pre["std"]),
            )  # what the source learned on
    spec = PreprocessSpec(image_size, in_channels, mean, std, cfg.resize, decode_policy)

    if info.is_main:  # DDP: rank 0 alone creates and writes the run directory, others get its path
        run_dir = (
            resume_from[0]
            if resume_from
            else (
                restart_dir
                or new_run_dir(cfg.out, cfg.name, cfg.model, cfg.data, private=cfg.private)
            )
        )
        _write_run_files(run_dir, cfg, bundle, spec)
        balance.record(run_dir)  # class_balance.json: training class counts, weights, sampler, loss
    run_dir = Path(distributed.broadcast_object(str(run_dir) if info.is_main else None))
    flops = _flops_per_image(model, in_channels, image_size)
    precision = resolve_precision(cfg.precision, device, flops)
    # the final test evaluation runs as `cnnlab evaluate RUN` will by default, so the two agree exactly
    test_precision = inference_precision("auto", device, precision)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader = make_loader(
        tensors["train"],
        bundle.splits["train"].targets,
        spec,
        device,
        distributed.local_batch_size(cfg.batch_size, info),  # DDP: batch_size is the global batch
        shuffle=True,
        sampler=cfg.sampler,  # "balanced": every class equally likely per draw (data.loader)
        augment=cfg.augment,
        seed=cfg.seed,
        drop_last=True,
        channels_last=channels_last,
        shard=(info.rank, info.world_size),  # DDP: rank r takes samples r, r + W, ... of each epoch
    )
    if len(train_loader) == 0:
        raise DataError(
            cfg.data,
            f"the training split has {train_loader.num_samples} images, fewer than one "
            f"batch of {cfg.batch_size}; lower --batch-size",
        )
    eval_kw = {"batch_size": max(256, cfg.batch_size), "channels_last": channels_last}
    val_loader = (
        make_loader(tensors["val"], bundle.splits["val"].targets, spec, device, **eval_kw)
        if "val" in tensors and len(bundle.splits["val"])
        else None
    )
    groups = param_groups(
        model,
        cfg.weight_decay,
        cfg.lr,
        plan.lr_scale if plan else None,
        include_frozen=bool(plan and plan.include_frozen),
    )
    optimizer = build_optimizer(
        cfg.optimizer,
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        device=device,
    )
    if plan is not None and info.is_main:  # DDP: rank 0 writes
        write_json(run_dir / "transfer.json", plan.to_dict())
        if console is not None:
            console.print(plan.layer_table())
    # schedules count optimizer steps: one per group of accumulate_grad_batches micro-batches
    steps_per_epoch = -(-len(train_loader) // cfg.accumulate_grad_batches)
    scheduler = build_scheduler(
        optimizer,
        cfg.schedule,
        cfg.epochs * steps_per_epoch,
        int(cfg.warmup_epochs * steps_per_epoch),
    )
    task = ClassificationTask(
        len(bundle.class_names), cfg.label_smoothing, **balance.task_options()
    )
    net = torch.compile(model) if cfg.compile else model
    eval_net = net
    # DDP: gradient all-reduce; checkpoints keep the unwrapped model's keys (world-size independent)
    net = distributed.wrap_ddp(net, info, sync_bn=getattr(cfg, "sync_bn", False))
    if info.distributed:
        task = distributed.DistributedTask(task, info, eval_net)
    metadata = {
        "model": cfg.model,
        "num_classes": len(bundle.class_names),
        "in_channels": in_channels,
        "image_size": image_size,
        "class_names": bundle.class_names,
        "preprocess": spec.to_dict(),
        "task": "classification",
        "cnnlab_version": __version__,
        "torch_version": torch.__version__,
        "data": cfg.data,
        "model_cfg": _plain(getattr(model, "default_cfg", {})),
    }
    monitor = cfg.monitor if val_loader is not None else "train_loss"
    callbacks: list[cbs.Callback] = []
    if info.is_main:  # DDP: the other ranks neither print nor write
        manager = CheckpointManager.for_policy(run_dir / "checkpoints", cfg.keep)
        callbacks += [
            cbs.Progress(cfg.epochs, len(train_loader), console=console, enabled=bool(console)),
            cbs.CSVLogger(run_dir / "metrics.csv"),
            cbs.Checkpoint(manager, lambda: metadata, monitor),
        ]
    if not info.distributed:
        callbacks.append(cbs.GracefulInterrupt())
    if cfg.early_stopping:
        callbacks.append(cbs.EarlyStopping(monitor, cfg.early_stopping))
    if cfg.tensorboard and info.is_main:
        callbacks.append(_tensorboard(run_dir))
    if plan is not None:
        callbacks += plan.callbacks
    if info.distributed:  # DDP: throughput summed first; rewrap after unfreezing; stops agreed last
        callbacks = [distributed.GlobalThroughput(info.world_size), *callbacks]
        callbacks += [distributed.FollowTrainable(), distributed.DistributedSync(task)]
    ids = bundle.splits["train"].ids
    trainer = Trainer(
        net,
        task,
        optimizer,
        scheduler,
        device=device,
        precision=precision,
        grad_clip=cfg.grad_clip,
        callbacks=callbacks,
        describe_batch=lambda idx: [ids[int(i)] for i in idx[:8]],
        train_mode=plan.train_mode if plan else None,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
    )
    if resume_from:
        restore(trainer, model, *resume_from)
    distributed.decorrelate_rng(info)  # DDP: per-rank dropout masks (no-op in one process)
    t0 = time.perf_counter()
    setup_time = t0 - t_call  # reading, scanning and decoding the data once, building the model
    state = trainer.fit(train_loader, val_loader, cfg.epochs)
    train_time = time.perf_counter() - t0
    if state.interrupted:
        raise Interrupted(f"{state.stop_reason}; resume with: cnnlab train --resume {run_dir}")
    if info.is_main:  # DDP: rank 0 writes
        write_json(
            run_dir / "run.json",
            {
                "train_time_s": train_time,
                "setup_time_s": setup_time,
                "precision": precision,
                "inference_precision": test_precision,
                "device": str(device),
                "machine": machine_info(device),
                "channels_last": channels_last,
                "stop_reason": state.stop_reason,
                "flops_per_image": flops,
                "cnnlab_version": __version__,
                "world_size": info.world_size,
            },
        )
    distributed.barrier()  # DDP: rank 0's last checkpoint is on disk before the others read best
    result = TrainResult(run_dir, state.history, None, train_time, cfg, state.stop_reason)
    if "test" in tensors and len(bundle.splits["test"]):
        best, _, _ = load_checkpoint_model(run_dir, device)
        if resolve_channels_last(
            None, device
        ):  # as `evaluate` will: the same kernels, the same sums
            best.to(memory_format=torch.channels_last)
        evaluation = evaluate_model(
            best,
            spec,
            tensors["test"],
            bundle.splits["test"],
            bundle.class_names,
            device=device,
            precision=test_precision,
            run_dir=run_dir,
            report=cfg.report,
        )
        result.test_metrics, result.report = evaluation["metrics"], evaluation.get("report")
    if info.is_main:  # DDP: rank 0 owns the folder
        finish_run_dir(run_dir, console)
    return result


def _plain(d: dict) -> dict:
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in d.items()
        if isinstance(v, (str, int, float, bool, list, tuple, type(None)))
    }


def _flops_per_image(model: torch.nn.Module, in_channels: int, image_size: int) -> float | None:
    try:
        from cnnlab.models.summary import count_flops

        return float(count_flops(model, image_size, in_channels))
    except (ImportError, RuntimeError) as err:
        log.debug("FLOP count unavailable: %s", err)
        return None


def _tensorboard(run_dir: Path) -> cbs.Callback:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None

    class TensorBoard(cbs.Callback):
        def __init__(self) -> None:
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

        def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, int(metrics["epoch"]))

        def on_fit_end(self, trainer: Trainer) -> None:
            self.writer.close()

    return TensorBoard()


def _write_run_files(
    run_dir: Path, cfg: TrainConfig, bundle: DataBundle, spec: PreprocessSpec
) -> None:
    write_json(run_dir / "config.json", cfg.to_dict())
    write_json(run_dir / "classes.json", bundle.class_names)
    write_json(run_dir / "preprocess.json", spec.to_dict())
    write_json(
        run_dir / "splits.json",
        {
            "source": bundle.source,
            "origin": bundle.split_origin,
            "root": str(bundle.root) if bundle.root else None,
            "splits": {k: s.ids for k, s in bundle.splits.items()},
        },
    )
    if bundle.scan is not None and hasattr(bundle.scan, "to_json"):
        (run_dir / "data_scan.json").write_text(bundle.scan.to_json())
