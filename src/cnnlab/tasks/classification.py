"""Image classification as a task object: the engine asks it for the loss and the metrics, nothing else.

Detection and segmentation plug into the same engine with their own task objects; multi-label
classification (several labels per image) is :class:`MultiLabelTask` below.

The loss is cross-entropy or focal loss, optionally weighted per class (docs/imbalance.md):

* cross-entropy: l_i = -log p_{i, y_i};
* focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"):
  l_i = -(1 - p_t)^gamma log p_t with p_t = p_{i, y_i}; gamma = 0 is cross-entropy;
* class weights w (alpha in the focal-loss paper) multiply each sample's loss by w_{y_i}, and the
  batch loss is the mean over the batch's B samples, sum_i w_{y_i} l_i / B (Keras' ``class_weight``),
  not PyTorch's weighted mean sum_i w_{y_i} l_i / sum_i w_{y_i}: with weights that average 1 over
  the training samples (``--class-weights auto``) the loss keeps its unweighted scale on average,
  so the learning rate needs no change.

Mixed batches (``--augment mixup`` / ``cutmix``, cnnlab.data.augment) come with soft targets t,
(N, K) probabilities: cross-entropy becomes -sum_k w_k t_k log p_k (PyTorch's probability targets;
label smoothing then mixes t with the uniform distribution). Cross-entropy is linear in t, so with
t = lam * onehot(a) + (1 - lam) * onehot(b) the loss is lam * CE(a) + (1 - lam) * CE(b), with or
without smoothing (tested). A mixed image's training accuracy counts a prediction right when it
names the class with the larger share of the mix (the soft target's argmax); a 50/50 mix is
credited to either class. That is not the accuracy of a clean image: judge the run by val_accuracy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.metrics import multilabel as ml
from cnnlab.metrics.checks import UndefinedMetricWarning

LOSSES = ("ce", "focal")


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the batch of w_{y_i} * -(1 - p_t)^gamma log p_t; logits (N, K), targets (N,).

    1 - p_t is computed as -expm1(log p_t) (exact near p_t = 1) and kept above the smallest
    positive float, so gamma < 1 has a finite gradient where the model is certain."""
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, targets[:, None]).squeeze(1)  # N
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    loss = -one_minus_pt.pow(gamma) * log_pt
    if weight is not None:
        loss = loss * weight[targets]
    return loss.mean()


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    criterion: str = "ce",
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
) -> torch.Tensor:
    """The batch loss of one head (see the module docstring); logits (N, K) float32; targets (N,)
    class indices or (N, K) float soft targets (mixed batches; cross-entropy only)."""
    if criterion == "focal":
        if targets.is_floating_point():
            raise ValueError("focal loss takes class indices, not soft (mixed) targets")
        return focal_loss(logits, targets, focal_gamma, weight)
    if criterion != "ce":
        raise ValueError(f"criterion must be one of {LOSSES}, got {criterion!r}")
    if weight is None:  # unweighted: exactly the call of runs trained before class weights existed
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    per_sample = F.cross_entropy(
        logits, targets, weight=weight, reduction="none", label_smoothing=label_smoothing
    )
    return per_sample.mean()


def balanced_accuracy(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Mean over the classes present in `targets` of their recall (scikit-learn's
    ``balanced_accuracy_score``: classes without true samples are left out)."""
    true_count = torch.bincount(targets, minlength=num_classes)
    hits = torch.bincount(targets[preds == targets], minlength=num_classes)
    present = true_count > 0
    if not bool(present.any()):
        return float("nan")
    return (hits[present].double() / true_count[present].double()).mean().item()


@dataclass
class ClassificationTask:
    num_classes: int
    label_smoothing: float = 0.0
    # (K,) per-class loss weights (alpha of the focal loss), or None for unweighted
    class_weights: Sequence[float] | None = None
    criterion: str = "ce"  # "ce" | "focal" (TrainConfig.loss)
    focal_gamma: float = 2.0

    # what validation reports (Trainer.evaluate), recorded as val_<name>
    metric_names = ("loss", "accuracy", "balanced_accuracy")

    def __post_init__(self) -> None:
        if self.criterion not in LOSSES:
            raise ValueError(f"criterion must be one of {LOSSES}, got {self.criterion!r}")
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(
                f"{len(self.class_weights)} class weights for {self.num_classes} classes"
            )
        self._weight: torch.Tensor | None = None  # class_weights on the logits' device

    def _weights_on(self, device: torch.device) -> torch.Tensor | None:
        if self.class_weights is None:
            return None
        if self._weight is None or self._weight.device != device:
            self._weight = torch.tensor(
                [float(w) for w in self.class_weights], dtype=torch.float32, device=device
            )
        return self._weight

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The criterion on the logits (+ weighted auxiliary heads, e.g. GoogLeNet's two, during training).

        Returns {"loss": total, "ce": main head, "correct": number right in the batch (for live accuracy)}.
        """
        logits = model(images)  # N x num_classes
        kw: dict[str, Any] = {
            "criterion": self.criterion,
            "weight": self._weights_on(logits.device),
            "label_smoothing": self.label_smoothing,
            "focal_gamma": self.focal_gamma,
        }
        main = classification_loss(logits.float(), targets, **kw)
        total = main
        for aux in getattr(model, "aux_logits", None) or []:
            total = total + model.aux_weight * classification_loss(aux.float(), targets, **kw)
        # mixed batches: right when the prediction is the class with the larger share of the mix
        labels = targets.argmax(1) if targets.is_floating_point() else targets
        correct = (logits.argmax(1) == labels).sum()
        return {"loss": total, "ce": main.detach(), "correct": correct}

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x K) from logits, in float32 whatever the autocast dtype."""
        return logits.float().softmax(dim=1)

    def validate(self, trainer: Any, loader: Any) -> dict[str, float]:
        """{"loss", "accuracy", "balanced_accuracy"} over a validation loader (see metrics_from_probs)."""
        probs, targets = trainer.predict(loader)
        return self.metrics_from_probs(probs, targets)

    def metrics_from_probs(self, probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Validation metrics of (N, K) probabilities: the mean negative log-likelihood (unweighted,
        whatever the training loss), accuracy and balanced accuracy (mean per-class recall)."""
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), targets).item()
        preds = probs.argmax(1)
        return {
            "loss": nll,
            "accuracy": (preds == targets).float().mean().item(),
            "balanced_accuracy": balanced_accuracy(preds, targets, probs.shape[1]),
        }


