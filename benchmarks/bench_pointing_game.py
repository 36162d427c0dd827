"""Pointing game on builtin:shapes: train a classifier, then ask where each CAM method points.

    PYTHONPATH=src python benchmarks/bench_pointing_game.py        # LeNet-5, 48 px (CPU, minutes)
    PYTHONPATH=src python benchmarks/bench_pointing_game.py --model resnet18 --size 32 --epochs 4
    PYTHONPATH=src python benchmarks/bench_pointing_game.py --run runs/shapes  # a trained run

Prints one row per method: pointing accuracy (CAM maximum inside the shape's mask, 1 px tolerance),
mean IoU of the map thresholded at 0.5 of its maximum with the mask, and two baselines that ignore
the image (always the centre; a uniformly random point). Test images are freshly generated with a
seed other than the training one.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from cnnlab.explain.pointing import SHAPES_RECIPE, shapes_pointing_game


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", help="a trained run on builtin:shapes (skips training)")
    ap.add_argument("--model", default=SHAPES_RECIPE["model"])
    ap.add_argument("--size", type=int, default=48, help="image side, pixels")
    ap.add_argument("--n", type=int, default=3000, help="training images (80%% train, 10%% val)")
    ap.add_argument("--epochs", type=int, default=SHAPES_RECIPE["epochs"])
    ap.add_argument("--test-n", type=int, default=300, help="fresh test images for the game")
    ap.add_argument("--methods", default="gradcam,gradcam++,eigencam,layercam,hirescam")
    ap.add_argument("--tolerance", type=int, default=1, help="pixels around the mask")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    run_dir = args.run
    if run_dir is None:
        import cnnlab.api as api

        recipe = SHAPES_RECIPE | {
            "data": f"builtin:shapes?n={args.n}&size={args.size}&seed=0",
            "model": args.model,
            "epochs": args.epochs,
            "device": args.device,
        }
        t0 = time.perf_counter()
        run = api.train(
            out=tempfile.mkdtemp(prefix="pointing-"), name="shapes", report=False, **recipe
        )
        run_dir = run.run_dir
        print(
            f"trained {args.model} at {args.size} px for {args.epochs} epochs in "
            f"{time.perf_counter() - t0:.0f} s: test accuracy {run.test_metrics['accuracy']:.3f}"
        )
    t0 = time.perf_counter()
    device = "cpu" if args.device == "auto" else args.device
    results = shapes_pointing_game(
        run_dir,
        n=args.test_n,
        methods=tuple(args.methods.split(",")),
        tolerance=args.tolerance,
        device=device,
    )
    first = next(iter(results.values()))
    print(
        f"\n{first['num_images']} fresh test images, classification accuracy "
        f"{first['classification_accuracy']:.3f}, tolerance {args.tolerance} px, "
        f"IoU threshold {first['iou_threshold']} x max  ({time.perf_counter() - t0:.0f} s)\n"
    )
    print(f"{'method':<12} {'pointing':>9} {'mean IoU':>9}")
    for method, r in results.items():
        print(f"{method:<12} {r['pointing_accuracy']:>9.3f} {r['mean_iou']:>9.3f}")
    print(f"{'centre':<12} {first['centre_baseline']:>9.3f} {'':>9}")
    print(f"{'random':<12} {first['random_baseline']:>9.3f} {'':>9}")


if __name__ == "__main__":
    main()
