"""Classification training: the data, model and transfer plan of a run; the fit shell
(:mod:`cnnlab.engine.fit`) does the rest, as for every task."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.config import AugmentParams, PreprocessSpec, TrainConfig, augmentations
from cnnlab.data.sources import few_shot, in_split_order, load_source
from cnnlab.data.tensors import decode_spec
from cnnlab.engine import distributed
from cnnlab.engine.assembly import TrainResult
from cnnlab.engine.calibration import fit_calibration, split_logits, write_calibration
from cnnlab.engine.checkpoint import read_weights
from cnnlab.engine.devices import resolve_channels_last
from cnnlab.engine.fit import Plan, TaskSpec, fit
from cnnlab.engine.loaders import (
    make_loader,
    resolve_image_size,
    split_channel_stats,
    split_to_uint8,
    use_streaming,
)
from cnnlab.engine.timing import Timings
from cnnlab.engine.trainer import check_monitor
from cnnlab.engine.weights import build_model, load_checkpoint_model
from cnnlab.errors import CheckpointError
from cnnlab.report.render import renderer_for
from cnnlab.tasks.classification import ClassificationTask, MultiLabelTask
from cnnlab.tasks.classify import multilabel
from cnnlab.tasks.classify.evaluate import BATCH as EVAL_BATCH
from cnnlab.tasks.classify.evaluate import evaluate_model
from cnnlab.tasks.classify.imbalance import class_balance
from cnnlab.transfer.lr_find import lr_find

log = logging.getLogger(__name__)


def train(
    config: TrainConfig | str | Path | None = None,
    *,
    console: Any = None,
    timings: Timings | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a classifier; returns the run directory and metrics. `config` may be a TrainConfig or a
    file path; ``timings``: see :func:`cnnlab.engine.fit.fit`."""
    return fit(SPEC, config, console=console, timings=timings, **overrides)


def _configure(cfg: TrainConfig) -> TrainConfig:
    """--lr auto: the learning-rate range test on a copy of the model picks the peak rate."""
    if cfg.lr != "auto":
        return cfg
    # 300 batches, not lr-find's default 100: on LeNet-5 / mnist-sample the 100-batch curve suggests
    # 0.22, which trains to chance; 300 batches suggest 0.058, which trains to 0.94 (notebook 03)
    found = lr_find(dataclasses.replace(cfg, lr=1e-3), seed=cfg.seed, steps=300)
    log.warning("--lr auto: the range test suggests lr=%.3g", found["suggested_lr"])
    if cfg.accumulate_grad_batches > 1:
        log.warning(
            "--lr auto tested batches of %d, but each step averages %d batches: the rate is "
            "used as found (scale it by hand for the larger batch; docs/distributed.md)",
            cfg.batch_size,
            cfg.accumulate_grad_batches,
        )
    return dataclasses.replace(cfg, lr=float(found["suggested_lr"]))


