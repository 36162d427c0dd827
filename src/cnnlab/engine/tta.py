"""Test-time augmentation (TTA): the model sees several views of each image and the answer is the
mean of the views' (calibrated) probabilities. The one place for the views;
``cnnlab evaluate / predict / serve --tta`` (classification evaluation, the prediction driver's
``probs_fn`` and the web explorer) and segmentation's and detection's ``evaluate / predict --tta
flip`` all come here.

Views (torchvision's ``transforms.v2.functional`` on whole (N, C, H, W) batches of normalised
images; the crops and flip are linear in the pixels, so cropping after normalising is the same as
before):

* the original image, always;
* ``crop``: torchvision's FiveCrop (the four corners and the centre) of side ``CROP_SCALE`` x the
  image side, each resized back to the model's input size (bilinear, antialiased): 5 views more;
* ``shift``: the image moved by ``max(1, side // 16)`` pixels towards each of the four diagonals,
  the uncovered border filled by repeating the edge: 4 views more. These are the views training's
  ``--augment crop`` (random shifts of up to side // 8, cnnlab.data.loader) taught the model, with
  no rescaling, so they suit small inputs whose objects fill the frame (digits), where FiveCrop's
  zoom shows the model something it never saw (measured on the demo run: docs/classification.md);
* ``flip``: the horizontal mirror of every view above (with ``crop``: TenCrop's ten plus the
  original and its mirror).

``flip`` = 2 views, ``crop`` = 6, ``shift`` = 5, and the product with ``flip`` (``flip,crop`` = 12;
``crop,shift`` = 10) forward passes per image.

Calibration: probabilities are ``mean_v softmax(logits_v / T)`` -- the run's temperature T
applied to each view's logits before averaging (T was fitted on single views, so it calibrates a
view; the mean of calibrated probabilities is still a probability vector, whereas averaging logits
first would change what T was fitted for). The out-of-domain score (energy of the raw logits) is
the original view's, since its threshold was fitted on single views too.

Segmentation (``flip`` only): a view's per-pixel class probabilities are mapped back onto the
original image before averaging -- the mirror's probability map is mirrored back -- as
mmsegmentation's ``TTASegModel`` merges its flip augmentation; the mask is the arg-max of the mean.
Crops and shifts would leave pixels that some views never saw (a border, a corner), so they are
refused rather than averaged over a varying number of views.

Detection (``flip`` only): the mirror's boxes are mirrored back (x1 = W - x2) and the two sets are
merged by torchvision's per-class ``batched_nms``, as Ultralytics' ``augment=True`` and mmdet's
``DetTTAModel`` merge theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cnnlab.errors import ConfigError, close_matches

TTA_VIEWS = ("flip", "crop", "shift")  # canonical order; "none" (the default) means no TTA
TTA_CHOICES = "none, or a comma list of flip, crop, shift (e.g. flip,crop)"
SEGMENT_TTA_VIEWS = ("flip",)  # the views whose per-pixel answers map back onto every pixel
CROP_SCALE = 0.875  # FiveCrop side / image side: 224 / 256, the ImageNet evaluation crop ratio


def parse_tta(value: Any) -> tuple[str, ...]:
    """``--tta`` as a tuple of view names in canonical order: ``()`` for None / "" / "none";
    "flip,crop", ["crop", "flip"] -> ("flip", "crop"). An unknown name is a one-line ConfigError
    with the closest names and the allowed values."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    picked: set[str] = set()
    for raw in names:
        name = str(raw).strip().lower()
        if name in ("", "none"):
            continue
        if name not in TTA_VIEWS:
            text = value if isinstance(value, str) else ",".join(map(str, value))
            raise ConfigError(
                f"--tta {text}: unknown view {str(raw).strip()!r}"
                f"{close_matches(name, TTA_VIEWS + ('none',))}; allowed: {TTA_CHOICES}"
            )
        picked.add(name)
    return tuple(v for v in TTA_VIEWS if v in picked)


def num_views(tta: Iterable[str]) -> int:
    """Forward passes per image: 1 + 5 (crop) + 4 (shift), times 2 with flip."""
    tta = tuple(tta)
    return (1 + 5 * ("crop" in tta) + 4 * ("shift" in tta)) * (2 if "flip" in tta else 1)


