"""Image classification as a task object: the engine asks it for the loss and the metrics, nothing else.

Detection and segmentation plug into the same engine with their own task objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ClassificationTask:
    num_classes: int
    label_smoothing: float = 0.0

    metric_names = ("loss", "accuracy")  # what validation reports (Trainer.evaluate), as val_<name>

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy on the logits (+ weighted auxiliary heads, e.g. GoogLeNet's two, during training).

        Returns {"loss": total, "ce": main head, "correct": number right in the batch (for live accuracy)}.
        """
        logits = model(images)  # N x num_classes
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        total = ce
        for aux in getattr(model, "aux_logits", None) or []:
            total = total + model.aux_weight * F.cross_entropy(
                aux.float(), targets, label_smoothing=self.label_smoothing
            )
        correct = (logits.argmax(1) == targets).sum()
        return {"loss": total, "ce": ce.detach(), "correct": correct}

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x K) from logits, in float32 whatever the autocast dtype."""
        return logits.float().softmax(dim=1)
