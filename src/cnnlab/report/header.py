"""What every report opens with: which model, trained how, on what, where and when.

Read from the run folder only (``config.json``: the merged options; ``run.json``: precision,
device, machine, cnnlab version, augmentations; ``splits.json``: the split sizes; ``metrics.csv``: the epochs
run; the best checkpoint's safetensors header: the parameter count), so a report written later
by ``cnnlab evaluate`` says the same as the one written at the end of training. Torch-free: the
parameter count is summed from the shapes in the safetensors header, no tensor is read.
"""

from __future__ import annotations

import csv
import datetime
import html
import json
import math
import struct
from pathlib import Path
from typing import Any

__all__ = ["count_checkpoint_params", "format_count", "run_facts", "run_header_html"]

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # statistics, not parameters


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a report is still written for a run folder missing a file
        return {}


def count_checkpoint_params(path: Path) -> int | None:
    """Number of parameters in a ``.safetensors`` file from its header (BatchNorm running
    statistics left out); None when the file is missing or not safetensors."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:  # not a safetensors header
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return None
    return sum(
        math.prod(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and not name.endswith(_BUFFERS)
    )


def format_count(value: float, unit: str = "") -> str:
    """Compact: 61,100,000 -> '61.1 M', 1.8e9 -> '1.8 G', 952 -> '952' (then the unit)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            text = f"{value / factor:.1f} {prefix}"
            break
    else:
        text = f"{value:,.0f}" if float(value).is_integer() else f"{value:.3g}"
    return f"{text} {unit}".strip() if unit else text


def _epochs_run(metrics_csv: Path) -> int | None:
    try:
        with open(metrics_csv, newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except OSError:
        return None


def _utc(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


#: how the report names an augmentation with its strengths (config.json's --mixup-alpha, ...)
_STRENGTHS = {
    "randaugment": "randaugment ({randaugment_ops} ops, magnitude {randaugment_magnitude})",
    "jitter": "jitter {jitter:g}",
    "erasing": "erasing (p {erasing_prob:g})",
    "mixup": "mixup (alpha {mixup_alpha:g})",
    "cutmix": "cutmix (alpha {cutmix_alpha:g})",
}


def _augmentation(names: list[str], cfg: dict[str, Any]) -> str:
    """'crop, randaugment (2 ops, magnitude 9), mixup (alpha 0.2)': the run's augmentations
    (run.json) with the strengths config.json records; a name alone where it has none (runs
    from before the options; a video run's crop, flip and affine)."""
    words = []
    for name in names:
        try:
            words.append(_STRENGTHS[name].format(**cfg) if name in _STRENGTHS else name)
        except (KeyError, ValueError, TypeError):
            words.append(name)
    return ", ".join(words) or "none"


def run_facts(run_dir: str | Path | None) -> dict[str, str]:
    """Label -> text, in reading order: task, model, parameters, data, splits, image size,
    epochs, optimiser, learning rate, batch size, precision, device, machine, versions, dates.
    Missing facts are left out (an empty dict without a run folder)."""
    facts: dict[str, str] = {}
    if run_dir is None:
        return facts
    run_dir = Path(run_dir)
    cfg = _read_json(run_dir / "config.json")
    run = _read_json(run_dir / "run.json")
    splits = _read_json(run_dir / "splits.json")
    if run.get("task"):
        facts["task"] = str(run["task"])
    if cfg.get("model"):
        model = str(cfg["model"])
        for part in ("encoder", "backbone"):  # segmentation / detection: the classifier inside
            if cfg.get(part):
                model += f" ({part} {cfg[part]})"
        facts["model"] = model
    params = count_checkpoint_params(run_dir / "checkpoints" / "best.safetensors")
    if params is not None:
        facts["parameters"] = f"{params:,} ({format_count(params)})"
    if run.get("flops_per_image"):
        facts["FLOPs per image"] = format_count(float(run["flops_per_image"]))
    if cfg.get("data"):
        facts["data"] = str(cfg["data"])
    sizes = {k: len(v) for k, v in (splits.get("splits") or {}).items() if isinstance(v, list)}
    if sizes:
        order = [k for k in ("train", "val", "test") if k in sizes] + sorted(
            k for k in sizes if k not in ("train", "val", "test")
        )
        facts["split sizes"] = ", ".join(f"{k} {sizes[k]:,}" for k in order)
    if cfg.get("image_size"):
        facts["image size"] = f"{cfg['image_size']} px"
    if isinstance(run.get("augmentations"), list):
        facts["augmentation"] = _augmentation(run["augmentations"], cfg)
    if cfg.get("epochs") is not None:
        ran = _epochs_run(run_dir / "metrics.csv")
        text = str(cfg["epochs"])
        if ran is not None and ran != cfg["epochs"]:
            text = f"{ran} of {cfg['epochs']}" + (
                f" ({run['stop_reason']})" if run.get("stop_reason") else ""
            )
        facts["epochs"] = text
    if cfg.get("optimizer"):
        opt = str(cfg["optimizer"])
        extras = []
        if cfg.get("optimizer") == "sgd" and cfg.get("momentum") is not None:
            extras.append(
                f"momentum {cfg['momentum']}" + (", Nesterov" if cfg.get("nesterov") else "")
            )
        if cfg.get("weight_decay"):
            extras.append(f"weight decay {cfg['weight_decay']:g}")
        if cfg.get("schedule"):
            extras.append(f"{cfg['schedule']} schedule")
        facts["optimiser"] = opt + (f" ({', '.join(extras)})" if extras else "")
    if cfg.get("lr") is not None:
        facts["learning rate"] = f"{cfg['lr']:g}"
    if cfg.get("batch_size"):
        facts["batch size"] = str(cfg["batch_size"])
    if run.get("precision"):
        inference = run.get("inference_precision")
        facts["precision"] = f"training {run['precision']}" + (
            f", evaluation {inference}" if inference else ""
        )
    machine = run.get("machine") or {}
    if run.get("device"):
        world = run.get("world_size") or 1
        facts["device"] = str(run["device"]) + (f" x {world} processes" if world > 1 else "")
    if machine:
        parts = [machine.get("gpu_name"), machine.get("cpu_model")]
        if machine.get("torch_threads"):
            parts.append(f"{machine['torch_threads']} threads")
        facts["machine"] = ", ".join(str(p) for p in parts if p)
    versions = []
    if run.get("cnnlab_version"):
        versions.append(f"cnnlab {run['cnnlab_version']}")
    if machine.get("torch_version"):
        versions.append(f"torch {machine['torch_version']}")
    if versions:
        facts["versions"] = ", ".join(versions)
    if cfg.get("seed") is not None:
        facts["seed"] = str(cfg["seed"])
    trained = _utc(run_dir / "run.json")
    if trained:
        facts["trained"] = trained
    facts["report written"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return facts


HEADER_CSS = """
.about{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:.15rem 1rem;
font-size:.85rem;background:#f8f8f8;border:1px solid #e4e4e4;padding:.6rem .9rem;margin:.6rem 0 1rem}
.about dt{color:#666}.about dd{margin:0;overflow-wrap:anywhere}
"""


def run_header_html(run_dir: str | Path | None) -> str:
    """The facts of :func:`run_facts` as a two-column definition list (empty without a run)."""
    facts = run_facts(run_dir)
    if not facts:
        return ""
    items = "".join(
        f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>"
        for label, value in facts.items()
    )
    return f'<style>{HEADER_CSS}</style><dl class="about" id="about">{items}</dl>'
