"""`--resume RUN`: find the newest checkpoint that verifies and put a trainer back where it stopped.

Written once for every task: the run folder's ``checkpoints/`` (cnnlab.engine.checkpoint) holds the
weights and, for a resumable checkpoint, the optimizer, scheduler, scaler, RNG, loop position and
callback states. A SIGKILL can leave the newest checkpoint half-written: ``latest_verified`` falls
back to the previous one that checks against the manifest's SHA-256 (and says so).

Bit-identity: with ``--deterministic`` the resumed run's batches (the loaders draw order and
augmentation from (seed, epoch, step)), RNG and optimizer state are those the uninterrupted run
had at that step, so its final weights are bit-identical (tested per task).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from cnnlab.engine.checkpoint import CheckpointManager
from cnnlab.errors import CheckpointError, ConfigError, DataError
from cnnlab.run import PATH_OPTIONS, check_recorded_data, relocated_data

log = logging.getLogger(__name__)

# What a resume may change from the run's own config; everything else is the run's (tracking
# changes no result: a resume may start or redirect it).
MAY_CHANGE = ("epochs", "device", "precision", "early_stopping", "devices", "track", "track_uri")


def resume_target(
    resume: str, out: str | Path, name: str | None, task: str = "classification"
) -> tuple[Path, dict[str, Any]]:
    """``--resume RUN_DIR | CHECKPOINT | auto`` -> (run folder, manifest entry to restore); a run of
    another ``task`` is refused naming both (bad-inputs case 72)."""
    target = Path(resume)
    if resume == "auto":
        if not name:
            raise ConfigError(
                "--resume auto needs --name (the run folder under --out) to find the run"
            )
        target = Path(out) / name
    run_dir = target if target.is_dir() else target.parent.parent
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"nothing to resume: {target} is not a cnnlab run directory")
    if not (run_dir / "checkpoints").is_dir():
        raise CheckpointError(
            f"nothing to resume in {run_dir}: the run stopped before its first checkpoint; "
            "train it again without --resume"
        )
    entry = CheckpointManager(run_dir / "checkpoints").latest_verified()
    if entry is None:
        raise CheckpointError(f"nothing to resume in {run_dir}: no verified checkpoint")
    recorded = _recorded_task(run_dir / "checkpoints" / entry["weights"]["file"])
    if recorded != task:
        command = COMMANDS.get(recorded, "the command of its task")
        raise CheckpointError(
            f"{run_dir} is a {recorded} run, not a {task} one; resume it with "
            f"`{command} --resume {run_dir}`"
        )
    return run_dir, entry


def check_unfinished(run_dir: Path, entry: dict[str, Any], epochs: int) -> None:
    """Bad-inputs case 49: a run that trained all ``epochs`` and finished has nothing to resume.
    Resumed anyway, it trained nothing and then evaluated, reported and rewrote run.json and
    config.json over what the run recorded. ``epochs``: the resume's (--epochs may extend it).

    A run's last act is recording its time split in run.json (after its test evaluation and
    report): a run stopped after its last epoch but before that resumes to finish them, as
    `cnnlab cv` resumes such a fold."""
    tag = str(entry.get("tag", ""))
    # the tag counts from 1 in every manifest (epoch-0001 holds epoch 1); the "epoch" field
    # counted from 0 in manifests written before session 15
    done = int(tag.split("-")[1]) if tag.startswith("epoch-") and entry.get("complete_epoch") else 0
    try:
        finished = "time_split_s" in json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        finished = False
    if finished and done >= epochs:
        raise CheckpointError(
            f"nothing to resume: {run_dir} trained all its {epochs} epochs; to train it longer, "
            f"resume with --epochs N (more than {done}), or start a new run"
        )


COMMANDS = {  # task -> the command that trains (and resumes) it
    "classification": "cnnlab train",
    "segmentation": "cnnlab segment train",
    "detection": "cnnlab detect train",
    "video-classification": "cnnlab video train",
}


def _recorded_task(weights: Path) -> str:
    """The task in a checkpoint's safetensors header (no tensors read)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        value = (f.metadata() or {}).get("task", '"classification"')
    try:
        return str(json.loads(value))
    except json.JSONDecodeError:
        return str(value)


