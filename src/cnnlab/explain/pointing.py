"""The pointing game: does a CAM point at the object? (Zhang et al. 2016, "Top-down neural attention
by excitation backprop"), on ``builtin:shapes`` where every image has a ground-truth mask.

For each test image, with the map of the *predicted* class:

* **hit** when the map's maximum (first ``argmax`` in row-major order) lies inside the shape's mask
  grown by ``tolerance`` pixels (Chebyshev distance: a ``(2t+1) x (2t+1)`` square dilation).
  The original game allows 15 px at 224 px; at 32-48 px, 1 px (the default) is the same
  allowance for the bilinear upsampling of a coarse map. ``pointing_accuracy = hits / N``.
* **IoU** between the thresholded map ``map >= threshold * max(map)`` (default 0.5 of the
  maximum) and the mask: ``|A & B| / |A | B|``; ``mean_iou`` averages over images.

Two baselines that ignore the image are reported beside it: the *centre baseline* (always point
at the image centre) and the *random baseline* (the expected hit rate of a uniformly random point:
the mean fraction of the image covered by the grown mask).

Measured (``benchmarks/bench_pointing_game.py``, CPU): on ``builtin:shapes`` the shapes are large
(radius 15-30% of the side), so the centre baseline is already 55-75%; Grad-CAM of LeNet-5 (48 px,
flatten + fully connected head) peaks on the shapes' *edges*, often just outside the mask, and of
ResNet-18 at 24 px (a 3 x 3 last stage) lands in the right third of the image -- both below 90%.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from cnnlab.errors import ConfigError

from .cam import compute_cams

log = logging.getLogger(__name__)

TOLERANCE_PX = 1  # pixels (Chebyshev) around the mask that still count as a hit
IOU_THRESHOLD = 0.5  # fraction of the map's maximum that counts as "on"

# The training recipe the benchmark and the slow test use: LeNet-5 is the only zoo model that trains
# in about a minute on two CPU cores; 48 px gives it a 9 x 9 last stage (5 x 5 at 32 px).
SHAPES_RECIPE: dict[str, Any] = {
    "data": "builtin:shapes?n=3000&size=48&seed=0",
    "model": "lenet5",
    "epochs": 12,
    "batch_size": 64,
    "lr": 0.02,
    "augment": (),
    "seed": 0,
}


def _grown(mask: np.ndarray, tolerance: int) -> np.ndarray:
    mask = np.asarray(mask) > 0
    if tolerance <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=tolerance)


def point_hits(maps: np.ndarray, masks: np.ndarray, tolerance: int = TOLERANCE_PX) -> np.ndarray:
    """(N,) bool: is each map's argmax inside its mask (grown by ``tolerance`` px)?"""
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.shape != masks.shape:
        raise ConfigError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    hits = np.zeros(len(maps), dtype=bool)
    for i, (m, mask) in enumerate(zip(maps, masks, strict=True)):
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        hits[i] = bool(_grown(mask, tolerance)[r, c])
    return hits


def map_ious(maps: np.ndarray, masks: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """(N,) IoU of ``map >= threshold * max(map)`` with ``mask > 0`` (0 when both are empty)."""
    maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks) > 0
    peak = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
    on = (maps >= threshold * peak) & (peak > 0)
    inter = (on & masks).sum((1, 2))
    union = (on | masks).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def centre_hits(masks: np.ndarray, tolerance: int = TOLERANCE_PX) -> np.ndarray:
    """(N,) bool: the baseline that always points at the image centre."""
    masks = np.asarray(masks)
    h, w = masks.shape[-2:]
    r, c = (h - 1) // 2, (w - 1) // 2
    return np.array([_grown(m, tolerance)[r, c] for m in masks], dtype=bool)


def random_baseline(masks: np.ndarray, tolerance: int = TOLERANCE_PX) -> float:
    """Expected hit rate of a uniformly random point: mean area fraction of the grown masks."""
    return float(np.mean([_grown(m, tolerance).mean() for m in np.asarray(masks)]))


