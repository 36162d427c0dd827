"""k-fold cross-validation of a classifier (`cnnlab cv --folds K`): one ordinary run per fold.

Every sample of the source is pooled (a given train/val/test layout too) and dealt into K
stratified folds (:mod:`cnnlab.data.folds`; seeded by ``--seed``). Fold i trains on the other
folds less a stratified ``--val-fraction`` of them (validation: checkpoint selection, early
stopping) and is tested on fold i. The fold's splits reach the data layer through the one door
for explicit splits, the ``split_file`` option, so a fold is a classification run like any other
(`cnnlab evaluate / predict / export FOLD` work on it) and ``cnnlab train --resume FOLD`` too.

CV/                        --out/--name (default name cv-MODEL-DATA-TIME)
  cv.json                  folds, seed, source and the training options; a rerun must match them
  folds/fold-I.json        fold I's split file: the sample ids of its train / val / test splits
  fold-1/ ... fold-K/      the fold runs (their splits.json records the same ids)
  oof_predictions.csv      every sample exactly once: id, fold, label, pred, score_<class>
                           (multi-label data: id, fold, labels, pred_labels at the fold's
                           thresholds, score_<label>); `cnnlab metrics CV/oof_predictions.csv`
                           scores it
  cv_summary.json / .csv   every test metric: each fold's value, mean, std, t interval (k-1 df),
                           and the pooled out-of-fold value; each fold's calibration temperature
                           apart (JSON "temperature"; the CSV's temperature row: per fold only)

Resume: rerunning the same command (same --out and --name) keeps the finished folds (test
predictions and metrics written), resumes an interrupted fold from its newest verified checkpoint
(:mod:`cnnlab.engine.resume`) and trains the folds not started.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import TrainConfig, load_config_file, make_config
from cnnlab.data.folds import check_folds, fold_of_samples, fold_split
from cnnlab.data.sources import concat_splits, in_split_order, load_source
from cnnlab.engine.checkpoint import CheckpointManager, atomic_write
from cnnlab.errors import ConfigError, DataError, Interrupted
from cnnlab.metrics import multilabel as ml
from cnnlab.metrics.checks import UndefinedMetricWarning
from cnnlab.metrics.folds import flatten_metrics, summarize_folds
from cnnlab.run import finish_run_dir, new_run_dir, write_json
from cnnlab.tasks.classify.multilabel import read_thresholds
from cnnlab.tasks.classify.train import train

log = logging.getLogger(__name__)

CONFIDENCE = 0.95  # of the t interval across folds
DEFAULT_FOLDS = 5  # --folds: each fold trains on the other 4/5 of the samples (less validation)
#: set by the cross-validation itself, per fold: not options of `cnnlab cv`
MANAGED = ("split_file", "resume", "test_fraction")
#: what a rerun of a cross-validation may change; every other option must be the recorded one
RERUN_MAY_CHANGE = ("device", "report", "tensorboard")
OOF_CSV = "oof_predictions.csv"


@dataclass
class CVResult:
    """What :func:`cross_validate` returns (all of it is also in the cv folder's files)."""

    cv_dir: Path
    folds: int
    summary: dict[str, dict[str, Any]]  # metric -> {mean, std, low, high, n, values (per fold)}
    out_of_fold: dict[str, float | None]  # the pooled out-of-fold predictions' scores
    oof_csv: Path
    fold_dirs: list[Path]
    status: list[str]  # per fold: "trained", "resumed" or "finished earlier"
    confidence: float = CONFIDENCE
    # per fold: the calibration temperature T its test metrics used (fitted on the fold's
    # validation split; 1: uncalibrated; None: a multi-label fold has none). A setting, not a
    # score: listed beside the summary, never given an interval
    temperatures: list[float | None] = dataclasses.field(default_factory=list)


def cross_validate(
    config: TrainConfig | str | Path | None = None,
    *,
    folds: int | str | None = None,
    console: Any = None,
    callbacks: Sequence[Any] = (),
    **overrides: Any,
) -> CVResult:
    """K-fold cross-validation of ``cnnlab train`` with ``config`` (a TrainConfig or a JSON/TOML
    file) < ``overrides``; see the module docstring. ``folds``: None takes the file's ``folds``
    (as `cnnlab cv --config FILE` reads it), else 5. ``callbacks`` go to every fold's fit."""
    k = check_folds(_folds(config, folds))
    for key in MANAGED:
        if overrides.get(key) is not None:
            raise ConfigError(f"option {key} is set by cnnlab cv for each fold; {_WHY[key]}")
    # no test fraction: each fold's test split is the fold held out. The default 0.1 made
    # --val-fraction 0.92 (of the other folds) fail "val_fraction + test_fraction must leave
    # samples for training", naming an option cv refuses
    overrides = overrides | {"test_fraction": 0.0}
    if isinstance(config, TrainConfig):
        cfg = make_config(TrainConfig, **(config.to_dict() | overrides))
    else:
        cfg = make_config(TrainConfig, config, command_keys=("folds",), **overrides)
    for key in ("split_file", "resume"):
        if getattr(cfg, key) is not None:
            raise ConfigError(f"option {key} is set by cnnlab cv for each fold; {_WHY[key]}")
    if cfg.devices > 1:
        raise ConfigError(
            f"option devices={cfg.devices}: `cnnlab cv` runs its folds one after another in one "
            "process; leave --devices out (or train one fold with `cnnlab train --devices N "
            "--split-file CV/folds/fold-I.json`)"
        )
    options = _options(cfg)
    # the data and the folds first: a dataset that cannot be split leaves no folder behind
    pooled = load_source(dataclasses.replace(cfg, val_fraction=0.0, test_fraction=0.0))
    pool = concat_splits(list(pooled.splits.values()))
    names = pooled.class_names
    fold_of = fold_of_samples(pool.targets, k, cfg.seed, class_names=names, where=pooled.source)
    contents = fold_split_files(pool, fold_of, cfg, pooled.source, names)
    cv_dir = _cv_folder(cfg, k, options)
    split_files = _write_split_files(cv_dir, contents)

    fold_dirs, status, results = [], [], []
    for i in range(1, k + 1):
        fold_dir = cv_dir / f"fold-{i}"
        fold_dirs.append(fold_dir)
        done = _finished(fold_dir)
        if done is not None:
            state = "finished earlier"
        else:
            resume = _resumable(fold_dir)
            state = "resumed" if resume else "trained"
            if console is not None:
                sizes = contents[i - 1]["splits"]
                parts = ", ".join(f"{len(ids)} {split}" for split, ids in sizes.items())
                doing = "resuming" if resume else "training"
                console.print(f"[bold]fold {i}/{k}[/] ({doing}): {parts} images")
            fold_options = options | {"out": str(cv_dir), "name": f"fold-{i}", "test_fraction": 0.0,
                                      "split_file": str(split_files[i - 1].resolve())}  # fmt: skip
            if resume:
                fold_options["resume"] = str(fold_dir)
            try:
                train(console=console, callbacks=callbacks, **fold_options)
            except Interrupted:
                raise Interrupted(
                    f"cross-validation stopped in fold {i} of {k} after saving a resumable "
                    f"checkpoint; resume it with the same command and --out {cfg.out} --name "
                    f"{cv_dir.name}"
                ) from None
            done = _finished(fold_dir)
            assert done is not None, f"{fold_dir}: training ended without test predictions"
        if console is not None and state == "finished earlier":
            console.print(f"fold {i}/{k}: finished earlier, kept ({fold_dir})")
        status.append(state)
        results.append(done)

    oof = _out_of_fold(cv_dir, pool, fold_of, names, results)
    summary = summarize_folds([metrics for metrics, _ in results], CONFIDENCE)
    temperatures = [metrics.get("temperature") for metrics, _ in results]
    result = CVResult(cv_dir, k, summary, oof["scores"], oof["path"], fold_dirs, status,
                      temperatures=temperatures)  # fmt: skip
    _write_summary(result, cfg, pooled.source)
    finish_run_dir(cv_dir, console)
    return result


_WHY = {
    "split_file": "leave it out (each fold's split file is written to CV/folds/)",
    "resume": "rerun the same command with the same --out and --name to resume",
    "test_fraction": "leave it out (each fold's test split is the fold it holds out)",
}


def _options(cfg: TrainConfig) -> dict[str, Any]:
    """The training options every fold shares (JSON types: what cv.json records)."""
    skip = {*MANAGED, "out", "name"}
    return json.loads(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in skip}))


