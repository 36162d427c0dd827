"""k-fold cross-validation (`cnnlab cv`): fold assignment (single- and multi-label), explicit splits
through the split file, the summary across folds against scipy, out-of-fold predictions that
`cnnlab metrics` reads, one-line errors; end to end on builtin:digits (slow), with a fold stopped
and resumed."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics

import numpy as np
import pytest
from cli_process import cnnlab as run_cnnlab
from cli_process import ok
from scipy import stats

from cnnlab.config import TrainConfig, make_config
from cnnlab.data.folds import check_folds, fold_of_samples, fold_split
from cnnlab.data.sources import DataBundle, Split, apply_split_file, load_source
from cnnlab.errors import ConfigError, DataError
from cnnlab.metrics import classification_metrics, read_predictions_csv
from cnnlab.metrics.folds import flatten_metrics, fold_interval, summarize_folds


def _counts_per_fold(targets: np.ndarray, fold_of: np.ndarray, k: int) -> np.ndarray:
    """(k, classes or labels): samples of each class (positives of each label) held out per fold."""
    if targets.ndim == 1:
        return np.stack([np.bincount(targets[fold_of == f], minlength=targets.max() + 1)
                         for f in range(k)])  # fmt: skip
    return np.stack([targets[fold_of == f].sum(axis=0) for f in range(k)])


# -- fold assignment -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_single_label_folds_hold_each_sample_once_and_classes_differ_by_at_most_one(seed):
    rng = np.random.default_rng(seed)
    targets = rng.choice(5, size=203, p=[0.4, 0.3, 0.15, 0.1, 0.05])  # imbalanced, odd total
    fold_of = fold_of_samples(targets, 5, seed)
    assert fold_of.shape == (203,) and set(fold_of.tolist()) == set(range(5))
    counts = _counts_per_fold(targets, fold_of, 5)
    assert (counts.sum(axis=0) == np.bincount(targets)).all()  # every sample in one fold
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all(), counts
    assert (fold_of_samples(targets, 5, seed) == fold_of).all()  # the seed names the assignment
    assert (fold_of_samples(targets, 5, seed + 100) != fold_of).any()


def test_multi_label_folds_use_iterative_stratification():
    """A synthetic (N, C) label matrix goes through iterstrat's MultilabelStratifiedKFold (the
    same assignment as calling it directly), which spreads every label's positives over the folds
    far more evenly than an unstratified shuffle of the same sizes."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(0)
    labels = (rng.random((300, 8)) < [0.5, 0.3, 0.2, 0.1, 0.08, 0.05, 0.4, 0.15]).astype(np.int64)
    fold_of = fold_of_samples(labels, 4, seed=3)
    direct = np.empty(300, dtype=np.int64)
    folds = MultilabelStratifiedKFold(n_splits=4, shuffle=True, random_state=3)
    for f, (_, held) in enumerate(folds.split(np.zeros((300, 1)), labels)):
        direct[held] = f
    assert (fold_of == direct).all()
    assert np.bincount(fold_of).tolist() == [75, 75, 75, 75]
    counts = _counts_per_fold(labels, fold_of, 4)
    assert (counts.sum(axis=0) == labels.sum(axis=0)).all()
    plain = np.empty(300, dtype=np.int64)
    for f, (_, held) in enumerate(KFold(4, shuffle=True, random_state=3).split(labels)):
        plain[held] = f
    spread = lambda c: int((c.max(axis=0) - c.min(axis=0)).sum())  # noqa: E731
    assert spread(counts) <= 8 < spread(_counts_per_fold(labels, plain, 4)), (counts, spread)


