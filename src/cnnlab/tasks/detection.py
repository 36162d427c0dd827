"""Object detection as a task object for the shared engine.

``loss(model, images, targets)``: the sum of the detector's loss dict (torchvision returns its
parts: classification + box regression, + objectness for Faster R-CNN's RPN). ``correct`` is 0:
detection has no per-image accuracy; the epoch's quality is ``val_map50`` (and ``val_map``) from
``validate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.engine.trainer import autocast


@dataclass
class DetectionTask:
    class_names: list[str]

    metric_names = ("map50", "map")  # what validate returns; recorded as val_map50, val_map
    reports_accuracy = False  # no per-image accuracy: epochs record no train_accuracy

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
        """{"map50": COCO mAP@0.5, "map": mAP@[.5:.95]} (NaN when undefined). No loss: torchvision
        detectors give none in eval mode, and a train-mode pass would update BatchNorm statistics."""
        from cnnlab.metrics.detection import detection_metrics

        preds, targets = self.predict(trainer, loader)
        metrics = detection_metrics(preds, targets, self.class_names)
        return {
            name: float("nan") if metrics[key] is None else float(metrics[key])
            for name, key in (("map50", "map_50"), ("map", "map"))
        }
