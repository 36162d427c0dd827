"""ConvNeXt-T/S/B/L (Liu et al., 2022): a ResNet modernised step by step towards a transformer.

A 4x4 stride-4 "patchify" stem, four stages of ConvNeXt blocks with down-sampling (layer norm +
2x2 stride-2 conv) between them. A ConvNeXt block: 7x7 depthwise conv, layer norm, a 1x1 conv
(a fully connected layer applied at each pixel) expanding the channels 4x, GELU, a 1x1 back,
scaled per channel (layer scale), plus the shortcut.

torchvision's modules and names; small inputs (< 64 px): the stem becomes a 3x3 stride-1 conv
(re-initialised when ImageNet weights are loaded), see :mod:`cnnlab.models._modern`.
"""

from __future__ import annotations

from ._base import SMALL_INPUT_BELOW
from ._modern import FeaturesNet
from ._registry import register_model

_SIZES = {"tiny": "T", "small": "S", "base": "B", "large": "L"}


def _register(size: str) -> None:
    name = f"convnext_{size}"

    @register_model(
        name,
        family="convnext",
        year=2022,
        paper="A ConvNet for the 2020s (Liu et al., CVPR 2022)",
        paper_url="https://arxiv.org/abs/2201.03545",
        input_size=(3, 224, 224),
        small_input_below=SMALL_INPUT_BELOW,
        description=f"ConvNeXt-{_SIZES[size]}: patchify stem, 7x7 depthwise blocks, layer norm, "
        "GELU",
        group="modern",
    )
    def build(*, num_classes: int, in_channels: int, image_size: int | None) -> FeaturesNet:
        return FeaturesNet(
            name,
            family="convnext",
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
        )


for _size in _SIZES:
    _register(_size)
