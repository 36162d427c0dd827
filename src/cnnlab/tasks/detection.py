"""Object detection as a task object for the shared engine.

``loss(model, images, targets)``: the sum of the detector's loss dict (torchvision returns its
parts: classification + box regression, + objectness for Faster R-CNN's RPN). ``correct`` is 0:
detection has no per-image accuracy; the epoch's quality is ``val_map50`` from ``validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnlab.engine.trainer import Callback, autocast


@dataclass
class DetectionTask:
    class_names: list[str]
    last_validation: dict[str, Any] | None = field(default=None, repr=False)

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        parts = model(images, targets)
        total = sum(v.float() for v in parts.values())
        return {"loss": total, "correct": torch.zeros(()), **{k: v.detach() for k, v in
                                                              parts.items()}}  # fmt: skip

    @torch.inference_mode()
    def predict(self, trainer: Any, loader: Any) -> tuple[list[dict], list[dict]]:
        """(predictions, targets) over a loader, in eval mode; restores the mode after."""
        model = trainer.model
        was_training = model.training
        model.eval()
        preds, targets = [], []
        for images, batch_targets, _ in loader.batches(0):
            with autocast(trainer.device, trainer.precision):
                out = model(images)
            preds += [{k: v.float() if v.is_floating_point() else v for k, v in o.items()}
                      for o in out]  # fmt: skip
            targets += batch_targets
        model.train(was_training)
        return preds, targets

    def validate(self, trainer: Any, loader: Any) -> dict[str, float]:
        """{"loss": NaN (torchvision detectors give no loss in eval mode, and a train-mode pass
        would update BatchNorm statistics), "accuracy": mAP@0.5}; the full metrics are kept in
        ``last_validation`` for :class:`ValidationMetrics`."""
        from cnnlab.metrics.detection import detection_metrics

        preds, targets = self.predict(trainer, loader)
        metrics = detection_metrics(preds, targets, self.class_names)
        self.last_validation = metrics
        m50 = metrics["map_50"]
        return {"loss": float("nan"), "accuracy": float("nan") if m50 is None else m50}


class ValidationMetrics(Callback):
    """Adds ``val_map50`` and ``val_map`` to the epoch's metrics; must precede the CSV logger,
    checkpoint and early-stopping callbacks (they read the same dict afterwards)."""

    def __init__(self, task: DetectionTask) -> None:
        self.task = task

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        v = self.task.last_validation
        if v is not None:
            metrics["val_map50"] = float("nan") if v["map_50"] is None else v["map_50"]
            metrics["val_map"] = float("nan") if v["map"] is None else v["map"]
            self.task.last_validation = None
