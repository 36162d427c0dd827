"""The pointing game: does a CAM point at the object? (Zhang et al. 2016, "Top-down neural attention
by excitation backprop"), on ``builtin:shapes`` where every image has a ground-truth mask.

For each test image, with the map of the *predicted* class:

* **hit** when the map's maximum (first ``argmax`` in row-major order; ``tied_peaks`` counts the
  maps whose maximum is reached at more than one pixel) lies inside the shape's mask grown by
  ``tolerance`` pixels (Chebyshev distance: a ``(2t+1) x (2t+1)`` square dilation). The original
  game allows 15 px at 224 px. Here 1 px (the default) is the allowance for the map's grid: an
  8 x 8 map at 32 px knows the maximum's position only to its 4 px cell spacing. Every result
  also carries ``pointing_by_tolerance`` (0, 1 and 2 px): the zero-tolerance figure is reported
  beside the tolerant one. ``pointing_accuracy = hits / N``.
* **IoU** between the thresholded map ``map >= threshold * max(map)`` (default 0.5 of the
  maximum) and the mask: ``|A & B| / |A | B|``; ``mean_iou`` averages over images.

Two baselines that ignore the image are reported beside it: the *centre baseline* (always point
at the image centre) and the *random baseline* (the expected hit rate of a uniformly random point:
the mean fraction of the image covered by the grown mask).

Why LeNet-5 failed and what the recipe changes (measured on 300 fresh images, see
``docs/explain.md`` and ``benchmarks/results/pointing_game.md``):

* The resize. CAMs used to be stretched over the whole image (the package's resize), but LeNet's
  unpadded convolutions leave a map whose cells are centred on the image's middle part only
  (48 px: a 9 x 9 map centred on pixels 7.5 .. 39.5); peaks moved by up to 5 px, mostly off the
  shape. ``cam.resize_cams`` now puts every cell on its receptive field's centre: LeNet-5's
  Grad-CAM at 48 px went from 0.28 to 0.61 (1 px), 0.18 to 0.39 (0 px).
* The head. LeNet-5's flatten + FC layers learn position-specific templates, and its Grad-CAM
  marks evidence *around* the shape (the background beside an edge counts too). CAM methods
  assume "last conv -> global average pool -> linear" (Zhou et al. 2016), where Grad-CAM on the
  last conv equals the class evidence at each position. ``lenet5_gap`` is LeNet-5 with that
  head (see ``cnnlab.models.lenet``); at 32 px its last map is 8 x 8 (4 px cells, "same"
  padding) with a 24 px receptive field, about the size of the largest shapes.
* Not the generator: shapes stay uniformly placed (centre uniform in ``[r, size - r]``), and
  the classifiers reach 0.98-1.00 test accuracy, so the shape itself is what they learned.
* Ties: the first ``argmax`` is kept. LeNet-5's 5 x 5 map leaves a 7.5 px border strip that holds
  the edge cell's value, so 177 of 300 maps have a plateau maximum; ``lenet5_gap``'s default
  layer had none.

Measured with ``SHAPES_RECIPE`` over three training seeds (300 fresh images each): Grad-CAM
0.96-1.00 at 1 px and 0.85-0.94 at 0 px, mean IoU 0.47-0.53; the centre baseline is 0.59 (1 px)
/ 0.46 (0 px), a random point 0.19 / 0.13. LeNet-5 on the same data: 0.75 / 0.60.
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

from .cam import cam_target_stage, compute_cams

log = logging.getLogger(__name__)

TOLERANCE_PX = 1  # pixels (Chebyshev) around the mask that still count as a hit
IOU_THRESHOLD = 0.5  # fraction of the map's maximum that counts as "on"

# The training recipe the benchmark and the slow test use: LeNet-5 with a global-average-pooled
# head (the network CAM methods assume) at 32 px, where its CAM layer is 8 x 8; about one to
# two minutes on two CPU cores. The shapes' own random positions are the augmentation.
SHAPES_RECIPE: dict[str, Any] = {
    "data": "builtin:shapes?n=3000&size=32&seed=0",
    "model": "lenet5_gap",
    "epochs": 10,
    "batch_size": 64,
    "lr": 0.05,
    "augment": (),
    "seed": 0,
}
TOLERANCES = (0, 1, 2)  # pixels; every result reports the hit rate at each


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


def tied_peaks(maps: np.ndarray) -> np.ndarray:
    """(N,) bool: is each map's maximum reached at more than one pixel (argmax then takes the
    first in row-major order)?"""
    flat = np.asarray(maps).reshape(len(maps), -1)
    return (flat == flat.max(1, keepdims=True)).sum(1) > 1


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
    Returns ``pointing_accuracy`` (at ``tolerance``), ``pointing_by_tolerance`` (``{"0": ...,
    "1": ..., "2": ...}``), ``tied_peaks``, ``mean_iou``, ``centre_baseline``,
    ``random_baseline``, ``num_images``, ``classification_accuracy`` (when ``targets`` is given),
    the settings used (``target_layer``: the stage's name), and per-image ``hits`` / ``ious``.
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
    stage = cam_target_stage(model, tuple(x.shape[-2:]), x.shape[1], target_layer)
    maps = compute_cams(
        model, x, preds, method=method, target_layer=stage["name"], batch_size=batch_size
    )
    hits = point_hits(maps, masks, tolerance)
    ious = map_ious(maps, masks, threshold)
    result: dict[str, Any] = {
        "method": method,
        "target_layer": stage["name"],
        "target_shape": list(stage["output_shape"]),  # (C, h, w) of the map before resizing
        "image_size": list(x.shape[-2:]),
        "num_images": int(len(hits)),
        "pointing_accuracy": float(hits.mean()),
        "pointing_by_tolerance": {
            str(t): float(point_hits(maps, masks, t).mean())
            for t in sorted({*TOLERANCES, tolerance})
        },
        "tied_peaks": int(tied_peaks(maps).sum()),
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
    target_layer: str | None = None,
    tolerance: int = TOLERANCE_PX,
    threshold: float = IOU_THRESHOLD,
    device: str = "cpu",
) -> dict[str, dict[str, Any]]:
    """The pointing game for a run trained on ``builtin:shapes``: ``{method: pointing_game(...)}``.

    Test images are freshly generated (``make_shapes(n, size=the model's image size, seed=seed)``;
    pick a seed other than the training one so no image was seen in training). ``target_layer``:
    a ``feature_info`` stage name or label (default: the last stage, see ``cam_target_stage``).
    """
    from cnnlab.config import PreprocessSpec
    from cnnlab.data.builtin import SHAPE_CLASSES, make_shapes
    from cnnlab.data.tensors import arrays_to_chw
    from cnnlab.engine.weights import load_checkpoint_model

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
            target_layer=target_layer,
            tolerance=tolerance,
            threshold=threshold,
        )
        for method in methods
    }
