"""ImageNet-sized training on a GPU, side by side in one run: is data loading ever the bottleneck, and how does
cnnlab compare with timm's training loop?

    .venv/bin/python benchmarks/bench_gpu.py [--n 5000] [--size 224] [--model resnet50] [--epochs 3]
    .venv/bin/python benchmarks/bench_gpu.py --smoke      # the same code on the CPU in seconds (ResNet-18, 64 px)

The same pictures (``builtin:shapes`` at ``--size`` px, 5 classes) reach the same model three ways, each in its own
subprocess:

- cnnlab-synthetic: ``cnnlab.api.train`` on the in-memory arrays (nothing to decode): the ceiling of the loop;
- cnnlab-jpeg: ``cnnlab.api.train`` on the same pictures saved as a JPEG folder (quality 90), decoded once into the
  uint8 tensor cache and augmented on the device (the target: at least 90 % of the synthetic throughput);
- timm: ``timm.create_model`` + timm's ``create_loader`` (worker processes, CUDA prefetcher) + the loop of timm's
  ``train.py`` with bf16 autocast and channels_last, on the JPEG folder (the target: cnnlab-jpeg at least 1.1x).

All use SGD (momentum 0.9), ``--batch-size``, ``--epochs`` and flips with random crops. Images/s are medians over the
epochs after the first (warm-up: cuDNN autotuning, the cnnlab decode cache, timm's worker start). Achieved FLOP/s count
3x the forward FLOPs per image and are compared with the device's measured matmul peak in the precision trained
(bf16 on a GPU and on a CPU with native bf16, else fp32).
Results: benchmarks/results/gpu.md and gpu.json (``--smoke`` writes gpu-smoke.*). timm is a core dependency.

The images/s ratio with timm compares like with like only where both build the same network: below 64 px cnnlab's
ResNets take the small-input stem (:data:`cnnlab.models.SMALL_INPUT_BELOW`, 16x the FLOPs at 32 px) and timm's keep
the strided ImageNet stem, so the smoke runs at 64 px, and the table says so where the FLOPs per image differ.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import save_results

DATA = Path(os.environ.get("CNNLAB_BENCH_DATA", "/tmp/cnnlab-bench"))
CONTENDERS = ("cnnlab-synthetic", "cnnlab-jpeg", "timm")


def shapes_source(n: int, size: int) -> str:
    return f"builtin:shapes?n={n}&size={size}&seed=1"


def prepare_jpeg_folder(n: int, size: int) -> Path:
    """The pictures of ``shapes_source(n, size)`` as ``CLASS/NNNNN.jpg`` (written once, reused)."""
    root = DATA / f"gpu-jpeg-{n}-{size}"
    if (root / "done").is_file():
        return root
    from PIL import Image

    from cnnlab.data.builtin import load_builtin

    ds = load_builtin(shapes_source(n, size)[len("builtin:") :])
    for i, (image, target) in enumerate(zip(ds.images, ds.targets, strict=True)):
        folder = root / ds.class_names[target]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)
    (root / "done").write_text("ok")
    return root


def matmul_peak(device: str) -> dict:
    """FLOP/s of a large square matmul in the precision the contenders train in: bf16 on CUDA (tensor
    cores) and on a CPU with native bf16 (AVX-512 bf16, AMX), fp32 on other CPUs."""
    import torch

    if device == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        n, dtype = 2048, torch.bfloat16 if native else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 20 if device == "cuda" else 5
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "flops": 2 * n**3 * reps / (time.perf_counter() - t),
    }


# --- contenders (each in a child process: `bench_gpu.py --child NAME JSON`) ------------------------------------
def child_cnnlab(cfg: dict, data: str) -> dict:
    from cnnlab import api
    from cnnlab.models import count_flops, create_model

    t0 = time.perf_counter()
    run = api.train(
        data=data,
        model=cfg["model"],
        image_size=cfg["size"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        optimizer="sgd",
        augment=("crop", "flip"),
        device=cfg["device"],
        out=str(DATA / "runs-gpu"),
        report=False,
    )
    meta = json.loads((run.run_dir / "run.json").read_text())
    return {
        "epoch_images_per_s": [h["train_images_per_s"] for h in run.history],
        "precision": meta["precision"],
        "flops_per_image": count_flops(
            create_model(cfg["model"], num_classes=5, image_size=cfg["size"]), cfg["size"], 3
        ),
        "setup_s": meta.get("setup_time_s"),
        "wall_s": time.perf_counter() - t0,
    }


def child_timm(cfg: dict, root: str) -> dict:
    """The loop of timm's train.py (train_one_epoch), reduced to what it does per batch."""
    import timm
    import torch
    from timm.data import create_dataset, create_loader
    from timm.optim import create_optimizer_v2

    from cnnlab.models import count_flops

    device = torch.device(cfg["device"])
    t0 = time.perf_counter()
    dataset = create_dataset("", root=root, split="train", is_training=True)
    loader = create_loader(
        dataset,
        input_size=(3, cfg["size"], cfg["size"]),
        batch_size=cfg["batch_size"],
        is_training=True,
        num_workers=min(8, os.cpu_count() or 1),
        device=device,
        use_prefetcher=device.type == "cuda",  # the prefetcher normalises on the GPU's side stream
        pin_memory=device.type == "cuda",
    )
    model = timm.create_model(cfg["timm_model"], num_classes=len(dataset.reader.class_to_idx))
    model.to(device).to(memory_format=torch.channels_last)  # timm train.py --channels-last
    opt = create_optimizer_v2(model, "sgd", lr=cfg["lr"], momentum=0.9, weight_decay=5e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    # timm train.py --amp --amp-dtype bfloat16 where bf16 is native (a GPU, or a CPU with AVX-512
    # bf16 / AMX: where cnnlab's auto precision picks it too), fp32 elsewhere: like against like
    amp = device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    rates = []
    for _ in range(cfg["epochs"]):
        te, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - te))
    return {
        "epoch_images_per_s": rates,
        "precision": "bf16" if amp else "32",
        # timm's own ResNet keeps the strided ImageNet stem at any size (cnnlab's switches below 64 px)
        "flops_per_image": count_flops(model.float().cpu(), cfg["size"], 3),
        "wall_s": time.perf_counter() - t0,
    }