def resumed_config(cls: type, cfg: Any, run_dir: Path) -> dict[str, Any]:
    """The run's own config (its config.json) with what this call may change (:data:`MAY_CHANGE`,
    when given other than the default) and ``resume`` set to the run folder.

    ``--data PATH`` other than the recorded one says where the run's dataset is now (moved, copied
    to another machine): fit then checks it holds the samples the run trained on
    (:func:`check_same_samples`). Any other option given with a value other than the run's own is
    refused: a resume goes on with the run as it began, and silently dropping ``--lr 0.01`` would
    train on at a rate the user did not choose."""
    saved = json.loads((run_dir / "config.json").read_text())
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in saved.items():  # JSON has lists where the config holds tuples (augment, ...)
        if isinstance(v, list) and isinstance(getattr(defaults, k, None), tuple):
            saved[k] = tuple(v)
    if cfg.data != defaults.data and not _same_path(cfg.data, saved.get("data")):
        saved["data"] = relocated_data(run_dir, saved.get("data"), cfg.data, "--data")
        log.info("%s: its dataset, now at %s", run_dir, saved["data"])
    check_recorded_data(run_dir, saved.get("data"), "or give its new place with --data PATH")
    changes = {
        k: getattr(cfg, k)
        for k in MAY_CHANGE
        if k in names and getattr(cfg, k) != getattr(defaults, k)
    }
    moved = _moved_split_file(saved.get("split_file"), getattr(cfg, "split_file", None), run_dir)
    if moved is not None:
        changes["split_file"] = moved
    _refuse_other_changes(cfg, defaults, saved, names - set(MAY_CHANGE) - set(changes), run_dir)
    return {k: v for k, v in saved.items() if k in names} | changes | {"resume": str(run_dir)}


#: options a resume reads differently: where the run is (out, name, resume) and its data (above)
_RESUME_OWN = frozenset({"out", "name", "resume", "data"})


def _refuse_other_changes(
    cfg: Any, defaults: Any, saved: dict[str, Any], names: set[str], run_dir: Path
) -> None:
    """A ConfigError naming every option given with a value other than the run's own. Only values
    other than the default can be told from "not given"; "auto" (--lr auto, --compile auto) was
    resolved when the run began, so the run's recorded value is what it chose."""
    differ = []
    for k in sorted(names - _RESUME_OWN):
        given, default = getattr(cfg, k), getattr(defaults, k)
        if given == default or given == "auto" or k not in saved:
            continue
        own = saved[k]
        same = _same_path(given, own) if k in PATH_OPTIONS else given == own
        if not same:
            differ.append(f"--{k.replace('_', '-')} {_shown(given)} (the run's: {_shown(own)})")
    if differ:
        raise ConfigError(
            f"{run_dir} resumes as it began; these options differ from its own: "
            f"{', '.join(differ)}; leave them out (a resume may change "
            f"{', '.join('--' + k.replace('_', '-') for k in MAY_CHANGE if k in saved)}), "
            "or start a new run"
        )


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _same_path(a: Any, b: Any) -> bool:
    """The same option value, a relative and an absolute spelling of one path included."""
    if a == b:
        return True
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def check_same_samples(run_dir: Path, files: dict[str, Any], data: str) -> None:
    """A resume trains on the samples, splits and classes its run began with. Its data, read
    again (moved, copied or changed since), must give the classes.json and splits.json the run
    recorded: otherwise training would go on with samples moved between splits (test images in
    training) or with class indices shifted. Runs without those records are not checked."""
    problems = []
    recorded_classes = _read_record(run_dir / "classes.json")
    if recorded_classes is not None and recorded_classes != files.get("classes.json"):
        problems.append(f"classes {files.get('classes.json')}, not {recorded_classes}")
    recorded = _read_record(run_dir / "splits.json") or {}  # none yet: a torchrun restart
    new = files.get("splits.json") or {}  # of a first attempt that stopped before writing it
    for key in ("splits", "labels"):
        if key not in recorded:
            continue
        mine, theirs = recorded[key] or {}, new.get(key) or {}
        for split in sorted(set(mine) | set(theirs)):
            a, b = mine.get(split, []), theirs.get(split, [])
            if a == b:
                continue
            gone, added = len(set(a) - set(b)), len(set(b) - set(a))
            if key == "labels" or not (gone or added):
                problems.append(f"{split} split labelled or ordered differently")
            else:
                problems.append(f"{split} split: {gone} of its {len(a)} samples gone, {added} new")
    if problems:
        raise DataError(
            data,
            f"does not hold what {run_dir} trained on ({'; '.join(problems)}); a resume goes on "
            "with the same samples: put the dataset back as it was, or start a new run",
        )


