"""The one Python door: train, evaluate, predict, demo. The CLI mirrors these functions and adds nothing.

import cnnlab.api as cl
run = cl.train(data="builtin:mnist-sample", model="lenet5", epochs=8)
print(run.test_metrics["accuracy"], run.run_dir)
cl.predict(run.run_dir, ["digit.png"])
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.config import PreprocessSpec, TrainConfig, make_config
from cnnlab.data.loader import FileImages, StreamLoader, TensorLoader
from cnnlab.data.sources import DataBundle, Split, few_shot, load_source
from cnnlab.data.tensors import arrays_to_chw, channel_stats, decode_files, default_cache_dir
from cnnlab.engine import callbacks as cbs
from cnnlab.engine import distributed
from cnnlab.engine.checkpoint import CheckpointManager, read_weights
from cnnlab.engine.hardware import (  # noqa: F401 (public here too)
    cpu_has_bf16,
    inference_precision,
    machine_info,
    resolve_device,
    resolve_precision,
)
from cnnlab.engine.optim import build_optimizer, build_scheduler, param_groups
from cnnlab.engine.trainer import Trainer, autocast
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError, DataError
from cnnlab.run import (
    evaluation_dir,
    new_run_dir,
    read_json,
    record_evaluation,
    resolve_weights,
    run_dir_of,
    trained_precision,
    write_json,
)
from cnnlab.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)


class Interrupted(CnnlabError):
    """Training stopped by Ctrl-C / SIGTERM after saving a resumable checkpoint."""

    exit_code = 130


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    test_metrics: dict[str, Any] | None
    train_time_s: float
    config: TrainConfig
    stop_reason: str = ""
    report: Path | None = None


# -- devices and precision -----------------------------------------------------------------------------------
def resolve_channels_last(choice: bool | None, device: torch.device) -> bool:
    """None (auto): channels_last (NHWC) on CPU and CUDA, the layout oneDNN and cuDNN convolve in natively.

    Measured on this 2-core AVX2 CPU in fp32 (median step, NCHW -> NHWC): training LeNet-5 1.2x, GoogLeNet 1.7x
    faster, ResNet-18/50, VGG-11, AlexNet, U-Net and DeepLabv3 within noise; inference 1.0x (LeNet-5 at 28 px) to
    2.0x (GoogLeNet). On CUDA it is the tensor-core layout (+26-47 % in the anchors). Off elsewhere (MPS).
    """
    return choice if choice is not None else device.type in ("cpu", "cuda")


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


# -- data ----------------------------------------------------------------------------------------------------
def split_to_uint8(split: Split, spec: PreprocessSpec, *, stream: bool = False) -> torch.Tensor:
    """(N, C, S, S) uint8 tensor of a split, decoding files once (cached) or converting in-memory arrays.

    stream: a file-backed split becomes a FileImages instead, decoded batch by batch (see use_streaming)."""
    if split.images is not None:
        return torch.from_numpy(arrays_to_chw(split.images, spec))
    if stream:
        return FileImages([str(p) for p in split.paths or ()], spec)  # type: ignore[return-value]
    return torch.from_numpy(decode_files(split.paths, spec))


def use_streaming(cfg: TrainConfig, bundle: DataBundle, spec: PreprocessSpec) -> bool:
    """--loader auto: the memory-mapped cache unless the decoded file-backed splits would not fit in the cache
    folder's free disk space (with 10 % to spare); then files are decoded every epoch, with a message."""
    if cfg.loader != "auto":
        return cfg.loader == "stream"
    files = sum(len(s) for s in bundle.splits.values() if s.images is None)
    need = files * spec.in_channels * spec.image_size**2
    folder = default_cache_dir()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need <= 0.9 * free:
        return False
    log.warning(
        "the decoded images would take %.1f GB but the cache folder %s has %.1f GB free: decoding the files "
        "every epoch in %d worker processes instead (slower; free disk space, point CNNLAB_CACHE at a bigger "
        "disk, or lower --image-size to cache them)",
        need / 1e9, default_cache_dir(), free / 1e9, stream_workers(),
    )  # fmt: skip
    return True