def tta_views(images: torch.Tensor, tta: Iterable[str]) -> list[torch.Tensor]:
    """The views of a batch ``images (N, C, H, W)``, each (N, C, H, W); the first is ``images``."""
    tta = tuple(tta)
    views = [images]
    if not tta:  # without TTA nothing imports torchvision (`cnnlab predict` starts faster)
        return views
    from torchvision.transforms.v2 import functional as F

    if "crop" in tta:
        h, w = images.shape[-2:]
        size = [max(1, round(h * CROP_SCALE)), max(1, round(w * CROP_SCALE))]
        crops = F.five_crop(images, size)  # tl, tr, bl, br, centre: each N x C x h' x w'
        views += [F.resize(c, [h, w], antialias=True) for c in crops]
    if "shift" in tta:
        views += shifted(images, max(1, min(images.shape[-2:]) // 16))
    if "flip" in tta:
        views += [F.horizontal_flip(v) for v in views]
    return views


def shifted(images: torch.Tensor, d: int) -> list[torch.Tensor]:
    """``images (N, C, H, W)`` moved by ``d`` pixels down-right, down-left, up-right and up-left,
    each (N, C, H, W): pad ``d`` on every side by repeating the edge, then cut the window."""
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (d, d, d, d), mode="replicate")
    # window origin (top, left) in the padded image: 0 shows content moved down/right by d
    return [
        padded[..., t : t + h, l : l + w]
        for t, l in ((0, 0), (0, 2 * d), (2 * d, 0), (2 * d, 2 * d))
    ]


def average_probs(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    tta: Iterable[str],
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``mean_v softmax(logits_fn(view_v) / T)`` (N, K) float32, the original view's raw logits
    (N, K) float32). One forward pass per view, so memory stays that of one batch."""
    probs: torch.Tensor | None = None
    first: torch.Tensor | None = None
    views = tta_views(images, tta)
    for view in views:
        logits = logits_fn(view).float()
        p = (logits / temperature).softmax(dim=1)
        probs = p if probs is None else probs + p
        first = logits if first is None else first
    assert probs is not None and first is not None
    return probs / len(views), first


class TTAModel(nn.Module):
    """``model`` under TTA, for loops that turn a model's output into probabilities with a softmax
    (the Trainer's predict, DDP's sharded predict): ``forward(x) -> log mean_v softmax(f(v) / T)``
    (N, K), whose softmax is the averaged probabilities again (they sum to 1)."""

    def __init__(self, model: nn.Module, tta: Iterable[str], temperature: float = 1.0) -> None:
        super().__init__()
        self.model, self.tta, self.temperature = model, tuple(tta), float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs, _ = average_probs(self.model, x, self.tta, self.temperature)
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()


def compare_views(
    without: dict[str, Any], with_tta: dict[str, Any], tta: Iterable[str]
) -> dict[str, Any]:
    """{"views", "num_views", "without", "with", "change"}: a task's headline metrics of one split
    without and with TTA (``without`` and ``with_tta``: the same keys, numbers or None), change =
    with - without (None where either is undefined). What ``evaluate --tta`` records and prints."""
    tta = tuple(tta)
    change = {
        k: (with_tta[k] - v) if v is not None and with_tta.get(k) is not None else None
        for k, v in without.items()
    }
    return {"views": list(tta), "num_views": num_views(tta), "without": dict(without),
            "with": dict(with_tta), "change": change}  # fmt: skip


# -- segmentation: per-pixel probabilities mapped back onto the image ------------------------------
def check_segment_tta(tta: Iterable[str]) -> tuple[str, ...]:
    """``tta`` (parsed) when every view maps back onto every pixel (flip); else a ConfigError."""
    tta = tuple(tta)
    other = [v for v in tta if v not in SEGMENT_TTA_VIEWS]
    if other:
        raise ConfigError(
            f"--tta {','.join(tta)}: a segmentation run averages per-pixel probabilities over "
            f"views that cover every pixel: {', '.join(SEGMENT_TTA_VIEWS)} "
            f"({', '.join(other)} would leave pixels unseen); use --tta flip"
        )
    return tta


def average_mask_probs(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, tta: Iterable[str]
) -> torch.Tensor:
    """``mean_v unview_v(softmax(logits_fn(view_v)))`` (N, K, H, W) float32 for ``images``
    (N, C, H, W) and a segmentation model's per-pixel logits (N, K, H, W): with ``flip`` the
    mirror's probabilities are mirrored back (pixel x of the mirror is pixel W - 1 - x)."""
    probs = logits_fn(images).float().softmax(dim=1)
    if "flip" in tuple(check_segment_tta(tta)):
        from torchvision.transforms.v2 import functional as F

        mirrored = logits_fn(F.horizontal_flip(images)).float().softmax(dim=1)
        probs = (probs + F.horizontal_flip(mirrored)) / 2
    return probs


class SegmentTTAModel(nn.Module):
    """A segmentation ``model`` under TTA, for code that takes the arg-max of (or resizes) its
    per-pixel logits: ``forward(x) -> log mean_v unview_v(softmax(f(view_v)))`` (N, K, H, W), whose
    arg-max is the averaged probabilities' and whose softmax gives them back."""

    def __init__(self, model: Any, tta: Iterable[str]) -> None:
        super().__init__()
        self.model, self.tta = model, check_segment_tta(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = average_mask_probs(self.model, x, self.tta)
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()


# -- detection: boxes of the mirror mirrored back, the two sets merged by per-class NMS -------------
DETECT_TTA_VIEWS = ("flip",)  # the views whose boxes map back exactly (a mirror is x -> W - x)
MERGE_IOU = 0.5  # per-class NMS IoU of the merge: mmdet's DetTTAModel's tta_cfg (nms 0.5)
MAX_DETECTIONS = 100  # boxes kept per image after the merge: torchvision's detections_per_img,
# COCO's maxDets


def check_detect_tta(tta: Iterable[str]) -> tuple[str, ...]:
    """``tta`` (parsed) when every view's boxes map back exactly (flip); else a ConfigError."""
    tta = tuple(tta)
    other = [v for v in tta if v not in DETECT_TTA_VIEWS]
    if other:
        raise ConfigError(
            f"--tta {','.join(tta)}: a detection run merges the boxes of views it can map back "
            f"exactly: {', '.join(DETECT_TTA_VIEWS)} ({', '.join(other)} would rescale or cut "
            "boxes); use --tta flip"
        )
    return tta


def mirror_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """(B, 4) x1, y1, x2, y2 boxes of an image ``width`` pixels wide -> the same boxes in its
    horizontal mirror (and back: the map is its own inverse): x1' = W - x2, x2' = W - x1."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([width - x2, y1, width - x1, y2], dim=-1)


def merge_detections(
    a: dict[str, torch.Tensor],
    b: dict[str, torch.Tensor],
    iou_threshold: float = MERGE_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> dict[str, torch.Tensor]:
    """Two views' detections of one image ({"boxes" (B, 4), "scores" (B,), "labels" (B,)}, the
    same pixel frame) as one set: concatenated, then torchvision's ``batched_nms`` per class (a
    box of one view suppresses an overlapping box of the same class from either view, as
    Ultralytics' ``augment=True`` and mmdet's ``DetTTAModel`` merge), highest score first."""
    from torchvision.ops import batched_nms

    boxes = torch.cat([a["boxes"], b["boxes"]])
    scores = torch.cat([a["scores"], b["scores"]])
    labels = torch.cat([a["labels"], b["labels"]])
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_threshold)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class DetectTTAModel(nn.Module):
    """A detector under TTA: ``forward(images (N, C, H, W)) -> [{"boxes", "scores", "labels"}]``
    like the detector's, each image's detections merged (:func:`merge_detections`) with those of
    its mirror, whose boxes are mirrored back."""

    def __init__(self, model: Any, tta: Iterable[str]) -> None:
        super().__init__()
        self.model, self.tta = model, check_detect_tta(tta)

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        from torchvision.transforms.v2 import functional as F

        plain = self.model(images)
        if "flip" not in self.tta:
            return plain
        width = images.shape[-1]
        mirrored = self.model(F.horizontal_flip(images))
        return [
            merge_detections(p, m | {"boxes": mirror_boxes(m["boxes"], width)})
            for p, m in zip(plain, mirrored, strict=True)
        ]
