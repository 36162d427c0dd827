"""Semantic segmentation on the shared engine: train, evaluate, predict.

    from cnnlab.segment import train_segmentation, evaluate_segmentation, predict_segmentation
    result = train_segmentation(data="builtin:shapes?n=2000&size=32", model="unet")
    print(result.test_metrics["mean_iou"], result.run_dir)
    predict_segmentation(result.run_dir, ["photo.jpg"], "predictions/")

The run directory has the classification layout (see :mod:`cnnlab.run`): config.json (a
SegmentConfig), classes.json, preprocess.json, splits.json, metrics.csv (with ``val_miou``),
checkpoints/ (metadata ``task: "segmentation"``, model, encoder, classes, preprocessing,
ignore index, palette: enough to predict), test_metrics.json, test_per_image.csv and report.html.

Metrics are computed at the model's input resolution on nearest-resized masks; padding added by
``resize=fit`` is ignored, not scored as background. Prediction maps the logits back to each
image's own size before taking the arg-max.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.config import (
    PreprocessSpec,
    make_config,
)
from cnnlab.data.coco import describe_skipped
from cnnlab.data.decode import DEFAULT_MAX_PIXELS
from cnnlab.data.masks import (
    MaskBundle,
    MaskLoader,
    MaskSplit,
    check_training_masks,
    decode_split,
    infer_num_classes,
    load_mask_source,
    logits_to_image_mask,
    raise_first,
)
from cnnlab.data.scan import check_skipped, given_policy
from cnnlab.data.sources import in_split_order, model_label_indices
from cnnlab.engine import distributed
from cnnlab.engine.assembly import TrainResult
from cnnlab.engine.devices import (
    inference_precision,
    resolve_device,
)
from cnnlab.engine.fit import Plan, TaskSpec, fit
from cnnlab.engine.onnx import OnnxModel, is_onnx
from cnnlab.engine.predict import list_images
from cnnlab.engine.timing import Timings
from cnnlab.engine.trainer import autocast
from cnnlab.engine.tta import SegmentTTAModel, check_segment_tta, compare_views, parse_tta
from cnnlab.errors import ConfigError, DataError, no_such_split
from cnnlab.metrics.checks import UndefinedMetricWarning
from cnnlab.metrics.segmentation import (
    ConfusionAccumulator,
    per_image_iou,
    segmentation_metrics,
)
from cnnlab.metrics.stats import segmentation_intervals
from cnnlab.models.segmentation import create_segmentation_model
from cnnlab.report.render import renderer_for
from cnnlab.run import (
    check_one_dataset,
    claim_outputs,
    evaluation_dir,
    load_run_model,
    read_json,
    record_evaluation,
    run_dir_of,
    source_config,
    trained_precision,
    write_json,
)
from cnnlab.tasks.configs import SegmentConfig
from cnnlab.tasks.segmentation import SegmentationTask

log = logging.getLogger(__name__)


SegmentResult = TrainResult  # what every task's training returns
N_BOOT = 1000  # bootstrap resamples of the test images behind each 95% interval (as classification)
HEADLINE = ("mean_iou", "mean_dice", "pixel_accuracy", "frequency_weighted_iou")  # --tta's table


# -- data ------------------------------------------------------------------------------------------
def _bundle(cfg: SegmentConfig, **kw: Any) -> MaskBundle:
    options = {
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "ignore_index": cfg.ignore_index,
        "data_root": cfg.data_root,
    } | kw
    return load_mask_source(cfg.data, **options)


def _check_skipped_images(
    where: str, bad: list[tuple[str, str]], total: int, cfg: SegmentConfig
) -> str | None:
    """The (image path, reason) pairs skipped because their image cannot be decoded, out of
    ``total``, judged by ``cfg``'s max_bad_fraction / strict: the one policy of `segment train`
    and `segment evaluate` (cnnlab.data.scan.check_skipped, as classification's scan); a DataError
    naming ``where`` and the count above it, else the warning to say (None when none was)."""
    return check_skipped(
        where, bad, total, strict=cfg.strict, max_bad_fraction=cfg.max_bad_fraction,
        fix="replace the images, or remove each with its mask",
    )  # fmt: skip


def _drop(split: MaskSplit, unreadable: list[tuple[int, str, str]]) -> MaskSplit:
    """``split`` without the pairs decode_split skipped (their indices in it)."""
    gone = {i for i, _, _ in unreadable}
    return split.subset([i for i in range(len(split)) if i not in gone]) if gone else split


def _image_size(cfg: SegmentConfig, bundle: MaskBundle, resumed: Path | None = None) -> int:
    if cfg.image_size:
        return cfg.image_size
    recorded = resumed / "preprocess.json" if resumed is not None else None
    if recorded is not None and recorded.is_file():  # a resume goes on at the run's own size
        return int(read_json(recorded)["image_size"])
    side = bundle.square_side()  # images that all share one square size keep it
    if side:
        return max(side, 16)
    log.warning(  # a choice the user did not make (it may upsample small images): said
        "images of %s have no single square size: resizing to 128 px (set --image-size)", cfg.data
    )
    return 128


def _split_by_ids(bundle: MaskBundle, ids: list[str], split: str) -> MaskSplit:
    where: dict[str, tuple[MaskSplit, int]] = {}
    for part in bundle.splits.values():
        for i, sid in enumerate(part.ids):
            where[sid] = (part, i)
    missing = [sid for sid in ids if sid not in where]
    if missing:
        raise DataError(
            bundle.source,
            f"{len(missing)} image(s) of the recorded {split} split are "
            f"gone (first: {missing[:3]}); the dataset changed since training",
        )
    pieces = [where[sid][0].subset([where[sid][1]]) for sid in ids]
    first = pieces[0] if pieces else MaskSplit([])
    return MaskSplit(
        list(ids),
        [p.image_paths[0] for p in pieces] if first.image_paths is not None else None,
        [p.mask_refs[0] for p in pieces] if first.mask_refs is not None else None,
        np.concatenate([p.images for p in pieces]) if first.images is not None else None,
        np.concatenate([p.masks for p in pieces]) if first.masks is not None else None,
    )


def _mask_lut(
    where: Any, names: list[str], class_names: list[str], ignore: int, since: str = ""
) -> np.ndarray | None:
    """A 256-entry look-up table from the data's mask values to the model's class indices,
    matched by name (:func:`cnnlab.data.sources.model_label_indices`; ``ignore`` and values past
    the data's classes stay ``ignore``); None when the lists are the same."""
    index = model_label_indices(where, names, class_names, since)
    if index is None:
        return None
    lut = np.full(256, ignore, dtype=np.uint8)
    lut[: len(names)] = index
    return lut


def _loader(
    images: np.ndarray | torch.Tensor,
    masks: np.ndarray | torch.Tensor,
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int,
    ignore_index: int,
    **kw: Any,
) -> MaskLoader:
    return MaskLoader(
        torch.as_tensor(images).to(device),
        torch.as_tensor(masks).to(device),
        torch.tensor(spec.mean, device=device),
        torch.tensor(spec.std, device=device),
        batch_size,
        ignore_index=ignore_index,
        **kw,
    )


# -- train -----------------------------------------------------------------------------------------
def train_segmentation(
    config: SegmentConfig | str | Path | None = None,
    *,
    console: Any = None,
    timings: Timings | None = None,
    **options: Any,
) -> SegmentResult:
    """Train a segmentation network; returns the run directory, history and test metrics.

    ``config`` may be a SegmentConfig or a JSON/TOML file; keyword options override it.
    """
    return fit(SPEC, config, console=console, timings=timings, **options)


def _prepare(
    cfg: SegmentConfig, info: Any, device: torch.device, resumed: Any, timings: Timings
) -> Plan:
    """Decode images and masks once, infer the classes, build the encoder-decoder."""
    from cnnlab.data.tensors import channel_stats

    bundle = _bundle(cfg)
    # the report's figures are drawn by worker processes started now, before decoding
    # (cnnlab.report.render): they import matplotlib beside it and draw while the test split
    # is scored; rank 0 only (it scores the split)
    has_test = len(bundle.splits.get("test") or ()) > 0
    renderer = renderer_for(cfg.report and has_test and info.is_main)
    in_channels = cfg.in_channels or bundle.channels
    image_size = _image_size(cfg, bundle, resumed[0] if resumed else None)
    decode_policy = {"max_pixels": cfg.max_image_pixels}
    provisional = PreprocessSpec(
        image_size, in_channels, (0.0,) * in_channels, (1.0,) * in_channels, cfg.resize,
        decode_policy,
    )  # fmt: skip
    known = len(bundle.class_names) if bundle.class_names else None
    problems: list[DataError] = []  # every split is checked before one error counts them all
    unreadable: dict[str, list[tuple[int, str, str]]] = {k: [] for k in bundle.splits}
    decoded = {
        k: decode_split(
            s,
            provisional,
            num_classes=known,
            ignore_index=cfg.ignore_index,
            errors=problems,
            skipped=unreadable[k],
        )  # fmt: skip
        for k, s in bundle.splits.items()
        if len(s)
    }
    raise_first(problems)
    # pairs whose image cannot be decoded: skipped (bad-inputs.md B), and dropped from the splits
    # before splits.json records them, so that evaluate and resume never decode them again
    bad = [(path, why) for k in bundle.splits for _, path, why in unreadable[k]]
    total = sum(len(s) for s in bundle.splits.values())
    warning = _check_skipped_images(cfg.data, bad, total, cfg)
    if warning:
        log.warning("%s: %s (see data_report.json)", cfg.data, warning)
    for k, gone in unreadable.items():
        bundle.splits[k] = _drop(bundle.splits[k], gone)
    timings.lap("decode")  # reading the source and decoding images and masks
    skipped = bundle.skipped_annotations
    if skipped:  # as detection counts them, on the same file
        log.warning("%s: %s (see data_report.json)", cfg.data, describe_skipped(skipped))
    if "train" not in decoded or not len(decoded["train"][0]):
        raise DataError(cfg.data, "the training split is empty")
    class_names = bundle.class_names or [
        str(k) for k in range(infer_num_classes([m for _, m in decoded.values()], cfg.ignore_index))
    ]
    if bundle.class_names is None:
        log.warning(
            "%s has no classes.json: %d classes named by number (%s)",
            cfg.data, len(class_names), ", ".join(class_names),
        )  # fmt: skip
    num_classes = len(class_names)
    # fewer than 2 classes in the training masks (0/255 binary masks): refused; absent ones said
    check_training_masks(decoded["train"][1], bundle.splits["train"], class_names,
                         cfg.ignore_index, cfg.data)  # fmt: skip
    mean, std = channel_stats(torch.from_numpy(decoded["train"][0]))
    model = create_segmentation_model(
        cfg.model, num_classes=num_classes, encoder=cfg.encoder, in_channels=in_channels,
        image_size=image_size, encoder_weights=cfg.init_from, encoder_variant=cfg.encoder_variant,
    )  # fmt: skip
    init = model.default_cfg.get("encoder_init") or {}
    if cfg.init_from and len(model.default_cfg.get("mean") or ()) == in_channels:
        mean, std = tuple(model.default_cfg["mean"]), tuple(model.default_cfg["std"])
    spec = PreprocessSpec(
        image_size, in_channels, tuple(mean), tuple(std), cfg.resize, decode_policy
    )
    palette = bundle.palette[:num_classes].tolist()

    def loaders(device: torch.device, channels_last: bool, info: Any) -> tuple[Any, Any]:
        train_loader = _loader(
            *decoded["train"], spec, device,
            distributed.local_batch_size(cfg.batch_size, info),  # DDP: the global batch / W
            cfg.ignore_index, shuffle=True, augment=cfg.augment, seed=cfg.seed, drop_last=True,
            channels_last=channels_last,
        )  # fmt: skip
        if info.distributed:  # DDP: rank r takes batches r, r + W, ... (W x b = the global batch)
            train_loader = distributed.BatchShard(train_loader, info)
        val_loader = None
        if "val" in decoded:
            val_loader = _loader(*decoded["val"], spec, device, max(64, cfg.batch_size),
                                 cfg.ignore_index, channels_last=channels_last)  # fmt: skip
        return train_loader, val_loader

    def evaluate(run_dir: Path, device: torch.device, precision: str) -> dict[str, Any] | None:
        if "test" not in decoded or not distributed.is_main():  # DDP: rank 0 scores the split
            return None
        if renderer is not None:  # training is over: drawn while the test split is scored
            renderer.submit("curves", run_dir / "metrics.csv")
        best, _, _ = load_segmentation_model(run_dir, device)
        return evaluate_segmentation_model(
            best, spec, *decoded["test"], bundle.splits["test"].ids, class_names,
            ignore_index=cfg.ignore_index, device=device, precision=precision, out_dir=run_dir,
            run_dir=run_dir, report=cfg.report, palette=palette, show=cfg.report_images,
            renderer=renderer,
        )  # fmt: skip

    ids = bundle.splits["train"].ids
    data_report: dict[str, Any] = (
        {"skipped_annotations": skipped} if bundle.layout == "coco" else {}
    )
    if bad:
        data_report["skipped_images"] = [{"image": p, "reason": why} for p, why in bad]
    return Plan(
        model=model,
        task=SegmentationTask(
            num_classes, cfg.ignore_index, cfg.dice_weight if cfg.loss == "ce+dice" else 0.0
        ),
        spec=spec,
        metadata={
            "task": "segmentation",
            "model": cfg.model,
            "encoder": cfg.encoder,
            "encoder_variant": cfg.encoder_variant,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "image_size": image_size,
            "class_names": class_names,
            "preprocess": spec.to_dict(),
            "ignore_index": cfg.ignore_index,
            "palette": palette,
            "data": cfg.data,
            "encoder_init": init or None,
            "cnnlab_version": __version__,
            "torch_version": torch.__version__,
        },
        files={
            "classes.json": class_names,
            "preprocess.json": spec.to_dict(),
            "splits.json": {
                "source": bundle.source,
                "layout": bundle.layout,
                "origin": bundle.split_origin,
                "root": str(bundle.root) if bundle.root else None,
                "splits": in_split_order({k: s.ids for k, s in bundle.splits.items()}),
            },
        }
        # what the label checks (COCO) and the decoder skipped, under detection's keys and
        # record shapes
        | ({"data_report.json": data_report} if data_report else {}),
        folder=f"{cfg.model}-{cfg.encoder}",
        loaders=loaders,
        evaluate=evaluate,
        renderer=renderer,  # closed by fit when evaluate ends
        describe=lambda i: ids[i],
        sample_shape=(1, in_channels, image_size, image_size),
    )


# -- checkpoints -----------------------------------------------------------------------------------
def load_segmentation_model(
    run_or_checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """(model in eval mode, checkpoint metadata, weights path) from a run folder or .safetensors."""
    return load_run_model(
        run_or_checkpoint, task="segmentation", device=device,
        keys=("model", "encoder", "num_classes", "in_channels", "preprocess", "class_names"),
        build=lambda meta: create_segmentation_model(
            meta["model"], num_classes=int(meta["num_classes"]), encoder=meta["encoder"],
            in_channels=int(meta["in_channels"]), image_size=int(meta["image_size"]),
            encoder_variant=meta.get("encoder_variant", "auto"),
        ),
    )  # fmt: skip


# -- evaluate --------------------------------------------------------------------------------------
@torch.inference_mode()
def _predict_masks(
    model: torch.nn.Module,
    loader: MaskLoader,
    device: torch.device,
    precision: str,
    num_classes: int,
    ignore_index: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(confusion (K, K), predictions (N, S, S) uint8, per-image confusion (N, K, K) int64)."""
    meter = ConfusionAccumulator(num_classes, ignore_index, per_image=True)
    preds = []
    for images, targets, _ in loader.batches(0):
        with autocast(device, precision):
            logits = model(images)
        pred = logits.argmax(1)
        meter.update(targets, pred)
        preds.append(pred.to(torch.uint8).cpu())
    return (
        meter.matrix(),
        torch.cat(preds).numpy() if preds else np.zeros((0, 1, 1), np.uint8),
        meter.per_image_matrices(),
    )


def evaluate_segmentation_model(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    images: np.ndarray,
    masks: np.ndarray,
    ids: list[str],
    class_names: list[str],
    *,
    ignore_index: int = 255,
    device: torch.device,
    precision: str = "32",
    out_dir: Path | None = None,
    run_dir: Path | None = None,
    report: bool = True,
    palette: list[list[int]] | None = None,
    show: int = 6,
    tta: tuple[str, ...] = (),
    renderer: Any = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on (N, C, S, S) images and (N, S, S) masks (uint8); writes
    test_metrics.json, test_per_image.csv and the report into ``out_dir`` when given.

    ``tta`` (("flip",); cnnlab.engine.tta): the metrics, masks and report are those of the
    averaged per-pixel probabilities, and ``result["tta"]`` (also ``metrics["tta"]``) holds the
    headline metrics without and with TTA side by side.

    `renderer` (cnnlab.report.render): where the report's figures are drawn (in this process
    by default; training passes worker processes, which draw them while the intervals are
    computed)."""
    loader = _loader(images, masks, spec, device, 64, ignore_index)
    scored = SegmentTTAModel(model, tta) if tta else model
    cm, preds, per_image = _predict_masks(
        scored, loader, device, precision, len(class_names), ignore_index
    )
    metrics = segmentation_metrics(cm, class_names)
    comparison = None
    if tta:  # the same images without TTA, for the side-by-side comparison
        plain, _, _ = _predict_masks(
            model, loader, device, precision, len(class_names), ignore_index
        )
        with warnings.catch_warnings():  # undefined values were warned about once, above
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            without = segmentation_metrics(plain, class_names)
        comparison = compare_views(
            {k: _defined(without[k]) for k in HEADLINE},
            {k: _defined(metrics[k]) for k in HEADLINE},
            tta,
        )
        metrics["tta"] = comparison
    figures = None
    if out_dir is not None and report and getattr(renderer, "workers", 0):
        from cnnlab.report.segmentation_report import segmentation_figures

        figures = segmentation_figures(renderer, metrics, class_names, run_dir)
    if len(per_image):  # 95% intervals by resampling test images (the shape classification uses)
        metrics["confidence_intervals"] = segmentation_intervals(
            per_image, class_names, n_boot=N_BOOT, seed=0
        )
    scores = per_image_iou(per_image)
    metrics["num_images"] = len(ids)
    metrics["ignore_index"] = ignore_index
    metrics["image_size"] = spec.image_size
    result: dict[str, Any] = {"metrics": metrics, "per_image_iou": scores, "preds": preds}
    if comparison is not None:
        result["tta"] = comparison
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_json(out_dir / "test_metrics.json", metrics)
        cmi = per_image
        with open(out_dir / "test_per_image.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "mean_iou", "pixel_accuracy", "labelled_pixels"])
            for i, sid in enumerate(ids):
                total = int(cmi[i].sum())
                acc = float(np.trace(cmi[i]) / total) if total else ""
                w.writerow(
                    [
                        sid,
                        "" if np.isnan(scores[i]) else f"{scores[i]:.6f}",
                        acc if acc == "" else f"{acc:.6f}",
                        total,
                    ]
                )
        if report:
            from cnnlab.report.segmentation_report import write_segmentation_report

            result["report"] = write_segmentation_report(
                out_dir,
                metrics,
                images=images,
                masks=masks,
                preds=preds,
                ids=ids,
                scores=scores,
                class_names=class_names,
                palette=palette,
                ignore_index=ignore_index,
                run_dir=run_dir,
                show=show,
                renderer=renderer,
                figures=figures,
            )
    return result


def _defined(value: Any) -> float | None:
    """A metric for the TTA table: None where segmentation_metrics says undefined (NaN)."""
    return None if value is None or np.isnan(value) else float(value)


def evaluate_segmentation(
    run: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    device: str = "auto",
    report: bool = True,
    out: str | Path | None = None,
    precision: str = "auto",
    relocated_data: str | Path | None = None,
    tta: str | tuple[str, ...] | None = None,
    max_bad_fraction: float | None = None,
    strict: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a segmentation run on its recorded split (default: the held-out test images) or on
    every image of another dataset ``data`` whose classes are among the model's (by name).

    Pairs whose image cannot be decoded are skipped as training skips them: refused above
    ``max_bad_fraction`` (any with ``strict``), else said once and the rest evaluated; a bad mask
    is an error, as in training. The defaults are the run's own options for its split,
    SegmentConfig's for ``data`` (as classification's evaluate reads another dataset). COCO
    annotations ``data`` skips are said too; both lists are in ``result["data_report"]``.

    ``tta="flip"`` (cnnlab.engine.tta): the metrics are those of the mean of the image's and its
    mirror's per-pixel probabilities (the mirror's mirrored back), and ``result["tta"]`` (also in
    evaluation.json) puts the headline metrics without and with it side by side."""
    check_one_dataset(data, relocated_data)
    views = check_segment_tta(parse_tta(tta))  # said before anything is loaded
    dev = resolve_device(device)
    model, meta, weights = load_segmentation_model(run, dev)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    class_names = list(meta["class_names"])
    ignore = int(meta.get("ignore_index", 255))
    run_dir = run_dir_of(weights)
    policy = given_policy(max_bad_fraction, strict)
    data_report: dict[str, Any] = {}
    unreadable: list[tuple[int, str, str]] = []  # (index in chosen, image, reason)
    if data is None:
        if run_dir is None:
            raise ConfigError(
                f"{weights} is not inside a run directory: pass data= to say what to evaluate on"
            )
        cfg = make_config(SegmentConfig, **source_config(run_dir, relocated_data) | policy)
        recorded = read_json(run_dir / "splits.json")["splits"]
        if split not in recorded:
            raise no_such_split(split, recorded)
        bundle = _bundle(cfg)
        chosen = _split_by_ids(bundle, recorded[split], split)
        where, since = cfg.data, "the run was trained"
    else:
        cfg = make_config(SegmentConfig, data=data, val_fraction=0.0, test_fraction=0.0,
                          ignore_index=ignore, **policy)  # fmt: skip
        bundle = _bundle(cfg)
        if bundle.skipped_annotations:  # said below, as training said the run's own
            data_report["skipped_annotations"] = bundle.skipped_annotations
        chosen = bundle.splits["train"]
        for name in ("val", "test"):
            if name in bundle.splits and len(bundle.splits[name]):
                chosen = _concat(chosen, bundle.splits[name])
        where, since = data, ""
    # mask values are the data's class indices, matched to the model's by name (the run's own
    # dataset at a new place may list its classes in another order, as classification's
    # split_by_ids allows)
    names = bundle.class_names or class_names
    lut = _mask_lut(where, names, class_names, ignore, since)
    images, masks = decode_split(
        chosen, spec, num_classes=len(names), ignore_index=ignore, skipped=unreadable
    )
    if lut is not None:
        masks = lut[masks]
    bad = [(path, why) for _, path, why in unreadable]
    warning = _check_skipped_images(cfg.data, bad, len(chosen), cfg)
    chosen = _drop(chosen, unreadable)  # the ids beside the decoded arrays
    if warning:  # said once; the other images are evaluated
        log.warning("%s: %s; evaluating the other %d", cfg.data, warning, len(chosen))
    if bad:
        data_report["skipped_images"] = [{"image": p, "reason": why} for p, why in bad]
    if data_report.get("skipped_annotations"):  # after the refusals, which say one line only
        log.warning("%s: %s", cfg.data, describe_skipped(data_report["skipped_annotations"]))
    precision = inference_precision(precision, dev, trained_precision(run_dir))
    out_dir = evaluation_dir(out, run_dir)
    result = evaluate_segmentation_model(
        model,
        spec,
        images,
        masks,
        chosen.ids,
        class_names,
        ignore_index=ignore,
        device=dev,
        precision=precision,
        out_dir=out_dir,
        run_dir=run_dir,
        report=report and out_dir is not None,
        palette=meta.get("palette"),
        tta=views,
    )
    record = record_evaluation(
        out_dir, task="segmentation", weights=weights, data=data, split=split,
        num_samples=len(chosen), precision=precision, device=dev,
        extra={"tta": result["tta"]} if views else None,
    )  # fmt: skip
    answer = record | {"metrics": result["metrics"], "report": result.get("report"),
                       "data_report": data_report}  # fmt: skip
    return answer | ({"tta": result["tta"]} if views else {})


def _concat(a: MaskSplit, b: MaskSplit) -> MaskSplit:
    def join(x: Any, y: Any) -> Any:
        if x is None:
            return None
        return np.concatenate([x, y]) if isinstance(x, np.ndarray) else list(x) + list(y)

    return MaskSplit(
        a.ids + b.ids,
        join(a.image_paths, b.image_paths),
        join(a.mask_refs, b.mask_refs),
        join(a.images, b.images),
        join(a.masks, b.masks),
    )


# -- predict ---------------------------------------------------------------------------------------
def predict_segmentation(
    run: str | Path,
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    device: str = "auto",
    batch_size: int = 16,
    overlays: bool = True,
    precision: str = "auto",
    tta: str | tuple[str, ...] | None = None,
) -> list[Path]:
    """Write one class-index mask PNG per image (``out_dir/masks/NAME.png``, palette mode: the pixel
    values are class indices, viewers show colours) and a colour overlay (``out_dir/overlays/``).
    ``run``: a run folder, a .safetensors checkpoint or an exported ``.onnx`` file (onnxruntime,
    float32 on the CPU: the same masks).

    ``tta="flip"`` (cnnlab.engine.tta): each mask is the arg-max of the mean of the image's and
    its mirror's per-pixel probabilities (the mirror's mirrored back); predictions.json says so.

    Unreadable inputs are skipped with a warning and listed in ``out_dir/predictions.json``.
    Returns the mask paths in input order (skipped files omitted).
    """
    from PIL import Image

    from cnnlab.data.decode import load_image
    from cnnlab.data.tensors import image_mode, pil_to_chw
    from cnnlab.report.segmentation_report import colorize, overlay

    views = check_segment_tta(parse_tta(tta))
    names_out = ["predictions.json", "masks/", *(["overlays/"] if overlays else [])]
    claim_outputs(out_dir, names_out, command="segment predict", record=False)  # said first
    if is_onnx(run):
        dev, model = torch.device("cpu"), OnnxModel(run, task="segmentation")
        meta, trained = model.meta, "32"
    else:
        dev = resolve_device(device)
        model, meta, weights = load_segmentation_model(run, dev)
        trained = trained_precision(run_dir_of(weights))
    if views:  # log mean probabilities: resized and arg-maxed below as logits are
        model = SegmentTTAModel(model, views)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    names = list(meta["class_names"])
    ignore = int(meta.get("ignore_index", 255))
    palette = np.asarray(meta.get("palette") or [], dtype=np.uint8).reshape(-1, 3)
    files = list_images(inputs)
    out = claim_outputs(out_dir, names_out, command="segment predict")
    (out / "masks").mkdir(parents=True, exist_ok=True)
    if overlays:
        (out / "overlays").mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(spec.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=dev).view(1, -1, 1, 1)
    precision = inference_precision(precision, dev, trained)
    if is_onnx(run) and precision != "32":
        raise ConfigError(f"--precision {precision}: an ONNX model runs in float32 in onnxruntime")
    pil_palette = np.zeros((256, 3), dtype=np.uint8)
    pil_palette[: len(palette)] = palette
    written: list[Path] = []
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    max_pixels = int(spec.decode.get("max_pixels", DEFAULT_MAX_PIXELS))
    for start in range(0, len(files), batch_size):
        batch, arrays = [], []
        for f in files[start : start + batch_size]:
            try:
                im = load_image(f, mode=image_mode(spec.in_channels), max_pixels=max_pixels)
            except DataError as err:
                log.warning("skipped %s: %s", f, err.reason)
                records.append({"input": str(f), "error": err.reason})
                continue
            batch.append((f, im))
            arrays.append(pil_to_chw(im, spec))
        if not batch:
            continue
        x = torch.from_numpy(np.stack(arrays)).to(dev)
        x = (x.float() / 255 - mean) / std
        with torch.inference_mode(), autocast(dev, precision):
            logits = model(x).float()
        for (f, im), lg in zip(batch, logits, strict=True):
            mask = logits_to_image_mask(lg, im.width, im.height, spec.resize, ignore)
            stem = f.stem
            n = 1
            while stem in used:  # same name in two input folders: keep both
                n += 1
                stem = f"{f.stem}-{n}"
            used.add(stem)
            path = out / "masks" / f"{stem}.png"
            png = Image.fromarray(mask)  # mode L: the values are the class indices
            png.putpalette(pil_palette.flatten().tolist())  # -> mode P, same indices, coloured
            tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
            png.save(tmp)
            os.replace(tmp, path)
            record = {
                "input": str(f),
                "mask": str(path),
                "classes": {
                    names[k]: round(float((mask == k).mean()), 6)
                    for k in np.unique(mask)
                    if k < len(names)
                },
            }
            if overlays:
                rgb = np.asarray(im.convert("RGB"))
                ov = out / "overlays" / f"{stem}.png"
                Image.fromarray(overlay(rgb, colorize(mask, palette, ignore))).save(ov)
                record["overlay"] = str(ov)
            records.append(record)
            written.append(path)
    tta_record = {"tta": list(views)} if views else {}
    write_json(
        out / "predictions.json",
        {"run": str(run), "class_names": names} | tta_record | {"predictions": records},
    )
    if files and not written:
        raise DataError(files[0], "no input image could be read (see predictions.json)")
    return written


SPEC = TaskSpec(
    name="segmentation",
    command="cnnlab segment train",
    config=SegmentConfig,
    validator=SegmentationTask,
    prepare=_prepare,
)
