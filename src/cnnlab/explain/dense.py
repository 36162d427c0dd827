"""CAMs for dense tasks: per predicted class of a segmentation network, per detected box of a
detector (computing only; :mod:`cnnlab.report.explain_page` draws them).

* Segmentation: pytorch-grad-cam's ``SemanticSegmentationTarget(c, mask_c)`` (its documented way
  to do CAM for segmentation): the target is ``sum(logits[c] * mask_c)``, the class's logit summed
  over the pixels the network *predicted* as ``c``; the CAM then weighs the feature maps of an
  encoder stage by the gradient of that sum.
* Detection: pytorch-grad-cam's ``FasterRCNNBoxScoreTarget([label], [box])`` for each detected
  box: the score of the output box of that label that overlaps it most (IoU > 0.5), plus that IoU.
  Gradient methods follow it back to a backbone stage; Eigen-CAM (the first principal component of
  the stage's activations, what pytorch-grad-cam's detection tutorial uses) is the same map for
  every box.

The target layer is a ``feature_info`` stage of the zoo backbone inside the network (by default
the last one at least ``DENSE_MIN_CAM_SIZE`` = 4 pixels a side). Maps come back twice: at the
stage's resolution (``(N, h, w)``, min-max scaled by the package) and placed on the image at the
input resolution with :func:`cnnlab.explain.cam.resize_cams` (``(N, H, W)`` in [0, 1]).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlab.errors import ConfigError
from cnnlab.explain.cam import (
    at_layer_size,
    cam_classes,
    cam_target_stage,
    check_methods,
    quiet_scorecam,
    resize_cams,
    stage_shapes,
)

log = logging.getLogger(__name__)

# pixels a side of the target stage by default: a dense task asks *where*, and a 2 x 2 map (a
# ResNet's last stage on 64 px) can only say which quadrant
DENSE_MIN_CAM_SIZE = 4


@dataclass
class DenseCams:
    """CAMs of one image for a list of targets (classes of a mask, or boxes).

    ``maps[method]`` and ``layer_maps[method]``: ``(len(targets), H, W)`` and ``(len(targets), h,
    w)`` float32 in [0, 1]; ``targets[i]`` describes target ``i`` (class, area or box, score).
    """

    targets: list[dict[str, Any]]
    maps: dict[str, np.ndarray]
    layer_maps: dict[str, np.ndarray]
    target_layer: str  # module path inside the whole network
    target_shape: tuple[int, ...]  # (C, h, w) of that stage
    methods: list[str] = field(default_factory=list)

    def to_dict(self, decimals: int = 4) -> dict[str, Any]:
        """Every target with its maps (nested lists, rounded): the explain.json view."""
        entries = []
        for i, target in enumerate(self.targets):
            for method in self.methods:
                entries.append(
                    {
                        **target,
                        "method": method,
                        "map": np.round(self.maps[method][i], decimals).tolist(),
                        "layer_map": np.round(self.layer_maps[method][i], decimals).tolist(),
                    }
                )
        return {
            "target_layer": self.target_layer,
            "target_shape": list(self.target_shape),
            "methods": list(self.methods),
            "entries": entries,
        }


def backbone_path(model: nn.Module) -> str:
    """Path of the zoo backbone (the module with ``feature_info``) inside a segmentation network
    or detector: ``encoder.backbone`` (U-Net, FCN, ...), ``net.backbone.encoder.backbone``."""
    for name, module in model.named_modules():
        # a list of stage dicts: the zoo's (timm's features_only FeatureInfo object is not one)
        if name and isinstance(getattr(module, "feature_info", None), list) and module.feature_info:
            return name
    raise ConfigError(
        f"{type(model).__name__} has no zoo backbone with feature_info stages to explain "
        "(torchvision's complete builders and ssdlite bring their own backbones)"
    )


def _run_cams(
    model: nn.Module,
    images: Tensor,
    targets: Sequence[Any],
    *,
    method: str,
    layer: nn.Module,
) -> np.ndarray:
    """The package's CAM of ``images[i]`` for ``targets[i]`` at the layer's resolution."""
    with (
        at_layer_size(cam_classes()[method])(model=model, target_layers=[layer]) as cam,
        quiet_scorecam(),
    ):
        out = cam(input_tensor=images, targets=list(targets))
    model.zero_grad(set_to_none=True)
    return np.asarray(out, dtype=np.float32)


def _stage(model: nn.Module, image: Tensor, stage: str | None) -> tuple[str, dict]:
    """(backbone path, its target stage): ``stage`` by name, else the last stage at least
    ``DENSE_MIN_CAM_SIZE`` a side (the last at least ``MIN_CAM_SIZE`` when none is)."""
    path = backbone_path(model)
    backbone = model.get_submodule(path)
    size, channels = tuple(image.shape[-2:]), image.shape[1]
    if stage is not None:
        return path, cam_target_stage(backbone, size, channels, stage)
    big = [
        f
        for f in stage_shapes(backbone, size, channels)
        if min(f["output_shape"][-2:]) >= DENSE_MIN_CAM_SIZE
    ]
    return path, big[-1] if big else cam_target_stage(backbone, size, channels)


def _dense_cams(
    model: nn.Module,
    image: Tensor,
    cam_targets: list[Any],
    described: list[dict[str, Any]],
    methods: Sequence[str],
    stage: str | None,
) -> DenseCams:
    if image.dim() != 4 or image.shape[0] != 1:
        raise ConfigError(f"expected one image shaped (1, C, H, W), got {tuple(image.shape)}")
    methods = check_methods(methods)
    path, info = _stage(model, image, stage)
    layer = model.get_submodule(f"{path}.{info['module']}")
    p = next(model.parameters())
    x = image.to(device=p.device, dtype=p.dtype)
    model.eval()
    maps: dict[str, np.ndarray] = {}
    layer_maps: dict[str, np.ndarray] = {}
    size = tuple(image.shape[-2:])
    for method in methods:
        if not cam_targets:
            raw = np.zeros((0, *info["output_shape"][-2:]), np.float32)
        else:  # one copy of the image per target (the network is in eval mode: independent)
            batch = x.expand(len(cam_targets), -1, -1, -1)
            raw = _run_cams(model, batch, cam_targets, method=method, layer=layer)
        layer_maps[method] = raw
        maps[method] = (
            np.clip(resize_cams(raw, size, info.get("reduction")), 0.0, 1.0).astype(np.float32)
            if len(raw)
            else np.zeros((0, *size), np.float32)
        )
    return DenseCams(
        targets=described,
        maps=maps,
        layer_maps=layer_maps,
        target_layer=f"{path}.{info['module']}",
        target_shape=tuple(info["output_shape"]),
        methods=list(methods),
    )


def segmentation_cams(
    model: nn.Module,
    image: Tensor,
    mask: np.ndarray,
    classes: Sequence[int],
    *,
    methods: Sequence[str] = ("gradcam",),
    stage: str | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> DenseCams:
    """CAM per class of ``classes`` on one normalised image ``(1, C, H, W)``, the target of class
    ``c`` being its logit summed over ``mask == c`` (``mask``: the predicted ``(H, W)`` classes;
    pixels at ``ignore_index``, such as the fit mode's padding, are no part of the image: no
    class's target, and not counted in a class's ``area``)."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    mask = np.asarray(mask)
    if mask.shape != tuple(image.shape[-2:]):
        raise ConfigError(f"mask {mask.shape} does not match the image {tuple(image.shape[-2:])}")
    targets, described = [], []
    image_pixels = max(int((mask != ignore_index).sum()), 1)
    for c in classes:
        region = (mask == int(c)).astype(np.float32)
        targets.append(SemanticSegmentationTarget(int(c), region))
        described.append(
            {
                "class": str(class_names[int(c)]) if class_names else str(int(c)),
                "index": int(c),
                "area": round(float(region.sum()) / image_pixels, 6),  # share of the image's
            }
        )
    return _dense_cams(model, image, targets, described, methods, stage)


def detection_cams(
    model: nn.Module,
    image: Tensor,
    boxes: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float],
    *,
    methods: Sequence[str] = ("gradcam",),
    stage: str | None = None,
    class_names: Sequence[str] | None = None,
) -> DenseCams:
    """CAM per detected box (``boxes (N, 4)`` xyxy pixels of the input, ``labels`` 0..K-1 as the
    detector outputs them) on one normalised image ``(1, C, H, W)``."""
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    targets, described = [], []
    for box, label, score in zip(boxes, labels, scores, strict=True):
        targets.append(FasterRCNNBoxScoreTarget([int(label)], torch.from_numpy(box[None])))
        described.append(
            {
                "class": str(class_names[int(label)]) if class_names else str(int(label)),
                "index": int(label),
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
            }
        )
    return _dense_cams(model, image, targets, described, methods, stage)
