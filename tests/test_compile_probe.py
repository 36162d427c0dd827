"""--compile auto: the timed probe decides by its rule, leaves the run as it found it, and is recorded."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import TrainConfig, make_config
from cnnlab.engine import compile_probe
from cnnlab.errors import ConfigError


class _Task:
    def loss(self, model, images, targets):
        return {"loss": F.cross_entropy(model(images), targets)}


def _model() -> nn.Module:
    torch.manual_seed(0)
    # BatchNorm and Dropout: the probe's steps would move running statistics and the RNG
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(4 * 6 * 6, 3),
    )  # fmt: skip


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by a marked wrapper (the rule and the restore are under test here,
    not inductor), and step timings given: eager 1.0 s, compiled 0.5 s."""

    class Compiled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    monkeypatch.setattr(torch, "compile", Compiled)
    times = iter([1.0, 0.5])
    monkeypatch.setattr(compile_probe, "_median_step", lambda step, device, repeats: next(times))
    return Compiled


def test_probe_restores_weights_buffers_rng_and_grads(fake_compile):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    compile_probe.probe(model, _Task(), _batch(), torch.device("cpu"), "32", total_steps=10)
    after = model.state_dict()
    # the compile call ran a real training forward/backward (BN statistics moved), then restored
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("steps, compiled", [(1000, True), (0, False)])
def test_probe_rule_saving_over_the_run_against_compile_time(fake_compile, steps, compiled):
    net, record = compile_probe.probe(
        _model(), _Task(), _batch(), torch.device("cpu"), "32", total_steps=steps
    )
    assert record["compiled"] is compiled
    assert isinstance(net, fake_compile) is compiled
    assert record["projected_saving_s"] == pytest.approx(0.5 * steps)
    assert record["eager_step_s"] == 1.0 and record["compiled_step_s"] == 0.5
    assert compiled == (record["projected_saving_s"] > record["compile_s"])


def test_compile_option_values():
    assert make_config(TrainConfig, compile="auto").compile == "auto"
    assert make_config(TrainConfig, compile="true").compile is True
    assert make_config(TrainConfig, compile="false").compile is False
    with pytest.raises(ConfigError, match="compile must be true, false or auto"):
        make_config(TrainConfig, compile="sometimes")


@pytest.mark.slow
def test_train_with_compile_auto_records_the_probe(tmp_path):
    """A real inductor compile of LeNet-5 (tens of seconds on 2 cores): the run trains and run.json
    says what the probe measured and decided."""
    from cnnlab import api

    result = api.train(
        data="builtin:digits", model="lenet5", epochs=2, batch_size=64, lr=0.1, compile="auto",
        out=str(tmp_path), report=False,
    )  # fmt: skip
    probe = json.loads((result.run_dir / "run.json").read_text())["compile_probe"]
    assert probe["compile_s"] > 0 and probe["eager_step_s"] > 0 and probe["compiled_step_s"] > 0
    assert probe["compiled"] == (probe["projected_saving_s"] > probe["compile_s"])
    assert result.test_metrics["accuracy"] > 0.3  # it learned (chance: 0.1)
