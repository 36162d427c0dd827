"""cnnlab.metrics against scikit-learn / SciPy / NumPy references on random inputs (hypothesis).

Inputs are built to hit the awkward cases: tied scores (probabilities are small integers divided
by their row sum), classes missing from the targets or the predictions, a single class.
Where scikit-learn defines a value ours must equal it to 1e-9; where it does not (NaN,
zero_division, UndefinedMetricWarning, or its silent 0.0 for MCC) ours must be None and named in
an UndefinedMetricWarning.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import metrics as skm

from cnnlab.metrics import (
    ClassificationAccumulator,
    UndefinedMetricWarning,
    accuracy_difference_ci,
    average_precision,
    bootstrap_ci,
    classification_metrics,
    compare_predictions,
    confusion_matrix,
    find_threshold,
    headline_intervals,
    mcnemar_exact,
    precision,
    precision_recall_curve,
    reliability_diagram,
    roc_auc,
    roc_auc_ovo,
    roc_curve,
    softmax,
    specificity,
)

TOL = 1e-9
SETTINGS = settings(max_examples=50, deadline=None)


# ------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------


@st.composite
def problems(draw, k_min: int = 2, k_max: int = 5, n_max: int = 40):
    """(targets, probs, preds, K): targets from a random subset of the classes (so some may be
    absent, possibly all but one); probs = small integers / row sum (many ties); preds either
    argmax(probs) or drawn independently from another random subset of the classes."""
    k = draw(st.integers(k_min, k_max))
    n = draw(st.integers(1, n_max))
    present = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    targets = np.array(draw(st.lists(st.sampled_from(present), min_size=n, max_size=n)))
    raw = draw(hnp.arrays(np.int64, (n, k), elements=st.integers(0, 4))).astype(np.float64)
    raw[raw.sum(axis=1) == 0] = 1.0
    probs = raw / raw.sum(axis=1, keepdims=True)
    if draw(st.booleans()):
        preds = probs.argmax(axis=1)
    else:
        allowed = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
        preds = np.array(draw(st.lists(st.sampled_from(allowed), min_size=n, max_size=n)))
    return targets, probs, preds, k


def _report(*args, **kwargs):
    """classification_metrics plus the UndefinedMetricWarning messages it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = classification_metrics(*args, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    return report, messages


def _same(ours, expected, what: str) -> None:
    """ours == expected within TOL, where expected NaN means ours must be None."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        assert ours is None, f"{what}: expected None (undefined), got {ours}"
    else:
        assert ours is not None, f"{what}: got None, scikit-learn says {expected}"
        assert abs(ours - expected) <= TOL, f"{what}: {ours} != {expected}"


def _warned(messages: list[str], metric: str, name: str) -> bool:
    return any(metric in m and repr(name) in m for m in messages)


def _sk_quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# Confusion-matrix metrics
# ------------------------------------------------------------------------------------------


@SETTINGS
@given(problems())
def test_confusion_metrics_match_sklearn(problem):
    targets, probs, preds, k = problem
    labels = list(range(k))
    names = [str(c) for c in labels]
    report, messages = _report(targets, preds=preds, num_classes=k)

    cm = skm.confusion_matrix(targets, preds, labels=labels)
    assert report["confusion_matrix"] == cm.tolist()
    mcm = skm.multilabel_confusion_matrix(targets, preds, labels=labels)  # [[tn, fp], [fn, tp]]
    for c, name in enumerate(names):
        entry = report["per_class"][name]
        assert (entry["tn"], entry["fp"], entry["fn"], entry["tp"]) == tuple(mcm[c].ravel())
        assert entry["support"] == int(np.sum(targets == c))

    _same(report["accuracy"], skm.accuracy_score(targets, preds), "accuracy")
    _same(
        report["balanced_accuracy"],
        _sk_quiet(skm.balanced_accuracy_score, targets, preds),
        "balanced_accuracy",
    )

    p, r, f, s = skm.precision_recall_fscore_support(
        targets, preds, labels=labels, average=None, zero_division=np.nan
    )
    for c, name in enumerate(names):
        entry = report["per_class"][name]
        _same(entry["precision"], p[c], f"precision[{c}]")
        _same(entry["recall"], r[c], f"recall[{c}]")
        _same(entry["tpr"], r[c], f"tpr[{c}]")
        _same(entry["fnr"], 1 - r[c], f"fnr[{c}]")
        _same(entry["f1"], f[c], f"f1[{c}]")
        # Specificity has no scikit-learn scorer: recall of the negated one-vs-rest problem.
        tnr = _sk_quiet(
            skm.recall_score,
            (targets != c).astype(int),
            (preds != c).astype(int),
            labels=[0, 1],
            pos_label=1,
            zero_division=np.nan,
        )
        _same(entry["tnr"], tnr, f"tnr[{c}]")
        _same(entry["fpr"], 1 - tnr, f"fpr[{c}]")
        if math.isnan(p[c]):
            assert _warned(messages, "precision", name)
        if math.isnan(r[c]):
            assert _warned(messages, "recall", name)
        if math.isnan(tnr):
            assert _warned(messages, "tnr", name)

    for avg in ("macro", "weighted", "micro"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            targets, preds, labels=labels, average=avg, zero_division=np.nan
        )
        for metric, value, per in (("precision", ap, p), ("recall", ar, r), ("f1", af, f)):
            if avg == "weighted" and np.sum(s[~np.isnan(per)]) == 0:
                value = math.nan  # scikit-learn falls back to an unweighted mean; we say undefined
            _same(report[avg][metric], value, f"{avg} {metric}")
        if avg == "macro" and np.isnan(p).any() and not np.isnan(p).all():
            assert any("macro precision averages" in m for m in messages)
    # Micro TNR from pooled counts (scikit-learn's multilabel confusion matrix).
    tn, fp = mcm[:, 0, 0].sum(), mcm[:, 0, 1].sum()
    _same(report["micro"]["tnr"], tn / (tn + fp) if tn + fp else math.nan, "micro tnr")

    kappa = _sk_quiet(skm.cohen_kappa_score, targets, preds, labels=labels)
    _same(report["cohen_kappa"], kappa, "cohen_kappa")
    mcc_undefined = len(np.unique(targets)) == 1 or len(np.unique(preds)) == 1
    mcc = math.nan if mcc_undefined else skm.matthews_corrcoef(targets, preds)
    _same(report["mcc"], mcc, "mcc")  # scikit-learn returns 0.0 where MCC is undefined
    if mcc_undefined:
        assert any("mcc is undefined" in m for m in messages)

    assert report["roc_auc_ovo"] is None and report["log_loss"] is None
    assert report["warnings"] == list(dict.fromkeys(messages))


def test_array_functions_return_nan_and_warn():
    cm = confusion_matrix([0, 0, 1], [0, 0, 0], 3)  # class 1 never predicted, class 2 absent
    with pytest.warns(UndefinedMetricWarning, match=r"precision is undefined for class '1', '2'"):
        p = precision(cm)
    assert p[0] == pytest.approx(2 / 3) and np.isnan(p[1]) and np.isnan(p[2])
    with pytest.warns(UndefinedMetricWarning, match="tnr"):
        tnr = specificity(confusion_matrix([0, 0], [0, 1], 2))  # every sample is class 0
    assert np.isnan(tnr[0]) and tnr[1] == 0.5


@pytest.mark.filterwarnings("ignore::cnnlab.metrics.UndefinedMetricWarning")
def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    targets = torch.tensor([0, 1, 2, 1])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 3.0, 0.5], [1.0, 2.0, 0.0]])
    probs = logits.softmax(dim=1)
    ours = classification_metrics(targets, probs)
    ref = classification_metrics(targets.numpy(), probs.numpy())
    assert ours == ref
    acc = ClassificationAccumulator(3)
    acc.update(targets[:2], logits[:2])
    acc.update(targets[2:], logits[2:])
    assert acc.compute()["confusion_matrix"] == ours["confusion_matrix"]


# ------------------------------------------------------------------------------------------
# Score metrics
# ------------------------------------------------------------------------------------------


def _ece_reference(targets, probs, n_bins):
    """ECE written from its definition, one bin at a time (bin b = (lo, hi], 0 in the first)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    ece, rows = 0.0, []
    for b in range(n_bins):
        in_bin = (conf > edges[b]) & (conf <= edges[b + 1])
        if b == 0:
            in_bin |= conf == 0
        if in_bin.any():
            acc_b, conf_b = correct[in_bin].mean(), conf[in_bin].mean()
            ece += in_bin.mean() * abs(acc_b - conf_b)
            rows.append((conf_b, acc_b, int(in_bin.sum())))
        else:
            rows.append((math.nan, math.nan, 0))
    return ece, rows


@SETTINGS
@given(problems(), st.integers(1, 12))
def test_score_metrics_match_sklearn(problem, n_bins):
    targets, probs, _, k = problem
    names = [str(c) for c in range(k)]
    report, messages = _report(targets, probs, top_k=range(1, k + 1), ece_bins=n_bins)
    json.dumps(report, allow_nan=False)  # JSON-able, and no NaN slipped through as a value
    support = np.bincount(targets, minlength=k)

    aucs, aps = [], []
    for c, name in enumerate(names):
        y = targets == c
        auc = skm.roc_auc_score(y, probs[:, c]) if 0 < y.sum() < len(y) else math.nan
        ap = skm.average_precision_score(y, probs[:, c]) if y.any() else math.nan
        _same(report["per_class"][name]["roc_auc"], auc, f"roc_auc[{c}]")
        _same(report["per_class"][name]["average_precision"], ap, f"ap[{c}]")
        if math.isnan(auc):
            assert _warned(messages, "roc_auc", name)
        aucs.append(auc)
        aps.append(ap)
    aucs, aps = np.array(aucs), np.array(aps)
    for metric, values in (("roc_auc", aucs), ("average_precision", aps)):
        ok = ~np.isnan(values)
        macro = values[ok].mean() if ok.any() else math.nan
        _same(report["macro"][metric], macro, f"macro {metric}")
        weighted = np.dot(values[ok], support[ok]) / support[ok].sum() if ok.any() else math.nan
        _same(report["weighted"][metric], weighted, f"weighted {metric}")
    if (support > 0).all() and k > 2:  # scikit-learn's own multiclass averages need every class
        for avg in ("macro", "weighted"):
            ref = skm.roc_auc_score(targets, probs, multi_class="ovr", average=avg)
            _same(report[avg]["roc_auc"], ref, f"sklearn ovr {avg}")
    if (support > 0).sum() >= 2:
        if k > 2:
            ovo = skm.roc_auc_score(targets, probs, multi_class="ovo", labels=list(range(k)))
        else:
            ovo = skm.roc_auc_score(targets, probs[:, 1])
        _same(report["roc_auc_ovo"], ovo, "roc_auc_ovo")
    else:
        assert report["roc_auc_ovo"] is None
        assert any("roc_auc_ovo is undefined" in m for m in messages)

    # Top-k: ties go to the lower class index (like argmax); scikit-learn gives them to the
    # higher index, so reversing the class order turns one rule into the other.
    assert set(report["top_k_accuracy"]) == set(range(1, k))
    for kk, value in report["top_k_accuracy"].items():
        if k > 2:
            ref = skm.top_k_accuracy_score(k - 1 - targets, probs[:, ::-1], k=kk, labels=range(k))
            _same(value, ref, f"top-{kk}")
    _same(report["top_k_accuracy"][1], skm.accuracy_score(targets, probs.argmax(1)), "top-1")

    _same(report["log_loss"], skm.log_loss(targets, probs, labels=list(range(k))), "log_loss")
    ece, rows = _ece_reference(targets, probs, n_bins)
    _same(report["ece"], ece, "ece")
    rel = report["reliability"]
    assert rel["count"] == [r[2] for r in rows] and report["ece_bins"] == n_bins
    for b, (conf_b, acc_b, _) in enumerate(rows):
        _same(rel["confidence"][b], conf_b, f"bin {b} confidence")
        _same(rel["accuracy"][b], acc_b, f"bin {b} accuracy")


@SETTINGS
@given(
    hnp.arrays(np.int64, st.integers(1, 30), elements=st.integers(0, 1)),
    st.data(),
)
def test_binary_curves_match_sklearn(y, data):
    scores = data.draw(
        hnp.arrays(np.float64, len(y), elements=st.sampled_from([0.1, 0.4, 0.5, 0.9]))
    )
    both = 0 < y.sum() < len(y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = roc_curve(y, scores)
        ref = _sk_quiet(skm.roc_curve, y, scores)
        auc = roc_auc(y, scores)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)  # NaN where undefined in both
    _same(None if math.isnan(auc) else auc, skm.roc_auc_score(y, scores) if both else None, "auc")
    if not both:
        assert any(issubclass(w.category, UndefinedMetricWarning) for w in caught)

    if y.any():
        for a, b in zip(
            precision_recall_curve(y, scores), skm.precision_recall_curve(y, scores), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
        _same(average_precision(y, scores), skm.average_precision_score(y, scores), "ap")
    else:  # scikit-learn sets recall to 1 and AP to a number; we say undefined
        with pytest.warns(UndefinedMetricWarning):
            assert math.isnan(average_precision(y, scores))

    if both:
        for method in ("youden", "f1"):
            threshold, value = find_threshold(y, scores, method)
            best = -np.inf
            for cand in np.unique(scores)[::-1]:  # brute force, highest threshold first
                tn, fp, fn, tp = skm.confusion_matrix(y, scores >= cand, labels=[0, 1]).ravel()
                v = (
                    tp / (tp + fn) - fp / (fp + tn)
                    if method == "youden"
                    else (skm.f1_score(y, scores >= cand, zero_division=0.0))
                )
                if v > best + 1e-12:
                    best, best_t = v, cand
            assert threshold == best_t and abs(value - best) <= TOL


def test_binary_positive_class_and_threshold():
    targets = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.2, 0.6, 0.4, 0.7, 0.9])  # probability of class 1
    probs = np.stack([1 - p1, p1], axis=1)
    report = classification_metrics(targets, probs, class_names=["neg", "pos"], threshold=0.5)
    preds = (p1 >= 0.5).astype(int)
    assert report["binary"]["positive_class"] == "pos" and report["binary"]["threshold"] == 0.5
    _same(report["binary"]["precision"], skm.precision_score(targets, preds), "precision")
    _same(report["binary"]["roc_auc"], skm.roc_auc_score(targets, p1), "roc_auc")
    low = classification_metrics(targets, probs, class_names=["neg", "pos"], threshold=0.3)
    _same(low["binary"]["recall"], skm.recall_score(targets, p1 >= 0.3), "recall at 0.3")
    # Class "neg" as the positive class: predicted when P(neg) >= 0.5.
    neg = classification_metrics(targets, probs, class_names=["neg", "pos"], positive_class="neg")
    _same(
        neg["binary"]["precision"],
        skm.precision_score(targets, np.where(1 - p1 >= 0.5, 0, 1), pos_label=0),
        "neg precision",
    )
    with pytest.raises(ValueError, match="positive_class"):
        classification_metrics([0, 1, 2], np.eye(3), positive_class=1)
    # 1-D probabilities of the positive class are accepted for binary tasks.
    assert classification_metrics(targets, p1) == classification_metrics(targets, probs)


