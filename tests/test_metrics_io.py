"""read_predictions_csv: a 10-row file worked out by hand, dialects, and every bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special

from cnnlab.errors import DataError
from cnnlab.metrics import UndefinedMetricWarning, classification_metrics, read_predictions_csv

# 10 samples, classes cat / dog, positive class dog (index 1), threshold 0.5 on score_dog.
HAND_CSV = """\
label,score_cat,score_dog
dog,0.1,0.9
dog,0.2,0.8
dog,0.4,0.6
dog,0.7,0.3
cat,0.45,0.55
cat,0.3,0.7
cat,0.8,0.2
cat,0.9,0.1
cat,0.7,0.3
dog,0.5,0.5
"""


def _write(tmp_path, text, name="preds.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_hand_worked_example(tmp_path):
    targets, probs, preds, names = read_predictions_csv(_write(tmp_path, HAND_CSV))
    assert names == ["cat", "dog"] and preds is None
    assert targets.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    assert probs.shape == (10, 2) and probs[4].tolist() == [0.45, 0.55]
    r = classification_metrics(targets, probs, class_names=names, ece_bins=4)

    # Decisions "dog if score_dog >= 0.5":
    #   rows 1, 2, 3, 10 (dog; .9 .8 .6 .5)  -> dog   TP = 4
    #   row 4            (dog; .3)           -> cat   FN = 1
    #   rows 5, 6        (cat; .55 .7)       -> dog   FP = 2
    #   rows 7, 8, 9     (cat; .2 .1 .3)     -> cat   TN = 3
    dog = r["per_class"]["dog"]
    assert (dog["tp"], dog["fp"], dog["tn"], dog["fn"], dog["support"]) == (4, 2, 3, 1, 5)
    assert r["confusion_matrix"] == [[3, 2], [1, 4]]  # rows true (cat, dog), columns predicted
    assert r["accuracy"] == pytest.approx((4 + 3) / 10)  # (TP + TN) / (TP + FP + TN + FN)
    assert dog["precision"] == pytest.approx(4 / (4 + 2))  # TP / (TP + FP)
    assert dog["recall"] == dog["tpr"] == pytest.approx(4 / (4 + 1))  # TP / (TP + FN)
    assert dog["tnr"] == pytest.approx(3 / (3 + 2))  # TN / (TN + FP)
    assert dog["fpr"] == pytest.approx(2 / (2 + 3))  # FP / (FP + TN)
    assert dog["fnr"] == pytest.approx(1 / (1 + 4))  # FN / (FN + TP)
    p, rec = 4 / 6, 4 / 5
    assert dog["f1"] == pytest.approx(2 * p * rec / (p + rec))  # = 2*4 / (2*4 + 2 + 1) = 8/11
    # cat as the positive class: TP = 3 (7, 8, 9), FP = 1 (row 4), FN = 2 (5, 6), TN = 4.
    cat = r["per_class"]["cat"]
    assert (cat["tp"], cat["fp"], cat["tn"], cat["fn"]) == (3, 1, 4, 2)
    assert cat["precision"] == pytest.approx(3 / 4) and cat["recall"] == pytest.approx(3 / 5)
    assert cat["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert r["macro"]["precision"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert r["macro"]["recall"] == r["balanced_accuracy"] == pytest.approx((4 / 5 + 3 / 5) / 2)
    assert r["weighted"]["recall"] == pytest.approx((5 * 4 / 5 + 5 * 3 / 5) / 10)
    assert r["micro"]["precision"] == pytest.approx(7 / 10)  # sum TP / sum (TP + FP)
    # Cohen's kappa: p_o = 0.7, p_e = (5*4 + 5*6) / 10^2 = 0.5 (row sums 5 5, column sums 4 6).
    assert r["cohen_kappa"] == pytest.approx((0.7 - 0.5) / (1 - 0.5))
    # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 - 2) / sqrt(6*5*5*4).
    assert r["mcc"] == pytest.approx(10 / math.sqrt(600))

    # ROC-AUC = P(score of a dog > score of a cat) + 0.5 P(tie). Cats score .55 .7 .2 .1 .3.
    # Dog .9 beats 5, .8 beats 5, .6 beats 4, .5 beats 3, .3 beats 2 and ties 1 -> 19.5 of 25.
    assert dog["roc_auc"] == pytest.approx(19.5 / 25) and cat["roc_auc"] == pytest.approx(0.78)
    assert r["roc_auc_ovo"] == pytest.approx(0.78) and r["binary"]["roc_auc"] == pytest.approx(0.78)
    # AP: by decreasing score_dog: .9 P, .8 P, .7 N, .6 P, .55 N, .5 P, .3 P+N (tie), .2 N, .1 N.
    # Recall rises by 1/5 at .9 (precision 1/1), .8 (2/2), .6 (3/4), .5 (4/6), .3 (5/8).
    assert dog["average_precision"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6 + 5 / 8) / 5)
    # Top-1 uses argmax (a tie goes to the lower index): row 10 (.5/.5) becomes cat, wrong, so
    # top-1 = 6/10 while the 0.5 threshold rule gave 7/10. K = 2, so only k = 1 is reported.
    assert r["top_k_accuracy"] == {1: pytest.approx(0.6)}
    p_true = [0.9, 0.8, 0.6, 0.3, 0.45, 0.3, 0.8, 0.9, 0.7, 0.5]  # probability of the true class
    assert r["log_loss"] == pytest.approx(-sum(math.log(v) for v in p_true) / 10)
    # ECE, 4 bins (0, .25] (.25, .5] (.5, .75] (.75, 1] of the max probability:
    #   (.25, .5]: row 10 (.5, wrong)                        -> 1/10 * |0 - .5|        = .05
    #   (.5, .75]: rows 3 .6 ok, 4 .7 x, 5 .55 x, 6 .7 x, 9 .7 ok -> 5/10 * |2/5 - .65| = .125
    #   (.75, 1]:  rows 1 .9, 2 .8, 7 .8, 8 .9, all right     -> 4/10 * |1 - .85|       = .06
    assert r["ece"] == pytest.approx(0.05 + 0.125 + 0.06)
    assert r["reliability"]["count"] == [0, 1, 5, 4]
    assert r["warnings"] == [] and r["num_samples"] == 10


def test_dialects_give_the_same_arrays(tmp_path):
    ref = read_predictions_csv(_write(tmp_path, HAND_CSV, "ref.csv"))
    semicolon = HAND_CSV.replace(",", ";")
    decimal_comma = semicolon.replace(".", ",")  # European spreadsheets: 0,9 with ; delimiters
    for i, text in enumerate([semicolon, decimal_comma, HAND_CSV.replace("\n", "\r\n")]):
        got = read_predictions_csv(_write(tmp_path, text, f"d{i}.csv"))
        assert got[3] == ref[3] and np.array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    bom = read_predictions_csv(_write(tmp_path, HAND_CSV, "bom.csv", encoding="utf-8-sig"))
    assert bom[3] == ["cat", "dog"] and np.array_equal(bom[1], ref[1])
    upper = HAND_CSV.replace("label,score_cat", "Target , score_cat")
    assert np.array_equal(read_predictions_csv(_write(tmp_path, upper, "u.csv"))[0], ref[0])


def test_case_35_a_column_of_class_names_and_indices_is_refused_naming_rows(tmp_path):
    """`1` among `cat`/`dog` labels was read as the header's second class."""
    text = "label,score_cat,score_dog\ncat,0.9,0.1\n1,0.2,0.8\ndog,0.3,0.7\n"
    with pytest.raises(DataError, match=r"row 3: classes given by name \(row 2: 'cat'\) and by "
                       r"index \(row 3: '1'\) in one column"):  # fmt: skip
        read_predictions_csv(_write(tmp_path, text))


