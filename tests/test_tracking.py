"""`--track mlflow` for every task, read back through MLflow's own client: the same per-epoch
metrics as metrics.csv, the same test metrics as test_metrics.json, the best weights as an
artifact; a resume continues the same MLflow run; `--devices 2` logs once (rank 0); and
`cnnlab runs` lists the tracked runs of all four tasks beside the MLflow store."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab import api
from cnnlab.cli import main
from cnnlab.engine import callbacks as cbs
from cnnlab.errors import ConfigError

COMMON = {"device": "cpu", "precision": "32", "seed": 0, "report": False, "track": "mlflow"}
TINY = {
    "classification": (api.train, {
        "data": "builtin:digits", "model": "lenet5", "epochs": 2, "batch_size": 64,
        "report": True}),
    "segmentation": (api.segment_train, {
        "data": "builtin:shapes?n=24&size=16", "encoder": "lenet5", "image_size": 16, "epochs": 2,
        "batch_size": 4, "val_fraction": 0.2, "test_fraction": 0.25}),
    "detection": (api.detect_train, {
        "data": "builtin:shapes?n=8&size=48&objects=2", "image_size": 48, "epochs": 1,
        "batch_size": 2, "val_fraction": 0.25, "test_fraction": 0.25}),
    "video-classification": (api.video_train, {
        "data": "builtin:moving-shapes?n=20&frames=4&size=16&speed=0.5", "model": "r3d_small",
        "epochs": 2, "batch_size": 2, "val_fraction": 0.2, "test_fraction": 0.2}),
}  # fmt: skip


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> Path:
    """A runs folder with one tiny tracked run of each task (run folder named after the task)."""
    out = tmp_path_factory.mktemp("tracked")
    for task, (train, options) in TINY.items():
        train(out=str(out), name=task, **(COMMON | options))
    return out


def _client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{out.resolve() / 'mlflow.db'}")


def _mlflow_run(out: Path, name: str):
    """The MLflow run of run folder ``out/name``, found by MLflow's search on its run name."""
    client = _client(out)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def _csv_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TINY))
def test_mlflow_holds_what_the_run_folder_recorded(tracked: Path, task: str, tmp_path: Path):
    run_dir = tracked / task
    client, run = _mlflow_run(tracked, task)
    assert run.info.status == "FINISHED"
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id
    # per-epoch metrics: every column of metrics.csv, step = epoch
    rows = _csv_rows(run_dir)
    for key in rows[0]:
        if key == "epoch":
            continue
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        want = [(int(r["epoch"]), r[key]) for r in rows]
        assert [s for s, _ in history] == [s for s, _ in want], key
        assert all(_same(a, b) for (_, a), (_, b) in zip(history, want, strict=True)), key
    # test metrics: every number of test_metrics.json, and each interval's bounds
    test = json.loads((run_dir / "test_metrics.json").read_text())
    logged = run.data.metrics
    numbers = {
        k: v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    assert numbers
    for key, value in numbers.items():
        assert _same(logged[f"test_{key}"], float(value)), key
    for key, interval in test.get("confidence_intervals", {}).items():
        if isinstance(interval, dict):
            assert logged[f"test_{key}_low"] == interval["low"]
            assert logged[f"test_{key}_high"] == interval["high"]
    # parameters, data fingerprint, tags
    config = json.loads((run_dir / "config.json").read_text())
    assert (
        run.data.params["lr"] == str(config["lr"]) and run.data.params["model"] == config["model"]
    )
    fingerprint = run.data.params["data_fingerprint"]
    assert len(fingerprint) == 64
    (data,) = [d.dataset for d in run.inputs.dataset_inputs]  # the UI's Dataset column
    assert (data.name, data.digest) == (config["data"], fingerprint[:32])
    assert run.data.tags["task"] == task and run.data.tags["machine"]
    # the best weights, byte for byte
    got = Path(
        client.download_artifacts(run.info.run_id, "weights/best.safetensors", str(tmp_path))
    )
    best = run_dir / "checkpoints" / "best.safetensors"
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(best.read_bytes()).digest()
    names = {a.path for a in client.list_artifacts(run.info.run_id, "records")}
    assert {"records/test_metrics.json", "records/metrics.csv"} <= names
    if task == "classification":  # the one run here that writes its report
        assert "report/report.html" in {
            a.path for a in client.list_artifacts(run.info.run_id, "report")
        }


@pytest.mark.slow
def test_the_data_fingerprint_follows_the_samples(tracked: Path):
    """Different data: different fingerprints; the same run folder: the same value again."""
    from cnnlab.engine.tracking import data_fingerprint

    values = {task: _mlflow_run(tracked, task)[1].data.params["data_fingerprint"] for task in TINY}
    assert len(set(values.values())) == len(TINY)
    assert all(data_fingerprint(tracked / task) == value for task, value in values.items())
    splits = json.loads((tracked / "classification" / "splits.json").read_text())
    splits["splits"]["test"] = splits["splits"]["test"][1:]  # one test sample fewer
    changed = tracked / "changed"
    changed.mkdir()
    (changed / "splits.json").write_text(json.dumps(splits))
    assert data_fingerprint(changed) != values["classification"]
    (changed / "splits.json").unlink()
    changed.rmdir()


@pytest.mark.slow
def test_runs_lists_the_four_tasks_beside_the_mlflow_store(tracked: Path, capsys):
    assert main(["runs", str(tracked), "--json"]) == 0
    captured = capsys.readouterr()
    listed = {r["name"]: r for r in json.loads(captured.out)["runs"]}
    assert sorted(listed) == sorted(TINY) and captured.err == ""  # mlflow.db, mlartifacts: no run
    main_metric = {"classification": "accuracy", "segmentation": "mean_iou",
                   "detection": "map_50", "video-classification": "accuracy"}  # fmt: skip
    for task, row in listed.items():
        test = json.loads((tracked / task / "test_metrics.json").read_text())
        assert row["task"] == task and row["metric"] == main_metric[task]
        assert _same(row["value"], test[main_metric[task]])
    interval = json.loads((tracked / "classification" / "test_metrics.json").read_text())
    interval = interval["confidence_intervals"]["accuracy"]
    assert (listed["classification"]["low"], listed["classification"]["high"]) == (
        interval["low"], interval["high"])  # fmt: skip


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path, monkeypatch):
    train, options = TINY["classification"]
    options = COMMON | options | {"epochs": 2, "report": False}
    original = cbs.GracefulInterrupt.on_fit_start

    def start_then_arm(self, trainer):  # SIGTERM in epoch 2, through the real handler
        original(self, trainer)
        state = trainer.state

        class Kill(cbs.Callback):
            def on_batch_end(self, t, loss, correct, size):
                if (state.epoch, state.step) == (1, 1):
                    signal.raise_signal(signal.SIGTERM)

        trainer.callbacks.append(Kill())

    with monkeypatch.context() as m:
        m.setattr(cbs.GracefulInterrupt, "on_fit_start", start_then_arm)
        with pytest.raises(api.Interrupted):
            train(out=str(tmp_path), name="r", **options)
    client, run = _mlflow_run(tmp_path, "r")
    assert run.info.status == "KILLED"
    first = run.info.run_id
    train(resume=str(tmp_path / "r"), epochs=3)  # a resume may add epochs
    client, run = _mlflow_run(tmp_path, "r")  # still one MLflow run of that name
    assert run.info.run_id == first and run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.tags["resumed.epochs"] == "3"
    steps = [m.step for m in client.get_metric_history(first, "train_loss")]
    assert sorted(steps) == [1, 2, 3]  # each epoch once
    values = {m.step: m.value for m in client.get_metric_history(first, "val_accuracy")}
    assert values == {int(r["epoch"]): r["val_accuracy"] for r in _csv_rows(tmp_path / "r")}


