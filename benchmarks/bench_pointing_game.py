"""Pointing game on builtin:shapes: train classifiers, then ask where each CAM method points.

    PYTHONPATH=src python benchmarks/bench_pointing_game.py   # recipe x 3 seeds + LeNet-5 (~10 min)
    PYTHONPATH=src python benchmarks/bench_pointing_game.py --seeds 0 --compare ''
    PYTHONPATH=src python benchmarks/bench_pointing_game.py --run runs/shapes  # a trained run

``SHAPES_RECIPE`` is trained once per training seed in --seeds; each model in --compare is trained
once (seed 0) with the same recipe, the model swapped (LeNet-5 keeps the learning rate and epochs
of its own earlier recipe). Test images are freshly generated with a seed other than the training
one. For each run it prints:

* one row per CAM method at the default target layer (the last feature_info stage): pointing
  accuracy (CAM maximum inside the shape's mask) at 0, 1 and 2 px tolerance, mean IoU of the map
  thresholded at 0.5 of its maximum with the mask, and how many maps had a tied maximum;
* Grad-CAM at every feature_info stage (the target-layer choice);
* two baselines that ignore the image (always the centre; a uniformly random point).

Results go to benchmarks/results/pointing_game.md and .json (--out to change; --no-write to skip).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _results import save_results

from cnnlab.data.builtin import make_shapes
from cnnlab.explain.cam import CAM_METHODS
from cnnlab.explain.pointing import (
    SHAPES_RECIPE,
    TOLERANCE_PX,
    centre_hits,
    random_baseline,
    shapes_pointing_game,
)

# LeNet-5 (flatten + FC head) with the settings of its own earlier recipe: lr 0.05 is tuned for
# the batch-normed GAP network
MODEL_SETTINGS: dict[str, dict[str, Any]] = {"lenet5": {"lr": 0.02, "epochs": 12}}
TEST_SEED = 12345  # fresh test images; training uses seed=0 in the data string


def _stage_names(run_dir: str) -> list[str]:
    from cnnlab.api import load_checkpoint_model
    from cnnlab.config import PreprocessSpec
    from cnnlab.explain.cam import stage_shapes

    model, meta, _ = load_checkpoint_model(run_dir)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    info = stage_shapes(model, (spec.image_size, spec.image_size), spec.in_channels)
    return [f["name"] for f in info if min(f["output_shape"][-2:]) >= 2]


def evaluate(run_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    game = dict(n=args.test_n, seed=TEST_SEED, tolerance=args.tolerance, device="cpu")
    methods = shapes_pointing_game(run_dir, methods=tuple(args.methods.split(",")), **game)
    stages = {
        name: shapes_pointing_game(run_dir, methods=("gradcam",), target_layer=name, **game)[
            "gradcam"
        ]
        for name in _stage_names(run_dir)
    }
    slim = lambda r: {k: v for k, v in r.items() if k not in ("hits", "ious")}  # noqa: E731
    first = next(iter(methods.values()))
    masks = make_shapes(args.test_n, first["image_size"][0], seed=TEST_SEED).masks
    return {
        "image_size": first["image_size"][0],
        "classification_accuracy": first["classification_accuracy"],
        "centre_baseline": first["centre_baseline"],
        "random_baseline": first["random_baseline"],
        "centre_baseline_0px": float(centre_hits(masks, 0).mean()),
        "random_baseline_0px": random_baseline(masks, 0),
        "methods": {m: slim(r) for m, r in methods.items()},
        "gradcam_by_stage": {s: slim(r) for s, r in stages.items()},
        "eval_seconds": time.perf_counter() - t0,
    }


def _row(name: str, r: dict[str, Any]) -> str:
    p = r["pointing_by_tolerance"]
    return (
        f"| {name} | {p['0']:.3f} | {p['1']:.3f} | {p['2']:.3f} | {r['mean_iou']:.3f} "
        f"| {r['tied_peaks']} |"
    )


def summary(runs: dict[str, Any], tolerance: int) -> str:
    """One line per trained run: Grad-CAM at the default target layer, the issue's measure."""
    lines = [
        f"| run | test accuracy | Grad-CAM {tolerance} px (headline) | 0 px | 2 px | mean IoU "
        "| centre baseline | random baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, res in runs.items():
        g = res["methods"]["gradcam"]
        p = g["pointing_by_tolerance"]
        lines.append(
            f"| {label} | {res['classification_accuracy']:.3f} | {g['pointing_accuracy']:.3f} "
            f"| {p['0']:.3f} | {p['2']:.3f} | {g['mean_iou']:.3f} | {res['centre_baseline']:.3f} "
            f"| {res['random_baseline']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def table(label: str, res: dict[str, Any]) -> str:
    first = next(iter(res["methods"].values()))
    title = (
        f"{label}: {res['image_size']} px, test accuracy {res['classification_accuracy']:.3f} "
        f"on {first['num_images']} fresh images"
    )
    if "train_seconds" in res["recipe"]:
        title += f", trained in {res['recipe']['train_seconds']:.0f} s"
    head = "| {} | pointing 0 px | pointing 1 px | pointing 2 px | mean IoU | tied peaks |"
    rule = "|---|---:|---:|---:|---:|---:|"
    default_layer = first["target_layer"]
    lines = [f"### {title}", ""]
    lines += [head.format("method"), rule]
    lines += [_row(m, r) for m, r in res["methods"].items()]
    lines += [
        f"| centre baseline | {res['centre_baseline_0px']:.3f} | {res['centre_baseline']:.3f} "
        "| | | |",
        f"| random baseline | {res['random_baseline_0px']:.3f} | {res['random_baseline']:.3f} "
        "| | | |",
        "",
        f"Grad-CAM by target layer (default: `{default_layer}`):",
        "",
        head.format("stage"),
        rule,
    ]
    lines += [
        _row(f"{s} {tuple(r['target_shape'])}", r) for s, r in res["gradcam_by_stage"].items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", help="a trained run on builtin:shapes (skips training)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds of the recipe")
    ap.add_argument("--compare", default="lenet5", help="other models, comma separated")
    ap.add_argument("--test-n", type=int, default=300, help="fresh test images for the game")
    ap.add_argument("--methods", default=",".join(CAM_METHODS))
    ap.add_argument("--tolerance", type=int, default=TOLERANCE_PX, help="pixels around the mask")
    ap.add_argument("--device", default="auto", help="training device")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--render", help="only rewrite the .md from this saved .json")
    args = ap.parse_args()
    if args.render:
        write(json.loads(Path(args.render).read_text()), Path(args.out))
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))

    runs: list[tuple[str, dict[str, Any], str]] = []  # (label, recipe, run dir)
    if args.run:
        runs.append((Path(args.run).name, {}, args.run))
    else:
        import cnnlab.api as api

        plan = [(SHAPES_RECIPE["model"], int(s)) for s in args.seeds.split(",")]
        plan += [(m, 0) for m in args.compare.split(",") if m]
        for model, seed in plan:
            recipe = SHAPES_RECIPE | MODEL_SETTINGS.get(model, {})
            recipe |= {"model": model, "seed": seed, "device": args.device}
            t0 = time.perf_counter()
            run = api.train(
                out=tempfile.mkdtemp(prefix="pointing-"), name="shapes", report=False, **recipe
            )
            seconds = time.perf_counter() - t0
            recipe |= {"train_seconds": round(seconds, 1)}
            print(
                f"trained {model} (seed {seed}) in {seconds:.0f} s: "
                f"test accuracy {run.test_metrics['accuracy']:.3f}",
                flush=True,
            )
            runs.append((f"{model}, seed {seed}", recipe, str(run.run_dir)))

    results: dict[str, Any] = {}
    for label, recipe, run_dir in runs:
        res = evaluate(run_dir, args)
        res["recipe"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in recipe.items()}
        results[label] = res
        print("\n" + table(label, res), flush=True)
    report = {
        "meta": {
            "recipe": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in SHAPES_RECIPE.items()
            },
            "test_seed": TEST_SEED,
            "tolerance_px": args.tolerance,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "runs": results,
    }
    print(summary(results, args.tolerance))
    if not args.no_write:
        write(report, Path(args.out))


def render(report: dict[str, Any]) -> str:
    meta, runs = report["meta"], report["runs"]
    header = (
        "Pointing game on builtin:shapes (`benchmarks/bench_pointing_game.py`): is the maximum of "
        "the predicted class's CAM inside the shape's mask? Hit rates at 0 / 1 / 2 px tolerance "
        f"(the headline uses {meta['tolerance_px']} px: the 8 x 8 map at 32 px places its maximum "
        f"only to its 4 px cell spacing), fresh test images (seed {meta['test_seed']}). Recipe: "
        f"`{json.dumps(meta['recipe'])}`; CPU ({meta['cpu']}, {meta['threads']} threads), "
        f"torch {meta['torch']}.\n\n"
    )
    sections = [table(label, res) for label, res in runs.items()]
    return header + summary(runs, meta["tolerance_px"]) + "\n" + "\n".join(sections)


def write(report: dict[str, Any], out: Path) -> None:
    save_results("pointing_game", render(report), report, folder=out)


if __name__ == "__main__":
    main()