def pointing_game(
    model: nn.Module,
    images: Tensor,
    masks: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    targets: np.ndarray | None = None,
    method: str = "gradcam",
    target_layer: str | None = None,
    tolerance: int = TOLERANCE_PX,
    threshold: float = IOU_THRESHOLD,
    batch_size: int = 64,
) -> dict[str, Any]:
    """The pointing game on uint8 ``images (N, C, H, W)``, ``masks (N, H, W)`` (> 0: object).

    Images are normalised ``(x / 255 - mean) / std``; the map is the CAM of the predicted class.
    Returns ``pointing_accuracy``, ``mean_iou``, ``centre_baseline``, ``random_baseline``,
    ``num_images``, ``classification_accuracy`` (when ``targets`` is given), the settings used,
    and per-image ``hits`` / ``ious`` lists.
    """
    images = torch.as_tensor(images)
    masks = np.asarray(masks)
    if images.dim() != 4 or masks.shape != (images.shape[0], *images.shape[-2:]):
        raise ConfigError(
            f"pointing_game needs images (N, C, H, W) and masks (N, H, W); got "
            f"{tuple(images.shape)} and {masks.shape}"
        )
    p = next(model.parameters())
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = ((images.float() / 255 - m) / s).to(p.device)
    model.eval()
    with torch.inference_mode():
        preds = torch.cat(
            [
                model(x[i : i + batch_size].to(p.dtype)).argmax(1)
                for i in range(0, len(x), batch_size)
            ]
        ).cpu()
    maps = compute_cams(
        model, x, preds, method=method, target_layer=target_layer, batch_size=batch_size
    )
    hits = point_hits(maps, masks, tolerance)
    ious = map_ious(maps, masks, threshold)
    result: dict[str, Any] = {
        "method": method,
        "num_images": int(len(hits)),
        "pointing_accuracy": float(hits.mean()),
        "mean_iou": float(ious.mean()),
        "centre_baseline": float(centre_hits(masks, tolerance).mean()),
        "random_baseline": random_baseline(masks, tolerance),
        "tolerance_px": int(tolerance),
        "iou_threshold": float(threshold),
        "hits": hits.tolist(),
        "ious": ious.tolist(),
    }
    if targets is not None:
        result["classification_accuracy"] = float((preds.numpy() == np.asarray(targets)).mean())
    return result


def shapes_pointing_game(
    run_or_checkpoint: str | Path,
    *,
    n: int = 200,
    seed: int = 12345,
    methods: Sequence[str] = ("gradcam", "gradcam++"),
    tolerance: int = TOLERANCE_PX,
    threshold: float = IOU_THRESHOLD,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """The pointing game for a run trained on ``builtin:shapes``: ``{method: pointing_game(...)}``.

    Test images are freshly generated (``make_shapes(n, size=the model's image size, seed=seed)``;
    pick a seed other than the training one so no image was seen in training).
    """
    from cnnlab.api import load_checkpoint_model
    from cnnlab.config import PreprocessSpec
    from cnnlab.data.builtin import SHAPE_CLASSES, make_shapes
    from cnnlab.data.tensors import arrays_to_chw

    model, meta, _ = load_checkpoint_model(run_or_checkpoint, device)
    if list(meta["class_names"]) != list(SHAPE_CLASSES):
        raise ConfigError(
            f"{run_or_checkpoint}: the pointing game needs a model trained on builtin:shapes "
            f"(classes {', '.join(SHAPE_CLASSES)}); this one has {meta['class_names']}"
        )
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    data = make_shapes(n, spec.image_size, seed=seed)
    images = torch.from_numpy(arrays_to_chw(data.images, spec))
    return {
        method: pointing_game(
            model,
            images,
            data.masks,
            mean=spec.mean,
            std=spec.std,
            targets=data.targets,
            method=method,
            tolerance=tolerance,
            threshold=threshold,
        )
        for method in methods
    }
