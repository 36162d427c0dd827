"""Multi-process training and evaluation (DDP on CPU with gloo, started by torchrun).

The in-process tests check the pieces (sharding, gathering, restarts) against plain single-process
references. The torchrun tests start real process groups: evaluation with 2 ranks equals the
single-process evaluation exactly; 2-rank training with global batch B ends where 1-rank training
with batch B ends, within float tolerance; a rank killed mid-epoch under `--max-restarts 1` resumes
from the last checkpoint and ends exactly where an uninterrupted 2-rank run ends.

This file is also the worker script the eval test starts through torchrun (`__main__` below).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from process_events import OutputWatcher
from safetensors.torch import load_file

from cnnlab.data.loader import TensorLoader
from cnnlab.engine import distributed
from cnnlab.errors import ConfigError

TORCHRUN_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
)


def _loader(n: int, batch_size: int, shard=(0, 1), **kw) -> TensorLoader:
    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    targets = torch.arange(n) % 3
    return TensorLoader(
        images, targets, torch.tensor([0.5]), torch.tensor([0.25]), batch_size, shard=shard, **kw
    )


# -- sharding: rank batches interleave into the single-process batch
@pytest.mark.parametrize("world", [2, 3])
def test_rank_batches_interleave_into_the_single_process_batch(world):
    """Global step k of W ranks with batch b sees the same images, augmented the same way, as one
    process with batch B = W * b: rank r holds rows r, r + W, ... (n = 53 leaves a remainder)."""
    kw = {"shuffle": True, "seed": 5, "drop_last": True, "augment": ("crop", "flip", "affine")}
    b = 4
    single = list(_loader(53, b * world, **kw).batches(epoch=2))
    ranks = [list(_loader(53, b, shard=(r, world), **kw).batches(epoch=2)) for r in range(world)]
    assert all(len(r) == len(single) == 53 // (b * world) for r in ranks)
    for step, (x, y, idx) in enumerate(single):
        xs = torch.empty_like(x)
        ys, ids = torch.empty_like(y), torch.empty_like(idx)
        for r in range(world):
            xr, yr, ir = ranks[r][step]
            xs[r::world], ys[r::world], ids[r::world] = xr, yr, ir
        assert torch.equal(ids, idx) and torch.equal(ys, y)
        assert torch.equal(xs, x), f"step {step}: augmentation differs from the single process"


def test_shards_have_equal_lengths_and_padding_repeats_the_first_samples():
    # drop_last=False, n = 7, W = 3: DistributedSampler pads to 9 with the permutation's first 2
    loaders = [_loader(7, 2, shard=(r, 3), shuffle=True, seed=1) for r in range(3)]
    perm = _loader(7, 2, shuffle=True, seed=1).order(0)
    orders = [ld.order(0) for ld in loaders]
    assert [len(o) for o in orders] == [3, 3, 3] == [ld.num_samples for ld in loaders]
    padded = torch.cat([perm, perm[:2]])
    for r in range(3):
        assert torch.equal(orders[r], padded[r::3])
    # drop_last=True: equal lengths by dropping the permutation's last n % W samples
    loaders = [_loader(7, 1, shard=(r, 3), shuffle=True, seed=1, drop_last=True) for r in range(3)]
    assert sorted(torch.cat([ld.order(0) for ld in loaders]).tolist()) == sorted(perm[:6].tolist())
    assert {len(ld) for ld in loaders} == {2}


# -- gather_eval, single process
def test_gather_eval_puts_rows_back_in_sample_order_and_drops_repeats(monkeypatch):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.random((6, 3)).astype(np.float32))
    targets = torch.tensor([2, 0, 1, 2, 0, 1])
    indices = torch.tensor([3, 0, 2, 1, 3, -1])  # sample 3 twice (first kept), one padding row
    p, t = distributed.gather_eval(probs, targets, indices, n_total=4)
    assert torch.equal(p, probs[[1, 3, 2, 0]]) and torch.equal(t, targets[[1, 3, 2, 0]])
    with pytest.raises(RuntimeError, match="1 of 5 samples were predicted on no rank"):
        distributed.gather_eval(probs, targets, indices, n_total=5)


def test_single_process_is_a_no_op(monkeypatch):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    info = distributed.init_from_env("cpu")
    assert (info.rank, info.world_size, info.backend, info.is_main) == (0, 1, None, True)
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, info) is model
    assert distributed.all_reduce_flag(True) and not distributed.all_reduce_flag(False)
    assert distributed.broadcast_object("runs/x") == "runs/x"
    assert distributed.local_batch_size(64, info) == 64
    distributed.barrier()


def test_global_batch_must_split_over_the_ranks():
    info = distributed.DistInfo(rank=0, world_size=4)
    assert distributed.local_batch_size(128, info) == 32
    with pytest.raises(ConfigError, match="--batch-size 30 is the global batch .* multiple of 4"):
        distributed.local_batch_size(30, info)


def test_reported_loss_value_is_the_global_one_but_its_gradient_the_local_one():
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    local = (w**2).sum()
    reported = distributed._ReportAs.apply(local, torch.tensor(7.25, dtype=torch.float64))
    assert reported.item() == 7.25
    reported.backward()
    torch.testing.assert_close(w.grad, 2 * w.detach())  # d/dw sum(w^2), untouched by the report


def test_restart_finds_the_run_of_the_first_attempt(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    out = str(tmp_path)
    with pytest.raises(ConfigError, match="--max-restarts needs --name"):
        distributed.restart_run_dir(out, None, None)
    assert distributed.restart_run_dir(out, "job", None) == (None, None)  # first attempt: fresh
    (tmp_path / "job").mkdir()
    with pytest.raises(ConfigError, match="exists; a job with --max-restarts needs a new --name"):
        distributed.restart_run_dir(out, "job", None)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert distributed.restart_run_dir(out, "job", None) == (None, tmp_path / "job")  # no ckpt yet
    (tmp_path / "job" / "checkpoints").mkdir()
    (tmp_path / "job" / "checkpoints" / "manifest.json").write_text("{}")
    assert distributed.restart_run_dir(out, "job", None) == ("auto", None)
    assert distributed.restart_run_dir(out, "job", "runs/other") == ("runs/other", None)


def test_each_restart_attempt_gets_fresh_keys_in_the_shared_store(monkeypatch):
    """torchrun's agent hosts one TCPStore for the whole job and restarted workers reuse it: keys
    of the killed attempt (gloo's rank addresses) must not be visible to the next attempt, or rank
    0 may connect to a dead rank 1 ("connectFullMesh failed ... Connection refused")."""
    import datetime

    from torch.distributed import TCPStore

    agent = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # the agent's store
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(agent.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    timeout = datetime.timedelta(seconds=10)
    first = distributed._attempt_store(0, 1, timeout)
    first.set("rank_1_address", "a port of the killed process")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = distributed._attempt_store(0, 1, timeout)
    assert not second.check(["rank_1_address"])  # the restart sees only its own keys
    second.set("rank_1_address", "the new process")
    assert first.get("rank_1_address") == b"a port of the killed process"
    assert agent.num_keys() >= 2  # both live in the one shared store, under different prefixes


def test_launch_command_runs_this_package_through_torchrun():
    cmd = distributed.torchrun_command(["train", "--epochs", "2"], 4, max_restarts=2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert (
        cmd[cmd.index("--nproc-per-node") + 1] == "4"
        and cmd[cmd.index("--max-restarts") + 1] == "2"
    )
    assert cmd[-5:] == ["-m", "cnnlab", "train", "--epochs", "2"]


# -- torchrun jobs
def _env(tmp: Path) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    return env | {
        "PYTHONPATH": src + os.pathsep + env.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "CNNLAB_CACHE": str(tmp / "cache"),
        "PYTHONUNBUFFERED": "1",
    }


def _torchrun(nproc: int, *args: str, max_restarts: int = 0) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "--monitor-interval",
        "0.2",
    ]
    return cmd + (["--max-restarts", str(max_restarts)] if max_restarts else []) + list(args)


def test_two_rank_evaluation_equals_single_process_exactly(tmp_path):
    """Same weights: every metric (accuracy, per-class, AUC, bootstrap CIs) and every probability
    of a 2-rank evaluation equal the single-process evaluation's, computed in the same worker."""
    proc = subprocess.run(
        _torchrun(2, __file__, "eval", str(tmp_path)),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((tmp_path / "single" / "test_metrics.json").read_text())
    ddp = json.loads((tmp_path / "ddp0" / "test_metrics.json").read_text())
    assert single == ddp
    with (
        np.load(tmp_path / "single" / "test_predictions.npz") as a,
        np.load(tmp_path / "ddp0" / "test_predictions.npz") as b,
    ):
        for key in ("probs", "targets", "ids"):
            assert np.array_equal(a[key], b[key]), key
    checks = json.loads((tmp_path / "checks.json").read_text())
    # sanity of the reference itself: accuracy from the saved probabilities, by numpy
    with np.load(tmp_path / "single" / "test_predictions.npz") as a:
        assert single["accuracy"] == pytest.approx(
            float((a["probs"].argmax(1) == a["targets"]).mean())
        )
    assert checks == {
        "small_batches_equal": True,
        "validate_equal": True,
        "flag_or": [True, True],
        "broadcast": ["from-0", "from-0"],
    }
    assert list((tmp_path / "ddp1").iterdir()) == []  # rank 1 computed the metrics, wrote nothing


TRAIN = [
    "--data",
    "builtin:digits",
    "--model",
    "lenet5",
    "--epochs",
    "3",
    "--batch-size",
    "32",
    "--seed",
    "3",
    "--augment",
    "crop,flip",
    "--lr",
    "0.05",
    "--no-report",
]


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run (global batch 32 = 2 x 16)."""
    tmp = tmp_path_factory.mktemp("ddp")
    proc = subprocess.run(
        _torchrun(2, "-m", "cnnlab", "train", *TRAIN, "--out", str(tmp), "--name", "ddp"),
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "ddp"


def _weights(run: Path, tag: str = "epoch-0003") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"{tag}.safetensors")


@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_global_batch(ddp_reference, tmp_path):
    """Tolerance: the samples and augmentations of every step are identical, so the only difference
    is floating-point summation order (DDP averages two half-batch mean gradients; one process
    averages the whole batch; 1 vs 2 threads), ~1e-7 relative per step, growing to ~1e-6 over
    3 epochs of 44 steps. LeNet-5 has no BatchNorm, so per-rank batch statistics play no part."""
    from cnnlab import api

    run = api.train(
        data="builtin:digits",
        model="lenet5",
        epochs=3,
        batch_size=32,
        seed=3,
        augment=("crop", "flip"),
        lr=0.05,
        report=False,
        out=str(tmp_path),
        name="one",
    )
    ddp, one = _weights(ddp_reference), _weights(run.run_dir)
    assert ddp.keys() == one.keys()  # no `module.` prefix: world-size independent checkpoints
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=0, atol=1e-4, msg=key)
    ddp_hist = json.loads((ddp_reference / "checkpoints" / "manifest.json").read_text())
    assert ddp_hist["best"] is not None
    csv_ddp = (ddp_reference / "metrics.csv").read_text().splitlines()
    csv_one = (run.run_dir / "metrics.csv").read_text().splitlines()
    head = csv_one[0].split(",")
    for a, b in zip(csv_ddp[1:], csv_one[1:], strict=True):
        ra, rb = (
            dict(zip(head, a.split(","), strict=True)),
            dict(zip(head, b.split(","), strict=True)),
        )
        for k in ("train_loss", "val_loss"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-5), k
        for k in ("train_accuracy", "val_accuracy"):  # counts: equal unless a prediction flips
            assert float(ra[k]) == pytest.approx(float(rb[k]), abs=2 / 180), k


def _worker_pid(agent: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == agent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_killed_rank_restarts_from_the_last_checkpoint_and_ends_exactly_as_uninterrupted(
    ddp_reference, tmp_path
):
    cmd = _torchrun(
        2,
        "-m",
        "cnnlab",
        "-v",
        "train",
        *TRAIN,
        "--out",
        str(tmp_path),
        "--name",
        "job",
        max_restarts=1,
    )
    proc = subprocess.Popen(
        cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = OutputWatcher(proc)
    output.wait_for(r"checkpoint epoch-0001 saved", timeout=240)  # resumable from here on
    victim = _worker_pid(proc.pid, rank=1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, output.text()[-4000:]
    text = output.text()
    assert "resumed epoch-000" in text, text[-4000:]  # the restart resumed a verified checkpoint
    # bit-identical to the uninterrupted run: same batches, optimizer state and schedule
    ref, got = _weights(ddp_reference), _weights(tmp_path / "job")
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    expected = json.loads((ddp_reference / "test_metrics.json").read_text())
    assert json.loads((tmp_path / "job" / "test_metrics.json").read_text()) == expected


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_both_at_one_step_and_resumes_in_one_process(
    ddp_reference, tmp_path
):
    """SIGTERM reaches rank 1 only; both ranks stop after the same step (else rank 0 would block in
    the next collective instead of saving), rank 0 saves a mid-epoch checkpoint, and a single
    process resumes it (a different world size) and ends where the 2-rank run ends, within the
    summation-order tolerance of the training test."""
    from cnnlab import api

    cmd = _torchrun(
        2, "-m", "cnnlab", "-v", "train", *TRAIN, "--out", str(tmp_path), "--name", "term"
    )
    proc = subprocess.Popen(
        cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = OutputWatcher(proc)
    output.wait_for(r"checkpoint epoch-0001 saved", timeout=240)
    manifest = tmp_path / "term" / "checkpoints" / "manifest.json"
    victim = _worker_pid(proc.pid, rank=1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    text = output.text()
    assert "interrupted by SIGTERM" in text and "interrupted on another rank" in text, text[-3000:]
    last = json.loads(manifest.read_text())["checkpoints"][-1]
    assert "-step-" in last["tag"] and not last["complete_epoch"], last
    run = api.train(resume=str(tmp_path / "term"))
    assert run.config.batch_size == 32  # the global batch, now in one process
    ref, got = _weights(ddp_reference), _weights(run.run_dir)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-4, msg=key)


# -- worker (run by torchrun from the eval test)
def _eval_worker(out: Path) -> None:
    from cnnlab import api
    from cnnlab.config import PreprocessSpec
    from cnnlab.data.sources import Split
    from cnnlab.engine.trainer import Trainer
    from cnnlab.tasks.classification import ClassificationTask

    rank, cpu = int(os.environ["RANK"]), torch.device("cpu")
    torch.manual_seed(0)
    model = api.build_model("lenet5", 10, 1, 16).eval()  # the same weights on both ranks
    rng = np.random.default_rng(0)
    n = 1100  # three evaluation batches of 512: rank 0 takes batches 0 and 2, rank 1 batch 1
    images = torch.from_numpy(rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8))
    targets = rng.integers(0, 10, n)
    spec = PreprocessSpec(16, 1, (0.45,), (0.3,))
    split = Split([f"img{i:04d}" for i in range(n)], targets)
    names = [str(c) for c in range(10)]
    kw = {"device": cpu, "precision": "32", "report": False}
    task = ClassificationTask(10)
    small = api.make_loader(images[:203], targets[:203], spec, cpu, 64)  # 4 batches, last partial
    if rank == 0:  # the single-process reference, before the process group exists
        (out / "single").mkdir()
        api.evaluate_model(model, spec, images, split, names, out_dir=out / "single", **kw)
        ref_probs, _ = Trainer(model, task, None, None, device=cpu).predict(small)
        ref_val = Trainer(model, task, None, None, device=cpu).evaluate(small)
    info = distributed.init_from_env("cpu")
    assert info.world_size == 2 and info.backend == "gloo"
    (out / f"ddp{rank}").mkdir()
    distributed.barrier()
    api.evaluate_model(model, spec, images, split, names, out_dir=out / f"ddp{rank}", **kw)
    probs, _ = distributed.predict_sharded(model, task, small, device=cpu)
    trainer = Trainer(model, task, None, None, device=cpu)
    val = distributed.DistributedTask(task, info, model).validate(trainer, small)
    flag = distributed.all_reduce_flag(rank == 1)
    sent = distributed.broadcast_object(f"from-{rank}")
    flags = [None, None]
    dist_flags = [None, None]
    torch.distributed.all_gather_object(flags, flag)
    torch.distributed.all_gather_object(dist_flags, sent)
    if rank == 0:
        checks = {
            "small_batches_equal": bool(torch.equal(probs, ref_probs)),
            "validate_equal": val == ref_val,
            "flag_or": flags,
            "broadcast": dist_flags,
        }
        (out / "checks.json").write_text(json.dumps(checks))


if __name__ == "__main__":
    if sys.argv[1] == "eval":
        _eval_worker(Path(sys.argv[2]))


def test_the_cli_prints_warnings_of_rank_0_only(monkeypatch) -> None:
    """Under DDP every rank decodes the same data, so each data warning ("1 bad image files
    skipped") was printed once per rank. The CLI's log handler lets rank 0's through, and only
    errors from the other ranks; a single process says everything."""
    import logging

    from cnnlab.cli import log_handler

    handler = log_handler()

    def shown(level: int) -> bool:
        record = logging.LogRecord(
            "cnnlab.detect", level, __file__, 1, "data: 1 bad image files skipped", None, None
        )
        return bool(handler.filter(record))

    assert shown(logging.WARNING) and shown(logging.INFO)  # one process, no process group
    for rank, says in ((0, True), (1, False)):
        info = distributed.DistInfo(rank=rank, world_size=2, backend="gloo")
        monkeypatch.setattr(distributed, "current", lambda info=info: info)
        assert shown(logging.WARNING) is says and shown(logging.INFO) is says
        assert shown(logging.ERROR)