def test_fold_split_carves_a_stratified_validation_from_the_other_folds():
    targets = np.repeat(np.arange(4), [40, 30, 20, 10])
    fold_of = fold_of_samples(targets, 5, seed=0)
    for fold in range(5):
        parts = fold_split(fold_of, fold, targets, 0.2, seed=0)
        assert (parts["test"] == np.flatnonzero(fold_of == fold)).all()
        every = np.concatenate([parts["train"], parts["val"], parts["test"]])
        assert np.sort(every).tolist() == list(range(100))  # disjoint, all of them
        val_counts = np.bincount(targets[parts["val"]], minlength=4)
        rest_counts = np.bincount(targets[fold_of != fold], minlength=4)
        assert (np.abs(val_counts - 0.2 * rest_counts) <= 1).all(), (val_counts, rest_counts)
    assert set(fold_split(fold_of, 0, targets, 0.0, 0)) == {"train", "test"}
    labels = (np.random.default_rng(1).random((120, 3)) < 0.3).astype(np.int64)
    ml = fold_split(fold_of_samples(labels, 3, 0), 1, labels, 0.25, seed=0)
    assert len(ml["val"]) == 20 and not set(ml["val"]) & (set(ml["train"]) | set(ml["test"]))


def test_bad_fold_counts_are_one_line_errors_naming_the_classes():
    with pytest.raises(ConfigError, match=r"option folds must be >= 2, got 1"):
        check_folds(1)
    with pytest.raises(ConfigError, match=r"expects an integer >= 2, got 'five'"):
        check_folds("five")
    targets = np.array([0] * 10 + [1] * 3 + [2] * 8)
    with pytest.raises(DataError, match=r"data\.csv: --folds 4: classes .*\{'dog': 3\}.*at most 3"):
        fold_of_samples(targets, 4, 0, class_names=["cat", "dog", "eel"], where="data.csv")
    with pytest.raises(DataError, match=r"one image cannot be cross-validated"):
        fold_of_samples(np.array([0, 0, 1, 0]), 2, 0)
    with pytest.raises(DataError, match=r"more than the 4 samples"):
        fold_of_samples(np.array([0, 1, 0, 1]), 5, 0)
    with pytest.raises(DataError, match=r"d\.csv: fold 1: classes \{'b': 1\} have fewer than 2"):
        targets = np.array([0, 0, 0, 0, 1, 1])  # --folds 2: one 'b' in each fold
        fold_split(
            fold_of_samples(targets, 2, 0), 0, targets, 0.2, 0, class_names="ab", where="d.csv"
        )
    with pytest.raises(DataError, match=r"fold 2: --val-fraction 0.9 of the 10 images outside"):
        targets = np.arange(20) % 2
        fold_split(fold_of_samples(targets, 2, 0), 1, targets, 0.9, 0)
    with pytest.raises(DataError, match=r"labels with fewer positives than folds"):
        fold_of_samples(np.array([[1, 0], [1, 0], [0, 1], [1, 1]]), 3, 0)


# -- explicit splits: the one door -------------------------------------------------------------------
def _bundle() -> DataBundle:
    ids = [f"s{i}" for i in range(12)]
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1)
    whole = Split(ids, np.arange(12) % 3, images=images)
    return DataBundle("toy", ["a", "b", "c"], {"train": whole.subset(range(9)),
                                               "test": whole.subset(range(9, 12))}, channels=1)  # fmt: skip


def test_split_file_pools_the_source_and_takes_its_ids(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"splits": {"train": ["s11", "s0", "s4"], "val": [],
                                           "test": ["s9", "s1"]}}))  # fmt: skip
    b = apply_split_file(_bundle(), path)
    assert set(b.splits) == {"train", "test"}  # an empty val is left out
    assert b.splits["train"].ids == ["s11", "s0", "s4"]
    assert b.splits["train"].images.ravel().tolist() == [11, 0, 4]  # the images follow the ids
    assert b.splits["test"].targets.tolist() == [0, 1]
    assert str(path) in b.split_origin
    digits = tmp_path / "digits.json"
    digits.write_text(json.dumps({"train": ["digits:5", "digits:0"], "test": ["digits:1796"]}))
    loaded = load_source(make_config(TrainConfig, data="builtin:digits", split_file=str(digits)))
    assert loaded.splits["train"].targets.tolist() == [5, 0]  # sklearn digits: target = i % 10
    assert loaded.splits["test"].targets.tolist() == [8] and "val" not in loaded.splits