def test_single_class_and_bad_inputs():
    report, messages = _report([1, 1, 1], np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]))
    assert (
        report["per_class"]["1"]["roc_auc"] is None and report["per_class"]["0"]["recall"] is None
    )
    assert report["macro"]["roc_auc"] is None and report["mcc"] is None
    assert report["cohen_kappa"] == pytest.approx(
        skm.cohen_kappa_score([1, 1, 1], [1, 0, 1], labels=[0, 1])
    )
    assert _warned(messages, "roc_auc", "1") and _warned(messages, "recall", "0")
    with pytest.raises(ValueError, match="softmax"):
        classification_metrics([0, 1], np.array([[2.0, -1.0], [0.5, 3.0]]))  # logits
    with pytest.raises(ValueError, match="num_classes"):
        classification_metrics([0, 3], preds=[0, 1], num_classes=3)
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics([], preds=[], num_classes=2)


# ------------------------------------------------------------------------------------------
# Invariances: order of samples, batching
# ------------------------------------------------------------------------------------------


def _assert_reports_close(a, b, path="report"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_reports_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_reports_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@SETTINGS
@given(problems(), st.randoms(use_true_random=False), st.data())
def test_shuffling_and_batching_change_nothing(problem, rnd, data):
    targets, probs, _, k = problem
    probs = probs.astype(np.float32)  # the accumulator keeps float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        full = classification_metrics(targets, probs, num_classes=k, top_k=(1, 2, 3))
        perm = np.array(rnd.sample(range(len(targets)), len(targets)))
        _assert_reports_close(
            classification_metrics(targets[perm], probs[perm], num_classes=k, top_k=(1, 2, 3)),
            full,
        )
        cuts = sorted(data.draw(st.lists(st.integers(0, len(targets)), max_size=5)))
        bounds = [0, *cuts, len(targets)]
        kept = ClassificationAccumulator(k, top_k=(1, 2, 3), scores="probs")
        streamed = ClassificationAccumulator(k, keep_scores=False, top_k=(1, 2, 3))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            kept.update(targets[lo:hi], probs[lo:hi])
            streamed.update(targets[lo:hi], probs[lo:hi])
        _assert_reports_close(kept.compute(), full)
        # Without the scores only the rank metrics are lost.
        expected = copy.deepcopy(full)
        for entry in [
            *expected["per_class"].values(),
            expected["macro"],
            expected["weighted"],
            expected.get("binary", {}),
        ]:
            entry.update(roc_auc=None, average_precision=None)
        expected["roc_auc_ovo"] = None
        lean = streamed.compute()
        assert any("keep_scores=False" in w for w in lean["warnings"])
        del expected["warnings"], lean["warnings"]
        _assert_reports_close(lean, expected)


def test_accumulator_reads_logits_and_rejects_mixed_streams():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 4, 50)
    logits = rng.normal(size=(50, 4)) * 3
    acc = ClassificationAccumulator(4)
    for i in range(0, 50, 7):
        acc.update(targets[i : i + 7], logits[i : i + 7])
    ref = classification_metrics(targets, softmax(logits).astype(np.float32))
    _assert_reports_close(acc.compute(), ref)
    assert acc.num_samples == 50
    with pytest.raises(ValueError, match="fed scores"):
        acc.update(targets[:3], targets[:3])  # integer predictions after scores
    probs_stream = ClassificationAccumulator(4, scores="probs")
    with pytest.raises(ValueError, match="logits"):
        probs_stream.update(targets[:5], logits[:5])


