"""`cnnlab metrics` on a multi-label predictions CSV, against numbers worked out by hand below,
and its bad inputs; `cnnlab predict` on a multi-label run (slow: trains one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_process import assert_user_error

from cnnlab.cli import main
from cnnlab.errors import DataError
from cnnlab.metrics.io import is_multilabel_csv, read_multilabel_predictions_csv

# Five samples, labels cat / dog / fox; at threshold 0.5 the decisions are
#   row 2: true {cat, dog}  scores .9 .8 .1   -> predicted {cat, dog}
#   row 3: true {cat}       scores .6 .4 .3   -> {cat}
#   row 4: true {dog}       scores .2 .7 .95  -> {dog, fox}      (fox: a false positive)
#   row 5: true {}          scores .1 .3 .2   -> {}
#   row 6: true {fox, cat}  scores .4 .1 .9   -> {fox}           (cat: a false negative)
CSV = """labels,score_cat,score_dog,score_fox
cat;dog,0.9,0.8,0.1
cat,0.6,0.4,0.3
dog,0.2,0.7,0.95
,0.1,0.3,0.2
fox;cat,0.4,0.1,0.9
"""


def _metrics(capsys, *args: str) -> dict:
    """`cnnlab metrics ARGS --json` in this process (the command is torch-free and quick)."""
    capsys.readouterr()
    assert main(["metrics", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_metrics_of_a_hand_worked_multilabel_csv(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ml.csv"
    path.write_text(CSV)
    m = _metrics(capsys, str(path))
    cat, dog, fox = (m["per_label"][k] for k in ("cat", "dog", "fox"))
    # cat: true rows 2, 3, 6; predicted 2, 3 -> TP 2, FP 0, FN 1, TN 2; P 1, R 2/3,
    #      F1 = 2TP / (2TP + FP + FN) = 4 / 5
    assert (cat["tp"], cat["fp"], cat["fn"], cat["tn"]) == (2, 0, 1, 2)
    assert cat["recall"] == pytest.approx(2 / 3) and cat["f1"] == pytest.approx(0.8)
    # dog: true 2, 4; predicted 2, 4 -> TP 2, FP 0, FN 0, TN 3; F1 1
    assert (dog["tp"], dog["fp"], dog["fn"], dog["tn"]) == (2, 0, 0, 3) and dog["f1"] == 1
    # fox: true 6; predicted 4, 6 -> TP 1, FP 1, FN 0, TN 3; P 1/2, F1 = 2 / 3, FPR 1/4
    assert (fox["tp"], fox["fp"], fox["fn"], fox["tn"]) == (1, 1, 0, 3)
    assert fox["precision"] == 0.5 and fox["f1"] == pytest.approx(2 / 3)
    assert fox["fpr"] == pytest.approx(0.25)
    # macro F1 = (4/5 + 1 + 2/3) / 3 = 37/45; micro: TP 5, FP 1, FN 1 -> F1 = 10/12 = 5/6
    assert m["macro"]["f1"] == pytest.approx(37 / 45)
    assert m["micro"]["f1"] == pytest.approx(5 / 6)
    # samples F1 per row: 1, 1, 2*1/(1+2) = 2/3, undefined (no true, no predicted label: left
    # out), 2*1/(2+1) = 2/3 -> mean of four = 5/6
    assert m["samples"]["f1"] == pytest.approx(5 / 6)
    # 2 wrong cells of 15; rows 2, 3, 5 exactly right -> 3/5
    assert m["hamming_loss"] == pytest.approx(2 / 15)
    assert m["subset_accuracy"] == pytest.approx(0.6)
    # AP: cat's positives score .9 .6 .4, above both negatives -> 1; dog likewise -> 1;
    # fox: .95 (negative) above .9 (its positive) -> precision 1/2 at recall 1 -> AP 1/2
    assert fox["average_precision"] == pytest.approx(0.5)
    assert m["map"] == pytest.approx((1 + 1 + 0.5) / 3)
    # fox ROC-AUC: its positive (.9) outscores 3 of the 4 negatives (.95 .3 .2 .1) -> 3/4
    assert fox["roc_auc"] == pytest.approx(0.75)
    # LRAP per row: 1, 1, dog .7 is ranked below fox .95 -> 1/2, no label -> 1 (scikit-learn's
    # convention), fox 1st and cat 2nd with both relevant -> 1; mean 4.5 / 5 = 0.9
    assert m["label_ranking_average_precision"] == pytest.approx(0.9)
    # at --threshold 0.35: row 3 predicts dog (.4), a false positive; and row 5 none changes
    m = _metrics(capsys, str(path), "--threshold", "0.35")
    assert m["per_label"]["dog"]["fp"] == 1 and m["per_label"]["cat"]["fn"] == 0


def test_multilabel_csv_reader_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "ml.csv"
    rows = CSV.splitlines()
    preds = ["cat;dog", "cat", "dog", "", "fox"]
    path.write_text(
        "labels,pred_labels," + rows[0].split(",", 1)[1] + "\n"
        + "".join(f"{r.split(',', 1)[0]},{p},{r.split(',', 1)[1]}\n"
                  for r, p in zip(rows[1:], preds, strict=True))
    )  # fmt: skip
    assert is_multilabel_csv(path)
    targets, probs, decided, names = read_multilabel_predictions_csv(path)
    assert names == ["cat", "dog", "fox"] and probs.shape == (5, 3)
    np.testing.assert_array_equal(targets[4], [1, 0, 1])
    np.testing.assert_array_equal(decided[2], [0, 1, 0])  # the given decisions, not >= 0.5
    bad = tmp_path / "bad.csv"
    bad.write_text("labels,score_cat,score_dog\ncat,0.1,0.2\ncta;dog,0.3,0.4\n")
    with pytest.raises(DataError, match=r"bad.csv, row 3: unknown label 'cta'.*did you mean"):
        read_multilabel_predictions_csv(bad)


@pytest.mark.slow  # a subprocess: ~2.5 s on a loaded machine
def test_metrics_bad_multilabel_csv_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("labels,score_cat,score_dog\ncat,0.1,x\n")
    assert_user_error("metrics", str(bad), names=["bad.csv", "row 2", "'x'"])


def test_runs_table_shows_a_multilabel_runs_macro_f1(tmp_path: Path) -> None:
    from cnnlab.runs_table import read_runs

    run = tmp_path / "runs" / "ml"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "lenet5", "data": "m.csv"}))
    (run / "metrics.csv").write_text("epoch,train_loss,val_macro_f1\n1,0.5,0.6\n")
    (run / "run.json").write_text(json.dumps({"task": "classification", "multilabel": True}))
    (run / "test_metrics.json").write_text(json.dumps({"macro": {"f1": 0.93}, "map": 0.97}))
    rows, problems = read_runs(tmp_path / "runs")
    assert problems == [] and (rows[0].metric, rows[0].value) == ("macro_f1", 0.93)
    (run / "test_metrics.json").unlink()  # no test split: the last validation macro F1
    rows, _ = read_runs(tmp_path / "runs")
    assert (rows[0].metric, rows[0].value) == ("val_macro_f1", 0.6)


@pytest.mark.parametrize("multilabel", [False, True])
def test_predict_json_has_labels_only_for_a_multilabel_run(
    multilabel: bool, tmp_path: Path, monkeypatch, capsys
) -> None:
    """`labels` (every label, its probability and threshold) is a multi-label run's key; a
    single-label run's rows leave it out instead of carrying `"labels": null`. The model is
    replaced by fixed answers: this is about what the command prints."""
    from cnnlab import api
    from cnnlab.engine.predict import Prediction

    labels = [("cat", 0.9, 0.5), ("dog", 0.6, 0.5), ("fox", 0.2, 0.5)] if multilabel else None
    answer = Prediction("x.png", top=[("cat", 0.9), ("dog", 0.1)], labels=labels)
    monkeypatch.setattr(api, "recorded_task", lambda run: "classification")
    monkeypatch.setattr(api, "predict", lambda *args, **kwargs: [answer])
    monkeypatch.setattr(api, "operating_point", lambda run: None)  # a run without one
    assert main(["predict", str(tmp_path), "x.png", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    if multilabel:
        assert row["labels"] == [list(x) for x in labels] and row["answer"] == "cat;dog"
    else:
        assert "labels" not in row and row["answer"] == "cat" and row["top"][0] == ["cat", 0.9]


@pytest.mark.parametrize("multilabel", [False, True])
def test_predict_table_shows_every_image_path_whole(
    multilabel: bool, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A folder's files share a long prefix: on an 80-column output the image column once cut
    each path to the same '/…/holiday-photos/s…', so no row could be told from the next. Each
    path is now shown whole (folded over lines), and a name rich would read as markup
    ('[red]x.png') is printed as it is. The model is replaced by fixed answers."""
    from cnnlab import api
    from cnnlab.engine.predict import Prediction

    folder = "/data/users/someone/holiday-photos-2026/unsorted"
    paths = [f"{folder}/{name}" for name in ("beach_0001.jpg", "[red]beach_0002.jpg", "x.txt")]
    labels = [("cat", 0.9, 0.5), ("dog", 0.1, 0.5)] if multilabel else None
    answers = [
        Prediction(paths[0], top=[("cat", 0.9), ("dog", 0.1)], labels=labels),
        Prediction(paths[1], top=[("dog", 0.8), ("cat", 0.2)], labels=labels),
        Prediction(paths[2], error="not an image (cannot identify format)"),
    ]
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(api, "recorded_task", lambda run: "classification")
    monkeypatch.setattr(api, "predict", lambda *args, **kwargs: answers)
    monkeypatch.setattr(api, "operating_point", lambda run: None)
    assert main(["predict", str(tmp_path), *paths]) == 1  # one file is not an image
    # the image column's pieces, line after line, put back together
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("│")]
    assert len(lines) > 3
    column = "".join(ln.split("│")[1].strip() for ln in lines)
    assert column == "".join(paths)
