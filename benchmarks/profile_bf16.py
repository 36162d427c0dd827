"""Where a ResNet-18 training step spends its time, and how close it runs to the machine's peak
(issue "Fast from the first keystroke", part 3).

One process, one run, every figure measured here and now (these machines are noisy: compare the rows of
one run only, medians of timed steps):

* the matmul peak: best of 5 timings of 2048^3 matmuls in fp32 and, where the CPU runs it natively,
  bf16 (on CUDA: the same in fp32/TF32 and bf16);
* a ResNet-18 training step at 32 px (the small-input stem cnnlab builds below 64 px) exactly as
  cnnlab's Trainer runs it: the model in NHWC or NCHW, the forward and loss under autocast, backward,
  the fused SGD step; for fp32 NCHW, fp32 NHWC and bf16 NHWC, at batch 128 and 256: images/s,
  achieved FLOP/s (3x the forward FLOPs per image: forward + the two backward matmuls) and the
  fraction of the peak for the precision in use;
* the ``torch.profiler`` table of the bf16 NHWC step: the top operators by self time;
* a ``torch.compile`` (inductor) probe: compile time and the compiled step against eager, the same
  decision ``--compile auto`` would record.

Run: ``.venv/bin/python benchmarks/profile_bf16.py [--steps 12] [--device cpu|cuda]``; writes
benchmarks/results/profile_bf16.{md,json} with the machine named.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from _results import save_results

from cnnlab.engine.devices import cpu_has_bf16
from cnnlab.engine.optim import build_optimizer
from cnnlab.engine.trainer import autocast
from cnnlab.models import count_flops, create_model

SIZE, CLASSES = 32, 10


def matmul_peak(device: torch.device) -> dict[str, float]:
    """Best FLOP/s of 2048^3 matmuls per dtype: a peak is what the machine can do, so the best of 5."""
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    kinds = {"fp32": torch.float32}
    if device.type == "cuda" or cpu_has_bf16():
        kinds["bf16"] = torch.bfloat16
    peak = {}
    for name, dtype in kinds.items():
        x, y = a.to(dtype), b.to(dtype)
        for _ in range(3):
            x @ y
        best = 0.0
        for _ in range(5):
            sync(device)
            t = time.perf_counter()
            for _ in range(5):
                x @ y
            sync(device)
            best = max(best, 2 * n**3 * 5 / (time.perf_counter() - t))
        peak[name] = best
    return peak


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(device: torch.device, precision: str, channels_last: bool, net=None):
    """One training step as cnnlab's Trainer runs it (engine/trainer.py: autocast around forward and
    loss, backward, the fused optimizer of engine/optim.py)."""
    model = create_model("resnet18", num_classes=CLASSES, in_channels=3, image_size=SIZE).to(device)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory).train()
    opt = build_optimizer(
        "sgd", model.parameters(), lr=0.01, momentum=0.9, nesterov=True, device=device
    )
    run = net(model) if net is not None else model

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = F.cross_entropy(run(images), targets)
        loss.backward()
        opt.step()

    return model, step


def batch(device: torch.device, size: int, channels_last: bool):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(size, 3, SIZE, SIZE, generator=g).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, CLASSES, (size,), generator=g).to(device)
    return images, targets


def time_steps(step, images, targets, device, steps: int, warmup: int = 3) -> float:
    """Median seconds per step after ``warmup`` steps."""
    for _ in range(warmup):
        step(images, targets)
    times = []
    for _ in range(steps):
        sync(device)
        t = time.perf_counter()
        step(images, targets)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def profile_table(step, images, targets, device, rows: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(3):
        step(images, targets)
    with profile(activities=activities) as prof:
        for _ in range(5):
            step(images, targets)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_ms_per_step": getattr(e, key) / 1e3 / 5,
            "share": getattr(e, key) / total,
        }
        for e in events[:rows]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per row (median)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="128,256", help="batch sizes to time, comma-separated")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile probe")
    args = ap.parse_args()
    device = torch.device(args.device)
    peak = matmul_peak(device)
    low = "bf16" if "bf16" in peak else "32"
    flops = count_flops(
        create_model("resnet18", num_classes=CLASSES, in_channels=3, image_size=SIZE), SIZE, 3
    )
    rows = []
    configs = [("32", False), ("32", True)] + ([(low, True)] if low == "bf16" else [])
    for size in [int(b) for b in args.batches.split(",")]:
        for precision, cl in configs:
            _, step = make_step(device, precision, cl)
            images, targets = batch(device, size, cl)
            sec = time_steps(step, images, targets, device, args.steps)
            achieved = 3 * flops * size / sec
            ref = peak["bf16" if precision == "bf16" else "fp32"]
            rows.append(
                {"batch": size, "precision": precision, "channels_last": cl,
                 "images_per_s": size / sec, "achieved_flops": achieved, "peak_fraction": achieved / ref}
            )  # fmt: skip
    best = max(rows, key=lambda r: r["images_per_s"])
    _, step = make_step(device, best["precision"], best["channels_last"])
    images, targets = batch(device, best["batch"], best["channels_last"])
    top = profile_table(step, images, targets, device)

    probe = None
    if not args.no_compile:
        t = time.perf_counter()
        _, cstep = make_step(device, best["precision"], best["channels_last"], net=torch.compile)
        cstep(images, targets)  # compiles forward and backward
        compile_s = time.perf_counter() - t
        eager = time_steps(step, images, targets, device, args.steps)
        compiled = time_steps(cstep, images, targets, device, args.steps)
        probe = {"compile_s": compile_s, "eager_step_s": eager, "compiled_step_s": compiled,
                 "speedup": eager / compiled}  # fmt: skip

    lines = [
        f"ResNet-18 training step at {SIZE} px on {device} (fused SGD, as cnnlab's Trainer runs it), "
        f"median of {args.steps} steps",
        "",
        "| batch | precision | layout | img/s | achieved FLOP/s (3x fwd) | fraction of peak |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['precision']} | {'NHWC' if r['channels_last'] else 'NCHW'} | "
            f"{r['images_per_s']:,.0f} | {r['achieved_flops'] / 1e9:,.1f} G | {r['peak_fraction']:.0%} |"
        )
    lines += ["", "| matmul peak (2048^3, best of 5) | GFLOP/s |", "|---|---:|"]
    lines += [f"| {k} | {v / 1e9:,.0f} |" for k, v in peak.items()]
    if low != "bf16":
        lines += ["", "This CPU has no native bf16: fp32 is measured against the fp32 peak."]
    tag = f"{best['precision']} {'NHWC' if best['channels_last'] else 'NCHW'} batch {best['batch']}"
    lines += ["", f"Top operators by self time ({tag}):", "", "| operator | ms/step | share |",
              "|---|---:|---:|"]  # fmt: skip
    lines += [f"| `{t['op']}` | {t['self_ms_per_step']:.1f} | {t['share']:.0%} |" for t in top]
    if probe:
        lines += [
            "",
            f"torch.compile probe ({tag}): compile {probe['compile_s']:.0f} s, step "
            f"{probe['eager_step_s'] * 1e3:.0f} ms eager vs {probe['compiled_step_s'] * 1e3:.0f} ms "
            f"compiled ({probe['speedup']:.2f}x)",
        ]
    save_results(
        "profile_bf16",
        "\n".join(lines),
        {"rows": rows, "matmul_peak_flops": peak, "flops_per_image": flops, "top_ops": top,
         "compile_probe": probe, "steps": args.steps, "device": str(device)},
    )  # fmt: skip


if __name__ == "__main__":
    main()
