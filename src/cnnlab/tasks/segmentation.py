"""Semantic segmentation as a task object for the shared engine: per-pixel loss, validation metrics.

The trainer asks ``loss(model, images, targets)`` each step and ``validate(trainer, loader)`` after
each epoch; targets are (N, H, W) int64 masks whose ``ignore_index`` pixels count nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.engine.trainer import autocast
from cnnlab.metrics.segmentation import ConfusionAccumulator, quiet_mean_iou


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """1 - mean_k Dice_k of the softmax probabilities on labelled pixels (Milletari et al., 2016):

    Dice_k = (2 sum p_k y_k + 1) / (sum p_k + sum y_k + 1) over the batch; the +1 keeps a class with
    no truth and no probability mass at Dice 1 instead of 0 / 0.
    """
    k = logits.shape[1]
    valid = (targets != ignore_index).unsqueeze(1)  # N x 1 x H x W
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(targets.clamp(0, k - 1), k).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1) / (denom + 1)
    return 1 - dice.mean()


@dataclass
class SegmentationTask:
    num_classes: int
    ignore_index: int = 255
    dice_weight: float = 0.0  # loss = CE + dice_weight * soft Dice loss

    metric_names = ("loss", "accuracy", "miou")  # what validate returns; recorded as val_<name>

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Pixel cross-entropy averaged over labelled pixels (+ Dice). ``correct``: the batch's
        sum of per-image pixel accuracy (correct labelled pixels / labelled pixels of the image)."""
        logits = model(images)  # N x K x H x W
        valid = targets != self.ignore_index
        if bool(valid.any()):
            ce = F.cross_entropy(logits.float(), targets, ignore_index=self.ignore_index)
        else:  # every pixel ignored: CE would be 0/0; a zero that keeps the graph
            ce = logits.float().sum() * 0.0
        total = ce
        if self.dice_weight:
            total = total + self.dice_weight * soft_dice_loss(logits, targets, self.ignore_index)
        with torch.no_grad():
            right = ((logits.argmax(1) == targets) & valid).flatten(1).sum(1)
            correct = (right / valid.flatten(1).sum(1).clamp_min(1)).sum()
        return {"loss": total, "ce": ce.detach(), "correct": correct}

    @torch.inference_mode()
    def validate(self, trainer: Any, loader: Any) -> dict[str, float]:
        """{"loss": CE per labelled pixel, "accuracy": pixel accuracy, "miou": mean IoU over the
        classes present}: the trainer records them as val_loss, val_accuracy, val_miou."""
        model = trainer.model
        was_training = model.training
        model.eval()
        meter = ConfusionAccumulator(self.num_classes, self.ignore_index)
        ce_sum, pixels = 0.0, 0
        for images, targets, _ in loader.batches(0):
            with autocast(trainer.device, trainer.precision):
                logits = model(images)
            n_valid = int((targets != self.ignore_index).sum())
            if n_valid:
                ce_sum += float(
                    F.cross_entropy(
                        logits.float(), targets, reduction="sum", ignore_index=self.ignore_index
                    )
                )
                pixels += n_valid
            meter.update(targets, logits.argmax(1))
        model.train(was_training)
        cm = meter.matrix()
        total = cm.sum()
        return {
            "loss": ce_sum / pixels if pixels else float("nan"),
            "accuracy": float(np.trace(cm) / total) if total else float("nan"),
            "miou": quiet_mean_iou(cm),
        }
