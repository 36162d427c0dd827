"""Classification prediction for image files and folders from a run or checkpoint (or an exported .onnx)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.config import PreprocessSpec
from cnnlab.engine.devices import resolve_channels_last, resolve_device, resolve_precision
from cnnlab.engine.predict import Prediction, predict_files
from cnnlab.engine.trainer import autocast
from cnnlab.engine.weights import load_checkpoint_model


def predict(
    run_or_checkpoint: str | Path,
    inputs: list[str | Path],
    *,
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 256,
) -> list[Prediction]:
    """Class names and probabilities for images/folders; unreadable files get an error entry, not a crash."""
    if (
        str(run_or_checkpoint).lower().endswith(".onnx")
    ):  # an exported model: onnxruntime on the CPU
        from cnnlab.export import predict_onnx

        return predict_onnx(run_or_checkpoint, inputs, top_k=top_k, batch_size=batch_size)
    dev = resolve_device(device)
    model, meta, _ = load_checkpoint_model(run_or_checkpoint, dev)
    if resolve_channels_last(None, dev):
        model.to(memory_format=torch.channels_last)  # predict_files hands over NHWC-strided batches
    precision = resolve_precision("auto", dev, None)

    def probs_fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast(dev, precision):
            return model(torch.from_numpy(x).to(dev)).float().softmax(1).cpu().numpy()

    spec = PreprocessSpec.from_dict(meta["preprocess"])
    return predict_files(
        inputs, spec, list(meta["class_names"]), probs_fn, top_k=top_k, batch_size=batch_size
    )
