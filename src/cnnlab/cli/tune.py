"""`cnnlab tune`: the parser and the printing of a hyperparameter study (docs/tune.md); the study
itself is :mod:`cnnlab.tune`, reached through :func:`cnnlab.api.tune`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.markup import escape
from rich.table import Table

from cnnlab.cli import add_train_options, load_api
from cnnlab.config import TrainConfig
from cnnlab.tasks.configs import DetectConfig, SegmentConfig, VideoConfig

# The parser is built on every command: nothing above imports torch or Optuna.
TASKS = ("classify", "segment", "detect", "video")
CONFIGS = (TrainConfig, SegmentConfig, DetectConfig, VideoConfig)
OWN = frozenset({"out", "name", "resume"})  # the study names every trial's run folder


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="hyperparameter search on Optuna: TPE, pruning, shared studies; ends with the best "
        "config and the top two compared on the test split",
        description="Search options of `cnnlab train` (or segment / detect / video train) with "
        "Optuna's TPE: every trial is a normal run folder OUT/trial-NNN chosen on the validation "
        "split; the test split is read once, for the top two trials. Other options are fixed "
        "for every trial.",
    )
    p.add_argument("--task", choices=TASKS, default="classify",
                   help="which training to tune: classify | segment | detect | video "
                   "(default: classify)")  # fmt: skip
    p.add_argument(
        "--space", action="append", default=[], metavar="NAME=SPEC",
        help="a searched option (repeat it): NAME=log:LOW:HIGH | NAME=LOW:HIGH (int for an "
        "integer option) | NAME=a,b,c (a list option: crop+flip = both, none = empty)",
    )  # fmt: skip
    p.add_argument("--space-file", default=None, metavar="FILE",
                   help='TOML file of searched options: NAME = "log:1e-4:1e-1" | "3:8" | '
                   '["a", "b"] (top level or a [space] table)')  # fmt: skip
    p.add_argument("--trials", type=int, default=20,
                   help="finished (complete + pruned) trials the study ends with, counted over "
                   "all its workers and restarts (default: 20)")  # fmt: skip
    p.add_argument("--study", default=None,
                   help="study name (default: default); workers with the same --study and "
                   "--storage share its trials, and a killed study resumes under it")  # fmt: skip
    p.add_argument("--storage", default=None, metavar="FILE|URL",
                   help="where the study lives: a journal file (default: OUT/study.journal; safe "
                   "on NFS for several machines) or an RDB URL: postgresql:// | mysql:// | "
                   "sqlite:///FILE")  # fmt: skip
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                   help="stop poor trials early: median (worse than the median of earlier trials "
                   "at the same epoch) | hyperband | none (default: median)")  # fmt: skip
    p.add_argument("--out", default=None,
                   help="the tune folder: trial-NNN run folders, trials.csv, importances.json, "
                   "best_config.json, test/ (default: runs/tune-STUDY)")  # fmt: skip
    # the fixed options: every task's config fields, once each (a task rejects the others by name)
    added = set(OWN)
    for i, cls in enumerate(CONFIGS):
        add_train_options(p, skip=frozenset(added), cls=cls, config_file=i == 0)
        added |= {f.name for f in dataclasses.fields(cls)}


def run(args: argparse.Namespace, out: Any) -> int:
    api = load_api()

    names = {f.name for cls in CONFIGS for f in dataclasses.fields(cls)} - OWN
    options = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    r = api.tune(
        task=args.task, space=args.space, space_file=args.space_file, trials=args.trials,
        study=args.study, storage=args.storage, pruner=args.pruner, out=args.out,
        config=args.config, console=out, **options,
    )  # fmt: skip
    print_table(r, out)
    if r["importances"]:
        t = Table(title="parameter importances (fANOVA over the complete trials)")
        t.add_column("option")
        t.add_column("importance", justify="right")
        for name, value in r["importances"].items():
            t.add_row(name, f"{value:.3f}")
        out.print(t)
    for note in r["notes"]:
        out.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    if r["best"]:
        b = r["best"]
        out.print(f"best: trial {b['trial']}  {r['monitor']} {b['value']:.4f}  "
                  f"{escape(_words(b['params']))}")  # fmt: skip
        out.print(f"best configuration: {escape(r['best_config'])}; rerun it with: "
                  f"{escape(r['command'])}", soft_wrap=True)  # fmt: skip
    c = r["comparison"]
    if c:
        t = Table(title=f"the top two on the same {c['n']} test samples (chosen on validation)")
        t.add_column("")
        t.add_column("value", justify="right")
        t.add_row(f"accuracy trial {c['trial_a']}", f"{c['accuracy_a']:.4f}")
        t.add_row(f"accuracy trial {c['trial_b']}", f"{c['accuracy_b']:.4f}")
        t.add_row("difference (95% CI)", f"{c['difference']:+.4f} "
                  f"[{c['difference_low']:+.4f}, {c['difference_high']:+.4f}]")  # fmt: skip
        m = c["mcnemar"]
        t.add_row("A right, B wrong / A wrong, B right", f"{m['b']} / {m['c']}")
        t.add_row("McNemar exact p-value", f"{m['p_value']:.4g}")
        out.print(t)
        out.print(escape(c["verdict"]), soft_wrap=True)
    out.print(f"trials table: {escape(r['trials_csv'])}; study: {escape(r['storage'])}",
              soft_wrap=True)  # fmt: skip
    return 0


def _words(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v}" for k, v in params.items())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(r: dict[str, Any], out: Any) -> None:
    """The trials: number, state, the monitored validation value, epochs run, the parameters."""
    t = Table(title=f"study {r['study']}: {len(r['trials'])} trials ({r['monitor']} on validation)")
    for col in ("trial", "state", r["monitor"], "epochs", *r["params"], "s"):
        t.add_column(col, justify="left" if col in ("state", *r["params"]) else "right")
    for row in r["trials"]:
        t.add_row(str(row["trial"]), row["state"], _cell(row["value"]), _cell(row["epochs"]),
                  *(_cell(row[p]) for p in r["params"]), _cell(row["seconds"]))  # fmt: skip
    out.print(t)
