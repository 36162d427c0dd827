"""Where the model looks: class activation maps (CAMs) and gradient saliency (computing only).

* CAM methods come from the ``grad-cam`` package (``pytorch_grad_cam``). Grad-CAM (Selvaraju et
  al. 2017) weighs the target layer's feature maps ``A_k`` (``K x h x w``) by the spatial mean of
  the gradient of the class score ``y_c`` (the logit, before softmax)::

      cam_c = ReLU( sum_k  mean_ij(dy_c / dA_k[i, j]) * A_k )          # h x w

  then min-max scales it to [0, 1], resizes it bilinearly to the input's H x W and min-max
  scales it again (what ``pytorch_grad_cam`` does). Grad-CAM++
  (Chattopadhay et al. 2018) uses second-order weights; Eigen-CAM takes the first principal
  component of the activations (class independent); Score-CAM weighs each map by the score
  change it causes when used as a mask; LayerCAM, XGradCAM and HiResCAM are also available.
* The target layer is a stage of the model's ``feature_info`` (no code per architecture): by
  default the last stage whose map is at least ``MIN_CAM_SIZE`` pixels on each side. At small
  inputs VGG's last stage is 1 x 1 (five 2 x 2 pools on 32 px), where a CAM can only be a constant,
  so the stage before it is used.
* Resizing puts each cell of the ``h x w`` map where its receptive field is centred: cells are
  ``reduction`` pixels apart (the stage's ``feature_info`` stride) and the grid is centred in
  the image, ``centre_i = (H - 1 - reduction * (h - 1)) / 2 + reduction * i``. With "same"
  padding this is exactly the package's half-pixel resize (``(i + 0.5) * H / h - 0.5``); with
  unpadded convolutions (LeNet-5: 48 px -> a 9 x 9 map whose centres span pixels 7.5..39.5)
  the package's resize stretches the map over the whole image and moves peaks by up to 5 px.
* Gradient saliency (Simonyan et al. 2014): ``S[i, j] = max_c |dy_class / dx[c, i, j]|``, scaled
  to [0, 1] by its maximum. Hand-written with autograd: it is two lines, and captum would be a
  dependency for one function.

All maps are NumPy float32 arrays ``(H, W)`` in [0, 1] at the input resolution.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnlab.errors import ConfigError, close_matches

log = logging.getLogger(__name__)

MIN_CAM_SIZE = 2  # pixels per side of the target feature map; 1 x 1 gives a constant map


def cam_classes() -> dict[str, type]:
    from pytorch_grad_cam import (
        EigenCAM,
        GradCAM,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        ScoreCAM,
        XGradCAM,
    )

    return {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "eigencam": EigenCAM,
        "scorecam": ScoreCAM,
        "layercam": LayerCAM,
        "xgradcam": XGradCAM,
        "hirescam": HiResCAM,
    }


def at_layer_size(cls: type) -> type:
    """``cls`` returning maps at the target layer's resolution: ``get_target_width_height`` is
    the package's hook for the resize size, and ``None`` skips its resize (min-max kept)."""
    return type(cls.__name__, (cls,), {"get_target_width_height": lambda self, x: None})


CAM_METHODS = ("gradcam", "gradcam++", "eigencam", "scorecam", "layercam", "xgradcam", "hirescam")
CLASS_INDEPENDENT = frozenset({"eigencam"})  # the same map whatever class is asked for


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """Validated method names (lower case); unknown names raise :class:`ConfigError`."""
    if isinstance(methods, str):
        methods = (methods,)
    out = []
    for m in methods:
        key = str(m).lower().replace("_", "").replace("-", "")
        key = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(key, key)
        if key not in CAM_METHODS:
            raise ConfigError(
                f"unknown CAM method {m!r}{close_matches(str(m), CAM_METHODS)}; "
                f"choose from {', '.join(CAM_METHODS)}"
            )
        out.append(key)
    return tuple(dict.fromkeys(out))


def stage_shapes(model: nn.Module, image_size: tuple[int, int], in_channels: int) -> list[dict]:
    """``feature_info`` entries with the ``(C, h, w)`` each stage outputs at ``image_size``."""
    info = [dict(f) for f in getattr(model, "feature_info", [])]
    if not info:
        raise ConfigError(f"{type(model).__name__} has no feature_info stages to explain")
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(f["module"]).register_forward_hook(
            lambda m, i, o, path=f["module"]: shapes.__setitem__(path, tuple(o.shape[1:]))
        )
        for f in info
    ]
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, in_channels, *image_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for f in info:
        f["output_shape"] = shapes[f["module"]]
    return info


def cam_target_stage(
    model: nn.Module, image_size: tuple[int, int], in_channels: int, stage: str | None = None
) -> dict:
    """The ``feature_info`` stage a CAM is computed on (with its ``output_shape``).

    ``stage`` picks one by ``name`` or ``stage`` label; default: the last stage whose map is at
    least ``MIN_CAM_SIZE`` x ``MIN_CAM_SIZE`` (the last stage when none is).
    """
    info = stage_shapes(model, image_size, in_channels)
    if stage is not None:
        for f in info:
            if stage in (f["name"], f.get("stage")):
                return f
        labels = [f.get("stage", f["name"]) for f in info]
        raise ConfigError(
            f"unknown stage {stage!r}{close_matches(stage, labels)}; "
            f"choose from {', '.join(labels)}"
        )
    big = [f for f in info if min(f["output_shape"][-2:]) >= MIN_CAM_SIZE]
    return big[-1] if big else info[-1]


