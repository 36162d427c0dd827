"""Start-up: a command imports only what it needs (issue 25), and a run's time split.

Each check runs the command in a fresh interpreter and reads `sys.modules` when it is done:
`cnnlab --help`, `--version`, the `--help` of a command, `conv` and `metrics` never import torch
(about 2 s), and `cnnlab predict` of a LeNet-5 run imports neither torchvision (about 1 s: the
families built on it import it when such a model is made), matplotlib nor FastAPI. The controls
show the same probe finding those modules where they are imported. Times are measured by
benchmarks/bench_startup.py, never asserted here.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_process import SRC, TIMEOUT

import cnnlab
from cnnlab.cli import main
from cnnlab.engine import timing
from cnnlab.engine.timing import Timings, process_age_s

# Runs `cnnlab.cli.main(argv)` (or a statement) and writes the exit code and the names of the
# loaded modules as JSON to the file named first.
CLI_PROBE = """
import json, sys
path = sys.argv.pop(1)
from cnnlab.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
with open(path, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""
IMPORT_PROBE = """
import json, sys
path = sys.argv.pop(1)
exec(sys.argv[1])
with open(path, "w") as f:
    json.dump({"code": 0, "modules": sorted(sys.modules)}, f)
"""


def probe(tmp_path: Path, script: str, *args: str) -> tuple[int, set[str], str]:
    """(exit code, top-level names of the loaded modules, stdout) of `script` in a fresh process."""
    code, modules, stdout = loaded(tmp_path, script, *args)
    return code, {m.partition(".")[0] for m in modules}, stdout


def loaded(tmp_path: Path, script: str, *args: str) -> tuple[int, set[str], str]:
    """(exit code, full names of the loaded modules, stdout) of `script` in a fresh process."""
    result = tmp_path / "modules.json"
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(result), *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0 and result.is_file(), proc.stderr[-3000:]
    found = json.loads(result.read_text())
    return found["code"], set(found["modules"]), proc.stdout


NEEDS_NO_TORCH = [
    ("--help",),
    ("--version",),
    ("train", "--help"),
    ("conv", "--example", "slide"),
    # the task commands' options come from their configs (cnnlab.tasks.configs), torch-free
    ("segment", "train", "--help"),
    ("detect", "train", "--help"),
    ("video", "--help"),
    ("video", "train", "--help"),
    ("cv", "--help"),
    ("tune", "--help"),
    ("completion", "bash"),  # argcomplete, never torch
    # the zoo listing at its published sizes is recorded (cnnlab/cli/zoo.json)
    ("models",),
    ("models", "--json"),
    ("models", "--task", "detect"),
]


@pytest.mark.parametrize("argv", NEEDS_NO_TORCH, ids=" ".join)
def test_commands_that_need_no_model_do_not_import_torch(argv: tuple[str, ...], tmp_path: Path):
    code, modules, stdout = probe(tmp_path, CLI_PROBE, *argv)
    assert code == 0 and stdout.strip()
    assert "torch" not in modules and "torchvision" not in modules
    if argv[0] != "completion":  # argcomplete is imported only to complete or print the script
        assert "argcomplete" not in modules


def test_metrics_scores_a_csv_without_torch(tmp_path: Path):
    path = tmp_path / "scores.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "score_a", "score_b"])
        w.writerows([["a", 0.9, 0.1], ["b", 0.2, 0.8], ["a", 0.4, 0.6], ["b", 0.3, 0.7]])
    code, modules, stdout = probe(tmp_path, CLI_PROBE, "metrics", str(path), "--json")
    assert code == 0 and json.loads(stdout)["accuracy"] == 0.75
    assert "torch" not in modules


def test_version_names_cnnlab_torch_and_python_without_importing_torch(tmp_path: Path):
    code, modules, stdout = probe(tmp_path, CLI_PROBE, "--version")
    assert code == 0 and "torch" not in modules
    assert stdout.startswith(
        f"cnnlab {cnnlab.__version__} (torch {torch.__version__}, torchvision "
    )
    assert f"Python {sys.version.split()[0]})" in stdout


def test_python_m_cnnlab_help_imports_no_torch():
    """The same through `python -m cnnlab` (what torchrun runs), read from -X importtime."""
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cnnlab", "--help"],
        capture_output=True, text=True, env=env, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0 and "usage: cnnlab" in proc.stdout
    imported = {
        line.rpartition("|")[2].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "cnnlab.cli" in imported  # the list is read right
    assert not {m for m in imported if m.partition(".")[0] in ("torch", "torchvision")}


def test_predict_imports_no_torchvision_matplotlib_or_fastapi(
    run: Path, digits: list[Path], tmp_path
):
    argv = ("predict", str(run), str(digits[0]), "--format", "json")
    code, modules, stdout = probe(tmp_path, CLI_PROBE, *argv)
    assert code == 0 and [Path(p["path"]).name for p in json.loads(stdout)] == [digits[0].name]
    assert "torch" in modules  # the control: the probe sees what a command does import
    assert not {"torchvision", "matplotlib", "fastapi"} & modules


def test_training_never_imports_torch_dynamo(tmp_path: Path):
    """torch._dynamo costs 1.0-1.4 s to import on 2 cores and a run that does not compile never needs
    it: the optimizer (cnnlab.engine.optim) and the FLOP count (models.summary.flops_of) keep
    torch's dynamo wrappers out until it is imported. Training, checkpoints (state_dict) and the
    FLOPs recorded for the run all ran in this process."""
    argv = (
        "train", "--data", "builtin:digits", "--model", "lenet5", "--epochs", "1",
        "--batch-size", "64", "--no-report", "--out", str(tmp_path / "runs"), "--name", "r",
    )  # fmt: skip
    code, modules, _ = loaded(tmp_path, CLI_PROBE, *argv)
    record = json.loads((tmp_path / "runs" / "r" / "run.json").read_text())
    assert code == 0 and record["flops_per_image"] > 0
    assert "torch" in modules and "torch._dynamo" not in modules
    if importlib.util.find_spec("triton") is not None:  # torch's CUDA wheels bring it
        assert "triton" not in modules  # (models.summary._without_triton_import)
    # the control: torch's own optimizer imports it at its first step
    statement = (
        "import torch\np = torch.nn.Parameter(torch.ones(2))\np.grad = torch.ones(2)\n"
        "torch.optim.SGD([p], lr=0.1).step()"
    )
    _, modules, _ = loaded(tmp_path, IMPORT_PROBE, statement)
    assert "torch._dynamo" in modules


def test_flop_count_without_torch_dynamo_is_torchs_count(tmp_path: Path):
    """flops_of counts with torch's FlopCounterMode, its dynamo wrapper bypassed only while counting
    and only while torch._dynamo is not loaded: the same total as torch's own path afterwards."""
    statement = (
        "import json, sys, torch\n"
        "from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode\n"
        "from cnnlab.models import create_model\n"
        "from cnnlab.models.summary import flops_of\n"
        "out = {}\n"
        "for name in ('lenet5', 'lenet5_gap'):\n"
        "    m, x = create_model(name, num_classes=10, in_channels=3), torch.zeros(1, 3, 32, 32)\n"
        "    ours = flops_of(m, x)\n"
        "    out[name] = [ours, 'torch._dynamo' in sys.modules]\n"
        "    with torch.no_grad(), FlopCounterMode(display=False) as c:\n"
        "        m.eval()(x)\n"
        "    out[name].append(c.get_total_flops())\n"
        "raw = _FlopCounterMode.__torch_dispatch__.__wrapped__\n"
        "out['slot'] = getattr(raw, '__dynamo_disable', None) is raw\n"
        "print(json.dumps(out))"
    )
    _, modules, stdout = loaded(tmp_path, IMPORT_PROBE, statement)
    out = json.loads(stdout)
    assert out.pop("slot") is False  # torch's own disabled function there now, not the bypass
    assert out["lenet5"][1] is False  # counted before torch._dynamo was imported
    for ours, _, theirs in out.values():
        assert ours == theirs > 0


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_flop_count_leaves_triton_importable(tmp_path: Path):
    """flops_of imports torch's FLOP counter without triton's runtime (0.09 s of every run) and
    leaves nothing behind: a later import of triton loads it, and the count is torch's."""
    statement = (
        "import json, sys, torch\n"
        "from cnnlab.models import create_model\n"
        "from cnnlab.models.summary import flops_of\n"
        "m, x = create_model('lenet5', num_classes=10, in_channels=1), torch.zeros(1, 1, 32, 32)\n"
        "ours = flops_of(m, x)\n"
        "before = 'triton' in sys.modules\n"
        "import triton.runtime.jit\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "with torch.no_grad(), FlopCounterMode(display=False) as c:\n"
        "    m.eval()(x)\n"
        "print(json.dumps([ours, c.get_total_flops(), before, triton.runtime.jit.__file__]))"
    )
    _, modules, stdout = loaded(tmp_path, IMPORT_PROBE, statement)
    ours, theirs, before, path = json.loads(stdout)
    assert before is False and "triton" in modules and path.endswith("jit.py")
    assert ours == theirs > 0


# Runs `cnnlab.cli.main` as the command line does (argv None: `cnnlab ...`) or as a Python caller
# does (argv given), counting the garbage collector's full collections, and those made while
# cnnlab.api (torch, torchvision, the engine) was being imported; written at exit (a command
# line's process ends in cnnlab.cli.exit_now, which runs the atexit handlers).
GC_PROBE = """
import atexit, gc, json, sys
path, mode = sys.argv.pop(1), sys.argv.pop(1)
full, importing = [], []
def count(phase, info):
    if phase == "stop" and info["generation"] == 2:
        full.append(1)
        api = sys.modules.get("cnnlab.api")
        importing.extend([1] if getattr(getattr(api, "__spec__", None), "_initializing", 0) else [])
gc.callbacks.append(count)
def report():
    with open(path, "w") as f:
        json.dump({"code": 0, "modules": sorted(sys.modules), "full": len(full),
                   "importing": len(importing), "on": gc.isenabled()}, f)
atexit.register(report)
from cnnlab.cli import main
sys.exit(main() if mode == "command-line" else main(sys.argv[1:]))
"""


def test_the_command_line_imports_torch_without_full_garbage_collections(tmp_path: Path):
    """cnnlab.cli.load_api: the command line's process imports the API with the collector paused
    and freezes what the import built, so no full collection walks torch's ~190,000 objects while
    they load, and fewer later (0.1 s each on 2 cores); the collector is on for the command. The
    control: a Python caller's process (argv given) is left alone, and there they happen."""
    counts = {}
    for mode in ("command-line", "python"):
        argv = (
            "train", "--data", "builtin:digits", "--model", "lenet5", "--epochs", "1",
            "--no-report", "--out", str(tmp_path / mode), "--name", "r",
        )  # fmt: skip
        loaded(tmp_path, GC_PROBE, mode, *argv)
        counts[mode] = json.loads((tmp_path / "modules.json").read_text())
        assert (tmp_path / mode / "r" / "run.json").is_file()
    line, python = counts["command-line"], counts["python"]
    assert line["on"] and python["on"]
    assert line["importing"] == 0 and python["importing"] >= 1, counts
    assert line["full"] < python["full"], counts


def test_the_probe_finds_the_heavy_modules_where_they_are_imported(tmp_path: Path):
    """The negative control: the checks above could fail."""
    statement = (
        "import cnnlab.api, cnnlab.report.explain_page, cnnlab.serve.app\n"
        "cnnlab.api.build_model('resnet18', 2, 3, 32, None)"  # a family built on torchvision
    )
    _, modules, _ = probe(tmp_path, IMPORT_PROBE, statement)
    assert {"torch", "torchvision", "matplotlib", "fastapi"} <= modules


def test_the_report_module_imports_matplotlib_only_to_draw(tmp_path: Path):
    """Training's main process writes the page; worker processes import matplotlib and draw
    (cnnlab.report.render), so importing the report's modules must not import it."""
    statement = (
        "import cnnlab.report.html, cnnlab.report.render, cnnlab.report.calibration_section, "
        "cnnlab.report.multilabel_report"
    )
    _, modules, _ = probe(tmp_path, IMPORT_PROBE, statement)
    assert "cnnlab" in modules and "matplotlib" not in modules
    _, modules, _ = probe(tmp_path, IMPORT_PROBE, statement + "; cnnlab.report.html.pyplot()")
    assert "matplotlib" in modules  # the control


FREEZE_PROBE = """
import gc, json, sys
path = sys.argv.pop(1)
from cnnlab.cli import main
main(["conv", "--example", "slide"])  # called with words (a test, a notebook): nothing frozen
given = gc.get_freeze_count()
sys.argv = ["cnnlab", "conv", "--example", "slide"]
main()  # the process's own command line: it ends next
with open(path, "w") as f:
    json.dump({"code": 0, "modules": [], "given": given, "own": gc.get_freeze_count()}, f)
"""


def test_the_command_line_of_the_process_leaves_its_objects_to_exit(tmp_path: Path):
    """`cnnlab` and `python -m cnnlab` freeze the garbage collector when the command is done, so
    the interpreter's shutdown does not collect torch's objects several times over (1.2 s of a
    training process); main(argv) called from Python leaves the collector alone."""
    probe(tmp_path, FREEZE_PROBE)
    found = json.loads((tmp_path / "modules.json").read_text())
    assert found["given"] == 0 and found["own"] > 1000


def test_exit_now_runs_the_exit_handlers_flushes_and_ends(monkeypatch, capsys):
    """A command that loaded torch ends its process at once: the atexit handlers run, the output
    is flushed, then os._exit with the command's code. Controls: without torch, with another
    thread alive, or under a profiler or tracer, it returns and the process ends as usual."""
    from cnnlab import cli

    class Ended(Exception):
        pass

    calls: list = []

    def fake_exit(code: int) -> None:
        calls.append(("exit", code))
        raise Ended

    def ready() -> None:
        monkeypatch.setitem(sys.modules, "torch", torch)
        monkeypatch.setattr(cli.threading, "active_count", lambda: 1)
        monkeypatch.setattr(cli.sys, "gettrace", lambda: None)  # coverage may trace this test
        monkeypatch.setattr(cli.sys, "getprofile", lambda: None)

    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: calls.append("atexit"))
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    ready()
    print("a line the exit must not lose", end="")  # still in the buffer
    with pytest.raises(Ended):
        cli.exit_now(3)
    assert calls == ["atexit", ("exit", 3)]
    assert capsys.readouterr().out == "a line the exit must not lose"
    for control in (
        lambda: monkeypatch.delitem(sys.modules, "torch"),
        lambda: monkeypatch.setattr(cli.threading, "active_count", lambda: 2),
        lambda: monkeypatch.setattr(cli.sys, "getprofile", lambda: object()),
        lambda: monkeypatch.setattr(cli.sys, "gettrace", lambda: object()),
    ):
        calls.clear()
        ready()
        control()
        cli.exit_now(0)  # returns
        assert calls == []


EXIT_PROBE = """
import atexit, sys
import torch  # what a training command has loaded
path = sys.argv.pop(1)
atexit.register(lambda: open(path + ".atexit", "w").close())
print("buffered, no newline", end="")
from cnnlab.cli import main
sys.argv = ["cnnlab", "conv", "--example", "slide"]
code = main()
open(path, "w").close()  # never reached: the process ended in main
"""


@pytest.mark.slow  # a fresh interpreter that imports torch: 2-4 s on 2 busy cores
def test_a_command_process_with_torch_ends_in_main_losing_nothing(tmp_path: Path):
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    mark = tmp_path / "after_main"
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, str(mark)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("buffered, no newline")
    assert proc.stdout.endswith("(agrees)\n")  # the command's last line
    assert (tmp_path / "after_main.atexit").is_file()  # the atexit handler ran
    assert not mark.exists()  # main ended the process


# -- the time split of a run ------------------------------------------------------------------------
def test_timings_count_each_second_once_in_the_phase_it_ends(monkeypatch):
    clock = iter([10.0, 11.0, 13.5, 14.0, 20.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    t = Timings(startup_s=2.0)  # made at 10.0
    t.lap("setup")  # 11.0
    t.lap("scan")  # 13.5
    t.lap("setup")  # 14.0: setup again
    t.lap("train")  # 20.0
    split = t.split()
    assert split == {"startup": 2.0, "setup": 1.5, "scan": 2.5, "train": 6.0, "total": 12.0}
    assert list(split) == ["startup", "setup", "scan", "train", "total"]
    assert t.summary() == (
        "time split (s): start-up 2.00, set-up 1.50, scan 2.50, training 6.00; total 12.00"
    )


def test_process_age_is_the_time_since_the_process_started(tmp_path: Path):
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import time; time.sleep(0.5); from cnnlab.engine import timing; print(timing.process_age_s())"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    out = proc.stdout.strip()
    if process_age_s() is None:  # not Linux: no start-up in the split
        assert out == "None"
        return
    assert 0.49 <= float(out) < 60  # 10 ms clock ticks; a generous bound for a loaded machine


def test_a_trained_run_records_its_time_split(run: Path):
    recorded = json.loads((run / "run.json").read_text())
    split = recorded["time_split_s"]
    phases = ["setup", "scan", "decode", "train", "evaluate"]  # the run has no report
    assert set(phases) <= set(split) and "report" not in split
    assert all(v >= 0 for v in split.values())
    assert split["total"] == pytest.approx(
        sum(v for k, v in split.items() if k != "total"), abs=0.01
    )
    assert split["train"] == pytest.approx(recorded["train_time_s"], abs=0.01)
    if process_age_s() is not None:  # the command line measured its start-up (torch included)
        assert split["startup"] > 0


def test_train_with_v_prints_the_time_split(mixed_folder: Path, tmp_path: Path, capsys):
    code = main(
        ["-v", "train", "--data", str(mixed_folder), "--model", "lenet5", "--epochs", "1",
         "--batch-size", "8", "--precision", "32", "--out", str(tmp_path), "--name", "v"]
    )  # fmt: skip
    assert code == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("time split"))
    recorded = json.loads((tmp_path / "v" / "run.json").read_text())["time_split_s"]
    assert "report" in recorded and f"report {recorded['report']:.2f}" in line
    assert line.endswith(f"total {recorded['total']:.2f}")
