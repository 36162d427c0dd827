"""Past runs at a glance (`cnnlab runs [FOLDER]`) and freeing their disk (`cnnlab runs clean`).

Reads what each run folder recorded (config.json, run.json, metrics.csv, test_metrics.json, the
checkpoint manifest) and never rewrites it; only :func:`clean`, asked to, deletes checkpoint files
that a ``--keep`` policy would not have kept. Torch-free, so `cnnlab runs` starts at once (the run
folder layout is described in :mod:`cnnlab.run`).

A folder is a run when it holds config.json or checkpoints/; other folders are searched for runs
(a transfer study's runs sit one level deeper). A run whose files cannot be read is reported as a
problem (path and reason) and left out; the others are still listed.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import json
import math
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CheckpointError, ConfigError, close_matches

#: task -> (its main test metric in test_metrics.json, the validation column in metrics.csv used
#: when a run has no test split), what `cnnlab runs` shows and sorts by
MAIN_METRIC = {
    "classification": ("accuracy", "val_accuracy"),
    "segmentation": ("mean_iou", "val_miou"),
    "detection": ("map_50", "val_map50"),
    "video-classification": ("accuracy", "val_accuracy"),
}
#: a multi-label classification run (run.json "multilabel"): test_metrics.json's macro F1
MULTILABEL_METRIC = ("macro_f1", "val_macro_f1")
#: the columns `--sort` may name (the table's)
SORT_KEYS = ("date", "name", "task", "model", "data", "metric", "epochs", "time", "size")
#: newest epoch checkpoints each --keep policy keeps (None: all), as cnnlab.engine.checkpoint.KEEP
#: (which imports torch); `runs clean` never deletes best.safetensors whatever the policy
KEEP_POLICY = {"best": 1, "last": 1, "all": None}
SKIP_DIRS = {"checkpoints", "evaluations", "mlartifacts", "figures", "tensorboard", "__pycache__"}


@dataclass
class RunRow:
    """One past run as `cnnlab runs` shows it (``--json`` gives these fields)."""

    path: str
    name: str
    task: str
    model: str
    data: str
    metric: str | None = None  # e.g. "accuracy" (test split) or "val_accuracy" (no test split)
    value: float | None = None
    low: float | None = None  # the interval the run recorded for it (95% bootstrap), if any
    high: float | None = None
    epochs_done: int = 0
    epochs: int | None = None  # planned
    time_s: float | None = None  # the run's recorded wall time (start-up to report)
    size_bytes: int = 0
    date: str = (
        ""  # when the run finished (run.json written), else started; local "YYYY-mm-dd HH:MM"
    )
    finished: bool = True  # False: no run.json yet (running, interrupted or failed)
    timestamp: float = field(default=0.0, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "timestamp"}


@dataclass(frozen=True)
class Problem:
    """A run folder that could not be read: its path and why, in one line."""

    path: str
    reason: str


def find_runs(folder: str | Path, max_depth: int = 3) -> list[Path]:
    """Run folders under ``folder`` (or ``folder`` itself when it is one), sorted by path."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise ConfigError(
            f"runs folder not found: {root}; name the folder `cnnlab train --out` wrote to"
        )
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; name a runs folder (default: runs)")
    if is_run(root):
        return [root]
    found: list[Path] = []

    def walk(path: Path, depth: int) -> None:
        try:
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.name in SKIP_DIRS:
                continue
            if is_run(child):
                found.append(child)
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(root, 1)
    return found


def is_run(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "checkpoints").is_dir()


def read_runs(folder: str | Path) -> tuple[list[RunRow], list[Problem]]:
    """Every run under ``folder`` as a row, and the folders that could not be read; a folder
    holding no run at all is a ConfigError."""
    rows, problems = [], []
    root = Path(folder).expanduser()
    runs = find_runs(folder)
    if not runs:
        raise ConfigError(
            f"no cnnlab runs in {folder} (a run folder holds config.json); name the folder "
            "`cnnlab train --out` wrote to"
        )
    for path in runs:
        try:
            row = read_run(path)
        except CheckpointError as err:
            problems.append(Problem(str(path), str(err)))
            continue
        if path != root:  # a run below a study's folder is named by its path under FOLDER: two
            # studies' "scratch-5-seed0" were two rows of the same name
            row.name = path.relative_to(root).as_posix()
        rows.append(row)
    return rows, problems


