"""Run-time faults (bad-inputs.md sections E and F): what a user sees when a run or a checkpoint goes wrong."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from process_events import OutputWatcher
from safetensors.torch import load_file

from cnnlab import api
from cnnlab.engine.checkpoint import read_weights, save_weights
from cnnlab.engine.trainer import NonFiniteLossError
from cnnlab.errors import CheckpointError, DataError

FAST = {"model": "lenet5", "epochs": 1, "batch_size": 32, "report": False}


def test_case_50_nan_loss_names_epoch_step_and_files(tmp_path):
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 1, step \d+; batch samples: digits:\d+"
    ) as info:
        api.train(
            data="builtin:digits",
            out=str(tmp_path),
            name="nan",
            **(FAST | {"lr": 1e9, "momentum": 0.0}),
        )
    assert "Lower --lr" in str(info.value)


def test_case_54_batch_larger_than_dataset_fails_before_training(tmp_path):
    with pytest.raises(DataError, match="fewer than one batch of 4096"):
        api.train(data="builtin:digits", out=str(tmp_path), **(FAST | {"batch_size": 4096}))


def test_cases_44_45_48_checkpoint_that_does_not_fit(tmp_path):
    run = api.train(data="builtin:digits", out=str(tmp_path), name="a", **FAST)
    best = run.run_dir / "checkpoints" / "best.safetensors"
    state, meta = read_weights(best)
    # 45: an architecture mismatch lists keys
    wrong = tmp_path / "wrong.safetensors"
    save_weights(wrong, {k + "_x": v for k, v in state.items()}, meta)
    with pytest.raises(
        CheckpointError, match=r"does not fit lenet5: missing keys \['features.0.weight'"
    ):
        api.load_checkpoint_model(wrong)
    # 48: written by a newer cnnlab
    from safetensors.torch import save_file

    newer = tmp_path / "newer.safetensors"
    save_file(state, newer, metadata={"cnnlab_schema": "99"})
    with pytest.raises(CheckpointError, match="newer cnnlab"):
        read_weights(newer)


def test_case_44_resume_with_different_classes_fails(mixed_folder, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(mixed_folder, data)
    run = api.train(
        data=str(data), out=str(tmp_path), name="r", image_size=24, **(FAST | {"batch_size": 8})
    )
    (data / "square").rename(data / "squares")
    with pytest.raises(
        CheckpointError, match=r"checkpoint classes \['disc', 'square'\] != dataset classes"
    ):
        api.train(resume=str(run.run_dir), epochs=2)


def _two_epochs(tmp_path: Path, name: str, **options) -> Path:
    run = api.train(
        data="builtin:digits", out=str(tmp_path), name=name, **(FAST | {"epochs": 2} | options)
    )
    return run.run_dir


def test_case_46_corrupt_checkpoint_is_named_and_resume_falls_back_loudly(tmp_path, caplog):
    # an earlier resumable state to fall back to: --keep all (the default keeps one, the newest)
    run_dir = _two_epochs(tmp_path, "c", keep="all")
    newest = run_dir / "checkpoints" / "epoch-0002.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match=rf"incomplete or corrupt checkpoint: {newest} \("):
        api.load_checkpoint_model(newest)
    with caplog.at_level("WARNING", logger="cnnlab"):
        resumed = api.train(resume=str(run_dir), epochs=3)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "epoch-0002 failed verification" in said, said
    assert "resuming from the previous verified one: epoch-0001" in said, said
    assert [h["epoch"] for h in resumed.history][-1] == 3  # epochs 2 and 3 trained again


def test_case_46_a_corrupt_best_checkpoint_is_named_not_replaced_by_another(tmp_path, capsys):
    """predict, evaluate and export of a run whose best.safetensors fails its sha256 took the
    newest epoch's weights instead, without a word (the newest epoch is not the best one)."""
    from cnnlab.cli import main

    run_dir = _two_epochs(tmp_path, "b", keep="all")
    best = run_dir / "checkpoints" / "best.safetensors"
    data = best.read_bytes()
    best.unlink()  # a hard link to its epoch's file: cut short a copy of its own
    best.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"incomplete or corrupt checkpoint: {best} \("):
        api.evaluate(run_dir, report=False)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert main(["predict", str(run_dir), str(image)]) == 2
    err = capsys.readouterr().err
    assert "epoch-0002.safetensors (epoch 2) verifies: pass it instead" in " ".join(err.split())
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        api.export(run_dir, out=str(tmp_path / "m.onnx"))