def _cv_folder(cfg: TrainConfig, folds: int, options: dict[str, Any]) -> Path:
    """A new cv folder, or (``--name`` of an existing one) the same cross-validation to resume:
    its recorded folds, seed and options must be these (:data:`RERUN_MAY_CHANGE` aside)."""
    record = {"folds": folds, "seed": cfg.seed, "data": cfg.data, "options": options}
    if cfg.name is not None and (Path(cfg.out) / cfg.name).exists():
        cv_dir = Path(cfg.out) / cfg.name
        if not (cv_dir / "cv.json").is_file():
            raise ConfigError(
                f"--out {cfg.out} --name {cfg.name}: {cv_dir} exists and is not a cnnlab cv "
                "folder; choose another --name"
            )
        saved = json.loads((cv_dir / "cv.json").read_text())
        changed = [
            f"{key}: {saved['options'].get(key)!r} -> {value!r}"
            for key, value in options.items()
            if key not in RERUN_MAY_CHANGE and saved["options"].get(key) != value
        ]
        if saved.get("folds") != folds:
            changed.insert(0, f"folds: {saved.get('folds')} -> {folds}")
        if changed:
            raise ConfigError(
                f"{cv_dir} is a cross-validation with other options ({'; '.join(changed[:3])}); "
                f"rerun it with the options in {cv_dir / 'cv.json'} or choose another --name"
            )
        return cv_dir
    model = str(cfg.model)
    cv_dir = new_run_dir(cfg.out, cfg.name, f"cv-{model}", cfg.data, private=cfg.private)
    write_json(cv_dir / "cv.json", record)
    return cv_dir