def test_integer_labels_predictions_and_logits(tmp_path):
    # Integer labels index the score columns; score_ logits are softmax-normalised.
    # (the label column by index, the prediction column by name: each column one way)
    text = "y_true,score_a,score_b,score_c,y_pred\n0,2.0,1.0,-1.0,a\n2,0.5,0.1,3.0,c\n1,0,0,0,b\n"
    targets, probs, preds, names = read_predictions_csv(_write(tmp_path, text))
    assert (
        names == ["a", "b", "c"] and targets.tolist() == [0, 2, 1] and preds.tolist() == [0, 2, 1]
    )
    logits = np.array([[2.0, 1.0, -1.0], [0.5, 0.1, 3.0], [0, 0, 0]])
    np.testing.assert_allclose(probs, scipy.special.softmax(logits, axis=1), rtol=1e-12)
    # Predictions only: classes are the sorted names seen, score metrics absent.
    t, p, pr, names = read_predictions_csv(
        _write(tmp_path, "label,prediction\ndog,cat\ncat,cat\nbird,dog\n", "p.csv")
    )
    assert names == ["bird", "cat", "dog"] and p is None
    assert t.tolist() == [2, 1, 0] and pr.tolist() == [1, 1, 2]
    with pytest.warns(UndefinedMetricWarning) as caught:
        report = classification_metrics(t, preds=pr, class_names=names)
    bird = "precision is undefined for class 'bird'"  # bird is never predicted
    assert any(bird in str(w.message) for w in caught) and any(
        bird in m for m in report["warnings"]
    )
    assert report["accuracy"] == pytest.approx(1 / 3) and report["log_loss"] is None
    assert report["roc_auc_ovo"] is None and report["per_class"]["cat"]["roc_auc"] is None
    t, _, pr, names = read_predictions_csv(_write(tmp_path, "label,pred\n0,2\n1,1\n", "i.csv"))
    assert names == ["0", "1", "2"] and pr.tolist() == [2, 1]