def read_run(path: Path) -> RunRow:
    """One run folder as a row; CheckpointError (one line naming the file) when it is corrupt."""
    config = _json_object(path / "config.json")
    record = _json_object(path / "run.json") if (path / "run.json").exists() else None
    task = (record or {}).get("task") or checkpoint_task(path) or task_of_config(config)
    history = read_metrics_csv(path / "metrics.csv")
    row = RunRow(
        path=str(path), name=path.name, task=str(task), model=model_label(config),
        data=str(config.get("data", "?")), epochs_done=len(history),
        epochs=config.get("epochs"), size_bytes=folder_bytes(path), finished=record is not None,
    )  # fmt: skip
    if record is not None:
        split = record.get("time_split_s") or {}
        row.time_s = split.get("total", record.get("train_time_s"))
    stamp_file = path / "run.json" if record is not None else path / "config.json"
    row.timestamp = stamp_file.stat().st_mtime
    row.date = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.timestamp))
    test_name, val_name = MAIN_METRIC.get(row.task, ("accuracy", "val_accuracy"))
    multilabel = bool((record or {}).get("multilabel"))
    if multilabel:  # several labels per image: macro F1 at the run's per-label thresholds
        test_name, val_name = MULTILABEL_METRIC
    if (path / "test_metrics.json").exists():
        test = _json_object(path / "test_metrics.json")
        value = (test.get("macro") or {}).get("f1") if multilabel else test.get(test_name)
        row.metric, row.value = test_name, _number(value)
        interval = (test.get("confidence_intervals") or {}).get(test_name) or {}
        row.low, row.high = _number(interval.get("low")), _number(interval.get("high"))
    elif history and val_name in history[-1]:  # no test split: the last epoch's validation
        row.metric, row.value = val_name, _number(history[-1][val_name])
    return row


def model_label(config: dict[str, Any]) -> str:
    """The model a run trained, as its folder names it: segmentation adds its encoder, detection
    its backbone (``unet-resnet18``, ``fasterrcnn-resnet18``)."""
    model = str(config.get("model", "?"))
    for part in ("encoder", "backbone"):
        if config.get(part):
            return f"{model}-{config[part]}"
    return model


def task_of_config(config: dict[str, Any]) -> str:
    """A run's task from its config's own fields (for a run with no run.json nor checkpoint)."""
    if "encoder" in config:
        return "segmentation"
    if "backbone" in config:
        return "detection"
    if "frames" in config:
        return "video-classification"
    return "classification"


def checkpoint_task(path: Path) -> str | None:
    """The task recorded in a run's checkpoint, read from the safetensors header alone (8 bytes of
    length, then JSON): no tensors, no torch."""
    folder = path / "checkpoints"
    candidates = [folder / "best.safetensors", *sorted(folder.glob("epoch-*.safetensors"))]
    for weights in candidates:
        with contextlib.suppress(OSError, ValueError, struct.error, json.JSONDecodeError):
            with open(weights, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                if size > 100_000_000:
                    continue
                meta = json.loads(f.read(size)).get("__metadata__") or {}
            if "task" in meta:
                return str(json.loads(meta["task"]))
    return None


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """metrics.csv as one dict per epoch (numbers); [] when the run has none yet."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            return [
                {k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f)
            ]
    except (OSError, ValueError, csv.Error, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable metrics table: {err}") from None


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (apparent sizes, as `du --apparent-size -b`: a file
    with several names -- best.safetensors linked to its epoch's weights -- counts once)."""
    total, seen = 0, set()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(root, name))
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def _bytes_freed(paths: Iterable[Path]) -> int:
    """What deleting ``paths`` frees: the size of each file all of whose names are among them (an
    epoch's weights that best.safetensors is a hard link to stay on disk under that name)."""
    names: dict[tuple[int, int], list[os.stat_result]] = {}
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            names.setdefault((st.st_dev, st.st_ino), []).append(st)
    return sum(sts[0].st_size for sts in names.values() if len(sts) >= sts[0].st_nlink)


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a complete cnnlab run folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}); the run folder is corrupt"
        ) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# -- choosing and ordering ---------------------------------------------------------------------------
def select(
    rows: Iterable[RunRow],
    *,
    task: str | None = None,
    model: str | None = None,
    data: str | None = None,
    sort: str = "date",
    reverse: bool = False,
) -> list[RunRow]:
    """The rows whose task starts with ``task``, whose model matches the glob ``model`` and whose
    data contains ``data``, ordered by ``sort`` (one of SORT_KEYS; rows without a value last)."""
    if sort not in SORT_KEYS:
        raise ConfigError(
            f"--sort {sort!r}: not a column{close_matches(sort, SORT_KEYS)}; choose from "
            f"{', '.join(SORT_KEYS)}"
        )
    if task is not None and not any(name.startswith(task) for name in MAIN_METRIC):
        # a typo (`--task segmentaton`) would list no run, as if there were none of that task
        raise ConfigError(
            f"--task {task!r}: not a task{close_matches(task, list(MAIN_METRIC))}; "
            "choose from classification, segmentation, detection, video (or a prefix of one)"
        )
    chosen = [
        r for r in rows
        if (task is None or r.task.startswith(task))
        and (model is None or fnmatch.fnmatch(r.model, model) or model in r.model)
        and (data is None or data in r.data)
    ]  # fmt: skip
    key = {
        "date": lambda r: r.timestamp, "name": lambda r: r.name, "task": lambda r: r.task,
        "model": lambda r: r.model, "data": lambda r: r.data, "metric": lambda r: r.value,
        "epochs": lambda r: r.epochs_done, "time": lambda r: r.time_s, "size": lambda r: r.size_bytes,
    }[sort]  # fmt: skip
    known = [r for r in chosen if key(r) is not None and key(r) == key(r)]  # NaN: unknown
    unknown = [r for r in chosen if r not in known]
    return sorted(known, key=key, reverse=reverse) + unknown


