"""Machinery the modern backbones share (MobileNet, EfficientNet, ConvNeXt, RegNet, ShuffleNet).

Each is torchvision's network with its module names (so torchvision's ImageNet weights load
without renaming and the parameter counts equal torchvision's at 1000 classes), behind the
cnnlab surface of :mod:`cnnlab.models._base`.

Small inputs (image_size < 64): these networks reduce the image 32x (7x7 maps at 224 px), which
leaves 1x1 at 32 px. As for the CIFAR ResNet stem, the small-input variant keeps the layers but
takes out the first two stride-2 steps -- the stem's and the first down-sampling block's (ConvNeXt:
its 4x4 stride-4 "patchify" stem becomes a 3x3 stride-1 conv) -- so the total reduction is 8 and a
32 px image ends as a 4x4 map. Only strides change (except ConvNeXt's stem kernel), so ImageNet
weights still load into every layer.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from ._base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SMALL_INPUT_BELOW,
    ClassifierModel,
    make_default_cfg,
    replace_conv,
)

logger = logging.getLogger(__name__)

SMALL_VARIANT = "small input: first two stride-2 steps at stride 1 (total reduction 8, not 32)"


def is_small(image_size: int | None) -> bool:
    return image_size is not None and image_size < SMALL_INPUT_BELOW


def stride_of(module: nn.Module) -> int:
    """The down-sampling factor of ``module``: the largest conv stride in it (each block of these
    families down-samples at most once; ShuffleNet's two branches do it in parallel)."""
    strides = [m.stride[0] for m in module.modules() if isinstance(m, nn.Conv2d)]
    return max(strides, default=1)


def out_channels_of(module: nn.Module) -> int:
    """Channels ``module`` outputs: those of its last conv (a block's projection)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def unstride(module: nn.Module) -> None:
    """Every stride-2 conv in ``module`` at stride 1 (same padding, so the map keeps its size)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.stride[0] > 1:
            m.stride = (1, 1)


def init_conv(conv: nn.Conv2d, family: str) -> None:
    """A replaced stem conv, initialised as torchvision initialises the family's convs."""
    if family == "convnext":
        nn.init.trunc_normal_(conv.weight, std=0.02)
    else:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def default_cfg(
    name: str,
    *,
    small: bool,
    in_channels: int,
    image_size: int | None,
    num_classes: int,
    default_size: int = 224,
) -> dict:
    size = default_size if image_size is None else image_size
    variant = SMALL_VARIANT if small else "ImageNet: torchvision's network (total reduction 32)"
    logger.info("%s at %d px: %s", name, size, variant)
    return make_default_cfg(
        in_channels=in_channels,
        image_size=size,
        num_classes=num_classes,
        small_input=small,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        variant=variant,
    )


class FeaturesNet(ClassifierModel):
    """A torchvision network of the form ``features`` (a Sequential) -> average pool ->
    ``classifier`` (MobileNetV2/V3, EfficientNet, ConvNeXt).

    Stages (``stage1`` ...): a stage starts at each down-sampling child of ``features`` (the
    ImageNet strides) and runs up to the next; its last child's output is the stage's feature map.
    """

    first_conv_path = "features.0.0"

    def __init__(
        self,
        name: str,
        *,
        family: str,
        num_classes: int,
        in_channels: int,
        image_size: int | None,
        default_size: int = 224,  # px, the side the paper trained at (EfficientNet-B1..: more)
    ) -> None:
        super().__init__()
        # torchvision here, not at the top: importing it takes about a second (see resnet.py)
        import torchvision

        tv = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        self.features: nn.Sequential = tv.features
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # torchvision's (MobileNetV2's is functional)
        # ConvNeXt's classifier flattens itself (LayerNorm2d -> Flatten -> Linear)
        self.flatten: nn.Module = nn.Identity() if family == "convnext" else nn.Flatten()
        self.classifier: nn.Sequential = tv.classifier
        linears = [i for i, m in enumerate(self.classifier) if isinstance(m, nn.Linear)]
        self.classifier_path = f"classifier.{linears[-1]}"

        # Stages from the ImageNet strides, so both variants have the same stages (for
        # freezing "stages:N"): a child that down-samples starts a new one.
        groups: list[list[int]] = []  # child indices per stage
        for i, child in enumerate(self.features):
            if groups and stride_of(child) == 1:
                groups[-1].append(i)
            else:
                groups.append([i])

        small = is_small(image_size)
        stem: nn.Conv2d = self.features[0][0]
        if small and family == "convnext":  # 4x4 stride-4 patchify -> 3x3 stride 1
            new = replace_conv(stem, in_channels=in_channels, kernel_size=3, stride=1, padding=1)
            self.reinit_on_mismatch = (self.first_conv_path,)
        elif small:
            new = replace_conv(stem, in_channels=in_channels, stride=1)
            # the first down-sampling block after the stem runs at stride 1 too
            first_down = next(m for m in list(self.features)[1:] if stride_of(m) > 1)
            unstride(first_down)
        elif in_channels != 3:
            new = replace_conv(stem, in_channels=in_channels)
        else:
            new = stem
        if new is not stem:
            init_conv(new, family)
            self.features[0][0] = new

        self._stages = [
            (f"stage{k + 1}", tuple(f"features.{i}" for i in idx)) for k, idx in enumerate(groups)
        ] + [("head", ("avgpool", "flatten", "classifier"))]
        self.feature_info, reduction = [], 1
        for k, idx in enumerate(groups):
            for i in idx:
                reduction *= stride_of(self.features[i])  # the variant's strides
            last = self.features[idx[-1]]
            self.feature_info.append(
                {"name": f"features.{idx[-1]}", "module": f"features.{idx[-1]}",
                 "stage": f"stage{k + 1}", "num_chs": out_channels_of(last),
                 "reduction": reduction}
            )  # fmt: skip
        self.default_cfg = default_cfg(
            name,
            small=small,
            in_channels=in_channels,
            image_size=image_size,
            num_classes=num_classes,
            default_size=default_size,
        )

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # N x C x 7 x 7 at 224 px; N x C x 4 x 4 at 32 px (small input)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(features)))  # N x num_classes
