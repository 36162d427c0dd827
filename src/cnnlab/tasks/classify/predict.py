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
from cnnlab.run import run_dir_of, trained_precision


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

    ``precision`` auto = fp32 on CPU, the run's own on CUDA (cnnlab.engine.devices); ONNX files run fp32."""
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
    return predict_files(
        inputs, spec, list(meta["class_names"]), probs_fn, top_k=top_k, batch_size=batch_size
    )
