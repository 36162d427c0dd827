"""The wait a student has: a whole `cnnlab train` process against the textbook loop's whole process.

    .venv/bin/python benchmarks/bench_whole_run.py [--repeats 3] [--epochs 8] [--batch-size 64]

LeNet-5 on the 5,000-image MNIST sample written as a PNG folder (train/ 4,500 + val/ 500, one folder
per digit; benchmarks/bench_train.py prepares it once), 8 epochs, batch 64:

* cnnlab: ``cnnlab train --data FOLDER --model lenet5 ...`` as a user types it -- start-up, the scan,
  decoding, training, the test evaluation and the HTML report, all included;
* textbook: torchvision ``ImageFolder`` + ``DataLoader(num_workers=2)`` with the same model, optimiser,
  schedule, epochs and batch (bench_train.py's ``child_textbook``), started as its own process;
* cnnlab first run: the same command with an empty cache folder (``CNNLAB_CACHE``), so it scans,
  splits and decodes the files as a student's first run on a folder does; and the same with the
  warm-up child off (``CNNLAB_PREFETCH=0``, cnnlab.data.prefetch), to show what it saves.

Each is a fresh process timed from start to exit, in turns within each repeat (so a change in the
machine's load reaches both alike), after one untimed warm-up of each; the median of the repeats and
their ratio are reported. Issue 25's check: cnnlab's whole process at least 3x faster than the textbook
loop's. Results: benchmarks/results/whole_run.md and .json, with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import save_results
from bench_train import prepare_mnist_folder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def uncompiled_modules() -> int:
    """cnnlab's modules with no current bytecode beside them: each one is compiled from source by
    every process where PYTHONDONTWRITEBYTECODE is set (`make install` compiles them all, as pip does
    for a wheel it installs)."""
    from importlib.util import cache_from_source

    stale = 0
    for source in (ROOT / "src" / "cnnlab").rglob("*.py"):
        cached = Path(cache_from_source(str(source)))
        stale += not cached.is_file() or cached.stat().st_mtime < source.stat().st_mtime
    return stale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args()
    data = prepare_mnist_folder()
    out = Path(tempfile.mkdtemp(prefix="cnnlab-whole-run-"))
    cnnlab = [
        sys.executable, "-m", "cnnlab", "train", "--data", str(data), "--model", "lenet5",
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--out", str(out),
    ]  # fmt: skip
    textbook = [
        sys.executable, str(HERE / "bench_train.py"), "--child", "textbook", str(data),
        str(args.epochs), str(args.batch_size), str(args.lr), "0",
    ]  # fmt: skip
    load_before, stale = os.getloadavg()[0], uncompiled_modules()
    caches = Path(tempfile.mkdtemp(prefix="cnnlab-whole-run-cache-"))

    def first_run(prefetch: bool) -> dict[str, str]:
        """A new, empty cache folder: the run scans, splits and decodes as a first run does;
        CNNLAB_PREFETCH=0 turns off the warm-up child (cnnlab.data.prefetch) to show its share."""
        return os.environ | {
            "CNNLAB_CACHE": tempfile.mkdtemp(dir=caches),
            "CNNLAB_PREFETCH": "1" if prefetch else "0",
        }

    contenders = (
        ("cnnlab", cnnlab, lambda: None),  # caches warm from the warm-up: a re-run
        ("textbook", textbook, lambda: None),
        ("cnnlab first run", cnnlab, lambda: first_run(True)),
        ("cnnlab first run, no warm-up child", cnnlab, lambda: first_run(False)),
    )
    times: dict[str, list[float]] = {name: [] for name, _, _ in contenders}
    for warm in (True, *([False] * args.repeats)):
        for name, cmd, env in contenders:
            elapsed = timed(cmd, env())
            if not warm:
                times[name].append(elapsed)
    reports = sorted(out.glob("*/report.html"))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["textbook"] / med["cnnlab"]
    verdict = "PASS" if ratio >= 3 else "FAIL"
    table = "\n".join(
        [
            f"LeNet-5, MNIST sample as 5,000 PNGs, {args.epochs} epochs, batch {args.batch_size}: "
            f"whole process, median of {args.repeats} (`benchmarks/bench_whole_run.py`)",
            "",
            "| contender | median s | runs (s) |",
            "|---|---:|---|",
            *(
                f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |"
                for k, v in times.items()
            ),
            "",
            f"{verdict}: cnnlab's whole process (report included: {len(reports)} report.html "
            f"written) is {ratio:.2f}x faster than the textbook loop's (issue 25: at least 3x).",
            f"A first run (empty caches: scan, split and decode included) is "
            f"{med['textbook'] / med['cnnlab first run']:.2f}x faster than the textbook loop; "
            f"the warm-up child that scans and decodes while torch loads saves "
            f"{med['cnnlab first run, no warm-up child'] - med['cnnlab first run']:.2f} s of it.",
            f"Load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} (1 min); "
            f"cnnlab modules without current bytecode: {stale} (PYTHONDONTWRITEBYTECODE "
            f"{'set' if os.environ.get('PYTHONDONTWRITEBYTECODE') else 'unset'}).",
        ]
    )
    save_results(
        "whole_run",
        table,
        {"times_s": times, "median_s": med, "ratio": ratio, "epochs": args.epochs,
         "first_run_ratio": med["textbook"] / med["cnnlab first run"],
         "batch_size": args.batch_size, "lr": args.lr, "reports_written": len(reports),
         "uncompiled_modules": stale},
    )  # fmt: skip


if __name__ == "__main__":
    main()
