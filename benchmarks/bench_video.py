"""Video benchmark: on builtin:moving-shapes (a shape moving left or right; every single frame has
the same distribution for both classes), 3D CNNs that see frames in order against per-frame 2D
classifiers with smoothing, same clips, same split, same optimiser and epochs, this machine's CPU.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_video.py                 # the default set
    PYTHONPATH=src .venv/bin/python benchmarks/bench_video.py --models r3d_small,lenet5:mean

Models are ``NAME`` or ``NAME:SMOOTHING`` (2D models). Prints one table (parameters, test clip
accuracy with its 95% bootstrap interval, chance level, training time, median seconds per epoch)
and writes benchmarks/results/video.md and video.json. Target: every 3D model >= 0.90 clip
accuracy; every 2D model near chance (its interval reaches the chance level, or it is within
0.1 of it); exit 1 when missed. ``--threads`` defaults to 1: on 2 shared cores two OpenMP
threads wait on each other (see bench_segmentation.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from _results import save_results

DEFAULT_MODELS = "r3d_small,r3d_18,mc3_18,r2plus1d_18,lenet5:mean,lenet5:majority,resnet18:mean"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--n", type=int, default=400, help="clips (70%% train, 10 val, 20 test)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="frame side in pixels")
    p.add_argument("--directions", type=int, default=2, choices=(2, 4))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target", type=float, default=0.9, help="clip accuracy every 3D model reaches")
    p.add_argument("--out", default=None, help="run folder parent (default: a temporary folder)")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from cnnlab.models import count_parameters
    from cnnlab.video.models import is_3d
    from cnnlab.video.train import load_video_model, train_video

    out = args.out or tempfile.mkdtemp(prefix="cnnlab-bench-video-")
    data = (f"builtin:moving-shapes?n={args.n}&frames={args.frames}&size={args.size}"
            f"&directions={args.directions}&seed=0")  # fmt: skip
    settings = {"data": data, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                "optimizer": "adamw", "schedule": "onecycle", "augment": ("crop",), "seed": 0,
                "device": "cpu", "precision": "32", "val_fraction": 0.1, "test_fraction": 0.2,
                "report": False}  # fmt: skip
    load_before = os.getloadavg()
    rows = []
    for spec in args.models.split(","):
        name, _, smoothing = spec.partition(":")
        run = train_video(model=name, smoothing=smoothing or "mean", out=out, **settings)
        model, _, _ = load_video_model(run.run_dir)
        m = run.test_metrics
        ci = m["confidence_intervals"]["accuracy"]
        counts = m["confusion_matrix"]
        test_n = int(sum(map(sum, counts)))
        chance = max(map(sum, counts)) / test_n  # always answering the largest test class
        epoch_s = [h["epoch_time_s"] for h in run.history]
        rows.append({
            "model": name if is_3d(name) else f"{name} per frame, {smoothing or 'mean'}",
            "kind": "3d" if is_3d(name) else "2d",
            "params": count_parameters(model),
            "accuracy": m["accuracy"], "ci_low": ci["low"], "ci_high": ci["high"],
            "chance": chance, "test_clips": test_n,
            "train_time_s": run.train_time_s,
            "s_per_epoch": statistics.median(epoch_s),
            "train_accuracy": run.history[-1]["train_accuracy"],
        })  # fmt: skip
        print(f"{rows[-1]['model']}: accuracy {m['accuracy']:.3f} in {run.train_time_s:.0f} s",
              file=sys.stderr)  # fmt: skip
    load_after = os.getloadavg()

    def verdict(r: dict) -> bool:
        if r["kind"] == "3d":
            return r["accuracy"] >= args.target
        return r["ci_low"] <= r["chance"] or abs(r["accuracy"] - r["chance"]) <= 0.1

    head = (f"{data}; {args.epochs} epochs, batch {args.batch_size} clips, AdamW one-cycle lr "
            f"{args.lr}, crop augmentation, seed 0; CPU, {args.threads} thread(s), fp32; "
            f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")  # fmt: skip
    lines = [
        head, "",
        "| model | params | test clip accuracy [95% CI] | chance | train accuracy | train time (s) "
        "| s/epoch (median) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in rows:
        goal = f">= {args.target:.2f}" if r["kind"] == "3d" else "near chance"
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['accuracy']:.3f} [{r['ci_low']:.3f}, "
            f"{r['ci_high']:.3f}] | {r['chance']:.3f} | {r['train_accuracy']:.3f} | "
            f"{r['train_time_s']:.0f} | {r['s_per_epoch']:.1f} | {goal}: "
            f"{'met' if verdict(r) else 'MISSED'} |"
        )
    if args.no_save:
        print("\n".join(lines))
    else:
        save_results("video", "\n".join(lines), {
            "settings": settings | {"threads": args.threads, "target": args.target},
            "load_average": {"before": load_before, "after": load_after},
            "command": "benchmarks/bench_video.py " + " ".join(argv or sys.argv[1:]),
            "rows": rows})  # fmt: skip
    return 0 if all(verdict(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
