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


# -- cnnlab's SGD and AdamW: torch's, with the dynamo wrappers only once torch._dynamo is loaded ----
# Both paths are compared with torch's own optimizer on the same model, data and hyper-parameters:
# in a fresh process (torch._dynamo not imported: the plain path) and in this one (imported).
SAME_STEPS = """
import json, sys
import torch
from cnnlab.engine import optim

def train(cls, lr=0.1, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3))
    groups = optim.param_groups(model, weight_decay=0.05, lr=lr)
    opt = cls(groups, lr=lr, **kw)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append(1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    state = opt.state_dict()
    again = cls(optim.param_groups(model, weight_decay=0.05, lr=lr), lr=lr, **kw)
    again.load_state_dict(state)
    return model.state_dict(), state, again.state_dict(), len(calls)

def same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
    return a == b

cases = [
    ("SGD", dict(momentum=0.9, nesterov=True, fused=True)),
    ("SGD", dict(momentum=0.9, foreach=True)),
    ("SGD", dict()),
    ("AdamW", dict(fused=True)),
    ("AdamW", dict(foreach=False)),
]
ours = [train(getattr(optim, name), **kw) for name, kw in cases]  # before torch's own import dynamo
report = {"dynamo": "torch._dynamo" in sys.modules}
report["isinstance"] = isinstance(optim.SGD([torch.nn.Parameter(torch.ones(1))]), torch.optim.SGD)
for (name, kw), mine in zip(cases, ours):
    theirs = train(getattr(torch.optim, name), **kw)
    moved = not same(mine[0], train(getattr(torch.optim, name), lr=0.05, **kw)[0])
    report[f"{name} {kw}"] = [same(mine, theirs), mine[3], moved, type(mine[1]) is dict]
print(json.dumps(report))
"""


def _same_steps_report(env_extra: dict[str, str] | None = None) -> dict:
    import json
    import os
    import subprocess
    import sys

    from cli_process import SRC, TIMEOUT

    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", SAME_STEPS], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_cnnlab_optimizers_step_as_torchs_without_importing_torch_dynamo():
    report = _same_steps_report()
    assert report.pop("dynamo") is False and report.pop("isinstance") is True
    for case, (same, hook_calls, moved, _) in report.items():
        # bit-identical parameters, buffers, optimizer state (saved and loaded back); one pre-hook
        # call per step, as torch's; and the control: another learning rate does change them
        assert same and hook_calls == 5 and moved, case


def test_cnnlab_optimizers_step_as_torchs_once_torch_dynamo_is_loaded():
    import torch._dynamo  # noqa: F401  (the path a compiled run takes: torch's own wrappers)

    namespace: dict = {}
    exec(SAME_STEPS.replace("print(json.dumps(report))", ""), namespace)
    report = namespace["report"]
    assert report.pop("dynamo") is True
    report.pop("isinstance")
    for case, (same, hook_calls, moved, _) in report.items():
        assert same and hook_calls == 5 and moved, case
