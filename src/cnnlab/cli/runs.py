"""`cnnlab runs [FOLDER]`: a table of past runs; `cnnlab runs clean [FOLDER]`: free their disk.

Torch-free (cnnlab.runs_table reads the run folders), so the table shows at once; only
`runs clean --yes` imports the checkpoint writer to rewrite manifests.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.markup import escape
from rich.table import Table

from cnnlab import runs_table as rt
from cnnlab.errors import ConfigError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "runs",
        help="table of past runs (task, model, data, main metric, epochs, time, size, date); "
        "`runs clean` frees checkpoints --keep would not keep",
        description="cnnlab runs [FOLDER] lists the runs under FOLDER (default: runs); "
        "cnnlab runs clean [FOLDER] shows the checkpoint files a --keep policy would not have kept "
        "and their size, and deletes them with --yes (best weights and the newest resumable "
        "checkpoint always stay). A folder that is itself named 'clean': write ./clean.",
    )
    p.add_argument(
        "words", nargs="*", metavar="[clean] [FOLDER]", help="runs folder (default: runs)"
    )
    p.add_argument(
        "--sort",
        default="date",
        help=f"column to sort by: {', '.join(rt.SORT_KEYS)} (default: date)",
    )
    p.add_argument(
        "--reverse", action="store_true", help="sort descending (newest, best, largest first)"
    )
    p.add_argument(
        "--task", default=None,
        help="only runs of this task: classification, segmentation, detection, video (a prefix)",
    )  # fmt: skip
    p.add_argument("--model", default=None, help="only models matching this glob or substring")
    p.add_argument("--data", default=None, help="only runs whose data contains this text")
    p.add_argument("--json", action="store_true", help="the rows (and unreadable runs) as JSON")
    p.add_argument(
        "--keep", default="best", choices=tuple(rt.KEEP_POLICY),
        help="runs clean: the checkpoint policy to apply: best (best + newest epoch), last "
        "(newest epoch; best weights still kept), all (every epoch: only stray files go)",
    )  # fmt: skip
    p.add_argument("--yes", action="store_true", help="runs clean: delete (without it: a dry run)")


def run(args: argparse.Namespace, out: Any, err: Any) -> int:
    words = list(args.words)
    action = "list"
    if words and words[0] == "clean":
        action = words.pop(0)
    if len(words) > 1:
        raise ConfigError(f"cnnlab runs takes one FOLDER, got {len(words)}: {' '.join(words)}")
    folder = words[0] if words else "runs"
    if action == "clean":
        return _clean(folder, args, out, err)
    rows, problems = rt.read_runs(folder)
    rows = rt.select(rows, task=args.task, model=args.model, data=args.data, sort=args.sort,
                     reverse=args.reverse)  # fmt: skip
    if args.json:
        print(json.dumps({"runs": [r.to_dict() for r in rows],
                          "problems": [vars(p) for p in problems]}, indent=2))  # fmt: skip
    else:
        out.print(_table(rows, folder))
    for problem in problems:  # one line each; the other runs are listed all the same
        err.print(f"[yellow]skipped:[/] {escape(problem.reason)}", soft_wrap=True)
    if not rows and problems:
        raise ConfigError(f"no readable run in {folder}: {len(problems)} skipped (above)")
    return 0


def _table(rows: list[rt.RunRow], folder: str) -> Table:
    t = Table(title=f"{len(rows)} runs in {folder}")
    for name, justify in (("run", "left"), ("task", "left"), ("model", "left"), ("data", "left"),
                          ("main metric [95% CI]", "left"), ("epochs", "right"),
                          ("time", "right"), ("size", "right"), ("date", "left")):  # fmt: skip
        # only the short numbers never wrap: with task, metric and date unwrappable too, an
        # 80-column output squeezed run, model and data to nothing (no run name in a table of runs)
        t.add_column(
            name, justify=justify, overflow="fold", no_wrap=name in ("epochs", "time", "size")
        )
    for r in rows:
        epochs = f"{r.epochs_done}/{r.epochs}" if r.epochs is not None else str(r.epochs_done)
        date = r.date if r.finished else f"{r.date} (unfinished)"
        t.add_row(escape(r.name), r.task, escape(r.model), escape(r.data), rt.format_metric(r),
                  epochs, rt.format_seconds(r.time_s), rt.format_bytes(r.size_bytes), date)  # fmt: skip
    return t


def _clean(folder: str, args: argparse.Namespace, out: Any, err: Any) -> int:
    """Show what --keep would not have kept and its size; delete it with --yes."""
    plans, problems = rt.clean_plan(rt.find_runs(folder), args.keep)
    for problem in problems:
        err.print(f"[yellow]skipped:[/] {escape(problem.reason)}", soft_wrap=True)
    total = sum(p.bytes for p in plans)
    lines = [
        f"{p.run}: {len(p.files)} files, {rt.format_bytes(p.bytes)} (keeps the best weights and "
        f"{', '.join(p.keep_tags) or 'no epoch'})"
        for p in plans
    ]
    if not plans:
        lines.append(f"nothing to clean in {folder} under --keep {args.keep}")
    elif not args.yes:
        lines.append(
            f"would free {rt.format_bytes(total)} in {len(plans)} runs; add --yes to delete"
        )
    else:
        freed = rt.clean(plans)
        lines.append(f"freed {rt.format_bytes(freed)} in {len(plans)} runs")
    if args.json:
        runs = [{"run": str(p.run), "bytes": p.bytes, "keeps": p.keep_tags,
                 "files": [str(f) for f in p.files]} for p in plans]  # fmt: skip
        deleted = bool(args.yes and plans)
        print(json.dumps({"keep": args.keep, "bytes": total, "deleted": deleted, "runs": runs},
                         indent=2))  # fmt: skip
    else:
        for line in lines:
            out.print(escape(line), soft_wrap=True)
    return 0
