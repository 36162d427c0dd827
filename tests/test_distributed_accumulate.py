"""DDP (2 ranks, gloo on CPU, started by torchrun) with gradient accumulation and with gradual
unfreezing, each against the same run in one process.

Tolerance (both tests): each optimizer step sees the same samples, augmented the same way, as in
one process; DDP averages two half-batch mean gradients where one process averages the whole batch
(and uses 1 thread per rank instead of 2), so only float32 summation order differs. LeNet-5 has
neither BatchNorm nor dropout. Measured step by step (accumulation, 66 steps): the weights drift
apart smoothly by ~1e-8 per step, to 6e-7 at step 45; at step 46 a ReLU / max-pool choice on a
near-tie flips and the first conv layer jumps to 2e-5, which momentum carries to 6e-5 by the end.
atol 1e-4 (as in tests/test_distributed.py) covers that; with no all-reduce at all (each rank on
its own half batch) the same run ends 0.75 away.

This file is also the worker script the gradual test starts through torchrun (`__main__`).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT",
                "TORCHELASTIC_MAX_RESTARTS")  # fmt: skip
COMMON = {
    "data": "builtin:digits",
    "model": "lenet5",
    "epochs": 3,
    "batch_size": 32,
    "seed": 3,
    "augment": ("crop", "flip"),
    "lr": 0.1,
    "report": False,
    "keep": "all",  # the tests read earlier epochs' weights
}
TOL = 1e-4


def _args(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
    return out


def _torchrun(tmp: Path, *args: str) -> str:
    """Runs a 2-rank job; returns its stderr (the ranks' logs)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env |= {
        "PYTHONPATH": src + os.pathsep + env.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "CNNLAB_CACHE": str(tmp / "cache"),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--monitor-interval", "0.2", *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def _assert_close(got: dict, want: dict, atol: float = TOL) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=atol, msg=key)


def _weights(run: Path, tag: str = "epoch-0003") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"{tag}.safetensors")


@pytest.mark.slow
def test_two_ranks_with_accumulation_train_like_one_process(tmp_path):
    """Global micro-batch 32 (16 per rank), 2 micro-batches per optimizer step (effective batch
    64): DDP all-reduces once per group (no_sync on the first micro-batch), and the weights end
    where one process with the same options ends (tolerance: module docstring)."""
    from cnnlab import api

    options = COMMON | {"accumulate_grad_batches": 2}
    _torchrun(tmp_path, "-m", "cnnlab", "train", *_args(options), "--out", str(tmp_path),
              "--name", "ddp")  # fmt: skip
    one = api.train(out=str(tmp_path), name="one", **options)
    _assert_close(_weights(tmp_path / "ddp"), _weights(one.run_dir))
    with open(tmp_path / "ddp" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lr"]) for r in rows] == pytest.approx([h["lr"] for h in one.history])


@pytest.mark.slow
def test_gradual_unfreezing_under_ddp_keeps_ranks_equal_and_matches_one_process(tmp_path):
    """LeNet-5's groups: head (epoch 1), stage2 (from epoch 2), stage1 (from epoch 3). DDP is
    rebuilt at epochs 2 and 3, so the unfrozen layers' gradients are averaged over the ranks:
    both ranks end with identical weights (bit for bit), stage1 is untouched while frozen, and
    the run ends where one process ends (measured: 1.2e-7 apart; without the rebuild the two ranks
    end 0.08 apart and rank 0 0.14 from one process)."""
    from cnnlab import api

    options = COMMON | {"strategy": "gradual"}
    log = _torchrun(tmp_path, __file__, "gradual", str(tmp_path))
    assert log.count("DDP rebuilt") >= 2 * 2, log[-3000:]  # 2 rebuilds on each of 2 ranks
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    one = api.train(out=str(tmp_path), name="one", **options)
    ddp = _weights(tmp_path / "ddp")
    _assert_close(ddp, _weights(one.run_dir))
    _assert_close(rank0, ddp, atol=0)  # rank 0 saved the weights it trained
    # stage1 (features.0) frozen for 2 epochs: still the seed's initial weights, in both runs
    before, after = _weights(tmp_path / "ddp", "epoch-0002"), _weights(one.run_dir, "epoch-0002")
    for key in ("features.0.weight", "features.0.bias"):
        assert torch.equal(before[key], after[key]), key
        assert not torch.equal(before[key], ddp[key]), key  # and trained in epoch 3


def _gradual_worker(out: Path) -> None:
    """torchrun worker: the gradual run; each rank also saves the weights it ends with."""
    import logging

    from cnnlab import api
    from cnnlab.engine import distributed

    logging.basicConfig(level=logging.INFO)
    original = distributed.DistributedSync.on_fit_end

    def save_own_weights(self, trainer):
        original(self, trainer)
        state = distributed.unwrap(trainer.model).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()},
                  out / f"rank{os.environ['RANK']}.safetensors")  # fmt: skip

    distributed.DistributedSync.on_fit_end = save_own_weights
    api.train(out=str(out), name="ddp", **(COMMON | {"strategy": "gradual"}))


if __name__ == "__main__":
    if sys.argv[1] == "gradual":
        _gradual_worker(Path(sys.argv[2]))