def _image_folder(root, per_class: int = 4) -> None:
    """Two classes of tiny random PNGs: root/a/0.png ... root/b/3.png."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_fold_split_files_name_samples_relative_to_a_dataset_root_that_can_move(tmp_path):
    """A fold's split file holds sample ids relative to the dataset root (as splits.json), so
    it splits the same dataset found under another root: moved, or on another machine."""
    import shutil

    from cnnlab.tasks.classify.cv import fold_split_files

    old, new = tmp_path / "old" / "data", tmp_path / "elsewhere" / "data"
    _image_folder(old)
    cfg = make_config(TrainConfig, data=str(old), val_fraction=0.0, test_fraction=0.0)
    pooled = load_source(cfg)
    pool = pooled.splits["train"]
    fold_of = fold_of_samples(pool.targets, 2, 0)
    content = fold_split_files(pool, fold_of, cfg, pooled.source, pooled.class_names)[0]
    ids = [i for split in content["splits"].values() for i in split]
    assert sorted(ids) == [f"{c}/{i}.png" for c in "ab" for i in range(4)]  # relative, no root
    path = tmp_path / "fold-1.json"
    path.write_text(json.dumps(content))
    shutil.move(old, new)
    moved = load_source(make_config(TrainConfig, data=str(new), split_file=str(path)))
    for split, names in content["splits"].items():
        assert moved.splits[split].ids == names
        assert [str(p) for p in moved.splits[split].paths] == [str(new / n) for n in names]
        assert moved.splits[split].targets.tolist() == [n[0] == "b" for n in names]


def test_a_resume_takes_a_moved_split_file_only_when_it_holds_the_runs_splits(tmp_path):
    """A cv fold records its split file's absolute path; when that is gone (the cv folder was
    moved), a resume takes the file it is given if its val and test ids are the run's (splits.json)
    and its train split holds the run's; another file is refused, a present one kept."""
    from cnnlab.engine.resume import resumed_config

    run = tmp_path / "fold-1"
    run.mkdir()
    gone = str(tmp_path / "gone" / "fold-1.json")
    (run / "config.json").write_text(json.dumps(TrainConfig(split_file=gone).to_dict()))
    splits = {"train": ["a/0.png", "b/1.png"], "test": ["a/1.png", "b/0.png"]}
    (run / "splits.json").write_text(json.dumps({"splits": splits}))
    same, other = tmp_path / "same.json", tmp_path / "other.json"
    same.write_text(json.dumps({"splits": splits | {"train": ["b/1.png", "a/0.png", "a/2.png"]}}))
    other.write_text(json.dumps({"splits": splits | {"test": ["a/1.png"]}}))
    config = resumed_config(TrainConfig, TrainConfig(split_file=str(same)), run)
    assert config["split_file"] == str(same) and config["resume"] == str(run)
    with pytest.raises(ConfigError, match="has another 'test' split"):
        resumed_config(TrainConfig, TrainConfig(split_file=str(other)), run)
    assert resumed_config(TrainConfig, TrainConfig(), run)["split_file"] == gone  # none given
    present = TrainConfig(split_file=str(same)).to_dict()
    (run / "config.json").write_text(json.dumps(present))  # recorded and present: kept as is
    assert resumed_config(TrainConfig, TrainConfig(split_file=str(same)), run)["split_file"] == str(
        same
    )
    with pytest.raises(ConfigError, match="--split-file .*other.json \\(the run's: .*same.json"):
        resumed_config(TrainConfig, TrainConfig(split_file=str(other)), run)  # another: refused


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not a JSON split file"),
        ('{"splits": {"test": ["s1"]}}', "no \\(or an empty\\) 'train' split"),
        ('{"train": ["s1"], "tset": ["s2"]}', "unknown split 'tset'"),
        ('{"train": ["s1", "s2"], "test": ["s2"]}', "'s2' is listed in both 'train' and 'test'"),
        ('{"train": ["s1", "s1"]}', "'s1' is listed twice"),
        (
            '{"train": ["s1", "x7"]}',
            r"1 id\(s\) of split 'train' are not in toy \(first: \['x7'\]\)",
        ),
        ('{"train": [1, 2]}', "must be a list of sample ids"),
    ],
)
def test_bad_split_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(str(path)) + ": .*" + message):
        apply_split_file(_bundle(), path)
    with pytest.raises(DataError, match="split file not found"):
        apply_split_file(_bundle(), tmp_path / "absent.json")