def _folds(config: TrainConfig | str | Path | None, folds: int | str | None) -> object:
    """The number of folds as given: the argument, else the config file's ``folds`` (cv's own
    option beside the training options), else 5."""
    if folds is not None:
        return folds
    if config is None or isinstance(config, TrainConfig):
        return DEFAULT_FOLDS
    value = load_config_file(config).get("folds", DEFAULT_FOLDS)
    # an int (or its text) in the file, as for the training options' int fields: 2.0 and true
    # are refused, not truncated
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(
            f"config file {config}: option folds expects an integer >= 2, got {value!r}"
        )
    return value


def fold_split_files(
    pool: Any, fold_of: np.ndarray, cfg: TrainConfig, source: str, class_names: list[str]
) -> list[dict[str, Any]]:
    """Each fold's split file content: the sample ids of its train / val / test splits."""
    k = int(fold_of.max()) + 1
    contents = []
    for fold in range(k):
        parts = fold_split(
            fold_of, fold, pool.targets, cfg.val_fraction, cfg.seed, class_names=class_names,
            where=source,
        )  # fmt: skip
        contents.append({
            "source": source,
            "origin": f"cnnlab cv: fold {fold + 1} of {k} (seed={cfg.seed}, "
            f"val_fraction={cfg.val_fraction:g} of the other folds)",
            "splits": in_split_order(
                {name: [pool.ids[i] for i in idx] for name, idx in parts.items()}
            ),
        })  # fmt: skip
    return contents


