"""Classification metrics from the confusion matrix, and the one report entry point.

Everything here is a pure function on NumPy arrays (torch tensors are accepted and converted).
The confusion matrix ``cm`` is ``(K, K)`` int64, **rows = true class, columns = predicted class**.
For class ``k`` (one-vs-rest, as the lecture counts them)::

    TP_k = cm[k, k]                  FP_k = cm[:, k].sum() - TP_k
    FN_k = cm[k, :].sum() - TP_k     TN_k = N - TP_k - FP_k - FN_k

and the lecture's formulas (per class):

    Accuracy  = (TP + TN) / (TP + FP + TN + FN)     (overall: trace(cm) / N)
    Precision = TP / (TP + FP)
    Recall    = TPR = sensitivity = TP / (TP + FN)
    TNR       = specificity = TN / (TN + FP)
    FPR       = FP / (FP + TN) = 1 - TNR
    FNR       = FN / (FN + TP) = 1 - TPR
    F1        = 2PR / (P + R)  = 2TP / (2TP + FP + FN)

Undefined policy (the same in every function of ``cnnlab.metrics``)
-----------------------------------------------------------------
A value whose denominator is zero is *undefined*, never a silent 0 and never a silent NaN:

* array-returning functions put ``NaN`` in that slot **and** emit ``warnings.warn(...,
  UndefinedMetricWarning)`` naming the class and the reason (e.g. "class 'cat' was never
  predicted (TP + FP = 0)");
* :func:`classification_metrics` stores ``None`` for it, emits the same warning, and copies the
  message into the report's ``warnings`` list.

Cases: precision when a class is never predicted; recall/TPR/FNR when a class is absent from the
targets; TNR/FPR when every sample belongs to the class; F-beta when the class is absent from both
targets and predictions (the count form ``(1+b^2)TP / ((1+b^2)TP + b^2 FN + FP)`` is used, so F is
0, not undefined, when precision alone is undefined -- as scikit-learn >= 1.3 does); Cohen's kappa
when the expected disagreement is 0; MCC when a row or column marginal is constant (scikit-learn
returns 0.0 there; we say "undefined"); ROC-AUC and average precision when a class has no positive
(or, for ROC, no negative) sample.

Averages: ``macro`` is the unweighted mean over the classes where the value is defined;
``weighted`` weights each defined value by its support (number of true samples); both add a
sentence to ``warnings`` saying which classes were left out. ``micro`` pools TP/FP/TN/FN over
classes first (micro precision = micro recall = micro F1 = accuracy for single-label problems).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnlab.errors import ConfigError
from cnnlab.metrics import scores
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
    "to_numpy",
    "confusion_matrix",
    "confusion_counts",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "tpr",
    "sensitivity",
    "specificity",
    "tnr",
    "false_positive_rate",
    "fpr",
    "false_negative_rate",
    "fnr",
    "fbeta",
    "f1",
    "support",
    "average",
    "micro_metrics",
    "micro_from_counts",
    "per_class_from_counts",
    "cohen_kappa",
    "matthews_corrcoef",
    "per_class_metrics",
    "classification_metrics",
]

# Names of the per-class ratio metrics, in the order the report lists them.
RATIO_METRICS = ("precision", "recall", "f1", "tpr", "tnr", "fpr", "fnr")
SCORE_METRICS = ("roc_auc", "average_precision")


def ratio(
    num: np.ndarray,
    den: np.ndarray,
    *,
    metric: str,
    reason: str,
    names: Sequence[str],
    sink: list[str] | None,
) -> np.ndarray:
    """``num / den`` per class as float64; NaN and one message where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    ok = den != 0
    np.divide(num, den, out=out, where=ok)
    bad = [names[k] for k in np.flatnonzero(~ok)]
    if bad:
        emit(
            f"{metric} is undefined for class {quote(bad)}: {reason}; reported as None",
            sink,
            stacklevel=4,
        )
    return out


# --------------------------------------------------------------------------------------------
# Confusion matrix and counts
# --------------------------------------------------------------------------------------------


