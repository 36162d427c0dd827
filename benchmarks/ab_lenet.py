"""Side by side: LeNet-5 training throughput of two cnnlab source trees (say a commit before and after a
change), alternating the order per repeat, one `bench_train.py` "cnnlab" child per run. Prints each run,
the medians and the machine (benchmarks/results/ab_lenet.md and .json); compare only within one run of
this script.

    git worktree add /tmp/before d280e18
    PYTHONPATH=src python benchmarks/ab_lenet.py /tmp/before . --repeats 5 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="source tree A (has src/ and benchmarks/)")
    ap.add_argument("after", type=Path, help="source tree B")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_train
    from _results import save_results

    mnist = str(bench_train.prepare_mnist_folder())
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    speeds: dict[str, list[float]] = {k: [] for k in trees}
    for r in range(args.repeats):
        for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
            root = trees[name]
            cmd = [sys.executable, str(root / "benchmarks" / "bench_train.py"), "--child", "cnnlab",
                   mnist, str(args.epochs), "128", "0.1", str(r)]  # fmt: skip
            env = os.environ | {"PYTHONPATH": str(root / "src")}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            ips = statistics.median(h["images_per_s"] for h in run["history"][1:])
            speeds[name].append(ips)
            print(
                f"{name} repeat {r}: {ips:,.0f} img/s, val {run['history'][-1]['val_accuracy']:.4f}"
            )
    rows = [
        f"LeNet-5 training throughput of two source trees, {args.epochs} epochs, median of "
        f"{args.repeats} (`benchmarks/ab_lenet.py`).",
        "",
        "| tree | median img/s | runs |",
        "|---|---:|---|",
    ]
    for name, v in speeds.items():
        runs = ", ".join(f"{x:,.0f}" for x in v)
        rows.append(f"| {name} ({trees[name]}) | {statistics.median(v):,.0f} | {runs} |")
    payload = {"epochs": args.epochs, "trees": {k: str(v) for k, v in trees.items()}}
    save_results("ab_lenet", "\n".join(rows), payload | {"images_per_s": speeds})


if __name__ == "__main__":
    main()