def _write_split_files(cv_dir: Path, contents: list[dict[str, Any]]) -> list[Path]:
    """folds/fold-I.json for every fold; on a rerun the recorded files must be what the same seed
    gives now, else the dataset changed under the cross-validation."""
    paths = []
    for fold, content in enumerate(contents, start=1):
        path = cv_dir / "folds" / f"fold-{fold}.json"
        if path.is_file():
            if json.loads(path.read_text()).get("splits") != content["splits"]:
                raise DataError(
                    path,
                    f"the folds of {content['source']} are no longer the recorded ones (the "
                    "dataset changed since this cross-validation started); choose another --name",
                )
        else:
            write_json(path, content)
        paths.append(path)
    return paths


def _finished(fold_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(test metrics, test predictions) of a fold that got to its final evaluation, else None."""
    try:
        metrics = json.loads((fold_dir / "test_metrics.json").read_text())
        with np.load(fold_dir / "test_predictions.npz", allow_pickle=False) as z:
            predictions = {key: z[key] for key in ("probs", "targets", "ids")}
        classes = json.loads((fold_dir / "classes.json").read_text())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, or cut short
        return None
    predictions["class_names"] = np.asarray(classes)
    return metrics, predictions


def _resumable(fold_dir: Path) -> bool:
    """True when a started fold has a verified checkpoint to resume from. A fold stopped before
    its first checkpoint holds nothing to keep: it is removed and trained from the start."""
    if not fold_dir.exists():
        return False
    checkpoints = fold_dir / "checkpoints"
    if checkpoints.is_dir() and CheckpointManager(checkpoints).latest_verified() is not None:
        return True
    log.warning("%s stopped before its first checkpoint: training it from the start", fold_dir)
    shutil.rmtree(fold_dir)
    return False


def _out_of_fold(
    cv_dir: Path,
    pool: Any,
    fold_of: np.ndarray,
    class_names: list[str],
    results: list[tuple[dict[str, Any], dict[str, np.ndarray]]],
) -> dict[str, Any]:
    """Gather the folds' test predictions into one CSV in the pool's order (every sample once)
    and score it as a whole; returns {"path", "scores"}."""
    from cnnlab.metrics import classification_metrics

    row_of = {sid: i for i, sid in enumerate(pool.ids)}
    multilabel = pool.targets.ndim == 2  # (N, L) 0/1 targets
    decided = np.zeros((len(pool), len(class_names)), dtype=np.int64)
    probs = np.full((len(pool), len(class_names)), np.nan)
    fold_col = np.full(len(pool), -1, dtype=np.int64)
    for fold, (_, pred) in enumerate(results):
        where = cv_dir / f"fold-{fold + 1}" / "test_predictions.npz"
        if list(pred["class_names"]) != class_names:
            raise DataError(where, f"classes {list(pred['class_names'])} != {class_names}")
        rows = [row_of.get(str(sid), -1) for sid in pred["ids"]]
        expected = set(np.flatnonzero(fold_of == fold).tolist())
        if -1 in rows or set(rows) != expected or len(rows) != len(expected):
            raise DataError(
                where,
                f"does not hold fold {fold + 1}'s test samples; delete the fold to retrain it",
            )
        if not (pool.targets[rows] == pred["targets"]).all():
            raise DataError(where, "its labels differ from the dataset's; delete the fold")
        probs[rows], fold_col[rows] = pred["probs"], fold + 1
        if multilabel:  # each fold decides at its own thresholds (tuned on its validation)
            decided[rows] = ml.decide(pred["probs"], read_thresholds(where.parent, class_names))
    assert (fold_col > 0).all(), "every sample appears in exactly one fold's test predictions"
    if multilabel:
        return _write_multilabel_oof(cv_dir, pool, fold_col, probs, decided, class_names)
    preds = probs.argmax(axis=1)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "fold", "label", "pred", *(f"score_{c}" for c in class_names)])
    for i, sid in enumerate(pool.ids):
        writer.writerow([sid, fold_col[i], class_names[pool.targets[i]], class_names[preds[i]],
                         *(f"{p:.9g}" for p in probs[i])])  # fmt: skip
    path = cv_dir / OOF_CSV
    data = text.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))
    with warnings.catch_warnings():  # undefined scores stay None (as in the folds' metrics)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        pooled = classification_metrics(pool.targets, probs, class_names=class_names)
    return {"path": path, "scores": flatten_metrics(pooled)}


def _write_multilabel_oof(
    cv_dir: Path,
    pool: Any,
    fold_col: np.ndarray,
    probs: np.ndarray,
    decided: np.ndarray,
    names: list[str],
) -> dict[str, Any]:
    """The multi-label out-of-fold CSV (id, fold, labels, pred_labels, score_<label>: the form
    `cnnlab metrics` reads) and its scores at each fold's thresholds."""

    def joined(row: np.ndarray) -> str:
        return ";".join(n for n, y in zip(names, row, strict=True) if y)

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "fold", "labels", "pred_labels", *(f"score_{c}" for c in names)])
    for i, sid in enumerate(pool.ids):
        writer.writerow([sid, fold_col[i], joined(pool.targets[i]), joined(decided[i]),
                         *(f"{p:.9g}" for p in probs[i])])  # fmt: skip
    path = cv_dir / OOF_CSV
    data = text.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))
    with warnings.catch_warnings():  # undefined scores stay None (as in the folds' metrics)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        pooled = ml.multilabel_metrics(pool.targets, probs, preds=decided, label_names=names)
    return {"path": path, "scores": flatten_metrics(pooled)}


