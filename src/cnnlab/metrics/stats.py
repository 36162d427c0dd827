"""Uncertainty of metrics: bootstrap confidence intervals, and comparing two models on the same
test set (exact McNemar test, paired bootstrap of the accuracy difference).

Bootstrap (percentile method): draw ``n_boot`` resamples of the N test samples with replacement,
compute the metric on each, and report the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
quantiles. Seeded (``np.random.default_rng(seed)``): the same call gives the same interval.

Vectorised: a metric of the confusion matrix only depends on how many resampled samples fall in
each (true, predicted) cell, and those K*K counts of N draws with replacement are exactly
Multinomial(N, cell counts / N). So the named metrics draw one ``(n_boot, K*K)`` multinomial array
instead of an ``(n_boot, N)`` index array: same distribution, memory independent of N. A custom
``metric_fn`` gets real index resamples (chunks of the ``(n_boot, N)`` index array).

Segmentation and detection resample whole test images, not pixels or boxes (the pixels of one
image are not independent draws): :func:`resample_counts` draws image indices with replacement
and turns each resample into a count per image, so a resample's sum of per-image statistics is one
``(n_boot, N) @ (N, D)`` product (:func:`segmentation_intervals`), and detection weights each
image's matched detections by its count (:func:`detection_intervals`,
:mod:`cnnlab.metrics.coco_match`).

Undefined policy: a resample in which a macro metric is undefined for a class averages over the
defined classes (as :mod:`cnnlab.metrics.classification`); resamples where the metric is undefined
altogether are dropped from the quantiles and counted in the log.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnlab.metrics.classification import (
    UndefinedMetricWarning,
    check_labels,
    confusion_matrix,
    to_numpy,
)
from cnnlab.metrics.coco_match import average_precision

logger = logging.getLogger(__name__)

__all__ = [
    "NAMED_METRICS",
    "bootstrap_ci",
    "headline_intervals",
    "binary_metrics",
    "recall_intervals",
    "binary_intervals",
    "mcnemar_exact",
    "accuracy_difference_ci",
    "compare_predictions",
    "resample_counts",
    "segmentation_intervals",
    "detection_intervals",
]

NAMED_METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1")
_INDEX_BUDGET = 4_000_000  # resampled indices held at once by the custom-metric path (32 MB)


def _check_boot(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN row -> NaN, handled below
        return np.nanmean(x, axis=-1)


def _metric_from_cms(cms: np.ndarray, name: str) -> np.ndarray:
    """A named metric for a batch of confusion matrices ``(B, K, K)`` -> ``(B,)``; NaN where
    undefined (macro averages over the classes where the per-class value is defined)."""
    cms = cms.astype(np.float64)
    tp = np.diagonal(cms, axis1=1, axis2=2)  # B x K
    true_sum = cms.sum(axis=2)  # B x K (rows = true)
    pred_sum = cms.sum(axis=1)  # B x K (columns = predicted)
    n = cms.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "accuracy":
            return tp.sum(axis=1) / n
        if name == "macro_precision":
            return _nanmean_rows(np.where(pred_sum > 0, tp / pred_sum, np.nan))
        if name in ("macro_recall", "balanced_accuracy"):
            return _nanmean_rows(np.where(true_sum > 0, tp / true_sum, np.nan))
        if name == "macro_f1":
            den = true_sum + pred_sum  # 2TP + FP + FN
            return _nanmean_rows(np.where(den > 0, 2 * tp / den, np.nan))
    raise ValueError(f"unknown metric {name!r}; named metrics are {NAMED_METRICS}")


def _as_preds(probs_or_preds: Any, num_classes: int | None) -> tuple[np.ndarray, int | None]:
    x = to_numpy(probs_or_preds)
    if x.ndim == 2:
        return x.argmax(axis=1), x.shape[1]
    return check_labels(x, num_classes, name="preds"), num_classes


def _quantiles(values: np.ndarray, confidence: float, what: str) -> tuple[float, float]:
    ok = ~np.isnan(values)
    if not ok.any():
        warnings.warn(
            f"bootstrap interval of {what} is undefined: undefined in every resample",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return math.nan, math.nan
    if not ok.all():
        logger.info(
            "bootstrap of %s: %d of %d resamples undefined, left out",
            what,
            int((~ok).sum()),
            len(values),
        )
    alpha = 1 - confidence
    low, high = np.quantile(values[ok], [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _named_boot(
    t: np.ndarray,
    preds: np.ndarray,
    k_classes: int,
    name: str,
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    cm = confusion_matrix(t, preds, k_classes).ravel()
    counts = rng.multinomial(len(t), cm / cm.sum(), size=n_boot)  # n_boot x K*K
    return _metric_from_cms(counts.reshape(n_boot, k_classes, k_classes), name)


def bootstrap_ci(
    targets: Any,
    probs_or_preds: Any,
    metric_fn: str | Callable[[np.ndarray, np.ndarray], float],
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    num_classes: int | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval ``(low, high)`` of a metric.

    Args:
        targets: ``(N,)`` true class indices.
        probs_or_preds: ``(N, K)`` probabilities/scores (argmax is the prediction for named
            metrics) or ``(N,)`` predicted indices. A custom ``metric_fn`` receives it as is.
        metric_fn: one of ``NAMED_METRICS`` (vectorised multinomial path, see module docstring),
            or ``f(targets_resampled, probs_or_preds_resampled) -> float`` called per resample.
        n_boot: number of resamples. confidence: e.g. 0.95 for a 95 % interval. seed: RNG seed.
    """
    _check_boot(n_boot, confidence)
    t = check_labels(targets, name="targets")
    rng = np.random.default_rng(seed)
    if isinstance(metric_fn, str):
        preds, k_classes = _as_preds(probs_or_preds, num_classes)
        if len(preds) != len(t) or len(t) == 0:
            raise ValueError(
                f"need the same non-zero number of targets ({len(t)}) and "
                f"predictions ({len(preds)})"
            )
        k_classes = k_classes or int(max(t.max(), preds.max())) + 1
        values = _named_boot(t, preds, k_classes, metric_fn, n_boot, rng)
        return _quantiles(values, confidence, metric_fn)

    x = to_numpy(probs_or_preds)
    n = len(t)
    if len(x) != n or n == 0:
        raise ValueError(
            f"need the same non-zero number of targets ({n}) and predictions ({len(x)})"
        )
    chunk = max(1, _INDEX_BUDGET // n)
    values = np.empty(n_boot)
    with warnings.catch_warnings():
        # Undefined values inside single resamples are expected; the summary goes to the log.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for start in range(0, n_boot, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))  # chunk x N
            for j, row in enumerate(idx):
                v = metric_fn(t[row], x[row])
                values[start + j] = math.nan if v is None else float(v)
    return _quantiles(values, confidence, getattr(metric_fn, "__name__", "metric"))


def headline_intervals(
    targets: Any,
    probs: Any | None = None,
    *,
    preds: Any | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Point value and bootstrap interval of accuracy, balanced accuracy and macro precision /
    recall / F1.

    Predictions are ``preds`` when given, else ``argmax(probs)``. Returns
    ``{"accuracy": {"value", "low", "high"}, "balanced_accuracy": ..., "macro_precision": ...,
    "macro_recall": ..., "macro_f1": ..., "n_boot", "confidence", "seed", "method": "percentile
    bootstrap"}``; undefined values are None. One multinomial draw is shared by the five metrics
    (balanced accuracy is the macro recall over the classes present, scikit-learn's definition).
    """
    _check_boot(n_boot, confidence)
    if preds is None and probs is None:
        raise ValueError("give probs or preds")
    t = check_labels(targets, name="targets")
    p, k_classes = _as_preds(probs if preds is None else preds, num_classes)
    if preds is not None and probs is not None:
        k_classes = to_numpy(probs).shape[1]
    if len(p) != len(t) or len(t) == 0:
        raise ValueError(
            f"need the same non-zero number of targets ({len(t)}) and predictions ({len(p)})"
        )
    k_classes = k_classes or int(max(t.max(), p.max())) + 1
    cm = confusion_matrix(t, p, k_classes)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(t), cm.ravel() / cm.sum(), size=n_boot)
    cms = counts.reshape(n_boot, k_classes, k_classes)
    out: dict[str, Any] = {}
    for name in ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1"):
        value = float(_metric_from_cms(cm[None], name)[0])
        low, high = _quantiles(_metric_from_cms(cms, name), confidence, name)
        out[name] = {
            k: (None if math.isnan(v) else v)
            for k, v in (("value", value), ("low", low), ("high", high))
        }
    out.update(n_boot=n_boot, confidence=confidence, seed=seed, method="percentile bootstrap")
    return out


def recall_intervals(
    targets: Any,
    preds: Any,
    num_classes: int,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[tuple[float | None, float | None]]:
    """Percentile-bootstrap interval ``(low, high)`` of each class's recall TP / (TP + FN), from
    one multinomial draw of the K x K confusion cells; (None, None) for a class without true
    samples."""
    _check_boot(n_boot, confidence)
    t = check_labels(targets, num_classes, name="targets")
    p = check_labels(preds, num_classes, name="preds")
    cm = confusion_matrix(t, p, num_classes)
    draws = np.random.default_rng(seed).multinomial(len(t), cm.ravel() / cm.sum(), size=n_boot)
    cms = draws.reshape(n_boot, num_classes, num_classes).astype(np.float64)
    tp, true_sum = np.diagonal(cms, axis1=1, axis2=2), cms.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true_sum > 0, tp / true_sum, np.nan)  # n_boot x K
    out: list[tuple[float | None, float | None]] = []
    for k in range(num_classes):
        if cm[k].sum() == 0:
            out.append((None, None))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            low, high = _quantiles(recall[:, k], confidence, f"recall of class {k}")
        out.append((None if math.isnan(low) else low, None if math.isnan(high) else high))
    return out


BINARY_METRICS = (
    "recall", "precision", "fpr", "tnr", "f1", "accuracy", "balanced_accuracy",
)  # fmt: skip


def _binary_from_counts(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict:
    """BINARY_METRICS of arrays of 2 x 2 counts (NaN where a denominator is 0)."""
    tp, fp, tn, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, tn, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        tnr = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        return {
            "recall": recall,
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "fpr": np.where(tn + fp > 0, fp / (tn + fp), np.nan),
            "tnr": tnr,
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
            "accuracy": (tp + tn) / (tp + fp + tn + fn),
            "balanced_accuracy": _nanmean_rows(np.stack([recall, tnr], axis=-1)),
        }


def binary_metrics(targets: Any, preds: Any) -> dict[str, Any]:
    """TP, FP, TN, FN and BINARY_METRICS of boolean `targets` (positive = True) and `preds`;
    undefined ratios are None."""
    t, p = np.asarray(targets, dtype=bool).ravel(), np.asarray(preds, dtype=bool).ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(
            f"need the same non-zero number of targets ({t.size}) and predictions ({p.size})"
        )
    counts = {
        "tp": int(np.sum(t & p)), "fp": int(np.sum(~t & p)),
        "tn": int(np.sum(~t & ~p)), "fn": int(np.sum(t & ~p)),
    }  # fmt: skip
    values = _binary_from_counts(*(np.asarray([counts[k]]) for k in ("tp", "fp", "tn", "fn")))
    out: dict[str, Any] = dict(counts)
    for name, v in values.items():
        out[name] = None if math.isnan(float(v[0])) else float(v[0])
    return out


def binary_intervals(
    targets: Any,
    preds: Any,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Point value and percentile-bootstrap interval of each of BINARY_METRICS at one decision
    (boolean `targets`, `preds`): ``{name: {"value", "low", "high"}, "n_boot", "confidence",
    "seed", "method"}``. Resamples are multinomial draws of the 2 x 2 cell counts (the module
    docstring's shortcut); undefined values are None."""
    _check_boot(n_boot, confidence)
    point = binary_metrics(targets, preds)
    cells = np.array([point[k] for k in ("tp", "fp", "tn", "fn")], dtype=np.float64)
    n = int(cells.sum())
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=n_boot)  # n_boot x 4
    boot = _binary_from_counts(*draws.T)
    out: dict[str, Any] = {}
    for name in BINARY_METRICS:
        low, high = _quantiles(boot[name], confidence, name)
        out[name] = {
            "value": point[name],
            "low": None if math.isnan(low) else low,
            "high": None if math.isnan(high) else high,
        }
    out.update(n_boot=n_boot, confidence=confidence, seed=seed, method="percentile bootstrap")
    return out


def _correct_pair(correct_a: Any, correct_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a = to_numpy(correct_a).astype(bool).ravel()
    b = to_numpy(correct_b).astype(bool).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"correct_a and correct_b must be the same non-zero length, got {a.size} and {b.size}"
        )
    return a, b


def mcnemar_exact(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """Exact McNemar test of "models A and B have the same accuracy" on paired samples.

    ``b`` = #(A right, B wrong), ``c`` = #(A wrong, B right); under the null each discordant
    sample is A's win with probability 1/2, so p = two-sided binomial test of b successes in
    b + c trials with p = 0.5 (``scipy.stats.binomtest``), = min(1, 2 P[X <= min(b, c)]).
    With no discordant pair (b + c = 0) the models agree everywhere and p = 1.
    """
    from scipy.stats import binomtest  # ~0.5 s to import: only compare needs it, never training

    a, b_ = _correct_pair(correct_a, correct_b)
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "n_discordant": b + c, "p_value": p_value}


def accuracy_difference_ci(
    correct_a: Any,
    correct_b: Any,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy(A) - Accuracy(B) = (b - c) / N with a paired percentile-bootstrap interval.

    Paired: each resample keeps both models' results for the same samples (a resample is a
    Multinomial(N, .) draw over the 4 cells (A right?, B right?)). Returns
    ``{"difference", "low", "high", "n"}``.
    """
    _check_boot(n_boot, confidence)
    a, b_ = _correct_pair(correct_a, correct_b)
    n = a.size
    cells = np.bincount(a.astype(np.int64) * 2 + b_, minlength=4)  # [ww, wr, rw, rr]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, cells / n, size=n_boot)  # n_boot x 4
    diffs = (counts[:, 2] - counts[:, 1]) / n  # (A right & B wrong) - (A wrong & B right)
    low, high = _quantiles(diffs, confidence, "accuracy difference")
    return {"difference": float((cells[2] - cells[1]) / n), "low": low, "high": high, "n": n}


def compare_predictions(
    targets: Any,
    preds_a: Any,
    preds_b: Any,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Two models' predictions on the same samples: both accuracies, their difference with a
    paired bootstrap interval, and the exact McNemar test (for ``cnnlab compare``).

    ``preds_a`` / ``preds_b`` may be ``(N,)`` indices or ``(N, K)`` scores (argmax).
    """
    t = check_labels(targets, name="targets")
    pa, _ = _as_preds(preds_a, None)
    pb, _ = _as_preds(preds_b, None)
    if not len(t) == len(pa) == len(pb):
        raise ValueError(
            f"targets, preds_a and preds_b have {len(t)}, {len(pa)} and {len(pb)} "
            "samples; they must describe the same samples in the same order"
        )
    ca, cb = pa == t, pb == t
    diff = accuracy_difference_ci(ca, cb, n_boot=n_boot, confidence=confidence, seed=seed)
    return {
        "n": len(t),
        "accuracy_a": float(ca.mean()),
        "accuracy_b": float(cb.mean()),
        "difference": diff["difference"],
        "difference_low": diff["low"],
        "difference_high": diff["high"],
        "confidence": confidence,
        "mcnemar": mcnemar_exact(ca, cb),
    }


# -- resampling whole images (segmentation, detection) -------------------------------------------------
def resample_counts(n: int, n_boot: int, rng: np.random.Generator):  # noqa: ANN201
    """Yield ``(rows, n)`` float64 arrays, ``n_boot`` rows in all: how many times each of ``n``
    items was drawn in each resample of ``n`` draws with replacement.

    Resample ``b`` draws its indices as ``rng.integers(0, n, size=n)`` would, in order (the rows
    of one ``(rows, n)`` draw are NumPy's stream in row order), so a loop drawing one resample at
    a time from the same seed sees the same resamples. Blocks keep ``rows * n`` under 4 M."""
    chunk = max(1, _INDEX_BUDGET // max(n, 1))
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))  # rows x N drawn image indices
        flat = (idx + n * np.arange(rows)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def _interval(value: float, boot: np.ndarray, confidence: float, what: str) -> dict[str, Any]:
    """{"value", "low", "high"} with None for undefined (NaN) numbers."""
    if math.isnan(value):
        low = high = math.nan
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            low, high = _quantiles(boot, confidence, what)
    return {
        k: (None if math.isnan(v) else float(v))
        for k, v in (("value", value), ("low", low), ("high", high))
    }


def _seg_from_sums(tp: np.ndarray, true_sum: np.ndarray, pred_sum: np.ndarray) -> dict:
    """Pixel accuracy, per-class IoU and Dice of ``(B, K)`` summed counts (float64 holding
    integers, exact below 2**53): IoU = TP / (T + P - TP), Dice = 2TP / (T + P), where T = TP + FN
    (true pixels) and P = TP + FP (predicted pixels), NaN where the class is nowhere."""
    union = true_sum + pred_sum - tp  # TP + FP + FN
    both = true_sum + pred_sum  # 2TP + FP + FN
    total = true_sum.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "pixel_accuracy": np.where(total > 0, tp.sum(axis=1) / total, np.nan),
            "iou": np.where(union > 0, tp / union, np.nan),
            "dice": np.where(both > 0, 2 * tp / both, np.nan),
        }


def _mean_defined_rows(values: np.ndarray) -> np.ndarray:
    """Per row, the mean over the non-NaN entries (NaN when none): ``average_defined``'s rule."""
    ok = ~np.isnan(values)
    count = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, values, 0.0).sum(axis=1) / count, np.nan)