@pytest.mark.slow
def test_a_resume_may_start_tracking_an_untracked_run(tmp_path: Path):
    train, options = TINY["classification"]
    options = COMMON | options | {"epochs": 1, "track": "none"}
    train(out=str(tmp_path), name="late", **options)
    assert not (tmp_path / "mlflow.db").exists()
    train(resume=str(tmp_path / "late"), epochs=2, track="mlflow")
    client, run = _mlflow_run(tmp_path, "late")
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert history == {int(r["epoch"]): r["train_loss"] for r in _csv_rows(tmp_path / "late")}
    assert sorted(history) == [1, 2] and run.info.status == "FINISHED"


@pytest.mark.slow
def test_two_processes_log_one_mlflow_run(tmp_path: Path):
    """`--devices 2` (gloo on CPU, through torchrun): rank 0 alone logs."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cnnlab", "segment", "train", "--data", "builtin:shapes?n=24&size=16",
           "--encoder", "lenet5", "--image-size", "16", "--epochs", "2", "--batch-size", "8",
           "--no-report", "--device", "cpu", "--precision", "32", "--devices", "2",
           "--track", "mlflow", "--out", str(tmp_path), "--name", "ddp"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2
    client, run = _mlflow_run(tmp_path, "ddp")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert steps == [1, 2]
    rows = _csv_rows(tmp_path / "ddp")
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")} == {
        int(r["epoch"]): r["val_loss"] for r in rows
    }


@pytest.mark.slow
def test_a_run_that_fails_is_failed_in_mlflow_and_one_line_on_the_command_line(tmp_path: Path):
    from cli_process import cnnlab

    proc = cnnlab("train", "--data", "builtin:digits", "--epochs", "2", "--lr", "1e30",
                  "--device", "cpu", "--precision", "32", "--no-report", "--track", "mlflow",
                  "--out", str(tmp_path), "--name", "nan")  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "loss became nan" in lines[0], proc.stderr
    _, run = _mlflow_run(tmp_path, "nan")
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("kind", ["unsupported scheme", "path under a file", "not a database"])
def test_a_store_mlflow_refuses_is_one_line_before_the_run_folder_exists(
    kind: str, tmp_path: Path, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a database")
    uri = {"unsupported scheme": "nosuch://store",
           "path under a file": f"sqlite:///{blocker}/mlflow.db",
           "not a database": f"sqlite:///{blocker}"}[kind]  # fmt: skip
    out = tmp_path / "runs"
    code = main(["train", "--data", "builtin:digits", "--epochs", "1", "--device", "cpu",
                 "--no-report", "--track", "mlflow", "--track-uri", uri, "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert f"--track-uri: the store {uri} refused" in lines[0], err
    assert "sqlite:///PATH/mlflow.db" in lines[0]  # what the option takes
    assert not out.exists()  # refused before the run folder (or the runs folder) was made
    assert blocker.read_text() == "not a database"  # the user's file is untouched


def test_without_mlflow_installed_the_error_says_how_to_install_it(monkeypatch):
    from cnnlab.engine.tracking import import_mlflow

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'cnnlab\[track\]'"):
        import_mlflow()


def test_a_tracking_uri_without_a_tracker_is_refused():
    from cnnlab.config import TrainConfig

    with pytest.raises(ConfigError, match="track_uri='http://x:5000' is for a tracker"):
        TrainConfig(track_uri="http://x:5000")
    assert TrainConfig(track="mlflow", track_uri="http://x:5000").track_uri == "http://x:5000"
