"""Training recipes on a small real set: what each of --recipe, --ema, TTA and a modern backbone adds.

    PYTHONPATH=src python benchmarks/bench_recipes.py                  # the full run (see below)
    CNNLAB_BENCH_RESULTS=/tmp/smoke PYTHONPATH=src python benchmarks/bench_recipes.py --quick

Data: ``builtin:mnist-sample`` (real MNIST digits, 28 px, 1 channel) with ``--shots`` training
images per class (100: 1,000 images), its own validation and test splits. Every row trains the same
model (``--model``, ResNet-18 by default, small-input stem at 28 px) with the same budget (epochs,
batch, SGD one-cycle, lr), for each seed of ``--seeds``, and reports test accuracy as the mean and
95 % Student-t interval over the seeds, and the paired difference against the default row (same
seed, same split):

* default: today's defaults (``--augment crop``);
* light / standard / strong: ``--recipe NAME`` (docs/recipes.md);
* strong + EMA: ``--recipe strong --ema DECAY`` (0.99 by default: a run of ~250 optimizer steps
  needs a half-life well below that, ln 2 / (1 - 0.99) = 69 steps; 0.999 would still remember the
  random start);
* light + EMA: ``--recipe light --ema DECAY`` (a light recipe suits a small model: LeNet-5 cannot
  fit RandAugment's and mixing's harder images in a short run);
* strong + EMA + TTA, light + EMA + TTA: the same runs scored by
  ``cnnlab.api.evaluate(run, tta=--tta)`` (``shift`` by default: digits must not be mirrored);
* backbones at equal wall time (``--modern none``: no such row): ``--modern``
  (mobilenet_v3_small) against ResNet-18, both with strong + EMA; the modern model gets as many
  epochs as fit in ResNet-18's measured training time (from a one-epoch probe of each, seed 0).

Loader cost: each recipe's batches alone (no model) from a TensorLoader on the training device,
images/s at 1 x 28 x 28 and 3 x 32 x 32 (random uint8, batch 64: the cost does not depend on the
pixels), so the price of each augmentation is visible apart from the model's.

Defaults are the full run for a quiet machine: 3 seeds x 6 trainings + 2 probes + 3 backbone runs of
ResNet-18-sized models on 1,000 images for 15 epochs (minutes on a GPU; on 2 CPU cores an hour or
more: an estimate, not a measurement). ``--quick`` is a smoke run (1 seed, 1 epoch, 10 images per
class, LeNet-5) that checks the script end to end; its numbers mean nothing. Results:
benchmarks/results/NAME.md and .json (``--name``, default ``recipes``). Two runs are recorded:

    python benchmarks/bench_recipes.py --epochs 6                       # recipes.md: ResNet-18,
    #   ~100 optimizer steps, and the modern backbone at equal wall time
    python benchmarks/bench_recipes.py --model lenet5 --epochs 60 --modern none --name recipes-long
    #   recipes-long.md: LeNet-5, ~960 optimizer steps, where augmentation has time to pay
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

from cnnlab import api  # noqa: E402
from cnnlab.config import RECIPES  # noqa: E402
from cnnlab.data.loader import TensorLoader  # noqa: E402
from cnnlab.engine.devices import resolve_device  # noqa: E402
from cnnlab.metrics.folds import fold_interval  # noqa: E402


def rows_to_run(ema: float) -> dict[str, dict[str, Any]]:
    """Row name -> the training options it adds to the shared budget."""
    return {
        "default": {},
        "light": {"recipe": "light"},
        "standard": {"recipe": "standard"},
        "strong": {"recipe": "strong"},
        "strong + EMA": {"recipe": "strong", "ema": ema},
        "light + EMA": {"recipe": "light", "ema": ema},
    }


def has_tta() -> bool:
    return "tta" in inspect.signature(api.evaluate).parameters


def loader_images_per_s(augment: tuple[str, ...], shape: tuple[int, int], device: torch.device,
                        batches: int = 40, batch: int = 64) -> float:  # fmt: skip
    """Images/s of a TensorLoader making `batches` augmented batches on `device` (no model)."""
    c, s = shape
    n = batches * batch
    images = torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8).to(device)
    targets = (torch.arange(n) % 10).to(device)
    loader = TensorLoader(images, targets, torch.full((c,), 0.5, device=device),
                          torch.full((c,), 0.25, device=device), batch, shuffle=True,
                          augment=augment, seed=0, drop_last=True, num_classes=10)  # fmt: skip
    for _ in loader.batches(0):  # warm-up epoch (v2 import, kernels)
        pass
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _batch in loader.batches(1):
        pass
    sync()
    return n / (time.perf_counter() - t0)


def train(
    options: dict[str, Any], seed: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    run = api.train(
        data="builtin:mnist-sample", shots=args.shots, model=args.model, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=seed, out=str(out), report=False,
        device=args.device, **options,
    )  # fmt: skip
    record = json.loads((run.run_dir / "run.json").read_text())
    return {"run": run, "test_accuracy": run.test_metrics["accuracy"],
            "train_time_s": run.train_time_s, "final_weights": record.get("final_weights")}  # fmt: skip


def summary(values: list[float], baseline: list[float] | None) -> dict[str, Any]:
    out = {"values": values, **fold_interval(values, bounds=(0.0, 1.0))}
    if baseline is not None and len(baseline) == len(values):
        out["paired_difference"] = fold_interval(
            [a - b for a, b in zip(values, baseline, strict=True)]
        )
    return out


def cell(s: dict[str, Any]) -> str:
    if s.get("mean") is None:
        return "n/a"
    if s.get("low") is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def diff_cell(s: dict[str, Any]) -> str:
    d = s.get("paired_difference")
    if not d or d.get("mean") is None:
        return "-"
    if d.get("low") is None:
        return f"{100 * d['mean']:+.1f}"
    return f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def modern_row(
    backbone: dict[str, Any], seeds: list[int], args: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]], out: Path,
) -> tuple[str, dict[str, float], float, list[dict[str, Any]]]:  # fmt: skip
    """The modern backbone with ``backbone``'s options for as many epochs as fit in the median
    strong + EMA run's training time (epoch times from a one-epoch probe of each model)."""
    probe_args = argparse.Namespace(**(vars(args) | {"epochs": 1}))
    per_epoch = {}
    for model in (args.model, args.modern):
        probe = train(backbone, seeds[0], argparse.Namespace(**(vars(probe_args) | {"model": model})),
                      out / f"probe-{model}")  # fmt: skip
        per_epoch[model] = statistics.median(h["epoch_time_s"] for h in probe["run"].history)
    budget_s = statistics.median(r["train_time_s"] for r in runs["strong + EMA"])
    modern_epochs = max(1, round(budget_s / per_epoch[args.modern]))
    modern_args = argparse.Namespace(
        **(vars(args) | {"model": args.modern, "epochs": modern_epochs})
    )
    modern_runs = [train(backbone, seed, modern_args, out / "modern") for seed in seeds]
    modern_name = f"{args.modern} (strong + EMA, {modern_epochs} epochs)"
    return modern_name, per_epoch, budget_s, modern_runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--shots", type=int, default=100, help="training images per class")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument(
        "--modern", default="mobilenet_v3_small", help="the modern backbone ('none': no such row)"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--ema", type=float, default=0.99)
    ap.add_argument(
        "--tta", default="shift", help="what the TTA row asks evaluate for (digits: no flip)"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch, 10 shots")
    ap.add_argument(
        "--name", default="recipes", help="results file stem (benchmarks/results/NAME.md, .json)"
    )
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.shots, args.model = "0", 1, 10, "lenet5"
    seeds = [int(s) for s in args.seeds.split(",")]
    load_before = os.getloadavg()[0]  # the train s column means something only on a quiet machine
    device = resolve_device(args.device)
    out = Path(tempfile.mkdtemp(prefix="cnnlab-bench-recipes-"))

    # loader cost of each recipe (and of each name alone), apart from any model
    loader_rows: dict[str, dict[str, float]] = {}
    costs = {
        "default": ("crop",),
        **{f"--recipe {k}": v for k, v in RECIPES.items() if k != "none"},
    }
    for name, augment in costs.items():
        loader_rows[name] = {f"{c}x{s}x{s}": loader_images_per_s(augment, (c, s), device)
                             for c, s in ((1, 28), (3, 32))}  # fmt: skip
        print(name, loader_rows[name], flush=True)

    results: dict[str, list[float]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, options in rows_to_run(args.ema).items():
        runs[name] = [train(options, seed, args, out / name.replace(" ", "")) for seed in seeds]
        results[name] = [r["test_accuracy"] for r in runs[name]]
        print(name, results[name], flush=True)
    for base in ("strong + EMA", "light + EMA"):  # the same runs, scored with test-time views
        results[f"{base} + TTA"] = [
            api.evaluate(r["run"].run_dir, tta=args.tta, report=False, device=args.device)[
                "metrics"]["accuracy"]
            for r in runs[base]
        ] if has_tta() else []  # fmt: skip

    # backbones at equal wall time, both with strong + EMA: epochs of the modern model from probes
    backbone = {"recipe": "strong", "ema": args.ema}
    modern_runs: list[dict[str, Any]] = []
    modern_name, per_epoch, budget_s = "", {}, 0.0
    if args.modern != "none":
        modern_name, per_epoch, budget_s, modern_runs = modern_row(backbone, seeds, args, runs, out)
        results[modern_name] = [r["test_accuracy"] for r in modern_runs]
    baseline = results["default"]
    payload: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items()} | {"seeds": seeds, "device": str(device)},
        "rows": {
            name: summary(v, baseline if name != "default" else None) for name, v in results.items()
        },  # fmt: skip
        "train_time_s": {name: [r["train_time_s"] for r in rs] for name, rs in runs.items()}
        | ({modern_name: [r["train_time_s"] for r in modern_runs]} if modern_runs else {}),
        "final_weights": {name: [r["final_weights"] for r in runs[name]] for name in runs},
        "per_epoch_s": per_epoch,
        "loader_images_per_s": loader_rows,
        "tta": args.tta if has_tta() else None,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }
    lines = [
        "| row | test accuracy (mean [95 % t interval]) | vs default (points, paired) | train s |",
        "|---|---:|---:|---:|",
    ]
    for name, s in payload["rows"].items():
        times = payload["train_time_s"].get(name)
        t = f"{statistics.median(times):.0f}" if times else "-"
        value = cell(s) if s["values"] else "n/a (no --tta)"
        lines.append(f"| {name} | {value} | {diff_cell(s)} | {t} |")
    if modern_runs:
        lines += ["", f"{args.model} at {args.epochs} epochs (the recipe rows) vs {modern_name}: "
                  f"equal wall time, {budget_s:.0f} s budget from the median strong + EMA run."]  # fmt: skip
    lines += [
        "", f"Load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}: above ~1 "
        "other jobs shared the 2 cores and the train s column is not comparable (the accuracies "
        "do not depend on load).",
        "", f"TTA rows: the runs above them scored by `cnnlab evaluate RUN --tta {args.tta}`.",
        "", "| loader (no model) | images/s at 1x28x28 | images/s at 3x32x32 |", "|---|---:|---:|",
    ]  # fmt: skip
    for name, r in loader_rows.items():
        lines.append(f"| {name} | {r['1x28x28']:,.0f} | {r['3x32x32']:,.0f} |")
    header = (
        f"builtin:mnist-sample, {args.shots} training images per class, {args.model}, "
        f"{args.epochs} epochs, batch {args.batch_size}, SGD one-cycle lr {args.lr}, --ema "
        f"{args.ema}; seeds {args.seeds}; device {device}"
        f"{' (QUICK smoke run: the numbers mean nothing)' if args.quick else ''}\n\n"
    )
    save_results(args.name, header + "\n".join(lines), payload)


if __name__ == "__main__":
    main()
