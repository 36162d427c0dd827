"""`cnnlab cv --folds K [train options]`: k-fold cross-validation of a classifier.

The parser and the printing; the work is :func:`cnnlab.api.cross_validate`
(:mod:`cnnlab.tasks.classify.cv`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.markup import escape
from rich.table import Table

from cnnlab.cli import add_train_options, load_api
from cnnlab.config import TrainConfig

# The parser is built on every command, so nothing above imports torch: cnnlab.api is imported by
# the handler below (as in cnnlab.cli).

#: set by the cross-validation for each fold (cnnlab.tasks.classify.cv.MANAGED; that module
#: imports torch, so the names are repeated here)
SKIP = frozenset({"split_file", "resume", "test_fraction"})


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation of a classifier: a run per fold, mean/std/95%% interval "
        "of every metric, out-of-fold predictions",
    )
    p.add_argument(
        "--folds",
        default=None,  # None: the --config file's folds, else 5 (cnnlab.tasks.classify.cv)
        metavar="K",
        help="number of stratified folds: an integer >= 2, at most the smallest class's images; "
        "also read from --config FILE (5)",
    )
    add_train_options(p, skip=SKIP)


def run(args: argparse.Namespace, out: Any) -> int:
    api = load_api()

    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in SKIP]
    options = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    result = api.cross_validate(args.config, folds=args.folds, console=out, **options)
    print_summary(result, out)
    return 0


def print_summary(result: Any, out: Any) -> None:
    """The table of every metric (per-class ones are in the files) and where the files are."""

    def f4(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    level = f"{result.confidence:.0%}"
    table = Table(
        title=f"{result.folds}-fold cross-validation: mean, std and {level} t interval over folds"
    )
    for col in ("metric", "mean", "std", f"{level} CI", "out-of-fold"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, s in result.summary.items():
        if "[" in name:  # per class: cv_summary.json / .csv
            continue
        interval = "" if s["low"] is None else f"[{s['low']:.4f}, {s['high']:.4f}]"
        n = "" if s["n"] == result.folds else f" (n={s['n']})"
        table.add_row(name, f4(s["mean"]) + n, f4(s["std"]), interval,
                      f4(result.out_of_fold.get(name)))  # fmt: skip
    out.print(table)
    fitted = [t for t in result.temperatures if t is not None]
    if fitted:  # a setting fitted per fold, not a score: no mean or interval
        each = ", ".join("-" if t is None else f"{t:.3g}" for t in result.temperatures)
        out.print(f"calibration temperature per fold: {each} (range {min(fitted):.3g} to "
                  f"{max(fitted):.3g}; fitted on each fold's validation split, not a score)")  # fmt: skip
    kept = sum(state == "finished earlier" for state in result.status)
    if kept:
        out.print(f"{kept} of {result.folds} folds were finished earlier and kept")
    out.print(f"out-of-fold predictions: {escape(str(result.oof_csv))} "
              f"(score them with `cnnlab metrics {escape(str(result.oof_csv))}`)")  # fmt: skip
    out.print(f"summary: {escape(str(result.cv_dir / 'cv_summary.json'))} and cv_summary.csv; "
              f"folds: {escape(str(result.cv_dir))}/fold-1 .. fold-{result.folds}")  # fmt: skip