@dataclass
class CamSet:
    """CAMs and saliency for some classes of one image. maps[method][class index] -> (H, W)."""

    classes: list[int]  # class indices, in the order asked (top-k: best first)
    maps: dict[str, dict[int, np.ndarray]]
    target_layer: str  # module path of the feature_info stage
    target_shape: tuple[int, ...]  # (C, h, w) of that stage
    class_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Shapes and where each map peaks (row, col), not the maps."""
        peaks = {
            method: {
                (self.class_names[c] if self.class_names else str(c)): list(
                    np.unravel_index(int(np.argmax(m)), m.shape)
                )
                for c, m in per_class.items()
            }
            for method, per_class in self.maps.items()
        }
        return {
            "classes": [self.class_names[c] if self.class_names else c for c in self.classes],
            "methods": list(self.maps),
            "target_layer": self.target_layer,
            "target_shape": list(self.target_shape),
            "peaks": {
                m: {k: [int(v) for v in rc] for k, rc in d.items()} for m, d in peaks.items()
            },
        }


def _cell_coords(cells: int, size: int, reduction: float | None) -> Tensor:
    """(size,) position of each pixel in cell units (cell ``i`` centred at pixel ``off + r*i``)."""
    r = float(reduction) if reduction else size / cells
    if r * (cells - 1) > size - 1:  # the stage's stride does not fit: spread cells evenly
        r = size / cells
    off = (size - 1 - r * (cells - 1)) / 2
    return (torch.arange(size, dtype=torch.float32) - off) / r


def resize_cams(maps: np.ndarray, size: tuple[int, int], reduction: float | None) -> np.ndarray:
    """Bilinear resize of ``maps (N, h, w)`` to ``(N, H, W)``, cells at their receptive fields.

    Hand-written (``grid_sample``): ``pytorch_grad_cam`` and OpenCV resize assume the map tiles
    the whole image, which unpadded convolutions break. Beyond the outermost cell centres the
    edge value is kept (as half-pixel resizing does). Each map is min-max scaled to [0, 1]
    afterwards, as the package does.
    """
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    (h, w), (height, width) = t.shape[-2:], size
    # grid_sample with align_corners=True: -1 and +1 are the centres of the first and last cells
    gy = 2 * _cell_coords(h, height, reduction) / max(h - 1, 1) - 1
    gx = 2 * _cell_coords(w, width, reduction) / max(w - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)  # H x W x (x, y)
    out = torch.nn.functional.grid_sample(
        t,
        grid.expand(len(t), -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )[:, 0]
    out = out - out.flatten(1).amin(1).view(-1, 1, 1)
    return (out / (out.flatten(1).amax(1).view(-1, 1, 1) + 1e-7)).numpy()


@contextlib.contextmanager
def quiet_scorecam() -> Iterator[None]:
    """Score-CAM draws a tqdm progress bar on stderr for every batch of every image; its module
    refers to ``tqdm.tqdm``, which is swapped for a plain iteration while a CAM is computed."""
    from pytorch_grad_cam import score_cam

    saved = score_cam.tqdm
    score_cam.tqdm = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    try:
        yield
    finally:
        score_cam.tqdm = saved


def _check_image(image: Tensor) -> None:
    if image.dim() != 4:
        raise ConfigError(f"expected images shaped (N, C, H, W), got {tuple(image.shape)}")


def compute_cams(
    model: nn.Module,
    images: Tensor,
    classes: Sequence[int] | Tensor,
    *,
    method: str = "gradcam",
    target_layer: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """CAM of ``images[i]`` (normalised, ``(N, C, H, W)``) for class ``classes[i]``.

    Returns ``(N, H, W)`` float32 in [0, 1]. ``target_layer``: a ``feature_info`` stage name or
    label (default: see :func:`cam_target_stage`). The model is put in eval mode; parameter
    gradients it accumulates are cleared afterwards.
    """
    _check_image(images)
    (method,) = check_methods((method,))
    classes = [int(c) for c in (classes.tolist() if isinstance(classes, Tensor) else classes)]
    if len(classes) != images.shape[0]:
        raise ConfigError(f"{len(classes)} classes given for {images.shape[0]} images")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    stage = cam_target_stage(model, tuple(images.shape[-2:]), images.shape[1], target_layer)
    layer = model.get_submodule(stage["module"])
    p = next(model.parameters())
    model.eval()
    out = []
    # the package computes the map at the layer's own h x w; resize_cams places it on the image
    with (
        at_layer_size(cam_classes()[method])(model=model, target_layers=[layer]) as cam,
        quiet_scorecam(),
    ):
        if method == "scorecam":
            cam.batch_size = batch_size  # masked forward passes per batch
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device=p.device, dtype=p.dtype)
            targets = [ClassifierOutputTarget(c) for c in classes[start : start + batch_size]]
            out.append(cam(input_tensor=x, targets=targets))
    model.zero_grad(set_to_none=True)
    maps = resize_cams(np.concatenate(out), tuple(images.shape[-2:]), stage.get("reduction"))
    # min-max scaled; clip the float noise of the 1e-7 guard
    return np.clip(maps, 0.0, 1.0).astype(np.float32)


def gradient_saliency(
    model: nn.Module, images: Tensor, classes: Sequence[int] | Tensor
) -> np.ndarray:
    """Vanilla gradient saliency ``max_c |d logit_class / d x[c]|``, ``(N, H, W)`` in [0, 1].

    Each image's map is divided by its maximum (an all-zero gradient stays all zero).
    """
    _check_image(images)
    classes_t = torch.as_tensor(
        classes.tolist() if isinstance(classes, Tensor) else list(classes), dtype=torch.int64
    )
    p = next(model.parameters())
    x = images.detach().to(device=p.device, dtype=p.dtype).requires_grad_(True)
    model.eval()
    with torch.enable_grad():
        logits = model(x)
        # samples are independent in eval mode, so one backward of the sum gives every gradient
        picked = logits.gather(1, classes_t.to(logits.device).view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(picked, x)
    sal = grad.abs().amax(dim=1).float()  # N x H x W
    peak = sal.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (sal / peak).cpu().numpy().astype(np.float32)


def explain_classes(
    model: nn.Module,
    image: Tensor,
    classes: Sequence[int],
    *,
    methods: Sequence[str] = ("gradcam", "gradcam++"),
    saliency: bool = True,
    target_layer: str | None = None,
    class_names: Sequence[str] | None = None,
) -> CamSet:
    """Every method's map for each of ``classes`` on one normalised image ``(1, C, H, W)``.

    Keys of ``CamSet.maps``: the method names, plus ``"saliency"`` when asked.
    """
    _check_image(image)
    if image.shape[0] != 1:
        raise ConfigError(f"explain_classes takes one image (1, C, H, W), got {tuple(image.shape)}")
    methods = check_methods(methods)
    classes = [int(c) for c in classes]
    stage = cam_target_stage(model, tuple(image.shape[-2:]), image.shape[1], target_layer)
    batch = image.expand(len(classes), -1, -1, -1)
    maps: dict[str, dict[int, np.ndarray]] = {}
    for method in methods:
        result = compute_cams(model, batch, classes, method=method, target_layer=stage["name"])
        maps[method] = {c: result[i] for i, c in enumerate(classes)}
    if saliency:
        result = gradient_saliency(model, batch, classes)
        maps["saliency"] = {c: result[i] for i, c in enumerate(classes)}
    return CamSet(
        classes=classes,
        maps=maps,
        target_layer=stage["name"],
        target_shape=tuple(stage["output_shape"]),
        class_names=list(class_names) if class_names is not None else [],
    )


@dataclass(frozen=True)
class HeadKind:
    """What a classifier does between its last feature map and its class scores.

    ``kind``: ``"gap"`` (global pooling of each map, then linear: CAMs can differ per class),
    ``"fully connected"`` (the flattened maps feed fully connected layers that mix all positions)
    or ``"unknown"``. ``last_map``: (C, h, w) entering the head; ``flatten_length``: the vector
    length; ``fc_layers``: fully connected layers including the output layer.
    """

    kind: str
    last_map: tuple[int, ...] | None
    flatten_length: int | None
    fc_layers: int


def head_kind(trace: Any) -> HeadKind:
    """Read the head from a :class:`cnnlab.explain.trace.Trace`: a GAP head pools the last map
    to 1 x 1 (the vector has C values); a fully connected head flattens C x h x w > C values."""
    spatial = [layer for layer in trace.layers if layer.is_spatial]
    last = tuple(spatial[-1].output_shape) if spatial else None
    fc = sum(layer.kind in ("fully connected", "output") for layer in trace.layers)
    length = trace.flatten_length
    if last is None or length is None:
        return HeadKind("unknown", last, length, fc)
    channels, cells = last[0], int(np.prod(last[1:]))
    if cells == 1 and length == channels:
        return HeadKind("gap", last, length, fc)
    if cells > 1 and length == channels * cells:
        return HeadKind("fully connected", last, length, fc)
    return HeadKind("unknown", last, length, fc)


def map_similarity(maps: dict[int, np.ndarray]) -> float | None:
    """Mean Pearson correlation over every pair of class maps (1: the classes' maps look the
    same); None for fewer than two maps or a constant one."""
    flat = [np.asarray(m, dtype=np.float64).reshape(-1) for m in maps.values()]
    if len(flat) < 2 or any(f.std() == 0 for f in flat):
        return None
    corr = np.corrcoef(np.stack(flat))
    upper = corr[np.triu_indices(len(flat), k=1)]
    return float(upper.mean())