def confusion_matrix(targets: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Confusion matrix ``(K, K)`` int64: ``cm[i, j]`` = number of samples of true class ``i``
    predicted as class ``j`` (rows = true, columns = predicted, as scikit-learn).

    One vectorised ``np.bincount`` over the codes ``K * target + pred``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    t = check_labels(targets, num_classes, name="targets")
    p = check_labels(preds, num_classes, name="preds")
    if t.shape != p.shape:
        raise ValueError(f"targets has {t.size} samples but preds has {p.size}")
    codes = t * num_classes + p
    return (
        np.bincount(codes, minlength=num_classes * num_classes)
        .reshape(num_classes, num_classes)
        .astype(np.int64, copy=False)
    )


def check_cm(cm: Any) -> np.ndarray:
    cm = to_numpy(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    if np.any(cm < 0):
        raise ValueError("confusion matrix has negative counts")
    return cm.astype(np.int64, copy=False)


def confusion_counts(cm: Any) -> dict[str, np.ndarray]:
    """Per-class one-vs-rest counts from a confusion matrix, each ``(K,)`` int64.

    ``TP = diag(cm)``, ``FP = column sum - TP``, ``FN = row sum - TP``, ``TN = N - TP - FP - FN``,
    ``support = row sum = TP + FN`` (number of true samples of the class).
    """
    cm = check_cm(cm)
    n = cm.sum()
    tp = np.diag(cm).copy()
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "support": tp + fn}


def support(cm: Any) -> np.ndarray:
    """Support per class ``(K,)``: number of samples whose true class is k (= TP + FN)."""
    return check_cm(cm).sum(axis=1)


# --------------------------------------------------------------------------------------------
# Scalar and per-class metrics
# --------------------------------------------------------------------------------------------


def accuracy(cm: Any) -> float:
    """Accuracy = (TP + TN) / (TP + FP + TN + FN); for K classes: trace(cm) / N.

    Raises ``ValueError`` on an empty confusion matrix (N = 0): there is nothing to measure.
    """
    cm = check_cm(cm)
    n = cm.sum()
    if n == 0:
        raise ValueError("accuracy of zero samples: the confusion matrix is empty")
    return float(np.trace(cm) / n)


def _balanced_accuracy(cm: np.ndarray, names: list[str], sink: list[str] | None) -> float:
    rec = np.diag(cm) / np.where(cm.sum(axis=1) == 0, 1, cm.sum(axis=1))
    present = cm.sum(axis=1) > 0
    if not present.any():
        raise ValueError("balanced accuracy of zero samples: the confusion matrix is empty")
    absent = [names[k] for k in np.flatnonzero(~present)]
    if absent:
        emit(
            f"balanced_accuracy averages recall over the {int(present.sum())} classes present in "
            f"the targets; left out (no true samples): {quote(absent)}",
            sink,
        )
    return float(rec[present].mean())


def balanced_accuracy(cm: Any, class_names: Sequence[str] | None = None) -> float:
    """Balanced accuracy = mean over classes of Recall_k = TP_k / (TP_k + FN_k).

    Classes with no true samples have undefined recall and are left out of the mean (with an
    ``UndefinedMetricWarning``), as scikit-learn's ``balanced_accuracy_score`` does.
    """
    cm = check_cm(cm)
    return _balanced_accuracy(cm, names_for(class_names, cm.shape[0]), None)


def precision(cm: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Precision_k = TP / (TP + FP), ``(K,)``; NaN + warning for a class never predicted."""
    c = confusion_counts(cm)
    names = names_for(class_names, len(c["tp"]))
    return ratio(
        c["tp"],
        c["tp"] + c["fp"],
        metric="precision",
        reason="never predicted (TP + FP = 0)",
        names=names,
        sink=None,
    )


def recall(cm: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Recall_k = TPR_k = sensitivity_k = TP / (TP + FN), ``(K,)``; NaN + warning for a class
    absent from the targets (TP + FN = 0)."""
    c = confusion_counts(cm)
    names = names_for(class_names, len(c["tp"]))
    return ratio(
        c["tp"],
        c["tp"] + c["fn"],
        metric="recall",
        reason="no true samples (TP + FN = 0)",
        names=names,
        sink=None,
    )


tpr = recall  # True positive rate, TPR = TP / (TP + FN)
sensitivity = recall  # the lecture's other name for TPR


def specificity(cm: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """TNR_k = specificity_k = TN / (TN + FP), ``(K,)``; NaN + warning when every sample is of
    class k (TN + FP = 0)."""
    c = confusion_counts(cm)
    names = names_for(class_names, len(c["tp"]))
    return ratio(
        c["tn"],
        c["tn"] + c["fp"],
        metric="tnr",
        reason="no negative samples (TN + FP = 0)",
        names=names,
        sink=None,
    )


tnr = specificity


def false_positive_rate(cm: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """FPR_k = FP / (FP + TN) = 1 - TNR_k, ``(K,)``; NaN + warning when FP + TN = 0."""
    c = confusion_counts(cm)
    names = names_for(class_names, len(c["tp"]))
    return ratio(
        c["fp"],
        c["tn"] + c["fp"],
        metric="fpr",
        reason="no negative samples (FP + TN = 0)",
        names=names,
        sink=None,
    )


fpr = false_positive_rate


def false_negative_rate(cm: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """FNR_k = FN / (FN + TP) = 1 - TPR_k, ``(K,)``; NaN + warning when FN + TP = 0."""
    c = confusion_counts(cm)
    names = names_for(class_names, len(c["tp"]))
    return ratio(
        c["fn"],
        c["tp"] + c["fn"],
        metric="fnr",
        reason="no true samples (FN + TP = 0)",
        names=names,
        sink=None,
    )


fnr = false_negative_rate


def _fbeta(
    c: dict[str, np.ndarray],
    beta: float,
    names: list[str],
    sink: list[str] | None,
    metric: str = "f1",
) -> np.ndarray:
    if not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    b2 = beta * beta
    num = (1 + b2) * c["tp"].astype(np.float64)
    den = (1 + b2) * c["tp"] + b2 * c["fn"] + c["fp"].astype(np.float64)
    return ratio(
        num,
        den,
        metric=metric,
        reason="absent from targets and predictions (TP + FP + FN = 0)",
        names=names,
        sink=sink,
    )


def fbeta(cm: Any, beta: float, class_names: Sequence[str] | None = None) -> np.ndarray:
    """F-beta_k = (1 + b^2) P R / (b^2 P + R) = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP).

    ``(K,)``. The count form is used, so F is 0 (not undefined) when TP = 0 but the class was
    predicted or present; NaN + warning only when TP + FP + FN = 0.
    """
    c = confusion_counts(cm)
    return _fbeta(c, beta, names_for(class_names, len(c["tp"])), None, metric=f"f{beta:g}")


def f1(cm: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """F1_k = 2PR / (P + R) = 2TP / (2TP + FP + FN), ``(K,)`` (see :func:`fbeta`)."""
    c = confusion_counts(cm)
    return _fbeta(c, 1.0, names_for(class_names, len(c["tp"])), None)


def average_defined(
    values: np.ndarray,
    weights: np.ndarray | None,
    *,
    metric: str,
    kind: str,
    names: Sequence[str],
    sink: list[str] | None,
) -> float:
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    left_out = [names[k] for k in np.flatnonzero(~ok)]
    if not ok.any():
        emit(f"{kind} {metric} is undefined: undefined for every class", sink, stacklevel=4)
        return math.nan
    if weights is None:
        value = float(values[ok].mean())
    else:
        w = np.asarray(weights, dtype=np.float64)[ok]
        if w.sum() == 0:
            emit(
                f"{kind} {metric} is undefined: the classes where it is defined have no true "
                f"samples (total weight 0)",
                sink,
                stacklevel=4,
            )
            return math.nan
        value = float(np.dot(values[ok], w) / w.sum())
    if left_out:
        emit(
            f"{kind} {metric} averages the {int(ok.sum())} of {len(values)} classes where it is "
            f"defined; left out: {quote(left_out)}",
            sink,
            stacklevel=4,
        )
    return value


def average(
    values: Any,
    support: Any | None = None,
    method: str = "macro",
    *,
    metric: str = "metric",
    class_names: Sequence[str] | None = None,
) -> float:
    """Average of per-class ``values`` ``(K,)`` over the classes where they are defined (not NaN).

    ``method="macro"``: (1 / |D|) sum_{k in D} v_k; ``"weighted"``: sum_{k in D} s_k v_k /
    sum_{k in D} s_k with ``support`` s. Leaving classes out emits an ``UndefinedMetricWarning``;
    NaN (+ warning) when no class is defined or the defined ones have total support 0.
    """
    values = np.asarray(to_numpy(values), dtype=np.float64)
    names = names_for(class_names, len(values))
    if method == "macro":
        return average_defined(values, None, metric=metric, kind="macro", names=names, sink=None)
    if method == "weighted":
        if support is None:
            raise ValueError("weighted average needs the per-class support")
        return average_defined(
            values, to_numpy(support), metric=metric, kind="weighted", names=names, sink=None
        )
    raise ValueError(f"method must be 'macro' or 'weighted', got {method!r}")


def _micro(c: dict[str, np.ndarray], sink: list[str] | None) -> dict[str, float]:
    tp, fp, tn, fn = (float(c[k].sum()) for k in ("tp", "fp", "tn", "fn"))
    one = ["micro"]
    out = {}
    for metric, num, den, reason in (
        ("precision", tp, tp + fp, "no predictions"),
        ("recall", tp, tp + fn, "no samples"),
        ("tpr", tp, tp + fn, "no samples"),
        ("tnr", tn, tn + fp, "no negatives (a single class)"),
        ("fpr", fp, tn + fp, "no negatives (a single class)"),
        ("fnr", fn, tp + fn, "no samples"),
        ("f1", 2 * tp, 2 * tp + fp + fn, "no samples"),
    ):
        out[metric] = float(
            ratio(
                np.array([num]),
                np.array([den]),
                metric=f"micro {metric}",
                reason=reason,
                names=one,
                sink=sink,
            )[0]
        )
    return out


def micro_from_counts(c: dict[str, np.ndarray], sink: list[str] | None) -> dict[str, float]:
    """Micro averages of per-class (or per-label) counts ``c``: the one place their formulas
    live (single-label from the confusion matrix, multi-label from cnnlab.metrics.multilabel)."""
    return _micro(c, sink)


def micro_metrics(cm: Any) -> dict[str, float]:
    """Micro averages: pool TP, FP, TN, FN over classes, then apply the lecture's formulas.

    Micro precision = sum TP / sum (TP + FP); for single-label data micro precision = micro recall =
    micro F1 = accuracy, and micro TNR = sum TN / sum (TN + FP).
    """
    return _micro(confusion_counts(cm), None)


def _kappa(cm: np.ndarray, sink: list[str] | None) -> float:
    # Integer arithmetic: kappa = (p_o - p_e) / (1 - p_e) with p_o = trace/N and
    # p_e = sum_k row_k col_k / N^2, i.e. (N trace - sum rc) / (N^2 - sum rc). Exact zero test.
    n = int(cm.sum())
    rc = int(np.dot(cm.sum(axis=1).astype(np.int64), cm.sum(axis=0).astype(np.int64)))
    den = n * n - rc
    if den == 0:
        emit(
            "cohen_kappa is undefined: expected agreement p_e = 1 (one class in targets and "
            "predictions, 1 - p_e = 0); reported as None",
            sink,
        )
        return math.nan
    return float((n * int(np.trace(cm)) - rc) / den)


def cohen_kappa(cm: Any) -> float:
    """Cohen's kappa = (p_o - p_e) / (1 - p_e), p_o = trace(cm)/N (observed agreement = accuracy),
    p_e = sum_k (row_k / N)(col_k / N) (chance agreement). NaN + warning when p_e = 1."""
    return _kappa(check_cm(cm), None)


def _mcc(cm: np.ndarray, sink: list[str] | None) -> float:
    t = cm.sum(axis=1).astype(np.float64)  # true counts per class
    p = cm.sum(axis=0).astype(np.float64)  # predicted counts per class
    c = float(np.trace(cm))
    s = float(cm.sum())
    cov_tp = c * s - np.dot(t, p)
    cov_pp = s * s - np.dot(p, p)
    cov_tt = s * s - np.dot(t, t)
    if cov_pp * cov_tt == 0:
        emit(
            "mcc is undefined: the targets or the predictions hold a single class (a zero "
            "variance in the denominator); reported as None (scikit-learn returns 0.0)",
            sink,
        )
        return math.nan
    return float(cov_tp / math.sqrt(cov_pp * cov_tt))


def matthews_corrcoef(cm: Any) -> float:
    """Matthews correlation coefficient, multiclass (Gorodkin's R_K, as scikit-learn):

    MCC = (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)), c = trace(cm), s = N, t = row sums (true),
    p = column sums (predicted). Binary: (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    NaN + warning when the denominator is 0.
    """
    return _mcc(check_cm(cm), None)


def _per_class(
    cm: np.ndarray, names: list[str], sink: list[str] | None, beta: float = 1.0
) -> dict[str, np.ndarray]:
    return per_class_from_counts(confusion_counts(cm), names, sink, beta)


def per_class_from_counts(
    c: dict[str, np.ndarray], names: list[str], sink: list[str] | None, beta: float = 1.0
) -> dict[str, np.ndarray]:
    """The per-class ratio metrics of one-vs-rest counts ``c`` (``tp fp tn fn support``, each
    ``(K,)``): the one place their formulas and undefined policy live. Single-label counts come
    from the confusion matrix; multi-label counts per label (:mod:`cnnlab.metrics.multilabel`)."""
    out: dict[str, np.ndarray] = dict(c)
    out["precision"] = ratio(
        c["tp"],
        c["tp"] + c["fp"],
        metric="precision",
        reason="never predicted (TP + FP = 0)",
        names=names,
        sink=sink,
    )
    out["recall"] = ratio(
        c["tp"],
        c["tp"] + c["fn"],
        metric="recall/tpr/fnr",
        reason="no true samples (TP + FN = 0)",
        names=names,
        sink=sink,
    )
    out["tpr"] = out["recall"].copy()
    out["fnr"] = np.where(np.isnan(out["recall"]), np.nan, c["fn"] / np.maximum(c["support"], 1))
    out["tnr"] = ratio(
        c["tn"],
        c["tn"] + c["fp"],
        metric="tnr/fpr",
        reason="no negative samples (TN + FP = 0)",
        names=names,
        sink=sink,
    )
    out["fpr"] = np.where(np.isnan(out["tnr"]), np.nan, c["fp"] / np.maximum(c["tn"] + c["fp"], 1))
    out["f1"] = _fbeta(c, 1.0, names, sink)
    if beta != 1.0:
        out[f"f{beta:g}"] = _fbeta(c, beta, names, sink, metric=f"f{beta:g}")
    return out


def per_class_metrics(
    cm: Any, class_names: Sequence[str] | None = None, beta: float = 1.0
) -> dict[str, np.ndarray]:
    """All per-class confusion-matrix metrics at once, each ``(K,)``.

    Keys: ``tp fp tn fn support`` (int64) and ``precision recall tpr tnr fpr fnr f1`` (float64,
    NaN where undefined, with one ``UndefinedMetricWarning`` per metric naming the classes), plus
    ``f<beta>`` when ``beta != 1``. Formulas: see the module docstring.
    """
    cm = check_cm(cm)
    return _per_class(cm, names_for(class_names, cm.shape[0]), None, beta)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    """JSON-able Python values: NaN -> None, NumPy scalars -> int/float, arrays -> lists."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    return x


def confusion_report(cm: np.ndarray, names: list[str], sink: list[str]) -> dict[str, Any]:
    """The confusion-matrix half of the report (score metrics set to None)."""
    pc = _per_class(cm, names, sink)
    sup = pc["support"]
    per_class = {}
    for k, name in enumerate(names):
        entry = {m: pc[m][k] for m in ("tp", "fp", "tn", "fn", "support", *RATIO_METRICS)}
        entry.update({m: None for m in SCORE_METRICS})
        per_class[name] = entry
    macro: dict[str, Any] = {}
    weighted: dict[str, Any] = {}
    for m in RATIO_METRICS:
        macro[m] = average_defined(pc[m], None, metric=m, kind="macro", names=names, sink=sink)
        weighted[m] = average_defined(pc[m], sup, metric=m, kind="weighted", names=names, sink=sink)
    for m in SCORE_METRICS:
        macro[m] = weighted[m] = None
    return {
        "num_samples": int(cm.sum()),
        "num_classes": len(names),
        "class_names": list(names),
        "accuracy": accuracy(cm),
        "balanced_accuracy": _balanced_accuracy(cm, names, sink),
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
        "macro": macro,
        "weighted": weighted,
        "micro": _micro(confusion_counts(cm), sink),
        "cohen_kappa": _kappa(cm, sink),
        "mcc": _mcc(cm, sink),
        "top_k_accuracy": None,
        "log_loss": None,
        "ece": None,
        "ece_bins": None,
        "reliability": None,
        "roc_auc_ovo": None,
    }


def _set_score_averages(
    report: dict[str, Any], per_metric: dict[str, np.ndarray], names: list[str], sink: list[str]
) -> None:
    sup = np.array([report["per_class"][n]["support"] for n in names], dtype=np.float64)
    for m, values in per_metric.items():
        for k, name in enumerate(names):
            report["per_class"][name][m] = values[k]
        report["macro"][m] = average_defined(
            values, None, metric=m, kind="macro", names=names, sink=sink
        )
        report["weighted"][m] = average_defined(
            values, sup, metric=m, kind="weighted", names=names, sink=sink
        )


def resolve_positive(positive_class: int | str | None, names: list[str]) -> int | None:
    if positive_class is None:
        return None
    if len(names) != 2:
        raise ConfigError(
            f"positive_class={positive_class!r} applies to binary tasks only, but there are "
            f"{len(names)} classes; leave it unset for multiclass data"
        )
    if isinstance(positive_class, str) and positive_class in names:
        return names.index(positive_class)
    if isinstance(positive_class, (int, np.integer)) and not isinstance(positive_class, bool):
        if 0 <= int(positive_class) < 2:
            return int(positive_class)
    raise ConfigError(
        f"unknown positive_class {positive_class!r}; expected one of {names} or an index 0/1"
    )


def finish_report(report: dict[str, Any], sink: list[str]) -> dict[str, Any]:
    """Emit each collected message once as an UndefinedMetricWarning; store them; clean for JSON."""
    unique = list(dict.fromkeys(sink))
    for msg in unique:
        warnings.warn(msg, UndefinedMetricWarning, stacklevel=3)
    report["warnings"] = unique
    return _clean(report)


def binary_section(
    report: dict[str, Any], names: list[str], pos: int, threshold: float | None
) -> None:
    entry = report["per_class"][names[pos]]
    report["binary"] = {
        "positive_class": names[pos],
        "threshold": threshold,
        **{m: entry[m] for m in ("tp", "fp", "tn", "fn", *RATIO_METRICS, *SCORE_METRICS)},
    }


def classification_metrics(
    targets: Any,
    probs: Any | None = None,
    *,
    preds: Any | None = None,
    class_names: Sequence[str] | None = None,
    positive_class: int | str | None = None,
    threshold: float = 0.5,
    top_k: Sequence[int] = (1, 5),
    num_classes: int | None = None,
    ece_bins: int = 15,
) -> dict[str, Any]:
    """Every classification metric of the lecture in one JSON-able dict.

    Args:
        targets: ``(N,)`` true class indices.
        probs: ``(N, K)`` class probabilities (rows sum to 1; apply
            :func:`cnnlab.metrics.scores.softmax` to logits first), or ``(N,)`` positive-class
            probabilities for a binary task. ``None``: score-based metrics are ``None``.
        preds: ``(N,)`` predicted class indices. When omitted they come from ``probs``: argmax,
            or for K = 2 ``positive if probs[:, pos] >= threshold``. When given, they are used for
            the confusion matrix even if ``probs`` is also given.
        class_names: K names (default ``"0" .. "K-1"``); keys of ``per_class``.
        positive_class: binary tasks only: the positive class (name or index; default index 1).
        threshold: binary tasks only: decision threshold on the positive-class probability.
        top_k: the k of top-k accuracy; only k < K are reported.
        num_classes: K when neither ``probs`` nor ``class_names`` fix it (else max label + 1).
        ece_bins: number of equal-width confidence bins for ECE / the reliability diagram.

    Returns:
        ``num_samples, num_classes, class_names, accuracy, balanced_accuracy, confusion_matrix``
        (rows true, columns predicted), ``per_class`` {name: {tp, fp, tn, fn, support, precision,
        recall, f1, tpr, tnr, fpr, fnr, roc_auc, average_precision}}, ``macro`` and ``weighted``
        (the same ratio/score names), ``micro`` (ratio names), ``cohen_kappa, mcc``,
        ``top_k_accuracy`` {k: value}, ``log_loss, ece, ece_bins, reliability`` (per-bin
        confidence, accuracy, count), ``roc_auc_ovo`` (one-vs-one macro AUC), ``binary`` (K = 2
        only: the positive class's metrics and the threshold), ``warnings`` (list of str).
        Undefined values are ``None`` and each is named in ``warnings`` and warned about once
        with :class:`UndefinedMetricWarning` (see the module docstring).
    """
    t_raw = to_numpy(targets)
    p_arr = None
    if probs is not None:
        p_arr = scores.check_probs(probs, num_classes=num_classes)
    k_classes = (
        p_arr.shape[1]
        if p_arr is not None
        else len(class_names)
        if class_names is not None
        else num_classes
    )
    pred_arr = None if preds is None else check_labels(preds, k_classes, name="preds")
    t = check_labels(t_raw, k_classes, name="targets")
    if k_classes is None:
        top = max(t.max(initial=0), 0 if pred_arr is None else pred_arr.max(initial=0))
        k_classes = int(top) + 1
    if num_classes is not None and num_classes != k_classes:
        raise ValueError(f"num_classes={num_classes} but the inputs have {k_classes} classes")
    names = names_for(class_names, k_classes)
    if t.size == 0:
        raise ValueError("no samples: targets is empty")
    if p_arr is not None and len(p_arr) != len(t):
        raise ValueError(f"targets has {len(t)} samples but probs has {len(p_arr)} rows")
    pos = resolve_positive(positive_class, names)
    if k_classes == 2 and pos is None:
        pos = 1
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold}")

    used_threshold: float | None = None
    if pred_arr is None:
        if p_arr is None:
            raise ValueError("give probs or preds (or both)")
        if k_classes == 2:
            used_threshold = float(threshold)
            pred_arr = np.where(p_arr[:, pos] >= threshold, pos, 1 - pos)
        else:
            pred_arr = p_arr.argmax(axis=1)
    cm = confusion_matrix(t, pred_arr, k_classes)

    sink: list[str] = []
    report = confusion_report(cm, names, sink)
    if p_arr is not None:
        ranked = scores.rank_pass(t, p_arr)  # one sort per column, shared by OvR and OvO
        report.update(
            scores.score_report(t, p_arr, names, sink, top_k=top_k, n_bins=ece_bins, ranked=ranked)
        )
        per_metric = scores.per_class_scores(t, p_arr, names, sink, ranked)
        _set_score_averages(report, per_metric, names, sink)
    if k_classes == 2:
        binary_section(report, names, pos, used_threshold)
    return finish_report(report, sink)
