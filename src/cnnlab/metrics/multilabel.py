"""Multi-label classification metrics: pure NumPy on ``(N, L)`` 0/1 targets and ``(N, L)`` scores
or decisions (N samples, L labels; a sample may carry any number of labels, none included).

Each label is a binary problem of its own (label l present or not), so the per-label counts are::

    TP_l = #{i: y_il = 1, p_il = 1}   FP_l = #{i: y_il = 0, p_il = 1}
    FN_l = #{i: y_il = 1, p_il = 0}   TN_l = N - TP_l - FP_l - FN_l

and precision, recall (TPR), TNR, FPR, FNR and F1 per label follow the lecture's formulas through
the same function single-label classification uses
(:func:`cnnlab.metrics.classification.per_class_from_counts`); ROC-AUC and average precision per
label through the same sorted-score passes (:mod:`cnnlab.metrics.scores`). A decision is
``score >= threshold`` (scikit-learn's convention), with one threshold per label.

Averages (scikit-learn's ``average=``):

* ``micro``: pool TP/FP/TN/FN over labels, then the formulas (for AUC/AP: all N x L cells as one
  binary problem);
* ``macro``: unweighted mean over the labels where the value is defined;
* ``weighted``: mean weighted by each label's support (number of samples that carry it);
* ``samples``: the metric per sample over its labels (precision_i = |pred_i & true_i| / |pred_i|,
  recall_i = |pred_i & true_i| / |true_i|, F1_i = 2 |pred_i & true_i| / (|pred_i| + |true_i|)),
  then the mean over samples where it is defined.

Overall: Hamming loss = mean over all N x L cells of [p_il != y_il]; subset accuracy (exact match)
= mean over samples of [p_i = y_i on every label]; label-ranking average precision (LRAP, scikit-
learn's ``label_ranking_average_precision_score``) = mean over samples of
(1 / |Y_i|) sum_{j in Y_i} |{k in Y_i: s_ik >= s_ij}| / |{k: s_ik >= s_ij}|; mAP = macro AP.

Undefined values (``zero_division``)
------------------------------------
A zero denominator makes a value undefined: precision of a label never predicted, recall of a
label no sample carries, TNR/FPR of a label every sample carries, F1 of a label absent from both
targets and predictions (F1 uses the count form 2TP / (2TP + FP + FN), so it is 0, not undefined,
when only precision is); the same per sample for the ``samples`` average. With the default
``zero_division="nan"`` (cnnlab's policy, scikit-learn's ``zero_division=np.nan``) such a value is
NaN in arrays / None in reports, named in an :class:`UndefinedMetricWarning`, and left out of the
averages. ``zero_division=0`` or ``1`` replaces it by that number before averaging, as
scikit-learn does with the same argument; the values then agree with scikit-learn's to 1e-9
(tests/test_multilabel_metrics.py).

Score metrics: ROC-AUC of a label with no positive or no negative sample and AP of a label with no
positive are undefined (NaN + warning) and left out of macro / samples averages; scikit-learn
raises for such an AUC and scores such an AP 0, so cnnlab's macro mAP equals scikit-learn's on the
labels that have a positive. Weighted AUC/AP weight by support, so a label without positives has
weight 0 either way. LRAP follows scikit-learn exactly: a sample with no label or with every label
scores 1. The weighted average of a set where no label has support falls back to the unweighted
mean (scikit-learn's ``_nanaverage``), with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnlab.metrics import scores
from cnnlab.metrics.checks import emit, names_for, quote, to_numpy
from cnnlab.metrics.classification import (
    average_defined,
    finish_report,
    micro_from_counts,
    per_class_from_counts,
)

__all__ = [
    "AVERAGES",
    "check_multilabel",
    "check_scores",
    "decide",
    "label_counts",
    "per_label_metrics",
    "averaged",
    "samples_metrics",
    "hamming_loss",
    "subset_accuracy",
    "per_label_scores",
    "roc_auc",
    "average_precision",
    "mean_average_precision",
    "label_ranking_average_precision",
    "tune_thresholds",
    "multilabel_metrics",
]

AVERAGES = ("micro", "macro", "weighted", "samples")
RATIO_METRICS = ("precision", "recall", "f1", "tpr", "tnr", "fpr", "fnr")
SAMPLE_METRICS = ("precision", "recall", "f1")  # what scikit-learn's average="samples" defines
ZeroDivision = str | float  # "nan" | 0 | 1


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def check_multilabel(y: Any, num_labels: int | None = None, *, name: str = "targets") -> np.ndarray:
    """``(N, L)`` int64 0/1 indicator matrix; ``ValueError`` naming ``name`` otherwise."""
    arr = to_numpy(y)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (N, L) 0/1 matrix, got shape {arr.shape}")
    if arr.dtype != bool and not np.all(np.isin(arr, (0, 1))):
        raise ValueError(f"{name} must hold only 0 and 1 (label absent / present)")
    if num_labels is not None and arr.shape[1] != num_labels:
        raise ValueError(f"{name} has {arr.shape[1]} columns but there are {num_labels} labels")
    return arr.astype(np.int64)


def check_scores(s: Any, shape: tuple[int, int], *, name: str = "scores") -> np.ndarray:
    """``(N, L)`` finite float64 scores (probabilities or logits: only their order matters)."""
    arr = to_numpy(s)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape} but the targets have shape {shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{name} row {row} holds a NaN or infinite value")
    return arr


def _pair(targets: Any, preds: Any) -> tuple[np.ndarray, np.ndarray]:
    t = check_multilabel(targets)
    p = check_multilabel(preds, t.shape[1], name="preds")
    if len(p) != len(t):
        raise ValueError(f"targets has {len(t)} samples but preds has {len(p)}")
    if len(t) == 0:
        raise ValueError("no samples: targets is empty")
    return t, p


def _zero_division(value: ZeroDivision) -> float:
    if isinstance(value, str) and value == "nan":
        return math.nan
    if not isinstance(value, str) and value in (0, 1):
        return float(value)
    raise ValueError(f"zero_division must be 'nan', 0 or 1, got {value!r}")


def _fill(values: np.ndarray, zero_division: ZeroDivision) -> np.ndarray:
    fill = _zero_division(zero_division)
    return values if math.isnan(fill) else np.where(np.isnan(values), fill, values)


def decide(probs: Any, thresholds: float | Sequence[float] | np.ndarray = 0.5) -> np.ndarray:
    """``(N, L)`` int64 decisions: 1 where ``probs[:, l] >= thresholds[l]`` (one number: all)."""
    p = to_numpy(probs)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (p.shape[1],))
    return (p >= thr).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Decisions: counts, ratios, averages
# --------------------------------------------------------------------------------------------


def label_counts(targets: Any, preds: Any) -> dict[str, np.ndarray]:
    """Per-label ``tp fp tn fn support``, each ``(L,)`` int64 (support = TP + FN)."""
    t, p = _pair(targets, preds)
    tp = (t & p).sum(axis=0)
    fp = ((1 - t) & p).sum(axis=0)
    fn = (t & (1 - p)).sum(axis=0)
    tn = len(t) - tp - fp - fn
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "support": tp + fn}


def per_label_metrics(
    targets: Any,
    preds: Any,
    *,
    label_names: Sequence[str] | None = None,
    zero_division: ZeroDivision = "nan",
    sink: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Per label ``tp fp tn fn support`` (int64) and ``precision recall tpr tnr fpr fnr f1``
    (float64), each ``(L,)``; undefined values per ``zero_division`` (module docstring)."""
    c = label_counts(targets, preds)
    names = names_for(label_names, len(c["tp"]))
    out = per_class_from_counts(c, names, sink)
    for m in RATIO_METRICS:
        out[m] = _fill(out[m], zero_division)
    return out


