"""Metrics from scores: ROC / precision-recall curves and their areas, top-k accuracy, log loss,
calibration (ECE, reliability diagram) and a binary threshold finder.

All of it is vectorised NumPy: each score column is sorted once (``argsort``), true/false
positives are cumulative sums, and tied scores are collapsed into one threshold exactly as
scikit-learn's ``roc_curve`` / ``precision_recall_curve`` do, so 1,000,000 x 10 scores take
seconds. scikit-learn is the reference in the tests, not the implementation.

Conventions
-----------
* A sample is predicted positive when ``score >= threshold`` (scikit-learn's curve convention).
* ROC: FPR = FP / (FP + TN) on the x axis, TPR = TP / (TP + FN) on the y axis, one point per
  distinct score plus (0, 0) at threshold +inf. ROC-AUC is the trapezoidal area under it, which
  equals P(score of a random positive > score of a random negative) + 0.5 P(tie).
* Average precision (step-wise, scikit-learn's definition, no interpolation):
  AP = sum_n (R_n - R_{n-1}) P_n over decreasing thresholds.
* Multiclass: one-vs-rest per class (class k positive, every other class negative, scores
  ``probs[:, k]``); one-vs-one macro AUC = mean over class pairs (a, b) of
  (AUC(a vs b | probs[:, a]) + AUC(b vs a | probs[:, b])) / 2, using only samples of a or b
  (Hand & Till 2001; scikit-learn's ``roc_auc_score(multi_class="ovo")``).

Undefined policy: as in :mod:`cnnlab.metrics.classification` -- ROC-AUC of a class with no
positive or no negative sample, AP of a class with no positive sample, a one-vs-one pair with an
absent class: NaN (None in reports) plus an :class:`UndefinedMetricWarning` naming the class.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

from cnnlab.metrics.checks import (
    UndefinedMetricWarning,
    check_labels,
    emit,
    names_for,
    quote,
    to_numpy,
)

logger = logging.getLogger(__name__)

__all__ = [
    "UndefinedMetricWarning",
    "DEFAULT_ECE_BINS",
    "softmax",
    "check_probs",
    "as_probabilities",
    "binary_areas",
    "roc_curve",
    "roc_auc",
    "roc_auc_ovr",
    "roc_auc_ovo",
    "precision_recall_curve",
    "average_precision",
    "average_precision_ovr",
    "top_k_accuracy",
    "log_loss",
    "expected_calibration_error",
    "reliability_diagram",
    "find_threshold",
]

DEFAULT_ECE_BINS = 15  # equal-width bins over [0, 1], as Guo et al. (2017) "On Calibration ..."
PROB_SUM_TOL = 1e-3  # |row sum - 1| allowed for probabilities (float32 softmax is ~1e-6 off)


# --------------------------------------------------------------------------------------------
# Probabilities
# --------------------------------------------------------------------------------------------


def softmax(logits: Any, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax: exp(z - max z) / sum exp(z - max z) along ``axis``.

    Keeps float32 input float32 (computes in float64).
    """
    z = to_numpy(logits)
    dtype = z.dtype if np.issubdtype(z.dtype, np.floating) else np.float64
    z = z.astype(np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z.astype(dtype, copy=False)


def _prob_problem(p: np.ndarray) -> str | None:
    """Why ``p`` (N, K) is not a matrix of probabilities, or None when it is."""
    if not np.all(np.isfinite(p)):
        row = int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0])
        return f"row {row} holds a NaN or infinite value"
    if p.size and (p.min() < 0 or p.max() > 1):
        row = int(np.flatnonzero(((p < 0) | (p > 1)).any(axis=1))[0])
        return f"row {row} has a value outside [0, 1]"
    sums = p.sum(axis=1, dtype=np.float64)
    off = np.abs(sums - 1) > PROB_SUM_TOL
    if off.any():
        row = int(np.flatnonzero(off)[0])
        return f"row {row} sums to {sums[row]:.6g}, not 1"
    return None


