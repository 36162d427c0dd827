"""Metrics across the folds of a cross-validation: mean, standard deviation and a t interval.

The interval is the textbook one for the mean of k fold scores, ``mean +- t_{(1+c)/2, k-1} s /
sqrt(k)`` with the sample standard deviation ``s`` (ddof = 1) and Student's t quantile from
``scipy.stats.t``. The folds share most of their training data, so their scores are not
independent and this interval is optimistic (Bengio & Grandvalet 2004, "No unbiased estimator of
the variance of k-fold cross-validation"); it says how much the folds disagree, not a guarantee.
The interval is cut to the metric's range (a rate cannot pass 1; :func:`score_range`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["flatten_metrics", "fold_interval", "score_range", "summarize_folds"]

# classification_metrics entries that are not scores: counts, settings, arrays, notes.
# temperature: the calibration's T (probs = softmax(logits / T)), fitted on each fold's
# validation split; a setting, not a score of the test fold, so a t interval of it means nothing
# (cut to [0, 1] besides, as a rate's). cnnlab cv lists it per fold on its own
_NOT_SCORES = frozenset(
    {"num_samples", "num_classes", "ece_bins", "threshold", "class_names", "confusion_matrix",
     "reliability", "confidence_intervals", "warnings", "tp", "fp", "tn", "fn", "support",
     "positive_class", "count", "temperature"}
)  # fmt: skip
_AVERAGES = ("macro", "weighted", "micro", "samples")  # samples: multi-label reports only
_RANGES = {"log_loss": (0.0, math.inf), "cohen_kappa": (-1.0, 1.0), "mcc": (-1.0, 1.0)}


def score_range(name: str) -> tuple[float, float]:
    """The values a flattened score (:func:`flatten_metrics`) can take: [0, inf) for log loss,
    [-1, 1] for Cohen's kappa and MCC, [0, 1] for every other (rates, AUCs, ECE)."""
    return _RANGES.get(name, (0.0, 1.0))


def fold_interval(
    values: Sequence[float | None],
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> dict[str, Any]:
    """Mean, sample std (ddof = 1) and the t interval of the defined ``values`` (None: the metric
    was undefined in that fold, left out; ``n`` says how many were used), the interval cut to
    ``bounds``. With fewer than two defined values std and the interval are None."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    n = int(defined.size)
    out: dict[str, Any] = {"mean": None, "std": None, "low": None, "high": None, "n": n}
    if n == 0:
        return out
    mean = float(defined.mean())
    out["mean"] = mean
    if n < 2:
        return out
    from scipy.stats import t  # ~0.3 s: only when there is an interval to make

    std = float(defined.std(ddof=1))
    half = float(t.ppf((1.0 + confidence) / 2.0, df=n - 1)) * std / math.sqrt(n)
    out.update(std=std, low=max(mean - half, bounds[0]), high=min(mean + half, bounds[1]))
    return out


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """The scores of one ``classification_metrics`` (or ``multilabel_metrics``) result as flat
    names: ``accuracy``,
    ``macro_f1``, ``top_5_accuracy``, ``binary_recall``, ``recall[cat]`` (per class), ... Counts,
    settings and arrays are left out; an undefined score stays None."""
    flat: dict[str, float | None] = {}

    def score(value: Any) -> bool:
        return value is None or (isinstance(value, float) and not isinstance(value, bool))

    for key, value in metrics.items():
        if key in _NOT_SCORES:
            continue
        if key in _AVERAGES or key == "binary":
            flat |= {f"{key}_{k}": v for k, v in value.items() if k not in _NOT_SCORES and score(v)}
        elif key == "top_k_accuracy":
            flat |= {f"top_{k}_accuracy": v for k, v in value.items() if score(v)}
        elif key in ("per_class", "per_label"):  # per_label: a multi-label report
            for name, row in value.items():
                flat |= {
                    f"{k}[{name}]": v for k, v in row.items() if k not in _NOT_SCORES and score(v)
                }
        elif score(value):
            flat[key] = value
    return flat


def summarize_folds(
    fold_metrics: Sequence[Mapping[str, Any]], confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """``{name: {mean, std, low, high, n, values}}`` for every score in any fold's
    ``classification_metrics`` (names from :func:`flatten_metrics`, in first-seen order; intervals
    cut to :func:`score_range`); ``values`` holds each fold's score (None where undefined)."""
    flat = [flatten_metrics(m) for m in fold_metrics]
    names = list(dict.fromkeys(name for f in flat for name in f))
    summary = {}
    for name in names:
        values = [f.get(name) for f in flat]
        bounds = score_range(name)
        summary[name] = fold_interval(values, confidence, bounds) | {"values": values}
    return summary
