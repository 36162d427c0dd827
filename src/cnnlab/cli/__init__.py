"""The `cnnlab` command: parses words into a config and calls `cnnlab.api`; no logic of its own.

User errors (`CnnlabError`) print one line and exit non-zero; bugs keep their traceback.

Start-up: importing torch takes seconds, so this module and the parser import nothing that does
(the task configs come from the torch-free cnnlab.tasks.configs); each command imports what it
needs inside its handler. `cnnlab --help`, `--version`, every `--help`, `conv` and `metrics` run
without torch (tests/test_startup.py checks it; benchmarks/bench_startup.py times it).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import gc
import json
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnnlab import __version__
from cnnlab.cli.examples import epilog
from cnnlab.cli.options import config_help
from cnnlab.config import TrainConfig
from cnnlab.engine.timing import Timings, process_age_s
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError, close_matches
from cnnlab.tasks.configs import DetectConfig, SegmentConfig


class _Console(Console):
    """rich's Console, except that a reader gone from the pipe (`cnnlab models | head`) ends the
    command as any other write to it does: a BrokenPipeError, which :func:`main` turns into exit
    status 141 (rich's own answer was SystemExit(1), an exit status that says "failed")."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more is written to a pipe no one reads
        raise BrokenPipeError("the reader of this command's output is gone")


out = _Console(highlight=False)
err = _Console(stderr=True, highlight=False)
COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


# -- parser --------------------------------------------------------------------------------------------------
#: TrainConfig fields a transfer study sets for each of its runs (or has its own option for)
STUDY_SETS = frozenset(
    {"init_from", "strategy", "shots", "seed", "epochs", "data", "model", "name", "out", "resume"}
)


#: TrainConfig fields a learning-rate range test has no use for (a run folder, its epochs, schedule
#: and tracking); offered, they were accepted and silently did nothing (`--out runs/x`)
LR_FIND_SKIPS = frozenset(
    {"out", "name", "resume", "keep", "report", "track", "track_uri", "tensorboard", "private",
     "early_stopping", "devices", "sync_bn", "epochs", "ema", "monitor", "lr", "schedule",
     "warmup_epochs", "compile"}
)  # fmt: skip


def add_train_options(
    p: argparse.ArgumentParser,
    skip: frozenset[str] = frozenset(),
    cls: type = TrainConfig,
    config_file: bool = True,
    only: frozenset[str] | None = None,
    default: str | None = None,
) -> None:
    """One --option per config field (defaults live in the dataclass only; None = not given). The
    help is the field's own comment in the config's source, its allowed values and its default
    (:mod:`cnnlab.cli.options`). ``only``: just these fields (another command that shares them,
    spelt and explained as training's); ``default``: how that command's help states their
    default, ``{default}`` standing for the config's (an evaluate's: the run's own options)."""
    if config_file:
        p.add_argument(
            "--config",
            metavar="FILE",
            help="JSON or TOML file of options (command-line options override it)",
        )
    for h in config_help(cls):
        if h.name in skip or (only is not None and h.name not in only):
            continue
        if h.type_name == "bool | word":  # --compile [auto] / --no-compile
            p.add_argument(
                h.flag, dest=h.name, nargs="?", const="true", default=None, help=h.help(default)
            )
            p.add_argument(
                "--no-" + h.flag[2:], dest=h.name, action="store_const", const="false",
                help=f"the same as {h.flag} false",
            )  # fmt: skip
            continue
        if h.is_bool:
            p.add_argument(
                h.flag,
                dest=h.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=h.help(default),
            )
            continue
        metavar = h.name.upper()
        if h.choices and h.type_name == "word":  # Literal only: --optimizer {sgd,adamw}
            metavar = "{" + ",".join(h.choices) + "}"
        action = p.add_argument(
            h.flag, dest=h.name, default=None, metavar=metavar, help=h.help(default)
        )
        if h.choices:
            action.completer = _words(h.choices)  # type: ignore[attr-defined]
        elif h.name in ("model", "encoder", "backbone"):
            task = _MODEL_TASKS.get(cls.__name__, "") if h.name == "model" else ""
            action.completer = _model_names(task)  # type: ignore[attr-defined]


#: the task whose architectures `--model` names, by config (encoders and backbones: the zoo)
_MODEL_TASKS = {
    "SegmentConfig": "segmentation",
    "DetectConfig": "detection",
    "VideoConfig": "video-classification",
}


def _words(words: Sequence[str]) -> Callable[..., list[str]]:
    """An argcomplete completer offering ``words``."""
    return lambda **_: list(words)


def _model_names(task: str) -> Callable[..., list[str]]:
    """An argcomplete completer of model names: ``task``'s architectures (video: and the zoo) or
    the classification zoo. It imports torch, but only while completing."""

    def complete(**_: Any) -> list[str]:
        from cnnlab import models

        names = list(models.list_models(task)) if task else []
        if task in ("", "video-classification"):
            names += models.list_models()
        return names

    return complete


def add_max_restarts(p: argparse.ArgumentParser) -> None:
    """--max-restarts for a training command that takes --devices N (every task's)."""
    p.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        help="with --devices N: torchrun restarts after a failure, resuming from the newest checkpoint",
    )


def train_task(
    cls: type, train: Any, args: argparse.Namespace, show_metrics: Callable[[Any], None]
) -> int:
    """`cnnlab segment|detect|video train`: the ``cls`` options given on the command line; with
    --devices N outside torchrun, re-run under it and return its exit status. Otherwise train
    and, on rank 0 (or a single process), print the end of the run (:func:`finish_train`, the
    test metrics by ``show_metrics``); 0."""
    names = [f.name for f in dataclasses.fields(cls)]
    options = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    check_given_strengths(cls, args.config, options)
    launched = launch_devices(options, getattr(args, "max_restarts", None) or 0)
    if launched is not None:
        return launched
    timings = _start_timings()
    result = train(args.config, console=rank_console(), timings=timings, **options)
    if rank_console() is not None:
        finish_train(result, args, timings, show_metrics)
    return 0


def start_report_workers(args: argparse.Namespace) -> None:
    """`train`, `segment|detect train`: fork the report's figure workers before torch is imported
    (cnnlab.report.render.start_early) unless --no-report or --devices N says there is no report
    in this process; a run that finds it draws none (a config file's report: false, no test
    split) stops them."""
    if getattr(args, "report", None) is not False and int(getattr(args, "devices", None) or 1) == 1:
        from cnnlab.report import render

        render.start_early()


def launch_devices(options: dict[str, Any], max_restarts: int = 0) -> int | None:
    """`--devices N` outside torchrun: re-run this command under torchrun, one process per device,
    and return its exit status; None when this process should train itself."""
    from cnnlab.engine import distributed

    devices = int(options.get("devices") or 1)
    if devices > 1 and not distributed.launched():
        return distributed.launch(sys.argv[1:], devices, max_restarts=max_restarts)
    return None


def rank_console() -> Console | None:
    """The console on rank 0 (or a single process); the other DDP ranks print nothing."""
    from cnnlab.engine import distributed

    return out if distributed.is_main() else None


class OtherRanksQuiet(logging.Filter):
    """DDP: every rank reads and decodes the same data, so each data warning (images skipped, the
    bad fraction, annotations skipped: cnnlab.data.scan, detect.py, segment.py) was printed once
    per rank. Rank 0 says them, as it alone prints to the console (:func:`rank_console`); the
    other ranks keep only their errors, which may be their own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        # no process group exists before cnnlab.engine.distributed is imported; importing it (and
        # torch) here to find that out would slow down every command that logs
        if "cnnlab.engine.distributed" not in sys.modules:
            return True
        return rank_console() is not None


def log_handler() -> logging.Handler:
    """Where the CLI's log records go: stderr (rich), rank 0's only below an error."""
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_path=False)
    handler.addFilter(OtherRanksQuiet())
    return handler


#: the options of the skip policy for unreadable images (cnnlab.data.scan.check_skipped)
BAD_DATA_OPTIONS = frozenset({"max_bad_fraction", "strict"})
#: their default in an evaluate's help: on the run's own split the run's recorded options apply
EVALUATE_DEFAULT = "the run's own on its split; {default} with --data"


def add_task_evaluate(q: argparse.ArgumentParser, tta_help: str | None = None) -> None:
    """The options of `cnnlab segment|detect|video evaluate` (the same verb);
    ``--tta`` where the task has test-time augmentation (``tta_help``)."""
    q.add_argument("run", help=RUN_HELP)
    q.add_argument(
        "--data", default=None, help="evaluate on this dataset instead of the run's split"
    )
    q.add_argument("--relocated-data", metavar="PATH", default=None, help=RELOCATED_HELP)
    q.add_argument("--split", default="test", help=SPLIT_HELP)
    q.add_argument("--device", default="auto", help=DEVICE_HELP)
    q.add_argument(
        "--out", default=None, help="a new folder for the results (default: in RUN/evaluations/)"
    )
    _add_precision(q)
    q.add_argument("--no-report", dest="report", action="store_false", help=NO_REPORT_HELP)
    q.add_argument("--json", action="store_true", help=JSON_HELP)
    if tta_help:
        q.add_argument("--tta", metavar="VIEWS", default=None, help=tta_help)


def _add_score_threshold(p: argparse.ArgumentParser, scope: str = "") -> None:
    """--score-threshold: one option for every command that draws a detection run's boxes
    (detect predict, predict, explain); ``scope`` says which runs it is for."""
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help=f"{scope}boxes scoring at least this (default: the run's score_threshold)",
    )


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", "32", "bf16", "16"),
        default="auto",
        help="inference precision (auto: fp32 on CPU, the run's own on CUDA; bf16 only when asked)",
    )


SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")
RUN_HELP = "run directory or .safetensors checkpoint"
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (auto: CUDA when a GPU is visible, else the CPU)"
JSON_HELP = "print JSON instead of tables"
NO_REPORT_HELP = "do not write the HTML report"
CLASSIFY_TTA = (  # cnnlab.engine.tta (the parser stays torch-free: checked when the command runs)
    "classification: test-time augmentation, the mean of the calibrated probabilities over views: "
    "none, or a comma list: flip (2 views), crop (original + 5 crops), shift (original + 4 shifts "
    "of side/16 px), e.g. flip,crop (12)"
)
TASKS_TTA = (
    "; segmentation: flip, the per-pixel probabilities of the image and its mirror (mirrored "
    "back) averaged; detection: flip, the boxes of the image and its mirror (mirrored back) "
    "merged by per-class NMS"
)
TTA_HELP = CLASSIFY_TTA + TASKS_TTA + " (default: none)"
SERVE_TTA_HELP = (  # segmentation / detection: checked and wrapped as their predict does
    f"{CLASSIFY_TTA}{TASKS_TTA}; the same answers as predict with these views, and each answer "
    'and /api/info list them ("tta") (default: none)'
)
DETECT_TTA_HELP = (
    "none or flip: each image's boxes merged with its mirror's, mirrored back (x1 = W - x2), by "
    "per-class NMS at IoU 0.5 (default: none)"
)
SEGMENT_TTA_HELP = (
    "none or flip: the mask is the arg-max of the mean of the image's and its mirror's per-pixel "
    "probabilities, the mirror's mirrored back (default: none)"
)
SPLIT_HELP = "test | val | train: the run's own split to measure"
RELOCATED_HELP = (
    "the run's own dataset at its new place (moved, or copied to another machine): its recorded "
    "split is read from there, by sample id"
)


def _whole_numbers(
    text: str, *, allow_all: bool, example: str, minimum: int = 0
) -> list[int | None]:
    """'5,10,all' -> [5, 10, None]; anything else an argparse error naming the piece (argparse
    prints it as one line on the option, exit code 2; a bare int() here was a traceback)."""
    pieces = [s.strip() for s in text.split(",")]
    values: list[int | None] = []
    for piece in pieces:
        if allow_all and piece == "all":
            values.append(None)
        elif piece.isdigit():
            values.append(int(piece))
        else:
            raise argparse.ArgumentTypeError(
                f"{piece!r} in {text!r} is not a whole number >= {minimum}"
                f"{' or all' if allow_all else ''}; write e.g. {example}"
            )
    return values


def _positive_int(text: str) -> int:
    """A count such as --top-k: a whole number >= 1 (argparse's int let 0 and -2 through, and
    predict then showed one class as if nothing were wrong)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1; write e.g. 3")
    return int(text)