def format_metric(row: RunRow) -> str:
    """'accuracy 0.912 [0.887, 0.934]' (the interval when recorded); '' when there is none."""
    if row.metric is None:
        return ""
    if row.value is None or math.isnan(row.value):
        return f"{row.metric} n/a"
    text = f"{row.metric} {row.value:.3f}"
    if row.low is not None and row.high is not None:
        text += f" [{row.low:.3f}, {row.high:.3f}]"
    return text


def format_bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- cnnlab runs clean -------------------------------------------------------------------------------
@dataclass
class CleanPlan:
    """What `cnnlab runs clean` would delete in one run: checkpoint files a ``--keep`` policy
    would not have kept (best.safetensors and the newest epoch's files are never among them)."""

    run: Path
    files: list[Path]
    bytes: int
    keep_tags: list[str]  # the manifest entries that stay


def clean_plan(runs: Iterable[Path], keep: str = "best") -> tuple[list[CleanPlan], list[Problem]]:
    """For each finished run with checkpoints: the files that ``keep`` (best | last | all) would
    not have kept -- manifest entries older than the newest ones kept, and epoch files no manifest
    lists (left by a kill while checkpointing). Unfinished runs (no run.json: maybe still
    training) are left alone and listed as problems. Reads only; :func:`clean` deletes."""
    if keep not in KEEP_POLICY:
        raise ConfigError(
            f"--keep {keep!r}{close_matches(keep, KEEP_POLICY)}; choose from best, last, all"
        )
    newest = KEEP_POLICY[keep]
    plans, problems = [], []
    for run in runs:
        folder = run / "checkpoints"
        if not folder.is_dir():
            continue
        if not (run / "run.json").is_file():  # it may be training: its newest files are in flight
            problems.append(Problem(str(run), f"{run}: unfinished (no run.json), left alone"))
            continue
        try:
            manifest = (
                _json_object(folder / "manifest.json")
                if (folder / "manifest.json").exists()
                else None
            )
        except CheckpointError as err:
            problems.append(Problem(str(run), str(err)))
            continue
        if manifest is None:  # no manifest: nothing is known to be resumable, delete nothing
            continue
        entries = list(manifest.get("checkpoints") or [])
        kept = entries if newest is None else entries[-newest:]
        referenced = {"manifest.json", "best.safetensors"}
        best = manifest.get("best") or {}
        if best.get("file"):
            referenced.add(best["file"])
        for e in kept:
            referenced |= {e["weights"]["file"], e["state"]["file"]}
        files = sorted(
            p for p in folder.iterdir()
            if p.is_file() and not p.is_symlink() and p.name not in referenced
            and (p.name.startswith("epoch-") or (p.name.startswith(".") and p.name.endswith(".tmp")))
        )  # fmt: skip
        if files:
            size = _bytes_freed(files)
            plans.append(CleanPlan(run, files, size, [e["tag"] for e in kept]))
    return plans, problems


def clean(plans: Iterable[CleanPlan]) -> int:
    """Delete what the plans name: each run's manifest is rewritten first (atomically, listing only
    the entries kept), then the files go, so a kill half-way leaves a consistent run. Bytes freed."""
    from cnnlab.engine.checkpoint import atomic_write  # torch: only when deleting

    freed = 0
    for plan in plans:
        manifest_path = plan.run / "checkpoints" / "manifest.json"
        manifest = _json_object(manifest_path)
        manifest["checkpoints"] = [
            e for e in manifest.get("checkpoints") or [] if e["tag"] in plan.keep_tags
        ]
        text = json.dumps(manifest, indent=2).encode()
        atomic_write(manifest_path, lambda f, text=text: f.write(text))
        for path in plan.files:
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                path.unlink()
                freed += st.st_size if st.st_nlink == 1 else 0  # else still on disk by another name
    return freed