def check_probs(probs: Any, num_classes: int | None = None) -> np.ndarray:
    """Validate class probabilities and return them as a float ``(N, K)`` array.

    ``(N,)`` input is read as the positive-class probability of a binary task and becomes
    ``[1 - p, p]``. Raises ``ValueError`` (saying to apply :func:`softmax`) for NaN/inf, values
    outside [0, 1] or rows whose sum differs from 1 by more than ``PROB_SUM_TOL``.
    """
    p = to_numpy(probs)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    if p.ndim == 1:
        if num_classes not in (None, 2):
            raise ValueError(f"1-D probs means a binary task, but num_classes={num_classes}")
        p = np.stack([1 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must have shape (N, K), got {p.shape}")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ValueError(f"probs has {p.shape[1]} columns but num_classes={num_classes}")
    problem = _prob_problem(p)
    if problem:
        raise ValueError(
            f"probs must be class probabilities (each row in [0, 1], summing to 1): {problem}; "
            "for logits apply cnnlab.metrics.scores.softmax first"
        )
    return p


def as_probabilities(scores: Any) -> tuple[np.ndarray, bool]:
    """``(probs, converted)``: the scores themselves when they already are probabilities,
    else their :func:`softmax` (``converted=True``). NaN/inf raise ``ValueError``."""
    s = to_numpy(scores)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (N, K), got {s.shape}")
    if not np.all(np.isfinite(s)):
        row = int(np.flatnonzero(~np.isfinite(s).all(axis=1))[0])
        raise ValueError(f"scores row {row} holds a NaN or infinite value")
    if _prob_problem(s) is None:
        return s, False
    return softmax(s), True


# --------------------------------------------------------------------------------------------
# Curves from sorted scores
# --------------------------------------------------------------------------------------------


def _binary_inputs(targets: Any, scores: Any, pos_label: int) -> tuple[np.ndarray, np.ndarray]:
    y = to_numpy(targets)
    s = to_numpy(scores)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise ValueError(
            f"targets and scores must be 1-D of the same length, got {y.shape} and {s.shape}"
        )
    if len(y) == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(s)):
        first = int(np.argmin(np.isfinite(s)))
        raise ValueError(f"scores hold NaN or inf (first at index {first})")
    return (y == pos_label), s


def _sort_desc(s: np.ndarray) -> np.ndarray:
    """Indices sorting ``s`` by decreasing score (the order within ties is irrelevant: tied
    scores become one threshold)."""
    return np.argsort(s, kind="stable")[::-1]


def _counts_at_thresholds(
    y_sorted: np.ndarray, s_sorted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fps, tps, thresholds)`` at each distinct score, from labels/scores sorted by
    decreasing score. ``tps[i]`` = positives with score >= thresholds[i] (int64)."""
    distinct = np.flatnonzero(np.diff(s_sorted))  # last index of each run of tied scores
    idx = np.r_[distinct, len(s_sorted) - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[idx]
    fps = (idx + 1) - tps
    return fps, tps, s_sorted[idx]


def _auc_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    """Trapezoidal area under (FPR, TPR) through (0, 0); NaN when P or N is 0."""
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        return math.nan
    f = np.r_[0, fps]
    t = np.r_[0, tps]
    # Integer arithmetic until the last division: sum (dF)(T_i + T_{i-1}) / (2 P N).
    twice_area = int(np.dot(np.diff(f), t[1:] + t[:-1]))
    return twice_area / (2.0 * n_pos * n_neg)


def _ap_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    """Step-wise AP = sum (R_n - R_{n-1}) P_n; NaN when there is no positive."""
    n_pos = int(tps[-1])
    if n_pos == 0:
        return math.nan
    prec = tps / (tps + fps)  # tps + fps >= 1 at every threshold
    d_tp = np.diff(np.r_[0, tps])
    return max(0.0, float(np.dot(d_tp, prec) / n_pos))


def binary_areas(positive: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(ROC-AUC, average precision) of one binary column with one sort; ``positive`` (N,) bool,
    ``scores`` (N,) finite. NaN where undefined (no positive; for AUC also no negative), no
    warning: the caller names what is undefined (multi-label metrics, per label or sample)."""
    order = np.argsort(scores, kind="stable")[::-1]
    fps, tps, _ = _counts_at_thresholds(positive[order], scores[order])
    return _auc_from_counts(fps, tps), _ap_from_counts(fps, tps)


def roc_curve(
    targets: Any, scores: Any, *, pos_label: int = 1, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` of a binary problem, as scikit-learn's ``roc_curve``.

    FPR = FP / (FP + TN), TPR = TP / (TP + FN) for "positive when score >= threshold" at each
    distinct score, decreasing; the first point is (0, 0) at threshold +inf. With
    ``drop_intermediate`` collinear points are dropped (the area is unchanged). Undefined: no
    negative sample -> ``fpr`` all NaN, no positive -> ``tpr`` all NaN (+ warning).
    """
    y, s = _binary_inputs(targets, scores, pos_label)
    order = _sort_desc(s)
    fps, tps, thr = _counts_at_thresholds(y[order], s[order])
    if drop_intermediate and len(fps) > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps = np.r_[0, fps].astype(np.float64)
    tps = np.r_[0, tps].astype(np.float64)
    thr = np.r_[np.inf, thr.astype(np.float64)]
    if fps[-1] == 0:
        emit(
            "fpr is undefined: no negative samples (FP + TN = 0); the ROC curve's fpr is NaN", None
        )
        fpr_ = np.full(fps.shape, np.nan)
    else:
        fpr_ = fps / fps[-1]
    if tps[-1] == 0:
        emit(
            "tpr is undefined: no positive samples (TP + FN = 0); the ROC curve's tpr is NaN", None
        )
        tpr_ = np.full(tps.shape, np.nan)
    else:
        tpr_ = tps / tps[-1]
    return fpr_, tpr_, thr


def roc_auc(targets: Any, scores: Any, *, pos_label: int = 1) -> float:
    """Binary ROC-AUC: area under TPR(FPR), = P(s+ > s-) + 0.5 P(s+ = s-).

    NaN + ``UndefinedMetricWarning`` when only one class is present in ``targets``.
    """
    y, s = _binary_inputs(targets, scores, pos_label)
    order = _sort_desc(s)
    fps, tps, _ = _counts_at_thresholds(y[order], s[order])
    value = _auc_from_counts(fps, tps)
    if math.isnan(value):
        emit("roc_auc is undefined: only one class is present in targets", None)
    return value


def precision_recall_curve(
    targets: Any, scores: Any, *, pos_label: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` as scikit-learn's ``precision_recall_curve``.

    Precision = TP / (TP + FP), Recall = TP / (TP + FN) at each distinct score, by increasing
    threshold, with a final point (precision 1, recall 0) that has no threshold. Undefined: no
    positive sample -> recall all NaN (+ warning) where scikit-learn sets it to 1.
    """
    y, s = _binary_inputs(targets, scores, pos_label)
    order = _sort_desc(s)
    fps, tps, thr = _counts_at_thresholds(y[order], s[order])
    prec = tps / (tps + fps)
    if tps[-1] == 0:
        emit(
            "recall is undefined: no positive samples (TP + FN = 0); the PR curve's recall is NaN",
            None,
        )
        rec = np.full(tps.shape, np.nan)
    else:
        rec = tps / tps[-1]
    return np.r_[prec[::-1], 1.0], np.r_[rec[::-1], 0.0], thr[::-1].astype(np.float64)


def average_precision(targets: Any, scores: Any, *, pos_label: int = 1) -> float:
    """Average precision AP = sum_n (R_n - R_{n-1}) P_n (step-wise, no interpolation).

    NaN + ``UndefinedMetricWarning`` when there is no positive sample.
    """
    y, s = _binary_inputs(targets, scores, pos_label)
    order = _sort_desc(s)
    fps, tps, _ = _counts_at_thresholds(y[order], s[order])
    value = _ap_from_counts(fps, tps)
    if math.isnan(value):
        emit("average_precision is undefined: no positive samples in targets", None)
    return value


# --------------------------------------------------------------------------------------------
# Multiclass: one-vs-rest and one-vs-one
# --------------------------------------------------------------------------------------------


def rank_pass(t: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Everything rank-based for a (N, K) score matrix, with ONE sort per column.

    For column a (samples sorted by decreasing ``probs[:, a]``, tied scores forming groups):

    * one-vs-rest counts TP/FP at each distinct threshold -> ``roc_auc[a]``, ``ap[a]``;
    * for every class b != a at once, the Mann-Whitney form of the pairwise AUC on the samples of
      a and b: ``pair[a, b]`` = (1 / n_a n_b) sum over samples j of class b of
      (#a-samples scoring above j + 0.5 #a-samples tied with j) = P(s_a > s_b) + 0.5 P(tie),
      which equals the trapezoidal area of the (a vs b | probs[:, a]) ROC curve.

    Returns ``roc_auc (K,)``, ``average_precision (K,)``, ``pair (K, K)`` (NaN where undefined).
    """
    n, k_classes = probs.shape
    counts = np.bincount(t, minlength=k_classes)
    auc = np.full(k_classes, np.nan)
    ap = np.full(k_classes, np.nan)
    pair = np.full((k_classes, k_classes), np.nan)
    labels = t.astype(np.int32 if k_classes < 2**31 else np.int64)
    for a in range(k_classes):
        column = np.ascontiguousarray(probs[:, a])
        order = np.argsort(column)[::-1]  # any order within ties: tied scores form one group
        s_sorted = column[order]
        t_sorted = labels[order]
        is_a = t_sorted == a
        fps, tps, _ = _counts_at_thresholds(is_a, s_sorted)
        auc[a] = _auc_from_counts(fps, tps)
        ap[a] = _ap_from_counts(fps, tps)
        if counts[a] == 0:
            continue
        group = np.r_[0, np.cumsum(np.diff(s_sorted) != 0)]  # tie-group id, by decreasing score
        a_in_group = np.bincount(group, weights=is_a)
        a_above_group = np.cumsum(a_in_group) - a_in_group
        wins = (a_above_group + 0.5 * a_in_group)[group]  # per sample: a's ranked above it
        wins_by_class = np.bincount(t_sorted, weights=wins, minlength=k_classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            pair[a] = np.where(counts > 0, wins_by_class / (counts[a] * counts), np.nan)
        pair[a, a] = np.nan
    return {"roc_auc": auc, "average_precision": ap, "pair": pair}


def per_class_scores(
    t: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    sink: list[str] | None,
    ranked: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    k_classes = probs.shape[1]
    ranked = rank_pass(t, probs) if ranked is None else ranked
    support = np.bincount(t, minlength=k_classes)
    absent = [names[k] for k in np.flatnonzero(support == 0)]
    only = [names[k] for k in np.flatnonzero(support == len(t))]
    if absent:
        emit(
            f"roc_auc and average_precision are undefined for class {quote(absent)}: no true "
            "samples (one-vs-rest needs positives); reported as None",
            sink,
            stacklevel=4,
        )
    if only:
        emit(
            f"roc_auc is undefined for class {quote(only)}: every sample is of this class "
            "(one-vs-rest needs negatives); reported as None",
            sink,
            stacklevel=4,
        )
    return {"roc_auc": ranked["roc_auc"], "average_precision": ranked["average_precision"]}


def _prepare(targets: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    p = check_probs(probs)
    t = check_labels(targets, p.shape[1], name="targets")
    if len(t) != len(p):
        raise ValueError(f"targets has {len(t)} samples but probs has {len(p)} rows")
    if len(t) == 0:
        raise ValueError("no samples")
    return t, p


def roc_auc_ovr(
    targets: Any, probs: Any, *, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """One-vs-rest ROC-AUC per class, ``(K,)``: AUC of (targets == k) against ``probs[:, k]``.

    NaN + warning for a class that is absent from the targets or is the only class present.
    Macro = nanmean; weighted = support-weighted over the defined classes
    (:func:`cnnlab.metrics.classification.average`).
    """
    t, p = _prepare(targets, probs)
    return per_class_scores(t, p, names_for(class_names, p.shape[1]), None)["roc_auc"]


def average_precision_ovr(
    targets: Any, probs: Any, *, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """One-vs-rest average precision per class, ``(K,)`` (NaN + warning for an absent class)."""
    t, p = _prepare(targets, probs)
    return per_class_scores(t, p, names_for(class_names, p.shape[1]), None)["average_precision"]


def _ovo(
    t: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    sink: list[str] | None,
    ranked: dict[str, np.ndarray] | None = None,
) -> float:
    k_classes = probs.shape[1]
    pair = (rank_pass(t, probs) if ranked is None else ranked)["pair"]
    present = np.bincount(t, minlength=k_classes) > 0
    pair_scores = [
        (pair[a, b] + pair[b, a]) / 2
        for a, b in combinations(range(k_classes), 2)
        if present[a] and present[b]
    ]
    absent = [names[k] for k in np.flatnonzero(~present)]
    if not pair_scores:
        emit(
            "roc_auc_ovo is undefined: fewer than two classes are present in targets",
            sink,
            stacklevel=4,
        )
        return math.nan
    if absent:
        emit(
            f"roc_auc_ovo averages the {len(pair_scores)} class pairs whose classes are both "
            f"present; left out pairs with (no true samples): {quote(absent)}",
            sink,
            stacklevel=4,
        )
    return float(np.mean(pair_scores))


def roc_auc_ovo(targets: Any, probs: Any, *, class_names: Sequence[str] | None = None) -> float:
    """One-vs-one macro ROC-AUC (Hand & Till): mean over pairs a < b of
    (AUC(a vs b | probs[:, a]) + AUC(b vs a | probs[:, b])) / 2 on the samples of a and b.

    Pairs with a class absent from the targets are left out (+ warning); NaN + warning when fewer
    than two classes are present. Equals scikit-learn's ``roc_auc_score(multi_class="ovo")``.
    """
    t, p = _prepare(targets, probs)
    return _ovo(t, p, names_for(class_names, p.shape[1]), None)


# --------------------------------------------------------------------------------------------
# Top-k, log loss, calibration
# --------------------------------------------------------------------------------------------


def _true_class_rank(t: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """0-based rank of the true class in each row (ties: the lower class index ranks first,
    as ``argmax``): #classes scoring higher + #lower-index classes scoring the same."""
    s_true = probs[np.arange(len(t)), t][:, None]
    higher = (probs > s_true).sum(axis=1)
    tied_before = ((probs == s_true) & (np.arange(probs.shape[1]) < t[:, None])).sum(axis=1)
    return higher + tied_before


def top_k_accuracy(targets: Any, probs: Any, k: int) -> float:
    """Top-k accuracy = (1/N) #{i : true class among the k highest scores of row i}.

    Ties are broken toward the lower class index (so top-1 = accuracy of ``argmax``).
    """
    t, p = _prepare(targets, probs)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(np.mean(_true_class_rank(t, p) < k))


def _nll_sum(t: np.ndarray, probs: np.ndarray) -> float:
    eps = np.finfo(probs.dtype).eps  # scikit-learn clips to [eps, 1 - eps] of the input dtype
    p_true = np.clip(probs[np.arange(len(t)), t], eps, 1 - eps).astype(np.float64)
    return float(-np.log(p_true).sum())


def log_loss(targets: Any, probs: Any) -> float:
    """Log loss (cross-entropy) = -(1/N) sum_i log p_i[y_i], with p clipped to [eps, 1 - eps]
    (eps of the probs dtype, as scikit-learn)."""
    t, p = _prepare(targets, probs)
    return _nll_sum(t, p) / len(t)


def _bin_edges(n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.linspace(0.0, 1.0, n_bins + 1)


def _calibration_sums(
    t: np.ndarray, probs: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (sum of confidences, number correct, count); bin b holds confidences in
    (edges[b], edges[b+1]] (confidence 0 goes to bin 0)."""
    edges = _bin_edges(n_bins)
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(t)), pred].astype(np.float64)
    b = np.searchsorted(edges[1:-1], conf, side="left")
    conf_sum = np.bincount(b, weights=conf, minlength=n_bins)
    correct = np.bincount(b, weights=(pred == t), minlength=n_bins)
    count = np.bincount(b, minlength=n_bins)
    return conf_sum, correct, count


def _ece_from_sums(conf_sum: np.ndarray, correct: np.ndarray, count: np.ndarray) -> float:
    return float(np.abs(correct - conf_sum).sum() / count.sum())


def expected_calibration_error(
    targets: Any, probs: Any, *, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over ``n_bins`` equal-width bins of the confidence
    max_k p_ik (default 15 bins; bin b = (b/n, (b+1)/n]); acc_b is the accuracy of ``argmax`` in
    the bin, conf_b the mean confidence. Empty bins contribute 0."""
    t, p = _prepare(targets, probs)
    return _ece_from_sums(*_calibration_sums(t, p, n_bins))


def _reliability_from_sums(
    conf_sum: np.ndarray, correct: np.ndarray, count: np.ndarray
) -> dict[str, Any]:
    n_bins = len(count)
    safe = np.maximum(count, 1)
    return {
        "n_bins": n_bins,
        "bin_edges": _bin_edges(n_bins),
        "confidence": np.where(count > 0, conf_sum / safe, np.nan),
        "accuracy": np.where(count > 0, correct / safe, np.nan),
        "count": count.astype(np.int64),
    }


def reliability_diagram(
    targets: Any, probs: Any, *, n_bins: int = DEFAULT_ECE_BINS
) -> dict[str, Any]:
    """Data for a reliability diagram: ``bin_edges (n_bins + 1,)``, and per bin ``confidence``
    (mean max-probability), ``accuracy`` (fraction of correct argmax) -- NaN for an empty bin, as
    there is nothing to average -- and ``count``. Drawing lives in ``cnnlab.report``."""
    t, p = _prepare(targets, probs)
    return _reliability_from_sums(*_calibration_sums(t, p, n_bins))


# --------------------------------------------------------------------------------------------
# Binary decision threshold
# --------------------------------------------------------------------------------------------


THRESHOLD_TARGETS = ("recall", "precision", "fpr")  # find_threshold methods that take a target


def find_threshold(
    targets: Any,
    scores: Any,
    method: str = "youden",
    *,
    pos_label: int = 1,
    target: float | None = None,
) -> tuple[float, float]:
    """Best decision threshold for "positive when score >= threshold", and its value.

    * ``"youden"``: maximise Youden's J = TPR - FPR = sensitivity + specificity - 1.
    * ``"f1"``: maximise F1 = 2TP / (2TP + FP + FN).
    * ``"recall"``: the highest threshold whose recall (TPR) is >= ``target`` (the fewest false
      positives that still find that share of the positives).
    * ``"precision"``: the lowest threshold whose precision is >= ``target`` (the most positives
      found at that precision); precision is not monotonic in the threshold, so this is the
      lowest of all thresholds that reach it.
    * ``"fpr"``: the lowest threshold whose false-positive rate is <= ``target`` (the most
      positives found at that false-alarm rate).

    Candidates are the distinct scores; the value returned is the method's quantity at the
    threshold (J, F1, or the recall / precision / FPR reached). For J and F1, among maxima equal
    within 1e-12 the highest threshold wins.
    Raises ``ValueError`` when targets hold only one class (J or F1 would be undefined), when
    ``target`` is missing or outside [0, 1] for the target methods, or when no threshold reaches
    it (then the message says the best that can be reached).
    """
    methods = ("youden", "f1", *THRESHOLD_TARGETS)
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, got {method!r}")
    if method in THRESHOLD_TARGETS and (target is None or not 0.0 <= target <= 1.0):
        raise ValueError(f"method {method!r} needs a target in [0, 1], got {target!r}")
    y, s = _binary_inputs(targets, scores, pos_label)
    order = _sort_desc(s)
    fps, tps, thr = _counts_at_thresholds(y[order], s[order])
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"find_threshold needs both classes in targets; got {n_pos} positive and {n_neg} "
            f"negative samples (pos_label={pos_label})"
        )
    if method in THRESHOLD_TARGETS:
        return _threshold_for_target(method, float(target), fps, tps, thr, n_pos, n_neg)
    if method == "youden":
        values = tps / n_pos - fps / n_neg
    else:
        values = 2 * tps / (2 * tps + fps + (n_pos - tps))
    # Thresholds decrease with the index: the first (near-)maximum is the highest threshold.
    best = int(np.flatnonzero(values >= values.max() - 1e-12)[0])
    return float(thr[best]), float(values[best])


def _threshold_for_target(
    method: str,
    target: float,
    fps: np.ndarray,
    tps: np.ndarray,
    thr: np.ndarray,
    n_pos: int,
    n_neg: int,
) -> tuple[float, float]:
    """find_threshold's target methods on the counts at each distinct score (thresholds
    decreasing with the index, so TP and FP grow with it)."""
    eps = 1e-12  # a target met up to rounding counts as met (recall 0.95 of 20 positives = 19/20)
    if method == "recall":
        values = tps / n_pos
        ok = np.flatnonzero(values >= target - eps)  # never empty: the last threshold has recall 1
        best = int(ok[0])  # the highest threshold that reaches it
    elif method == "precision":
        values = tps / (tps + fps)  # TP + FP >= 1 at every candidate threshold
        ok = np.flatnonzero(values >= target - eps)
        if not len(ok):
            raise ValueError(
                f"no threshold reaches precision {target:g}; the highest precision is "
                f"{values.max():.4g} (at threshold {thr[int(values.argmax())]:.6g})"
            )
        best = int(ok[-1])  # the lowest threshold that reaches it: the largest recall
    else:
        values = fps / n_neg
        ok = np.flatnonzero(values <= target + eps)
        if not len(ok):
            raise ValueError(
                f"no threshold reaches a false-positive rate of {target:g} while calling anything "
                f"positive; the lowest is {values[0]:.4g} (at threshold {thr[0]:.6g}, the highest "
                "score: tied scores cannot be split)"
            )
        best = int(ok[-1])  # FPR grows with the index: the lowest threshold within the target
    return float(thr[best]), float(values[best])


# --------------------------------------------------------------------------------------------
# The score half of classification_metrics
# --------------------------------------------------------------------------------------------


def score_report(
    t: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    sink: list[str],
    *,
    top_k: Sequence[int],
    n_bins: int,
    ranked: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    k_classes = probs.shape[1]
    rank = _true_class_rank(t, probs)
    ks = sorted({int(k) for k in top_k if 1 <= int(k) < k_classes})
    sums = _calibration_sums(t, probs, n_bins)
    return {
        "top_k_accuracy": {k: float(np.mean(rank < k)) for k in ks},
        "log_loss": _nll_sum(t, probs) / len(t),
        "ece": _ece_from_sums(*sums),
        "ece_bins": n_bins,
        "reliability": _reliability_from_sums(*sums),
        "roc_auc_ovo": _ovo(t, probs, names, sink, ranked),
    }