def stream_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def split_channel_stats(images: torch.Tensor, seed: int = 0, sample: int = 2000) -> tuple[tuple, tuple]:
    """channel_stats of a split; a streamed split is estimated from `sample` images (seeded), as decoding them
    all would cost a whole epoch."""
    if not isinstance(images, FileImages):
        return channel_stats(images)
    pick = np.arange(len(images))
    if len(images) > sample:
        pick = np.sort(np.random.default_rng(seed).choice(len(images), sample, replace=False))
    return channel_stats(images.index_select(0, torch.from_numpy(pick)))


def resolve_image_size(cfg: TrainConfig, bundle: DataBundle) -> int:
    from cnnlab.models import model_info

    if cfg.image_size:
        return cfg.image_size
    if bundle.native_size and bundle.native_size <= 64:
        return max(
            bundle.native_size, 16
        )  # small images are used as they are (LeNet pads 28 to 32 itself)
    default = int(model_info(cfg.model).get("input_size", (3, 224, 224))[-1])
    if bundle.native_size:
        log.info(
            "images are %d px; resizing to %s's %d px input", bundle.native_size, cfg.model, default
        )
    return default


def make_loader(
    images: torch.Tensor,
    targets: np.ndarray,
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int,
    **kw: Any,
) -> TensorLoader:
    if isinstance(images, FileImages):  # decoded per batch in worker processes (use_streaming)
        return StreamLoader(
            images,  # type: ignore[arg-type]
            torch.as_tensor(targets, dtype=torch.int64),
            torch.tensor(spec.mean, device=device),
            torch.tensor(spec.std, device=device),
            batch_size,
            device=device,
            workers=stream_workers(),
            **kw,
        )
    resident = fits_on_device(images, device)
    home = device if resident else images.device
    return TensorLoader(
        images.to(home),
        torch.as_tensor(targets, dtype=torch.int64).to(home),
        torch.tensor(spec.mean, device=device),
        torch.tensor(spec.std, device=device),
        batch_size,
        device=device,
        **kw,
    )


def fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    """Whether a uint8 split should live on `device` (whole-split gathers there) or stay in host memory.

    On CUDA it must leave at least half of the free memory to the model and activations; otherwise batches
    are gathered in host memory and copied per step, with a message. The CPU is the host: always true (a split
    larger than RAM is a memory map already, see decode_files).
    """
    if device.type != "cuda" or images.device == device:
        return True
    free, _ = torch.cuda.mem_get_info(device)
    if images.nbytes <= free // 2:
        return True
    log.warning(
        "the decoded images (%.1f GB) would take more than half of the GPU's %.1f GB of free memory: they stay "
        "in host memory and each batch is copied over (slower; a smaller --image-size keeps them on the GPU)",
        images.nbytes / 1e9, free / 1e9,
    )  # fmt: skip
    return False