def test_accumulator_predictions_only():
    targets, preds = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 1])
    acc = ClassificationAccumulator(3)
    acc.update(targets[:2], preds[:2])
    acc.update(targets[2:], preds[2:])
    report = acc.compute(["a", "b", "c"])
    assert report == classification_metrics(targets, preds=preds, class_names=["a", "b", "c"])
    assert report["log_loss"] is None and report["per_class"]["a"]["roc_auc"] is None


# ------------------------------------------------------------------------------------------
# Uncertainty
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 0), (5, 5), (2, 9), (20, 7), (1, 1)])
def test_mcnemar_exact_matches_binomial_formula(b, c):
    # b samples where only A is right, c where only B is right, 4 where both are, 3 where neither.
    correct_a = np.array([1] * b + [0] * c + [1] * 4 + [0] * 3, dtype=bool)
    correct_b = np.array([0] * b + [1] * c + [1] * 4 + [0] * 3, dtype=bool)
    result = mcnemar_exact(correct_a, correct_b)
    n = b + c
    # Two-sided exact binomial: min(1, 2 * P[X <= min(b, c)]), X ~ Bin(n, 1/2) (p = 1 if n = 0).
    expected = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)
    assert (result["b"], result["c"]) == (b, c)
    assert result["p_value"] == pytest.approx(expected, rel=1e-12)