def _average(
    values: np.ndarray,
    support: np.ndarray | None,
    *,
    metric: str,
    kind: str,
    names: Sequence[str],
    sink: list[str] | None,
) -> float:
    """Mean over the defined (not NaN) entries, weighted by ``support`` when given."""
    if support is not None and not np.any((support > 0) & ~np.isnan(values)):
        if np.any(~np.isnan(values)):
            emit(
                f"{kind} {metric}: no label with a defined value has support; the unweighted "
                "mean is reported (as scikit-learn)",
                sink,
                stacklevel=4,
            )
        support = None
    return average_defined(values, support, metric=metric, kind=kind, names=names, sink=sink)


def samples_metrics(
    targets: Any,
    preds: Any,
    *,
    zero_division: ZeroDivision = "nan",
    sink: list[str] | None = None,
) -> dict[str, float]:
    """scikit-learn's ``average="samples"``: precision, recall, F1 of each sample over its
    labels, averaged over the samples where each is defined (module docstring)."""
    t, p = _pair(targets, preds)
    c = {
        "tp": (t & p).sum(axis=1),
        "fp": ((1 - t) & p).sum(axis=1),
        "fn": (t & (1 - p)).sum(axis=1),
    }
    c["tn"] = t.shape[1] - c["tp"] - c["fp"] - c["fn"]
    c["support"] = c["tp"] + c["fn"]
    rows = [f"sample {i}" for i in range(len(t))]
    quiet: list[str] = []  # one summary message below instead of one per sample
    per = per_class_from_counts(c, rows, quiet)
    out = {}
    for m in SAMPLE_METRICS:
        values = _fill(per[m], zero_division)
        undefined = int(np.isnan(values).sum())
        if undefined:
            emit(
                f"samples {m} is undefined for {undefined} of {len(t)} samples "
                f"({UNDEFINED_PER_SAMPLE[m]}); averaged over the others",
                sink,
                stacklevel=3,
            )
        out[m] = average_defined(values, None, metric=m, kind="samples", names=rows, sink=quiet)
    return out


