"""Gradient accumulation (`accumulate_grad_batches`) in the one training loop.

k micro-batches of b images make one optimizer step on the mean gradient over their k * b images:
checked against one process with batch k * b, against a plain PyTorch loop for the epoch's last,
shorter group, for bit-identical resume, and for DDP's one all-reduce per group (no_sync).
"""

from __future__ import annotations

import copy
import json
import signal

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from cnnlab import api
from cnnlab.config import TrainConfig, make_config
from cnnlab.data.loader import TensorLoader
from cnnlab.engine import callbacks as cbs
from cnnlab.engine import distributed
from cnnlab.engine.trainer import Trainer
from cnnlab.errors import ConfigError
from cnnlab.tasks.classification import ClassificationTask

DIGITS = {
    "data": "builtin:digits",
    "model": "lenet5",
    "lr": 0.2,
    "augment": (),  # augmentation is drawn per (epoch, micro-batch): it would differ between runs
    "shots": 40,  # 400 training images (seeded): 12 batches of 32, 3 of 128
    "report": False,
    "seed": 3,
    "deterministic": True,
}


def _weights(run_dir, tag: str) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"{tag}.safetensors")


def test_four_micro_batches_of_32_train_like_one_batch_of_128(tmp_path):
    """400 training images: 12 micro-batches of 32 = 3 groups of 4 hold exactly the 384 images of
    3 batches of 128 (the same seeded permutation), so both runs take the same 6 optimizer steps
    (SGD, momentum, weight decay, one-cycle sized in optimizer steps).

    Tolerance: the two runs differ only in float32 summation order (four means of 32 added and
    divided by 4 vs one mean of 128; other GEMM blockings), ~1e-7 relative per step: measured
    max |diff| 3e-8 on weights of size ~0.2. atol 1e-6 is 30x that, while the weights move by
    1.3e-2 (10,000x) in the second epoch alone: stepping per micro-batch, or summing instead of
    averaging the group, would miss by far more.
    """
    acc = api.train(
        out=str(tmp_path), name="acc", epochs=2, batch_size=32, accumulate_grad_batches=4, **DIGITS
    )
    big = api.train(  # keep="all": epoch 1's weights too
        out=str(tmp_path), name="big", epochs=2, batch_size=128, keep="all", **DIGITS
    )
    a, b = _weights(acc.run_dir, "epoch-0002"), _weights(big.run_dir, "epoch-0002")
    b1 = _weights(big.run_dir, "epoch-0001")
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    moved = max((b[k] - b1[k]).abs().max().item() for k in b)
    assert moved > 1e-3, moved  # the check above is 1000x finer than the motion
    # the schedule counts optimizer steps: the same rate at every epoch end
    assert [h["lr"] for h in acc.history] == [h["lr"] for h in big.history]
    assert [h["val_accuracy"] for h in acc.history] == pytest.approx(
        [h["val_accuracy"] for h in big.history], abs=1 / 180
    )
    state = torch.load(acc.run_dir / "checkpoints" / "epoch-0002.state.pt", weights_only=True)
    assert state["global_step"] == 6 and state["step"] == 12  # optimizer steps vs micro-batches
    assert json.loads((acc.run_dir / "config.json").read_text())["accumulate_grad_batches"] == 4


def _toy(n: int, b: int) -> tuple[TensorLoader, nn.Module]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, 3, (n,), generator=g)
    loader = TensorLoader(images, targets, torch.tensor([0.5]), torch.tensor([0.25]), b)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    return loader, model


def _sgd(model: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))


def _reference(model: nn.Module, loader: TensorLoader, groups: list[slice], epochs: int, last=1):
    """A plain PyTorch loop: one SGD step per slice of the (unshuffled) samples on its mean loss;
    `last` scales the epoch's last group's loss (1: its own mean)."""
    model = copy.deepcopy(model)
    opt, sched = _sgd(model)
    x = (loader.images.float() / 255 - 0.5) / 0.25
    for _ in range(epochs):
        for i, rows in enumerate(groups):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[rows]), loader.targets[rows])
            (loss * (last if i == len(groups) - 1 else 1)).backward()
            opt.step()
            sched.step()
    return model


def test_the_epochs_last_shorter_group_steps_on_its_own_mean():
    """5 micro-batches of 4 with k = 2: groups of 8, 8 and 4 images; the last group's step uses
    the mean over its 4 images (divided by 1 micro-batch, not by k = 2), then the next epoch starts
    a new group. Reference: plain SGD on batches of 8, 8, 4. Tolerance: summation order only."""
    loader, model = _toy(20, 4)
    ref = _reference(model, loader, [slice(0, 8), slice(8, 16), slice(16, 20)], epochs=2)
    halved = _reference(model, loader, [slice(0, 8), slice(8, 16), slice(16, 20)], 2, last=0.5)
    opt, sched = _sgd(model)
    trainer = Trainer(
        model, ClassificationTask(3), opt, sched, device=torch.device("cpu"),
        accumulate_grad_batches=2,
    )  # fmt: skip
    state = trainer.fit(loader, None, epochs=2)
    assert state.global_step == 6 and sched.last_epoch == 6  # 3 optimizer steps per epoch
    for (name, got), want in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=name)
    pairs = zip(ref.parameters(), halved.parameters(), strict=True)
    gap = max((a - b).abs().max().item() for a, b in pairs)
    assert gap > 1e-3  # dividing the short group by k instead would fail the check above