# -- models and checkpoints ----------------------------------------------------------------------------------
def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, weights: str | None = None
):
    from cnnlab.models import create_model

    return create_model(
        name,
        num_classes=num_classes,
        in_channels=in_channels,
        weights=weights,
        image_size=image_size,
    )


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode, metadata, weights path) from a run directory or a .safetensors checkpoint."""
    weights = resolve_weights(path)
    state, meta = read_weights(weights)
    for key in ("model", "num_classes", "in_channels", "preprocess", "class_names"):
        if key not in meta:
            raise CheckpointError(
                f"{weights} lacks metadata {key!r}; it was not written by cnnlab train"
            )
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    model = build_model(
        meta["model"], int(meta["num_classes"]), int(meta["in_channels"]), spec.image_size
    )
    missing, unexpected = _load_strict(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit {meta['model']}: missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}"
        )
    model.to(device).eval()
    return model, meta, weights


def _load_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    if state and all(k.startswith("_orig_mod.") for k in state):
        # earlier --compile runs saved torch.compile's wrapper prefix (now always plain keys)
        state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = sorted(k for k in state if k not in own)  # files store keys in any order
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        raise CheckpointError(f"checkpoint shapes do not fit the model: {shapes[:10]}")
    if not missing and not unexpected:
        model.load_state_dict(state, strict=True)
    return missing, unexpected


# -- train ---------------------------------------------------------------------------------------------------
def train(
    config: TrainConfig | str | Path | None = None, *, console: Any = None, **overrides: Any
) -> TrainResult:
    """Train a classifier; returns the run directory and metrics. `config` may be a TrainConfig or a file path."""
    if isinstance(config, TrainConfig):
        cfg = make_config(TrainConfig, **(config.to_dict() | overrides))
    else:
        cfg = make_config(TrainConfig, config, **overrides)
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
        resume_from, cfg = _resume_target(cfg)
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
        from cnnlab.transfer import prepare_transfer

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
            else (restart_dir or new_run_dir(cfg.out, cfg.name, cfg.model, cfg.data))
        )
        _write_run_files(run_dir, cfg, bundle, spec)
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
    task = ClassificationTask(len(bundle.class_names), cfg.label_smoothing)
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
        manager = CheckpointManager(run_dir / "checkpoints")
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
        _restore(trainer, model, resume_from[1], cfg)
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
        if resolve_channels_last(None, device):  # as `evaluate` will: the same kernels, the same sums
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


def _resume_target(cfg: TrainConfig) -> tuple[tuple[Path, dict], TrainConfig]:
    """--resume RUN_DIR | CHECKPOINT | auto -> ((run_dir, manifest entry), the run's own config)."""
    target = Path(cfg.resume)
    if cfg.resume == "auto":
        if not cfg.name:
            raise ConfigError(
                "--resume auto needs --name (the run folder under --out) to find the run"
            )
        target = Path(cfg.out) / cfg.name
    run_dir = target if target.is_dir() else run_dir_of(target)
    if run_dir is None or not (run_dir / "config.json").is_file():
        raise CheckpointError(f"nothing to resume: {target} is not a cnnlab run directory")
    entry = CheckpointManager(run_dir / "checkpoints").latest_verified()
    if entry is None:
        raise CheckpointError(f"nothing to resume in {run_dir}: no verified checkpoint")
    saved = read_json(run_dir / "config.json")
    keep = {
        "epochs",
        "device",
        "precision",
        "early_stopping",
        "devices",
    }  # what a resume may change
    changes = {k: getattr(cfg, k) for k in keep if getattr(cfg, k) != TrainConfig().__dict__[k]}
    saved.update(changes | {"resume": str(run_dir), "augment": tuple(saved.get("augment", ()))})
    return (run_dir, entry), make_config(TrainConfig, **saved)


def _restore(trainer: Trainer, model: torch.nn.Module, entry: dict, cfg: TrainConfig) -> None:
    manager = CheckpointManager(Path(cfg.resume) / "checkpoints")
    weights, _, state = manager.load(entry)
    missing, unexpected = _load_strict(model, weights)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit {cfg.model}: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}"
        )
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    s = trainer.state
    s.history, s.global_step = list(state["history"]), int(state["global_step"])
    s.epoch, s.step = int(state["epoch"]), int(state["step"])
    if state["complete_epoch"]:
        s.epoch, s.step = s.epoch + 1, 0
    for cb in trainer.callbacks:
        cb.load_state_dict(state["callbacks"].get(type(cb).__name__, {}))
    log.info("resumed %s at epoch %d, step %d", entry["tag"], s.epoch + 1, s.step)