@pytest.mark.parametrize(
    ("text", "row", "match"),
    [
        ("", None, "empty file"),
        ("\n\n", None, "empty file"),
        ("label,score_a,score_b\n", None, "no data rows"),
        ("truth,score_a,score_b\na,0.5,0.5\n", None, "no label column.*label, target or y_true"),
        ("label,a,b\na,0.5,0.5\n", None, "no score or prediction columns.*score_<class>"),
        ("label,score_a,score_b\na,0.5,0.5\nc,0.5,0.5\n", 3, "unknown label 'c'"),
        ("label,score_cat,score_dog\ncat,1,0\nCat,1,0\n", 3, "did you mean: cat"),
        ("label,score_a,score_b\na,0.5,0.5\nb,0.5,\n", 3, "non-numeric score '' in column score_b"),
        ("label,score_a,score_b\na,high,0.5\n", 2, "non-numeric score 'high'"),
        ("label,score_a,score_b\na,nan,0.5\n", 2, "not finite"),
        ("label,score_a,score_b\na,0.5,0.5\nb,0.5\n", 3, "2 fields but the header has 3"),
        ("label,score_a,score_b\n,0.5,0.5\n", 2, "empty label"),
        ("label,prob_a,prob_b\na,0.5,0.5\nb,0.9,0.9\n", 3, "prob_ columns must be probabilities"),
        ("label,score_a,prob_b\na,0.5,0.5\n", None, "use one prefix"),
        ("label,pred\na,b\nb,\n", 3, "empty prediction"),
    ],
)
def test_bad_files_raise_data_error_with_row(tmp_path, text, row, match):
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match=match) as info:
        read_predictions_csv(path)
    assert info.value.row == row and info.value.path == str(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        read_predictions_csv(tmp_path / "nope.csv")
    assert info.value.path.endswith("nope.csv")
    with pytest.raises(DataError, match="not a file"):
        read_predictions_csv(tmp_path)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("label,pred\ncaf\xe9,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_predictions_csv(latin1)


@pytest.mark.parametrize(
    ("text", "note"),
    [
        ("label,pred\ncat,cat\ndog,cat\ncat,cat\nfox,cat\n", "precision is undefined for class"),
        ("labels,score_cat,score_dog\ncat;dog,0.9,0.8\n,0.1,0.3\n", "samples recall is undefined"),
    ],
)
def test_metrics_command_says_an_undefined_metric_once_as_a_note(tmp_path, capsys, text, note):
    """Python displayed each UndefinedMetricWarning on stderr with cnnlab's source path and code
    line ('cli/__init__.py:1867: UndefinedMetricWarning: ... metrics = multilabel_metrics('),
    before the same text came again as a note."""
    import warnings

    from cnnlab.cli import main
    from cnnlab.metrics.checks import UndefinedMetricWarning

    csv_file = tmp_path / "scores.csv"
    csv_file.write_text(text)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["metrics", str(csv_file)]) == 0
    assert not [w for w in shown if issubclass(w.category, UndefinedMetricWarning)]
    err = capsys.readouterr().err
    assert err.count(note) == 1 and "note:" in err
