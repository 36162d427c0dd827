"""The one Python door: train, evaluate, predict, demo. The CLI mirrors these functions and adds nothing.

```python
import cnnlab.api as cl
run = cl.train(data="builtin:mnist-sample", model="lenet5", epochs=8)
print(run.test_metrics["accuracy"], run.run_dir)
cl.predict(run.run_dir, ["digit.png"])
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.config import PreprocessSpec, TrainConfig, make_config, score_threshold_of
from cnnlab.data.scan import given_policy
from cnnlab.data.sources import DataBundle, Split, load_source
from cnnlab.engine.assembly import TrainResult
from cnnlab.engine.checkpoint import read_weights
from cnnlab.engine.devices import (
    cpu_has_bf16,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from cnnlab.engine.loaders import (
    fits_on_device,
    make_loader,
    resolve_image_size,
    split_channel_stats,
    split_to_uint8,
    stream_workers,
    use_streaming,
)
from cnnlab.engine.predict import IMAGE_SUFFIXES, Prediction, list_images, predict_files
from cnnlab.engine.tta import check_detect_tta, check_segment_tta, parse_tta
from cnnlab.engine.weights import build_model, load_checkpoint_model
from cnnlab.errors import CheckpointError, ConfigError, Interrupted
from cnnlab.run import resolve_weights
from cnnlab.tasks.classify.cv import CVResult, cross_validate
from cnnlab.tasks.classify.evaluate import compare, evaluate_model
from cnnlab.tasks.classify.train import train
from cnnlab.tasks.registry import recorded_task, task_of

__all__ = [
    "DEMO", "IMAGE_SUFFIXES", "DataBundle", "Interrupted", "Prediction", "PreprocessSpec", "Split",
    "TrainConfig", "TrainResult", "build_model", "compare", "cpu_has_bf16", "demo", "detect_evaluate",
    "detect_predict", "detect_train", "embed", "evaluate", "evaluate_model", "explain", "export",
    "finetune", "fits_on_device", "list_images", "load_checkpoint_model", "load_source", "lr_find",
    "make_config", "make_loader", "operating_point", "predict", "predict_files", "recorded_task",
    "resolve_channels_last", "resolve_device", "resolve_image_size", "resolve_precision",
    "seed_everything", "segment_evaluate", "segment_predict", "segment_train", "serve",
    "split_channel_stats", "split_to_uint8",
    "stream_workers", "train", "transfer_study", "tune", "use_streaming", "video_evaluate", "video_predict",
    "video_track", "video_train",
    "CVResult", "cross_validate",  # k-fold cross-validation (cnnlab cv): cnnlab.tasks.classify.cv
]  # fmt: skip


# -- any task's run: dispatched on the task its checkpoint records (cnnlab.tasks.registry) ----------------
def evaluate(
    run_or_checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    device: str = "auto",
    report: bool = True,
    out: str | Path | None = None,
    precision: str = "auto",
    positive: str | None = None,
    target: str | None = None,
    replace_operating_point: bool = False,
    tta: str | tuple[str, ...] | None = None,
    relocated_data: str | Path | None = None,
    max_bad_fraction: float | None = None,
    strict: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a trained model on its own held-out split (default) or on another dataset (`data`).

    Any task: classification, segmentation, detection or video, by the task the checkpoint records;
    returns {"metrics", "report", "out_dir", "precision", ...} as that task's evaluate does.

    Results go to ``out`` or a new ``<run>/evaluations/<time>/``: what training recorded is never
    rewritten. ``precision`` auto = fp32 on CPU, the run's own on CUDA (cnnlab.engine.devices).

    Classification only: ``target`` ("recall=0.95", "precision=0.9", "fpr=0.01", "youden", "f1")
    and ``positive`` (a class name) choose an operating point on the run's validation split,
    measure it with bootstrap intervals and store it as RUN/operating_point.json, which
    :func:`predict` then applies (result["operating_point"]; docs/imbalance.md).

    ``tta`` (cnnlab.engine.tta): classification ("flip", "crop", "shift" or a comma list such as
    "flip,crop") averages the calibrated probabilities over the views, segmentation ("flip") the
    per-pixel probabilities of the image and its mirror, detection ("flip") merges the boxes of
    the image and its mirror; result["tta"] (also in evaluation.json) has the headline metrics
    without and with it side by side.

    ``relocated_data``: the run's own dataset at its new place (moved, or copied to another
    machine); the samples of its recorded split are looked up there by id.

    ``max_bad_fraction`` / ``strict``: the limit on unreadable images (files) of the evaluated
    data, as training's (default: the run's own for its split, the task config's for ``data``)."""
    entry = task_of(run_or_checkpoint)
    point: dict[str, Any] = _tta_option(tta, entry.name, run_or_checkpoint)
    if positive is not None or target is not None or replace_operating_point:
        if entry.name != "classification":
            raise ConfigError(
                f"--positive / --target choose a classification run's operating point; "
                f"{run_or_checkpoint} is a {entry.name} run"
            )
        point |= {"positive": positive, "target": target,
                  "replace_operating_point": replace_operating_point}  # fmt: skip
    if relocated_data is not None:
        point["relocated_data"] = relocated_data
    point |= given_policy(max_bad_fraction, strict)
    return entry.evaluate(
        run_or_checkpoint, data=data, split=split, device=device, report=report, out=out,
        precision=precision, **point,
    )  # fmt: skip