# -- evaluate ------------------------------------------------------------------------------------------------
def evaluate_model(
    model,
    spec: PreprocessSpec,
    images: torch.Tensor,
    split: Split,
    class_names: list[str],
    *,
    device: torch.device,
    precision: str = "32",
    run_dir: Path | None = None,
    report: bool = True,
    out_dir: Path | None = None,
    thumbnails: Any = None,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Metrics (+ bootstrap CIs, report) of `model` on one split held as a uint8 tensor.

    `thumbnails` (N, C, H, W) uint8: what the report shows for each sample (default `images`;
    video clips pass a strip of frames)."""
    from cnnlab.metrics import UndefinedMetricWarning, classification_metrics
    from cnnlab.metrics.stats import headline_intervals

    loader = make_loader(images, split.targets, spec, device, batch_size)
    task = ClassificationTask(len(class_names))
    info = distributed.current()
    if info.distributed:  # DDP: each rank predicts every W-th batch; all gather the whole split
        probs, targets = distributed.predict_sharded(
            model, task, loader, device=device, precision=precision
        )
    else:
        trainer = Trainer(model, task, None, None, device=device, precision=precision)
        probs, targets = trainer.predict(loader)
    p, t = probs.numpy().astype(np.float64), targets.numpy()
    with (
        warnings.catch_warnings()
    ):  # undefined values are listed in metrics["warnings"] and shown once
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        metrics = classification_metrics(t, p, class_names=class_names)
    metrics["confidence_intervals"] = headline_intervals(t, p, seed=0)
    out = (out_dir or run_dir) if info.is_main else None  # DDP: rank 0 writes
    result: dict[str, Any] = {"metrics": metrics, "probs": p, "targets": t}
    if out is not None:
        write_json(out / "test_metrics.json", metrics)
        np.savez_compressed(
            out / "test_predictions.npz",
            probs=p.astype(np.float32),
            targets=t,
            ids=np.asarray(split.ids),
        )
        if report:
            from cnnlab.report.html import write_classification_report

            result["report"] = write_classification_report(
                out, metrics, p, t, class_names, ids=split.ids, run_dir=run_dir,
                images=images if thumbnails is None else thumbnails,
            )  # fmt: skip
    return result


def evaluate(
    run_or_checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    device: str = "auto",
    report: bool = True,
    out: str | Path | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Evaluate a trained model on its own held-out split (default) or on another dataset (`data`).

    Writes into ``out`` or a new ``<run>/evaluations/<time>/`` (never over what training recorded);
    ``precision`` auto = fp32 on CPU, the run's own on CUDA (cnnlab.engine.hardware)."""
    dev = resolve_device(device)
    model, meta, weights = load_checkpoint_model(run_or_checkpoint, dev)
    if resolve_channels_last(None, dev):
        model.to(memory_format=torch.channels_last)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    class_names = list(meta["class_names"])
    run_dir = run_dir_of(weights)
    if data is None:
        if run_dir is None:
            raise ConfigError(
                f"{weights} is not inside a run directory: pass --data to say what to evaluate on"
            )
        cfg = make_config(TrainConfig, **_saved_config(run_dir))
        bundle = load_source(cfg)
        saved = read_json(run_dir / "splits.json")["splits"]
        if split not in saved:
            raise ConfigError(f"the run has no {split!r} split; it has {sorted(saved)}")
        chosen = _split_by_ids(bundle, saved[split], split)
    else:
        cfg = make_config(TrainConfig, data=data, val_fraction=0.0, test_fraction=0.0)
        bundle = load_source(cfg)
        chosen = _remap_classes(bundle, class_names, split)
    images = split_to_uint8(chosen, spec)
    precision = inference_precision(precision, dev, trained_precision(run_dir))
    out_dir = evaluation_dir(out, run_dir)
    result = evaluate_model(
        model,
        spec,
        images,
        chosen,
        class_names,
        device=dev,
        precision=precision,
        run_dir=run_dir,
        report=report and out_dir is not None,
        out_dir=out_dir,
    )
    record = record_evaluation(
        out_dir, task="classification", weights=weights, data=data, split=split,
        num_samples=len(chosen), precision=precision, device=dev,
    )  # fmt: skip
    return record | {"metrics": result["metrics"], "report": result.get("report")}


def _saved_config(run_dir: Path) -> dict[str, Any]:
    saved = read_json(run_dir / "config.json")
    saved["augment"] = tuple(saved.get("augment", ()))
    saved["resume"] = None
    return saved


def _split_by_ids(bundle: DataBundle, ids: list[str], split: str) -> Split:
    merged: dict[str, tuple[Split, int]] = {}
    for s in bundle.splits.values():
        for i, sid in enumerate(s.ids):
            merged[sid] = (s, i)
    missing = [sid for sid in ids if sid not in merged]
    if missing:
        raise DataError(
            bundle.source,
            f"{len(missing)} file(s) of the recorded {split} split are gone "
            f"(first: {missing[:3]}); the dataset changed since training",
        )
    parts = [merged[sid] for sid in ids]
    first = parts[0][0]
    return Split(
        ids,
        np.array([s.targets[i] for s, i in parts], dtype=np.int64),
        paths=[s.paths[i] for s, i in parts] if first.paths is not None else None,
        images=np.stack([s.images[i] for s, i in parts]) if first.images is not None else None,
    )


def _remap_classes(bundle: DataBundle, class_names: list[str], split: str) -> Split:
    unknown = [c for c in bundle.class_names if c not in class_names]
    if unknown:
        raise DataError(
            bundle.source, f"classes {unknown} are not among the model's classes {class_names}"
        )
    if split in bundle.splits and bundle.split_origin == "given":
        chosen = bundle.splits[split]
    else:
        chosen = _concat([bundle.splits[k] for k in bundle.splits])
    lut = np.array([class_names.index(c) for c in bundle.class_names], dtype=np.int64)
    return Split(chosen.ids, lut[chosen.targets], chosen.paths, chosen.images)


def _concat(parts: list[Split]) -> Split:
    return Split(
        [i for p in parts for i in p.ids],
        np.concatenate([p.targets for p in parts]),
        [x for p in parts for x in p.paths] if parts[0].paths is not None else None,
        np.concatenate([p.images for p in parts]) if parts[0].images is not None else None,
    )


def compare(run_a: str | Path, run_b: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """Two runs' predictions on the same test set: accuracies, paired-bootstrap difference, exact McNemar test."""
    from cnnlab.metrics.stats import compare_predictions

    loaded = []
    for run in (run_a, run_b):
        path = Path(run) / "test_predictions.npz"
        if not path.is_file():
            raise DataError(run, "has no test_predictions.npz; run `cnnlab evaluate` on it first")
        with np.load(path, allow_pickle=False) as z:
            loaded.append({k: z[k] for k in ("probs", "targets", "ids")})
    a, b = loaded
    if a["ids"].shape != b["ids"].shape or not (a["ids"] == b["ids"]).all():
        raise DataError(
            run_b,
            f"was tested on different images than {run_a}; compare needs the same test set "
            "(same data, seed and split fractions)",
        )
    result = compare_predictions(a["targets"], a["probs"], b["probs"], seed=seed)
    return result | {"run_a": str(run_a), "run_b": str(run_b)}


# -- predict -------------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
}


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Image files given directly, or found under folders (recursively; hidden files and folders skipped).

    os.walk with pruning rather than Path.rglob: ~4x less time on 1,000 files, and it never descends into
    hidden folders (.git, .cache). Order: sorted by path components, as ``sorted(Path)`` would give.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found: list[str] = []
            for folder, dirs, names in os.walk(p):  # symlinked folders are not followed, as rglob
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [
                    os.path.join(folder, n)
                    for n in names
                    if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES
                ]
            found.sort(key=lambda f: os.path.relpath(f, p).split(os.sep))
            files += [Path(f) for f in found if os.path.isfile(f)]  # drops broken links, FIFOs
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(p, "not found; give image files or folders of images")
    return files


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(
        default_factory=list
    )  # (class name, probability), best first
    error: str | None = None


def predict_files(
    inputs: list[str | Path],
    spec: PreprocessSpec,
    class_names: list[str],
    probs_fn: Any,
    *,
    top_k: int = 5,
    batch_size: int = 256,
) -> list[Prediction]:
    """The one prediction driver (PyTorch checkpoints and exported ONNX files alike).

    Files are decoded in parallel threads with the training decoding policy; unreadable ones get an error entry,
    not an exception. `probs_fn((N, C, S, S) float32 normalised array) -> (N, K) probabilities` runs the model;
    the array is an NHWC-strided view (PIL decodes HWC, and NHWC is what oneDNN/cuDNN convolve in), so a
    consumer that needs contiguous NCHW (onnxruntime) makes its own copy.
    """
    from concurrent.futures import ThreadPoolExecutor

    from cnnlab.data.tensors import load_file

    k = max(1, min(int(top_k), len(class_names)))
    files = list_images(inputs)
    results = [Prediction(str(f)) for f in files]

    def decode(indices: range) -> list[np.ndarray | None]:
        arrays: list[np.ndarray | None] = []
        for i in indices:
            try:
                arrays.append(load_file(files[i], spec, channels_last=True))  # (S, S, C) uint8
            except DataError as err:
                results[i].error = err.reason
                arrays.append(None)
        return arrays

    def submit(chunk: range) -> list[Any]:
        # 16 files per task: one future per file cost ~0.25 ms of GIL-bound bookkeeping each (profiled)
        return [pool.submit(decode, chunk[j : j + 16]) for j in range(0, len(chunk), 16)]

    # (x / 255 - mean) / std as one multiply-add per pixel
    scale = (1 / (255 * np.asarray(spec.std, dtype=np.float32))).astype(np.float32)
    shift = (-np.asarray(spec.mean, dtype=np.float32) / np.asarray(spec.std, dtype=np.float32)).astype(np.float32)
    chunks = [range(s, min(s + batch_size, len(files))) for s in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        # One chunk decodes in the threads while the model runs on the previous one.
        ahead = submit(chunks[0]) if chunks else []
        for n, chunk in enumerate(chunks):
            arrays = [a for f in ahead for a in f.result()]
            ahead = submit(chunks[n + 1]) if n + 1 < len(chunks) else []
            ok = [i for i, a in zip(chunk, arrays, strict=True) if a is not None]
            if not ok:
                continue
            pixels = np.stack([a for a in arrays if a is not None]).astype(np.float32)  # (N, S, S, C)
            pixels *= scale
            pixels += shift
            probs = np.asarray(probs_fn(pixels.transpose(0, 3, 1, 2)))
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # ties: lower index first
            for row, i in enumerate(ok):
                results[i].top = [(class_names[c], float(probs[row, c])) for c in order[row]]
    return results


def predict(
    run_or_checkpoint: str | Path,
    inputs: list[str | Path],
    *,
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 256,
    precision: str = "auto",
) -> list[Prediction]:
    """Class names and probabilities for images/folders; unreadable files get an error entry, not a crash.

    ``precision`` auto = fp32 on CPU, the run's own on CUDA (cnnlab.engine.hardware); ONNX files run fp32."""
    if (
        str(run_or_checkpoint).lower().endswith(".onnx")
    ):  # an exported model: onnxruntime on the CPU
        from cnnlab.export import predict_onnx

        if precision not in ("auto", "32"):
            raise ConfigError(
                f"--precision {precision}: an ONNX model runs in float32 in onnxruntime; "
                "leave --precision out or pass the run folder instead"
            )
        return predict_onnx(run_or_checkpoint, inputs, top_k=top_k, batch_size=batch_size)
    dev = resolve_device(device)
    model, meta, weights = load_checkpoint_model(run_or_checkpoint, dev)
    if resolve_channels_last(None, dev):
        model.to(memory_format=torch.channels_last)  # predict_files hands over NHWC-strided batches
    precision = inference_precision(precision, dev, trained_precision(run_dir_of(weights)))

    def probs_fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast(dev, precision):
            return model(torch.from_numpy(x).to(dev)).float().softmax(1).cpu().numpy()

    spec = PreprocessSpec.from_dict(meta["preprocess"])
    return predict_files(
        inputs, spec, list(meta["class_names"]), probs_fn, top_k=top_k, batch_size=batch_size
    )


# -- transfer learning -------------------------------------------------------------------------------------
def finetune(
    source: str | Path, data: str, *, console: Any = None, **overrides: Any
) -> TrainResult:
    """Fine-tune on `data` starting from `source` (a cnnlab run/checkpoint, "imagenet" or a weights file).

    The model defaults to the source run's architecture; the strategy to "fine-tune" (head first, then everything
    with discriminative learning rates). See cnnlab.transfer for the freezing forms and recipes.
    """
    if overrides.get("model") is None and str(source) != "imagenet":
        try:
            _, meta = read_weights(resolve_weights(source))
            overrides["model"] = meta.get("model")
        except CheckpointError:
            pass  # a plain weights file: the model must be given, and create_model says so if it does not fit
    overrides.setdefault("strategy", "fine-tune")
    return train(
        console=console,
        init_from=str(source),
        data=data,
        **{k: v for k, v in overrides.items() if v is not None},
    )


def transfer_study(source: str, data: str, **kwargs: Any) -> dict[str, Any]:
    """Scratch vs linear-probe vs fine-tune vs gradual at several labels-per-class: see cnnlab.transfer.study."""
    from cnnlab.transfer import transfer_study as study

    return study(source, data, **kwargs)


def lr_find(
    config: TrainConfig | str | Path | None = None,
    *,
    start: float = 1e-5,
    end: float = 1.0,
    steps: int = 100,
    seed: int = 0,
    plot: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Learning-rate range test on a copy of the model; returns the curve and the suggested rate."""
    from cnnlab.transfer import lr_find as find
    from cnnlab.transfer import plot_lr_find

    cfg = (
        config if isinstance(config, TrainConfig) else make_config(TrainConfig, config, **overrides)
    )
    result = find(cfg, start=start, end=end, steps=steps, seed=seed)
    if plot:
        result["plot"] = str(plot_lr_find(result, plot))
    return result


def embed(
    run_or_checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "all",
    out: str | Path | None = None,
    device: str = "auto",
) -> Path:
    """Penultimate-layer features with labels to .npz (for kNN, linear probes, plots)."""
    from cnnlab.transfer import embed as embed_features

    return embed_features(run_or_checkpoint, data, split, out, device=device)


# -- explain -----------------------------------------------------------------------------------------------
def explain(
    run_or_checkpoint: str | Path,
    image: str | Path,
    *,
    out: str | Path | None = None,
    top_k: int = 3,
    methods: tuple[str, ...] = ("gradcam", "gradcam++"),
    device: str = "cpu",
) -> dict[str, Any]:
    """One image through the trained model, layer by layer (the lecture's words), with CAM overlays: see
    cnnlab.explain. Writes explain.html + figures; returns paths and numbers."""
    from cnnlab.report.explain_page import explain_image

    return explain_image(
        run_or_checkpoint, image, out_dir=out, top_k=top_k, methods=tuple(methods), device=device
    )


# -- segmentation ------------------------------------------------------------------------------------------
def segment_train(config: Any = None, *, console: Any = None, **options: Any):
    """Train a segmentation model (U-Net / FCN / DeepLabV3 / LR-ASPP on zoo encoders): see cnnlab.segment."""
    from cnnlab.segment import train_segmentation

    return train_segmentation(config, console=console, **options)


def segment_evaluate(run: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Per-class IoU, mean IoU, Dice, pixel accuracy and frequency-weighted IoU on the run's test split."""
    from cnnlab.segment import evaluate_segmentation

    return evaluate_segmentation(run, **kwargs)


def segment_predict(
    run: str | Path, inputs: list[str | Path], out_dir: str | Path, **kwargs: Any
) -> list[Path]:
    """Mask PNGs (class index per pixel) and colour overlays for images or folders."""
    from cnnlab.segment import predict_segmentation

    return predict_segmentation(run, inputs, out_dir, **kwargs)


# -- detection ---------------------------------------------------------------------------------------------
def detect_train(config: Any = None, *, console: Any = None, **options: Any):
    """Train a detector (Faster R-CNN, RetinaNet, FCOS, SSDlite on zoo backbones): see cnnlab.detect."""
    from cnnlab.detect import train_detection

    return train_detection(config, console=console, **options)


def detect_evaluate(run: str | Path, **kwargs: Any) -> dict[str, Any]:
    """COCO mAP@0.5, mAP@[.5:.95], per-class AP and AR on the run's test split."""
    from cnnlab.detect import evaluate_detection

    return evaluate_detection(run, **kwargs)


def detect_predict(
    run: str | Path, inputs: list[str | Path], out_dir: str | Path, **kwargs: Any
) -> Path:
    """COCO-format results JSON and images with boxes, labels and scores drawn."""
    from cnnlab.detect import predict_detection

    return predict_detection(run, inputs, out_dir, **kwargs)


# -- export and serve --------------------------------------------------------------------------------------
def export(
    run_or_checkpoint: str | Path,
    *,
    format: str = "onnx",
    out: str | Path | None = None,
    **kwargs: Any,
):
    """ONNX / TorchScript / safetensors with preprocessing and class names, checked against PyTorch."""
    from cnnlab.export import export_model

    return export_model(run_or_checkpoint, format=format, out=out, **kwargs)


def serve(
    run_or_checkpoint: str | Path, *, host: str = "127.0.0.1", port: int = 8000, **options: Any
) -> None:
    """The web explorer: upload an image, see top-k classes, the layer trace and Grad-CAM."""
    from cnnlab.serve import serve as run_server

    run_server(run_or_checkpoint, host=host, port=port, **options)


# -- demo ----------------------------------------------------------------------------------------------------
DEMO = {  # 40 short epochs (62 steps each): ~2,500 SGD steps, ~98% test accuracy in about half a minute on 2 cores
    "data": "builtin:mnist-sample",
    "model": "lenet5",
    "epochs": 40,
    "batch_size": 64,
    "lr": 0.05,
    "augment": ("crop",),
    "seed": 0,
}


def demo(out: str | Path = "runs", console: Any = None, **overrides: Any) -> TrainResult:
    """The main job on the embedded default: LeNet-5 on 5,000 real MNIST digits, evaluated on the held-out test split."""
    return train(
        console=console, out=str(out), name=overrides.pop("name", None), **(DEMO | overrides)
    )


# -- video -------------------------------------------------------------------------------------------------
def video_train(config: Any = None, *, console: Any = None, **options: Any):
    """Train a clip classifier (r3d_18 / mc3_18 / r2plus1d_18, or a zoo 2D model per frame): see cnnlab.video.train."""
    from cnnlab.video.train import train_video

    return train_video(config, console=console, **options)


def video_evaluate(run: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Clip-level classification metrics and report on the run's test split."""
    from cnnlab.video.train import evaluate_video

    return evaluate_video(run, **kwargs)


def video_predict(run: str | Path, video: str | Path, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Frame-by-frame prediction over a video: timeline, events, tracks and an annotated video."""
    from cnnlab.video.predict import predict_video

    return predict_video(run, video, out_dir, **kwargs)


def video_track(
    run: str | Path, video: str | Path, gt: str | Path, out_dir: str | Path, **kwargs: Any
) -> dict[str, Any]:
    """Detect and track objects in a video and score the tracks (MOTA, IDF1) against MOT ground truth."""
    from cnnlab.video.predict import track_video

    return track_video(run, video, gt, out_dir, **kwargs)