def test_groups_cover_the_epoch_and_the_last_one_is_shorter():
    trainer = Trainer(nn.Linear(1, 1), None, None, None, device=torch.device("cpu"),
                      accumulate_grad_batches=3)  # fmt: skip
    groups = [trainer.group_of(step, 7) for step in range(7)]
    assert groups == [
        (True, 3, False), (False, 3, False), (False, 3, True),
        (True, 3, False), (False, 3, False), (False, 3, True),
        (True, 1, True),
    ]  # fmt: skip


def test_accumulate_grad_batches_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="accumulate_grad_batches must be > 0, got 0"):
        make_config(TrainConfig, accumulate_grad_batches=0)
    with pytest.raises(ConfigError, match="accumulate_grad_batches expects an integer"):
        make_config(TrainConfig, accumulate_grad_batches="two")


def test_sigterm_inside_a_group_saves_at_its_end_and_resumes_bit_identically(tmp_path, monkeypatch):
    """k = 5 over 12 micro-batches per epoch (groups of 5, 5 and 2). SIGTERM after micro-batch 3
    of epoch 2 (inside the group 0..4): the loop finishes that group, saves `step-000005`, and the
    resumed run's weights equal an uninterrupted run's bit for bit."""
    cfg = DIGITS | {"out": str(tmp_path), "epochs": 2, "batch_size": 32}
    cfg["accumulate_grad_batches"] = 5
    full = api.train(name="full", **cfg)
    original = cbs.GracefulInterrupt.on_fit_start

    def start_then_arm(self, trainer):
        original(self, trainer)

        class Kill(cbs.Callback):
            def on_batch_end(self, t, loss, correct, size):
                if t.state.epoch == 1 and t.state.step == 3:
                    signal.raise_signal(signal.SIGTERM)

        trainer.callbacks.append(Kill())

    monkeypatch.setattr(cbs.GracefulInterrupt, "on_fit_start", start_then_arm)
    with pytest.raises(api.Interrupted):
        api.train(name="part", **cfg)
    monkeypatch.undo()
    manifest = json.loads((tmp_path / "part" / "checkpoints" / "manifest.json").read_text())
    assert manifest["checkpoints"][-1]["tag"] == "epoch-0002-step-000005"
    state = torch.load(
        tmp_path / "part" / "checkpoints" / "epoch-0002-step-000005.state.pt", weights_only=True
    )
    assert state["global_step"] == 3 + 1  # epoch 1: 3 groups; epoch 2: the first group
    resumed = api.train(resume=str(tmp_path / "part"))
    a, b = _weights(full.run_dir, "epoch-0002"), _weights(resumed.run_dir, "epoch-0002")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]


@pytest.fixture
def one_rank_group():
    """A real gloo process group of one rank in this process (DDP runs its reducer as for many)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _counting(ddp: nn.Module) -> list[list[int]]:
    """Registers a comm hook that records, per all-reduce, the ids of the bucket's parameters."""
    calls: list[list[int]] = []

    def hook(state, bucket):
        calls.append([id(p) for p in bucket.parameters()])
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    ddp.register_comm_hook(None, hook)
    return calls


@pytest.mark.parametrize("k, expected", [(1, 7), (3, 3)])
def test_ddp_all_reduces_once_per_group(one_rank_group, k, expected):
    """7 micro-batches: 7 all-reduces without accumulation, 3 (groups 3 + 3 + 1) with k = 3: the
    non-final micro-batches of a group run under DDP's no_sync()."""
    loader, model = _toy(28, 4)
    ddp = distributed._DDP(model, model)
    calls = _counting(ddp)
    opt, sched = _sgd(model)
    trainer = Trainer(ddp, ClassificationTask(3), opt, sched, device=torch.device("cpu"),
                      accumulate_grad_batches=k)  # fmt: skip
    trainer.fit(loader, None, epochs=1)
    assert len(calls) == expected  # the toy model's 4 tensors fit one bucket


def test_ddp_is_rebuilt_when_a_frozen_layer_starts_training(one_rank_group):
    """DDP averages only the parameters that required grad when it was built: after unfreezing,
    FollowTrainable rebuilds it, the unfrozen weight's gradient goes through the all-reduce, and
    the old wrapper's hooks are gone (they would all-reduce a second time)."""
    _, model = _toy(4, 4)
    conv = model[0].weight
    conv.requires_grad_(False)
    ddp = distributed._DDP(model, model)
    old_calls = _counting(ddp)
    trainer = Trainer(ddp, None, None, None, device=torch.device("cpu"))
    follow = distributed.FollowTrainable()
    follow.on_epoch_start(trainer)
    assert trainer.model is ddp  # nothing changed: no rebuild
    conv.requires_grad_(True)
    follow.on_epoch_start(trainer)
    assert trainer.model is not ddp and "0.weight" in trainer.model._trainable
    new_calls = _counting(trainer.model)
    trainer.model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert old_calls == [] and len(new_calls) == 1 and id(conv) in new_calls[0]
    assert conv.grad is not None
