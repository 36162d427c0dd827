"""EfficientNet-B0..B7 (Tan & Le, 2019) and EfficientNetV2-S/M/L (Tan & Le, 2021).

B0 is a searched MobileNetV3-like stack of MBConv blocks (inverted residuals: 1x1 expand,
depthwise conv, squeeze-and-excitation, 1x1 project; see :mod:`cnnlab.models.mobilenet`);
B1..B7 scale its depth, width and input resolution together (compound scaling). V2 replaces the
early MBConv blocks by Fused-MBConv (one full 3x3 conv instead of 1x1 expand + depthwise).

torchvision's modules and names; small inputs: see :mod:`cnnlab.models._modern`. torchvision's
published weights were trained at larger sizes than 224 for B1..B7 and V2 (``default_cfg`` gives
each weight's resize/crop once loaded).
"""

from __future__ import annotations

from ._base import SMALL_INPUT_BELOW
from ._modern import FeaturesNet
from ._registry import register_model

# name -> the resolution the paper trained it at (the weights' crop size)
_V1 = {f"efficientnet_b{i}": s for i, s in enumerate((224, 240, 288, 300, 380, 456, 528, 600))}
_V2 = {"efficientnet_v2_s": 384, "efficientnet_v2_m": 480, "efficientnet_v2_l": 480}


def _register(name: str, size: int) -> None:
    v2 = name in _V2
    variant = name.rsplit("_", 1)[-1].upper()

    @register_model(
        name,
        family="efficientnet",  # V2 too: one family, and the zoo table keeps 80 columns
        year=2021 if v2 else 2019,
        paper=(
            "EfficientNetV2: Smaller Models and Faster Training (Tan & Le, ICML 2021)"
            if v2
            else "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks "
            "(Tan & Le, ICML 2019)"
        ),
        paper_url="https://arxiv.org/abs/2104.00298" if v2 else "https://arxiv.org/abs/1905.11946",
        input_size=(3, size, size),
        small_input_below=SMALL_INPUT_BELOW,
        description=(
            f"EfficientNetV2-{variant}: Fused-MBConv early, MBConv with squeeze-excite late"
            if v2
            else f"EfficientNet-{variant}: MBConv blocks with squeeze-excite, compound-scaled"
        ),
        group="modern",
    )
    def build(*, num_classes: int, in_channels: int, image_size: int | None) -> FeaturesNet:
        return FeaturesNet(
            name,
            family="efficientnet",
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            default_size=size,
        )


for _name, _size in (_V1 | _V2).items():
    _register(_name, _size)
