"""An exported ``.onnx`` file run with onnxruntime on the CPU, called like the PyTorch model it came
from, so each task's prediction driver serves checkpoints and exported files alike.

* classification and segmentation files take ``images`` (N, C, S, S) float32 and return ``logits``
  ((N, K) or (N, K, S, S)); the batch axis is dynamic;
* detection files were traced for one image (torchvision's detectors return one dict per image,
  and the ONNX graph of that list is fixed by the traced batch): ``__call__`` runs the images one
  by one and returns ``[{"boxes" (M, 4), "labels" (M,), "scores" (M,)}, ...]`` as PyTorch does.

The metadata each file carries (``metadata_props``, JSON values) is :attr:`OnnxModel.meta`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CheckpointError, ConfigError

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DETECTION_OUTPUTS = ("boxes", "labels", "scores")


def is_onnx(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


def onnx_session(path: str | Path):
    """An onnxruntime CPU session; a missing or broken file is a one-line CheckpointError."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("running an ONNX file needs: pip install onnxruntime") from None
    if not Path(path).is_file():
        raise CheckpointError(f"ONNX file not found: {path}")
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    # onnxruntime's own exception classes derive from Exception directly, not from OSError
    load_errors = (
        ort_errors.Fail,
        ort_errors.InvalidArgument,
        ort_errors.InvalidGraph,
        ort_errors.InvalidProtobuf,
        ort_errors.NoSuchFile,
        ort_errors.NotImplemented,
        ort_errors.RuntimeException,
    )
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except load_errors as err:
        raise CheckpointError(f"{path} is not a loadable ONNX model: {str(err)[:200]}") from None


def decode_props(raw: dict[str, str]) -> dict[str, Any]:
    """metadata_props (str -> str) with the JSON values decoded."""
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return meta


class OnnxModel:
    """``model(images)`` for an exported file: float32 on the CPU, outputs as torch tensors."""

    def __init__(self, path: str | Path, task: str | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path)
        self.meta = decode_props(self.session.get_modelmeta().custom_metadata_map)
        if "preprocess" not in self.meta or "class_names" not in self.meta:
            raise CheckpointError(
                f"{self.path} carries no cnnlab preprocessing/class names; export it with "
                "`cnnlab export RUN --format onnx`"
            )
        self.task = str(self.meta.get("task", "classification"))
        if task is not None and self.task != task:
            raise CheckpointError(
                f"{self.path} is an exported {self.task} model, not a {task} one; "
                "use the command of its task"
            )

    def eval(self) -> OnnxModel:  # the PyTorch idiom; an exported graph is always in eval mode
        return self

    def __call__(self, images: torch.Tensor) -> Any:
        x = np.ascontiguousarray(images.detach().float().cpu().numpy())  # NHWC views -> NCHW
        if self.task == "detection":
            out = []
            for i in range(len(x)):
                boxes, labels, scores = self.session.run(
                    list(DETECTION_OUTPUTS), {INPUT_NAME: x[i : i + 1]}
                )
                out.append(
                    {
                        "boxes": torch.from_numpy(boxes).float(),
                        "labels": torch.from_numpy(labels).long(),
                        "scores": torch.from_numpy(scores).float(),
                    }
                )
            return out
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])