def _toy(n=300, k=3, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.7, targets, rng.integers(0, k, n))
    return targets, preds


def test_bootstrap_ci_agrees_with_scipy_and_index_resampling():
    targets, preds = _toy()
    correct = (targets == preds).astype(float)
    low, high = bootstrap_ci(targets, preds, "accuracy", n_boot=4000, seed=1)
    ref = scipy.stats.bootstrap(
        (correct,),
        np.mean,
        n_resamples=4000,
        method="percentile",
        confidence_level=0.95,
        random_state=np.random.default_rng(2),
    ).confidence_interval
    assert abs(low - ref.low) < 0.015 and abs(high - ref.high) < 0.015

    # The vectorised (multinomial) path and plain index resampling estimate the same interval.
    def macro_f1(t, p):  # 2TP / (2TP + FP + FN) per class, mean over the defined classes
        cm = np.bincount(t * 3 + p, minlength=9).reshape(3, 3)
        den = cm.sum(axis=0) + cm.sum(axis=1)
        return np.mean(2 * np.diag(cm)[den > 0] / den[den > 0])

    for name, fn in (("accuracy", lambda t, p: np.mean(t == p)), ("macro_f1", macro_f1)):
        fast = bootstrap_ci(targets, preds, name, n_boot=2000, seed=3)
        slow = bootstrap_ci(targets, preds, fn, n_boot=2000, seed=4)
        assert abs(fast[0] - slow[0]) < 0.015 and abs(fast[1] - slow[1]) < 0.015, name
    # Seeded: the same call gives the same interval; another seed a different one.
    same = [bootstrap_ci(targets, preds, "macro_f1", seed=5) for _ in range(2)]
    assert same[0] == same[1] != bootstrap_ci(targets, preds, "macro_f1", seed=6)


