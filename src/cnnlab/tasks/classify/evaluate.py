"""Classification evaluation: metrics with confidence intervals, predictions and the report of one split."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import PreprocessSpec, TrainConfig, make_config
from cnnlab.data.scan import given_policy
from cnnlab.data.sources import RUN_PIXEL_HINT, Split, load_source, remap_classes, split_by_ids
from cnnlab.engine import distributed
from cnnlab.engine.calibration import TemperatureScores, load_calibration
from cnnlab.engine.devices import inference_precision, resolve_channels_last, resolve_device
from cnnlab.engine.loaders import make_loader, split_to_uint8
from cnnlab.engine.timing import Timings
from cnnlab.engine.trainer import Trainer
from cnnlab.engine.tta import TTAModel, compare_views, parse_tta
from cnnlab.engine.weights import load_checkpoint_model
from cnnlab.errors import ConfigError, DataError, no_such_split
from cnnlab.run import (
    check_one_dataset,
    evaluation_dir,
    read_json,
    record_evaluation,
    run_dir_of,
    source_config,
    trained_precision,
    write_json,
)
from cnnlab.tasks.classification import ClassificationTask
from cnnlab.tasks.classify import multilabel
from cnnlab.tasks.classify import operating_point as op
from cnnlab.tasks.classify.imbalance import recorded_balance

BATCH = 512  # images per forward pass when a split is scored


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
    batch_size: int = BATCH,
    timings: Timings | None = None,
    calibration: dict[str, Any] | None = None,
    tta: tuple[str, ...] = (),
    renderer: Any = None,
    logits: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Metrics (+ bootstrap CIs, report) of `model` on one split held as a uint8 tensor.

    `tta` (cnnlab.engine.tta): the metrics, predictions and report are those of the averaged
    views, and ``result["tta"]`` holds the headline metrics without and with TTA side by side
    (also ``metrics["tta"]``).

    `renderer` (cnnlab.report.render): where the report's figures are drawn (in this process
    by default; training passes worker processes started after its scan).

    `logits`: the split's raw logits (N, K) and targets (N,) when the caller has them already, as
    :func:`cnnlab.engine.calibration.split_logits` returns them for an unshuffled loader of
    ``batch_size`` (training's calibration scores the test split): the split is not predicted
    again, and the probabilities are the ones predicting would give (not with ``tta``).

    `calibration`: the run's calibration.json record (cnnlab.engine.calibration); its temperature
    calibrates the probabilities (``softmax(logits / T)``: accuracy and ROC-AUC unchanged, ECE
    and log loss those of the calibrated model) and the report gets its calibration section.

    `thumbnails` (N, C, H, W) uint8: what the report shows for each sample (default `images`;
    video clips pass a strip of frames). `timings`: the report's seconds go to its "report"
    phase, those before to "evaluate" (training's time split)."""
    from cnnlab.metrics import UndefinedMetricWarning, classification_metrics
    from cnnlab.metrics.stats import headline_intervals

    timings = timings if timings is not None else Timings()

    info = distributed.current()
    temperature = float(calibration["temperature"]) if calibration else 1.0
    if logits is not None and not tta:
        p, t = probs_from_logits(logits[0], len(class_names), temperature), logits[1]
    else:
        p, t = predict_probs(
            model, spec, images, split, len(class_names), device=device, precision=precision,
            batch_size=batch_size, temperature=temperature, tta=tta,
        )  # fmt: skip
    with (
        warnings.catch_warnings()
    ):  # undefined values are listed in metrics["warnings"] and shown once
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        metrics = classification_metrics(t, p, class_names=class_names)
        if tta:  # the same split without TTA, for the side-by-side comparison
            single, _ = predict_probs(
                model, spec, images, split, len(class_names), device=device,
                precision=precision, batch_size=batch_size, temperature=temperature,
            )  # fmt: skip
            plain = classification_metrics(t, single, class_names=class_names)
    out = (out_dir or run_dir) if info.is_main else None  # DDP: rank 0 writes
    figures = None
    if out is not None and report and getattr(renderer, "workers", 0):
        # worker processes draw the figures while the intervals and predictions are computed
        # (in place they are drawn with the page: the report's seconds in the time split)
        from cnnlab.report.html import classification_figures

        figures = classification_figures(
            renderer, metrics, p, t, class_names, run_dir=run_dir, calibration=calibration
        )
    metrics["confidence_intervals"] = headline_intervals(t, p, seed=0)
    metrics["temperature"] = temperature  # probs = softmax(logits / T); 1: uncalibrated
    comparison = tta_comparison(plain, metrics, tta) if tta else None
    if comparison is not None:
        metrics["tta"] = comparison
    result: dict[str, Any] = {"metrics": metrics, "probs": p, "targets": t}
    if comparison is not None:
        result["tta"] = comparison
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

            timings.lap("evaluate")
            result["report"] = write_classification_report(
                out, metrics, p, t, class_names, ids=split.ids, run_dir=run_dir,
                images=images if thumbnails is None else thumbnails,
                balance=recorded_balance(run_dir), calibration=calibration, renderer=renderer,
                figures=figures,
            )  # fmt: skip
            timings.lap("report")
    return result


HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece")  # TTA's side by side


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of classification_metrics (macro F1 from its "macro" block)."""
    values = {k: metrics.get(k) for k in HEADLINE if k != "macro_f1"}
    values["macro_f1"] = (metrics.get("macro") or {}).get("f1")
    return {k: values[k] for k in HEADLINE}


def tta_comparison(
    without: dict[str, Any], with_tta: dict[str, Any], tta: tuple[str, ...]
) -> dict[str, Any]:
    """{"views", "num_views", "without", "with", "change"}: the headline metrics of one split
    without and with TTA (change = with - without; log loss and ECE are lower-better)."""
    return compare_views(headline(without), headline(with_tta), tta)


def _scores(num_classes: int, temperature: float) -> Any:
    """The task whose ``scores(logits)`` are the (calibrated) probabilities."""
    if temperature == 1.0:
        return ClassificationTask(num_classes)
    return TemperatureScores(num_classes, temperature)


def probs_from_logits(logits: np.ndarray, num_classes: int, temperature: float) -> np.ndarray:
    """(N, K) float64 probabilities of raw float32 logits (held as float64), computed as
    :func:`predict_probs` computes them batch by batch: float32 ``softmax(logits / T)``, one row
    at a time, so the result is the same to the bit."""
    scores = _scores(num_classes, temperature).scores(torch.from_numpy(logits.astype(np.float32)))
    return scores.numpy().astype(np.float64)


def predict_probs(
    model,
    spec: PreprocessSpec,
    images: torch.Tensor,
    split: Split,
    num_classes: int,
    *,
    device: torch.device,
    precision: str = "32",
    batch_size: int = BATCH,
    temperature: float = 1.0,
    tta: tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(probs (N, K) float64, targets (N,)) of `model` on one split held as a uint8 tensor;
    ``probs = softmax(logits / temperature)``; with ``tta`` (cnnlab.engine.tta) the mean of the
    views' ``softmax(logits_v / temperature)``."""
    loader = make_loader(images, split.targets, spec, device, batch_size)
    if tta:  # TTAModel returns log mean probs: ClassificationTask's softmax gives them back
        model, temperature = TTAModel(model, tta, temperature), 1.0
    task = _scores(num_classes, temperature)
    if distributed.current().distributed:  # DDP: each rank predicts every W-th batch; all gather
        probs, targets = distributed.predict_sharded(
            model, task, loader, device=device, precision=precision
        )
    else:
        trainer = Trainer(model, task, None, None, device=device, precision=precision)
        probs, targets = trainer.predict(loader)
    return probs.numpy().astype(np.float64), targets.numpy()


