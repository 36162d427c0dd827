"""Start-up: the whole-process wall time of commands that need no model, against importing torch.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_startup.py [--repeats 5]

Times `python -m cnnlab --help`, `--version` and `conv --example slide` (this checkout's sources)
and `python -c "import torch, torchvision"`, each a fresh process from start to exit, in turns
within each repeat (so a change in the machine's load reaches all of them alike), after one untimed
warm-up of each (the first run reads the files from disk). Reports the median of the repeats, its
ratio to the torch import, the number of modules each command loads and whether torch is among
them (one more, untimed, run each). Issue 25's check: `cnnlab --help` takes at most a quarter of
the torch import. Results: benchmarks/results/startup.md and .json, with the machine.

Whole-process times depend on the machine's load: compare only figures of one run of this script,
on a quiet machine (the load average before and after is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import save_results

SRC = Path(__file__).resolve().parents[1] / "src"
TORCH = "import torch, torchvision"
COMMANDS: dict[str, list[str]] = {
    "cnnlab --help": ["-m", "cnnlab", "--help"],
    "cnnlab --version": ["-m", "cnnlab", "--version"],
    "cnnlab conv --example slide": ["-m", "cnnlab", "conv", "--example", "slide"],
    TORCH: ["-c", TORCH],
}
# Runs a command's argv in this interpreter as `python -m` / `-c` would, then prints what it loaded.
COUNT = """
import json, runpy, sys
args = sys.argv[1:]
try:
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        exec(args[1])
except SystemExit:
    pass
print("MODULES " + json.dumps([len(sys.modules), "torch" in sys.modules]), file=sys.stderr)
"""


def child_env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def wall_s(argv: list[str]) -> float:
    """Seconds from starting `python ARGV` to its exit (output discarded)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, *argv], env=child_env(), check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - t0


def modules_loaded(argv: list[str]) -> tuple[int, bool]:
    """(number of modules in sys.modules at the end, whether torch is one) for `python ARGV`."""
    proc = subprocess.run(
        [sys.executable, "-c", COUNT, *argv], env=child_env(), check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES "))
    count, torch_loaded = json.loads(line.removeprefix("MODULES "))
    return count, torch_loaded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each command (median)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    load_before = os.getloadavg()
    for cmd in COMMANDS.values():  # warm-up: the files read once, into the page cache
        wall_s(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            times[name].append(wall_s(cmd))
    load_after = os.getloadavg()
    loaded = {name: modules_loaded(cmd) for name, cmd in COMMANDS.items()}

    medians = {name: statistics.median(v) for name, v in times.items()}
    base = medians[TORCH]
    rows = [
        "| command | median s | / torch import | modules | torch | runs (s) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, v in times.items():
        count, has_torch = loaded[name]
        runs = ", ".join(f"{x:.3f}" for x in v)
        rows.append(
            f"| `{name}` | {medians[name]:.3f} | {medians[name] / base:.2f} | {count:,} | "
            f"{'yes' if has_torch else 'no'} | {runs} |"
        )
    ratio = medians["cnnlab --help"] / base
    verdict = "PASS" if ratio <= 0.25 else "FAIL"
    table = "\n".join(
        [
            f"Start-up, whole process, median of {args.repeats} (`benchmarks/bench_startup.py`); "
            f"Python {sys.version.split()[0]}.",
            "",
            *rows,
            "",
            f'{verdict}: `cnnlab --help` takes {ratio:.2f} of `python -c "{TORCH}"` '
            "(issue 25: at most 0.25).",
            f"Load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min).",
        ]
    )
    payload = {
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "commands": {
            name: {
                "argv": COMMANDS[name],
                "median_s": medians[name],
                "runs_s": times[name],
                "ratio_to_torch_import": medians[name] / base,
                "modules": loaded[name][0],
                "imports_torch": loaded[name][1],
            }
            for name in COMMANDS
        },
        "help_ratio": ratio,
        "help_ratio_ok": ratio <= 0.25,
        "load_before": load_before,
        "load_after": load_after,
    }
    save_results("startup", table, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
