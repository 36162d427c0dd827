"""Classification prediction for image files and folders from a run or checkpoint (or an exported .onnx)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab.config import PreprocessSpec
from cnnlab.engine.calibration import (
    SCORE,
    calibrated_fn,
    check_min_confidence,
    from_metadata,
    load_calibration,
)
from cnnlab.engine.devices import inference_precision, resolve_channels_last, resolve_device
from cnnlab.engine.onnx import is_onnx
from cnnlab.engine.predict import Prediction, json_rows, predict_files
from cnnlab.engine.tta import parse_tta
from cnnlab.engine.weights import load_checkpoint_model
from cnnlab.errors import ConfigError
from cnnlab.run import (
    checkpoint_metadata,
    claim_outputs,
    resolve_weights,
    run_dir_of,
    trained_precision,
    write_json,
)
from cnnlab.tasks.classify import multilabel
from cnnlab.tasks.classify.operating_point import for_weights, read_operating_point

#: what `predict RUN IMAGES --out DIR` writes into DIR for a classification run
PREDICTIONS_FILE = "predictions.json"


def predict(
    run_or_checkpoint: str | Path,
    inputs: list[str | Path],
    *,
    out: str | Path | None = None,
    **options: Any,
) -> list[Prediction]:
    """:func:`predictions` (``options``: its keywords); with ``out``, also written to
    ``out/predictions.json``: ``{"run", "tta" (when used), "predictions": [the rows of --format
    json]}`` (cnnlab.engine.predict.json_rows), the file named predictions.json as segmentation's
    and detection's. The folder is claimed as every --out is (:func:`cnnlab.run.claim_outputs`):
    a predictions.json of the user's is refused before the model loads."""
    if out is not None:  # said before the model loads, recorded just before the file is written
        claim_outputs(out, [PREDICTIONS_FILE], command="predict", record=False)
    preds = predictions(run_or_checkpoint, inputs, **options)
    if out is not None:
        folder = claim_outputs(out, [PREDICTIONS_FILE], command="predict")
        views = parse_tta(options.get("tta"))
        tta_record = {"tta": list(views)} if views else {}
        record = {"run": str(run_or_checkpoint)} | tta_record | {"predictions": json_rows(preds)}
        write_json(folder / PREDICTIONS_FILE, record)
    return preds


def predictions(
    run_or_checkpoint: str | Path,
    inputs: list[str | Path],
    *,
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 256,
    precision: str = "auto",
    operating_point: bool = True,
    min_confidence: float | None = None,
    tta: str | tuple[str, ...] | None = None,
) -> list[Prediction]:
    """Class names and probabilities for images/folders; unreadable files get an error entry, not a crash.

    ``precision`` auto = fp32 on CPU, the run's own on CUDA (cnnlab.engine.devices); ONNX files run fp32.
    ``operating_point``: apply the run's operating point (RUN/operating_point.json, written by
    `cnnlab evaluate RUN --positive C --target ...`) when it has one: each prediction's `decision`.

    Calibration (RUN/calibration.json, fitted when the run was trained): probabilities are
    ``softmax(logits / T)`` and each prediction gets an out-of-domain verdict (``out_of_domain``);
    an exported file applies the calibration recorded in its metadata.
    ``min_confidence=P``: a prediction whose top calibrated probability is below P is ``unknown``.
    ``tta`` ("flip", "crop", "shift" or a comma list; cnnlab.engine.tta): each probability is the mean of the
    views' calibrated probabilities."""
    min_confidence = check_min_confidence(min_confidence)
    views = parse_tta(tta)
    if is_onnx(run_or_checkpoint):  # an exported model: onnxruntime on the CPU
        from cnnlab.export import predict_onnx

        if precision not in ("auto", "32"):
            raise ConfigError(
                f"--precision {precision}: an ONNX model runs in float32 in onnxruntime; "
                "leave --precision out or pass the run folder instead"
            )
        return predict_onnx(
            run_or_checkpoint, inputs, top_k=top_k, batch_size=batch_size,
            min_confidence=min_confidence, tta=views, operating_point=operating_point,
        )  # fmt: skip
    dev = resolve_device(device)
    model, meta, weights = load_checkpoint_model(run_or_checkpoint, dev)
    if resolve_channels_last(None, dev):
        model.to(memory_format=torch.channels_last)  # predict_files hands over NHWC-strided batches
    precision = inference_precision(precision, dev, trained_precision(run_dir_of(weights)))
    if meta.get("multilabel"):  # every label with its probability; those above threshold
        multilabel.check_predict_options(views, min_confidence)
        names = list(meta["class_names"])
        preds = predict_files(
            inputs, PreprocessSpec.from_dict(meta["preprocess"]), names,
            multilabel.sigmoid_fn(model, dev, precision), top_k=len(names),
            batch_size=batch_size,
        )  # fmt: skip
        multilabel.label_answers(
            preds, names, multilabel.model_thresholds(run_dir_of(weights), meta, names)
        )
        return preds

    # None: an older run; an exported .safetensors carries its run's calibration
    calibration = load_calibration(run_dir_of(weights), weights) or from_metadata(meta)
    probs_fn = calibrated_fn(model, calibration, dev, precision, tta=views)
    threshold = calibration.threshold if calibration is not None else None
    domain = (SCORE, threshold) if threshold is not None else None
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    class_names = list(meta["class_names"])
    # the run's own; weights outside a run (an exported .safetensors): the one they carry
    point = None
    if operating_point:
        point = for_weights(run_dir_of(weights), weights, class_names) or meta.get(
            "operating_point"
        )
    decide = (int(point["positive_index"]), float(point["threshold"])) if point else None
    return predict_files(
        inputs, spec, class_names, probs_fn, top_k=top_k, batch_size=batch_size, decide=decide,
        min_confidence=min_confidence, domain=domain,
    )  # fmt: skip


def active_operating_point(run_or_checkpoint: str | Path) -> dict | None:
    """The operating point `predict` applies for this run or checkpoint: the run's, else the one
    an exported file carries in its metadata (None: none)."""
    if is_onnx(run_or_checkpoint):
        from cnnlab.export import read_export_metadata

        return read_export_metadata(run_or_checkpoint).get("operating_point")
    weights = resolve_weights(run_or_checkpoint)
    point = read_operating_point(run_dir_of(weights))
    if point is None and run_dir_of(weights) is None:
        point = checkpoint_metadata(weights).get("operating_point")
    return point
