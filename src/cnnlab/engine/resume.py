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
from pathlib import Path
from typing import Any

import torch

from cnnlab.engine.checkpoint import CheckpointManager
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.run import check_recorded_data

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
    if not (run_dir / "config.json").is_file() or not (run_dir / "checkpoints").is_dir():
        raise CheckpointError(f"nothing to resume: {target} is not a cnnlab run directory")
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
    when given other than the default) and ``resume`` set to the run folder."""
    saved = json.loads((run_dir / "config.json").read_text())
    check_recorded_data(run_dir, saved.get("data"))
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in saved.items():  # JSON has lists where the config holds tuples (augment, ...)
        if isinstance(v, list) and isinstance(getattr(defaults, k, None), tuple):
            saved[k] = tuple(v)
    changes = {
        k: getattr(cfg, k)
        for k in MAY_CHANGE
        if k in names and getattr(cfg, k) != getattr(defaults, k)
    }
    moved = _moved_split_file(saved.get("split_file"), getattr(cfg, "split_file", None), run_dir)
    if moved is not None:
        changes["split_file"] = moved
    return {k: v for k, v in saved.items() if k in names} | changes | {"resume": str(run_dir)}


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
    if state["complete_epoch"]:
        s.epoch, s.step = s.epoch + 1, 0
    for cb in trainer.callbacks:
        cb.load_state_dict(state["callbacks"].get(type(cb).__name__, {}))
    log.info("resumed %s at epoch %d, step %d", entry["tag"], s.epoch + 1, s.step)