def run_child(name: str, cfg: dict, arg: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, json.dumps(cfg), arg],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] or rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=5000, help="pictures (5 classes)")
    ap.add_argument("--size", type=int, default=224, help="side in pixels")
    ap.add_argument("--model", default="resnet50", help="cnnlab zoo name (timm's of the same name)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    ap.add_argument(
        "--smoke", action="store_true", help="CPU, ResNet-18, 64 pictures of 64 px, 2 epochs"
    )
    args = ap.parse_args()
    if args.child:
        name, cfg, arg = args.child[0], json.loads(args.child[1]), args.child[2]
        result = child_timm(cfg, arg) if name == "timm" else child_cnnlab(cfg, arg)
        print(json.dumps(result))
        return

    import torch

    from cnnlab.models import SMALL_INPUT_BELOW

    if args.smoke:
        args.n, args.size, args.model, args.epochs, args.batch_size, args.device = (
            64,
            64,  # the first size at which cnnlab's ResNet is timm's network (see the docstring)
            "resnet18",
            2,
            16,
            "cpu",
        )
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cfg = {"model": args.model, "timm_model": args.model, "size": args.size, "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": args.lr, "device": device}  # fmt: skip
    folder = prepare_jpeg_folder(args.n, args.size)
    peak = matmul_peak(device)
    runs = {"cnnlab-synthetic": run_child("cnnlab-synthetic", cfg, shapes_source(args.n, args.size)),
            "cnnlab-jpeg": run_child("cnnlab-jpeg", cfg, str(folder))}  # fmt: skip
    if importlib.util.find_spec("timm") is not None:  # optional: pip install -e '.[bench]'
        runs["timm"] = run_child("timm", cfg, str(folder))
    gpu = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    table = [
        f"{args.model} at {args.size} px, {args.n} pictures, batch {args.batch_size}, {args.epochs} epochs, {gpu}; "
        f"matmul peak {peak['flops'] / 1e12:.2f} TFLOP/s ({peak['dtype']})",
        "",
        "| contender | train img/s (median, epochs 2+) | precision | GFLOPs/image (fwd) | achieved TFLOP/s (3x fwd) "
        "| fraction of peak | wall s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    summary = {}
    for name, r in runs.items():
        ips = steady(r["epoch_images_per_s"])
        achieved = 3 * r["flops_per_image"] * ips
        summary[name] = {**r, "images_per_s": ips, "achieved_flops": achieved,
                         "peak_fraction": achieved / peak["flops"]}  # fmt: skip
        table.append(f"| {name} | {ips:,.0f} | {r['precision']} | {r['flops_per_image'] / 1e9:.2f} | "
                     f"{achieved / 1e12:.2f} | {achieved / peak['flops']:.0%} | {r['wall_s']:.0f} |")  # fmt: skip
    jpeg, synth = (
        summary["cnnlab-jpeg"]["images_per_s"],
        summary["cnnlab-synthetic"]["images_per_s"],
    )
    table += ["", "| ratio | value | target |", "|---|---:|---|",
              f"| cnnlab JPEG / synthetic data | {jpeg / synth:.2f} | >= 0.90 |"]  # fmt: skip
    if "timm" in summary:
        table.append(
            f"| cnnlab JPEG / timm | {jpeg / summary['timm']['images_per_s']:.2f}x | >= 1.1x |"
        )
        ours, theirs = summary["cnnlab-jpeg"]["flops_per_image"], summary["timm"]["flops_per_image"]
        if abs(ours - theirs) > 0.01 * theirs:  # not one network: images/s compare unlike work
            table.append(
                f"\nNot the same network: cnnlab's {ours / 1e9:.2f} GFLOPs per image against timm's "
                f"{theirs / 1e9:.2f} (cnnlab's small-input stem below {SMALL_INPUT_BELOW} px); compare "
                "the achieved TFLOP/s, not images/s."
            )
    payload = {"config": cfg, "n": args.n, "device": gpu, "matmul_peak": peak, "results": summary}
    save_results("gpu-smoke" if args.smoke else "gpu", "\n".join(table), payload)


if __name__ == "__main__":
    main()