UNDEFINED_PER_SAMPLE = {
    "precision": "no label predicted",
    "recall": "no true label",
    "f1": "no true and no predicted label",
}


def averaged(
    targets: Any,
    preds: Any,
    average: str = "macro",
    *,
    zero_division: ZeroDivision = "nan",
    label_names: Sequence[str] | None = None,
    sink: list[str] | None = None,
) -> dict[str, float]:
    """``{"precision", "recall", "f1"}`` averaged as scikit-learn's
    ``precision_recall_fscore_support(targets, preds, average=..., zero_division=...)``;
    ``micro`` / ``macro`` / ``weighted`` also give ``tpr tnr fpr fnr``."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
    if average == "samples":
        return samples_metrics(targets, preds, zero_division=zero_division, sink=sink)
    c = label_counts(targets, preds)
    names = names_for(label_names, len(c["tp"]))
    if average == "micro":
        pooled = micro_from_counts(c, sink)
        return {m: float(_fill(np.array([v]), zero_division)[0]) for m, v in pooled.items()}
    per = per_label_metrics(
        targets, preds, label_names=names, zero_division=zero_division, sink=sink
    )
    weights = c["support"].astype(np.float64) if average == "weighted" else None
    return {
        m: _average(per[m], weights, metric=m, kind=average, names=names, sink=sink)
        for m in RATIO_METRICS
    }


def hamming_loss(targets: Any, preds: Any) -> float:
    """Fraction of the N x L label cells that are wrong: mean of [p_il != y_il]."""
    t, p = _pair(targets, preds)
    return float(np.mean(t != p))


def subset_accuracy(targets: Any, preds: Any) -> float:
    """Exact-match ratio: fraction of samples whose whole label set is right."""
    t, p = _pair(targets, preds)
    return float(np.mean(np.all(t == p, axis=1)))


# --------------------------------------------------------------------------------------------
# Scores: ROC-AUC, AP, LRAP
# --------------------------------------------------------------------------------------------


def _binary_areas(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(ROC-AUC, AP) of one 0/1 column, NaN where undefined (scores' sorted-count pass)."""
    return scores.binary_areas(y.astype(bool), s)


