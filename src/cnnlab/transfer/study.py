"""Should I transfer? An empirical answer on the user's own data.

``transfer_study(source, data)`` trains the same model on the same target splits with the same
budget (epochs, batch size, optimizer, seeds) once per (labels per class, strategy, seed):

* ``scratch``: random initialisation, everything trains (``init_from`` unset);
* ``linear-probe`` / ``fine-tune`` / ``gradual`` / ``full``: from ``source`` with that recipe;

and reports test accuracy with its 95 % percentile-bootstrap interval (each run's
``test_metrics.json["confidence_intervals"]["accuracy"]``, from
:func:`cnnlab.metrics.stats.headline_intervals`). Few labels is where transfer pays off; with all
labels scratch often catches up -- the curve shows where for *this* data.

Outputs in ``out``: ``study.json`` (every run + summary), ``study.md`` (a table: labels per class x
strategy) and ``study.png`` (accuracy vs labels per class, one line per strategy, CI error bars),
claimed as every output folder is (:func:`cnnlab.run.claim_outputs`: a file of the user's with one
of these names is refused before the first run trains), and the runs under ``out/runs/`` (new
folders, never overwritten).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import ConfigError, close_matches

log = logging.getLogger(__name__)

DEFAULT_OUT = "runs/transfer-study"  # the study's folder when none is given
#: the files a study writes into its folder (beside its runs/), claimed there
STUDY_FILES = ["study.json", "study.md", "study.png"]

SCRATCH = "scratch"


def write_class_subset(
    data: str,
    out: str | Path,
    classes: Sequence[str],
    *,
    max_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Write the images of ``classes`` from any cnnlab data source as a class-per-folder dataset.

    In-memory sources (``builtin:mnist-sample``) become PNG files ``out/<class>/<id>.png``; file
    sources are copied. ``max_per_class`` keeps a seeded random subset. Task A / task B splits of
    one dataset (the lecture's example: digits 0-4 vs 5-9) are made this way. Returns ``out``.
    """
    from PIL import Image

    from cnnlab.config import TrainConfig, make_config
    from cnnlab.data.sources import concat_splits, load_source

    bundle = load_source(make_config(TrainConfig, data=data))
    unknown = [c for c in classes if c not in bundle.class_names]
    if unknown:
        raise ConfigError(
            f"classes {unknown} are not in {data} (its classes: {bundle.class_names})"
        )
    whole = concat_splits(list(bundle.splits.values()))
    rng = np.random.default_rng(seed)
    out = Path(out)
    for name in classes:
        idx = np.flatnonzero(whole.targets == bundle.class_names.index(name))
        if max_per_class is not None and len(idx) > max_per_class:
            idx = np.sort(rng.choice(idx, max_per_class, replace=False))
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            stem = str(whole.ids[i]).replace("/", "_").replace("\\", "_")
            if whole.images is not None:
                pixels = whole.images[i]
                pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
                Image.fromarray(pixels).save(folder / f"{Path(stem).stem}.png")
            else:
                src = Path(whole.paths[i])
                shutil.copy2(src, folder / f"{Path(stem).stem}{src.suffix}")
    log.info("wrote %s of %s to %s", ", ".join(classes), data, out)
    return out


def _source_meta(source: str) -> dict[str, Any] | None:
    """Metadata of a cnnlab run / checkpoint source; None for imagenet or a bare weights file."""
    from cnnlab.engine.checkpoint import read_weights
    from cnnlab.run import resolve_weights

    path = Path(source).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix == ".safetensors")):
        return None
    _, meta = read_weights(resolve_weights(path))
    return meta if "model" in meta else None