def _temperature_record(temperatures: Sequence[float | None]) -> dict[str, Any]:
    """cv_summary.json's ``temperature``: each fold's fitted T and their range ({} when no fold
    has one: multi-label)."""
    fitted = [t for t in temperatures if t is not None]
    if not fitted:
        return {}
    return {"temperature": {
        "about": "each fold's calibration temperature (probs = softmax(logits / T)), fitted on "
                 "its validation split: a setting, not a score",
        "values": list(temperatures), "min": min(fitted), "max": max(fitted),
    }}  # fmt: skip


def _write_summary(result: CVResult, cfg: TrainConfig, source: str) -> None:
    """cv_summary.json and cv_summary.csv (one row per metric, a column per fold)."""
    k = result.folds
    write_json(
        result.cv_dir / "cv_summary.json",
        {"source": source, "folds": k, "seed": cfg.seed, "confidence": result.confidence,
         "interval": "mean +- t_(1+c)/2,n-1 * std / sqrt(n) over the n folds where defined",
         "fold_dirs": [d.name for d in result.fold_dirs],
         "out_of_fold_predictions": result.oof_csv.name,
         "metrics": {name: s | {"out_of_fold": result.out_of_fold.get(name)}
                     for name, s in result.summary.items()},
         **_temperature_record(result.temperatures)},
    )  # fmt: skip
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["metric", "mean", "std", "ci_low", "ci_high", "n",
                     *(f"fold_{i}" for i in range(1, k + 1)), "out_of_fold"])  # fmt: skip

    def cell(v: float | None) -> str:
        return "" if v is None else f"{v:.9g}"

    for name, s in result.summary.items():
        stats = [cell(s[key]) for key in ("mean", "std", "low", "high")]
        per_fold = [cell(v) for v in s["values"]]
        writer.writerow([name, *stats, s["n"], *per_fold, cell(result.out_of_fold.get(name))])
    if any(t is not None for t in result.temperatures):  # each fold's T, no statistics of it
        n = sum(t is not None for t in result.temperatures)
        writer.writerow(["temperature", "", "", "", "", n,
                         *(cell(t) for t in result.temperatures), ""])  # fmt: skip
    data = text.getvalue().encode()
    atomic_write(result.cv_dir / "cv_summary.csv", lambda f: f.write(data))
