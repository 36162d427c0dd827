"""Checkpoints of `--compile` runs hold the plain model's keys and load into an uncompiled model.

torch.compile wraps the model in an OptimizedModule whose state_dict prefixes every key with
`_orig_mod.`; the Checkpoint callback saves the unwrapped model's instead.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cnnlab import api
from cnnlab.config import PreprocessSpec
from cnnlab.engine import callbacks as cbs
from cnnlab.engine.checkpoint import CheckpointManager, save_weights
from cnnlab.engine.trainer import Trainer


def _metadata() -> dict:
    spec = PreprocessSpec(16, 1, (0.5,), (0.25,))
    return {"model": "lenet5", "num_classes": 10, "in_channels": 1, "image_size": 16,
            "class_names": [str(i) for i in range(10)], "preprocess": spec.to_dict()}  # fmt: skip


def _check_same_model(loaded: torch.nn.Module, plain: torch.nn.Module) -> None:
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), plain.eval()(x))
    for (name, a), b in zip(loaded.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_checkpoint_of_a_compiled_model_has_plain_keys_and_loads_uncompiled(tmp_path):
    torch.manual_seed(0)
    plain = api.build_model("lenet5", 10, 1, 16)
    compiled = torch.compile(plain)  # wrapping alone gives the prefixed keys; nothing compiles yet
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    trainer = Trainer(compiled, None, opt, sched, device=torch.device("cpu"))
    callback = cbs.Checkpoint(CheckpointManager(tmp_path / "checkpoints"), _metadata, "train_loss")
    callback.on_epoch_end(trainer, {"train_loss": 1.0})
    saved = load_file(tmp_path / "checkpoints" / "epoch-0001.safetensors")
    assert sorted(saved) == sorted(plain.state_dict())
    loaded, meta, _ = api.load_checkpoint_model(tmp_path / "checkpoints" / "epoch-0001.safetensors")
    assert not hasattr(loaded, "_orig_mod") and meta["model"] == "lenet5"
    _check_same_model(loaded, plain)


def test_older_checkpoint_with_compile_prefixed_keys_still_loads(tmp_path):
    """What cnnlab wrote for --compile runs before: every key under `_orig_mod.`."""
    torch.manual_seed(1)
    plain = api.build_model("lenet5", 10, 1, 16)
    prefixed = {f"_orig_mod.{k}": v for k, v in plain.state_dict().items()}
    save_weights(tmp_path / "old.safetensors", prefixed, _metadata())
    loaded, _, _ = api.load_checkpoint_model(tmp_path / "old.safetensors")
    _check_same_model(loaded, plain)


@pytest.mark.slow
def test_compiled_run_trains_resumes_and_evaluates_without_compiling(tmp_path):
    """A real --compile run (inductor on CPU: slow to compile): plain keys in every checkpoint,
    resumable (the resume compiles again), and `evaluate` (an uncompiled model) reproduces the
    run's own test metrics."""
    kw = {"data": "builtin:digits", "model": "lenet5", "batch_size": 64, "lr": 0.1,
          "report": False, "seed": 0, "compile": True, "out": str(tmp_path)}  # fmt: skip
    api.train(name="c", epochs=1, **kw)
    run = api.train(resume=str(tmp_path / "c"), epochs=2)
    assert [h["epoch"] for h in run.history] == [1, 2]
    plain_keys = sorted(api.build_model("lenet5", 10, 1, 16).state_dict())
    for f in sorted((run.run_dir / "checkpoints").glob("*.safetensors")):
        assert sorted(load_file(f)) == plain_keys, f.name
    want = json.loads((run.run_dir / "test_metrics.json").read_text())
    again = api.evaluate(run.run_dir, report=False)
    assert want["accuracy"] > 0.3  # it learned (chance: 0.1)
    # inference runs fp32 on CPU by default, at the end of training as in `evaluate`: exact
    assert json.loads(json.dumps(again["metrics"])) == want  # as JSON: top-k's keys are strings