class _RunsCommand:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_case_47_a_checkpoint_with_pickled_code_is_refused_never_retried_unsafely(tmp_path):
    import pickle

    from cnnlab.engine.checkpoint import CheckpointManager, sha256_file
    from cnnlab.models import create_model

    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pt"
    torch.save({"fc.weight": _RunsCommand(marker)}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to load.*weights_only=True"):
        create_model("lenet5", num_classes=10, in_channels=1, weights=evil)
    assert not marker.exists()
    # the training state of a run: swapped for a hostile file with a matching manifest entry
    run_dir = _two_epochs(tmp_path, "p")
    folder = run_dir / "checkpoints"
    state = folder / "epoch-0002.state.pt"
    torch.save({"optimizer": _RunsCommand(marker)}, state, pickle_module=pickle)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["checkpoints"]:
        if entry["tag"] == "epoch-0002":
            entry["state"] |= {"sha256": sha256_file(state), "bytes": state.stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert CheckpointManager(folder).latest_verified()["tag"] == "epoch-0002"
    with pytest.raises(CheckpointError, match="refusing to load"):
        api.train(resume=str(run_dir), epochs=3)
    assert not marker.exists()  # the command never ran: no retry with weights_only=False


def test_case_51_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The write of epoch 2's checkpoint fails with ENOSPC: the error names the file and the free
    space, epoch 1's checkpoint and manifest stay whole, no temporary file is left behind."""
    import errno

    from cnnlab.engine.checkpoint import CheckpointManager
    from cnnlab.errors import WriteError

    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the disk fills up while epoch 2's files are written
        if "epoch-0002" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteError) as info:
        api.train(data="builtin:digits", out=str(tmp_path), name="full", **(FAST | {"epochs": 2}))
    folder = tmp_path / "full" / "checkpoints"
    text = str(info.value)
    assert text.startswith(f"could not write {folder / 'epoch-0002.safetensors'}: No space left")
    assert " GB free there; the previous file is intact" in text
    monkeypatch.setattr(os, "fsync", real_fsync)
    entry = CheckpointManager(folder).latest_verified()
    assert entry["tag"] == "epoch-0001"
    weights, meta, state = CheckpointManager(folder).load(entry)
    assert state["complete_epoch"] and weights and not list(folder.glob(".*.tmp"))


def test_case_49_resume_of_missing_run(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        api.train(resume=str(tmp_path / "no-such-run"))


def _train_cmd(out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cnnlab",
        "-v",  # logs "checkpoint ... saved", which the tests wait for
        "train",
        "--data",
        "builtin:digits",
        "--model",
        "lenet5",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--seed",
        "7",
        "--deterministic",
        "--no-report",
        "--out",
        str(out),
        "--name",
        name,
        *extra,
    ]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "epoch-0004.safetensors")


@pytest.mark.slow
def test_case_52_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    subprocess.run(_train_cmd(tmp_path, "full"), check=True, env=env, capture_output=True)
    reference = _final_weights(tmp_path / "full")
    rng = random.Random(0)
    for seed in range(3):
        name = f"killed-{seed}"
        proc = subprocess.Popen(
            _train_cmd(tmp_path, name),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = OutputWatcher(proc)  # kill only once there is something to resume
        output.wait_for(r"checkpoint epoch-0001 saved", timeout=240)
        time.sleep(rng.uniform(0.0, 2.0))  # then at a random moment: the point of the test
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run(
            [sys.executable, "-m", "cnnlab", "train", "--resume", str(tmp_path / name)],
            check=True,
            env=env,
            capture_output=True,
        )
        resumed = _final_weights(tmp_path / name)
        assert resumed.keys() == reference.keys()
        for k in reference:
            assert torch.equal(resumed[k], reference[k]), (seed, k)


def test_case_53_sigterm_saves_and_exits_nonzero(tmp_path):
    proc = subprocess.Popen(
        _train_cmd(tmp_path, "term", "--epochs", "200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = OutputWatcher(proc)
    output.wait_for(r"checkpoint epoch-0001 saved", timeout=120)  # then stop it in epoch 2
    manifest = tmp_path / "term" / "checkpoints" / "manifest.json"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = output.text()
    assert proc.returncode == 130, err
    assert "interrupted by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    tags = [e["tag"] for e in json.loads(manifest.read_text())["checkpoints"]]
    assert "step" in tags[-1] or tags[-1].startswith("epoch-")


def _train_cli(folder: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(folder), "--model", "lenet5", "--epochs", "1",
            "--batch-size", "8", "--image-size", "16", "--no-report", "--out", str(tmp_path),
            *extra]  # fmt: skip


def test_case_55_a_killed_loader_worker_is_one_line_naming_shared_memory(
    mixed_folder, tmp_path, monkeypatch, capsys
):
    """A streamed loader's worker killed by SIGBUS (what a full /dev/shm does, pytorch#5040): a
    real DataLoader worker dies, torch says so in a RuntimeError, and the command prints one line
    naming shared memory, Docker's --shm-size and --loader memory, exit 3, no traceback."""
    from cnnlab.cli import main
    from cnnlab.data.loader import FileImages

    decode = FileImages.__getitem__

    def die(self, i):
        if torch.utils.data.get_worker_info() is None:  # the training process (channel statistics)
            return decode(self, i)
        os.kill(os.getpid(), signal.SIGBUS)  # a forked DataLoader worker: only it dies

    monkeypatch.setattr(FileImages, "__getitem__", die)
    assert main(_train_cli(mixed_folder, tmp_path, "--loader", "stream")) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = " ".join(err.split())
    assert "a process decoding images for the streamed loader died" in line
    # torch's words, with the pid: "is killed by signal: Bus error" or, when the worker's exit is
    # seen first, "exited unexpectedly"
    assert re.search(r"\(DataLoader worker \(pid\(?s?\)? \d+\) (is killed by signal|exited)", line)
    assert "/dev/shm" in line and "--shm-size" in line and "--loader memory" in line
    # the control: the same command with the memory loader (no worker) trains
    monkeypatch.undo()
    assert main(_train_cli(mixed_folder, tmp_path, "--loader", "memory")) == 0


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_case_56_out_of_memory_is_one_line_and_never_shrinks_the_batch(
    mixed_folder, tmp_path, monkeypatch, capsys, where
):
    """torch's own out-of-memory errors, raised in the first forward: the CPU allocator's (a real
    allocation of 1 PiB, refused at once) and CUDA's (torch.OutOfMemoryError as torch words it).
    Each is one line with the options to lower, exit 3, no traceback, no run trained."""
    from cnnlab.cli import main
    from cnnlab.models.lenet import LeNet5

    def forward(self, x):
        if where == "cpu":
            torch.empty(2**50, dtype=torch.uint8)  # the allocator refuses: RuntimeError
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(LeNet5, "forward", forward)
    assert main(_train_cli(mixed_folder, tmp_path)) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    assert ("out of memory (CPU)" if where == "cpu" else "out of GPU memory") in err
    assert "Lower --batch-size or --image-size" in err
    assert "does not shrink the batch" in err