def _read_record(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _moved_split_file(recorded: str | None, given: str | None, run_dir: Path) -> str | None:
    """``given`` in place of the split file the run recorded, when that one is gone (a `cnnlab cv`
    folder moved or copied elsewhere: its folds record their split files' absolute paths) and
    ``given`` names the splits the run trained on (its splits.json: the same val and test ids, a
    train split holding the run's own, which --shots may have thinned); else None (the recorded
    one is used, and a missing one is reported by load_source, naming it)."""
    if not recorded or not given or given == recorded or Path(recorded).expanduser().is_file():
        return None
    try:
        content = json.loads(Path(given).expanduser().read_text(encoding="utf-8"))
        mine = json.loads((run_dir / "splits.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    theirs = content.get("splits", content) if isinstance(content, dict) else {}
    if not isinstance(theirs, dict):
        return None
    for split, ids in mine.items():
        other = theirs.get(split) or []
        if not isinstance(other, list):
            return None
        same = set(ids) <= set(other) if split == "train" else sorted(ids) == sorted(other)
        if not same:
            raise ConfigError(
                f"{run_dir} was trained on the split file {recorded}, which is gone, and the "
                f"split file {given} given instead has another {split!r} split; resume with "
                "the run's own split file (the run's splits.json names its samples)"
            )
    log.info("%s: split file %s (moved from %s)", run_dir, given, recorded)
    return given


def restore(trainer: Any, model: torch.nn.Module, run_dir: Path, entry: dict[str, Any]) -> None:
    """Load the checkpoint ``entry`` of ``run_dir`` into ``model`` and ``trainer`` (optimizer,
    scheduler, scaler, RNG, loop position, callbacks)."""
    weights, _, state = CheckpointManager(run_dir / "checkpoints").load(entry)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{run_dir}: the checkpoint does not fit the model: {str(err).splitlines()[0]}"
        ) from None
    if state is None:
        raise CheckpointError(f"{run_dir}: checkpoint {entry['tag']} holds no training state")
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    s = trainer.state
    s.history, s.global_step = list(state["history"]), int(state["global_step"])
    s.epoch, s.step = int(state["epoch"]), int(state["step"])
    # older checkpoints have no sums: their resumed epoch averages the batches after the resume
    seen, loss, correct = state.get("epoch_sums", (0, 0.0, 0.0))
    s.epoch_sums = (int(seen), float(loss), float(correct))
    if state["complete_epoch"]:
        s.epoch, s.step = s.epoch + 1, 0
    for cb in trainer.callbacks:
        cb.load_state_dict(state["callbacks"].get(type(cb).__name__, {}))
    log.info("resumed %s at epoch %d, step %d", entry["tag"], s.epoch + 1, s.step)
