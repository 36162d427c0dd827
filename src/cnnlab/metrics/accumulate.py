"""Streaming classification metrics: feed batches during evaluation, get the full report at the end.

Example::

    acc = ClassificationAccumulator(num_classes=10)
    for images, targets in loader:
        acc.update(targets, model(images))  # logits or probabilities, torch or NumPy
    report = acc.compute(class_names)  # == classification_metrics(all targets, all probs)

``keep_scores=True`` stores the targets (int64) and the probabilities as float32 in arrays that
grow by doubling (memory ~ 4 N K bytes + 8 N, the scores kept and nothing else), so every metric,
ROC-AUC and average precision included, is exact. ``keep_scores=False`` keeps only running sums:
the confusion matrix, top-k hit counts, the summed log loss and the per-bin calibration sums --
O(K^2 + bins) memory -- and reports the rank metrics (ROC-AUC, AP, one-vs-one AUC) as None.

Both modes compute on float32 probabilities, so their common metrics agree with each other and
with ``classification_metrics(targets, probs.astype(float32))``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnlab.metrics import scores as _scores
from cnnlab.metrics.classification import (
    binary_section,
    check_labels,
    classification_metrics,
    confusion_report,
    finish_report,
    names_for,
    resolve_positive,
    to_numpy,
)

logger = logging.getLogger(__name__)

__all__ = ["ClassificationAccumulator"]

_MIN_CAPACITY = 1024  # rows allocated at the first update (grows by doubling)


class ClassificationAccumulator:
    """Accumulates ``(targets, probs_or_logits)`` batches; ``compute()`` returns the same dict as
    :func:`cnnlab.metrics.classification_metrics`.

    Args:
        num_classes: K.
        keep_scores: keep every probability (exact ROC-AUC / AP) or only running sums.
        scores: ``"auto"`` (the first batch decides: probabilities if every row is in [0, 1] and
            sums to 1, else logits -> softmax; later batches must agree), ``"probs"`` or
            ``"logits"``.
        class_names: K names used by ``compute()`` (and to resolve a named ``positive_class``).
        positive_class, threshold: binary tasks: predict ``positive_class`` (default index 1)
            when its probability is >= ``threshold``.
        top_k, ece_bins: as in ``classification_metrics`` (fixed here: the sums depend on them).

    ``update`` also accepts ``(N,)`` integer predictions instead of scores (confusion-matrix
    metrics only); a stream must not mix the two.
    """

    def __init__(
        self,
        num_classes: int,
        keep_scores: bool = True,
        *,
        scores: str = "auto",
        class_names: Sequence[str] | None = None,
        positive_class: int | str | None = None,
        threshold: float = 0.5,
        top_k: Sequence[int] = (1, 5),
        ece_bins: int = _scores.DEFAULT_ECE_BINS,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if scores not in ("auto", "probs", "logits"):
            raise ValueError(f"scores must be 'auto', 'probs' or 'logits', got {scores!r}")
        self.num_classes = int(num_classes)
        self.keep_scores = bool(keep_scores)
        self.scores = scores
        self.class_names = names_for(class_names, self.num_classes)
        pos = resolve_positive(positive_class, self.class_names)
        self.positive_class = pos if pos is not None else (1 if num_classes == 2 else None)
        self.threshold = float(threshold)
        self.top_k = tuple(int(k) for k in top_k)
        self.ece_bins = int(ece_bins)
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        k = self.num_classes
        self._mode: str | None = None  # "scores" or "preds", set by the first batch
        self._kind: str | None = None if self.scores == "auto" else self.scores
        self._n = 0
        self._cm = np.zeros((k, k), dtype=np.int64)
        self._targets = np.empty(0, dtype=np.int64)
        self._probs = np.empty((0, k), dtype=np.float32)
        ks = sorted({kk for kk in self.top_k if 1 <= kk < k})
        self._topk_hits = dict.fromkeys(ks, 0)
        self._nll = 0.0
        self._cal = [
            np.zeros(self.ece_bins),
            np.zeros(self.ece_bins),
            np.zeros(self.ece_bins, dtype=np.int64),
        ]

    @property
    def num_samples(self) -> int:
        return self._n

    @property
    def confusion_matrix(self) -> np.ndarray:
        """The running ``(K, K)`` confusion matrix (rows = true, columns = predicted), a copy."""
        return self._cm.copy()

    # ----------------------------------------------------------------------------------------

    def _to_probs(self, s: np.ndarray) -> np.ndarray:
        if s.ndim == 1 and self.num_classes == 2:
            s = np.stack([1 - s, s], axis=1)  # positive-class probability of a binary task
        if s.ndim != 2 or s.shape[1] != self.num_classes:
            raise ValueError(f"expected scores of shape (N, {self.num_classes}), got {s.shape}")
        if self._kind is None:
            self._kind = "probs" if _scores._prob_problem(s) is None else "logits"
            logger.debug("ClassificationAccumulator: first batch read as %s", self._kind)
        if self._kind == "logits":
            if not np.all(np.isfinite(s)):
                raise ValueError("logits hold NaN or inf")
            return _scores.softmax(s).astype(np.float32, copy=False)
        try:
            return _scores.check_probs(s, self.num_classes).astype(np.float32, copy=False)
        except ValueError as e:
            raise ValueError(
                f"{e} (this stream was read as probabilities from its first batch; "
                "pass scores='logits' to the accumulator for logits)"
            ) from None

    def _grow(self, extra: int) -> None:
        need = self._n + extra
        cap = len(self._targets)
        if need <= cap:
            return
        new_cap = max(need, 2 * cap, _MIN_CAPACITY)
        targets = np.empty(new_cap, dtype=np.int64)
        targets[: self._n] = self._targets[: self._n]
        self._targets = targets
        if self._mode == "scores":
            probs = np.empty((new_cap, self.num_classes), dtype=np.float32)
            probs[: self._n] = self._probs[: self._n]
            self._probs = probs

    def update(self, targets: Any, probs_or_logits: Any) -> None:
        """Add a batch: ``targets (B,)`` class indices and ``(B, K)`` probabilities or logits
        (or ``(B,)`` positive-class probabilities when K = 2, or ``(B,)`` integer predictions).
        torch tensors are detached and moved to the CPU."""
        t = check_labels(targets, self.num_classes, name="targets")
        s = to_numpy(probs_or_logits)
        mode = "preds" if s.ndim == 1 and np.issubdtype(s.dtype, np.integer) else "scores"
        if self._mode is None:
            self._mode = mode
        elif mode != self._mode:
            raise ValueError(f"this accumulator was fed {self._mode} before; got {mode} now")
        if len(s) != len(t):
            raise ValueError(f"batch has {len(t)} targets but {len(s)} rows of scores")
        if len(t) == 0:
            return
        if mode == "preds":
            preds = check_labels(s, self.num_classes, name="preds")
            probs = None
        else:
            probs = self._to_probs(s)
            if self.num_classes == 2:
                pos = self.positive_class
                preds = np.where(probs[:, pos] >= self.threshold, pos, 1 - pos)
            else:
                preds = probs.argmax(axis=1)
        k = self.num_classes
        self._cm += np.bincount(t * k + preds, minlength=k * k).reshape(k, k)
        if probs is not None:
            if self.keep_scores:
                self._grow(len(t))
                self._probs[self._n : self._n + len(t)] = probs
            else:
                rank = _scores._true_class_rank(t, probs)
                for kk in self._topk_hits:
                    self._topk_hits[kk] += int(np.sum(rank < kk))
                self._nll += _scores._nll_sum(t, probs)
                parts = _scores._calibration_sums(t, probs, self.ece_bins)
                for acc, part in zip(self._cal, parts, strict=True):
                    acc += part
        if self.keep_scores and mode == "scores":
            self._targets[self._n : self._n + len(t)] = t  # room made by _grow above
        self._n += len(t)

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """The report of everything fed so far (see ``classification_metrics``)."""
        if self._n == 0:
            raise ValueError("no samples: call update() before compute()")
        names = names_for(class_names, self.num_classes) if class_names else self.class_names
        if self.keep_scores and self._mode == "scores":
            return classification_metrics(
                self._targets[: self._n],
                self._probs[: self._n],
                class_names=names,
                positive_class=self.positive_class,
                threshold=self.threshold,
                top_k=self.top_k,
                num_classes=self.num_classes,
                ece_bins=self.ece_bins,
            )
        sink: list[str] = []
        report = confusion_report(self._cm, names, sink)
        extra: list[str] = []
        if self._mode == "scores":
            report["top_k_accuracy"] = {kk: hits / self._n for kk, hits in self._topk_hits.items()}
            report["log_loss"] = self._nll / self._n
            report["ece"] = _scores._ece_from_sums(*self._cal)
            report["ece_bins"] = self.ece_bins
            report["reliability"] = _scores._reliability_from_sums(*self._cal)
            extra.append(
                "roc_auc, average_precision and roc_auc_ovo need every score: "
                "ClassificationAccumulator(keep_scores=False) reports them as None"
            )
        if self.num_classes == 2:
            used = self.threshold if self._mode == "scores" else None
            binary_section(report, names, self.positive_class, used)
        report = finish_report(report, sink)
        report["warnings"].extend(extra)
        return report
