"""The lecture's five families on the same work: builtin:mnist-sample, same budget, this machine's CPU.

    .venv/bin/python benchmarks/bench_families.py [--epochs 3] [--shots 200]

For each model: test accuracy, parameters, FLOPs per image, training images/s (median epoch after the first) and
prediction latency (one image, median of 50 calls, eval mode, inference_mode). Results: benchmarks/results/families.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _results import save_results

from cnnlab import api
from cnnlab.models import count_flops, count_parameters

# One of each family by default (--models adds vgg16_bn, resnet50, ... at a few minutes each on 2 cores).
MODELS = ["lenet5", "lenet5_classic", "alexnet", "vgg11_bn", "resnet18", "googlenet"]


def latency_ms(model: torch.nn.Module, shape: tuple[int, ...], reps: int = 50) -> float:
    x = torch.randn(1, *shape)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--shots", type=int, default=100, help="training images per class (None: all 4,000)"
    )
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    rows = [
        "| model | test acc | params | FLOPs/image | train img/s | predict latency (ms) | precision |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    results = {}
    for name in args.models.split(","):
        run = api.train(
            data="builtin:mnist-sample",
            model=name,
            epochs=args.epochs,
            shots=args.shots,
            batch_size=64,
            lr=0.02,
            out="/tmp/cnnlab-bench/families",
            report=False,
        )
        model, meta, _ = api.load_checkpoint_model(run.run_dir)
        size = meta["preprocess"]["image_size"]
        shape = (meta["in_channels"], size, size)
        ips = [h["train_images_per_s"] for h in run.history]
        info = json.loads((run.run_dir / "run.json").read_text())
        r = {
            "test_accuracy": run.test_metrics["accuracy"],
            "params": count_parameters(model),
            "flops": count_flops(model, size, meta["in_channels"]),
            "train_images_per_s": statistics.median(ips[1:] or ips),
            "latency_ms": latency_ms(model, shape),
            "precision": info["precision"],
        }
        results[name] = r
        rows.append(
            f"| {name} | {r['test_accuracy']:.3f} | {r['params']:,} | {r['flops']:,} | "
            f"{r['train_images_per_s']:,.0f} | {r['latency_ms']:.2f} | {r['precision']} |"
        )
        print(rows[-1], flush=True)
    header = (
        f"builtin:mnist-sample, {args.shots} training images per class, {args.epochs} epochs, batch 64, "
        f"SGD one-cycle lr 0.02, 28 px, 1 channel; {torch.get_num_threads()} threads\n\n"
    )
    save_results("families", header + "\n".join(rows), results)


if __name__ == "__main__":
    main()