# -- summary across folds ----------------------------------------------------------------------------
def test_fold_interval_is_scipys_t_interval_of_the_defined_values():
    values = [0.91, 0.88, None, 0.95, 0.9]
    got = fold_interval(values, 0.95)
    defined = [0.91, 0.88, 0.95, 0.9]
    low, high = stats.t.interval(0.95, df=3, loc=np.mean(defined), scale=stats.sem(defined))
    assert got["n"] == 4 and math.isclose(got["mean"], statistics.fmean(defined))
    assert math.isclose(got["std"], statistics.stdev(defined))
    assert math.isclose(got["low"], low) and math.isclose(got["high"], high)
    assert fold_interval([0.5, None]) == {
        "mean": 0.5,
        "std": None,
        "low": None,
        "high": None,
        "n": 1,
    }
    assert fold_interval([None, None])["mean"] is None
    near_one = fold_interval([1.0, 0.99, 1.0], 0.95, bounds=(0.0, 1.0))
    low, high = stats.t.interval(
        0.95, df=2, loc=np.mean([1, 0.99, 1]), scale=stats.sem([1, 0.99, 1])
    )
    assert high > 1.0 and near_one["high"] == 1.0 and math.isclose(near_one["low"], low)


def test_summary_covers_every_score_of_every_fold():
    rng = np.random.default_rng(0)
    folds = []
    for _ in range(3):
        targets = rng.integers(0, 3, 60)
        probs = rng.dirichlet(np.ones(3), 60)
        folds.append(classification_metrics(targets, probs, class_names=["a", "b", "c"]))
    summary = summarize_folds(folds)
    for name in ("accuracy", "macro_f1", "weighted_recall", "log_loss", "top_1_accuracy", "f1[b]"):
        values = [flatten_metrics(m)[name] for m in folds]
        assert summary[name]["values"] == values
        assert math.isclose(summary[name]["mean"], statistics.fmean(values))
    assert not {"tp[a]", "support[a]", "num_samples", "ece_bins"} & set(summary)


def test_the_calibration_temperature_is_listed_per_fold_not_summarized_as_a_score(tmp_path):
    """Each fold's test metrics carry the temperature T fitted on its validation split; the
    summary gave it a mean and a t interval as if it were a score (cut to [0, 1] besides, so T =
    1.7 got an interval ending at 1). It is listed per fold, with its range, on its own."""
    import io
    import types

    from rich.console import Console

    from cnnlab.cli.cv import print_summary
    from cnnlab.tasks.classify.cv import CVResult, _write_summary

    rng = np.random.default_rng(0)
    folds, temperatures = [], [1.7, 1.9, 1.6]
    for t in temperatures:
        targets = rng.integers(0, 3, 60)
        metrics = classification_metrics(targets, rng.dirichlet(np.ones(3), 60),
                                         class_names=["a", "b", "c"])  # fmt: skip
        folds.append(metrics | {"temperature": t})
    summary = summarize_folds(folds)
    assert "temperature" not in summary and "accuracy" in summary
    result = CVResult(tmp_path, 3, summary, {"accuracy": 0.4}, tmp_path / "oof_predictions.csv",
                      [tmp_path / f"fold-{i}" for i in (1, 2, 3)], ["trained"] * 3,
                      temperatures=temperatures)  # fmt: skip
    _write_summary(result, types.SimpleNamespace(seed=0), "builtin:x")
    written = json.loads((tmp_path / "cv_summary.json").read_text())
    assert "temperature" not in written["metrics"]
    assert written["temperature"] | {"about": ""} == {
        "about": "", "values": temperatures, "min": 1.6, "max": 1.9,
    }  # fmt: skip
    row = (tmp_path / "cv_summary.csv").read_text().splitlines()[-1]
    assert row == "temperature,,,,,3,1.7,1.9,1.6,"  # each fold's T: no mean, std or interval
    console = Console(file=io.StringIO(), width=200)
    print_summary(result, console)
    shown = console.file.getvalue()
    assert "calibration temperature per fold: 1.7, 1.9, 1.6 (range 1.6 to 1.9;" in shown
    assert not any(ln.lstrip("│ ").startswith("temperature") for ln in shown.splitlines())


