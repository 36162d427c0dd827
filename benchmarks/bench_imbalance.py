"""Class imbalance: does --class-weights auto, --sampler balanced or --loss focal recover a class
cut to 1/50 of the others in the training split?

    PYTHONPATH=src python benchmarks/bench_imbalance.py              # the full run (see below)
    CNNLAB_BENCH_RESULTS=/tmp/smoke PYTHONPATH=src python benchmarks/bench_imbalance.py \\
        --seeds 0 --epochs 2 --train-per-class 200 --eval-per-class 50  # a smoke run (~1 min)

Data: ``builtin:shapes`` (5 classes, 32 px; or ``--data digits``, scikit-learn's 8 x 8 digits) is
generated once (seed 0) and written as PNG files to a temporary ``train/ val/ test/`` folder: every
class has ``--train-per-class`` training images except the minority class (``--minority``), which
keeps 1/``--ratio`` of them; validation and test are balanced (``--eval-per-class`` each), so test
accuracy is a balanced measure too and the minority's recall is measured on as many images as any
other class's. Every method trains the same model with the same recipe and seed, selects its
checkpoint on ``val_balanced_accuracy``, and is scored on the test split:

* none: cross-entropy, shuffled batches;
* weights: ``--class-weights auto`` (w_c = N / (K n_c));
* sampler: ``--sampler balanced`` (every class equally likely per draw);
* focal: ``--loss focal --focal-gamma 2`` (unweighted).

Per method: balanced accuracy and minority recall as mean and 95 % Student-t interval over the
seeds, and the paired difference in balanced accuracy against none (same seed, same data). With
one seed the interval is each run's own test bootstrap instead.

Defaults are the full run for a quiet machine: 3 seeds x 4 methods = 12 trainings of LeNet-5 on
2,010 training images of 32 px (500 per class, 10 of the minority) for 15 epochs, 200 validation
and 200 test images per class: about 3-5 minutes on 2 quiet CPU cores (an estimate from the smoke
run and LeNet-5's throughput in results/train.md, not a measurement). Results:
benchmarks/results/imbalance.md and .json.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "none": {},
    "weights": {"class_weights": "auto"},
    "sampler": {"sampler": "balanced"},
    "focal": {"loss": "focal", "focal_gamma": 2.0},
}
DATA_SEED = 0


def write_dataset(
    root: Path, data: str, train_per_class: int, eval_per_class: int, ratio: float, minority: str
) -> dict[str, Any]:
    """PNG files in root/{train,val,test}/<class>/; returns the class names and counts per split."""
    from cnnlab.data.builtin import load_builtin, make_shapes

    need = train_per_class + 2 * eval_per_class
    if data == "shapes":
        # classes are drawn uniformly: 5 classes need ~5 * need images, with room for chance
        ds = make_shapes(n=int(5 * need * 1.2) + 50, size=32, seed=DATA_SEED)
    else:
        ds = load_builtin("digits")
    names = list(ds.class_names)
    if minority not in names:
        raise SystemExit(f"--minority {minority!r}: the classes are {', '.join(names)}")
    rng = np.random.default_rng(DATA_SEED)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for k, name in enumerate(names):
        idx = rng.permutation(np.flatnonzero(ds.targets == k))
        if len(idx) < need:
            raise SystemExit(
                f"class {name} has {len(idx)} images, fewer than the {need} asked for; lower "
                "--train-per-class / --eval-per-class"
            )
        n_train = train_per_class if name != minority else max(1, round(train_per_class / ratio))
        parts = {
            "test": idx[:eval_per_class],
            "val": idx[eval_per_class : 2 * eval_per_class],
            "train": idx[2 * eval_per_class : 2 * eval_per_class + n_train],
        }
        for split, rows in parts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in rows:
                img = ds.images[i]
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                    folder / f"{i}.png"
                )
            counts[split][name] = len(rows)
    return {"class_names": names, "counts": counts}


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean over seeds (NaN bounds for one value)."""
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(
        student_t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    )
    return mean, mean - half, mean + half


def one_run(data_dir: Path, out: Path, method: str, seed: int, args: argparse.Namespace) -> dict:
    from cnnlab import api
    from cnnlab.metrics.stats import recall_intervals

    t0 = time.perf_counter()
    result = api.train(
        data=str(data_dir), model=args.model, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, augment=(), seed=seed, monitor="val_balanced_accuracy", report=False,
        out=str(out), name=f"{method}-seed{seed}", device=args.device, **METHODS[method],
    )  # fmt: skip
    wall = time.perf_counter() - t0
    m = result.test_metrics
    with np.load(result.run_dir / "test_predictions.npz") as z:
        probs, targets = z["probs"], z["targets"]
    names = m["class_names"]
    k = names.index(args.minority)
    low, high = recall_intervals(targets, probs.argmax(1), len(names), seed=0)[k]
    recalls = [m["per_class"][n]["recall"] for n in names if n != args.minority]
    ci = m["confidence_intervals"]["balanced_accuracy"]
    return {
        "method": method,
        "seed": seed,
        "balanced_accuracy": m["balanced_accuracy"],
        "balanced_accuracy_bootstrap": [ci["low"], ci["high"]],
        "minority_recall": m["per_class"][args.minority]["recall"],
        "minority_recall_bootstrap": [low, high],
        "minority_precision": m["per_class"][args.minority]["precision"],
        "majority_mean_recall": float(np.mean(recalls)),
        "accuracy": m["accuracy"],
        "epochs_run": len(result.history),
        "wall_s": wall,
    }


