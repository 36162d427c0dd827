"""The run directory: what a training run leaves behind, and how a later command finds it again.

runs/<name>/
  config.json        resolved TrainConfig (enough to rerun: `cnnlab train --config runs/<name>/config.json`)
  classes.json       class names in index order (never re-derived from folders at inference time)
  preprocess.json    PreprocessSpec: size, channels, mean/std, resize, decoding policy
  splits.json        exact sample ids of train / val / test (evaluation reuses the held-out test set)
  data_scan.json     the pre-flight scan of file datasets (skipped files and why)
  metrics.csv        one row per epoch
  test_metrics.json  final metrics on the test split
  run.json           times, precision (training and inference), the machine it ran on
  class_balance.json classification: training class counts, imbalance ratio, class weights, sampler, loss
  checkpoints/       see cnnlab.engine.checkpoint
  report.html, *.png
  evaluations/<time>/  each later `cnnlab evaluate RUN`: its metrics, predictions, report and
                     evaluation.json (precision, machine, weights); what training recorded is never rewritten
  operating_point.json the active decision threshold of a classification run (`cnnlab evaluate RUN
                     --positive C --target ...`; its record also stays in that evaluation's folder),
                     applied by `cnnlab predict RUN`; a file training never writes
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnlab.engine.checkpoint import (
    MANIFEST,
    CheckpointManager,
    apply_run_mode,
    atomic_write,
)
from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.runs_table import folder_bytes

log = logging.getLogger(__name__)


def new_run_dir(
    out: str | Path, name: str | None, model: str, data: str, *, private: bool = False
) -> Path:
    """A fresh folder; never reuses (and so never overwrites) an existing run unless resuming.

    private: the folder is 0700, so everything written in it is 0600 (see engine.checkpoint)."""
    base = Path(out)
    if name is None:
        tag = data.replace("builtin:", "").replace("torchvision:", "").replace("?", "-")
        tag = Path(tag).name
        # characters a shell or scp reads specially (timm:NAME's colon: `scp runs/unet-timm:x`
        # takes "runs/unet-timm" for a host; a query's "&") become "-"
        stem = re.sub(r"[^\w.=+-]+", "-", f"{model}-{tag or 'data'}")
        name = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = base / name
    suffix = 1
    while path.exists():
        suffix += 1
        path = base / f"{name}-{suffix}"
    path.mkdir(parents=True)
    if private:
        os.chmod(path, 0o700)
    return path


def evaluation_dir(out: str | Path | None, run_dir: Path | None) -> Path | None:
    """Where an evaluation writes its files: ``out`` when given (a new or empty folder, never the run
    folder itself), else a new ``<run>/evaluations/<time>/``; None (stdout only) for a checkpoint
    outside a run folder. Evaluation never rewrites what training recorded."""
    if out is not None:
        path = Path(out)
        if run_dir is not None and path.resolve() == run_dir.resolve():
            raise ConfigError(
                f"--out {path} is the run folder itself; evaluation never rewrites what training "
                f"recorded: leave --out out (results go to {run_dir / 'evaluations'}) or name a new folder"
            )
        if path.is_dir() and any(path.iterdir()):
            raise ConfigError(f"--out {path} exists and is not empty; name a new folder")
        path.mkdir(parents=True, exist_ok=True)
        return path
    if run_dir is None:
        return None
    base = run_dir / "evaluations"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, suffix = base / stamp, 1
    while path.exists():
        suffix += 1
        path = base / f"{stamp}-{suffix}"
    path.mkdir(parents=True)
    return path


#: the record cnnlab keeps in a folder it writes a command's output into (predict's masks and
#: predictions.json, explain's page, a video's timeline, an export, conv's picture): what it wrote
#: there, by which command. Those it overwrites when run again; any other file is the user's
OUTPUT_RECORD = ".cnnlab-output.json"


def claim_outputs(
    folder: str | Path,
    names: list[str],
    *,
    command: str,
    default: bool = False,
    flag: str = "--out",
    adopt: bool = False,
    record: bool = True,
) -> Path:
    """The one door of every command that writes into an output folder (``--out``, or one cnnlab
    chose: ``default``): before anything is written, refuse (a one-line ConfigError naming the
    first) when one of ``names`` (paths relative to ``folder``; a name ending in ``/`` is a folder
    cnnlab fills as a whole, such as ``masks/``) already exists there and is not in the folder's
    :data:`OUTPUT_RECORD`; else record them as ``command``'s and return the folder, created.
    Whatever cnnlab wrote there before is overwritten as usual; other files in the folder are left
    alone. Costs one small JSON read and write, and a stat per name (no file is read).
    ``adopt``: the caller knows a folder without a record holds cnnlab's own output from before
    records were kept (explain's default folder whose explain.json names the same image); its
    ``names`` are taken as cnnlab's. ``record=False``: check only, write nothing (a command that
    says so before a long computation, and claims just before it writes)."""
    folder = Path(folder).expanduser()
    if _through_a_file(folder):  # nothing there to overwrite: the command's own write says so
        return folder
    record_path = folder / OUTPUT_RECORD
    outputs: dict[str, str] = {}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or record.get("written_by") != "cnnlab":
            raise _not_ours(folder, OUTPUT_RECORD, default, flag)
        outputs = dict(record.get("outputs") or {})
    elif os.path.lexists(record_path):
        raise _not_ours(folder, OUTPUT_RECORD, default, flag)
    elif adopt:
        outputs = {name: command for name in names}
    for name in names:
        if name in outputs or name.rstrip("/") + "/" in outputs:
            continue
        path = folder / name
        if name.endswith("/"):
            taken = os.path.lexists(path) and (not path.is_dir() or any(path.iterdir()))
        else:
            taken = os.path.lexists(path)
        if taken:
            raise _not_ours(folder, name, default, flag)
    if not record:
        return folder
    outputs |= {name: command for name in names}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(record_path, {
        "written_by": "cnnlab",
        "about": "files and folders cnnlab wrote here, by command; it overwrites only these",
        "outputs": outputs,
    })  # fmt: skip
    return folder


def claim_output_file(path: str | Path, *, command: str, also: tuple[str, ...] = (),
                      default: bool = False, flag: str = "--out", adopt: bool = False,
                      record: bool = True) -> Path:  # fmt: skip
    """:func:`claim_outputs` for a command whose ``flag`` names one file (export, conv's
    picture, embed, lr-find's ``--plot``): the record is kept in the file's folder. ``also``:
    files written beside it (an export's ``.preprocess.json``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path  # the command's own check says it wants a file name
    try:
        claim_outputs(path.parent, [path.name, *also], command=command, default=default, flag=flag,
                      adopt=adopt, record=record)  # fmt: skip
    except _Taken as err:
        taken = path.parent / err.name
        raise ConfigError(
            f"{'' if default else flag + ' '}{path}"
            + (" exists" if taken == path else f": {taken} exists")
            + " and was not written by cnnlab, which never overwrites a file it did not write: "
            + (f"give {flag} a new file name" if default else "name a new file")
            + f", or move {taken}"
        ) from None
    return path


def _through_a_file(folder: Path) -> bool:
    """Whether the nearest existing folder on the way to ``folder`` is a file (``--out
    photo.jpg/x``): the command's write then fails with the operating system's one-line reason."""
    for part in (folder, *folder.parents):
        if os.path.lexists(part):
            return not part.is_dir()
    return False


class _Taken(ConfigError):
    """A name claim_outputs refuses to overwrite (``name``: relative to the folder)."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


def _where(folder: Path, default: bool, flag: str) -> str:
    return f"output folder {folder}" if default else f"{flag} {folder}"


def _not_ours(folder: Path, name: str, default: bool, flag: str) -> _Taken:
    fix = f"give {flag} a new or empty folder" if default else "name a new or empty folder"
    return _Taken(
        f"{_where(folder, default, flag)}: {name} exists and was not written by cnnlab, which never "
        f"overwrites a file it did not write: {fix}, or move {folder / name}",
        name,
    )


def record_evaluation(
    out_dir: Path | None,
    *,
    task: str,
    weights: Path,
    data: str | None,
    split: str,
    num_samples: int,
    precision: str,
    device: Any,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What an evaluation ran on and how, written as ``out_dir/evaluation.json`` (when there is one)
    and returned for the caller's result; ``extra``: more entries (classification's ``tta``: the
    metrics without and with test-time augmentation)."""
    from cnnlab.engine.devices import machine_info

    record = {
        "task": task,
        "weights": str(weights),
        "data": data or "recorded",
        "split": split if data is None else "all",
        "num_samples": num_samples,
        "precision": precision,
        "device": str(device),
        "machine": machine_info(device),
        "out_dir": str(out_dir) if out_dir is not None else None,
    } | (extra or {})
    if out_dir is not None:
        write_json(out_dir / "evaluation.json", record)
    return record


def trained_precision(run_dir: Path | None) -> str | None:
    """The precision a run trained and validated with (its run.json), or None when unknown."""
    if run_dir is None or not (run_dir / "run.json").is_file():
        return None
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record.get("precision")


def finish_run_dir(run_dir: Path, console: Any = None) -> int:
    """One file mode for the whole run folder (apply_run_mode), then say its size; returns bytes."""
    apply_run_mode(run_dir)
    size = folder_bytes(run_dir)
    message = f"run folder {run_dir}: {size / 1e6:.1f} MB on disk"
    if console is not None:  # said once: on the console, else in the log (-v showed it twice)
        console.print(message)
    else:
        log.info(message)
    return size


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, default=_jsonable).encode()
    atomic_write(Path(path), lambda f: f.write(text))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; is this a cnnlab run directory?") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def _export_hint(path: Path) -> str:
    """What to give instead of an exported model a command cannot read (`predict` and `segment` /
    `detect predict` take an .onnx export themselves, before they get here)."""
    name = path.name.lower()
    if name.endswith(".onnx"):
        return (
            " (an ONNX export is read by `cnnlab predict FILE.onnx`; for this command give the "
            "run it was exported from, or its .safetensors export)"
        )
    if name.endswith(".torchscript.pt"):
        return (
            " (a TorchScript export is for LibTorch/C++; give the run it was exported from, or "
            "its .safetensors or .onnx export)"
        )
    return ""


def resolve_weights(path: str | Path, prefer: str = "best") -> Path:
    """A run directory or a checkpoint file -> the .safetensors weights to use (sha256-verified when listed)."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".safetensors":
            raise CheckpointError(
                f"{p}: expected a run directory or a .safetensors checkpoint{_export_hint(p)}"
            )
        return p
    if not p.is_dir():
        raise CheckpointError(f"run or checkpoint not found: {p}")
    folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    if not (folder / MANIFEST).is_file():
        raise CheckpointError(f"{p} has no checkpoints/{MANIFEST}; is it a cnnlab run directory?")
    manager = CheckpointManager(folder)
    best = manager.manifest().get("best")
    if prefer == "best" and best:
        if manager.verify(best):
            return folder / best["file"]
        # bad-inputs case 46: another checkpoint's weights in its place would answer for the
        # run without a word (the newest epoch is not the best one)
        raise CheckpointError(corrupt_message(folder / best["file"], best, manager))
    entry = manager.latest_verified()
    if entry is None:
        raise CheckpointError(f"no verified checkpoint in {folder} (all incomplete or corrupt)")
    return folder / entry["weights"]["file"]


def corrupt_message(path: Path, entry: dict[str, Any], manager: Any) -> str:
    """Bad-inputs case 46's one line: the file, its size and the manifest's, and a checkpoint of
    the run that verifies, to pass instead."""
    size = f"{path.stat().st_size:,} bytes" if path.is_file() else "missing"
    other = manager.latest_verified()
    instead = (
        f"; {path.parent / other['weights']['file']} (epoch {other['tag'].split('-')[-1].lstrip('0')}) "
        "verifies: pass it instead of the run folder"
        if other is not None
        else "; no other checkpoint of the run verifies"
    )
    return (
        f"incomplete or corrupt checkpoint: {path} ({size}; the manifest recorded "
        f"{entry['bytes']:,} bytes, sha256 {entry['sha256'][:12]}...){instead}"
    )


def load_run_model(
    run_or_checkpoint: str | Path,
    *,
    task: str,
    keys: tuple[str, ...],
    build: Callable[[dict[str, Any]], Any],
    device: Any = "cpu",
) -> tuple[Any, dict[str, Any], Path]:
    """(model in eval mode on ``device``, metadata, weights path) of a run folder or .safetensors
    checkpoint of ``task``: checks the task and the metadata ``keys``, builds the model with
    ``build(metadata)`` and loads the weights strictly; a mismatch is a CheckpointError."""
    from cnnlab.engine.checkpoint import read_weights

    weights = resolve_weights(run_or_checkpoint)
    state, meta = read_weights(weights)
    if meta.get("task", "classification") != task:
        raise CheckpointError(
            f"{weights} is a {meta.get('task', 'classification')} checkpoint, not a {task} one; "
            "use the command of its task"
        )
    missing = [k for k in keys if k not in meta]
    if missing:
        raise CheckpointError(f"{weights} lacks metadata {missing}")
    model = build(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{weights} does not fit {meta.get('model')}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta, weights


def run_dir_of(weights: Path) -> Path | None:
    """The run folder a checkpoint belongs to, if it sits in `<run>/checkpoints/`."""
    parent = weights.parent
    if parent.name == "checkpoints" and (parent.parent / "config.json").is_file():
        return parent.parent
    return None


def relpath(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def saved_config(run_dir: Path) -> dict[str, Any]:
    saved = read_json(run_dir / "config.json")
    saved["augment"] = tuple(saved.get("augment", ()))
    saved["resume"] = None
    return saved


#: config options that may name a file or folder of the user's: config.json records them absolute
PATH_OPTIONS = ("data", "data_root", "split_file", "weights", "init_from")
#: what those options accept besides a path (a folder of that name in the working folder loses)
_NOT_PATHS = frozenset({"imagenet", "kinetics", "none", "auto"})


def recorded_config(cfg: Any) -> dict[str, Any]:
    """``cfg`` as config.json records it: a relative path the user gave (``--data photos``) is
    made absolute where it exists, so the run evaluates, resumes and reruns from any working
    folder (recorded as given, "photos" only worked from the folder training started in)."""
    record = cfg.to_dict()
    for key in PATH_OPTIONS:
        value = record.get(key)
        if not isinstance(value, str) or value in _NOT_PATHS or os.path.isabs(value):
            continue
        if Path(value).expanduser().exists():
            record[key] = os.path.abspath(os.path.expanduser(value))
    return record


def source_config(run_dir: Path, relocated: str | Path | None = None) -> dict[str, Any]:
    """The config that reloads the data a run was trained on, for picking its recorded splits
    (splits.json) by sample id: :func:`saved_config`, except that a run trained on a split file
    reads its source pooled, as load_source does before applying one. The split file itself is
    not read again: splits.json names the same ids, and the path config.json records can be gone
    (a `cnnlab cv` fold records its CV/folds/fold-I.json absolutely; the folder may have been moved
    or copied to another machine since).

    ``relocated``: the run's dataset at its new place (``--relocated-data``: moved, copied to
    another machine); the samples of the recorded splits are then looked up there by id."""
    saved = saved_config(run_dir)
    if relocated is not None:
        saved["data"] = relocated_data(run_dir, saved.get("data"), relocated)
    check_recorded_data(
        run_dir, saved.get("data"), "or say where it is now with --relocated-data PATH"
    )
    if saved.get("split_file"):
        saved |= {"split_file": None, "val_fraction": 0.0, "test_fraction": 0.0}
    return saved


def check_one_dataset(data: Any, relocated: Any) -> None:
    """Evaluation reads the run's own dataset (perhaps at a new place) or another one, not both."""
    if data is not None and relocated is not None:
        raise ConfigError(
            "--relocated-data says where the run's own dataset is now; --data names another "
            "dataset to evaluate on: give one of them"
        )


