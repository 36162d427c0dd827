"""`--resume` for segmentation and detection runs: stopped mid-epoch (SIGTERM through the real
signal path, or SIGKILL at a random moment), resumed, and bit-identical to an uninterrupted
`--deterministic` run, as classification is (tests/test_train_e2e.py, tests/test_faults.py)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnlab import api
from cnnlab.engine import callbacks as cbs

SEG = {
    "data": "builtin:shapes?n=24&size=16", "encoder": "lenet5", "image_size": 16, "epochs": 2,
    "batch_size": 4, "report": False, "device": "cpu", "precision": "32", "seed": 1,
    "deterministic": True, "augment": ("flip",),
}  # fmt: skip
DET = {
    "data": "builtin:shapes?n=10&size=48&objects=2", "image_size": 48, "epochs": 2,
    "batch_size": 2, "val_fraction": 0.2, "test_fraction": 0.0, "report": False,
    "device": "cpu", "seed": 1, "deterministic": True,
}  # fmt: skip
VIDEO = {
    "data": "builtin:moving-shapes?n=20&frames=4&size=16&speed=0.5", "model": "r3d_small",
    "epochs": 2, "batch_size": 2, "val_fraction": 0.2, "test_fraction": 0.0, "report": False,
    "device": "cpu", "precision": "32", "seed": 1, "deterministic": True, "augment": ("flip",),
}  # fmt: skip
TASKS = {
    "segment": (api.segment_train, SEG),
    "detect": (api.detect_train, DET),
    "video": (api.video_train, VIDEO),
}


def _weights(run_dir: Path, epoch: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"epoch-{epoch:04d}.safetensors")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _interrupt_at(monkeypatch, epoch: int, step: int) -> None:
    """SIGTERM after micro-batch `step` of 0-based `epoch`, through GracefulInterrupt's handler."""
    original = cbs.GracefulInterrupt.on_fit_start

    def start_then_arm(self, trainer):
        original(self, trainer)
        state = trainer.state

        class Kill(cbs.Callback):
            def on_batch_end(self, t, loss, correct, size):
                if (state.epoch, state.step) == (epoch, step):
                    signal.raise_signal(signal.SIGTERM)

        trainer.callbacks.append(Kill())

    monkeypatch.setattr(cbs.GracefulInterrupt, "on_fit_start", start_then_arm)


# detection's case takes 13 s on 2 cores: a proof that `make test-proofs` (CI) runs
PROOF = (pytest.mark.slow, pytest.mark.proof)


@pytest.mark.parametrize(
    "task", [pytest.param(t, marks=PROOF if t == "detect" else ()) for t in sorted(TASKS)]
)
def test_sigterm_mid_epoch_then_resume_is_bit_identical(task, tmp_path, monkeypatch):
    train, options = TASKS[task]
    full = train(out=str(tmp_path), name="full", **options)
    with monkeypatch.context() as m:
        _interrupt_at(m, epoch=1, step=2)
        with pytest.raises(api.Interrupted, match="--resume"):
            train(out=str(tmp_path), name="part", **options)
    part = tmp_path / "part"
    assert list((part / "checkpoints").glob("epoch-0002-step-*.safetensors"))  # mid-epoch
    resumed = train(resume=str(part))
    assert resumed.run_dir == part
    _assert_same(_weights(full.run_dir, 2), _weights(part, 2))

    # the epoch rows the two runs share are the same validation numbers
    def validation(history):
        return [{k: v for k, v in h.items() if k.startswith("val_")} for h in history]

    assert validation(full.history)[0]  # there is a validation to compare (NaN equals NaN here)
    np.testing.assert_equal(validation(resumed.history), validation(full.history))


