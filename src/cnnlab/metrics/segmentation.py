"""Semantic-segmentation metrics from a pixel confusion matrix.

Every labelled pixel is one sample: ``cm[i, j]`` counts pixels of true class ``i`` predicted as
class ``j`` (rows = true, columns = predicted, as :mod:`cnnlab.metrics.classification`). Pixels
whose target is ``ignore_index`` (VOC's 255 "void" boundary) are left out before counting.
For class k::

    TP_k = cm[k, k]    FP_k = cm[:, k].sum() - TP_k    FN_k = cm[k, :].sum() - TP_k

    IoU_k  = TP / (TP + FP + FN)            (Jaccard index: |truth ∩ pred| / |truth ∪ pred|)
    Dice_k = 2 TP / (2 TP + FP + FN)        (= F1 of the pixels of class k)
    pixel accuracy      = trace(cm) / cm.sum()
    mean accuracy       = mean_k TP_k / (TP_k + FN_k)                 (mean per-class recall)
    mean IoU            = mean_k IoU_k
    frequency-weighted IoU = sum_k (support_k / N) IoU_k               (Long et al., FCN, 2015)

Undefined values follow the policy of :mod:`cnnlab.metrics.classification`: a class absent from
both the targets and the predictions has no IoU or Dice (0 / 0): it is ``None`` in the report, an
``UndefinedMetricWarning`` names the class, and the means average the classes where the value is
defined (a note says which were left out). Background counts as a class (as in the VOC benchmark).

The accumulators count on the device with one ``torch.bincount`` per batch over the codes
``K * target + pred`` (``(N, K, K)`` per image with an image offset), so no per-pixel Python runs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cnnlab.metrics.classification import (
    UndefinedMetricWarning,
    average_defined,
    check_cm,
    emit,
    finish_report,
    names_for,
    ratio,
    to_numpy,
)

__all__ = [
    "ConfusionAccumulator",
    "UndefinedMetricWarning",
    "dice_per_class",
    "iou_per_class",
    "per_image_confusion",
    "per_image_iou",
    "pixel_confusion_matrix",
    "segmentation_metrics",
]


def _valid_codes(
    targets: torch.Tensor, preds: torch.Tensor, num_classes: int, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat codes K*t+p of the labelled pixels, boolean mask of labelled pixels, shaped as t)."""
    if targets.shape != preds.shape:
        raise ValueError(f"targets {tuple(targets.shape)} and preds {tuple(preds.shape)} differ")
    t, p = targets.long(), preds.long()
    valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    tv, pv = t[valid], p[valid]
    if tv.numel():
        lo, hi = int(torch.minimum(tv.min(), pv.min())), int(torch.maximum(tv.max(), pv.max()))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"labels must be class indices 0..{num_classes - 1} (or ignore_index="
                f"{ignore_index}); found {lo if lo < 0 else hi}"
            )
    pl = p[~valid]  # predictions on ignored pixels are not counted but must still be classes
    if pl.numel() and (int(pl.min()) < 0 or int(pl.max()) >= num_classes):
        raise ValueError(f"preds must be class indices 0..{num_classes - 1}")
    return tv * num_classes + pv, valid


def pixel_confusion_matrix(
    targets: Any, preds: Any, num_classes: int, ignore_index: int | None = 255
) -> np.ndarray:
    """(K, K) int64 pixel confusion matrix of label maps of any (equal) shape, e.g. (N, H, W).

    Pixels whose target equals ``ignore_index`` are excluded; every other target and every
    prediction must lie in ``0..K-1`` (``ValueError`` otherwise).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    t = torch.as_tensor(to_numpy(targets) if not torch.is_tensor(targets) else targets)
    p = torch.as_tensor(to_numpy(preds) if not torch.is_tensor(preds) else preds)
    codes, _ = _valid_codes(t, p, num_classes, ignore_index)
    cm = torch.bincount(codes, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def per_image_confusion(
    targets: torch.Tensor, preds: torch.Tensor, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """(N, K, K) int64 confusion matrices, one per image of (N, H, W) label maps; one bincount."""
    n, k = targets.shape[0], num_classes
    codes, valid = _valid_codes(targets, preds, k, ignore_index)
    image = torch.arange(n, device=targets.device).view(n, *([1] * (targets.ndim - 1)))
    image = image.expand_as(targets)[valid]
    cm = torch.bincount(image * k * k + codes, minlength=n * k * k)
    return cm.view(n, k, k)


def per_image_iou(cms: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,) mean IoU of each image over the classes present in its truth or its prediction.

    Used to rank test images (best / worst) in the report; NaN for an image with no labelled pixel.
    """
    cm = torch.as_tensor(cms).double()
    tp = cm.diagonal(dim1=1, dim2=2)
    union = cm.sum(2) + cm.sum(1) - tp  # TP + FN + FP per class
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.zeros_like(tp))
    count = present.sum(1)
    out = iou.sum(1) / count.clamp_min(1)
    out[count == 0] = float("nan")
    return out.numpy()