def relocated_data(
    run_dir: Path, recorded: str | None, new: str | Path, flag: str = "--relocated-data"
) -> str:
    """``new`` (given with ``flag``), checked, in place of the dataset path the run recorded;
    whether it holds the same samples is checked where its splits are picked (by id: a sample
    missing there is named) or, for a resume, against splits.json."""
    if not recorded or str(recorded).startswith(("builtin:", "torchvision:")):
        raise ConfigError(
            f"{flag} {new}: {run_dir} was trained on {recorded}, not on files of yours; leave "
            f"{flag} out"
        )
    if str(new).startswith(("builtin:", "torchvision:")):  # not a place: another dataset
        raise ConfigError(
            f"{flag} {new}: {run_dir} was trained on {recorded}; {flag} says where that dataset "
            f"is now (moved or copied), not another one: give its new path, or leave {flag} out"
        )
    if not Path(new).expanduser().exists():
        raise DataError(
            str(new), f"{flag}: no such file or folder; give where the run's dataset is now"
        )
    return os.path.abspath(os.path.expanduser(str(new)))


def check_recorded_data(run_dir: Path, data: str | None, how: str) -> None:
    """A DataError naming the run and its dataset when the folder or CSV it was trained on is not
    where config.json says (moved or deleted): evaluating or resuming the run re-reads its splits
    from it, and "dataset root not found; give a folder ..." would not say whose path that is.
    ``how``: the calling command's way to give the new place."""
    if not data or str(data).startswith(("builtin:", "torchvision:")):
        return
    if not Path(data).expanduser().exists():
        # runs before config.json recorded absolute paths: relative to where training started
        where = "" if os.path.isabs(data) else " (relative to the folder training ran in)"
        raise DataError(
            data,
            f"the dataset {run_dir} was trained on is not there now{where} (moved or deleted?); "
            f"the run names its samples by their paths relative to it (splits.json): put it back "
            f"at that path, {how}",
        )


def checkpoint_metadata(run: str | Path) -> dict[str, Any]:
    """A run's checkpoint metadata, read from the safetensors header only (no tensors)."""
    from safetensors import SafetensorError, safe_open

    weights = resolve_weights(run)
    try:
        with safe_open(str(weights), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"incomplete or corrupt checkpoint: {weights} ({err})") from None
    meta: dict[str, Any] = {"weights": str(weights)}
    for key, value in raw.items():  # cnnlab stores each value as JSON text
        try:
            meta[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            meta[key] = value
    return meta