def transfer_study(
    source: str,
    data: str,
    *,
    shots: Sequence[int | None] = (5, 10, 50, None),
    strategies: Sequence[str] = (SCRATCH, "linear-probe", "fine-tune", "gradual"),
    model: str | None = None,
    epochs: int = 10,
    seeds: Sequence[int] = (0,),
    out: str | Path | None = None,
    **train_overrides: Any,
) -> dict[str, Any]:
    """Train every (shots, strategy, seed) on ``data`` and compare test accuracy (see module doc).

    ``out``: the study's folder (default :data:`DEFAULT_OUT`).
    ``shots``: labelled training images per class (None = the whole training split). ``model``
    defaults to the source checkpoint's model. ``train_overrides`` go to every ``cnnlab.api.train`` call
    (``batch_size``, ``lr``, ``image_size``, ...); ``image_size`` defaults to the source's. The
    batch size is capped at the number of training images so that tiny shot counts still take steps.
    Returns the content of ``study.json``.
    """
    from cnnlab.config import TrainConfig, make_config
    from cnnlab.data.sources import few_shot, load_source
    from cnnlab.run import claim_outputs, write_json
    from cnnlab.tasks.classify.train import train as train_classifier
    from cnnlab.transfer.recipes import STRATEGIES
    from cnnlab.transfer.source import check_source_found

    allowed = (SCRATCH, *STRATEGIES)
    for s in strategies:
        if s not in allowed:
            raise ConfigError(
                f"unknown strategy {s!r} for the study{close_matches(s, allowed)}; "
                f"choose from {', '.join(allowed)}"
            )
    for k in shots:  # 0 reached the loader as "batch_size must be > 0": name the real option
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(
                f"shots={k!r}: each is the number of labelled images per class (a whole number "
                ">= 1) or None for the whole training split"
            )
    for key in ("init_from", "strategy", "shots", "seed", "epochs", "data", "model", "name"):
        if key in train_overrides:
            raise ConfigError(
                f"transfer_study sets {key!r} itself; pass it as the study's argument"
            )
    # a mistyped run folder was "not a cnnlab run/checkpoint, so the model is unknown"
    check_source_found(source, label="source ")
    meta = _source_meta(source)
    if model is None:
        if meta is None:
            raise ConfigError(
                f"source {source!r} is not a cnnlab run/checkpoint, so the model is unknown; "
                "pass model=NAME (cnnlab transfer-study: --model NAME)"
            )
        model = str(meta["model"])
    if meta is not None and "image_size" not in train_overrides:
        size = (meta.get("preprocess") or {}).get("image_size")
        if size:
            train_overrides["image_size"] = int(size)
    default = out is None
    out = Path(DEFAULT_OUT if out is None else out)
    claim = {"command": "transfer-study", "default": default, "adopt": _earlier_study(out)}
    # said before the first of many runs trains; recorded just before the files are written
    claim_outputs(out, STUDY_FILES, record=False, **claim)
    out.mkdir(parents=True, exist_ok=True)
    base = make_config(TrainConfig, data=data, model=model, epochs=epochs, **train_overrides)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        bundle = load_source(make_config(TrainConfig, **(base.to_dict() | {"seed": seed})))
        num_classes = len(bundle.class_names)
        for k in shots:
            train = (
                bundle.splits["train"] if k is None else few_shot(bundle.splits["train"], k, seed)
            )
            per_class = len(train) / num_classes
            batch_size = min(base.batch_size, len(train))
            for strategy in strategies:
                name = f"{strategy}-{'all' if k is None else k}-seed{seed}"
                log.info("study run %s (%d training images)", name, len(train))
                result = train_classifier(
                    base,
                    seed=seed,
                    shots=k,
                    batch_size=batch_size,
                    init_from=None if strategy == SCRATCH else source,
                    strategy="full" if strategy == SCRATCH else strategy,
                    out=str(out / "runs"),
                    name=name,
                    report=train_overrides.get("report", False),
                )
                if result.test_metrics is None:
                    raise ConfigError(
                        f"{data} gave no test split; the study needs test_fraction > 0 or a test "
                        "folder"
                    )
                ci = result.test_metrics["confidence_intervals"]["accuracy"]
                runs.append(
                    {
                        "strategy": strategy,
                        "shots": k,
                        "labels_per_class": per_class,
                        "train_images": len(train),
                        "seed": seed,
                        "accuracy": float(result.test_metrics["accuracy"]),
                        "ci_low": ci["low"],
                        "ci_high": ci["high"],
                        "test_images": int(len(bundle.splits["test"])),
                        "train_time_s": result.train_time_s,
                        "run_dir": str(result.run_dir),
                    }
                )
    summary = summarize(runs)
    study = {
        "source": str(source),
        "data": data,
        "model": model,
        "epochs": epochs,
        "seeds": list(seeds),
        "shots": list(shots),
        "strategies": list(strategies),
        # as the config read them (a command line's "16" is the batch size 16)
        "train_overrides": {k: getattr(base, k) for k in train_overrides if k != "report"},
        "confidence": 0.95,
        "interval": "percentile bootstrap of test accuracy (headline_intervals)",
        "runs": runs,
        "summary": summary,
    }
    claim_outputs(out, STUDY_FILES, **claim)
    write_json(out / "study.json", study)
    (out / "study.md").write_text(markdown_table(study))
    plot_study(study, out / "study.png")
    return study