def test_resume_may_extend_epochs_but_refuses_other_changes(tmp_path):
    """A resume goes on with the run as it began: --epochs may change; --lr given other than the
    run's own is refused naming it (it used to be dropped silently), before anything is written."""
    from cnnlab.errors import ConfigError

    first = api.segment_train(out=str(tmp_path), name="r", **(SEG | {"epochs": 1}))
    before = (first.run_dir / "config.json").read_bytes()
    with pytest.raises(ConfigError, match=r"--lr 123.0 \(the run's: 0\.\d+\).*--epochs"):
        api.segment_train(resume=str(first.run_dir), epochs=2, lr=123.0)
    assert (first.run_dir / "config.json").read_bytes() == before
    longer = api.segment_train(resume=str(first.run_dir), epochs=2, lr=first.config.lr)
    assert [h["epoch"] for h in longer.history] == [1, 2]
    assert longer.config.lr == first.config.lr


def test_resume_of_another_tasks_run_is_refused_naming_both(tmp_path):
    """bad-inputs case 72."""
    from cnnlab.errors import CheckpointError

    seg = api.segment_train(out=str(tmp_path), name="s", **(SEG | {"epochs": 1}))
    with pytest.raises(CheckpointError, match="is a segmentation run, not a classification one"):
        api.train(resume=str(seg.run_dir))
    with pytest.raises(
        CheckpointError, match="not a detection one; resume it with `cnnlab segment"
    ):
        api.detect_train(resume=str(seg.run_dir))


def test_a_finished_run_has_nothing_to_resume_and_is_left_as_it_was(tmp_path, run_digests):
    """Bad-inputs case 49: `--resume` of a run that trained all its epochs trained nothing, then
    evaluated and reported again, rewriting run.json and config.json. --epochs N extends it."""
    from cnnlab.errors import CheckpointError

    seg = api.segment_train(out=str(tmp_path), name="s", **(SEG | {"epochs": 1}))
    before = run_digests(seg.run_dir)
    with pytest.raises(CheckpointError, match=r"nothing to resume: .* all its 1 epochs.*--epochs"):
        api.segment_train(resume=str(seg.run_dir))
    assert run_digests(seg.run_dir) == before
    # stopped after its last epoch, before its test evaluation and report: resumed to finish them
    record = json.loads((seg.run_dir / "run.json").read_text())
    (seg.run_dir / "run.json").write_text(
        json.dumps({k: v for k, v in record.items() if k != "time_split_s"})
    )
    (seg.run_dir / "test_metrics.json").unlink()
    assert api.segment_train(resume=str(seg.run_dir)).test_metrics is not None
    assert (seg.run_dir / "test_metrics.json").is_file()
    longer = api.segment_train(resume=str(seg.run_dir), epochs=2)
    assert [h["epoch"] for h in longer.history] == [1, 2]


def test_resume_of_something_that_is_not_a_run(tmp_path):
    from cnnlab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nothing to resume"):
        api.detect_train(resume=str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_sigkill_at_random_moments_then_resume_is_bit_identical(task, tmp_path):
    _, options = TASKS[task]
    flags = []
    for k, v in (options | {"epochs": 3}).items():
        flag = k.replace("_", "-")
        if isinstance(v, bool):
            flags.append(f"--{flag}" if v else f"--no-{flag}")
        else:
            flags += [f"--{flag}", ",".join(v) if isinstance(v, tuple) else str(v)]

    def cmd(name: str) -> list[str]:
        base = [sys.executable, "-m", "cnnlab", task, "train", "--out", str(tmp_path)]
        return base + ["--name", name, *flags]

    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    subprocess.run(cmd("full"), check=True, env=env, capture_output=True)
    reference = _weights(tmp_path / "full", 3)
    rng = random.Random(0)
    for seed in range(2):
        name = f"killed-{seed}"
        proc = subprocess.Popen(
            cmd(name), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        manifest = tmp_path / name / "checkpoints" / "manifest.json"
        deadline = time.monotonic() + 300
        while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # kill only once there is something to resume
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resume = [sys.executable, "-m", "cnnlab", task, "train", "--resume", str(tmp_path / name)]
        subprocess.run(resume, check=True, env=env, capture_output=True)
        _assert_same(reference, _weights(tmp_path / name, 3))