class ConfusionAccumulator:
    """Streams (targets, preds) label-map batches into one (K, K) pixel confusion matrix.

    The matrix stays on the device of the first batch (int64); ``matrix()`` returns it as NumPy.
    Equal to :func:`pixel_confusion_matrix` on the concatenated batches (counts just add up).

    ``per_image=True`` also keeps each image's (K, K) matrix (int64, on the CPU: 8 K^2 bytes per
    image), counted by the same single bincount per batch; ``per_image_matrices()`` returns them
    (N, K, K), what a bootstrap over test images resamples (cnnlab.metrics.stats).
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, *, per_image: bool = False
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.per_image = per_image
        self._cm: torch.Tensor | None = None
        self._images: list[torch.Tensor] = []

    def update(self, targets: torch.Tensor, preds: torch.Tensor) -> None:
        k = self.num_classes
        if self.per_image:
            if targets.ndim < 2:
                raise ValueError(
                    f"per_image needs (N, H, W) label maps, got {tuple(targets.shape)}"
                )
            per = per_image_confusion(targets, preds, k, self.ignore_index)  # B x K x K
            self._images.append(per.cpu())
            cm = per.sum(0)
        else:
            codes, _ = _valid_codes(targets, preds, k, self.ignore_index)
            cm = torch.bincount(codes, minlength=k * k).view(k, k)
        self._cm = cm if self._cm is None else self._cm + cm

    def per_image_matrices(self) -> np.ndarray:
        """(N, K, K) int64: one pixel confusion matrix per image fed, in order."""
        if not self.per_image:
            raise ValueError("this accumulator keeps no per-image matrices: pass per_image=True")
        k = self.num_classes
        if not self._images:
            return np.zeros((0, k, k), dtype=np.int64)
        return torch.cat(self._images).numpy().astype(np.int64, copy=False)

    def matrix(self) -> np.ndarray:
        k = self.num_classes
        if self._cm is None:
            return np.zeros((k, k), dtype=np.int64)
        return self._cm.cpu().numpy().astype(np.int64)

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return segmentation_metrics(self.matrix(), class_names)


def _counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.int64)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp  # TP, FP, FN


def _iou(cm: np.ndarray, names: list[str], sink: list[str] | None) -> np.ndarray:
    tp, fp, fn = _counts(cm)
    return ratio(
        tp,
        tp + fp + fn,
        metric="IoU",
        names=names,
        sink=sink,
        reason="the class is absent from both the targets and the predictions (TP + FP + FN = 0)",
    )


def _dice(cm: np.ndarray, names: list[str], sink: list[str] | None) -> np.ndarray:
    tp, fp, fn = _counts(cm)
    return ratio(
        2 * tp,
        2 * tp + fp + fn,
        metric="Dice",
        names=names,
        sink=sink,
        reason="the class is absent from both the targets and the predictions (2TP + FP + FN = 0)",
    )


def iou_per_class(cm: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """IoU_k = TP / (TP + FP + FN), ``(K,)`` float64; NaN + warning where the class is nowhere."""
    cm = check_cm(cm)
    return _iou(cm, names_for(class_names, cm.shape[0]), None)


def dice_per_class(cm: Any, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Dice_k = 2TP / (2TP + FP + FN) (pixel F1), ``(K,)``; NaN + warning where undefined."""
    cm = check_cm(cm)
    return _dice(cm, names_for(class_names, cm.shape[0]), None)


def segmentation_metrics(cm: Any, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The report of one pixel confusion matrix (JSON-able; undefined values are None).

    Keys: ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``, ``mean_dice``,
    ``frequency_weighted_iou``, ``num_pixels`` (labelled), ``num_classes``, ``class_names``,
    ``per_class`` {name: {iou, dice, precision, recall, tp, fp, fn, support, predicted}},
    ``confusion_matrix`` and ``warnings`` (each undefined value's reason, also warned once).
    """
    cm = check_cm(cm)
    k = cm.shape[0]
    names = names_for(class_names, k)
    sink: list[str] = []
    tp, fp, fn = _counts(cm)
    support = tp + fn
    total = int(cm.sum())
    iou = _iou(cm, names, sink)
    dice = _dice(cm, names, sink)
    precision = ratio(
        tp,
        tp + fp,
        metric="precision",
        names=names,
        sink=sink,
        reason="the class was never predicted (TP + FP = 0)",
    )
    recall = ratio(
        tp,
        support,
        metric="recall",
        names=names,
        sink=sink,
        reason="the class is absent from the targets (TP + FN = 0)",
    )
    if total:
        pixel_accuracy = float(tp.sum() / total)
        # Classes with no true pixel have weight 0, so their (possibly undefined) IoU drops out.
        has = support > 0
        fw_iou = float(np.dot(support[has], iou[has]) / total)
    else:
        emit("pixel accuracy is undefined: no labelled pixel (all ignored)", sink)
        pixel_accuracy = fw_iou = math.nan
    report = {
        "num_pixels": total,
        "num_classes": k,
        "class_names": names,
        "pixel_accuracy": pixel_accuracy,
        "mean_accuracy": average_defined(
            recall, None, metric="recall", kind="mean", names=names, sink=sink
        ),
        "mean_iou": average_defined(iou, None, metric="IoU", kind="mean", names=names, sink=sink),
        "mean_dice": average_defined(
            dice, None, metric="Dice", kind="mean", names=names, sink=sink
        ),
        "frequency_weighted_iou": fw_iou,
        "per_class": {
            name: {
                "iou": iou[i],
                "dice": dice[i],
                "precision": precision[i],
                "recall": recall[i],
                "tp": tp[i],
                "fp": fp[i],
                "fn": fn[i],
                "support": support[i],
                "predicted": tp[i] + fp[i],
            }
            for i, name in enumerate(names)
        },
        "confusion_matrix": cm.tolist(),
    }
    return finish_report(report, sink)


def quiet_mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over defined classes, without warnings (per-epoch validation); NaN if none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        values = iou_per_class(cm)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
