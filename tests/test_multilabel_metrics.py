"""cnnlab.metrics.multilabel against scikit-learn's multilabel functions on random inputs
(hypothesis), to 1e-9, including labels and samples where a value is undefined."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from cnnlab.metrics import multilabel as ml
from cnnlab.metrics.checks import UndefinedMetricWarning

SETTINGS = settings(max_examples=30, deadline=None)
TOL = 1e-9


@st.composite
def problems(draw, max_n: int = 25, max_labels: int = 5):
    """(targets, preds, scores): (N, L) 0/1, 0/1, and scores with many ties (few levels)."""
    n = draw(st.integers(1, max_n))
    n_labels = draw(st.integers(2, max_labels))  # one column is "binary" to scikit-learn
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    t = (rng.random((n, n_labels)) < density).astype(np.int64)
    if draw(st.booleans()):  # some informative, some random columns
        t[:, 0] = rng.integers(0, 2, n)
    p = rng.integers(0, 2, (n, n_labels))
    levels = draw(st.sampled_from([3, 10, 1000]))
    s = rng.integers(0, levels, (n, n_labels)) / levels
    return t, p, s


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL


@SETTINGS
@given(problems())
def test_counts_match_multilabel_confusion_matrix(case) -> None:
    t, p, _ = case
    mcm = skm.multilabel_confusion_matrix(t, p)  # (L, 2, 2): [[tn, fp], [fn, tp]]
    c = ml.label_counts(t, p)
    np.testing.assert_array_equal(c["tn"], mcm[:, 0, 0])
    np.testing.assert_array_equal(c["fp"], mcm[:, 0, 1])
    np.testing.assert_array_equal(c["fn"], mcm[:, 1, 0])
    np.testing.assert_array_equal(c["tp"], mcm[:, 1, 1])


@SETTINGS
@given(problems(), st.sampled_from(["nan", 0, 1]))
def test_precision_recall_f1_every_average_match_sklearn(case, zero_division) -> None:
    t, p, _ = case
    zd = np.nan if zero_division == "nan" else zero_division
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per = ml.per_label_metrics(t, p, zero_division=zero_division)
        ref = skm.precision_recall_fscore_support(t, p, average=None, zero_division=zd)
        for k, m in enumerate(("precision", "recall", "f1")):
            for a, b in zip(per[m], ref[k], strict=True):
                assert close(float(a), float(b)), (m, per[m], ref[k])
        for average in ml.AVERAGES:
            ours = ml.averaged(t, p, average, zero_division=zero_division)
            ref = skm.precision_recall_fscore_support(t, p, average=average, zero_division=zd)
            for k, m in enumerate(("precision", "recall", "f1")):
                assert close(ours[m], float(ref[k])), (average, m, ours[m], ref[k])


@SETTINGS
@given(problems())
def test_tnr_fpr_from_counts(case) -> None:
    t, p, _ = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per = ml.per_label_metrics(t, p)
    neg = (t == 0).sum(axis=0)
    tn = ((t == 0) & (p == 0)).sum(axis=0)
    for j in range(t.shape[1]):
        if neg[j] == 0:
            assert math.isnan(per["tnr"][j]) and math.isnan(per["fpr"][j])
        else:
            assert close(per["tnr"][j], tn[j] / neg[j])
            assert close(per["fpr"][j], 1 - tn[j] / neg[j])


@SETTINGS
@given(problems())
def test_hamming_subset_accuracy_lrap_match_sklearn(case) -> None:
    t, p, s = case
    assert close(ml.hamming_loss(t, p), skm.hamming_loss(t, p))
    assert close(ml.subset_accuracy(t, p), skm.accuracy_score(t, p))
    assert close(
        ml.label_ranking_average_precision(t, s, chunk=7),  # chunking changes nothing
        skm.label_ranking_average_precision_score(t, s),
    )


@SETTINGS
@given(problems())
def test_roc_auc_and_ap_match_sklearn_where_defined(case) -> None:
    t, _, s = case
    pos, n = t.sum(axis=0), len(t)
    auc_ok = (pos > 0) & (pos < n)  # scikit-learn raises for the other labels
    ap_ok = pos > 0  # scikit-learn scores them 0; cnnlab leaves them out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc = ml.roc_auc(t, s, None)
        ap = ml.average_precision(t, s, None)
        for j in range(t.shape[1]):
            if auc_ok[j]:
                assert close(auc[j], skm.roc_auc_score(t[:, j], s[:, j]))
            else:
                assert math.isnan(auc[j])
            if ap_ok[j]:
                assert close(ap[j], skm.average_precision_score(t[:, j], s[:, j]))
            else:
                assert math.isnan(ap[j])
        for average in ("macro", "weighted"):
            ours = ml.roc_auc(t, s, average)
            if auc_ok.any():
                cols = np.flatnonzero(auc_ok)
                ref = skm.roc_auc_score(t[:, cols], s[:, cols], average=average)
                assert close(ours, ref), (average, ours, ref)
            else:
                assert math.isnan(ours)
            ours = ml.average_precision(t, s, average)
            if ap_ok.any():
                cols = np.flatnonzero(ap_ok)
                ref = skm.average_precision_score(t[:, cols], s[:, cols], average=average)
                assert close(ours, ref), (average, ours, ref)
                if average == "weighted":  # weight 0 for no-positive labels: the same on all
                    assert close(ours, skm.average_precision_score(t, s, average="weighted"))
            else:
                assert math.isnan(ours)
        flat = t.ravel()
        if 0 < flat.sum() < flat.size:
            assert close(ml.roc_auc(t, s, "micro"), skm.roc_auc_score(t, s, average="micro"))
        if flat.sum() > 0:
            assert close(
                ml.average_precision(t, s, "micro"),
                skm.average_precision_score(t, s, average="micro"),
            )
        row_pos = t.sum(axis=1)
        rows = np.flatnonzero((row_pos > 0) & (row_pos < t.shape[1]))
        if len(rows) and t.shape[1] > 1:
            ref = skm.roc_auc_score(t[rows], s[rows], average="samples")
            assert close(ml.roc_auc(t, s, "samples"), ref)
        rows = np.flatnonzero(row_pos > 0)
        if len(rows):
            ref = skm.average_precision_score(t[rows], s[rows], average="samples")
            assert close(ml.average_precision(t, s, "samples"), ref)
        assert close(ml.mean_average_precision(t, s), ml.average_precision(t, s, "macro"))


@SETTINGS
@given(problems())
def test_tuned_threshold_maximises_f1(case) -> None:
    t, _, s = case
    thresholds, info = ml.tune_thresholds(t, s)
    for j in range(t.shape[1]):
        pos = int(t[:, j].sum())
        if pos in (0, len(t)):
            assert thresholds[j] == 0.5 and not info[j]["tuned"]
            continue
        candidates = np.unique(s[:, j])
        best = max(skm.f1_score(t[:, j], s[:, j] >= c) for c in candidates)
        got = skm.f1_score(t[:, j], s[:, j] >= thresholds[j])
        assert close(got, best) and close(info[j]["value"], best)


def test_report_hand_worked_with_an_undefined_label() -> None:
    # 4 samples, labels a, b, c; c is carried by no sample and never predicted.
    t = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.2, 0.1], [0.6, 0.7, 0.2], [0.4, 0.3, 0.3], [0.1, 0.8, 0.0]])
    # at 0.5: a -> [1, 1, 0, 0] (TP 2, FP 0, FN 0); b -> [0, 1, 0, 1] (TP 1, FP 1, FN 1)
    with pytest.warns(UndefinedMetricWarning, match="'c'"):
        report = ml.multilabel_metrics(t, s, label_names=["a", "b", "c"])
    json.dumps(report)  # JSON-able
    a, b, c = (report["per_label"][k] for k in "abc")
    assert (a["tp"], a["fp"], a["fn"], a["tn"]) == (2, 0, 0, 2)
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (1, 1, 1, 1)
    assert b["precision"] == 0.5 and b["recall"] == 0.5 and b["f1"] == 0.5
    # c: precision, recall and F1 undefined -> None, left out of the macro mean
    assert c["precision"] is None and c["recall"] is None and c["f1"] is None
    assert c["tnr"] == 1.0 and c["roc_auc"] is None and c["average_precision"] is None
    assert report["macro"]["f1"] == pytest.approx((1.0 + 0.5) / 2)
    # micro: TP 3, FP 1, FN 1 -> F1 = 6 / (6 + 2) = 0.75
    assert report["micro"]["f1"] == pytest.approx(0.75)
    # wrong cells: sample 2 misses b, sample 3 predicts b -> 2 of 12; exact rows: samples 0
    # and 1 -> 2 of 4
    assert report["hamming_loss"] == pytest.approx(2 / 12)
    assert report["subset_accuracy"] == pytest.approx(0.5)
    # AP a: scores .9(+) .6(+) .4 .1 -> 1; AP b: .8(-) .7(+) .3(+) .2 -> (1/2)(1/2) + (1/2)(2/3)
    assert report["per_label"]["a"]["average_precision"] == pytest.approx(1.0)
    assert report["per_label"]["b"]["average_precision"] == pytest.approx(0.25 + 1 / 3)
    assert report["map"] == pytest.approx((1.0 + 0.25 + 1 / 3) / 2)
    assert any("'c'" in w for w in report["warnings"])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="0 and 1"):
        ml.hamming_loss([[2, 0]], [[1, 0]])
    with pytest.raises(ValueError, match="shape"):
        ml.roc_auc([[1, 0]], [[0.5, 0.5, 0.1]])
    with pytest.raises(ValueError, match="zero_division"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml.per_label_metrics([[1, 0]], [[1, 0]], zero_division=2)
    with pytest.raises(ValueError, match="NaN"):
        ml.average_precision([[1, 0]], [[np.nan, 0.5]])