# -- out-of-fold predictions -------------------------------------------------------------------------
def test_out_of_fold_csv_holds_each_sample_once_and_cnnlab_metrics_reads_it(tmp_path):
    from cnnlab.tasks.classify.cv import _out_of_fold

    rng = np.random.default_rng(0)
    names = ["cat", "dog", "eel"]
    targets = np.arange(30) % 3
    pool = Split([f"img/{i:02d}.png" for i in range(30)], targets)
    fold_of = fold_of_samples(targets, 3, seed=0)
    probs = rng.dirichlet(np.ones(3), 30).astype(np.float32)
    results = []
    for f in range(3):
        held = np.flatnonzero(fold_of == f)[::-1]  # a fold's own order, not the pool's
        predictions = {"probs": probs[held], "targets": targets[held],
                       "ids": np.asarray(pool.ids)[held], "class_names": np.asarray(names)}  # fmt: skip
        results.append(({}, predictions))
    oof = _out_of_fold(tmp_path, pool, fold_of, names, results)
    rows = oof["path"].read_text().splitlines()
    assert rows[0] == "id,fold,label,pred,score_cat,score_dog,score_eel"
    assert [r.split(",")[0] for r in rows[1:]] == pool.ids  # every sample once, in the pool's order
    assert [int(r.split(",")[1]) for r in rows[1:]] == (fold_of + 1).tolist()
    read_targets, read_probs, read_preds, read_names = read_predictions_csv(oof["path"])
    assert read_names == names and (read_targets == targets).all()
    np.testing.assert_allclose(read_probs, probs, rtol=1e-6)
    assert (read_preds == probs.argmax(axis=1)).all()
    direct = classification_metrics(targets, probs.astype(np.float64), class_names=names)
    assert math.isclose(oof["scores"]["accuracy"], direct["accuracy"])
    assert math.isclose(oof["scores"]["log_loss"], direct["log_loss"], rel_tol=1e-6)


# -- the command line --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--folds", "1"], "option --folds must be >= 2, got 1"),
        (["--folds", "200"], "--folds 200: classes with fewer samples than folds"),
        (["--test-fraction", "0.2"], "unknown option --test-fraction"),  # cv has no test split
    ],
)
def test_cv_user_errors_are_one_line(tmp_path, capsys, argv, named):
    from cnnlab.cli import main

    try:  # a CnnlabError returns 2; argparse's own errors exit with 2
        code = main(["cv", "--data", "builtin:digits", "--out", str(tmp_path), *argv])
    except SystemExit as exit_info:
        code = exit_info.code
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert named in lines[0]
    assert not list(tmp_path.iterdir())  # nothing was started


def test_cv_refuses_options_it_sets_itself(tmp_path):
    from cnnlab.tasks.classify.cv import cross_validate

    with pytest.raises(ConfigError, match="option split_file is set by cnnlab cv"):
        cross_validate(data="builtin:digits", split_file="x.json", out=str(tmp_path))
    with pytest.raises(ConfigError, match="option devices=2: `cnnlab cv` runs its folds one after"):
        cross_validate(data="builtin:digits", devices=2, out=str(tmp_path))