def _shot_list(text: str) -> list[int | None]:
    # ">= 1": the message said ">= 0" and 0 was then refused
    shots = _whole_numbers(text, allow_all=True, example="5,10,50,all", minimum=1)
    if 0 in shots:  # no labelled image per class trains nothing
        raise argparse.ArgumentTypeError(
            f"0 in {text!r}: each is the number of labelled images per class, 1 or more, or all"
        )
    return shots


def _seed_list(text: str) -> list[int]:
    return [int(s) for s in _whole_numbers(text, allow_all=False, example="0,1,2") if s is not None]


class _Parser(argparse.ArgumentParser):
    """argparse with cnnlab's error shape: one line naming the option, exit code 2 (argparse's
    default prints the whole usage first); `--help` still shows everything."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # no prefixes of long flags: `lr-find --lr 0.1` was taken as --lr-mult 0.1, without a word
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's "invalid choice: 'onyx' (choose from 'onnx', ...)" gets the close match
        # that every other unknown name in cnnlab gets
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:
            allowed = re.findall(r"'([^']*)'", choice.group(2)) or choice.group(2).split(", ")
            hint = close_matches(choice.group(1), allowed)
            message = message[: choice.end(1) + 1] + hint + message[choice.end(1) + 1 :]
        err.print(f"[red]error:[/] {escape(message)} (see {self.prog} --help)", soft_wrap=True)
        raise SystemExit(2)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """argparse's, but an unknown flag is refused by the command it was given to, with the
        closest of that command's flags: argparse said `unrecognized arguments: --batchsize 8
        (see cnnlab --help)`, from the top parser, which knows no command's options."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._command_parser(parsed)
            flags = [s for a in command._actions for s in a.option_strings if s.startswith("--")]
            hints = [
                f"{word}{close_matches(word.split('=')[0], flags)}"
                for word in extras
                if word.startswith("-")
            ]
            if hints:
                command.error(f"unknown option{'s' * (len(hints) > 1)} {', '.join(hints)}")
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _command_parser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The (sub)command's own parser: `train`, `segment train`, ... (self without one)."""
        parser: argparse.ArgumentParser = self
        while True:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            name = getattr(parsed, subs[0].dest, None) if subs else None
            if name is None or name not in subs[0].choices:
                return parser
            parser = subs[0].choices[name]


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but example lines (indented) keep their shape and an option's default
    is said when its help does not say it already (argparse's ArgumentDefaultsHelpFormatter would
    also say "default: None" and "default: False")."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n  " not in text:
            return super()._fill_text(text, width, indent)
        return "\n".join(indent + line for line in text.splitlines())

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            "default" in help_text
            or default in (None, False, True, argparse.SUPPRESS)
            or isinstance(default, list)
            or not (action.option_strings or action.nargs == "?")
        ):
            return help_text
        return f"{help_text} (default: %(default)s)"


def _finish_parsers(parser: argparse.ArgumentParser, words: str = "") -> None:
    """Every parser: the help formatter, the command's one-line help as its description, its
    examples as the epilog (:mod:`cnnlab.cli.examples`)."""
    parser.formatter_class = _HelpFormatter
    parser.epilog = parser.epilog or epilog(words)
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            sub.description = sub.description or helps.get(name)
            _finish_parsers(sub, f"{words} {name}".strip())


def version_text() -> str:
    """'cnnlab 0.1.0 (torch 2.14.1+cu130, torchvision 0.29.1, Python 3.11.7)'. torch's and
    torchvision's versions are read from their version.py files: importing them takes seconds."""
    import importlib.util
    import re

    parts = []
    for name in ("torch", "torchvision"):
        spec = importlib.util.find_spec(name)  # finds the package without running it
        version = None
        if spec is not None and spec.origin:
            try:
                text = (Path(spec.origin).parent / "version.py").read_text()
            except OSError:
                text = ""
            found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
            version = found.group(1) if found else None
        parts.append(f"{name} {version or 'not found'}")
    python = sys.version.split()[0]
    return f"cnnlab {__version__} ({', '.join(parts)}, Python {python})"


class _VersionAction(argparse.Action):
    """`--version`: argparse's own version action needs the text when the parser is built, which
    every command would pay for; this one reads the versions only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kw: Any):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole parser, built without importing torch (see the module docstring)."""
    from cnnlab.cli import cv as cv_cli  # here: they import this module's helpers
    from cnnlab.cli import runs as runs_cli
    from cnnlab.cli import tune as tune_cli
    from cnnlab.cli import video as video_cli

    parser = _Parser(
        prog="cnnlab",
        description="Convolutional neural networks, understandable "
        "and practical: train, evaluate, predict, explain.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging (-vv for debug); `cnnlab -v train` ends with the run's time split",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="cnnlab's version (and torch's, torchvision's)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="train LeNet-5 on 5,000 real MNIST digits, evaluate, write the report"
    )
    p.add_argument("--out", default="runs", help="folder that holds the run folders")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training split (40)")

    p = sub.add_parser(
        "train", help="train a classifier on a folder, CSV, builtin: or torchvision: dataset"
    )
    add_train_options(p)
    add_max_restarts(p)

    p = sub.add_parser(
        "finetune", help="transfer learning: start from a run, checkpoint, imagenet or weights"
    )
    p.add_argument(
        "--from",
        "--init-from",  # the config field's name, which messages shared with `train` use
        dest="init_from",
        required=True,
        metavar="SOURCE",
        help="cnnlab run / .safetensors checkpoint (task A), imagenet, or a weights file",
    )
    add_train_options(p, skip=frozenset({"init_from"}))

    p = sub.add_parser(
        "transfer-study",
        help='"should I transfer?": scratch vs linear-probe vs fine-tune vs '
        "gradual at several labels per class",
    )
    p.add_argument("source", help="cnnlab run / checkpoint of task A, imagenet, or a weights file")
    p.add_argument("--data", required=True, help="the target dataset (task B)")
    p.add_argument(
        "--shots",
        type=_shot_list,
        default="5,10,50,all",
        help="labels per class to try, comma-separated whole numbers or 'all' (default 5,10,50,all)",
    )
    p.add_argument(
        "--strategies",
        default="scratch,linear-probe,fine-tune,gradual",
        help="comma-separated, from scratch, linear-probe, fine-tune, gradual, full",
    )
    p.add_argument("--model", default=None, help="the zoo model (default: the source run's)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each run of the study")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default="0",
        help="comma-separated seeds: each setting once per seed",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for the study and its runs (default runs/transfer-study)",
    )
    # every other training option goes to each run of the study (the study sets these itself)
    add_train_options(p, skip=STUDY_SETS, config_file=False)

    p = sub.add_parser(
        "lr-find", help="learning-rate range test: the loss curve and a suggested --lr"
    )
    add_train_options(p, skip=LR_FIND_SKIPS)
    p.add_argument("--start", type=float, default=1e-5, help="smallest learning rate tried")
    p.add_argument("--end", type=float, default=1.0, help="largest learning rate tried")
    p.add_argument(
        "--steps",
        type=int,
        default=100,
        help="batches, each at a rate geometrically above the last",
    )
    p.add_argument("--plot", default="lr_find.png", help="where to write the plot (PNG)")

    p = sub.add_parser("embed", help="penultimate-layer features with labels to .npz")
    p.add_argument("run", help="run directory or .safetensors checkpoint")
    p.add_argument("--data", default=None, help="another dataset (default: the run's own)")
    p.add_argument("--relocated-data", metavar="PATH", default=None, help=RELOCATED_HELP)
    p.add_argument("--split", default="all", help="all | train | val | test")
    p.add_argument("--out", default=None, help="the .npz file (default: RUN/embeddings-SPLIT.npz)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    # unreadable images: the policy of `cnnlab train`, with its options (its message names them)
    add_train_options(p, config_file=False, only=BAD_DATA_OPTIONS, default=EVALUATE_DEFAULT)

    p = sub.add_parser(
        "evaluate",
        help="measure a trained model of any task (default: its held-out test split)",
    )
    p.add_argument("run", help="run directory or .safetensors checkpoint")
    p.add_argument("--data", help="evaluate on this dataset instead of the run's test split")
    p.add_argument("--relocated-data", metavar="PATH", default=None, help=RELOCATED_HELP)
    p.add_argument("--split", default="test", help="test | val | train (default: test)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--out", help="a new folder for the results (default: a new RUN/evaluations/<time>/)"
    )
    p.add_argument("--no-report", dest="report", action="store_false", help=NO_REPORT_HELP)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_precision(p)
    p.add_argument(
        "--positive",
        metavar="CLASS",
        help="classification: the class an operating point decides on (binary runs: the second)",
    )
    p.add_argument(
        "--target",
        metavar="KIND[=VALUE]",
        help="choose the threshold on P(CLASS) on the validation split: recall=R, precision=P, "
        "fpr=F, youden or f1; stored as RUN/operating_point.json, which predict applies",
    )
    p.add_argument(
        "--replace-operating-point",
        action="store_true",
        help="make the new operating point active when the run has one (the old record stays in "
        "its evaluation folder)",
    )
    p.add_argument(
        "--tta", metavar="VIEWS", default=None,
        help=TTA_HELP + "; reports the metrics with and without it side by side",
    )  # fmt: skip
    # unreadable images of --data: the policy of `cnnlab train`, with its options
    add_train_options(p, config_file=False, only=BAD_DATA_OPTIONS, default=EVALUATE_DEFAULT)

    p = sub.add_parser(
        "predict",
        help="class names and probabilities for images or folders; masks, boxes or a video's "
        "timeline (in --out) for segmentation, detection and video runs",
    )
    p.add_argument("run", help="run directory, .safetensors checkpoint or exported .onnx")
    p.add_argument("inputs", nargs="+", help="image files or folders (a video for a video run)")
    p.add_argument(
        "--out",
        default=None,
        help="output folder: predictions.json (the rows of --format json) for a classification "
        "run; masks, boxes or a video's timeline for segmentation, detection and video runs",
    )
    p.add_argument(
        "--top-k",
        type=_positive_int,
        default=3,
        help="classes shown per image, most probable first",
    )
    p.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="how the results are printed",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_precision(p)
    p.add_argument(
        "--ignore-operating-point",
        dest="operating_point",
        action="store_false",
        help="classes only, without the run's operating point (RUN/operating_point.json)",
    )
    p.add_argument(
        "--min-confidence",
        metavar="P",
        default=None,
        help="a probability in [0, 1]: answer `unknown` when the top class's calibrated "
        "probability is below P (default: always the top class)",
    )
    _add_score_threshold(p, "detection runs: ")
    p.add_argument("--tta", metavar="VIEWS", default=None, help=TTA_HELP)

    p = sub.add_parser(
        "segment", help="semantic segmentation: train | evaluate | predict (IoU, Dice)"
    )
    seg = p.add_subparsers(dest="segment_action", metavar="ACTION", required=True)
    q = seg.add_parser("train", help="train a segmentation model")
    add_train_options(q, cls=SegmentConfig)
    add_max_restarts(q)
    q = seg.add_parser("evaluate", help="per-class IoU, mean IoU, Dice, pixel accuracy")
    add_task_evaluate(
        q, SEGMENT_TTA_HELP + "; reports the metrics with and without it side by side"
    )
    # unreadable images: the policy of `segment train`, with its options
    add_train_options(q, cls=SegmentConfig, config_file=False, only=BAD_DATA_OPTIONS,
                      default=EVALUATE_DEFAULT)  # fmt: skip
    q = seg.add_parser("predict", help="mask PNGs (class index per pixel) and colour overlays")
    q.add_argument("run", help=RUN_HELP + " or exported .onnx")
    q.add_argument("inputs", nargs="+", help="image files or folders")
    q.add_argument("--out", required=True, help="folder for the masks and overlays")
    q.add_argument("--device", default="auto", help=DEVICE_HELP)
    q.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    q.add_argument(
        "--no-overlays",
        dest="overlays",
        action="store_false",
        help="masks only, no colour overlays",
    )
    _add_precision(q)
    q.add_argument("--tta", metavar="VIEWS", default=None, help=SEGMENT_TTA_HELP)

    p = sub.add_parser(
        "explain", help="walk one image through a trained model, layer by layer, with Grad-CAM"
    )
    p.add_argument("run", help="run directory or .safetensors checkpoint")
    p.add_argument("image", help="an image file")
    p.add_argument(
        "--out", default=None, help="folder for explain.html (default: RUN/explain/IMAGE/)"
    )
    p.add_argument(
        "--top-k",
        type=_positive_int,
        default=3,
        help="CAMs for the k best classes (segmentation: the k largest predicted classes; "
        "detection: the k best boxes)",
    )
    p.add_argument(
        "--method",
        action="append",
        default=None,
        help="CAM method, repeatable: gradcam, gradcam++, eigencam, scorecam, layercam, xgradcam, hirescam",
    )
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    _add_score_threshold(p, "detection runs: ")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the numbers (layers, shapes, probabilities) as JSON; the page is written too",
    )

    p = sub.add_parser("detect", help="object detection: train | evaluate | predict (COCO mAP)")
    det = p.add_subparsers(dest="detect_action", metavar="ACTION", required=True)
    q = det.add_parser("train", help="train a detector")
    add_train_options(q, cls=DetectConfig)
    add_max_restarts(q)
    q = det.add_parser("evaluate", help="mAP@0.5, mAP@[.5:.95], per-class AP, AR")
    add_task_evaluate(q, DETECT_TTA_HELP + "; reports the metrics with and without it side by side")
    # unreadable images: the policy of `detect train`, with its options
    add_train_options(q, cls=DetectConfig, config_file=False, only=BAD_DATA_OPTIONS,
                      default=EVALUATE_DEFAULT)  # fmt: skip
    q = det.add_parser("predict", help="COCO results JSON and images with boxes drawn")
    q.add_argument("run", help=RUN_HELP + " or exported .onnx")
    q.add_argument("inputs", nargs="+", help="image files or folders")
    q.add_argument(
        "--out", required=True,
        help="folder for predictions.json (COCO results) and images/ (the boxes drawn)",
    )  # fmt: skip
    q.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_score_threshold(q)
    q.add_argument(
        "--no-draw", dest="draw", action="store_false", help="results JSON only, no images"
    )
    _add_precision(q)
    q.add_argument("--tta", metavar="VIEWS", default=None, help=DETECT_TTA_HELP)

    p = sub.add_parser(
        "export", help="ONNX / TorchScript / safetensors with preprocessing, checked after export"
    )
    p.add_argument("run", help="run directory or .safetensors checkpoint")
    p.add_argument(
        "--format",
        default="onnx",
        choices=("onnx", "torchscript", "safetensors"),
        help="file format of the exported model",
    )
    p.add_argument("--out", default=None, help="the exported file (default: RUN/export/model.EXT)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: 18)")
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip comparing the exported model's outputs with PyTorch's",
    )
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of that check")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of that check")
    p.add_argument(
        "--ignore-operating-point",
        dest="operating_point",
        action="store_false",
        help="leave the run's operating point (RUN/operating_point.json) out of the file",
    )

    p = sub.add_parser(
        "serve",
        help="web explorer: drop an image, see classes, layers and Grad-CAM (or masks, boxes)",
    )
    p.add_argument("run", help="run directory or .safetensors checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest upload in MB (10^6 bytes; 10)"
    )
    p.add_argument("--max-upload-bytes", type=int, default=None, help=argparse.SUPPRESS)  # old name
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="decompression-bomb limit for uploads (default: the run's own, as in training)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        help="uploads worked on at once; more wait in line (2)",
    )
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=10.0,
        help="seconds an upload may wait for its turn before a 503 (10)",
    )
    p.add_argument("--top-k", type=_positive_int, default=5, help="classes shown per image")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    _add_precision(p)
    p.add_argument("--tta", metavar="VIEWS", default=None, help=SERVE_TTA_HELP)
    p.add_argument(
        "--ignore-operating-point",
        dest="operating_point",
        action="store_false",
        help="answer classes only, without the run's operating point (RUN/operating_point.json)",
    )

    p = sub.add_parser("models", help="list the model zoo, or show one model's layers")
    p.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=("list", "show"),
        help="list the zoo or show NAME",
    )
    p.add_argument("name", nargs="?", help="with show: the model whose layers are shown")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default: the model's own)",
    )
    p.add_argument("--in-channels", type=int, default=3, help="input channels (1 grey, 3 RGB)")
    p.add_argument(
        "--num-classes", type=int, default=1000, help="default 1000: the published counts"
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument(
        "--task",
        default="classification",
        type=lambda word: _TASK_WORDS.get(word, word),  # the command words work too: detect, ...
        choices=tuple(dict.fromkeys(_TASK_WORDS.values())),
        help="list the models of this task: classify, segment, detect or video (default: classify)",
    )

    p = sub.add_parser(
        "metrics", help="score predictions from any tool: a CSV of labels and scores"
    )
    p.add_argument(
        "csv",
        help="CSV with a `label` column and `score_<class>` columns or a `pred` column; "
        "multi-label: a `labels` column (`;` between labels) and `score_<label>` columns",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="multi-label CSVs: a label is predicted when its score is at least this "
        "(default: 0.5)",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser(
        "compare", help="two runs on the same test set: McNemar's exact test, accuracy difference"
    )
    p.add_argument("run_a", help="the first run directory")
    p.add_argument("run_b", help="the second run, trained on the same data split")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = sub.add_parser(
        "conv", help="the convolution lab: 1D/2D convolution step by step, as in the lecture"
    )
    p.add_argument(
        "--x",
        help='input: "1 2 3 4 5", "1 1 0; 0 1 1" (2D) or an image file; '
        'negative first numbers need --x="-1 2"',
    )
    p.add_argument("--w", help='kernel: "3 2 1" or "1 0 1; 0 1 0; 1 0 1"')
    p.add_argument(
        "--example",
        help="run one of the lecture's worked examples: hospital-one-day, hospital, slide, image",
    )
    p.add_argument(
        "--op",
        default=None,
        choices=("convolution", "correlation"),
        help="convolution flips the kernel; correlation (what CNN layers compute) does not "
        "(default: convolution)",
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=("full", "valid", "same"),
        help="output length: full N+K-1, valid N-K+1, same N (default: valid)",
    )
    p.add_argument("--image-size", default=None, help="resize an image input to N or H,W pixels")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="explain at most this many output positions (default: all of up to 25, "
        "6 of a larger one: the first, the strongest, the weakest, the rest spread evenly)",
    )
    # None: not given (an --example brings its own settings); the lab's defaults 1, 0, 1
    p.add_argument("--stride", help="step between output positions (N or H,W; default: 1)")
    p.add_argument("--padding", help="zeros added on each side (N or H,W; default: 0)")
    p.add_argument("--dilation", help="spacing of the kernel taps (N or H,W; default: 1)")
    p.add_argument("--explain", action="store_true", help="print the step-by-step table")
    p.add_argument(
        "--out",
        default=None,
        help="PNG of the input, the kernel and the feature map (default for an image input: "
        "<image name>_conv.png in the current folder)",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    video_cli.add_parser(sub)
    cv_cli.add_parser(sub)
    tune_cli.add_parser(sub)
    runs_cli.add_parser(sub)

    p = sub.add_parser(
        "bench",
        help="run a benchmark from a source checkout's benchmarks/ (train: the speed benchmark)",
        description="Runs benchmarks/bench_NAME.py with this Python; options after NAME go to the script "
        "(`cnnlab bench train --help` lists them). Results: benchmarks/results/NAME.md and .json.",
    )
    p.add_argument(
        "name", nargs="?", default="train", help="train (default), gpu, detection, ... or `list`"
    )
    p.add_argument("options", nargs=argparse.REMAINDER, help="passed to the script")

    p = sub.add_parser("data", help="dataset tools: `cnnlab data check SRC`")
    p.add_argument("action", choices=("check",), help="check: scan a dataset without changing it")
    p.add_argument("source", help="the --data folder or CSV file (`path,label` rows)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--strict", action="store_true", help="exit non-zero on any problem found")
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=TrainConfig.max_image_pixels,
        help="decompression-bomb limit, as in training",
    )
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=TrainConfig.max_bad_fraction,
        help="fraction of undecodable files that training would abort on",
    )
    p.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="a class folder without images is no problem",
    )
    p.add_argument(
        "--min-side", type=int, default=8, help="list images smaller than this many pixels"
    )
    p.add_argument("--workers", type=int, default=2, help="processes that decode files")

    p = sub.add_parser(
        "completion",
        help="print the shell script that completes cnnlab's commands and options on TAB",
        description="Prints a completion script (argcomplete) for your shell; add it to the shell's "
        'start-up file, or `eval` it for the current shell: eval "$(cnnlab completion bash)".',
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    _finish_parsers(parser)
    return parser


# -- commands ------------------------------------------------------------------------------------------------
def _require_run(path: str) -> None:
    """A run directory or checkpoint that is not there is said before torch is imported (~2 s)."""
    if not Path(path).expanduser().exists():
        raise CheckpointError(f"run or checkpoint not found: {path}")


def print_metrics(metrics: dict[str, Any], title: str = "test metrics") -> None:
    if "per_label" in metrics:  # a multi-label report (cnnlab.metrics.multilabel)
        print_multilabel_metrics(metrics, title)
        return
    ci = metrics.get("confidence_intervals", {})
    head = Table(title=title, show_header=True)
    for col in ("metric", "value", "95% CI"):
        head.add_column(col, justify="right" if col != "metric" else "left")

    def row(name: str, value: Any, key: str) -> None:
        if value is None:
            head.add_row(name, "undefined", "")
            return
        iv = ci.get(key) or {}
        ok = iv.get("low") is not None and iv.get("high") is not None
        head.add_row(name, f"{value:.4f}", f"[{iv['low']:.4f}, {iv['high']:.4f}]" if ok else "")

    row("accuracy", metrics.get("accuracy"), "accuracy")
    if metrics.get("balanced_accuracy") is not None:
        row("balanced accuracy", metrics["balanced_accuracy"], "balanced_accuracy")
    for m in ("precision", "recall", "f1", "tnr", "fpr", "roc_auc"):
        row(f"{m} (macro)", metrics.get("macro", {}).get(m), f"macro_{m}")
    out.print(head)
    per = Table(
        title="per class (one vs rest); recall = TPR, TNR = specificity",
        show_header=True,
        padding=(0, 1),
        collapse_padding=True,
    )
    cols = ("support", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "tnr", "fpr", "roc_auc")
    short = {"support": "n", "precision": "prec", "recall": "rec", "roc_auc": "auc"}
    per.add_column("class", overflow="fold")
    for c in cols:
        per.add_column(short.get(c, c), justify="right", no_wrap=True)
    for name, vals in metrics.get("per_class", {}).items():
        cells = []
        for c in cols:
            v = vals.get(c)
            text = "-" if v is None else (f"{v:d}" if isinstance(v, int) else f"{v:.3f}")
            cells.append(
                text[1:] if text.startswith("0.") else text
            )  # ".980": narrow enough for 80 columns
        per.add_row(str(name), *cells)
    out.print(per)
    for w in metrics.get("warnings", []):
        err.print(f"[yellow]note:[/] {escape(str(w))}")


def _cell(v: Any) -> str:
    text = "-" if v is None else (f"{v:d}" if isinstance(v, int) else f"{v:.3f}")
    return text[1:] if text.startswith("0.") else text  # ".980": narrow enough for 80 columns


def print_multilabel_metrics(metrics: dict[str, Any], title: str = "test metrics") -> None:
    """A multi-label report: the overall numbers, the averages, then one row per label."""
    head = Table(title=f"{title} (multi-label)", show_header=True)
    head.add_column("metric")
    head.add_column("value", justify="right")
    for name, key in (
        ("subset accuracy (exact match)", "subset_accuracy"),
        ("Hamming loss", "hamming_loss"),
        ("mAP (macro AP)", "map"),
        ("label-ranking AP", "label_ranking_average_precision"),
    ):
        v = metrics.get(key)
        head.add_row(name, "undefined" if v is None else f"{v:.4f}")
    out.print(head)
    avg = Table(title="averages", show_header=True, padding=(0, 1))
    avg.add_column("average")
    metric_cols = ("precision", "recall", "f1", "roc_auc", "average_precision")
    for m in metric_cols:
        avg.add_column({"average_precision": "AP", "roc_auc": "auc"}.get(m, m), justify="right")
    for kind in ("micro", "macro", "weighted", "samples"):
        avg.add_row(kind, *(_cell(metrics.get(kind, {}).get(m)) for m in metric_cols))
    out.print(avg)
    per = Table(
        title="per label; recall = TPR, TNR = specificity",
        show_header=True,
        padding=(0, 1),
        collapse_padding=True,
    )
    cols = ("support", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "tnr",
            "roc_auc", "average_precision", "threshold")  # fmt: skip
    short = {"support": "n", "precision": "prec", "recall": "rec", "roc_auc": "auc",
             "average_precision": "AP", "threshold": "thr"}  # fmt: skip
    per.add_column("label", overflow="fold")
    for c in cols:
        per.add_column(short.get(c, c), justify="right", no_wrap=True)
    for name, vals in metrics.get("per_label", {}).items():
        per.add_row(str(name), *(_cell(vals.get(c)) for c in cols))
    out.print(per)
    for w in metrics.get("warnings", []):
        err.print(f"[yellow]note:[/] {escape(str(w))}")


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    api = load_api()

    # `is not None`: --epochs 0 is refused by the config, not taken as "not given" (a 40-epoch demo)
    extra = {"epochs": args.epochs} if args.epochs is not None else {}
    out.print(
        "[bold]cnnlab demo[/]: LeNet-5 on builtin:mnist-sample (5,000 real MNIST digits), 80/10/10 split"
    )
    timings = _start_timings()
    result = api.demo(out=args.out, console=out, timings=timings, **extra)
    print_metrics(result.test_metrics)
    out.print(f"training time {result.train_time_s:.1f} s; run directory: {result.run_dir}")
    if result.report:
        out.print(f"report: {result.report}")
    _print_time_split(args, timings)
    return 0


def _start_timings() -> Timings:
    """The clock of a training run, made just before the train call with the seconds this
    process took to get there (the interpreter, cnnlab, torch, the parser): the start-up."""
    return Timings(startup_s=process_age_s())


def _print_time_split(args: argparse.Namespace, timings: Timings) -> None:
    """With -v: where the run's time went (also in run.json as "time_split_s")."""
    if args.verbose:
        out.print(timings.summary(), markup=False, soft_wrap=True)  # one line: grep-able


@command("train")
def _train(args: argparse.Namespace) -> int:
    from cnnlab.data import prefetch
    from cnnlab.data.sources import warm_caches

    overrides = _train_overrides(args)
    devices = int(overrides.get("devices") or 1)
    if (
        devices == 1
    ):  # the other core scans, decodes and starts the report's workers while torch loads
        cfg = prefetch.config_for(args.config, overrides)
        prefetch.start(cfg, warm_caches)
        if getattr(cfg, "report", False):
            start_report_workers(args)
    api = load_api()
    from cnnlab.engine import distributed

    if (
        devices > 1 and not distributed.launched()
    ):  # re-run this command under torchrun, one process per device
        return distributed.launch(sys.argv[1:], devices, max_restarts=args.max_restarts or 0)
    timings = _start_timings()
    console = out if distributed.is_main() else None
    result = api.train(args.config, console=console, timings=timings, **overrides)
    if distributed.is_main():
        finish_train(result, args, timings)
    return 0


def finish_train(
    result: Any,
    args: argparse.Namespace,
    timings: Timings,
    show_metrics: Callable[[Any], None] = print_metrics,
) -> None:
    """The end of every training command's output: why it stopped early (early stopping, an
    interruption), the test metrics, the run folder and report and, with -v, the time split."""
    if result.stop_reason:
        out.print(result.stop_reason)
    if result.test_metrics:
        show_metrics(result.test_metrics)
    out.print(f"training time {result.train_time_s:.1f} s; run directory: {result.run_dir}")
    if result.report:
        out.print(f"report: {result.report}")
    _print_time_split(args, timings)


def _train_overrides(
    args: argparse.Namespace, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The TrainConfig options given on the command line (None: not given)."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in skip]
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    check_given_strengths(TrainConfig, getattr(args, "config", None), overrides)
    return overrides


def check_given_strengths(cls: type, config: str | None, options: dict[str, Any]) -> None:
    """An augmentation strength typed on the command line for an augmentation the run does not use
    is refused even at its default value (``--mixup-alpha 0.2`` without mixup): the config checks
    only values other than the default, the only ones it can tell from "not given". Not on a
    resume: the run's own augmentations decide there (and other values are refused)."""
    from cnnlab.config import AUGMENT_OPTIONS, check_unused_strengths, make_config

    given = [k for k in options if k in AUGMENT_OPTIONS]
    if given and not options.get("resume"):
        check_unused_strengths(make_config(cls, config, **options), given)


@command("finetune")
def _finetune(args: argparse.Namespace) -> int:
    api = load_api()

    overrides = _train_overrides(args)
    init_from, data = overrides.pop("init_from"), overrides.pop("data", None)
    if args.config:
        from cnnlab.config import load_config_file

        overrides = load_config_file(args.config) | overrides
        data = data or overrides.pop("data", None)
    if data is None:
        raise CnnlabError("cnnlab finetune needs --data TARGET (the dataset of the new task)")
    timings = _start_timings()
    finish_train(
        api.finetune(init_from, data, console=out, timings=timings, **overrides), args, timings
    )
    return 0


@command("transfer-study")
def _transfer_study(args: argparse.Namespace) -> int:
    api = load_api()
    from cnnlab.transfer.study import DEFAULT_OUT, markdown_table

    shots = args.shots  # [int | None]: parsed and checked by _shot_list
    study = api.transfer_study(
        args.source,
        args.data,
        shots=shots,
        model=args.model,
        epochs=args.epochs,
        strategies=[s.strip() for s in args.strategies.split(",")],
        seeds=args.seeds,
        out=args.out,
        **_train_overrides(args, skip=STUDY_SETS),
    )
    # one table row per line, however narrow the terminal: wrapped rows are no markdown table
    # to paste, and "[26.7, 80.0]" is text, not rich markup
    out.print(markdown_table(study), soft_wrap=True, markup=False)
    out.print(f"study written to {args.out or DEFAULT_OUT} (study.json, study.md, plot)")
    return 0


@command("lr-find")
def _lr_find(args: argparse.Namespace) -> int:
    api = load_api()

    result = api.lr_find(
        args.config,
        start=args.start,
        end=args.end,
        steps=args.steps,
        plot=args.plot,
        **_train_overrides(args),
    )
    out.print(
        f"suggested lr: {result['suggested_lr']:.3g} (steepest descent of the smoothed loss); "
        f"minimum/10: {result['min_lr_div10']:.3g}"
    )
    out.print(f"plot: {result.get('plot')}")
    return 0


@command("embed")
def _embed(args: argparse.Namespace) -> int:
    _require_run(args.run)
    api = load_api()

    path = api.embed(
        args.run, data=args.data, split=args.split, out=args.out, device=args.device,
        relocated_data=args.relocated_data, max_bad_fraction=args.max_bad_fraction,
        strict=args.strict,
    )  # fmt: skip
    out.print(f"features written to {path}")
    return 0


@command("segment")
def _segment(args: argparse.Namespace) -> int:
    if getattr(args, "run", None) is not None:
        _require_run(args.run)
    if args.segment_action == "train":
        start_report_workers(args)
    api = load_api()

    if args.segment_action == "train":
        return train_task(SegmentConfig, api.segment_train, args, _print_segment_metrics)
    elif args.segment_action == "evaluate":
        result = api.segment_evaluate(
            args.run,
            data=args.data,
            relocated_data=args.relocated_data,
            split=args.split,
            device=args.device,
            report=args.report,
            out=args.out,
            precision=args.precision,
            tta=args.tta,
            max_bad_fraction=args.max_bad_fraction,
            strict=args.strict,
        )
        evaluation_note(result)
        if args.json:  # with --tta, metrics["tta"] holds the side-by-side comparison
            print(json.dumps(result["metrics"], indent=2, default=str))
            return 0
        _print_segment_metrics(result["metrics"])
        if result.get("tta"):
            print_tta(result["tta"])
        if result.get("report"):
            out.print(f"report: {result['report']}")
    else:
        paths = api.segment_predict(
            args.run,
            args.inputs,
            args.out,
            device=args.device,
            batch_size=args.batch_size,
            overlays=args.overlays,
            precision=args.precision,
            tta=args.tta,
        )
        overlays = ", their colour overlays (overlays/)" if args.overlays else ""
        out.print(
            f"wrote {len(paths)} mask(s) (masks/){overlays} and predictions.json to {args.out}",
            soft_wrap=True,
        )
    return 0


def _print_segment_metrics(metrics: dict[str, Any] | None) -> None:
    if not metrics:
        return
    ci = metrics.get("confidence_intervals") or {}
    class_ci = ci.get("per_class") or {}
    t = Table(title="segmentation metrics" + (" [95% CI over test images]" if ci else ""))
    for col in ("class", "IoU", "Dice", "pixels"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for name, v in metrics.get("per_class", {}).items():
        t.add_row(
            str(name),
            _with_interval(v.get("iou"), class_ci.get(name, {}).get("iou")),
            _with_interval(v.get("dice"), class_ci.get(name, {}).get("dice")),
            "-" if v.get("support") is None else f"{v['support']:,}",
        )
    out.print(t)
    for key in ("mean_iou", "mean_dice", "pixel_accuracy", "frequency_weighted_iou"):
        if metrics.get(key) is not None:
            out.print(f"{key}: {_with_interval(metrics[key], ci.get(key), digits=4)}")


def _with_interval(value: Any, interval: dict[str, Any] | None, digits: int = 3) -> str:
    """'0.712 [0.690, 0.733]' (a recorded interval), '0.712' (none) or '-' (undefined)."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if interval and interval.get("low") is not None and interval.get("high") is not None:
        text += f" [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"
    return text


@command("explain")
def _explain(args: argparse.Namespace) -> int:
    _require_run(args.run)
    api = load_api()

    result = api.explain(
        args.run,
        args.image,
        out=args.out,
        top_k=args.top_k,
        methods=tuple(args.method or ("gradcam", "gradcam++")),
        device=args.device,
        score_threshold=args.score_threshold,
    )
    ood = result.get("out_of_domain")
    if ood and ood["out_of_domain"]:  # on stderr, before any output
        _warn_explain_out_of_domain(args.image, ood)
    if args.json:
        keys = ("task", "trace", "prediction", "cams") if "task" in result else ("trace", "cams")
        calibrated = ("out_of_domain", "calibrated_top", "temperature")
        keys += tuple(k for k in calibrated if k in result)
        print(json.dumps({k: result[k] for k in keys}, indent=2, default=str))
        return 0
    if result.get("task") == "segmentation":
        t = Table(title=f"{args.image}: predicted classes")
        t.add_column("class")
        t.add_column("share of pixels", justify="right")
        for row in result["prediction"]["classes"]:
            t.add_row(str(row["class"]), f"{100 * row['area']:.1f}%")
        out.print(t)
        out.print(f"layer-by-layer page: {result['html']}")
        return 0
    if result.get("task") == "detection":
        t = Table(
            title=f"{args.image}: boxes scoring at least {result['prediction']['score_threshold']:g}"
        )
        t.add_column("class")
        t.add_column("score", justify="right")
        t.add_column("box (x0, y0, x1, y1), input pixels")
        boxes = result["prediction"]["boxes"]
        for row in boxes[:20]:
            t.add_row(str(row["class"]), f"{row['score']:.3f}", str(row["box"]))
        out.print(t)
        if len(boxes) > 20:
            out.print(f"... and {len(boxes) - 20} more boxes (all in {result['json']})")
        out.print(f"layer-by-layer page: {result['html']}")
        return 0
    t = Table(title=f"{args.image}: top {args.top_k}")
    t.add_column("class")
    t.add_column("probability", justify="right")
    calibrated = {r["class"]: r["probability"] for r in result.get("calibrated_top", [])}
    if calibrated:
        t.add_column(f"calibrated (T={result['temperature']:.3g})", justify="right")
    for row in result["top"]:
        cells = [str(row["class"]), f"{row['probability']:.4f}"]
        if calibrated:  # logits / T keep their order: the same classes, softened or sharpened
            cells.append(f"{calibrated[row['class']]:.4f}" if row["class"] in calibrated else "")
        t.add_row(*cells)
    out.print(t)
    if ood:
        out.print(
            f"out of domain: {'YES' if ood['out_of_domain'] else 'no'} ({ood['score']} score "
            f"{ood['value']:.4g}, threshold {ood['threshold']:.4g})",
            markup=False,
        )
    out.print(f"layer-by-layer page: {result['html']}")
    return 0


def _warn_explain_out_of_domain(image: str, ood: dict[str, Any]) -> None:
    rate = ood.get("false_alarm_rate_test")
    alarms = f"; it flags {100 * rate:.1f}% of in-domain test images" if rate is not None else ""
    err.print(
        f"warning: {image} looks out of domain ({ood['score']} score {ood['value']:.4g} > "
        f"threshold {ood['threshold']:.4g}, calibrated on the validation split{alarms}); "
        "the model was not trained on images like it and its prediction is not to be trusted",
        markup=False,
        soft_wrap=True,
    )


@command("detect")
def _detect(args: argparse.Namespace) -> int:
    if getattr(args, "run", None) is not None:
        _require_run(args.run)
    if args.detect_action == "train":
        start_report_workers(args)
    api = load_api()

    if args.detect_action == "train":
        return train_task(DetectConfig, api.detect_train, args, _print_detection_metrics)
    elif args.detect_action == "evaluate":
        result = api.detect_evaluate(
            args.run,
            data=args.data,
            relocated_data=args.relocated_data,
            split=args.split,
            device=args.device,
            report=args.report,
            out=args.out,
            precision=args.precision,
            tta=args.tta,
            max_bad_fraction=args.max_bad_fraction,
            strict=args.strict,
        )
        evaluation_note(result)
        metrics = result["metrics"]
        if args.json:  # with --tta, metrics["tta"] holds the side-by-side comparison
            print(json.dumps(metrics, indent=2, default=str))
            return 0
        _print_detection_metrics(metrics)
        if result.get("tta"):
            print_tta(result["tta"])
        if result.get("report"):
            out.print(f"report: {result['report']}")
        return 0
    else:
        path = api.detect_predict(
            args.run,
            args.inputs,
            args.out,
            device=args.device,
            score_threshold=args.score_threshold,
            draw=args.draw,
            precision=args.precision,
            tta=args.tta,
        )
        out.print(f"detections written to {path}")
        return 0


def _print_detection_metrics(metrics: dict[str, Any] | None) -> None:
    ci = (metrics or {}).get("confidence_intervals") or {}
    for key in ("map_50", "map", "map_75", "mar_100"):
        if metrics and metrics.get(key) is not None:
            out.print(f"{key}: {_with_interval(metrics[key], ci.get(key), digits=4)}")
    if ci:
        out.print(f"[95% CI]: percentile bootstrap over the test images ({ci['n_boot']} resamples)")


@command("runs")
def _runs(args: argparse.Namespace) -> int:
    from cnnlab.cli import runs as runs_cli

    return runs_cli.run(args, out, err)


@command("video")
def _video(args: argparse.Namespace) -> int:
    from cnnlab.cli import video as video_cli

    return video_cli.run(args, out)


@command("cv")
def _cv(args: argparse.Namespace) -> int:
    from cnnlab.cli import cv as cv_cli

    return cv_cli.run(args, out)


@command("tune")
def _tune(args: argparse.Namespace) -> int:
    from cnnlab.cli import tune as tune_cli

    return tune_cli.run(args, out)


@command("export")
def _export(args: argparse.Namespace) -> int:
    _require_run(args.run)
    api = load_api()

    if args.opset is not None and args.format != "onnx":  # it was ignored without a word
        raise ConfigError(
            f"--opset is the ONNX opset; --format {args.format} has none: leave --opset out"
        )
    r = api.export(
        args.run,
        format=args.format,
        out=args.out,
        **({"opset": args.opset} if args.opset is not None else {}),
        check=args.check,
        rtol=args.rtol,
        atol=args.atol,
        operating_point=args.operating_point,
    )
    out.print(f"exported {r.format}: {r.path}")
    point = r.metadata.get("operating_point")
    if point:
        out.print(
            f"with the run's operating point: {point['positive_class']} positive when "
            f"P({point['positive_class']}) >= {point['threshold']:.6g} (chosen for "
            f"{point.get('target')})",
            markup=False,
        )
    if r.metadata.get("multilabel"):
        out.print("multi-label: sigmoid per label, with the run's thresholds", markup=False)
    if r.sidecar:
        out.print(f"preprocessing and class names: {r.sidecar}")
    if r.max_abs_diff is not None:
        out.print(
            f"checked against PyTorch ({r.checked_with}, batch sizes {list(r.batch_sizes)}): max abs "
            f"difference {r.max_abs_diff:.2e} within rtol {r.rtol:g}, atol {r.atol:g}"
        )
    return 0


@command("serve")
def _serve(args: argparse.Namespace) -> int:
    _require_run(args.run)
    api = load_api()

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    max_bytes = args.max_upload_bytes or round(args.max_upload_mb * 1_000_000)

    def ready(url: str) -> None:  # the model is loaded and the port bound: only then the address
        out.print(f"serving {args.run} on {url} (Ctrl-C to stop)", soft_wrap=True, markup=False)
        if args.precision != "auto":
            out.print(f"inference precision: {args.precision}")

    api.serve(
        args.run,
        host=args.host,
        port=args.port,
        ready=ready,
        max_upload_bytes=max_bytes,
        max_image_pixels=args.max_image_pixels,
        max_concurrency=args.max_concurrency,
        queue_timeout_s=args.queue_timeout,
        top_k=args.top_k,
        device=args.device,
        precision=args.precision,
        tta=args.tta,
        operating_point=args.operating_point,
    )
    return 0


def evaluation_note(result: dict[str, Any]) -> None:
    """Where an evaluation wrote its files and with which precision, on stderr (stdout may be JSON)."""
    where = result.get("out_dir") or "nowhere (a checkpoint outside a run folder; pass --out)"
    err.print(
        f"evaluated {result['num_samples']} samples in {_PRECISION_NAMES[result['precision']]} "
        f"on {result['device']}; results in {where}",
        markup=False,
    )


_PRECISION_NAMES = {"32": "float32", "bf16": "bfloat16", "16": "float16"}


@command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    _require_run(args.run)
    api = load_api()

    task = api.recorded_task(args.run)  # any task's run: the checkpoint says which
    result = api.evaluate(
        args.run,
        data=args.data,
        split=args.split,
        device=args.device,
        report=args.report,
        out=args.out,
        precision=args.precision,
        positive=args.positive,
        target=args.target,
        replace_operating_point=args.replace_operating_point,
        tta=args.tta,
        relocated_data=args.relocated_data,
        max_bad_fraction=args.max_bad_fraction,
        strict=args.strict,
    )
    evaluation_note(result)
    point = result.get("operating_point")
    if args.json:  # with --tta, metrics["tta"] holds the side-by-side comparison
        extra = {"operating_point": point} if point else {}
        print(json.dumps(result["metrics"] | extra, indent=2, default=str))
        return 0
    if task == "segmentation":
        _print_segment_metrics(result["metrics"])
    elif task == "detection":
        _print_detection_metrics(result["metrics"])
    else:
        items = "clips" if task == "video-classification" else "images"
        views = f", TTA {','.join(result['tta']['views'])}" if result.get("tta") else ""
        print_metrics(
            result["metrics"], f"{args.split} metrics ({result['num_samples']} {items}{views})"
        )
    if result.get("tta"):
        print_tta(result["tta"])
    if point:
        print_operating_point(point, result["operating_point_file"])
    if result.get("report"):
        out.print(f"report: {result['report']}")
    return 0


def print_tta(tta: dict[str, Any]) -> None:
    """The headline metrics without and with test-time augmentation, side by side."""
    t = Table(
        title=f"test-time augmentation: {','.join(tta['views'])} ({tta['num_views']} views)",
        title_justify="left",
    )
    for col in ("metric", "without", "with TTA", "change"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for name, before in tta["without"].items():
        after, change = tta["with"][name], tta["change"][name]
        t.add_row(
            name.replace("_", " ") + (" (lower: better)" if name in ("log_loss", "ece") else ""),
            "undefined" if before is None else f"{before:.4f}",
            "undefined" if after is None else f"{after:.4f}",
            "" if change is None else f"{change:+.4f}",
        )
    out.print(t)


def print_operating_point(point: dict[str, Any], path: str) -> None:
    """The operating point an evaluation chose: where, what it reached on validation, and its
    metrics with bootstrap intervals on the evaluated split."""
    chosen, on = point["chosen_on"], point["evaluated_on"]
    t = Table(
        title=f"operating point: {point['positive_class']!s} positive when "
        f"P({point['positive_class']!s}) >= {point['threshold']:.6g}  ({point['target']}: "
        f"{point['rule']} on the {chosen['num_samples']} validation images)",
        title_justify="left",
    )
    for col in ("metric", "validation", f"{on['split']} ({on['num_samples']} images)", "95% CI"):
        t.add_column(col, justify="left" if col == "metric" else "right")

    def number(v: Any) -> str:
        return "undefined" if v is None else f"{v:.4f}"

    for name, iv in point["evaluated_on"]["metrics"].items():
        if not isinstance(iv, dict):
            continue
        ok = iv.get("low") is not None and iv.get("high") is not None
        t.add_row(
            name, number(chosen.get(name)) if name in chosen else "", number(iv.get("value")),
            f"[{iv['low']:.4f}, {iv['high']:.4f}]" if ok else "",
        )  # fmt: skip
    out.print(t)
    out.print(
        f"{on['split']}: TP {on['tp']}, FP {on['fp']}, TN {on['tn']}, FN {on['fn']}; stored as "
        f"{path} (`cnnlab predict` applies it)",
        soft_wrap=True,  # a path is never broken across lines
        markup=False,
    )
    if on.get("note"):
        err.print(f"[yellow]note:[/] {escape(on['note'])}")


@command("predict")
def _predict(args: argparse.Namespace) -> int:
    _require_run(args.run)
    api = load_api()

    task = api.recorded_task(args.run)
    if task != "classification":  # masks, boxes or a video's timeline: files in --out
        api.predict(
            args.run, args.inputs, device=args.device, out=args.out, precision=args.precision,
            min_confidence=args.min_confidence, tta=args.tta,  # seg. / detection: flip
            score_threshold=args.score_threshold,  # detection only (else refused)
        )  # fmt: skip
        out.print(f"{task} predictions written to {args.out}")
        return 0
    preds = api.predict(
        args.run, args.inputs, top_k=args.top_k, device=args.device, precision=args.precision,
        operating_point=args.operating_point, min_confidence=args.min_confidence, tta=args.tta,
        score_threshold=args.score_threshold,  # refused: a classification run has no boxes
        out=args.out,  # also predictions.json there
    )  # fmt: skip
    if args.precision != "auto":  # stdout stays the predictions alone (csv / json parse it)
        err.print(f"inference precision: {args.precision}")
    if args.out is not None:  # on stderr too: stdout stays the predictions
        from cnnlab.tasks.classify.predict import PREDICTIONS_FILE

        written = Path(args.out).expanduser() / PREDICTIONS_FILE
        err.print(f"predictions written to {written}", markup=False, soft_wrap=True)
    if any(p.labels is not None for p in preds):  # a multi-label run
        _print_multilabel_predictions(preds, args.format)
        return 1 if any(p.error for p in preds) else 0
    point = api.operating_point(args.run) if args.operating_point else None
    if point:  # on stderr: which threshold decides (stdout stays the predictions)
        # a run folder's file, or what an exported model (or a checkpoint file) carries
        source = Path(args.run) / "operating_point.json" if Path(args.run).is_dir() else args.run
        err.print(
            f"operating point: {point['positive_class']} is positive when "
            f"P({point['positive_class']}) >= {point['threshold']:.6g} (chosen for "
            f"{point['target']} on the validation split; {source}"
            "); --ignore-operating-point for classes only",
            markup=False,
            soft_wrap=True,
        )
    domain = any(p.out_of_domain for p in preds)
    _warn_out_of_domain(preds)
    if args.format == "json":  # the rows of --out's predictions.json
        from cnnlab.engine.predict import json_rows

        print(json.dumps(json_rows(preds), indent=2))
    elif args.format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        extra = ["decision", "threshold"] if point else []
        extra += ["answer"] if args.min_confidence is not None else []
        extra += ["out_of_domain", "ood_score"] if domain else []
        w.writerow(["path", "rank", "class", "probability", "error", *extra])
        for p in preds:
            decided = (
                ["positive" if p.decision["positive"] else "negative", p.decision["threshold"]]
                if point and p.decision
                else [""] * (2 if point else 0)
            )
            decided += [p.answer or ""] if args.min_confidence is not None else []
            ood = p.out_of_domain
            decided += ([str(ood["out_of_domain"]).lower(), f"{ood['value']:.6g}"] if ood
                        else ["", ""]) if domain else []  # fmt: skip
            for rank, (name, prob) in enumerate(p.top, 1):
                w.writerow([p.path, rank, name, f"{prob:.6f}", "", *decided])
            if p.error:
                w.writerow([p.path, "", "", "", p.error, *[""] * len(extra)])
    else:
        t = Table(show_header=True)
        columns = ["image", "class", "probability", "next"]
        if point:
            columns.insert(1, f"{point['positive_class']}?")
        if domain:
            columns.append("in domain?")
        for c in columns:
            t.add_column(c, **_IMAGE_COLUMN if c == "image" else {})
        for p in preds:
            if p.error:
                t.add_row(
                    escape(p.path), *([""] if point else []), "[red]error[/]", "", escape(p.error),
                    *([""] if domain else []),
                )  # fmt: skip
                continue
            rest = ", ".join(f"{escape(n)} {pr:.3f}" for n, pr in p.top[1:])
            if p.unknown:  # the best guess moves to "next"
                rest = ", ".join(f"{escape(n)} {pr:.3f}" for n, pr in p.top)
            cells = [escape(p.path), escape(p.answer or ""), f"{p.top[0][1]:.4f}", rest]
            if point and p.decision:
                d = p.decision
                verdict = "positive" if d["positive"] else "negative"
                sign = ">=" if d["positive"] else "<"
                cells.insert(1, f"{verdict} (P {d['probability']:.4f} {sign} {d['threshold']:.4g})")
            if domain:
                ood = p.out_of_domain
                cells.append(
                    "" if ood is None else "[yellow]no[/]" if ood["out_of_domain"] else "yes"
                )
            t.add_row(*cells)
        out.print(t)
    return 1 if any(p.error for p in preds) else 0


#: A prediction table's image column shows the whole path, folded over lines when the terminal
#: is narrow: rich's default ellipsis cut every file of a folder to the same prefix
#: ("/photos/holid…"), so a row could not be told from the next. Paths are escaped, since a
#: file named "[red]x.jpg" is markup to rich.
_IMAGE_COLUMN: dict[str, Any] = {"overflow": "fold"}


def _print_multilabel_predictions(preds: list[Any], fmt: str) -> None:
    """A multi-label run's answers: each image's labels at or above their thresholds, with their
    probabilities (json and csv: every label's probability and threshold too)."""
    if fmt == "json":  # the rows of --out's predictions.json
        from cnnlab.engine.predict import json_rows

        print(json.dumps(json_rows(preds), indent=2))
        return
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["path", "label", "probability", "threshold", "predicted", "error"])
        for p in preds:
            if p.error:
                w.writerow([p.path, "", "", "", "", p.error])
            for name, prob, thr in p.labels or []:
                w.writerow([p.path, name, f"{prob:.6f}", f"{thr:.6g}",
                            str(prob >= thr).lower(), ""])  # fmt: skip
        return
    t = Table(show_header=True)
    for c in ("image", "labels (probability >= threshold)", "others"):
        t.add_column(c, **_IMAGE_COLUMN if c == "image" else {})
    for p in preds:
        if p.error:
            t.add_row(escape(p.path), "[red]error[/]", escape(p.error))
            continue
        chosen = p.predicted_labels
        shown = ", ".join(f"{escape(n)} {pr:.3f} (>= {thr:.3g})" for n, pr, thr in chosen)
        rest = ", ".join(f"{escape(n)} {pr:.3f}" for n, pr, thr in p.labels if pr < thr)
        t.add_row(escape(p.path), shown or "[dim]none[/]", rest)
    out.print(t)


def _warn_out_of_domain(preds: list[Any]) -> None:
    """One stderr line per input that looks out of domain (stdout stays the predictions)."""
    for p in preds:
        ood = p.out_of_domain
        if ood and ood["out_of_domain"]:
            err.print(
                f"warning: {p.path} looks out of domain ({ood['score']} score "
                f"{ood['value']:.4g} > threshold {ood['threshold']:.4g}, calibrated on the "
                f"validation split); its prediction {p.top[0][0]!r} is not to be trusted",
                markup=False,
                soft_wrap=True,
            )


_TASK_WORDS = {  # `cnnlab models --task WORD`: the command word or the recorded task name
    "classify": "classification",
    "classification": "classification",
    "segment": "segmentation",
    "segmentation": "segmentation",
    "detect": "detection",
    "detection": "detection",
    "video": "video-classification",
    "video-classification": "video-classification",
}
_TASK_MODELS_NOTE = {  # (option names without dashes: they belong to the task's train command)
    "segmentation": "encoder: any classification model (cnnlab models) or timm:NAME, the encoder "
    "option of `cnnlab segment train`",
    "detection": "backbone: any classification model (cnnlab models) or timm:NAME, the backbone "
    "option of `cnnlab detect train`",
    "video-classification": "or any classification model, applied per frame "
    "(the model option of `cnnlab video train`)",
}


def _zoo_record() -> dict[str, Any] | None:
    """cli/zoo.json: the listing `cnnlab models` prints at the published sizes, recorded from the
    model registry (cnnlab.models.summary.zoo_record; tests/test_models.py keeps it equal), so
    listing imports no torch. None when the file is missing: the registry is asked instead."""
    try:
        return json.loads(Path(__file__).with_name("zoo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@command("models")
def _models(args: argparse.Namespace) -> int:
    # options that would be ignored without a word: said instead
    if args.action == "list" and args.name:
        raise ConfigError(
            f"`cnnlab models list` lists them all; `cnnlab models show {args.name}` shows one"
        )
    if args.action == "show" and args.task != "classification":
        raise ConfigError(
            f"`cnnlab models show` describes a classification network layer by layer; the "
            f"{args.task} models are listed by `cnnlab models --task {args.task}` (their "
            "encoders and backbones are classification networks: show one of those)"
        )
    record = _zoo_record() if args.action == "list" else None
    if args.task != "classification" and args.action == "list":
        if record is not None:
            described = record["task_models"][args.task]
        else:
            from cnnlab import models

            described = {n: models.TASK_MODELS[args.task][n] for n in models.list_models(args.task)}
        rows = [{"name": n, "description": d} for n, d in described.items()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        t = Table(title=f"{args.task} models", caption=_TASK_MODELS_NOTE[args.task])
        t.add_column("name")
        t.add_column("description")
        for r in rows:
            t.add_row(r["name"], r["description"])
        out.print(t)
        return 0
    if args.action == "show":
        if not args.name:
            raise CnnlabError("usage: cnnlab models show NAME [--image-size S --in-channels C]")
        from cnnlab import models

        summary = models.model_summary(
            args.name,
            num_classes=args.num_classes,
            in_channels=args.in_channels,
            image_size=args.image_size,
        )
        if args.json:
            print(json.dumps(summary, indent=2, default=str))
            return 0
        info, cfg = summary["info"], summary["default_cfg"]
        year = f", {info['year']}" if info.get("year") else ""  # timm: models have none
        out.print(f"[bold]{info['name']}[/] ({info['family']}{year}): {info['description']}")
        out.print(f"paper: {info['paper']}")
        out.print(
            f"input {tuple(cfg['input_size'])}, {cfg.get('variant', '')}; parameters "
            f"{summary['params']:,}; FLOPs per image {summary['flops']:,}"
        )
        rows = [
            {k: r[k] for k in ("index", "name", "kind", "detail", "output_shape", "params")}
            for r in summary["layers"]
        ]
        title = f"{args.name}: every layer in the lecture's words"
        notes = list(summary["blocks"].values())
    else:
        sizes = {
            "image_size": args.image_size or 224,
            "in_channels": args.in_channels,
            "num_classes": args.num_classes,
        }
        if record is not None and all(record[k] == v for k, v in sizes.items()):
            rows, titles = record["rows"], record["groups"]  # recorded: no torch
        else:
            from cnnlab import models

            rows, titles = models.zoo_table(**sizes), models.GROUPS
        title = (
            f"model zoo at {args.image_size or 224} px, {args.in_channels} channel(s), "
            f"{args.num_classes} classes"
        )
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
            return 0
        groups = {r["name"]: r["group"] for r in rows}
        rows = [{k: v for k, v in r.items() if k not in ("paper", "group")} for r in rows]
        notes = []
    from cnnlab.report.header import format_count

    def table(title: str) -> Table:
        t = Table(title=title)
        headers = {"flops": "FLOPs", "small_input": "small input", "output_shape": "output shape"}
        for key in rows[0]:
            numeric = isinstance(rows[0][key], (int, float)) and not isinstance(rows[0][key], bool)
            # names and counts never wrap or shorten: "lenet5_classic" and "15.2 G" stay whole
            t.add_column(headers.get(key, key), justify="right" if numeric else "left",
                         no_wrap=key in ("name", "params", "flops", "year", "index"))  # fmt: skip
        return t

    def cell(key: str, v: object) -> str:
        counted = isinstance(v, (int, float)) and not isinstance(v, bool)
        if args.action != "show" and key in ("params", "flops") and counted:
            return format_count(v)  # the zoo: 61.1 M, 1.8 G fit 80 columns (a layer's stay exact)
        if isinstance(v, bool):
            return "yes" if v else "no"
        plain = key in ("year", "index") or not isinstance(v, int)
        return str(v) if plain else f"{v:,}"

    if args.action == "show":
        t = table(title)
        for r in rows:
            t.add_row(*[cell(k, v) for k, v in r.items()])
        out.print(t)
        for note in notes:  # what the table's block rows stand for
            out.print(f"- {note}")
        return 0
    # the lecture's families first, then the modern backbones
    for group, label in titles.items():
        t = table(f"{label}: {title}")
        for r in rows:
            if groups[r["name"]] == group:
                t.add_row(*[cell(k, v) for k, v in r.items()])
        if t.row_count:
            out.print(t)
    out.print("and any of timm's models: cnnlab train --model timm:NAME (e.g. timm:resnet10t)")
    return 0


@command("metrics")
def _metrics(args: argparse.Namespace) -> int:
    import warnings

    from cnnlab.metrics.checks import UndefinedMetricWarning

    # An undefined metric is said once, as a "note:" line (or in the JSON's "warnings"); Python's
    # own display of the warning printed it a second time, with this file's path and code line.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return _score_predictions_csv(args)


def _score_predictions_csv(args: argparse.Namespace) -> int:
    from cnnlab.metrics import classification_metrics
    from cnnlab.metrics.io import (
        is_multilabel_csv,
        read_multilabel_predictions_csv,
        read_predictions_csv,
    )

    if is_multilabel_csv(args.csv):
        from cnnlab.metrics.multilabel import multilabel_metrics

        threshold = 0.5 if args.threshold is None else args.threshold
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--threshold must be in [0, 1], got {threshold}")
        targets, probs, preds, names = read_multilabel_predictions_csv(args.csv)
        metrics = multilabel_metrics(
            targets, probs, preds=preds, thresholds=threshold, label_names=names
        )
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            print_metrics(metrics, f"metrics of {args.csv}")
        return 0
    if args.threshold is not None:  # it was ignored without a word
        raise ConfigError(
            f"--threshold is for multi-label CSVs (a `labels` column); {args.csv} is single-label: "
            "each row's prediction is its highest score (or its `pred` column); leave --threshold out"
        )
    targets, probs, preds, names = read_predictions_csv(args.csv)
    metrics = classification_metrics(targets, probs, preds=preds, class_names=names)
    from cnnlab.metrics.stats import headline_intervals

    metrics["confidence_intervals"] = headline_intervals(targets, probs, preds=preds, seed=0)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print_metrics(metrics, f"metrics of {args.csv}")
    return 0


@command("compare")
def _compare(args: argparse.Namespace) -> int:
    _require_run(args.run_a)
    _require_run(args.run_b)
    api = load_api()

    r = api.compare(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    m = r["mcnemar"]
    t = Table(title=f"paired comparison on the same {r['n']} test {r['samples']}")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row(f"accuracy A ({r['run_a']})", f"{r['accuracy_a']:.4f}")
    t.add_row(f"accuracy B ({r['run_b']})", f"{r['accuracy_b']:.4f}")
    t.add_row(
        "difference A - B (95% CI)",
        f"{r['difference']:+.4f} [{r['difference_low']:+.4f}, {r['difference_high']:+.4f}]",
    )
    t.add_row("A right, B wrong / A wrong, B right", f"{m['b']} / {m['c']}")
    t.add_row("McNemar exact p-value", f"{m['p_value']:.4g}")
    out.print(t)
    return 0


@command("conv")
def _conv(args: argparse.Namespace) -> int:
    from cnnlab.explain import conv

    settings = {"--x": args.x, "--w": args.w, "--op": args.op, "--mode": args.mode,
                "--stride": args.stride, "--padding": args.padding, "--dilation": args.dilation,
                "--image-size": args.image_size}  # fmt: skip
    if args.example:
        given = [flag for flag, value in settings.items() if value is not None]
        if given:  # they were ignored without a word: the example kept its own
            raise ConfigError(
                f"--example {args.example} runs the lecture's example with its own input, kernel "
                f"and settings; drop {', '.join(given)} (or give --x and --w instead of "
                "--example)"
            )
        result = conv.run_example(args.example, explain=args.explain)
    elif args.x is None or args.w is None:
        raise CnnlabError("cnnlab conv needs --x and --w (or --example NAME)")
    else:
        result = conv.run_lab(
            x=args.x,
            w=args.w,
            op=args.op or "convolution",
            mode=args.mode or "valid",
            stride=args.stride or "1",
            padding=args.padding or "0",
            dilation=args.dilation or "1",
            explain=args.explain,
            image_size=args.image_size,
            max_steps="auto" if args.max_steps is None else args.max_steps,
        )
    picture = args.out
    if picture is None and result.source:
        picture = f"{Path(result.source).stem}_conv.png"
    if picture is not None:
        from cnnlab.report.conv_figure import conv_figure_path, write_conv_figure  # (matplotlib)
        from cnnlab.run import claim_output_file

        target = conv_figure_path(result, picture)  # .png added, a folder's name inside it
        claim_output_file(target, command="conv", default=args.out is None)
        picture = str(write_conv_figure(result, target))
    if args.json:
        print(json.dumps(result.to_dict() | {"picture": picture}, indent=2))
        return 0
    out.print(escape(result.summary()))
    if args.explain and result.steps:
        out.print(conv.steps_table(result.steps))
        if result.left_out():
            out.print(f"{result.left_out()}; --max-steps N for more, --json for every number")
    if picture is not None:
        out.print(f"picture of x, w and y (explained positions numbered): {picture}")
    return 0


@command("data")
def _data(args: argparse.Namespace) -> int:
    from cnnlab.data.sources import check_scan, scan_source

    report = scan_source(
        args.source, max_pixels=args.max_image_pixels, min_side=args.min_side, workers=args.workers
    )
    if args.json:  # the report comes out even when the check below fails
        print(report.to_json())
    else:
        out.print(report.summary_table())
    for warning in check_scan(  # the checks training makes, classes included
        report,
        strict=args.strict,
        max_bad_fraction=args.max_bad_fraction,
        allow_empty_classes=args.allow_empty_classes,
        pixel_hint="raise --max-image-pixels for larger images",
        log_warnings=False,  # said once, here
    ):
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    return 0


def benchmarks_dir() -> Path:
    """benchmarks/ of the source checkout cnnlab runs from (an editable install); CNNLAB_BENCHMARKS overrides."""
    import cnnlab

    env = os.environ.get("CNNLAB_BENCHMARKS")
    return Path(env) if env else Path(cnnlab.__file__).resolve().parents[2] / "benchmarks"


@command("bench")
def _bench(args: argparse.Namespace) -> int:
    folder = benchmarks_dir()
    scripts = sorted(p.stem.removeprefix("bench_") for p in folder.glob("bench_*.py"))
    if not scripts:
        raise ConfigError(
            f"no benchmarks in {folder}: `cnnlab bench` runs the scripts of a source checkout; clone the "
            "repository and `pip install -e '.[bench]'` there, or set CNNLAB_BENCHMARKS to its benchmarks/"
        )
    if args.name == "list":
        for name in scripts:
            out.print(name)
        return 0
    if args.name not in scripts:
        raise ConfigError(
            f"unknown benchmark {args.name!r}{close_matches(args.name, scripts)}; choose from {', '.join(scripts)}"
        )
    # A child process, not an import: the scripts time fresh processes and parse their own options.
    return subprocess.call([sys.executable, str(folder / f"bench_{args.name}.py"), *args.options])


@command("completion")
def _completion(args: argparse.Namespace) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["cnnlab"], shell=args.shell))
    return 0


#: True in the command line's own process (:func:`main` with ``argv`` None): its heap is the
#: command's to tune (:func:`load_api`); a Python caller's (a test, a notebook) is left alone
_COMMAND_LINE = False


def load_api() -> ModuleType:
    """``cnnlab.api`` for a command: in the command line's own process, its first import runs with
    the garbage collector paused and what it built is then frozen out of the collector's sight
    (``gc.freeze``).

    Why: importing torch, torchvision and cnnlab's engine makes about 190,000 objects that live as
    long as the process, and every full collection walks them all: about 0.1 s each on a 2-core
    CPU, three while torch imports and one more in the scan that follows, 0.3 s of a 5-second
    ``cnnlab train`` (counted with ``gc.callbacks``); paused and frozen, the run's collections walk
    only the objects it makes itself (0.03 s in all). Python's documentation describes
    ``gc.freeze`` for this (objects that stay, kept out of later collections); the command then
    runs with the collector on as usual. Commands import the API through here, after anything
    they start before torch loads (``train``'s warm-up child and report workers)."""
    pause = _COMMAND_LINE and "cnnlab.api" not in sys.modules and gc.isenabled()
    if pause:
        gc.disable()
    try:
        from cnnlab import api
    finally:
        if pause:
            gc.freeze()
            gc.enable()
    return api


def main(argv: Sequence[str] | None = None) -> int:
    """`cnnlab ...`: the exit status. A reader that stops early (`cnnlab models | head`) ends the
    command quietly, as `ls | head` does: exit status 141 (128 + SIGPIPE), no traceback.

    ``argv`` None: the command line of this process (the `cnnlab` script, `python -m cnnlab`),
    which ends when the command does; then every object left is moved out of the garbage
    collector's sight (``gc.freeze``): the interpreter's shutdown collects them several times over
    otherwise, 1.2 s of a `cnnlab train` process after torch is loaded (profiled; `import torch`
    alone leaves 0.9 s). Files, loggers and atexit handlers are closed and run as before.
    A command that loaded torch and returns then ends its process at once (:func:`exit_now`)."""
    global _COMMAND_LINE
    _COMMAND_LINE = argv is None
    try:
        try:
            code = _main(argv)
        finally:  # --help exits through SystemExit: its output too
            sys.stdout.flush()  # a broken pipe shows here at the latest, not at interpreter exit
            if argv is None:
                gc.freeze()
    except BrokenPipeError:
        try:  # Python's own flush at exit would fail again: point stdout at /dev/null
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (a test's capture)
            pass
        return 128 + 13
    if argv is None:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End this process with ``code`` now, skipping the interpreter's teardown, where that loses
    nothing; otherwise return (the process then ends as usual).

    The teardown frees every object module by module and then runs libtorch's static
    destructors: 0.2-0.5 s of a `cnnlab train` process, after its output and files are all
    written (profiled: from the end of ``main`` to the exit). Nothing of it reaches a file or
    the terminal that the steps below do not: the atexit handlers run (logging is flushed and
    closed, an MLflow run is finished, multiprocessing's children are joined, weakref
    finalizers run), then Python's and C's output buffers are flushed, then ``os._exit``.
    cnnlab's own files are written and closed by the commands themselves. Skipped -- a plain
    return -- where the shortcut could lose something or gains nothing:

    * torch is not loaded (a command without it ends in milliseconds anyway);
    * another Python thread is alive (the interpreter would join a non-daemon one first);
    * a tracer or profiler is installed (coverage, ``python -m cProfile``, a debugger: they
      write their results after the program ends)."""
    if (
        "torch" not in sys.modules
        or threading.active_count() > 1
        or sys.gettrace() is not None
        or sys.getprofile() is not None
    ):
        return
    atexit._run_exitfuncs()  # what the interpreter runs at exit (private, but stable since 3.0)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or gone (a pipe read no more)
            pass
    try:  # C's stdio buffers (a library's printf), which exit() would flush
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to ask (not a Unix)
        pass
    os._exit(code)


def install_warning_notes() -> None:
    """Show cnnlab.metrics' UndefinedMetricWarning as the `note:` lines classification prints
    (segmentation and detection metrics warn when a class's IoU / precision is undefined). Python's
    own format printed cnnlab's source path and line (`.../segment.py:374: UndefinedMetricWarning:
    ...` and the code line) to a user who did nothing wrong. Other warnings keep Python's format.
    Matched by name: importing cnnlab.metrics here would load NumPy for every command."""
    shown = warnings.showwarning
    if getattr(shown, "cnnlab_notes", False):  # installed by an earlier main() in this process
        return

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if category.__name__ == "UndefinedMetricWarning":
            err.print(f"[yellow]note:[/] {escape(str(message))}", soft_wrap=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show.cnnlab_notes = True  # type: ignore[attr-defined]
    warnings.showwarning = show


_OPTION = re.compile(r"\b(option|leave) ([a-z][a-z0-9_]*)\b")
# "image_size=32", "mode='full'": a keyword as a Python caller passes it (not inside a builtin's
# options, "builtin:shapes?n=9&seed=1", nor a value such as "--target recall=0.95")
_KEYWORD = re.compile(r"(?<![\w&?/:.=-])([a-z][a-z0-9_]*)=(['\"]?)([^\s'\",;)]+)\2")


def in_flags(message: str, parser: _Parser, args: argparse.Namespace) -> str:
    """A config error in the words the user typed: "option image_size must be >= 8" reads
    "option --image-size must be >= 8", and "(e.g. image_size=32)" reads "(e.g. --image-size 32)",
    where the command has that flag (the config speaks of its fields, which Python callers pass as
    keywords; the command line generated a flag from each)."""
    flags = {
        s for a in parser._command_parser(args)._actions for s in a.option_strings
    }  # fmt: skip

    def flag(m: re.Match[str]) -> str:
        name = "--" + m.group(2).replace("_", "-")
        return f"{m.group(1)} {name}" if name in flags else m.group(0)

    def keyword(m: re.Match[str]) -> str:
        name = "--" + m.group(1).replace("_", "-")
        return f"{name} {m.group(3)}" if name in flags else m.group(0)

    return _KEYWORD.sub(keyword, _OPTION.sub(flag, message))


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (`cnnlab completion`)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(message)s", handlers=[log_handler()])
    install_warning_notes()
    try:
        return int(COMMANDS[args.command](args) or 0)
    except CnnlabError as e:
        # escape: a path like "scan[1].png" or ".[bench]" is text, not rich markup
        err.print(
            f"[red]error:[/] {escape(in_flags(str(e), parser, args))}", soft_wrap=True
        )  # one line, however long (grep-able)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except MemoryError:  # Python's (NumPy, Pillow); torch's CPU allocator raises a RuntimeError
        err.print(f"[red]error:[/] {CPU_OUT_OF_MEMORY}")
        return 3
    except RuntimeError as e:
        message = _runtime_error_message(str(e))
        if message is None:  # a defect of cnnlab or torch: the traceback is what to report
            raise
        err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
        return 3
    except FileNotFoundError as e:  # a path the user gave that vanished between checks
        err.print(f"[red]error:[/] {escape(str(e.filename or e))}: not found")
        return 2
    except (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError) as e:
        # an output path the user gave runs into a file (`--out photo.jpg` for a folder) or a
        # folder they may not write: every command that writes ends here, not in a traceback
        reason = _PATH_REASONS[type(e)]
        err.print(f"[red]error:[/] {escape(str(e.filename or e))}: {reason}", soft_wrap=True)
        return 2


CPU_OUT_OF_MEMORY = (
    "out of memory (CPU). Lower --batch-size or --image-size; cnnlab does not shrink the batch for "
    "you because that changes the results"
)


def _runtime_error_message(text: str) -> str | None:
    """The one line for a RuntimeError torch raises at a user's settings or machine (None: any
    other, shown as a traceback). torch says these in its own words, not in exception types:
    ``torch.OutOfMemoryError`` (CUDA) is a RuntimeError "CUDA out of memory", the CPU allocator's
    is a plain RuntimeError "DefaultCPUAllocator: can't allocate memory", and a DataLoader worker
    that died is "DataLoader worker (pid N) is killed by signal: Bus error" or "... exited
    unexpectedly" (pytorch#5040: a full /dev/shm, Docker's 64 MB default)."""
    low = text.lower()
    if "out of memory" in low:
        return (
            "out of GPU memory. Lower --batch-size or --image-size, or use --precision bf16; "
            "cnnlab does not shrink the batch for you because that changes the results"
        )
    if "can't allocate memory" in low:
        return CPU_OUT_OF_MEMORY
    if "dataloader worker" in low:
        return _worker_died(text)
    return None


def _worker_died(text: str) -> str:
    """A process decoding images for `--loader stream` died (only that loader has workers)."""
    said = " ".join(text.split(". ")[0].split())  # torch's first sentence: which pid, which signal
    return (
        f"a process decoding images for the streamed loader died ({said}). Most often the "
        "shared-memory folder /dev/shm is full (a Docker container gets 64 MB: start it with "
        "--shm-size=2g) or memory ran out; or rerun with --loader memory, which decodes the images "
        "once into the cache folder (set CNNLAB_CACHE to a disk with room) and needs no workers"
    )


#: One line per path fault of the operating system (the path is printed before it).
_PATH_REASONS: dict[type[OSError], str] = {
    NotADirectoryError: "a part of this path is a file, not a folder; give another path",
    FileExistsError: "a file is where a folder is needed; give another path or move the file",
    IsADirectoryError: "is a folder where a file is needed; give a file path",
    PermissionError: "permission denied; give a path you may read and write, or fix its rights",
}


if __name__ == "__main__":
    sys.exit(main())