@dataclass
class MultiLabelTask:
    """Multi-label classification: L independent yes/no answers per image (docs/classification.md).

    Loss: binary cross-entropy on the logits, one sigmoid per label, averaged over the N x L cells
    (``BCEWithLogitsLoss``); ``pos_weight`` (L,) multiplies each label's positive term, so with
    pos_weight_l = negatives_l / positives_l (``--class-weights auto``) a rare label's few positives
    weigh as much as its many negatives (PyTorch's documented use of it). Validation reports the
    loss, subset accuracy (every label right) and, at threshold 0.5, macro F1 and mAP."""

    num_labels: int
    pos_weight: Sequence[float] | None = None

    metric_names = ("loss", "accuracy", "macro_f1", "map")

    def __post_init__(self) -> None:
        if self.pos_weight is not None and len(self.pos_weight) != self.num_labels:
            raise ValueError(
                f"{len(self.pos_weight)} pos_weight values for {self.num_labels} labels"
            )
        self._pos_weight: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        """The number of outputs, as every classification task names it (one per label)."""
        return self.num_labels

    def _pos_weight_on(self, device: torch.device) -> torch.Tensor | None:
        if self.pos_weight is None:
            return None
        if self._pos_weight is None or self._pos_weight.device != device:
            self._pos_weight = torch.tensor(
                [float(w) for w in self.pos_weight], dtype=torch.float32, device=device
            )
        return self._pos_weight

    def _bce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits.float(), targets.float(), pos_weight=self._pos_weight_on(logits.device)
        )

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """{"loss": BCE (+ weighted auxiliary heads), "ce": main head's BCE, "correct": images
        whose every label is right at 0.5}; targets (N, L) 0/1."""
        logits = model(images)  # N x L
        main = self._bce(logits, targets)
        total = main
        for aux in getattr(model, "aux_logits", None) or []:
            total = total + model.aux_weight * self._bce(aux, targets)
        correct = ((logits >= 0).long() == targets).all(dim=1).sum()  # sigmoid >= 0.5
        return {"loss": total, "ce": main.detach(), "correct": correct}

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        """Per-label probabilities (N x L) = sigmoid(logits), float32."""
        return logits.float().sigmoid()

    def validate(self, trainer: Any, loader: Any) -> dict[str, float]:
        probs, targets = trainer.predict(loader)
        return self.metrics_from_probs(probs, targets)

    def metrics_from_probs(self, probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Unweighted BCE of the probabilities, subset accuracy, macro F1 and mAP at 0.5 (labels
        where F1 / AP are undefined in this split are left out; 0.0 when none is defined)."""
        t = targets.numpy().astype("int64")
        p = probs.clamp(1e-7, 1 - 1e-7)
        bce = F.binary_cross_entropy(p, targets.float()).item()
        preds = ml.decide(probs.numpy(), 0.5)
        with warnings.catch_warnings():  # every epoch: say nothing of labels absent from val
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            f1 = ml.averaged(t, preds, "macro")["f1"]
            ap = ml.mean_average_precision(t, probs.numpy())
        return {
            "loss": bce,
            "accuracy": ml.subset_accuracy(t, preds),
            "macro_f1": 0.0 if math.isnan(f1) else f1,
            "map": 0.0 if math.isnan(ap) else ap,
        }