def predict(
    run_or_checkpoint: str | Path,
    inputs: list[str | Path],
    *,
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 256,
    out: str | Path | None = None,
    precision: str = "auto",
    operating_point: bool = True,
    min_confidence: float | None = None,
    tta: str | tuple[str, ...] | None = None,
    score_threshold: float | None = None,
) -> Any:
    """Classification (a run, checkpoint or exported .onnx): class names and probabilities for
    images/folders, [Prediction]; unreadable files get an error entry, not a crash. A run with an
    operating point (see :func:`evaluate`) also decides positive / negative for its class
    (Prediction.decision) unless ``operating_point=False``. Probabilities are calibrated with the
    run's temperature and each prediction carries an out-of-domain verdict when the run has a
    calibration.json (docs/calibration.md); ``min_confidence=P`` answers ``unknown`` below P;
    ``tta`` ("flip", "crop", "shift" or a comma list such as "flip,crop") averages the calibrated
    probabilities over the views (a segmentation run: "flip", per pixel; a detection run: "flip",
    the mirror's boxes merged in). ``score_threshold`` (detection runs only, as `cnnlab detect
    predict --score-threshold`): boxes scoring at least this (default: the run's).

    ``out``: a classification run also writes its predictions to ``out/predictions.json`` (the
    rows of `cnnlab predict --format json`). Segmentation, detection and video runs write their
    predictions as files to `out` (mask PNGs and overlays; COCO results JSON and drawn boxes;
    timeline, events and an annotated video) and return what their predict returns."""
    entry = task_of(run_or_checkpoint)
    views = _tta_option(tta, entry.name, run_or_checkpoint)
    threshold = _score_threshold_option(score_threshold, entry.name)
    if not entry.predicts_to_files:  # with out: also written to out/predictions.json
        return entry.predict(
            run_or_checkpoint, inputs, top_k=top_k, device=device, batch_size=batch_size,
            precision=precision, operating_point=operating_point, min_confidence=min_confidence,
            out=out, **views,
        )  # fmt: skip
    if out is None:
        raise ConfigError(
            f"a {entry.name} run writes its predictions as files: give an output folder "
            "(--out FOLDER)"
        )
    if min_confidence is not None:
        raise ConfigError(
            f"--min-confidence is for classification runs; {run_or_checkpoint} is a {entry.name} "
            "run: leave it out"
        )
    return entry.predict(
        run_or_checkpoint, list(inputs), out, device=device, precision=precision, **views,
        **threshold,
    )  # fmt: skip


def _score_threshold_option(score_threshold: float | None, task: str) -> dict[str, float]:
    """{"score_threshold": value} for a detection run, {} when not given; refused for any other
    task (it has no boxes) and outside [0, 1], before the model loads."""
    if score_threshold is None:
        return {}
    if task != "detection":
        raise ConfigError(
            f"--score-threshold is for detection runs; this is a {task} run: leave it out"
        )
    return {"score_threshold": score_threshold_of(None, score_threshold)}


def _tta_option(tta: Any, task: str, run_or_checkpoint: str | Path) -> dict[str, Any]:
    """{"tta": views} for a classification, segmentation or detection run (the last two: flip
    only), {} without --tta; video refuses it (its outputs are clips and timelines)."""
    views = parse_tta(tta)  # an unknown view is said first, whatever the task
    if not views:
        return {}
    if task == "segmentation":
        return {"tta": check_segment_tta(views)}
    if task == "detection":
        return {"tta": check_detect_tta(views)}
    if task != "classification":
        raise ConfigError(
            f"--tta is for classification, segmentation and detection runs; {run_or_checkpoint} "
            f"is a {task} run: leave it out"
        )
    return {"tta": views}