def evaluate(
    run_or_checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    device: str = "auto",
    report: bool = True,
    out: str | Path | None = None,
    precision: str = "auto",
    relocated_data: str | Path | None = None,
    positive: str | None = None,
    target: str | None = None,
    replace_operating_point: bool = False,
    tta: str | tuple[str, ...] | None = None,
    max_bad_fraction: float | None = None,
    strict: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a trained model on its own held-out split (default) or on another dataset (`data`).

    Writes into ``out`` or a new ``<run>/evaluations/<time>/`` (never over what training recorded);
    ``precision`` auto = fp32 on CPU, the run's own on CUDA (cnnlab.engine.devices).

    ``target`` (``recall=0.95``, ``precision=0.9``, ``fpr=0.01``, ``youden``, ``f1``) with
    ``positive`` (a class name; a binary run defaults to its second class): choose the threshold on
    P(positive) for that target on the run's validation split, measure it on the evaluated split
    with bootstrap intervals, and store it as the run's operating point (see
    cnnlab.tasks.classify.operating_point; ``replace_operating_point`` replaces an active one).

    ``tta`` ("flip", "crop", "shift" or a comma list; cnnlab.engine.tta): the metrics are those of the
    averaged views, and ``result["tta"]`` (also in evaluation.json) puts the headline metrics
    without and with TTA side by side.

    Unreadable images are judged as training judges them (the scan of :func:`load_source`):
    refused above ``max_bad_fraction`` (any with ``strict``), else said once and skipped. The
    defaults are the run's own options for its data, TrainConfig's for ``data``."""
    check_one_dataset(data, relocated_data)
    policy = given_policy(max_bad_fraction, strict)
    views = parse_tta(tta)
    if views and target is not None:
        raise ConfigError(
            f"--tta {','.join(views)} with --target: an operating point is chosen on single-view "
            "probabilities (what predict applies it to); leave --tta out to choose one"
        )
    if positive is not None and target is None:
        raise ConfigError(
            f"--positive {positive} needs --target, e.g. --target recall=0.95 ({op.CHOICES})"
        )
    if replace_operating_point and target is None:
        raise ConfigError("--replace-operating-point needs the new one's --target (and --positive)")
    wanted = op.parse_target(target) if target is not None else None  # said before any work
    dev = resolve_device(device)
    model, meta, weights = load_checkpoint_model(run_or_checkpoint, dev)
    if resolve_channels_last(None, dev):
        model.to(memory_format=torch.channels_last)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    class_names = list(meta["class_names"])
    run_dir = run_dir_of(weights)
    multilabel_run = bool(meta.get("multilabel"))
    if multilabel_run and views:
        raise ConfigError(
            f"--tta {','.join(views)} averages single-label views; a multi-label run's thresholds "
            "were tuned on single-view sigmoids: leave --tta out"
        )
    if multilabel_run and wanted is not None:
        raise ConfigError(
            "--positive / --target choose one class's threshold; a multi-label run has one "
            "threshold per label, tuned on validation when it was trained (RUN/thresholds.json)"
        )
    pos = None
    if wanted is not None:
        pos = op.positive_index(positive, class_names)
        op.check_storable(run_dir, replace_operating_point, weights)
    own = None  # the run's own data and recorded splits
    if data is None or wanted is not None:
        if run_dir is None:
            raise ConfigError(
                f"{weights} is not inside a run directory: pass --data to say what to evaluate on"
            )
        own = load_source(
            make_config(TrainConfig, **source_config(run_dir, relocated_data) | policy),
            pixel_hint=RUN_PIXEL_HINT,
        )
        saved = read_json(run_dir / "splits.json")["splits"]
    if data is None:
        if split not in saved:
            raise no_such_split(split, saved)
        chosen = split_by_ids(own, saved[split], split, class_names)
    else:
        # scanned under the limit the run decodes with (its preprocessing's), as its own data
        limit = (
            {"max_image_pixels": spec.decode["max_pixels"]} if "max_pixels" in spec.decode else {}
        )
        cfg = make_config(
            TrainConfig, data=data, val_fraction=0.0, test_fraction=0.0, **limit | policy
        )
        bundle = load_source(cfg, pixel_hint=RUN_PIXEL_HINT)
        chosen = remap_classes(bundle, class_names, split)
    images = split_to_uint8(chosen, spec)
    precision = inference_precision(precision, dev, trained_precision(run_dir))
    if multilabel_run:  # sigmoid scores at the run's per-label thresholds
        if chosen.targets.ndim != 2:
            raise DataError(
                data or "dataset",
                "has one label per image, but the run is multi-label; give a multi-label "
                "dataset (a CSV `path,labels` or one 0/1 column per label)",
            )
        out_dir = evaluation_dir(out, run_dir)
        scored = multilabel.score_split(
            model, spec, images, chosen, class_names, device=dev, precision=precision,
            thresholds=multilabel.read_thresholds(run_dir, class_names), out_dir=out_dir,
            report=report, run_dir=run_dir,
        )  # fmt: skip
        record = record_evaluation(
            out_dir, task="classification", weights=weights, data=data, split=split,
            num_samples=len(chosen), precision=precision, device=dev,
        )  # fmt: skip
        return record | scored
    threshold = None
    calibration = load_calibration(run_dir, weights)  # None for runs trained before it existed
    temperature = calibration.temperature if calibration else 1.0
    if wanted is not None:  # chosen first: an unreachable target stops before anything is written
        val = split_by_ids(own, saved["val"], "val", class_names)
        val_probs, val_targets = predict_probs(  # calibrated, as predict will apply them
            model, spec, split_to_uint8(val, spec), val, len(class_names), device=dev,
            precision=precision, temperature=temperature,
        )  # fmt: skip
        threshold = op.choose(val_targets, val_probs, pos, wanted, class_names[pos])
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
        calibration=calibration.record if calibration else None,
        tta=views,
    )
    record = record_evaluation(
        out_dir, task="classification", weights=weights, data=data, split=split,
        num_samples=len(chosen), precision=precision, device=dev,
        extra={"tta": result["tta"]} if views else None,
    )  # fmt: skip
    answer = record | {"metrics": result["metrics"], "report": result.get("report")}
    if threshold is not None:
        measured = op.measure(result["targets"], result["probs"], pos, threshold["threshold"])
        evaluated_on = {"data": data or "recorded", "split": split if data is None else "all"}
        if data is None and split == "val":
            evaluated_on["note"] = "chosen and measured on the same split: optimistic"
        point = op.record(
            class_names=class_names, pos=pos, target=wanted, chosen=threshold, measured=measured,
            weights=weights, evaluated_on=evaluated_on, evaluation=out_dir, run_dir=run_dir,
        )  # fmt: skip
        answer["operating_point"] = point
        answer["operating_point_file"] = str(op.store(run_dir, out_dir, point))
    return answer


def _recorded_task(folder: str | Path) -> str | None:
    """The task a run folder's run.json records (None: no readable run.json, an evaluation folder)."""
    try:
        return json.loads((Path(folder) / "run.json").read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def _no_predictions(run: str | Path) -> Exception:
    """Why a folder has no test_predictions.npz to compare, and what has one. (It said "run
    `cnnlab evaluate` on it first", which writes into an evaluation folder, never the run, and
    does not help a segmentation or detection run.)"""
    task = _recorded_task(run)
    if task in ("segmentation", "detection"):
        return ConfigError(
            f"{run} is a {task} run: compare pairs the per-image test predictions of two "
            "classification or video runs"
        )
    return DataError(
        run,
        "has no test_predictions.npz (a run trained without a test split has none); "
        "`cnnlab evaluate RUN --data TEST` writes one into the evaluation folder it names: "
        "compare that folder",
    )


def compare(run_a: str | Path, run_b: str | Path, *, seed: int = 0) -> dict[str, Any]:
    """Two runs' predictions on the same test set: accuracies, paired-bootstrap difference, exact McNemar test."""
    from cnnlab.metrics.stats import compare_predictions

    paths = [Path(run) / "test_predictions.npz" for run in (run_a, run_b)]
    for run, path in zip((run_a, run_b), paths, strict=True):
        if not path.is_file():
            raise _no_predictions(run)
    # a run against itself agreed with itself on every image: "difference +0.0000, p = 1", a
    # comparison that looked like an answer. samefile: also the same folder spelled twice
    # (runs/a and runs/a/, a link to it)
    if paths[0].samefile(paths[1]):
        twice = (f"{run_a} was given twice" if str(run_a) == str(run_b)
                 else f"{run_a} and {run_b} are the same run")  # fmt: skip
        raise ConfigError(
            f"compare needs two different runs; {twice}: give a second run tested on the same "
            "images"
        )
    loaded = []
    for path in paths:
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
    video = "video-classification" in {_recorded_task(run_a), _recorded_task(run_b)}
    return result | {"run_a": str(run_a), "run_b": str(run_b),
                     "samples": "clips" if video else "images"}  # fmt: skip