def _score_pair(targets: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    t = check_multilabel(targets)
    if len(t) == 0:
        raise ValueError("no samples: targets is empty")
    return t, check_scores(probs, t.shape)


def per_label_scores(
    targets: Any,
    probs: Any,
    *,
    label_names: Sequence[str] | None = None,
    sink: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """``roc_auc`` and ``average_precision`` per label, each ``(L,)``, NaN + warning where
    undefined (a label without positives; for AUC also a label without negatives)."""
    t, s = _score_pair(targets, probs)
    names = names_for(label_names, t.shape[1])
    pairs = [_binary_areas(t[:, j], s[:, j]) for j in range(t.shape[1])]
    auc = np.array([a for a, _ in pairs], dtype=np.float64)
    ap = np.array([b for _, b in pairs], dtype=np.float64)
    support = t.sum(axis=0)
    absent = [names[j] for j in np.flatnonzero(support == 0)]
    every = [names[j] for j in np.flatnonzero(support == len(t))]
    if absent:
        emit(
            f"roc_auc and average_precision are undefined for label {quote(absent)}: no sample "
            "carries it; reported as None",
            sink,
            stacklevel=3,
        )
    if every:
        emit(
            f"roc_auc is undefined for label {quote(every)}: every sample carries it; reported "
            "as None",
            sink,
            stacklevel=3,
        )
    return {"roc_auc": auc, "average_precision": ap}


def _score_average(
    metric: str,
    t: np.ndarray,
    s: np.ndarray,
    average: str,
    names: Sequence[str],
    sink: list[str] | None,
) -> float:
    index = 0 if metric == "roc_auc" else 1
    if average == "micro":
        value = _binary_areas(t.ravel(), s.ravel())[index]
        if math.isnan(value):
            emit(f"micro {metric} is undefined: no positive (or no negative) cell", sink, 4)
        return value
    if average == "samples":
        values = np.array([_binary_areas(t[i], s[i])[index] for i in range(len(t))])
        undefined = int(np.isnan(values).sum())
        if undefined:
            emit(
                f"samples {metric} is undefined for {undefined} of {len(t)} samples (no true "
                f"label{'' if index else ', or every label'}); averaged over the others",
                sink,
                4,
            )
        if undefined == len(t):
            return math.nan
        return float(np.nanmean(values))
    per = per_label_scores(t, s, label_names=names, sink=sink)[metric]
    weights = t.sum(axis=0).astype(np.float64) if average == "weighted" else None
    return _average(per, weights, metric=metric, kind=average, names=names, sink=sink)


def roc_auc(
    targets: Any,
    probs: Any,
    average: str | None = "macro",
    *,
    label_names: Sequence[str] | None = None,
) -> float | np.ndarray:
    """ROC-AUC as scikit-learn's ``roc_auc_score(targets, probs, average=...)`` (multilabel);
    ``average=None``: per label ``(L,)``. Undefined labels/samples are left out (docstring)."""
    return _scored("roc_auc", targets, probs, average, label_names)


def average_precision(
    targets: Any,
    probs: Any,
    average: str | None = "macro",
    *,
    label_names: Sequence[str] | None = None,
) -> float | np.ndarray:
    """Average precision as scikit-learn's ``average_precision_score(..., average=...)``;
    ``average=None``: per label ``(L,)``. Labels without positives are left out (docstring)."""
    return _scored("average_precision", targets, probs, average, label_names)


def _scored(
    metric: str, targets: Any, probs: Any, average: str | None, label_names: Any
) -> float | np.ndarray:
    t, s = _score_pair(targets, probs)
    names = names_for(label_names, t.shape[1])
    if average is None:
        return per_label_scores(t, s, label_names=names)[metric]
    if average not in AVERAGES:
        raise ValueError(f"average must be None or one of {', '.join(AVERAGES)}, got {average!r}")
    return _score_average(metric, t, s, average, names, None)


def mean_average_precision(targets: Any, probs: Any) -> float:
    """mAP: the unweighted mean of the per-label AP over the labels that have a positive."""
    return float(average_precision(targets, probs, "macro"))


def label_ranking_average_precision(targets: Any, probs: Any, *, chunk: int = 4096) -> float:
    """LRAP (scikit-learn's ``label_ranking_average_precision_score``), see the module docstring.

    Per sample i and true label j: rank_ij = |{k: s_ik >= s_ij}| (ties count against j, as in
    scikit-learn) and hits_ij = |{k in Y_i: s_ik >= s_ij}|; the sample's score is the mean of
    hits/rank over j in Y_i, or 1 when Y_i is empty or holds every label. Computed by an
    (n, L, L) comparison in chunks of ``chunk`` samples (memory ~ chunk * L^2 bytes)."""
    t, s = _score_pair(targets, probs)
    n, n_labels = t.shape
    total = 0.0
    for start in range(0, n, chunk):
        tt, ss = t[start : start + chunk], s[start : start + chunk]
        at_least = ss[:, None, :] >= ss[:, :, None]  # [i, j, k] = s_ik >= s_ij
        rank = at_least.sum(axis=2)
        hits = (at_least & tt[:, None, :].astype(bool)).sum(axis=2)
        relevant = tt.sum(axis=1)
        ratio = np.where(tt == 1, hits / rank, 0.0).sum(axis=1)
        trivial = (relevant == 0) | (relevant == n_labels)
        total += float(np.where(trivial, 1.0, ratio / np.maximum(relevant, 1)).sum())
    return total / n


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------


def tune_thresholds(
    targets: Any,
    probs: Any,
    *,
    method: str = "f1",
    default: float = 0.5,
    label_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One decision threshold per label, chosen on (validation) scores.

    Each label is a binary problem handed to :func:`cnnlab.metrics.scores.find_threshold`
    (``method`` "f1": maximum F1, the highest threshold among ties; "youden": maximum TPR - FPR).
    A label with no positive or no negative sample cannot be tuned and keeps ``default``.

    Returns ``thresholds (L,)`` float64 and per label ``{"label", "threshold", "value",
    "tuned", "reason"}`` (``value``: the method's score at the threshold, None if untuned).
    """
    if method not in ("f1", "youden"):
        raise ValueError(f"method must be 'f1' or 'youden', got {method!r}")
    t, s = _score_pair(targets, probs)
    names = names_for(label_names, t.shape[1])
    thresholds = np.full(t.shape[1], float(default))
    info: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        positives = int(t[:, j].sum())
        if positives in (0, len(t)):
            side = "positive" if positives == 0 else "negative"
            info.append(
                {"label": name, "threshold": float(default), "value": None, "tuned": False,
                 "reason": f"no {side} sample in the tuning split; kept {default:g}"}
            )  # fmt: skip
            continue
        thr, value = scores.find_threshold(t[:, j], s[:, j], method)
        thresholds[j] = thr
        info.append(
            {"label": name, "threshold": thr, "value": value, "tuned": True, "reason": None}
        )
    return thresholds, info


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def multilabel_metrics(
    targets: Any,
    probs: Any | None = None,
    *,
    preds: Any | None = None,
    thresholds: float | Sequence[float] | np.ndarray = 0.5,
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every multi-label metric in one JSON-able dict (undefined values None, each named once in
    ``warnings`` and warned about with :class:`UndefinedMetricWarning`).

    ``probs`` (N, L) scores; ``preds`` (N, L) decisions (default ``probs >= thresholds``).
    Returns ``num_samples, num_labels, label_names, thresholds, per_label`` {name: {tp, fp, tn,
    fn, support, precision, recall, f1, tpr, tnr, fpr, fnr, roc_auc, average_precision,
    threshold}}, ``micro, macro, weighted`` (ratio names, plus roc_auc / average_precision when
    scores are given), ``samples`` (precision, recall, f1, roc_auc, average_precision),
    ``hamming_loss, subset_accuracy, label_ranking_average_precision, map, warnings``.
    """
    t = check_multilabel(targets)
    if len(t) == 0:
        raise ValueError("no samples: targets is empty")
    names = names_for(label_names, t.shape[1])
    s = None if probs is None else check_scores(probs, t.shape)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (t.shape[1],)).copy()
    if preds is None:
        if s is None:
            raise ValueError("give probs or preds (or both)")
        p = decide(s, thr)
    else:
        p = check_multilabel(preds, t.shape[1], name="preds")
    sink: list[str] = []
    per = per_label_metrics(t, p, label_names=names, sink=sink)
    report: dict[str, Any] = {
        "num_samples": len(t),
        "num_labels": len(names),
        "label_names": list(names),
        "thresholds": thr if preds is None else None,
        "per_label": {},
        "hamming_loss": hamming_loss(t, p),
        "subset_accuracy": subset_accuracy(t, p),
        "label_ranking_average_precision": None,
        "map": None,
    }
    for average in AVERAGES:  # every message goes to the sink, emitted once at the end
        report[average] = averaged(t, p, average, label_names=names, sink=sink)
    area = {}
    if s is not None:
        area = per_label_scores(t, s, label_names=names, sink=sink)
        for average in AVERAGES:
            for metric in ("roc_auc", "average_precision"):
                report[average][metric] = _score_average(metric, t, s, average, names, sink)
        report["map"] = report["macro"]["average_precision"]
        report["label_ranking_average_precision"] = label_ranking_average_precision(t, s)
    for j, name in enumerate(names):
        entry = {m: per[m][j] for m in ("tp", "fp", "tn", "fn", "support", *RATIO_METRICS)}
        entry["roc_auc"] = area["roc_auc"][j] if area else None
        entry["average_precision"] = area["average_precision"][j] if area else None
        entry["threshold"] = thr[j] if preds is None else None
        report["per_label"][name] = entry
    return finish_report(report, sink)