def test_headline_intervals_and_paired_difference():
    targets, preds = _toy()
    report = classification_metrics(targets, preds=preds)
    hl = headline_intervals(targets, preds=preds, n_boot=2000)
    assert hl["accuracy"]["value"] == pytest.approx(report["accuracy"])
    for name in ("precision", "recall", "f1"):
        assert hl[f"macro_{name}"]["value"] == pytest.approx(report["macro"][name])
    assert hl["accuracy"]["low"] < report["accuracy"] < hl["accuracy"]["high"]
    half_width = 1.96 * math.sqrt(report["accuracy"] * (1 - report["accuracy"]) / len(targets))
    width = hl["accuracy"]["high"] - hl["accuracy"]["low"]
    assert abs(width - 2 * half_width) < 0.02  # the normal approximation, for a sanity check

    _, preds_b = _toy(seed=7)
    ca, cb = preds == targets, preds_b == targets
    diff = accuracy_difference_ci(ca, cb, n_boot=4000, seed=1)
    assert diff["difference"] == pytest.approx(ca.mean() - cb.mean())
    ref = scipy.stats.bootstrap(
        (ca.astype(float), cb.astype(float)),
        lambda a, b: a.mean() - b.mean(),
        paired=True,
        n_resamples=4000,
        method="percentile",
        random_state=np.random.default_rng(2),
    ).confidence_interval
    assert abs(diff["low"] - ref.low) < 0.015 and abs(diff["high"] - ref.high) < 0.015
    both = compare_predictions(targets, preds, preds_b, n_boot=500)
    assert both["mcnemar"] == mcnemar_exact(ca, cb)
    assert both["accuracy_a"] == pytest.approx(ca.mean())