def _prepare(
    cfg: TrainConfig, info: Any, device: torch.device, resumed: Any, timings: Timings
) -> Plan:
    """Scan and decode the splits once (uint8 cache), build the model and the transfer plan."""
    if not info.is_main:
        distributed.barrier()  # DDP: rank 0 scans and decodes first; the others then hit its cache
    bundle = load_source(cfg)
    timings.lap("scan")
    # the report's figures are drawn by worker processes that import matplotlib now, beside the
    # decoding and set-up, and draw while the test split is scored (cnnlab.report.render)
    has_test = "test" in bundle.splits and len(bundle.splits["test"]) > 0
    # rank 0; a multi-label report draws its own figures (report/multilabel_report.py)
    renderer = renderer_for(cfg.report and has_test and info.is_main and not bundle.multilabel)
    if resumed:  # bad-inputs #44: a resumed run must see the classes it was trained on, in order
        _, saved_meta = read_weights(resumed[0] / "checkpoints" / resumed[1]["weights"]["file"])
        if saved_meta.get("class_names") != bundle.class_names:
            raise CheckpointError(
                f"checkpoint classes {saved_meta.get('class_names')} != dataset classes "
                f"{bundle.class_names}; resume needs the same classes (use --init-from to fine-tune instead)"
            )
    if bundle.multilabel:  # several labels per image: sigmoid + BCE (tasks/classify/multilabel.py)
        multilabel.check_options(cfg)
    else:
        check_monitor(cfg.monitor, ClassificationTask, "single-label classification")
    if cfg.shots:
        bundle.splits["train"] = few_shot(bundle.splits["train"], cfg.shots, cfg.seed)
    # before decoding, so a bad weights file fails before any work; a resumed run keeps its weights
    balance = class_balance(
        cfg, bundle.splits["train"].targets, bundle.class_names,
        recorded=resumed[0] if resumed else None,
    )  # fmt: skip
    in_channels = cfg.in_channels or bundle.channels
    image_size = resolve_image_size(cfg, bundle)
    # what the files are decoded at (mean 0, std 1: the statistics come next); cnnlab.data.prefetch
    # warms the cache with the same spec
    provisional = decode_spec(cfg, bundle, image_size)
    decode_policy = provisional.decode
    stream = use_streaming(cfg, bundle, provisional)
    tensors = {k: split_to_uint8(s, provisional, stream=stream) for k, s in bundle.splits.items()}
    timings.lap("decode")  # streamed splits decode during training instead
    if info.is_main:
        distributed.barrier()  # DDP: pairs with the others' barrier above
    mean, std = split_channel_stats(tensors["train"], cfg.seed)  # from the training split only
    model = build_model(cfg.model, len(bundle.class_names), in_channels, image_size, cfg.weights)
    pretrained_cfg = getattr(model, "default_cfg", {})
    if cfg.weights and len(pretrained_cfg.get("mean") or ()) == in_channels:
        mean, std = tuple(pretrained_cfg["mean"]), tuple(pretrained_cfg["std"])  # the weights'
    plan = None
    if cfg.init_from or cfg.freeze != "none" or cfg.strategy != "full":
        from cnnlab.transfer.recipes import prepare_transfer

        plan = prepare_transfer(model, cfg, class_names=bundle.class_names, in_channels=in_channels)
        source_pre = plan.source_preprocess or {}
        if len(source_pre.get("mean") or ()) == in_channels:
            mean, std = tuple(source_pre["mean"]), tuple(source_pre["std"])  # what the source saw
    spec = PreprocessSpec(image_size, in_channels, mean, std, cfg.resize, decode_policy)
    splits = bundle.splits

    def loaders(device: torch.device, channels_last: bool, info: Any) -> tuple[Any, Any]:
        train_loader = make_loader(
            tensors["train"], splits["train"].targets, spec, device,
            distributed.local_batch_size(cfg.batch_size, info),  # DDP: the global batch / W
            shuffle=True, augment=augmentations(cfg), seed=cfg.seed, drop_last=True,
            channels_last=channels_last, num_classes=len(bundle.class_names),
            sampler=cfg.sampler,  # "balanced": every class equally likely per draw (data.loader)
            augment_params=AugmentParams.of(cfg),  # --mixup-alpha, --erasing-prob, ...
            shard=(info.rank, info.world_size),  # DDP: rank r takes samples r, r + W, ...
        )  # fmt: skip
        val_loader = None
        if "val" in tensors and len(splits["val"]):
            val_loader = make_loader(
                tensors["val"], splits["val"].targets, spec, device,
                batch_size=max(256, cfg.batch_size), channels_last=channels_last,
            )  # fmt: skip
        return train_loader, val_loader

    def evaluate(run_dir: Path, device: torch.device, precision: str) -> dict[str, Any] | None:
        has_test = "test" in tensors and len(splits["test"]) > 0
        has_val = "val" in tensors and len(splits["val"]) > 0
        if not has_test and not has_val:
            return None
        if renderer is not None and has_test:  # drawn while the test split is scored
            renderer.submit("curves", run_dir / "metrics.csv")
        best, _, weights = load_checkpoint_model(run_dir, device)
        if resolve_channels_last(
            None, device
        ):  # as `evaluate` will: the same kernels, the same sums
            best.to(memory_format=torch.channels_last)
        if bundle.multilabel:  # per-label thresholds tuned on val, then the test metrics at them
            return multilabel.tune_and_test(
                best, spec, tensors, splits, bundle.class_names, device=device,
                precision=precision, run_dir=run_dir, write=info.is_main, report=cfg.report,
            )  # fmt: skip
        # the test split's logits, computed once: calibration measures on them and the test
        # metrics are their (calibrated) softmax, as evaluate_model would predict them
        test_logits = None
        if has_test:
            test_loader = make_loader(
                tensors["test"], splits["test"].targets, spec, device, EVAL_BATCH
            )
            test_logits = split_logits(
                best, test_loader, len(bundle.class_names), device=device, precision=precision
            )
        calibration = None
        if (
            has_val
        ):  # temperature and out-of-domain check, fitted on validation (docs/calibration.md)
            calibration = calibrate(best, run_dir, weights, device, precision, test_logits)
        if not has_test:
            return None
        return evaluate_model(
            best, spec, tensors["test"], splits["test"], bundle.class_names, device=device,
            precision=precision, run_dir=run_dir, report=cfg.report, timings=timings,
            calibration=calibration, renderer=renderer, batch_size=EVAL_BATCH, logits=test_logits,
        )  # fmt: skip

    def calibrate(best, run_dir, weights, device, precision, test_logits) -> dict[str, Any]:
        """Fit calibration.json on the validation split (every rank computes, rank 0 writes)."""
        batch = max(256, cfg.batch_size)
        loaders = {"val": make_loader(tensors["val"], np.asarray(splits["val"].targets), spec,
                                      device, batch)}  # fmt: skip
        record = fit_calibration(
            best, loaders, len(bundle.class_names), device=device, precision=precision,
            weights=weights, logits={"test": test_logits} if test_logits is not None else None,
        )  # fmt: skip
        if info.is_main:  # DDP: rank 0 writes
            write_calibration(run_dir, record)
        return record

    files: dict[str, Any] = {
        "classes.json": bundle.class_names,
        "preprocess.json": spec.to_dict(),
        "splits.json": {
            "source": bundle.source,
            "origin": bundle.split_origin,
            "root": str(bundle.root) if bundle.root else None,
            "splits": in_split_order({k: s.ids for k, s in splits.items()}),
        },
    }
    if bundle.scan is not None and hasattr(bundle.scan, "to_json"):
        files["data_scan.json"] = bundle.scan.to_json()
    if plan is not None:
        files["transfer.json"] = plan.to_dict()
    # class_balance.json: training class counts, weights, sampler, loss
    files["class_balance.json"] = balance.to_dict()
    ids = splits["train"].ids
    if bundle.multilabel:
        task: Any = MultiLabelTask(len(bundle.class_names), **balance.task_options())
    else:
        task = ClassificationTask(
            len(bundle.class_names), cfg.label_smoothing, **balance.task_options()
        )
    return Plan(
        model=model,
        task=task,
        spec=spec,
        metadata={
            "model": cfg.model,
            "num_classes": len(bundle.class_names),
            "in_channels": in_channels,
            "image_size": image_size,
            "class_names": bundle.class_names,
            "preprocess": spec.to_dict(),
            "task": "classification",
            **({"multilabel": True} if bundle.multilabel else {}),
            "cnnlab_version": __version__,
            "torch_version": torch.__version__,
            "data": cfg.data,
            "model_cfg": _plain(getattr(model, "default_cfg", {})),
        },
        files=files,
        folder=cfg.model,
        loaders=loaders,
        evaluate=evaluate,
        renderer=renderer,  # closed by fit when evaluate ends
        describe=lambda i: ids[i],
        flops=_flops_per_image(model, in_channels, image_size),
        lr_scale=plan.lr_scale if plan else None,
        include_frozen=bool(plan and plan.include_frozen),
        callbacks=plan.callbacks if plan else (),
        train_mode=plan.train_mode if plan else None,
        sharded_validation=True,
        record={
            "augmentations": list(augmentations(cfg)),  # the recipe's and --augment's
            **({"multilabel": True} if bundle.multilabel else {}),
        },
        show=[plan.layer_table()] if plan else [],
    )


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


class _EitherClassification:
    """What --monitor may name before the data says single- or multi-label: either task's
    validation metrics; _prepare then checks the monitor against the one the data chose."""

    metric_names = tuple(
        dict.fromkeys(ClassificationTask.metric_names + MultiLabelTask.metric_names)
    )
    # said beside them: a metric only one kind of run records (the data decides which it is)
    metric_notes = {
        **{f"val_{k}": "single-label runs" for k in ClassificationTask.metric_names
           if k not in MultiLabelTask.metric_names},
        **{f"val_{k}": "multi-label runs" for k in MultiLabelTask.metric_names
           if k not in ClassificationTask.metric_names},
    }  # fmt: skip


SPEC = TaskSpec(
    name="classification",
    command="cnnlab train",
    config=TrainConfig,
    validator=_EitherClassification,
    prepare=_prepare,
    configure=_configure,
)
