"""Tasks by the name every checkpoint records (its metadata ``task``): what the verbs that take a run
(``cnnlab evaluate RUN``, ``cnnlab predict RUN INPUT``) dispatch on.

Each entry names the task's own ``evaluate(run, *, data, split, device, report, out) -> {"metrics",
...}`` and ``predict``; the modules are imported only when a run of that task is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.engine.onnx import is_onnx
from cnnlab.errors import ConfigError, close_matches
from cnnlab.run import checkpoint_metadata


@dataclass(frozen=True)
class TaskEntry:
    name: str
    evaluate: Callable[..., dict[str, Any]]
    # classification: (run, inputs, *, top_k, device, batch_size) -> [Prediction];
    # the others write files: (run, inputs, out_dir, *, device) -> what they wrote
    predict: Callable[..., Any]
    predicts_to_files: bool  # predictions are files in an output folder (masks, boxes, videos)
    inputs: str = "images"  # what predict takes


def _classification() -> TaskEntry:
    from cnnlab.tasks.classify.evaluate import evaluate
    from cnnlab.tasks.classify.predict import predict

    return TaskEntry("classification", evaluate, predict, predicts_to_files=False)


def _segmentation() -> TaskEntry:
    from cnnlab.segment import evaluate_segmentation, predict_segmentation

    return TaskEntry("segmentation", evaluate_segmentation, predict_segmentation, True)


def _detection() -> TaskEntry:
    from cnnlab.detect import evaluate_detection, predict_detection

    return TaskEntry("detection", evaluate_detection, predict_detection, True)


def _video() -> TaskEntry:
    from cnnlab.video.predict import predict_video
    from cnnlab.video.train import evaluate_video

    def predict(run: str | Path, inputs: list[str | Path], out_dir: str | Path, **kw: Any):
        if kw.pop("precision", "auto") not in ("auto", "32"):
            raise ConfigError(
                "--precision: video prediction runs at the default inference precision (fp32 on "
                "CPU, the run's own on CUDA); leave --precision out"
            )
        if len(inputs) != 1:
            raise ConfigError(
                f"a video-classification run predicts one video at a time, got {len(inputs)} "
                "inputs; give one video file"
            )
        return predict_video(run, inputs[0], out_dir, **kw)

    return TaskEntry("video-classification", evaluate_video, predict, True, inputs="a video")


TASKS: dict[str, Callable[[], TaskEntry]] = {
    "classification": _classification,
    "segmentation": _segmentation,
    "detection": _detection,
    "video-classification": _video,
}


def get_task(name: str) -> TaskEntry:
    if name not in TASKS:
        raise ConfigError(
            f"unknown task {name!r}{close_matches(name, TASKS)}; cnnlab knows {', '.join(TASKS)}"
        )
    return TASKS[name]()


def recorded_task(run_or_checkpoint: str | Path) -> str:
    """The task a run, checkpoint or exported .onnx file records ("classification" for files older
    than the field)."""
    if is_onnx(run_or_checkpoint):
        from cnnlab.engine.onnx import OnnxModel

        return OnnxModel(run_or_checkpoint).task
    return str(checkpoint_metadata(run_or_checkpoint).get("task") or "classification")


def task_of(run_or_checkpoint: str | Path) -> TaskEntry:
    return get_task(recorded_task(run_or_checkpoint))
