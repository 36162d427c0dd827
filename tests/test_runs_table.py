"""`cnnlab runs [FOLDER]` and `cnnlab runs clean` on run folders written here as training writes
them (the real file names and keys of each task); real runs of the four tasks: tests/test_tracking.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_process import SRC, assert_user_error

from cnnlab.cli import main
from cnnlab.engine.checkpoint import KEEP, CheckpointManager
from cnnlab.errors import ConfigError
from cnnlab.run import resolve_weights
from cnnlab.runs_table import (
    KEEP_POLICY,
    checkpoint_task,
    clean_plan,
    find_runs,
    read_runs,
    select,
)

TASKS = {  # run folder -> (run.json task, config, metrics.csv header + row, test_metrics.json)
    "cls": ("classification", {"model": "lenet5", "data": "builtin:digits", "epochs": 2},
            "epoch,train_loss,val_accuracy\n1,2.3,0.2\n2,2.1,0.4\n",
            {"accuracy": 0.75, "confidence_intervals": {"accuracy": {"low": 0.6, "high": 0.85}}}),
    "seg": ("segmentation", {"model": "unet", "encoder": "lenet5", "data": "builtin:shapes",
                             "epochs": 3},
            "epoch,train_loss,val_miou\n1,1.5,0.1\n", {"mean_iou": 0.5, "pixel_accuracy": 0.9}),
    "det": ("detection", {"model": "fasterrcnn", "backbone": "resnet18", "data": "coco.json",
                          "epochs": 1},
            "epoch,train_loss,val_map50\n1,3.0,0.25\n", {"map_50": 0.25, "map": 0.1}),
    "vid": ("video-classification", {"model": "r3d_small", "frames": 4, "data": "clips",
                                     "epochs": 1},
            "epoch,train_loss,val_accuracy\n1,0.7,0.5\n", None),  # no test split: val shown
}  # fmt: skip


def _write_runs(out: Path) -> Path:
    for i, (name, (task, config, csv, test)) in enumerate(TASKS.items()):
        run = out / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(config))
        (run / "metrics.csv").write_text(csv)
        (run / "run.json").write_text(
            json.dumps({"task": task, "time_split_s": {"total": 60.0 * i}})
        )
        os.utime(run / "run.json", (1.7e9 + i, 1.7e9 + i))  # finished in this order
        if test is not None:
            (run / "test_metrics.json").write_text(json.dumps(test))
    return out


@pytest.fixture
def runs_folder(tmp_path: Path) -> Path:
    return _write_runs(tmp_path / "runs")


def test_each_tasks_main_metric_with_its_interval(runs_folder: Path):
    rows, problems = read_runs(runs_folder)
    assert problems == []
    got = {r.name: (r.task, r.model, r.metric, r.value, r.low, r.high, r.epochs_done, r.epochs)
           for r in rows}  # fmt: skip
    assert got == {
        "cls": ("classification", "lenet5", "accuracy", 0.75, 0.6, 0.85, 2, 2),
        "seg": ("segmentation", "unet-lenet5", "mean_iou", 0.5, None, None, 1, 3),
        "det": ("detection", "fasterrcnn-resnet18", "map_50", 0.25, None, None, 1, 1),
        "vid": ("video-classification", "r3d_small", "val_accuracy", 0.5, None, None, 1, 1),
    }
    sizes = {r.name: r.size_bytes for r in rows}
    for name, size in sizes.items():  # as `du --apparent-size -b` counts the files
        assert size == sum(p.stat().st_size for p in (runs_folder / name).rglob("*") if p.is_file())
    assert {r.name: r.time_s for r in rows} == {"cls": 0.0, "seg": 60.0, "det": 120.0, "vid": 180.0}


def test_sort_and_filter(runs_folder: Path):
    rows, _ = read_runs(runs_folder)
    assert [r.name for r in select(rows)] == ["cls", "seg", "det", "vid"]  # by date
    assert [r.name for r in select(rows, sort="metric", reverse=True)] == [
        "cls",
        "seg",
        "vid",
        "det",
    ]
    assert [r.name for r in select(rows, sort="size")] == sorted(
        ["cls", "seg", "det", "vid"], key=lambda n: next(r.size_bytes for r in rows if r.name == n)
    )
    assert [r.name for r in select(rows, task="video")] == ["vid"]
    assert [r.name for r in select(rows, model="*resnet*")] == ["det"]
    assert [r.name for r in select(rows, model="lenet5")] == ["cls", "seg"]  # substring too
    assert [r.name for r in select(rows, data="builtin:")] == ["cls", "seg"]
    with pytest.raises(ConfigError, match="--sort 'metrc'.*did you mean: metric"):
        select(rows, sort="metrc")
    assert [r.name for r in select(rows, task="detect")] == ["det"]  # a prefix
    # a task that is none of the four listed no run, as if there were none: now it is refused
    with pytest.raises(ConfigError, match="--task 'segmentaton'.*did you mean: segmentation"):
        select(rows, task="segmentaton")


def test_a_corrupt_run_is_one_line_and_the_others_are_still_listed(runs_folder: Path, capsys):
    (runs_folder / "broken").mkdir()
    (runs_folder / "broken" / "config.json").write_text('{"model": ')  # killed mid-write
    (runs_folder / "badcsv" / "checkpoints").mkdir(parents=True)
    (runs_folder / "badcsv" / "config.json").write_text("{}")
    (runs_folder / "badcsv" / "metrics.csv").write_text("epoch,train_loss\n1,not-a-number\n")
    (runs_folder / "mlartifacts" / "abc").mkdir(parents=True)  # the MLflow store: not a run
    rows, problems = read_runs(runs_folder)
    assert sorted(r.name for r in rows) == ["cls", "det", "seg", "vid"]
    assert [Path(p.path).name for p in problems] == ["badcsv", "broken"]

    assert main(["runs", str(runs_folder), "--json"]) == 0
    captured = capsys.readouterr()
    listed = json.loads(captured.out)
    assert sorted(r["name"] for r in listed["runs"]) == ["cls", "det", "seg", "vid"]
    assert len(listed["problems"]) == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("skipped: ") for ln in lines)
    assert "broken/config.json is not valid JSON" in lines[1]
    assert "badcsv/metrics.csv" in lines[0]


def test_an_unfinished_run_is_listed_with_its_task_from_the_checkpoint(tmp_path: Path):
    from safetensors.numpy import save_file

    run = tmp_path / "runs" / "interrupted"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "unet", "epochs": 5}))
    (run / "metrics.csv").write_text("epoch,train_loss,val_miou\n1,1.0,0.3\n")
    save_file({"w": np.zeros(2, np.float32)}, str(run / "checkpoints" / "epoch-0001.safetensors"),
              metadata={"task": json.dumps("segmentation")})  # fmt: skip
    assert checkpoint_task(run) == "segmentation"
    (row,), _ = read_runs(tmp_path / "runs")
    assert (row.task, row.finished, row.metric, row.value) == (
        "segmentation",
        False,
        "val_miou",
        0.3,
    )
    assert read_runs(run)[0][0].name == "interrupted"  # a run folder itself lists that run


def test_runs_below_other_folders_are_named_by_their_path(runs_folder: Path):
    """Two transfer studies in one runs folder each hold `runs/scratch-5-seed0`: the table showed
    two rows named "scratch-5-seed0" with nothing to tell them apart. A nested run is named by its
    path under FOLDER; a top-level run keeps its folder name."""
    for study in ("study-a", "study-b"):
        shutil.copytree(runs_folder / "cls", runs_folder / study / "runs" / "scratch-5-seed0")
    names = sorted(r.name for r in read_runs(runs_folder)[0])
    assert names == ["cls", "det", "seg", "study-a/runs/scratch-5-seed0",
                     "study-b/runs/scratch-5-seed0", "vid"]  # fmt: skip


def test_a_folder_with_no_runs_is_a_one_line_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert_user_error("runs", str(tmp_path / "empty"), names=["no cnnlab runs in", "empty"])
    with pytest.raises(ConfigError, match="runs folder not found"):
        find_runs(tmp_path / "missing")


def test_listing_runs_does_not_import_torch(runs_folder: Path):
    code = (
        "import sys; from cnnlab.cli import main; code = main(['runs', sys.argv[1]]); "
        "print(code, 'torch' in sys.modules)"
    )
    env = os.environ | {"PYTHONPATH": SRC, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", code, str(runs_folder)], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 False"
    assert "4 runs in" in proc.stdout and "0.750 [0.600, 0.850]" in proc.stdout


# -- runs clean -------------------------------------------------------------------------------------
def _run_with_all_epochs(folder: Path) -> Path:
    """A run trained with --keep all: epochs 1-3 kept, epoch 2 the best; plus a stray file."""
    run = folder / "allkept"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "lenet5", "keep": "all"}))
    (run / "run.json").write_text(json.dumps({"task": "classification"}))
    manager = CheckpointManager.for_policy(run / "checkpoints", "all")
    for epoch in range(3):
        weights = {"w": torch.full((256,), float(epoch))}
        state = {"epoch": epoch, "step": 0, "complete_epoch": True}
        manager.save(f"epoch-{epoch + 1:04d}", weights, {"task": '"classification"'}, state,
                     is_best=epoch == 1)  # fmt: skip
    (run / "checkpoints" / "epoch-0000.safetensors").write_bytes(b"left by a kill")
    return run


def test_keep_policies_mirror_the_checkpoint_managers():
    assert KEEP_POLICY == {policy: keep for policy, (keep, _best) in KEEP.items()}


def test_clean_shows_then_deletes_only_what_keep_would_not_have_kept(tmp_path: Path, capsys):
    run = _run_with_all_epochs(tmp_path / "runs")
    folder = run / "checkpoints"
    before = {p.name: p.stat().st_size for p in folder.iterdir()}
    (plan,), problems = clean_plan(find_runs(tmp_path / "runs"), "best")
    gone = ["epoch-0000.safetensors", "epoch-0001.safetensors", "epoch-0001.state.pt",
            "epoch-0002.safetensors", "epoch-0002.state.pt"]  # fmt: skip
    assert problems == [] and sorted(p.name for p in plan.files) == gone
    # epoch 2's weights stay on disk as best.safetensors (a hard link): deleting that name frees nothing
    assert (folder / "best.safetensors").stat().st_ino == (folder / gone[3]).stat().st_ino
    assert plan.bytes == sum(before[n] for n in gone if n != "epoch-0002.safetensors")

    assert main(["runs", "clean", str(tmp_path / "runs")]) == 0  # a dry run: shows, deletes nothing
    shown = capsys.readouterr().out
    assert "5 files" in shown and "add --yes" in shown
    assert {p.name for p in folder.iterdir()} == set(before)

    assert main(["runs", "clean", str(tmp_path / "runs"), "--yes", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == plan.bytes and report["deleted"] is True
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.safetensors", "epoch-0003.safetensors", "epoch-0003.state.pt", "manifest.json"
    ]  # fmt: skip
    manager = CheckpointManager(folder)  # the run is still consistent: best, and resumable
    assert manager.latest_verified()["tag"] == "epoch-0003"
    assert resolve_weights(run) == folder / "best.safetensors"
    assert manager.verify(manager.manifest()["best"])
    assert clean_plan([run], "best")[0] == []  # nothing left to clean
    assert clean_plan([run], "all")[0] == []


def test_clean_leaves_an_unfinished_run_alone(tmp_path: Path):
    run = _run_with_all_epochs(tmp_path / "runs")
    (run / "run.json").unlink()  # still training, or interrupted: its newest files may be in flight
    plans, problems = clean_plan([run], "best")
    assert plans == [] and len(problems) == 1 and "unfinished" in problems[0].reason


def test_clean_keep_last_still_keeps_the_best_weights(tmp_path: Path):
    run = _run_with_all_epochs(tmp_path / "runs")
    (plan,), _ = clean_plan([run], "last")
    assert "best.safetensors" not in {p.name for p in plan.files}
    assert "epoch-0003.safetensors" not in {p.name for p in plan.files}
    with pytest.raises(ConfigError, match="--keep 'bset'"):
        clean_plan([run], "bset")


def test_the_table_of_runs_shows_each_run_name_on_80_columns(runs_folder: Path):
    """On an 80-column output (a pipe, a small terminal) the unwrappable task, metric and date
    columns squeezed run, model and data to zero width: a table of runs without run names."""
    import io

    from rich.console import Console

    from cnnlab.cli.runs import _table

    long_name = "resnet18-holiday-photos-20261206-181742"
    (runs_folder / "cls").rename(runs_folder / long_name)
    rows, _ = read_runs(runs_folder)
    console = Console(width=80, file=io.StringIO(), color_system=None)
    console.print(_table(rows, str(runs_folder)))
    lines = console.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    cells = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert long_name in "".join(cells)  # folded over lines, but whole