def test_cv_takes_a_large_validation_fraction_of_the_other_folds(tmp_path):
    """cv has no test fraction (the held-out fold is the test split), yet `--val-fraction 0.9`
    failed "val_fraction + test_fraction must leave samples for training" with train's default
    test fraction 0.1 added, naming an option cv refuses. 50 images outside each fold: 45 val."""
    from cnnlab.tasks.classify.cv import cross_validate

    result = cross_validate(
        data="builtin:shapes?n=100&size=16", folds=2, epochs=1, batch_size=4, val_fraction=0.9,
        report=False, device="cpu", out=str(tmp_path), name="cv",
    )  # fmt: skip
    for fold_dir in result.fold_dirs:
        splits = json.loads((fold_dir / "splits.json").read_text())["splits"]
        assert {k: len(v) for k, v in splits.items()} == {"train": 5, "val": 45, "test": 50}
    # train's own check names both options, in the command line's words there
    with pytest.raises(ConfigError, match=r"option val_fraction 0\.6 \+ option test_fraction 0\.5"):
        make_config(TrainConfig, data="builtin:digits", val_fraction=0.6, test_fraction=0.5)


# -- end to end ------------------------------------------------------------------------------------
CV_OPTIONS = ["--data", "builtin:digits", "--epochs", "3", "--batch-size", "32", "--lr", "0.05",
              "--no-report", "--seed", "0"]  # fmt: skip


@pytest.mark.slow
def test_cv_five_folds_on_digits_end_to_end(tmp_path):
    from sklearn.datasets import load_digits

    proc = ok("cv", "--folds", "5", *CV_OPTIONS, "--out", str(tmp_path), "--name", "cv")
    assert "5-fold cross-validation: mean, std and 95% t interval" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.lstrip("│ ").startswith("accuracy "))
    assert re.search(r"\[0\.\d{4}, [01]\.\d{4}\]", line), line  # the printed interval
    cv = tmp_path / "cv"
    targets = load_digits().target
    test_ids, per_fold = [], []
    for i in range(1, 6):
        recorded = json.loads((cv / "folds" / f"fold-{i}.json").read_text())["splits"]
        run_splits = json.loads((cv / f"fold-{i}" / "splits.json").read_text())["splits"]
        assert run_splits == recorded  # the fold's run folder records the same ids
        assert json.loads((cv / f"fold-{i}" / "config.json").read_text())["split_file"]
        held = [int(s.split(":")[1]) for s in recorded["test"]]
        test_ids += recorded["test"]
        per_fold.append(np.bincount(targets[held], minlength=10))
    per_fold = np.stack(per_fold)
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 1).all(), per_fold
    oof_path = cv / "oof_predictions.csv"
    rows = oof_path.read_text().splitlines()[1:]
    ids = [r.split(",")[0] for r in rows]
    assert sorted(ids) == sorted(test_ids) and len(set(ids)) == len(ids) == 1797
    summary = json.loads((cv / "cv_summary.json").read_text())
    acc = summary["metrics"]["accuracy"]
    assert acc["n"] == 5 and acc["low"] < acc["mean"] < acc["high"] and acc["mean"] > 0.5
    scored = ok("metrics", str(oof_path), "--json")
    assert math.isclose(json.loads(scored.stdout)["accuracy"], acc["out_of_fold"])
    assert "accuracy," in (cv / "cv_summary.csv").read_text()
    again = ok("cv", "--folds", "5", *CV_OPTIONS, "--out", str(tmp_path), "--name", "cv")
    assert "5 of 5 folds were finished earlier and kept" in again.stdout
    assert json.loads((cv / "cv_summary.json").read_text())["metrics"]["accuracy"] == acc
    changed = run_cnnlab("cv", "--folds", "4", *CV_OPTIONS, "--out", str(tmp_path), "--name", "cv")
    assert changed.returncode == 2
    assert "is a cross-validation with other options (folds: 5 -> 4)" in changed.stderr