def segmentation_intervals(
    per_image_cms: Any,
    class_names: list[str] | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Point value and percentile-bootstrap interval over test images of mean IoU, pixel accuracy,
    mean Dice and each class's IoU and Dice, from ``(N, K, K)`` per-image pixel confusion matrices
    (rows = true; :func:`cnnlab.metrics.segmentation.per_image_confusion`).

    A resample draws N images with replacement and sums their matrices. The metrics depend on a
    matrix only through its diagonal, row sums and column sums, and sums commute with that
    reduction, so each image is reduced to those 3K numbers first and a resample's sums are one
    ``(n_boot, N) @ (N, 3K)`` product (float64: exact for counts below 2**53). The point values
    are those of :func:`cnnlab.metrics.segmentation.segmentation_metrics` on the summed matrix.

    Returns ``{"mean_iou": {"value", "low", "high"}, "pixel_accuracy": ..., "mean_dice": ...,
    "per_class": {name: {"iou": {...}, "dice": {...}}}, "n_boot", "confidence", "seed", "method",
    "unit": "image"}``; undefined values are None.
    """
    _check_boot(n_boot, confidence)
    cms = np.asarray(per_image_cms)
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2] or len(cms) == 0:
        raise ValueError(
            f"need (N, K, K) per-image confusion matrices with N >= 1, got {cms.shape}"
        )
    n, k = cms.shape[0], cms.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    stats = np.concatenate(
        [np.diagonal(cms, axis1=1, axis2=2), cms.sum(axis=2), cms.sum(axis=1)], axis=1
    ).astype(np.float64)  # N x 3K: TP, true pixels, predicted pixels per class
    if float(stats[:, k : 2 * k].sum()) * n >= 2.0**53:
        raise ValueError("too many pixels for exact float64 sums; resample fewer images")
    total = stats.sum(axis=0, keepdims=True)
    point = _seg_from_sums(total[:, :k], total[:, k : 2 * k], total[:, 2 * k :])
    boot_sums = np.concatenate(
        [w @ stats for w in resample_counts(n, n_boot, np.random.default_rng(seed))]
    )  # n_boot x 3K
    boot = _seg_from_sums(boot_sums[:, :k], boot_sums[:, k : 2 * k], boot_sums[:, 2 * k :])

    def exact_mean(values: np.ndarray) -> float:  # average_defined's own arithmetic
        ok = ~np.isnan(values)
        return float(values[ok].mean()) if ok.any() else math.nan

    out: dict[str, Any] = {
        "mean_iou": _interval(
            exact_mean(point["iou"][0]), _mean_defined_rows(boot["iou"]), confidence, "mean IoU"
        ),
        "pixel_accuracy": _interval(
            float(point["pixel_accuracy"][0]),
            boot["pixel_accuracy"],
            confidence,
            "pixel accuracy",
        ),  # fmt: skip
        "mean_dice": _interval(
            exact_mean(point["dice"][0]),
            _mean_defined_rows(boot["dice"]),
            confidence,
            "mean Dice",
        ),  # fmt: skip
        "per_class": {
            name: {
                m: _interval(
                    float(point[m][0, c]), boot[m][:, c], confidence, f"{m} of class {name}"
                )
                for m in ("iou", "dice")
            }
            for c, name in enumerate(names)
        },
    }
    out.update(
        n_boot=n_boot, confidence=confidence, seed=seed, method="percentile bootstrap",
        unit="image",
    )  # fmt: skip
    return out


def _ap_summary(ap: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """mAP, mAP@0.5, mAP@0.75 ``(B,)`` and per-class AP, AP50 ``(B, K)`` of ``(B, T, K)`` AP
    (NaN where a class has no true box): COCO's means over the classes that have one."""
    per_class = ap.mean(axis=1)  # B x K, over the IoU thresholds
    out = {"map": _mean_defined_rows(per_class), "ap": per_class}
    for key, t in (("map_50", 0.5), ("map_75", 0.75)):
        hit = np.flatnonzero(np.isclose(thresholds, t))
        if len(hit):
            out[key] = _mean_defined_rows(ap[:, hit[0], :])
            if t == 0.5:
                out["ap_50"] = ap[:, hit[0], :]
    return out


def detection_intervals(
    records: Any,
    class_names: list[str],
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Point value and percentile-bootstrap interval over test images of COCO mAP, mAP@0.5,
    mAP@0.75 and each class's AP and AP@0.5, from per-image matches
    (:func:`cnnlab.metrics.coco_match.match_images`).

    Matching never looks across images, so a resample of N images with replacement is scored by
    weighting each image's matched detections and true boxes by how often it was drawn
    (:func:`cnnlab.metrics.coco_match.average_precision`) -- no re-matching. Returns the shape of
    :func:`headline_intervals`: ``{"map": {"value", "low", "high"}, "map_50", "map_75",
    "per_class": {name: {"ap": {...}, "ap_50": {...}}}, "n_boot", "confidence", "seed", "method",
    "unit": "image"}``; undefined values are None.
    """
    _check_boot(n_boot, confidence)
    n = records.num_images
    if n == 0:
        raise ValueError("need at least one image")
    point = _ap_summary(average_precision(records), records.iou_thresholds)
    rng = np.random.default_rng(seed)
    boot_ap = np.concatenate(
        [average_precision(records, w) for w in resample_counts(n, n_boot, rng)]
    )
    boot = _ap_summary(boot_ap, records.iou_thresholds)
    out: dict[str, Any] = {
        key: _interval(float(point[key][0]), boot[key], confidence, key)
        for key in ("map", "map_50", "map_75")
        if key in point
    }
    out["per_class"] = {
        name: {
            key: _interval(float(point[key][0, c]), boot[key][:, c], confidence, f"{key} of {name}")
            for key in ("ap", "ap_50")
            if key in point
        }
        for c, name in enumerate(class_names)
    }
    out.update(
        n_boot=n_boot, confidence=confidence, seed=seed, method="percentile bootstrap",
        unit="image",
    )  # fmt: skip
    return out
