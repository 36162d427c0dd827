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
    """The ImageNet-size GPU benchmark's code path, shrunk to the CPU (ResNet-18, 64 pictures of 32 px)."""
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
    jpegs = sorted((tmp_path / "data" / "gpu-jpeg-64-32").glob("*/*.jpg"))
    assert len(jpegs) == 64 and len({p.parent.name for p in jpegs}) == 5
    rows = result["results"]
    assert {"cnnlab-synthetic", "cnnlab-jpeg"} <= set(rows)
    for r in rows.values():
        assert r["images_per_s"] > 0 and len(r["epoch_images_per_s"]) == 2
        assert r["achieved_flops"] == pytest.approx(3 * r["flops_per_image"] * r["images_per_s"])
    assert "cnnlab JPEG / synthetic data" in (tmp_path / "results" / "gpu-smoke.md").read_text()


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
