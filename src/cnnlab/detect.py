"""Object detection on the shared engine: train, evaluate, predict.

    from cnnlab.detect import train_detection, evaluate_detection, predict_detection
    result = train_detection(data="builtin:shapes?n=600&size=64&objects=2", model="fasterrcnn")
    print(result.test_metrics["map_50"], result.run_dir)
    predict_detection(result.run_dir, ["photo.jpg"], "predictions/")

The run directory has the segmentation layout (see :mod:`cnnlab.run`): config.json (a
DetectConfig), classes.json, preprocess.json, splits.json, data_report.json (label checks),
metrics.csv (``val_map50``, ``val_map``), checkpoints/ (metadata ``task: "detection"``, model,
backbone, classes, ``category_ids`` = the dataset id of each class index, preprocessing: enough
to predict), test_metrics.json, test_predictions.json (COCO results) and report.html.

Boxes are scored at the model's input resolution (boxes mapped with the image);
test_predictions.json and prediction map them back to each image's own pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.config import (
    PreprocessSpec,
    make_config,
    score_threshold_of,
)
from cnnlab.data.boxes import (
    BoxBundle,
    BoxReport,
    check_training_boxes,
    decode_box_split,
    load_box_source,
    make_box_loader,
    unmap_boxes,
)
from cnnlab.data.decode import DEFAULT_MAX_PIXELS
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
from cnnlab.engine.tta import DetectTTAModel, check_detect_tta, compare_views, parse_tta
from cnnlab.errors import ConfigError, DataError, no_such_split
from cnnlab.metrics.coco_match import match_images
from cnnlab.metrics.stats import detection_intervals
from cnnlab.models.detection import create_detection_model
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
from cnnlab.tasks.configs import DetectConfig
from cnnlab.tasks.detection import DetectionTask

log = logging.getLogger(__name__)


DetectResult = TrainResult  # what every task's training returns
HEADLINE = ("map", "map_50", "map_75", "mar_100")  # --tta's side-by-side table
MIXED_SIZE = 256  # input side (pixels) for images of several sizes when --image-size is not given
N_BOOT = 1000  # bootstrap resamples of the test images behind each 95% interval (as classification)


def _bundle(cfg: DetectConfig) -> BoxBundle:
    return load_box_source(
        cfg.data,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        data_root=cfg.data_root,
    )


def _check_skipped_images(
    where: str, report: BoxReport, decoded: int, cfg: DetectConfig
) -> str | None:
    """The images ``report`` skipped (missing, cannot be decoded) beside the ``decoded`` ones,
    judged by ``cfg``'s max_bad_fraction / strict: the one policy of `detect train` and `detect
    evaluate` (cnnlab.data.scan.check_skipped, as classification's scan); a DataError naming
    ``where`` and the count above it, else the warning to say (None when none was skipped)."""
    bad = [(str(s.get("image", f"row {s.get('row')}")), s["reason"]) for s in report.skipped_images]
    return check_skipped(
        where, bad, len(bad) + decoded, strict=cfg.strict, max_bad_fraction=cfg.max_bad_fraction,
        fix="replace or remove the images (and their annotations)",
    )  # fmt: skip


def _to_tensors(targets: list[dict[str, np.ndarray]]) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.as_tensor(t["boxes"]).reshape(-1, 4),
            "labels": torch.as_tensor(t["labels"]),
        }  # fmt: skip
        for t in targets
    ]


def _image_size(cfg: DetectConfig, bundle: BoxBundle, resumed: Path | None = None) -> int:
    """--image-size, else a resumed run's own, else the images' own side when all share one
    square size (a builtin's; at least 32 px), else MIXED_SIZE with a warning."""
    if cfg.image_size:
        return cfg.image_size
    recorded = resumed / "preprocess.json" if resumed is not None else None
    if recorded is not None and recorded.is_file():  # a resume goes on at the run's own size
        return int(read_json(recorded)["image_size"])
    side = bundle.square_side()
    if side:
        return max(side, 32)
    log.warning(  # a choice the user did not make (it may upsample small images): said
        "images of %s have no single square size: resizing to %d px (set --image-size)",
        cfg.data, MIXED_SIZE,
    )  # fmt: skip
    return MIXED_SIZE


# -- train -----------------------------------------------------------------------------------------
def train_detection(
    config: DetectConfig | str | Path | None = None,
    *,
    console: Any = None,
    timings: Timings | None = None,
    **options: Any,
) -> DetectResult:
    """Train a detector; returns the run directory, history and test metrics.

    ``config`` may be a DetectConfig or a JSON/TOML file; keyword options override it.
    """
    return fit(SPEC, config, console=console, timings=timings, **options)


def _prepare(
    cfg: DetectConfig, info: Any, device: torch.device, resumed: Any, timings: Timings
) -> Plan:
    """Decode images and boxes once (what was dropped is reported), build the detector."""
    from cnnlab.data.tensors import channel_stats

    bundle = _bundle(cfg)
    # the report's figures are drawn by worker processes started now, before decoding
    # (cnnlab.report.render): they import matplotlib beside it and draw while the test split
    # is scored; rank 0 only (it scores the split)
    has_test = len(bundle.splits.get("test") or ()) > 0
    renderer = renderer_for(cfg.report and has_test and info.is_main)
    first = next(s for part in bundle.splits.values() for s in part)
    in_channels = cfg.in_channels or (first.array.shape[2] if first.array is not None else 3)
    image_size = _image_size(cfg, bundle, resumed[0] if resumed else None)
    decode_policy = {"max_pixels": cfg.max_image_pixels}
    provisional = PreprocessSpec(
        image_size, in_channels, (0.0,) * in_channels, (1.0,) * in_channels, cfg.resize,
        decode_policy,
    )  # fmt: skip
    report = bundle.report
    decoded = {}
    for name, samples in bundle.splits.items():
        if samples:
            images, targets, ids, _ = decode_box_split(samples, provisional, report)
            decoded[name] = (images, targets, ids)
    timings.lap("decode")  # reading the annotations and decoding the images
    # images skipped (missing, cannot be decoded) are not in the decoded splits, so not in
    # splits.json; too many of them (or any, --strict) refuse the run (said by the summary below)
    _check_skipped_images(cfg.data, report, sum(len(d[0]) for d in decoded.values()), cfg)
    if report.skipped_images or report.dropped_boxes or report.skipped_annotations:
        log.warning("%s: %s (see data_report.json)", cfg.data, report.summary())
    if "train" not in decoded or len(decoded["train"][0]) == 0:
        raise DataError(cfg.data, f"the training split is empty ({report.summary()})")
    check_training_boxes(decoded["train"][1], bundle, report)  # no box at all: refused
    class_names = bundle.class_names
    model = create_detection_model(
        cfg.model, num_classes=len(class_names), backbone=cfg.backbone, in_channels=in_channels,
        image_size=image_size, backbone_weights=cfg.init_from,
        backbone_variant=cfg.backbone_variant, fpn_channels=cfg.fpn_channels,
        box_head_width=cfg.box_head_width,
    )  # fmt: skip
    mean, std = channel_stats(torch.from_numpy(decoded["train"][0]))
    if cfg.init_from and len(model.default_cfg.get("mean") or ()) == in_channels:
        mean, std = tuple(model.default_cfg["mean"]), tuple(model.default_cfg["std"])
    spec = PreprocessSpec(image_size, in_channels, tuple(mean), tuple(std), cfg.resize,
                          decode_policy)  # fmt: skip

    def loaders(device: torch.device, channels_last: bool, info: Any) -> tuple[Any, Any]:
        train_loader = make_box_loader(
            decoded["train"][0], decoded["train"][1], spec, device,
            distributed.local_batch_size(cfg.batch_size, info),  # DDP: the global batch / W
            shuffle=True, augment=cfg.augment, seed=cfg.seed, drop_last=True,
        )  # fmt: skip
        if info.distributed:  # DDP: rank r takes batches r, r + W, ... (W x b = the global batch)
            train_loader = distributed.BatchShard(train_loader, info)
        val_loader = None
        if "val" in decoded:
            val_loader = make_box_loader(decoded["val"][0], decoded["val"][1], spec, device,
                                         max(16, cfg.batch_size))  # fmt: skip
        return train_loader, val_loader

    def evaluate(run_dir: Path, device: torch.device, precision: str) -> dict[str, Any] | None:
        if "test" not in decoded or not distributed.is_main():  # DDP: rank 0 scores the split
            return None
        if renderer is not None:  # training is over: drawn while the test split is scored
            renderer.submit("curves", run_dir / "metrics.csv")
        best, _, _ = load_detection_model(run_dir, device)
        return evaluate_detection_model(
            best, spec, *decoded["test"], class_names, device=device, out_dir=run_dir,
            precision=precision,
            category_ids=bundle.category_ids,  # as `cnnlab detect evaluate` writes them
            run_dir=run_dir, report=cfg.report, score_threshold=cfg.score_threshold,
            show=cfg.report_images, renderer=renderer,
        )  # fmt: skip

    ids = decoded["train"][2]
    return Plan(
        model=model,
        task=DetectionTask(class_names),
        spec=spec,
        metadata={
            "task": "detection",
            "model": cfg.model,
            "backbone": cfg.backbone,
            "backbone_variant": cfg.backbone_variant,
            "fpn_channels": cfg.fpn_channels,
            "box_head_width": cfg.box_head_width,
            "num_classes": len(class_names),
            "in_channels": in_channels,
            "image_size": image_size,
            "class_names": class_names,
            "category_ids": bundle.category_ids,
            "category_map": report.category_map,
            "preprocess": spec.to_dict(),
            "score_threshold": cfg.score_threshold,
            "data": cfg.data,
            "backbone_init": model.default_cfg.get("backbone_init"),
            "cnnlab_version": __version__,
            "torch_version": torch.__version__,
        },
        files={
            "classes.json": class_names,
            "preprocess.json": spec.to_dict(),
            "data_report.json": report.to_dict(),
            "splits.json": {
                "source": bundle.source,
                "layout": bundle.layout,
                "origin": bundle.split_origin,
                "splits": in_split_order({k: v[2] for k, v in decoded.items()}),
            },
        },
        folder=f"{cfg.model}-{cfg.backbone}",
        loaders=loaders,
        evaluate=evaluate,
        renderer=renderer,  # closed by fit when evaluate ends
        describe=lambda i: ids[i],
    )


# -- checkpoints -----------------------------------------------------------------------------------
def load_detection_model(
    run_or_checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """(model in eval mode, checkpoint metadata, weights path) from a run folder or .safetensors."""
    return load_run_model(
        run_or_checkpoint, task="detection", device=device,
        keys=("model", "backbone", "num_classes", "in_channels", "preprocess", "class_names"),
        build=lambda meta: create_detection_model(
            meta["model"], num_classes=int(meta["num_classes"]), backbone=meta["backbone"],
            in_channels=int(meta["in_channels"]), image_size=int(meta["image_size"]),
            backbone_variant=meta.get("backbone_variant", "auto"),
            fpn_channels=int(meta.get("fpn_channels", 128)),
            # Checkpoints from before the option had torchvision's 1024-wide head.
            box_head_width=int(meta.get("box_head_width", 1024)),
        ),
    )  # fmt: skip


# -- evaluate --------------------------------------------------------------------------------------
@torch.inference_mode()
def _run(
    model: torch.nn.Module, loader: Any, device: torch.device, precision: str = "32"
) -> list[dict[str, torch.Tensor]]:
    preds = []
    for images, _, _ in loader.batches(0):
        with autocast(device, precision):
            out = model(images)
        preds += [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in o.items()}
                  for o in out]  # fmt: skip
    return preds


def _coco_results(
    preds: list[dict[str, torch.Tensor]],
    ids: list[str],
    category_ids: list[Any],
    targets: list[dict[str, np.ndarray]],
    spec: PreprocessSpec,
) -> list[dict[str, Any]]:
    """COCO results format: one {image_id, category_id, bbox [x, y, w, h], score} per detection,
    the boxes in each image's own pixels (as `detect predict` writes them), so that pycocotools
    scores the file against the dataset's JSON. ``preds`` are model-input boxes; each target's
    ``orig_size`` (H, W; decode_box_split) maps them back. A target without one holds an image
    given at the model's input size, whose pixels the boxes already are."""
    out = []
    for p, sid, t in zip(preds, ids, targets, strict=True):
        boxes = p["boxes"].numpy().reshape(-1, 4)
        if "orig_size" in t:
            height, width = (int(v) for v in t["orig_size"])
            boxes = unmap_boxes(boxes, width, height, spec.image_size, spec.resize)
        for b, lab, s in zip(boxes.tolist(), p["labels"].tolist(), p["scores"].tolist(),
                             strict=True):  # fmt: skip
            image_id: Any = int(sid) if str(sid).isdigit() else sid
            out.append({"image_id": image_id, "category_id": category_ids[lab],
                        "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2),
                                 round(b[3] - b[1], 2)], "score": round(s, 5)})  # fmt: skip
    return out


def _check_point(metrics: dict[str, Any]) -> None:
    """The intervals' own point values (NumPy COCO matching) against torchmetrics' pycocotools
    run: equal up to its float32 results; a difference is logged, never hidden."""
    ci = metrics["confidence_intervals"]
    for key in ("map", "map_50", "map_75"):
        ours, theirs = ci[key]["value"], metrics.get(key)
        if (ours is None) != (theirs is None) or (
            ours is not None and theirs is not None and abs(ours - theirs) > 1e-6
        ):
            log.warning("%s: the bootstrap's point %s differs from pycocotools' %s", key, ours,
                        theirs)  # fmt: skip


def evaluate_detection_model(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    images: np.ndarray,
    targets: list[dict[str, np.ndarray]],
    ids: list[str],
    class_names: list[str],
    *,
    device: torch.device,
    precision: str = "32",
    out_dir: Path | None = None,
    run_dir: Path | None = None,
    report: bool = True,
    score_threshold: float = 0.5,
    category_ids: list[Any] | None = None,
    show: int = 6,
    tta: tuple[str, ...] = (),
    renderer: Any = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on (N, C, S, S) uint8 images and their model-input boxes; writes
    test_metrics.json, test_predictions.json (COCO results in each image's own pixels: the
    targets' ``orig_size`` maps the boxes back) and the report. The metrics are computed at the
    model's input resolution (the IoU of two boxes is unchanged by the resize's scale and shift).

    ``tta`` (("flip",); cnnlab.engine.tta): the metrics, predictions and report are those of each
    image's boxes merged with its mirror's (mirrored back, per-class NMS), and ``result["tta"]``
    (also ``metrics["tta"]``) holds the headline metrics without and with TTA side by side.

    `renderer` (cnnlab.report.render): where the report's figures are drawn (in this process
    by default; training passes worker processes, which draw them while the intervals are
    computed)."""
    from cnnlab.metrics.detection import detection_metrics

    loader = make_box_loader(images, targets, spec, device, 16)
    model.eval()
    preds = _run(DetectTTAModel(model, tta) if tta else model, loader, device, precision)
    truth = _to_tensors(targets)
    metrics = detection_metrics(preds, truth, class_names, score_threshold=score_threshold)
    comparison = None
    if tta:  # the same images without TTA, for the side-by-side comparison
        plain = detection_metrics(
            _run(model, loader, device, precision), truth, class_names,
            score_threshold=score_threshold,
        )  # fmt: skip
        comparison = compare_views(
            {k: plain[k] for k in HEADLINE}, {k: metrics[k] for k in HEADLINE}, tta
        )
        metrics["tta"] = comparison
    figures = None
    if out_dir is not None and report and getattr(renderer, "workers", 0):
        from cnnlab.report.detection_report import detection_figures

        figures = detection_figures(renderer, metrics, run_dir)
    if truth:  # 95% intervals by resampling test images (the shape classification uses)
        metrics["confidence_intervals"] = detection_intervals(
            match_images(preds, truth, len(class_names)), class_names, n_boot=N_BOOT, seed=0
        )
        _check_point(metrics)
    metrics["image_size"] = spec.image_size
    result: dict[str, Any] = {"metrics": metrics, "preds": preds}
    if comparison is not None:
        result["tta"] = comparison
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_json(out_dir / "test_metrics.json", metrics)
        cats = category_ids or list(range(len(class_names)))
        write_json(out_dir / "test_predictions.json",
                   _coco_results(preds, ids, cats, targets, spec))  # fmt: skip
        if report:
            from cnnlab.report.detection_report import write_detection_report

            result["report"] = write_detection_report(
                out_dir, metrics, images=images, targets=truth, preds=preds, ids=ids,
                class_names=class_names, score_threshold=score_threshold, run_dir=run_dir,
                show=show, renderer=renderer, figures=figures,
            )  # fmt: skip
    return result


def evaluate_detection(
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
    """Evaluate a detection run on its recorded split (default: the held-out test images) or on
    every image of another dataset ``data`` whose class names are among the model's.

    Images that are missing or cannot be decoded are skipped as training skips them: refused
    above ``max_bad_fraction`` (any with ``strict``), else said once and the rest evaluated. The
    defaults are the run's own options for its split, DetectConfig's for ``data`` (as
    classification's evaluate reads another dataset).

    ``tta="flip"`` (cnnlab.engine.tta): each image's boxes are merged with its mirror's (mirrored
    back, per-class NMS), and ``result["tta"]`` (also in evaluation.json) puts the headline
    metrics without and with it side by side."""
    check_one_dataset(data, relocated_data)
    views = check_detect_tta(parse_tta(tta))  # said before anything is loaded
    dev = resolve_device(device)
    model, meta, weights = load_detection_model(run, dev)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    class_names = list(meta["class_names"])
    run_dir = run_dir_of(weights)
    policy = given_policy(max_bad_fraction, strict)
    bundle_report = BoxReport()
    if data is None:
        if run_dir is None:
            raise ConfigError(f"{weights} is not inside a run directory: pass data=")
        cfg = make_config(DetectConfig, **source_config(run_dir, relocated_data) | policy)
        recorded = read_json(run_dir / "splits.json")["splits"]
        if split not in recorded:
            raise no_such_split(split, recorded)
        bundle = _bundle(cfg)
        by_id = {s.id: s for part in bundle.splits.values() for s in part}
        missing = [i for i in recorded[split] if i not in by_id]
        if missing:
            raise DataError(cfg.data, f"{len(missing)} image(s) of the {split} split are gone "
                                      f"(first: {missing[:3]}); the dataset changed")  # fmt: skip
        samples = [by_id[i] for i in recorded[split]]
        # labels by name, as classification's split_by_ids: the dataset at its (new) place may
        # list its categories in another order than when the run was trained
        lut = model_label_indices(cfg.data, bundle.class_names, class_names, "the run was trained")
    else:
        cfg = make_config(DetectConfig, data=data, val_fraction=0.0, test_fraction=0.0, **policy)
        bundle = _bundle(cfg)
        # what reading it skipped (images missing on disk, bad annotations) is counted with what
        # decoding skips: a missing image is as bad as one that cannot be decoded
        bundle_report.merge(bundle.report)
        samples = [s for part in bundle.splits.values() for s in part]
        lut = model_label_indices(data, bundle.class_names, class_names)
    images, targets, ids, rep = decode_box_split(samples, spec, bundle_report)
    warning = _check_skipped_images(cfg.data, rep, len(ids), cfg)
    if warning:  # said once; the other images are evaluated
        log.warning("%s: %s; evaluating the other %d", cfg.data, warning, len(ids))
    if lut is not None:
        targets = [t | {"labels": lut[t["labels"]]} for t in targets]
    precision = inference_precision(precision, dev, trained_precision(run_dir))
    out_dir = evaluation_dir(out, run_dir)
    result = evaluate_detection_model(
        model, spec, images, targets, ids, class_names, device=dev, out_dir=out_dir,
        precision=precision,
        run_dir=run_dir, report=report and out_dir is not None,
        score_threshold=float(meta.get("score_threshold", 0.5)),
        category_ids=meta.get("category_ids"), tta=views,
    )  # fmt: skip
    record = record_evaluation(
        out_dir, task="detection", weights=weights, data=data, split=split,
        num_samples=len(ids), precision=precision, device=dev,
        extra={"tta": result["tta"]} if views else None,
    )  # fmt: skip
    return record | {"metrics": result["metrics"], "report": result.get("report"),
                     "data_report": rep.to_dict()} | ({"tta": result["tta"]} if views else {})  # fmt: skip


# -- predict ---------------------------------------------------------------------------------------
def predict_detection(
    run: str | Path,
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    device: str = "auto",
    batch_size: int = 8,
    score_threshold: float | None = None,
    draw: bool = True,
    precision: str = "auto",
    tta: str | tuple[str, ...] | None = None,
) -> Path:
    """Detect objects in images; writes ``out_dir/predictions.json`` (COCO results format: bbox
    [x, y, w, h] in each image's own pixels, ``image_id`` = file name, ``category_id`` = the
    dataset's id) and, with ``draw``, ``out_dir/images/NAME.png`` with boxes, labels and scores.
    Detections below ``score_threshold`` (default: the run's) are left out. Unreadable inputs are
    skipped with a warning and listed in ``skipped.json``. Returns the predictions.json path.
    ``run``: a run folder, a .safetensors checkpoint or an exported ``.onnx`` file (onnxruntime,
    float32 on the CPU: the same boxes). ``tta="flip"`` (cnnlab.engine.tta): each image's boxes
    merged with its mirror's (mirrored back, per-class NMS), before the score threshold; each row
    then says so, ``"tta": ["flip"]`` (no key without TTA)."""
    from torchvision.utils import draw_bounding_boxes

    from cnnlab.data.decode import load_image
    from cnnlab.data.tensors import image_mode, pil_to_chw

    views = check_detect_tta(parse_tta(tta))  # said before anything is loaded
    if score_threshold is not None:  # an out-of-range override is said before the model loads
        score_threshold = score_threshold_of(None, score_threshold)
    names_out = ["predictions.json", "skipped.json", *(["images/"] if draw else [])]
    claim_outputs(out_dir, names_out, command="detect predict", record=False)
    if is_onnx(run):
        dev, model = torch.device("cpu"), OnnxModel(run, task="detection")
        meta, trained = model.meta, "32"
    else:
        dev = resolve_device(device)
        model, meta, weights = load_detection_model(run, dev)
        trained = trained_precision(run_dir_of(weights))
    if views:
        model = DetectTTAModel(model, views)
    precision = inference_precision(precision, dev, trained)
    if is_onnx(run) and precision != "32":
        raise ConfigError(f"--precision {precision}: an ONNX model runs in float32 in onnxruntime")
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    names = list(meta["class_names"])
    cats = list(meta.get("category_ids") or range(len(names)))
    threshold = score_threshold_of(meta.get("score_threshold"), score_threshold)
    files = list_images(inputs)
    out = claim_outputs(out_dir, names_out, command="detect predict")
    if draw:
        (out / "images").mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(spec.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=dev).view(1, -1, 1, 1)
    max_pixels = int(spec.decode.get("max_pixels", DEFAULT_MAX_PIXELS))
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    used: set[str] = set()
    # on every row: the file is a COCO results list (pycocotools' loadRes takes a list, and keeps
    # extra keys), so there is no top level for the "tta" that segmentation's predictions.json
    # and serve's answers carry
    tta_record = {"tta": list(views)} if views else {}
    for start in range(0, len(files), batch_size):
        batch = []
        for f in files[start : start + batch_size]:
            try:
                im = load_image(f, mode=image_mode(spec.in_channels), max_pixels=max_pixels)
            except DataError as err:
                log.warning("skipped %s: %s", f, err.reason)
                skipped.append({"input": str(f), "error": err.reason})
                continue
            batch.append((f, im, pil_to_chw(im, spec)))
        if not batch:
            continue
        x = torch.from_numpy(np.stack([a for *_, a in batch])).to(dev)
        with torch.inference_mode(), autocast(dev, precision):
            preds = model((x.float() / 255 - mean) / std)
        for (f, im, _), p in zip(batch, preds, strict=True):
            keep = p["scores"] >= threshold
            boxes = unmap_boxes(p["boxes"][keep].cpu().numpy(), im.width, im.height,
                                spec.image_size, spec.resize)  # fmt: skip
            labels, scores = p["labels"][keep].tolist(), p["scores"][keep].tolist()
            for b, lab, s in zip(boxes.tolist(), labels, scores, strict=True):
                results.append({"image_id": f.name, "file": str(f), "category_id": cats[lab],
                                "category": names[lab], "score": round(s, 5),
                                "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2),
                                         round(b[3] - b[1], 2)]} | tta_record)  # fmt: skip
            if draw:
                from PIL import Image

                stem, n = f.stem, 1
                while stem in used:  # same name in two input folders: keep both
                    n += 1
                    stem = f"{f.stem}-{n}"
                used.add(stem)
                rgb = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
                drawn = rgb if not len(boxes) else draw_bounding_boxes(  # none: no warning
                    rgb, torch.as_tensor(boxes).reshape(-1, 4),
                    labels=[f"{names[lab]} {s:.2f}" for lab, s in zip(labels, scores, strict=True)],
                    colors="red", width=2,
                )  # fmt: skip
                Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out / "images" / f"{stem}.png")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.json"
    write_json(path, results)
    if skipped:
        write_json(out / "skipped.json", skipped)
    if files and len(skipped) == len(files):
        raise DataError(files[0], "no input image could be read (see skipped.json)")
    return path


SPEC = TaskSpec(
    name="detection",
    command="cnnlab detect train",
    config=DetectConfig,
    validator=DetectionTask,
    prepare=_prepare,
)
