import math

import torch

from cnnlab.engine.optim import lr_factor, param_groups


def test_cosine_after_warmup_matches_torch_cosine_annealing():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    total, warm = 50, 10
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm)
    for step in range(warm, total):
        assert math.isclose(
            lr_factor(step, total, "cosine", warm), opt.param_groups[0]["lr"], abs_tol=1e-9
        )
        opt.step()
        ref.step()


def test_onecycle_rises_then_falls_to_near_zero():
    f = [lr_factor(s, 100, "onecycle", 0) for s in range(100)]
    peak = max(range(100), key=f.__getitem__)
    assert 20 <= peak <= 30 and math.isclose(f[peak], 1.0, rel_tol=0.05)
    assert f[0] < 0.1 and f[-1] < 0.01


def test_no_weight_decay_on_biases_and_norms_and_no_group_for_frozen():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)
    )
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1, lr=1.0)
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    plain = [p for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert all(p.ndim > 1 for p in decayed) and all(p.ndim == 1 for p in plain)
    assert all(p is not model[2].weight for g in groups for p in g["params"])
