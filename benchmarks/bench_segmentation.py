"""Segmentation benchmark: a U-Net reaches mean IoU >= 0.8 on held-out builtin:shapes masks within
15 minutes of CPU training.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_segmentation.py            # the default recipe
    PYTHONPATH=src .venv/bin/python benchmarks/bench_segmentation.py --epochs 4 --n 1000  # quick

Prints the model, image size, settings, the machine's load average (before and after: the machine
may be shared), training time and the test metrics, and saves them with the machine
(benchmarks/results/segmentation.md and .json); exits 1 when the target is missed. ``--threads``
defaults to 1: on a 2-core machine that other jobs also load, PyTorch's two OpenMP threads wait on
each other at every operator (measured here: 12x slower than one thread at load 12).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from _results import save_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--n", type=int, default=2500, help="images generated (80%% train, 10%% val, 10%% test)"
    )
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--model", default="unet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--encoder-variant", default="imagenet")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=900.0, help="training-time limit (15 min)")
    p.add_argument("--target", type=float, default=0.8, help="mean IoU to reach on the test split")
    p.add_argument("--out", default=None, help="run folder parent (default: a temporary folder)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from cnnlab.segment import train_segmentation

    out = args.out or tempfile.mkdtemp(prefix="cnnlab-bench-seg-")
    load_before = os.getloadavg()
    settings = {
        "data": f"builtin:shapes?n={args.n}&size={args.size}&seed=0",
        "model": args.model,
        "encoder": args.encoder,
        "encoder_variant": args.encoder_variant,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": "adamw",
        "schedule": "onecycle",
        "augment": ("flip",),
        "seed": 0,
        "device": "cpu",
        "out": out,
    }
    print(f"settings: {json.dumps(settings)}  threads={args.threads}  cores={os.cpu_count()}")
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    t0 = time.perf_counter()
    result = train_segmentation(**settings)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    m = result.test_metrics or {}
    lines = [
        f"Segmentation (`benchmarks/bench_segmentation.py`): {args.model} + {args.encoder} "
        f"({args.encoder_variant} stem), image size {args.size} px, "
        f"{sum(1 for _ in result.history)} epochs, {args.threads} thread(s), {os.cpu_count()} cores",
        f"settings: {json.dumps(settings)}",
        "",
    ]
    for row in result.history:
        lines.append(
            f"  epoch {int(row['epoch'])}: train_loss {row['train_loss']:.4f}  "
            f"val_miou {row.get('val_miou', float('nan')):.4f}  "
            f"{row['train_images_per_s']:.1f} img/s  {row['epoch_time_s']:.0f} s"
        )
    per = {k: v["iou"] for k, v in m.get("per_class", {}).items()}
    ok = (m.get("mean_iou") or 0) >= args.target and result.train_time_s <= args.budget_s
    lines += [
        "",
        f"training time: {result.train_time_s:.0f} s (wall incl. data + test: {wall:.0f} s)",
        f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
        f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}",
        "test per-class IoU: " + ", ".join(f"{k} {v:.3f}" for k, v in per.items() if v is not None),
        f"test mean IoU: {m.get('mean_iou', float('nan')):.4f}  pixel accuracy: "
        f"{m.get('pixel_accuracy', float('nan')):.4f}  mean Dice: {m.get('mean_dice', 0):.4f}",
        f"run: {result.run_dir}",
        ("PASS" if ok else "FAIL") + f": mean IoU >= {args.target} within {args.budget_s:.0f} s",
    ]
    save_results(
        "segmentation",
        "\n".join(lines),
        {
            "settings": settings, "threads": args.threads, "train_time_s": result.train_time_s,
            "wall_s": wall, "history": result.history, "test_metrics": m, "target": args.target,
            "budget_s": args.budget_s, "ok": ok, "load_before": load_before,
            "load_after": load_after, "run": str(result.run_dir),
        },
    )  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
