"""`cnnlab bench`: finds the checkout's benchmark scripts, forwards options, and fails in one line when it cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import benchmarks_dir, main

ROOT = Path(__file__).resolve().parents[1]


def test_bench_list_names_every_script_in_the_checkout(capsys):
    assert benchmarks_dir() == ROOT / "benchmarks"
    assert main(["bench", "list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == sorted(
        p.stem[len("bench_") :] for p in (ROOT / "benchmarks").glob("bench_*.py")
    )
    assert "train" in listed and "gpu" in listed


def test_bench_forwards_options_and_the_exit_status(tmp_path, monkeypatch):
    (tmp_path / "bench_echo.py").write_text(
        "import json, sys\nopen(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))\nsys.exit(3)\n"
    )
    monkeypatch.setenv("CNNLAB_BENCHMARKS", str(tmp_path))
    out = tmp_path / "argv.json"
    assert main(["bench", "echo", str(out), "--repeats", "5", "--skip", "lenet"]) == 3
    assert json.loads(out.read_text()) == ["--repeats", "5", "--skip", "lenet"]


def test_bench_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    assert main(["bench", "trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'trian'" in err and "did you mean" in err and "Traceback" not in err
    monkeypatch.setenv("CNNLAB_BENCHMARKS", str(tmp_path / "none"))
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert (
        "no benchmarks in" in err and "pip install -e '.[bench]'" in err
    )  # brackets are text, not markup


def test_error_messages_keep_square_brackets_of_paths(tmp_path, capsys):
    missing = tmp_path / "scan[1]" / "run"
    assert main(["predict", str(missing), "x.png"]) == 2
    assert "scan[1]" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_every_contender_on_the_cpu(tmp_path):
    """The ImageNet-size GPU benchmark's code path, shrunk to the CPU (ResNet-18, 64 pictures of 64 px,
    where cnnlab's ResNet-18 and timm's are one network, so their images/s compare like work)."""
    env = {
        "CNNLAB_BENCH_DATA": str(tmp_path / "data"),
        "CNNLAB_BENCH_RESULTS": str(tmp_path / "results"),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke"],
        env=os.environ | env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "results" / "gpu-smoke.json").read_text())
    jpegs = sorted((tmp_path / "data" / "gpu-jpeg-64-64").glob("*/*.jpg"))
    assert len(jpegs) == 64 and len({p.parent.name for p in jpegs}) == 5
    rows = result["results"]
    assert {"cnnlab-synthetic", "cnnlab-jpeg"} <= set(rows)
    for r in rows.values():
        assert r["images_per_s"] > 0 and len(r["epoch_images_per_s"]) == 2
        assert r["achieved_flops"] == pytest.approx(3 * r["flops_per_image"] * r["images_per_s"])
    table = (tmp_path / "results" / "gpu-smoke.md").read_text()
    assert "cnnlab JPEG / synthetic data" in table
    if "timm" in rows:  # the same network: torchvision's ResNet-18 and timm's count alike
        assert rows["timm"]["flops_per_image"] == rows["cnnlab-jpeg"]["flops_per_image"]
        assert "Not the same network" not in table


# -- every results file names the machine it was measured on ---------------------------------------
def _results_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _results
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return _results


def test_every_benchmark_saves_its_results_through_save_results():
    import ast

    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "_results.py")
    assert {"bench_train.py", "bench_startup.py", "ab_lenet.py"} <= {p.name for p in scripts}
    for path in scripts:
        calls = {
            node.func.id
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert "save_results" in calls, f"{path.name} does not save through _results.save_results"


def test_save_results_names_cpu_capability_bf16_and_threads(tmp_path):
    import torch

    save_results = _results_module().save_results
    md = save_results("probe", "| a |\n|---|\n| 1 |", {"figure": 1.5}, folder=tmp_path)
    machine = json.loads((tmp_path / "probe.json").read_text())["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["native_bf16"] == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert machine["torch_threads"] == torch.get_num_threads() and machine["cpu_model"]
    line = md.read_text().splitlines()[-1]
    assert line.startswith(f"Machine: {machine['cpu_model']}, {machine['cpu_capability']}, ")
    assert "bf16" in line and f"{machine['torch_threads']} threads" in line
    # a payload read back from an earlier file (re-rendered) keeps the machine it was measured on
    earlier = dict(machine, cpu_model="Elsewhere CPU", torch_threads=64)
    save_results("probe", "| a |", {"figure": 1.5, "machine": earlier}, folder=tmp_path)
    assert json.loads((tmp_path / "probe.json").read_text())["machine"] == earlier
    assert "Machine: Elsewhere CPU" in (tmp_path / "probe.md").read_text()


@pytest.mark.slow
def test_startup_benchmark_smoke_runs(tmp_path):
    env = {"CNNLAB_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_startup.py"), "--repeats", "1"],
        env=os.environ | env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "startup.json").read_text())
    commands = result["commands"]
    assert not commands["cnnlab --help"]["imports_torch"]
    assert commands["import torch, torchvision"]["imports_torch"]
    assert commands["import torch, torchvision"]["ratio_to_torch_import"] == 1.0
    assert "cnnlab --help` takes" in (tmp_path / "startup.md").read_text()


@pytest.mark.slow
def test_imbalance_benchmark_smoke_writes_its_table_with_the_machine(tmp_path):
    """bench_imbalance.py end to end at toy size: the folder it builds, every method's row, and the
    results saved through _results.save_results (with the machine)."""
    env = {"CNNLAB_BENCH_RESULTS": str(tmp_path / "results")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_imbalance.py"), "--seeds", "0",
         "--epochs", "1", "--train-per-class", "50", "--eval-per-class", "10"],
        env=os.environ | env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "results" / "imbalance.json").read_text())
    assert result["dataset"]["counts"]["train"] == {
        "circle": 50, "square": 50, "triangle": 1, "cross": 50, "diamond": 50
    }  # fmt: skip
    assert set(result["summary"]) == {"none", "weights", "sampler", "focal"}
    assert result["machine"]["cpu_count"] >= 1
    table = (tmp_path / "results" / "imbalance.md").read_text()
    assert "| sampler |" in table and "Machine:" in table


@pytest.mark.slow
def test_recipes_benchmark_quick_writes_every_row_with_the_machine(tmp_path):
    """bench_recipes.py --quick end to end: every row, the loader costs, the TTA row (a number
    when evaluate takes tta=, else n/a) and the machine, saved through _results.save_results."""
    env = {"CNNLAB_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_recipes.py"), "--quick"],
        env=os.environ | env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "recipes.json").read_text())
    rows = result["rows"]
    assert {"default", "light", "standard", "strong", "strong + EMA", "strong + EMA + TTA"} <= set(
        rows
    )
    assert any(name.startswith("mobilenet_v3_small") for name in rows)
    assert set(result["loader_images_per_s"]) == {
        "default", "--recipe light", "--recipe standard", "--recipe strong"
    }  # fmt: skip
    table = (tmp_path / "recipes.md").read_text()
    assert "Machine:" in table and "QUICK" in table
    assert ("n/a (no --tta)" in table) == (result["tta"] is None)