def summarise(runs: list[dict], methods: list[str], seeds: list[int]) -> dict[str, dict]:
    by = {(r["method"], r["seed"]): r for r in runs}
    out: dict[str, dict] = {}
    for method in methods:
        rows = [by[method, s] for s in seeds]
        summary: dict[str, Any] = {}
        for key in ("balanced_accuracy", "minority_recall", "majority_mean_recall", "accuracy"):
            vals = [r[key] if r[key] is not None else math.nan for r in rows]
            mean, low, high = mean_interval(vals)
            if len(rows) == 1 and f"{key}_bootstrap" in rows[0]:
                low, high = rows[0][f"{key}_bootstrap"]
                low = math.nan if low is None else low
                high = math.nan if high is None else high
            summary[key] = {"mean": mean, "low": low, "high": high, "values": vals}
        diff = [
            by[method, s]["balanced_accuracy"] - by["none", s]["balanced_accuracy"] for s in seeds
        ]
        mean, low, high = mean_interval(diff)
        summary["balanced_accuracy_minus_none"] = {"mean": mean, "low": low, "high": high}
        out[method] = summary
    return out


def _cell(s: dict, scale: float = 100.0) -> str:
    if math.isnan(s["low"]):
        return f"{scale * s['mean']:.1f}"
    return f"{scale * s['mean']:.1f} [{scale * s['low']:.1f}, {scale * s['high']:.1f}]"


def table(summary: dict, settings: dict, dataset: dict, seeds: list[int]) -> str:
    how = (
        "95% t-interval over seeds"
        if len(seeds) > 1
        else "95% bootstrap of the one run's test split"
    )
    counts = dataset["counts"]["train"]
    lines = [
        "Class imbalance (`benchmarks/bench_imbalance.py`): one class cut to 1/"
        f"{settings['ratio']:g} of the others in the training split; balanced val and test.",
        "",
        f"Data `{settings['data']}`, minority `{settings['minority']}`; training images per class: "
        + ", ".join(f"{c} {n}" for c, n in counts.items())
        + f"; {dataset['counts']['test'][settings['minority']]} test images per class. "
        f"{settings['model']}, {settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"lr {settings['lr']}, checkpoint chosen on val_balanced_accuracy; seeds {seeds}. "
        f"Points in %; [{how}].",
        "",
        "| method | balanced accuracy | minority recall | other classes' mean recall | "
        "balanced accuracy - none |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, s in summary.items():
        diff = s["balanced_accuracy_minus_none"]
        diff_text = "" if method == "none" else _cell(diff)
        if method != "none" and not diff_text.startswith("-"):
            diff_text = "+" + diff_text
        lines.append(
            f"| {method} | {_cell(s['balanced_accuracy'])} | {_cell(s['minority_recall'])} | "
            f"{_cell(s['majority_mean_recall'])} | {diff_text} |"
        )
    others = [m for m in summary if m != "none"]
    if others:
        best = max(others, key=lambda m: summary[m]["balanced_accuracy"]["mean"])
        gain = summary[best]["balanced_accuracy_minus_none"]["mean"] * 100
        lines += ["", f"Best: {best}, {gain:+.1f} points of balanced accuracy over none."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", choices=("shapes", "digits"), default="shapes")
    p.add_argument("--minority", default=None, help="the class cut (default: triangle / 8)")
    p.add_argument("--ratio", type=float, default=50.0, help="majority / minority training images")
    p.add_argument(
        "--train-per-class", type=int, default=500, help="training images per majority class"
    )
    p.add_argument(
        "--eval-per-class", type=int, default=200, help="validation and test images per class"
    )
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--lr", type=float, default=0.02, help="LeNet-5's rate on shapes (bench_pointing_game)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--no-write", action="store_true", help="print only; results/ is left alone")
    args = p.parse_args(argv)
    if args.data == "digits" and args.train_per_class == 500:
        args.train_per_class, args.eval_per_class = 140, 18  # what 1,797 digits allow
    args.minority = args.minority or ("triangle" if args.data == "shapes" else "8")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "none" not in methods:
        raise SystemExit(f"--methods: choose among {', '.join(METHODS)}, including none")
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-imbalance-") as tmp:
        data_dir = Path(tmp) / "data"
        dataset = write_dataset(
            data_dir, args.data, args.train_per_class, args.eval_per_class, args.ratio,
            args.minority,
        )  # fmt: skip
        runs = []
        for seed in seeds:
            for method in methods:
                run = one_run(data_dir, Path(tmp) / "runs", method, seed, args)
                print(
                    f"{method:8s} seed {seed}: balanced accuracy {run['balanced_accuracy']:.4f}, "
                    f"minority recall {run['minority_recall']:.4f} ({run['wall_s']:.0f} s)",
                    flush=True,
                )
                runs.append(run)
    settings = {k: v for k, v in vars(args).items() if k not in ("no_write",)}
    settings["data"] = f"builtin:{args.data}" + ("?size=32&seed=0" if args.data == "shapes" else "")
    summary = summarise(runs, methods, seeds)
    text = table(summary, settings, dataset, seeds)
    text += f"\nWhole benchmark: {time.perf_counter() - t0:.0f} s of wall time.\n"
    payload = {"settings": settings, "dataset": dataset, "summary": summary, "runs": runs}
    if args.no_write:
        print(text)
    else:
        save_results("imbalance", text, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
