"""Classification metrics: pure functions on arrays (NumPy or torch) and a streaming accumulator.

* :func:`classification_metrics` -- every metric of the lecture in one JSON-able dict;
* :mod:`.classification` -- confusion matrix, TP/FP/TN/FN, accuracy, precision, recall (TPR,
  sensitivity), TNR (specificity), FPR, FNR, F1 / F-beta, averages, Cohen's kappa, MCC;
* :mod:`.scores` -- ROC / PR curves, ROC-AUC (one-vs-rest, one-vs-one), average precision,
  top-k accuracy, log loss, ECE and reliability-diagram data, ``find_threshold``;
* :mod:`.stats` -- bootstrap intervals, exact McNemar test, paired accuracy difference;
* :mod:`.multilabel` -- multi-label (N, L) targets: per-label counts and ratios, micro / macro /
  weighted / samples averages, Hamming loss, subset accuracy, ROC-AUC, AP, mAP, LRAP, per-label
  thresholds (:func:`multilabel_metrics` -- the multi-label report);
* :mod:`.accumulate` -- :class:`ClassificationAccumulator` (batch by batch);
* :mod:`.io` -- :func:`read_predictions_csv`.

Undefined values (a zero denominator) are None in reports / NaN in arrays, always with an
:class:`UndefinedMetricWarning` naming the class -- never a silent 0 (see ``classification``).
"""

from cnnlab.metrics.accumulate import ClassificationAccumulator
from cnnlab.metrics.classification import (
    UndefinedMetricWarning,
    accuracy,
    balanced_accuracy,
    classification_metrics,
    cohen_kappa,
    confusion_counts,
    confusion_matrix,
    f1,
    false_negative_rate,
    false_positive_rate,
    fbeta,
    fnr,
    fpr,
    matthews_corrcoef,
    micro_metrics,
    per_class_metrics,
    precision,
    recall,
    sensitivity,
    specificity,
    support,
    tnr,
    tpr,
)
from cnnlab.metrics.io import read_predictions_csv
from cnnlab.metrics.multilabel import multilabel_metrics
from cnnlab.metrics.scores import (
    average_precision,
    average_precision_ovr,
    expected_calibration_error,
    find_threshold,
    log_loss,
    precision_recall_curve,
    reliability_diagram,
    roc_auc,
    roc_auc_ovo,
    roc_auc_ovr,
    roc_curve,
    softmax,
    top_k_accuracy,
)
from cnnlab.metrics.stats import (
    accuracy_difference_ci,
    bootstrap_ci,
    compare_predictions,
    headline_intervals,
    mcnemar_exact,
)

__all__ = [
    "ClassificationAccumulator",
    "UndefinedMetricWarning",
    "accuracy",
    "accuracy_difference_ci",
    "average_precision",
    "average_precision_ovr",
    "balanced_accuracy",
    "bootstrap_ci",
    "classification_metrics",
    "cohen_kappa",
    "compare_predictions",
    "confusion_counts",
    "confusion_matrix",
    "expected_calibration_error",
    "f1",
    "false_negative_rate",
    "false_positive_rate",
    "fbeta",
    "find_threshold",
    "fnr",
    "fpr",
    "headline_intervals",
    "log_loss",
    "matthews_corrcoef",
    "mcnemar_exact",
    "multilabel_metrics",
    "micro_metrics",
    "per_class_metrics",
    "precision",
    "precision_recall_curve",
    "read_predictions_csv",
    "recall",
    "reliability_diagram",
    "roc_auc",
    "roc_auc_ovo",
    "roc_auc_ovr",
    "roc_curve",
    "sensitivity",
    "softmax",
    "specificity",
    "support",
    "tnr",
    "top_k_accuracy",
    "tpr",
]
