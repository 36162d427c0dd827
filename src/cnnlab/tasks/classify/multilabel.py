"""Multi-label classification runs: what differs from single-label training, evaluation and
prediction (docs/classification.md, "Several labels per image").

A run is multi-label when its data is (an (N, L) 0/1 target matrix: builtin:multishapes, a CSV
`path,labels` or one 0/1 column per label); run.json and the checkpoint record
``"multilabel": true``. Training uses :class:`cnnlab.tasks.classification.MultiLabelTask`
(sigmoid outputs, BCE with optional pos_weight). At the end of training each label's decision
threshold is tuned on the validation split (maximum F1, :func:`cnnlab.metrics.multilabel.
tune_thresholds`) and stored in RUN/thresholds.json; the test split is scored at those thresholds
(RUN/test_metrics.json, RUN/test_predictions.npz) and `cnnlab predict` applies them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import MIXING, PreprocessSpec, augmentations
from cnnlab.data.sources import Split
from cnnlab.engine.loaders import make_loader
from cnnlab.engine.trainer import Trainer, autocast, check_monitor
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.metrics import multilabel as ml
from cnnlab.metrics.checks import UndefinedMetricWarning
from cnnlab.run import read_json, resolve_weights, run_dir_of, write_json
from cnnlab.tasks.classification import MultiLabelTask

log = logging.getLogger(__name__)

THRESHOLDS = "thresholds.json"  # RUN/thresholds.json: one decision threshold per label
DEFAULT_THRESHOLD = 0.5  # a label that cannot be tuned (no positive or negative in validation)


def check_options(cfg: Any) -> None:
    """Options that have no multi-label meaning: a one-line ConfigError naming them."""
    if cfg.sampler != "none":
        raise ConfigError(
            f"option sampler={cfg.sampler} draws by class, but this dataset is multi-label "
            "(several labels per image); use --class-weights auto (BCE pos_weight) instead"
        )
    if cfg.loss != "ce":
        raise ConfigError(
            f"option loss={cfg.loss} is single-label; a multi-label run trains with binary "
            "cross-entropy per label (--loss ce), optionally --class-weights auto"
        )
    if cfg.label_smoothing > 0:
        raise ConfigError("option label_smoothing is single-label; leave it at 0 here")
    if cfg.shots:
        raise ConfigError("option shots picks images per class; it is single-label only")
    # v2.MixUp / CutMix mix class indices into one-hot soft targets; (N, L) label sets are not built
    mixing = [name for name in augmentations(cfg) if name in MIXING]
    if mixing:
        source = (
            f"--recipe {cfg.recipe}" if mixing[0] not in cfg.augment else f"--augment {mixing[0]}"
        )
        raise ConfigError(
            f"{source} mixes images ({', '.join(mixing)}), which multi-label runs do not support "
            "yet; use --recipe light or --augment without mixup/cutmix"
        )
    check_monitor(cfg.monitor, MultiLabelTask, "multi-label classification")


def predict_probs(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    images: torch.Tensor,
    split: Split,
    num_labels: int,
    *,
    device: torch.device,
    precision: str = "32",
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """(probs (N, L) float64 = sigmoid(logits), targets (N, L) int64) of one split."""
    loader = make_loader(images, split.targets, spec, device, batch_size)
    trainer = Trainer(
        model, MultiLabelTask(num_labels), None, None, device=device, precision=precision
    )
    probs, targets = trainer.predict(loader)
    return probs.numpy().astype(np.float64), targets.numpy().astype(np.int64)


def tune_and_test(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    tensors: dict[str, torch.Tensor],
    splits: dict[str, Split],
    label_names: list[str],
    *,
    device: torch.device,
    precision: str,
    run_dir: Path,
    write: bool = True,
    report: bool = False,
) -> dict[str, Any] | None:
    """Thresholds tuned on validation (stored in RUN/thresholds.json), then the test split's
    metrics at them (RUN/test_metrics.json + test_predictions.npz); None without a test split."""
    kw = {"device": device, "precision": precision}
    if "val" in splits and len(splits["val"]):
        val_probs, val_targets = predict_probs(
            model, spec, tensors["val"], splits["val"], len(label_names), **kw
        )
        thresholds, info = ml.tune_thresholds(
            val_targets, val_probs, default=DEFAULT_THRESHOLD, label_names=label_names
        )
        source = "val"
    else:
        thresholds = np.full(len(label_names), DEFAULT_THRESHOLD)
        info = [{"label": n, "threshold": DEFAULT_THRESHOLD, "tuned": False,
                 "reason": "no validation split"} for n in label_names]  # fmt: skip
        source = None
    record = {
        "method": "f1",  # each label's threshold maximises its F1 on the validation split
        "tuned_on": source,
        "thresholds": dict(zip(label_names, thresholds.tolist(), strict=True)),
        "labels": info,
    }
    for item in info:
        if not item["tuned"]:
            log.warning("label %r: threshold %s", item["label"], item["reason"])
    if write:
        write_json(run_dir / THRESHOLDS, record)
    if "test" not in splits or not len(splits["test"]):
        return None
    return score_split(
        model, spec, tensors["test"], splits["test"], label_names, thresholds=thresholds,
        out_dir=run_dir if write else None, report=report, run_dir=run_dir, **kw,
    )  # fmt: skip


def score_split(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    images: torch.Tensor,
    split: Split,
    label_names: list[str],
    *,
    thresholds: np.ndarray,
    device: torch.device,
    precision: str,
    out_dir: Path | None,
    report: bool = False,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """``{"metrics": the multi-label report of one split at thresholds (L,), "report": path or
    None}``; with ``out_dir`` also written there as test_metrics.json and test_predictions.npz
    (probs, targets, ids), and with ``report`` as report.html (cnnlab.report.multilabel_report)."""
    probs, targets = predict_probs(
        model, spec, images, split, len(label_names), device=device, precision=precision
    )
    with warnings.catch_warnings():  # undefined values are listed in metrics["warnings"]
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        metrics = ml.multilabel_metrics(
            targets, probs, thresholds=thresholds, label_names=label_names
        )
    metrics["multilabel"] = True
    if out_dir is not None:
        write_json(out_dir / "test_metrics.json", metrics)
        np.savez_compressed(
            out_dir / "test_predictions.npz",
            probs=probs.astype(np.float32),
            targets=targets,
            ids=np.asarray(split.ids),
        )
    path = None
    if out_dir is not None and report:
        from cnnlab.report.multilabel_report import write_multilabel_report  # matplotlib: ~1 s

        path = write_multilabel_report(out_dir, metrics, probs, targets, run_dir=run_dir)
    return {"metrics": metrics, "report": path}


def read_thresholds(run_dir: Path | None, label_names: list[str]) -> np.ndarray:
    """The run's per-label thresholds (L,), in label order; 0.5 for each when the run has no
    thresholds.json (e.g. a checkpoint outside its run folder)."""
    path = None if run_dir is None else Path(run_dir) / THRESHOLDS
    if path is None or not path.is_file():
        log.warning("no %s beside the weights: every label's threshold is %g", THRESHOLDS, 0.5)
        return np.full(len(label_names), DEFAULT_THRESHOLD)
    saved = read_json(path)["thresholds"]
    missing = [n for n in label_names if n not in saved]
    if missing:
        raise CheckpointError(
            f"{path} has no threshold for label(s) {missing}; it belongs to another run"
        )
    return np.array([float(saved[n]) for n in label_names])


def model_thresholds(
    run_dir: Path | None, meta: dict[str, Any], label_names: list[str]
) -> np.ndarray:
    """The thresholds (L,) predict applies: the run's thresholds.json; for weights outside a
    run folder (an exported .safetensors) those their metadata carries; else 0.5 each."""
    if run_dir is None and isinstance(meta.get("thresholds"), dict):
        saved = meta["thresholds"]
        missing = [n for n in label_names if n not in saved]
        if missing:
            raise CheckpointError(f"the model's metadata has no threshold for label(s) {missing}")
        return np.array([float(saved[n]) for n in label_names])
    return read_thresholds(run_dir, label_names)


def run_thresholds(run_or_checkpoint: str | Path) -> dict[str, float] | None:
    """{label: threshold} of a multi-label run folder (its thresholds.json), None otherwise (a
    single-label run, or a checkpoint outside its run folder: 0.5 is used then)."""
    run_dir = run_dir_of(resolve_weights(run_or_checkpoint))
    if run_dir is None or not (run_dir / THRESHOLDS).is_file():
        return None
    return {str(k): float(v) for k, v in read_json(run_dir / THRESHOLDS)["thresholds"].items()}


def check_tta(tta: tuple[str, ...]) -> None:
    """Test-time augmentation is refused for a multi-label model (predict and serve)."""
    if tta:
        raise ConfigError(
            f"--tta {','.join(tta)} averages single-label views; a multi-label run's "
            "thresholds were tuned on single-view sigmoids: leave --tta out"
        )


def check_predict_options(tta: tuple[str, ...], min_confidence: float | None) -> None:
    """Options of single-label prediction that a multi-label model refuses (one line each)."""
    check_tta(tta)
    if min_confidence is not None:
        raise ConfigError(
            "--min-confidence is for single-label runs; a multi-label run answers each "
            "label at its own threshold (RUN/thresholds.json)"
        )


def sigmoid_fn(model: torch.nn.Module, device: torch.device, precision: str) -> Any:
    """``fn(x (N, C, S, S) float32 array) -> (N, L) sigmoid probabilities`` (predict_files')."""

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast(device, precision):
            logits = model(torch.from_numpy(x).to(device)).float()
        return logits.sigmoid().cpu().numpy()

    return fn


def label_answers(preds: list[Any], label_names: list[str], thresholds: np.ndarray) -> None:
    """Give each prediction (top = every label with its probability) its ``labels``: every label,
    most probable first, as (name, probability, threshold); ``predicted_labels`` are those at or
    above their threshold."""
    index = {n: j for j, n in enumerate(label_names)}
    for p in preds:
        p.labels = [(name, prob, float(thresholds[index[name]])) for name, prob in p.top]
