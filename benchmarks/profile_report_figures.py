"""What each report figure costs to draw in a warm process (issue 25, "the report part of a short
run's wait"), measured in ways the machine's load changes little:

* ``draws``: how many times the figure is rendered (``Figure.draw`` calls) to make its PNG;
* ``text``: how many text layouts matplotlib computes (``Text._get_layout`` calls);
* ``calls``: Python function calls made (cProfile's total), the CPU-independent size of the work;
* ``cpu_ms``: the median process CPU time of ``--repeats`` draws (this one varies with the load);
* ``png_kb``: the PNG's size (it is embedded in the HTML as base64, 4/3 of it).

The inputs are a 10-class, 500-image test split (the MNIST benchmark's shape) with seeded random
probabilities, plus a 2-class and a 10-class confusion matrix with long class names.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/profile_report_figures.py [--repeats 5]
[--out DIR]``; ``--out`` also writes each figure's PNG there to look at.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save_results  # noqa: E402


def inputs(tmp: Path) -> dict[str, tuple]:
    """{label: (kind, *args)} of every figure kind, MNIST-shaped."""
    rng = np.random.default_rng(0)
    k, n = 10, 500
    targets = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 3.0 * np.eye(k)[targets]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = [str(i) for i in range(k)]
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (targets, probs.argmax(1)), 1)
    scores = {nm: 0.9 for nm in names}
    csv = tmp / "metrics.csv"
    csv.write_text(
        "epoch,train_loss,val_loss,val_accuracy,lr\n"
        + "".join(f"{e},{1 / e:.3f},{1.1 / e:.3f},{1 - 0.5 / e:.3f},0.1\n" for e in range(1, 9))
    )
    edges = np.linspace(0, 1, 16).tolist()
    count = [0] * 8 + [3, 5, 9, 20, 40, 80, 300]
    acc = [None] * 8 + [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.95]
    bins = {"bin_edges": edges, "accuracy": acc, "count": count}
    calibration = {"bins": {"before": bins, "after": bins}, "temperature": 1.3,
                   "ece_before": 0.05, "ece_after": 0.02, "ece_bins": 15}  # fmt: skip
    long2 = ["background class", "a very long class name indeed"]
    long10 = [f"{w} number {i}" for i, w in enumerate(["cat", "dog", "ship"] * 3 + ["truck"])]
    return {
        "confusion": ("confusion", cm, names, False),
        "confusion normalised": ("confusion", cm, names, True),
        "confusion 2 long": ("confusion", np.array([[40, 3], [7, 50]]), long2, True),
        "confusion 10 long": ("confusion", cm, long10, False),
        "roc": ("roc", targets, probs, names, scores),
        "pr": ("pr", targets, probs, names, scores),
        "reliability": ("reliability", targets, probs),
        "curves": ("curves", csv),
        "calibration": ("calibration", calibration),
    }


def measure(kind: str, args: tuple, repeats: int) -> dict[str, float]:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from cnnlab.report.html import render_png

    render_png(kind, *args)  # warm: fonts, caches
    counts = {"draws": 0, "text": 0}
    draw, layout = Figure.draw, Text._get_layout

    def counted_draw(self, *a, **kw):
        counts["draws"] += 1
        return draw(self, *a, **kw)

    def counted_layout(self, *a, **kw):
        counts["text"] += 1
        return layout(self, *a, **kw)

    with (
        mock.patch.object(Figure, "draw", counted_draw),
        mock.patch.object(Text, "_get_layout", counted_layout),
    ):
        png = render_png(kind, *args)
    profile = cProfile.Profile()
    profile.enable()
    render_png(kind, *args)
    profile.disable()
    calls = pstats.Stats(profile).total_calls
    cpu = []
    for _ in range(repeats):
        start = time.process_time()
        render_png(kind, *args)
        cpu.append(time.process_time() - start)
    return {"draws": counts["draws"], "text": counts["text"], "calls": calls,
            "cpu_ms": 1000 * statistics.median(cpu), "png_kb": len(png) / 1024,
            "png": png}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed draws per figure")
    parser.add_argument("--out", type=Path, help="a folder to write each figure's PNG into")
    parser.add_argument("--only", help="profile this label only and print cProfile's top 25")
    args = parser.parse_args()
    from cnnlab.report import use_file_backend

    use_file_backend()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = inputs(Path(tmp))
        if args.only:
            from cnnlab.report.html import render_png

            kind, *rest = jobs[args.only]
            render_png(kind, *rest)
            cProfile.runctx("render_png(kind, *rest)", globals(), locals(), "/tmp/fig.prof")
            pstats.Stats("/tmp/fig.prof").sort_stats("cumulative").print_stats(25)
            return 0
        lines = ["| figure | draws | text layouts | calls | CPU ms (median) | PNG KB |",
                 "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        rows = {}
        for label, (kind, *rest) in jobs.items():
            row = measure(kind, tuple(rest), args.repeats)
            lines.append(f"| {label} | {row['draws']} | {row['text']} | {row['calls']:,} | "
                         f"{row['cpu_ms']:.1f} | {row['png_kb']:.1f} |")  # fmt: skip
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{label.replace(' ', '_')}.png").write_bytes(row["png"])
            rows[label] = {k: v for k, v in row.items() if k != "png"}
    header = (f"Report figures drawn in a warm process, median of {args.repeats} "
              "(`benchmarks/profile_report_figures.py`); draws, text layouts and calls do not "
              "depend on the machine's load, CPU ms does.\n\n")  # fmt: skip
    save_results(
        "report_figures", header + "\n".join(lines), {"rows": rows, "repeats": args.repeats}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
