"""Detectors: torchvision's detection heads on a zoo backbone with a feature pyramid.

``create_detection_model(model, num_classes=K, backbone="resnet18", image_size=S)`` returns a
:class:`Detector`: ``forward(images (N, C, S, S), targets=None)`` gives torchvision's loss dict
in train mode (targets: [{"boxes": (K, 4) xyxy pixels, "labels": (K,) 0..K-1}]) and
[{"boxes", "labels" 0..K-1, "scores"}] in eval mode.

Models (torchvision classes, built with no published weights):

* ``fasterrcnn`` -- Faster R-CNN (Ren et al., 2015): RPN + RoIAlign box head; class 0 is
  background inside torchvision, so labels are shifted by one on the way in and out.
* ``retinanet``  -- RetinaNet (Lin et al., 2017): dense anchors, sigmoid focal loss.
* ``fcos``       -- FCOS (Tian et al., 2019): anchor-free, one "anchor" per location whose size
  is the level's stride (torchvision uses it for centre sampling and scale ranges).
* ``ssdlite``    -- torchvision's SSDlite320 on its own MobileNetV3-Large (the zoo has no
  MobileNet), RGB only; re-sized to the run's image size.

Backbone: a zoo classifier (resnet18/34/50, vgg11_bn, ...) wrapped by
:class:`cnnlab.models.segmentation.Encoder` (forward hooks on ``feature_info`` modules), the last
three stages fed to torchvision's ``FeaturePyramidNetwork`` (``fpn_channels`` wide). Below 64 px
the zoo's small-input ResNet stem gives reductions 2, 4, 8 for those stages; from 64 px the
ImageNet stem gives 8, 16, 32.

``backbone="timm:NAME"``: any of timm's convolutional models through timm's own feature extractor
(``timm.create_model(NAME, features_only=True)``, :class:`cnnlab.models._timm.TimmEncoder`, as
segmentation's ``encoder="timm:NAME"``): the FPN's in-channels per level are the last three of
timm's ``feature_info.channels()`` and FCOS's strides its reductions (8, 16, 32 for most models;
timm's stem is kept at every image size, so ``backbone_variant="small-input"`` is refused).

Anchors scale with the image, not with COCO's 32..512 px: level i of L gets sizes
``S * 0.75 / 2**(L-1-i) * {1, sqrt 2}`` and aspect ratios 0.5, 1, 2, so the largest anchor is
three quarters of the image side whatever the resolution.

The model's own ``GeneralizedRCNNTransform`` neither resizes (min = max = S) nor normalises
(mean 0, std 1): the loader already gives normalised S x S images, as for every other task.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any

from torch import Tensor, nn

from cnnlab.errors import ConfigError, close_matches
from cnnlab.models._registry import TASK_MODELS

log = logging.getLogger(__name__)

DETECTORS = tuple(TASK_MODELS["detection"])  # fasterrcnn, retinanet, fcos, ssdlite
BACKBONE_VARIANTS = ("auto", "imagenet", "small-input")


class FPNBackbone(nn.Module):
    """Zoo encoder -> FPN over its deepest ``levels`` stages; ``forward(x) -> {"0": P, "1": ...}``
    with ``out_channels`` channels each (what torchvision's detectors expect of a backbone)."""

    def __init__(self, encoder: nn.Module, levels: int = 3, fpn_channels: int = 128) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.encoder = encoder
        self.levels = levels
        chs = encoder.channels[-levels:]
        self.reductions = encoder.reductions[-levels:]
        self.fpn = FeaturePyramidNetwork(chs, fpn_channels)
        self.out_channels = fpn_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.encoder(x)[-self.levels :]
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class Detector(nn.Module):
    """A torchvision detector behind cnnlab's label convention (classes 0..K-1)."""

    def __init__(self, net: nn.Module, num_classes: int, label_offset: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.label_offset = label_offset  # 1 where torchvision reserves class 0 for background
        self.default_cfg: dict[str, Any] = {}

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if targets is not None:
            targets = [
                {"boxes": t["boxes"], "labels": t["labels"] + self.label_offset} for t in targets
            ]
        out = self.net(list(images), targets)
        if isinstance(out, dict):  # train mode: the loss dict
            return out
        for d in out:
            d["labels"] = d["labels"] - self.label_offset
        return out


def _anchor_sizes(image_size: int, levels: int) -> tuple[tuple[float, ...], ...]:
    top = 0.75 * image_size
    return tuple(
        (top / 2 ** (levels - 1 - i), top / 2 ** (levels - 1 - i) * math.sqrt(2))
        for i in range(levels)
    )


def _zoo_backbone(
    name: str,
    in_channels: int,
    image_size: int,
    weights: str | None,
    variant: str,
    levels: int,
    fpn_channels: int,
) -> tuple[FPNBackbone, dict[str, Any]]:
    from cnnlab.models import SMALL_INPUT_BELOW, create_model, list_models
    from cnnlab.models._timm import is_timm
    from cnnlab.models.segmentation import Encoder, cnnlab_checkpoint

    if not is_timm(name) and name not in list_models():
        raise ConfigError(
            f"unknown backbone {name!r}{close_matches(name, list_models())}; "
            "choose a zoo model, e.g. resnet18, resnet34, resnet50, or timm:NAME"
        )
    if variant not in BACKBONE_VARIANTS:
        raise ConfigError(
            f"unknown backbone_variant {variant!r}{close_matches(variant, BACKBONE_VARIANTS)}; "
            f"choose from {', '.join(BACKBONE_VARIANTS)}"
        )
    if is_timm(name):
        return _timm_backbone(name, in_channels, image_size, weights, variant, levels, fpn_channels)
    zoo_size = image_size
    if variant == "imagenet":
        zoo_size = max(image_size, SMALL_INPUT_BELOW)
    elif variant == "small-input":
        zoo_size = min(image_size, SMALL_INPUT_BELOW - 1)
    run_source = cnnlab_checkpoint(weights)
    zoo_weights = None if run_source is not None else weights
    net = create_model(
        name,
        num_classes=1000 if zoo_weights else 2,
        in_channels=in_channels,
        weights=zoo_weights,
        image_size=zoo_size,
    )
    cfg = dict(net.default_cfg)
    encoder = Encoder(net)
    if len(encoder.channels) < levels:
        raise ConfigError(f"backbone {name} has {len(encoder.channels)} stages, need {levels}")
    return _with_pyramid(encoder, cfg, zoo_weights, run_source, name, levels, fpn_channels)


def _timm_backbone(
    name: str,
    in_channels: int,
    image_size: int,
    weights: str | None,
    variant: str,
    levels: int,
    fpn_channels: int,
) -> tuple[FPNBackbone, dict[str, Any]]:
    """``timm:NAME``: timm's features_only network (segmentation's TimmEncoder: ``forward`` gives
    one map per stage, shallow first, with ``channels`` and ``reductions`` from timm's
    ``feature_info``) under the same FPN; ``weights`` as segmentation's encoder takes them."""
    from cnnlab.models._timm import create_timm_encoder
    from cnnlab.models.segmentation import cnnlab_checkpoint

    if variant == "small-input":
        raise ConfigError(
            f"backbone_variant small-input is the zoo's stride-1 stem; {name} keeps timm's own "
            "stem: leave --backbone-variant out"
        )
    run_source = cnnlab_checkpoint(weights)
    timm_weights = None if run_source is not None else weights
    encoder = create_timm_encoder(
        name, in_channels=in_channels, weights=timm_weights, image_size=image_size,
        role="backbone", flag="--init-from",
    )  # fmt: skip
    if len(encoder.channels) < levels:
        raise ConfigError(
            f"backbone {name} has {len(encoder.channels)} feature stages in timm, need {levels}; "
            "choose a timm model with more stages, e.g. timm:resnet18, timm:efficientnet_b0"
        )
    reductions = encoder.reductions[-levels:]
    if len(set(reductions)) < levels:  # a plain ViT / MLP-Mixer: every block at stride 16
        log.warning(
            "backbone %s: its last %d stages share reductions %s, so the FPN levels have the same "
            "resolution (no pyramid); a convolutional timm model gives 8, 16, 32",
            name, levels, reductions,
        )  # fmt: skip
    cfg = encoder.default_cfg  # its "variant" is "timm NAME": timm's stem at every size
    source = cfg["weights"] if timm_weights else None
    return _with_pyramid(encoder, cfg, source, run_source, name, levels, fpn_channels)


def _with_pyramid(
    encoder: nn.Module, cfg: dict[str, Any], source: str | None, run_source: Any, name: str,
    levels: int, fpn_channels: int,
) -> tuple[FPNBackbone, dict[str, Any]]:  # fmt: skip
    """The FPN over a zoo or timm ``encoder`` and the record of how it began: a cnnlab
    classification run's tensors (``run_source``, loaded here by name; its mean / std adopted),
    else ``source``, the weights the zoo or timm loaded (their own mean / std, from ``cfg``)."""
    from cnnlab.models.segmentation import load_encoder_from_run

    provenance: dict[str, Any] = {"source": source} if source else {}
    if run_source is not None:
        provenance = load_encoder_from_run(encoder, run_source, name)
    info = {
        "mean": list(provenance.get("mean") or cfg["mean"]),
        "std": list(provenance.get("std") or cfg["std"]),
        "backbone_init": provenance or None,
        "backbone_variant": cfg.get("variant"),
    }
    return FPNBackbone(encoder, levels, fpn_channels), info


def create_detection_model(
    model: str,
    *,
    num_classes: int,
    backbone: str = "resnet18",
    in_channels: int = 3,
    image_size: int = 128,
    backbone_weights: str | None = None,
    backbone_variant: str = "auto",
    fpn_channels: int = 128,
    levels: int = 3,
    box_head_width: int = 256,
) -> Detector:
    """Build a detector (see the module docstring) for ``num_classes`` object classes on
    ``image_size`` x ``image_size`` inputs. ``box_head_width``: Faster R-CNN's two-layer box head
    (torchvision: 1024). ``backbone``: a zoo classifier or ``timm:NAME``. ``backbone_weights``:
    None, "imagenet" / a state-dict file (the zoo or timm loads it; timm's "imagenet" from the
    Hugging Face hub or cache) or a cnnlab classification run / checkpoint of the same backbone."""
    import torchvision.models.detection as tvd
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import MultiScaleRoIAlign

    if model not in DETECTORS:
        raise ConfigError(
            f"unknown detector {model!r}{close_matches(model, DETECTORS)}; "
            f"choose from {', '.join(DETECTORS)}"
        )
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if model == "fcos" and fpn_channels % 32:  # else torch's GroupNorm raises a bare ValueError
        raise ConfigError(
            f"option fpn_channels must be a multiple of 32 for fcos (its head normalises with "
            f"GroupNorm(32, fpn_channels)), got {fpn_channels}"
        )
    s = int(image_size)
    zeros, ones = [0.0] * in_channels, [1.0] * in_channels
    common = {"min_size": s, "max_size": s, "image_mean": zeros, "image_std": ones}
    if model == "ssdlite":
        if in_channels != 3:
            raise ConfigError("ssdlite is torchvision's RGB MobileNetV3 network: use in_channels=3")
        if backbone_weights:
            raise ConfigError("ssdlite's MobileNetV3 is built from scratch here (no zoo backbone)")
        net = tvd.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes + 1
        )
        net.transform = GeneralizedRCNNTransform(
            s, s, zeros, ones, size_divisible=1, fixed_size=(s, s)
        )
        det = Detector(net, num_classes, 1)
        det.default_cfg = {"model": model, "backbone": "mobilenet_v3_large", "mean": None,
                           "std": None, "backbone_init": None}  # fmt: skip
        return det
    body, info = _zoo_backbone(
        backbone, in_channels, s, backbone_weights, backbone_variant, levels, fpn_channels
    )
    names = [str(i) for i in range(levels)]
    if model == "fasterrcnn":
        sizes = _anchor_sizes(s, levels)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels)
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        net = tvd.FasterRCNN(
            body,
            rpn_anchor_generator=anchors,
            # One bilinear sample per 7x7 bin: on the small feature maps used here a bin is
            # under one feature cell, so torchvision's 2x2 samples only repeat the interpolation,
            # and RoIAlign's single-threaded CPU backward was half of a training step.
            box_roi_pool=MultiScaleRoIAlign(names, output_size=7, sampling_ratio=1),
            # Narrower than torchvision's 1024-wide head: a few classes of simple objects do not
            # need it, and the (RoIs, C*7*7) x (C*7*7, 1024) matmuls were a quarter of a step.
            box_head=TwoMLPHead(fpn_channels * 7 * 7, box_head_width),
            box_predictor=FastRCNNPredictor(box_head_width, num_classes + 1),
            # Fewer proposals and sampled RoIs than COCO's 2000/1000/512: small images hold a
            # handful of objects.
            rpn_pre_nms_top_n_train=600,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=100,
            box_batch_size_per_image=64,
            **common,
        )
        offset = 1
    elif model == "retinanet":
        sizes = _anchor_sizes(s, levels)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels)
        net = tvd.RetinaNet(body, num_classes, anchor_generator=anchors, **common)
        offset = 0
    else:  # fcos: one location per cell, its "size" the level's stride
        strides = tuple((float(r),) for r in body.reductions)
        anchors = AnchorGenerator(strides, ((1.0,),) * levels)
        net = tvd.FCOS(body, num_classes, anchor_generator=anchors, **common)
        offset = 0
    det = Detector(net, num_classes, offset)
    if model == "fasterrcnn":
        info = info | {"box_head_width": box_head_width}
    det.default_cfg = {"model": model, "backbone": backbone, **info,
                       "reductions": body.reductions}  # fmt: skip
    return det