def operating_point(run_or_checkpoint: str | Path) -> dict[str, Any] | None:
    """The operating point :func:`predict` applies for a classification run (its
    RUN/operating_point.json), or None."""
    if task_of(run_or_checkpoint).name != "classification":
        return None
    from cnnlab.tasks.classify.predict import active_operating_point

    return active_operating_point(run_or_checkpoint)


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
    seed: int | None = None,
    plot: str | Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Learning-rate range test on a copy of the model; returns the curve and the suggested rate.
    ``seed``: the model's initialisation and batches (default: the config's, ``--seed``)."""
    from cnnlab.run import claim_output_file
    from cnnlab.transfer import lr_find as find
    from cnnlab.transfer import plot_lr_find
    from cnnlab.transfer.lr_find import check_plot_path

    if plot:  # said before the test runs, recorded when the plot is drawn
        check_plot_path(plot)
        claim_output_file(plot, command="lr-find", flag="--plot", record=False)
    cfg = (
        config if isinstance(config, TrainConfig) else make_config(TrainConfig, config, **overrides)
    )
    result = find(cfg, start=start, end=end, steps=steps, seed=cfg.seed if seed is None else seed)
    if plot:
        claim_output_file(plot, command="lr-find", flag="--plot")
        result["plot"] = str(plot_lr_find(result, plot))
    return result


def embed(
    run_or_checkpoint: str | Path,
    *,
    data: str | None = None,
    split: str = "all",
    out: str | Path | None = None,
    device: str = "auto",
    relocated_data: str | Path | None = None,
    max_bad_fraction: float | None = None,
    strict: bool | None = None,
) -> Path:
    """Penultimate-layer features with labels to .npz (for kNN, linear probes, plots);
    ``relocated_data``: the run's own dataset at its new place; ``max_bad_fraction`` / ``strict``:
    the limit on unreadable images, as :func:`evaluate`'s."""
    from cnnlab.transfer import embed as embed_features

    return embed_features(
        run_or_checkpoint, data, split, out, device=device, relocated_data=relocated_data,
        **given_policy(max_bad_fraction, strict),
    )  # fmt: skip


# -- hyperparameter search -------------------------------------------------------------------------------
def tune(
    *,
    space: list[str] | tuple[str, ...] = (),
    space_file: str | Path | None = None,
    trials: int = 20,
    study: str | None = None,
    storage: str | None = None,
    pruner: str = "median",
    task: str = "classify",
    out: str | Path | None = None,
    config: str | Path | None = None,
    console: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Search the options in ``space`` (``["lr=log:1e-4:1e-1", "model=lenet5,resnet18"]``) with
    Optuna's TPE and pruning until the study has ``trials`` finished trials (over all its workers
    and restarts), then sum it up: trials table, importances, best config, the top two on the
    test split (McNemar + bootstrap). ``options`` / ``config`` fix the other options of every
    trial. Needs the ``tune`` extra (Optuna); see cnnlab.tune and docs/tune.md."""
    from cnnlab.tune import tune as run_study

    return run_study(
        space=space, space_file=space_file, trials=trials, study=study, storage=storage,
        pruner=pruner, task=task, out=out, config=config, console=console, **options,
    )  # fmt: skip


# -- explain -----------------------------------------------------------------------------------------------
def explain(
    run_or_checkpoint: str | Path,
    image: str | Path,
    *,
    out: str | Path | None = None,
    top_k: int = 3,
    methods: tuple[str, ...] = ("gradcam", "gradcam++"),
    device: str = "cpu",
    score_threshold: float | None = None,
) -> dict[str, Any]:
    """One image through the trained model, layer by layer (the lecture's words), with CAM overlays: see
    cnnlab.explain. Classification: the top-k classes; segmentation: the top-k predicted classes by
    area, with the mask; detection: the top-k boxes above ``score_threshold`` (default: the run's).
    Writes explain.html + explain.json + figures; returns paths and numbers."""
    from cnnlab.engine.devices import resolve_device
    from cnnlab.errors import ConfigError
    from cnnlab.report.explain_page import EXPLAINED_TASKS, explain_dense_image, explain_image
    from cnnlab.tasks.registry import recorded_task

    task = recorded_task(run_or_checkpoint)
    if task not in EXPLAINED_TASKS:
        raise ConfigError(
            f"explain covers {', '.join(EXPLAINED_TASKS)} runs; {run_or_checkpoint} is a {task} run"
        )
    threshold = _score_threshold_option(score_threshold, task)  # said before the model loads
    if task == "classification":
        from cnnlab.tasks.classify.multilabel import run_thresholds

        return explain_image(
            run_or_checkpoint,
            image,
            out_dir=out,
            top_k=top_k,
            methods=tuple(methods),
            device=device,
            label_thresholds=run_thresholds(run_or_checkpoint),  # None unless multi-label
        )
    if task == "segmentation":
        from cnnlab.segment import load_segmentation_model as load
    else:
        from cnnlab.detect import load_detection_model as load
    return explain_dense_image(
        task,
        load(run_or_checkpoint, resolve_device(device)),
        run_or_checkpoint,
        image,
        out_dir=out,
        top_k=top_k,
        methods=tuple(methods),
        score_threshold=threshold.get("score_threshold"),
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
    """The main job on the embedded default: LeNet-5 on 5,000 real MNIST digits, evaluated on the
    held-out test split."""
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


def video_predict(
    run: str | Path, video: str | Path, out_dir: str | Path, **kwargs: Any
) -> dict[str, Any]:
    """Frame-by-frame prediction over a video: timeline, events, tracks and an annotated video."""
    from cnnlab.video.predict import predict_video

    return predict_video(run, video, out_dir, **kwargs)


def video_track(
    run: str | Path, video: str | Path, gt: str | Path, out_dir: str | Path, **kwargs: Any
) -> dict[str, Any]:
    """Detect and track objects in a video and score the tracks (MOTA, IDF1) against MOT ground truth."""
    from cnnlab.video.predict import track_video

    return track_video(run, video, gt, out_dir, **kwargs)
