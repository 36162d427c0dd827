"""Classification prediction for image files and folders from a run or checkpoint (or an exported .onnx)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.config import PreprocessSpec
from cnnlab.engine.devices import inference_precision, resolve_channels_last, resolve_device
from cnnlab.engine.onnx import is_onnx
from cnnlab.engine.predict import Prediction, predict_files
from cnnlab.engine.trainer import autocast
from cnnlab.engine.weights import load_checkpoint_model
from cnnlab.errors import ConfigError
from cnnlab.run import resolve_weights, run_dir_of, trained_precision
from cnnlab.tasks.classify.operating_point import for_weights, read_operating_point


def predict(
    run_or_checkpoint: str | Path,
    inputs: list[str | Path],
    *,
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 256,
    precision: str = "auto",
    operating_point: bool = True,
) -> list[Prediction]:
    """Class names and probabilities for images/folders; unreadable files get an error entry, not a crash.

    ``precision`` auto = fp32 on CPU, the run's own on CUDA (cnnlab.engine.devices); ONNX files run fp32.
    ``operating_point``: apply the run's operating point (RUN/operating_point.json, written by
    `cnnlab evaluate RUN --positive C --target ...`) when it has one: each prediction's `decision`."""
    if is_onnx(run_or_checkpoint):  # an exported model: onnxruntime on the CPU
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
    class_names = list(meta["class_names"])
    point = for_weights(run_dir_of(weights), weights, class_names) if operating_point else None
    decide = (int(point["positive_index"]), float(point["threshold"])) if point else None
    return predict_files(
        inputs, spec, class_names, probs_fn, top_k=top_k, batch_size=batch_size, decide=decide
    )


def active_operating_point(run_or_checkpoint: str | Path) -> dict | None:
    """The operating point `predict` applies for this run or checkpoint (None: none, or an
    exported .onnx file, which carries none)."""
    if is_onnx(run_or_checkpoint):
        return None
    return read_operating_point(run_dir_of(resolve_weights(run_or_checkpoint)))
