"""`cnnlab evaluate RUN` and `cnnlab predict RUN INPUT` take a run of any task: the task recorded in
its checkpoint picks the task's own evaluate and predict (tried through the CLI, as a user would)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_process import in_process
from PIL import Image

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.tasks.registry import TASKS, get_task, recorded_task

COMMON = {"epochs": 1, "batch_size": 4, "device": "cpu", "precision": "32", "report": False}


_cli = in_process  # the commands in this process: what they compute is the subject here


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    from cnnlab.segment import train_segmentation

    out = tmp_path_factory.mktemp("seg")
    return train_segmentation(data="builtin:shapes?n=20&size=16", encoder="lenet5", image_size=16,
                              val_fraction=0.2, test_fraction=0.25, out=str(out),
                              **COMMON).run_dir  # fmt: skip


@pytest.fixture(scope="module")
def det_run(tmp_path_factory) -> Path:
    from cnnlab.detect import train_detection

    out = tmp_path_factory.mktemp("det")
    return train_detection(data="builtin:shapes?n=16&size=64&objects=2", image_size=64,
                           val_fraction=0.0, test_fraction=0.25, out=str(out),
                           **COMMON).run_dir  # fmt: skip


def _image(path: Path, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_registry_knows_every_recorded_task() -> None:
    assert set(TASKS) == {"classification", "segmentation", "detection", "video-classification"}
    assert (
        get_task("segmentation").predicts_to_files
        and not get_task("classification").predicts_to_files
    )
    with pytest.raises(ConfigError, match="unknown task 'segmentaton'.*segmentation"):
        get_task("segmentaton")
    with pytest.raises(CheckpointError, match="ONNX file not found"):
        recorded_task("model.onnx")  # an exported file's task is read from the file itself


def test_evaluate_and_predict_a_segmentation_run(seg_run: Path, tmp_path: Path) -> None:
    from cnnlab.segment import evaluate_segmentation

    assert recorded_task(seg_run) == "segmentation"
    done = _cli("evaluate", str(seg_run), "--json", "--no-report", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    want = evaluate_segmentation(seg_run, device="cpu", report=False)["metrics"]
    assert metrics["confusion_matrix"] == want["confusion_matrix"]
    assert metrics["mean_iou"] == pytest.approx(want["mean_iou"], abs=1e-12)
    image = _image(tmp_path / "a.png", (20, 24))
    done = _cli("predict", str(seg_run), str(image), "--out", str(tmp_path / "pred"))
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "pred" / "masks" / "a.png") as mask:
        assert mask.size == (24, 20)  # the input's own size, class index per pixel
    # a run whose predictions are files needs a folder: one line naming the flag, exit code 2
    done = _cli("predict", str(seg_run), str(image))
    assert done.returncode == 2 and "--out FOLDER" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_evaluate_and_predict_a_detection_run(det_run: Path, tmp_path: Path) -> None:
    from cnnlab.detect import evaluate_detection

    done = _cli("evaluate", str(det_run), "--device", "cpu", "--no-report")
    assert done.returncode == 0, done.stderr
    want = evaluate_detection(det_run, device="cpu", report=False)["metrics"]
    assert f"map_50: {want['map_50']:.4f}" in done.stdout
    image = _image(tmp_path / "b.png", (64, 64))
    done = _cli("predict", str(det_run), str(image), "--out", str(tmp_path / "pred"))
    assert done.returncode == 0, done.stderr
    assert "detection predictions written to" in done.stdout
    assert (tmp_path / "pred" / "images" / "b.png").is_file()


@pytest.mark.parametrize(
    ("command", "api_name"),
    [
        (("segment", "evaluate"), "segment_evaluate"),
        (("detect", "evaluate"), "detect_evaluate"),
        (("detect", "train", "--data", "builtin:shapes"), "detect_train"),
    ],
)
def test_a_task_command_that_writes_a_report_names_it(
    command: tuple[str, ...], api_name: str, tmp_path: Path, monkeypatch
) -> None:
    """`cnnlab detect train`, `segment evaluate` and `detect evaluate` wrote report.html without
    saying where (classification, `segment train`, video and `cnnlab evaluate RUN` of any task
    print `report: PATH`). The task's computation is replaced by a fixed result: this is about
    what the command prints."""
    from cnnlab import api
    from cnnlab.engine.assembly import TrainResult
    from cnnlab.report import render

    report = tmp_path / "run" / "evaluations" / "t" / "report.html"
    metrics = {"mean_iou": 0.5, "map_50": 0.5}
    evaluation = {"metrics": metrics, "report": report, "num_samples": 3, "precision": "32",
                  "device": "cpu", "out_dir": report.parent}  # fmt: skip
    trained = TrainResult(tmp_path / "run", [], metrics, 1.0, None, report=report)  # type: ignore[arg-type]
    fake = trained if api_name.endswith("train") else evaluation
    monkeypatch.setattr(api, api_name, lambda *args, **kwargs: fake)
    monkeypatch.setattr(render, "start_early", lambda: None)  # no figure workers to fork
    run = [] if command[1] == "train" else [str(tmp_path)]
    done = _cli(*command, *run)
    assert done.returncode == 0, done.stderr
    assert f"report: {report}" in done.stdout
