"""Every task reports its own named metrics: validate returns {name: value}, the trainer records each
as val_<name> in the history, metrics.csv and the epoch line; --monitor takes any recorded key and
refuses one the task does not record, naming the keys it does."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from rich.console import Console

from cnnlab import api
from cnnlab.errors import ConfigError

COMMON = {"epochs": 2, "device": "cpu", "precision": "32", "report": False}
SEG = COMMON | {"encoder": "lenet5", "image_size": 16, "batch_size": 4, "val_fraction": 0.2,
                "test_fraction": 0.2}  # fmt: skip
DET = COMMON | {"image_size": 64, "batch_size": 4, "val_fraction": 0.25, "test_fraction": 0.0}


def _columns(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return list(rows[0]), rows


def _epoch_lines(console: Console) -> list[str]:
    return [line for line in console.file.getvalue().splitlines() if line.startswith("epoch ")]


def _console() -> Console:
    return Console(file=io.StringIO(), width=400, force_terminal=False)


def test_classification_records_val_loss_accuracy_and_balanced_accuracy(tmp_path: Path) -> None:
    console = _console()
    result = api.train(data="builtin:digits", model="lenet5", batch_size=64, lr=0.05,
                       out=str(tmp_path), console=console, **COMMON)  # fmt: skip
    columns, rows = _columns(result.run_dir)
    quality = [c for c in columns if c.startswith(("val_", "train_")) and c != "train_images_per_s"]
    assert quality == [
        "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy"
    ]  # fmt: skip
    assert len(rows) == 2 and all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in rows)
    lines = _epoch_lines(console)
    assert len(lines) == 2 and all(" acc " in ln and "val_accuracy" in ln for ln in lines)
    # the epoch line shows the recorded value, not another metric under its name
    assert f"val_accuracy {float(rows[-1]['val_accuracy']):.4f}" in lines[-1]


def test_segmentation_records_val_miou_and_selects_on_it(tmp_path: Path) -> None:
    from cnnlab.engine.checkpoint import CheckpointManager
    from cnnlab.segment import train_segmentation

    console = _console()
    result = train_segmentation(data="builtin:shapes?n=30&size=16", out=str(tmp_path),
                                console=console, **SEG)  # fmt: skip
    columns, rows = _columns(result.run_dir)
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_miou"} <= set(columns)
    assert not any(c.startswith("val_map") for c in columns)
    miou = [float(r["val_miou"]) for r in rows]
    assert all(0.0 <= m <= 1.0 for m in miou)
    lines = _epoch_lines(console)
    assert len(lines) == 2 and all("val_miou" in ln and "val_accuracy" in ln for ln in lines)
    # pixel accuracy and mIoU are different numbers, each shown under its own name
    assert f"val_miou {miou[-1]:.4f}" in lines[-1]
    assert f"val_accuracy {float(rows[-1]['val_accuracy']):.4f}" in lines[-1]
    best = CheckpointManager(result.run_dir / "checkpoints").manifest()["best"]["epoch"]
    # the checkpoint is chosen on mIoU (the manifest counts epochs from 1)
    assert best == 1 + max(range(2), key=lambda i: (miou[i], -i))


def test_detection_records_map_and_no_loss_or_accuracy(tmp_path: Path) -> None:
    from cnnlab.detect import train_detection

    console = _console()
    result = train_detection(data="builtin:shapes?n=16&size=64&objects=2", out=str(tmp_path),
                             console=console, **DET)  # fmt: skip
    columns, rows = _columns(result.run_dir)
    assert {"train_loss", "val_map50", "val_map"} <= set(columns)
    for absent in ("val_loss", "val_accuracy", "train_accuracy"):
        assert absent not in columns
    lines = _epoch_lines(console)
    assert len(lines) == 2
    assert all("val_map50" in ln and " acc " not in ln and "val_acc" not in ln for ln in lines)


def test_monitor_must_be_a_recorded_key(tmp_path: Path) -> None:
    from cnnlab.detect import DetectConfig
    from cnnlab.segment import SegmentConfig

    with pytest.raises(ConfigError, match=r"val_miou.*choose from .*val_loss, val_accuracy"):
        api.train(data="builtin:digits", model="lenet5", monitor="val_miou", out=str(tmp_path))
    # before the data says single- or multi-label, the keys only one kind records say so (val_map
    # was offered for a single-label run, which then refused it)
    with pytest.raises(ConfigError, match=r"val_balanced_accuracy \(single-label runs\), "
                       r"val_macro_f1 \(multi-label runs\), val_map \(multi-label runs\)"):  # fmt: skip
        api.train(data="builtin:digits", model="lenet5", monitor="val_acc", out=str(tmp_path))
    with pytest.raises(ConfigError, match=r"val_map50.*choose from .*val_miou"):
        SegmentConfig(monitor="val_map50")
    with pytest.raises(ConfigError, match=r"val_accuracy.*choose from train_loss, val_map50"):
        DetectConfig(monitor="val_accuracy")
    assert SegmentConfig().monitor == "val_miou" and DetectConfig().monitor == "val_map50"
    SegmentConfig(monitor="train_accuracy")  # any recorded key is a valid monitor