def _earlier_study(out: Path) -> bool:
    """Whether ``out`` holds a study cnnlab wrote before output folders kept their record (a
    study.json of its keys, no .cnnlab-output.json): its files are cnnlab's own, to be replaced
    when the study is run again (the default folder's second study was refused otherwise)."""
    from cnnlab.errors import CheckpointError
    from cnnlab.run import OUTPUT_RECORD, read_json

    if os.path.lexists(out / OUTPUT_RECORD) or not (out / "study.json").is_file():
        return False
    try:
        study = read_json(out / "study.json")
    except CheckpointError:  # not JSON: not a study of cnnlab's
        return False
    return isinstance(study, dict) and {"strategies", "shots", "runs", "summary"} <= study.keys()


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (shots, strategy): mean accuracy over seeds and the mean bootstrap interval bounds."""
    keys: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        keys.setdefault((r["shots"] is None, r["shots"] or 0, r["strategy"]), []).append(r)
    rows = []
    for (_, _, strategy), rs in keys.items():
        rows.append(
            {
                "strategy": strategy,
                "shots": rs[0]["shots"],
                "labels_per_class": float(np.mean([r["labels_per_class"] for r in rs])),
                "accuracy": float(np.mean([r["accuracy"] for r in rs])),
                "accuracy_std": float(np.std([r["accuracy"] for r in rs])),
                "ci_low": float(np.mean([r["ci_low"] for r in rs])),
                "ci_high": float(np.mean([r["ci_high"] for r in rs])),
                "seeds": len(rs),
            }
        )
    return rows


def markdown_table(study: dict[str, Any]) -> str:
    """Rows: labels per class; columns: strategies; cells: accuracy % [95 % CI]."""
    strategies = study["strategies"]
    by = {(r["shots"], r["strategy"]): r for r in study["summary"]}
    shots = list(dict.fromkeys(r["shots"] for r in study["summary"]))
    lines = [
        f"Transfer study: {study['model']} from `{study['source']}` to `{study['data']}`, "
        f"{study['epochs']} epochs, seeds {study['seeds']}. Test accuracy % [95 % bootstrap CI].",
        "",
        "| labels per class | " + " | ".join(strategies) + " |",
        "|---|" + "---|" * len(strategies),
    ]
    for k in shots:
        cells = []
        for s in strategies:
            r = by.get((k, s))
            if r is None:
                cells.append("-")
                continue
            acc, low, high = (100 * r[k] for k in ("accuracy", "ci_low", "ci_high"))
            cells.append(f"{acc:.1f} [{low:.1f}, {high:.1f}]")
        first = by[(k, strategies[0])]["labels_per_class"]
        label = f"{first:.0f}" + (" (all)" if k is None else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_study(study: dict[str, Any], path: str | Path) -> Path:
    """Accuracy vs labels per class (log x), one line per strategy, 95 % CI error bars."""
    from cnnlab.report import use_file_backend

    use_file_backend()
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, strategy in enumerate(study["strategies"]):
        rows = sorted(
            (r for r in study["summary"] if r["strategy"] == strategy),
            key=lambda r: r["labels_per_class"],
        )
        if not rows:
            continue
        x = np.array([r["labels_per_class"] for r in rows]) * (1 + 0.03 * i)  # dodge the bars
        y = np.array([100 * r["accuracy"] for r in rows])
        err = np.array(
            [
                [100 * (r["accuracy"] - r["ci_low"]) for r in rows],
                [100 * (r["ci_high"] - r["accuracy"]) for r in rows],
            ]
        ).clip(min=0)
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=strategy)
    ax.set_xscale("log")
    ticks = sorted({round(r["labels_per_class"], 1) for r in study["summary"]})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # the shot counts, not powers of ten
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("labelled training images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{study['model']}: transfer from {Path(study['source']).name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