def test_ovo_and_reliability_functions_directly():
    targets = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array(
        [
            [0.5, 0.2, 0.3],
            [0.2, 0.5, 0.3],
            [0.1, 0.1, 0.8],
            [0.3, 0.3, 0.4],
            [0.6, 0.2, 0.2],
            [0.2, 0.2, 0.6],
        ]
    )
    with pytest.warns(UndefinedMetricWarning, match="'2'"):  # class 2 never occurs
        value = roc_auc_ovo(targets, probs)
    assert value == pytest.approx(
        skm.roc_auc_score(targets, probs, multi_class="ovo", labels=[0, 1, 2]), abs=TOL
    )
    # The only pair left, (0, 1), by hand (a tie counts 1/2):
    # AUC(0 vs 1 | p0): class-0 scores .5 .2 .6 against class-1 scores .1 .3 .2 -> 3 + 1.5 + 3 = 7.5
    # of 9 pairs; AUC(1 vs 0 | p1): class-1 scores .1 .3 .2 against .2 .5 .2 -> 0 + 2 + 1 = 3 of 9.
    assert value == pytest.approx((7.5 / 9 + 3 / 9) / 2)
    rel = reliability_diagram(targets, probs, n_bins=2)
    assert rel["count"].tolist() == [3, 3]  # max probs .5 .5 .4 | .8 .6 .6