@pytest.mark.slow
def test_an_interrupted_fold_resumes_and_matches_an_uninterrupted_cv(tmp_path, monkeypatch):
    """SIGTERM in fold 2 (through GracefulInterrupt's handler): the rerun keeps fold 1, resumes
    fold 2 from its checkpoint and trains fold 3; with --deterministic the folds' test
    predictions are those of a cross-validation that was never stopped."""
    from cnnlab.engine import callbacks as cbs
    from cnnlab.errors import Interrupted
    from cnnlab.tasks.classify.cv import cross_validate

    options = {"data": "builtin:digits", "epochs": 2, "batch_size": 64, "report": False,
               "deterministic": True, "out": str(tmp_path), "seed": 1}  # fmt: skip
    full = cross_validate(folds=3, name="full", **options)
    original, fits = cbs.GracefulInterrupt.on_fit_start, []

    def start_then_arm(self, trainer):
        original(self, trainer)
        fits.append(trainer)
        if len(fits) != 2:
            return
        state = trainer.state

        class Kill(cbs.Callback):
            def on_batch_end(self, t, loss, correct, size):
                if (state.epoch, state.step) == (1, 3):
                    signal.raise_signal(signal.SIGTERM)

        trainer.callbacks.append(Kill())

    with monkeypatch.context() as m:
        m.setattr(cbs.GracefulInterrupt, "on_fit_start", start_then_arm)
        with pytest.raises(Interrupted, match="fold 2 of 3.*--name part"):
            cross_validate(folds=3, name="part", **options)
    assert not (tmp_path / "part" / "fold-2" / "test_predictions.npz").exists()
    resumed = cross_validate(folds=3, name="part", **options)
    assert resumed.status == ["finished earlier", "resumed", "trained"]
    for a, b in zip(full.fold_dirs, resumed.fold_dirs, strict=True):
        with np.load(a / "test_predictions.npz") as za, np.load(b / "test_predictions.npz") as zb:
            assert (za["ids"] == zb["ids"]).all()
            np.testing.assert_array_equal(za["probs"], zb["probs"])
    assert (full.cv_dir / "oof_predictions.csv").read_text() == resumed.oof_csv.read_text()


@pytest.mark.slow
def test_a_moved_cv_folder_evaluates_and_resumes_its_folds(tmp_path):
    """The fold runs record their split files' absolute paths: after the cv folder is moved (the
    old one gone), `cnnlab evaluate FOLD` still scores the fold's test split (the run's splits.json
    picks it by id) and a rerun resumes an unfinished fold with the fold file at its new place."""
    import shutil

    from cnnlab.api import evaluate
    from cnnlab.tasks.classify.cv import cross_validate

    data = tmp_path / "data"
    _image_folder(data)
    options = {"data": str(data), "model": "lenet5", "image_size": 16, "epochs": 1,
               "batch_size": 4, "val_fraction": 0.0, "report": False, "name": "cv"}  # fmt: skip
    first = cross_validate(folds=2, out=str(tmp_path / "runs"), **options)
    moved = tmp_path / "moved"
    shutil.move(first.cv_dir, moved / "cv")
    fold_1, fold_2 = moved / "cv" / "fold-1", moved / "cv" / "fold-2"
    recorded = json.loads((fold_1 / "config.json").read_text())["split_file"]
    assert recorded.startswith(str(tmp_path / "runs")) and not os.path.exists(recorded)
    scored = evaluate(str(fold_1), report=False)
    recorded_metrics = json.loads((fold_1 / "test_metrics.json").read_text())
    assert scored["metrics"]["accuracy"] == recorded_metrics["accuracy"]
    assert scored["metrics"]["num_samples"] == 4
    (fold_2 / "test_metrics.json").unlink()  # as if stopped before its final evaluation
    again = cross_validate(folds=2, out=str(moved), **options)
    assert again.status == ["finished earlier", "resumed"]
