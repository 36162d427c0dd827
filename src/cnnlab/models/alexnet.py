"""AlexNet (Krizhevsky et al., 2012) as torchvision builds it.

torchvision's AlexNet is the single-GPU variant of "One weird trick for parallelizing
convolutional neural networks" (Krizhevsky, 2014): 64/192/384/256/256 filters, no local response
normalisation. ImageNet variant (image_size >= 64 or None):

    conv 11x11/4 (64) -> ReLU -> max-pool 3x3/2      # N x 64 x 27 x 27 at 224 px
    conv 5x5 (192)    -> ReLU -> max-pool 3x3/2      # N x 192 x 13 x 13
    conv 3x3 (384, 256, 256) + ReLU -> max-pool 3x3/2  # N x 256 x 6 x 6
    adaptive average pool 6x6 -> flatten (9,216)
    dropout -> FC 4096 -> ReLU -> dropout -> FC 4096 -> ReLU -> output

Small-input variant (image_size < 64; a 63 px image already ends at 1x1 with the stride-4 stem):
the first conv keeps its 11x11 kernel and padding "same" (5) but uses stride 1, so a 32 px image
ends at 3x3 (28 px: 2x2) instead of vanishing. Everything else -- including the 6x6 pool and the
9,216 -> 4096 classifier -- is unchanged, so the parameter count and every ImageNet tensor still
fit (the 6x6 pool repeats the few pixels; stated in ``default_cfg["variant"]``).
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
from ._registry import register_model

logger = logging.getLogger(__name__)


class AlexNet(ClassifierModel):
    """torchvision's AlexNet modules behind the cnnlab surface."""

    classifier_path = "classifier.6"
    first_conv_path = "features.0"

    def __init__(self, num_classes: int, in_channels: int, image_size: int | None) -> None:
        super().__init__()
        # torchvision here, not at the top: importing it takes about a second (its ops load
        # torch._dynamo), which a LeNet-5 run never needs (the registry imports every family)
        import torchvision

        tv = torchvision.models.alexnet(weights=None, num_classes=num_classes)
        small = image_size is not None and image_size < SMALL_INPUT_BELOW
        self.features = tv.features
        if small:
            self.features[0] = replace_conv(
                tv.features[0], in_channels=in_channels, stride=1, padding=5
            )
        elif in_channels != 3:
            self.features[0] = replace_conv(tv.features[0], in_channels=in_channels)
        self.avgpool = tv.avgpool  # AdaptiveAvgPool2d((6, 6))
        self.flatten = nn.Flatten()
        self.classifier = tv.classifier

        r = 1 if small else 4  # stride of the first conv
        self._stages = [
            ("stage1", ("features.0", "features.1", "features.2")),
            ("stage2", ("features.3", "features.4", "features.5")),
            ("stage3", tuple(f"features.{i}" for i in range(6, 13))),
            ("head", ("avgpool", "flatten", "classifier")),
        ]
        self.feature_info = [
            {"name": "features.2", "module": "features.2", "stage": "stage1", "num_chs": 64,
             "reduction": 2 * r},
            {"name": "features.5", "module": "features.5", "stage": "stage2", "num_chs": 192,
             "reduction": 4 * r},
            {"name": "features.12", "module": "features.12", "stage": "stage3", "num_chs": 256,
             "reduction": 8 * r},
        ]  # fmt: skip
        size = 224 if image_size is None else image_size
        variant = (
            "small input: first conv 11x11 stride 1 padding 5; 6x6 average pool kept"
            if small
            else "ImageNet: first conv 11x11 stride 4"
        )
        self.default_cfg = make_default_cfg(
            in_channels=in_channels,
            image_size=size,
            num_classes=num_classes,
            small_input=small,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            variant=variant,
            pool_size=(6, 6),
        )
        logger.info("alexnet at %d px: %s", size, variant)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # N x 256 x 6 x 6 at 224 px

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(features)))


@register_model(
    "alexnet",
    family="alexnet",
    year=2012,
    paper="ImageNet Classification with Deep Convolutional Neural Networks "
    "(Krizhevsky, Sutskever & Hinton, NeurIPS 2012); torchvision follows arXiv:1404.5997",
    paper_url="https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks",
    input_size=(3, 224, 224),
    small_input_below=SMALL_INPUT_BELOW,
    description="AlexNet: 5 conv layers (11x11, 5x5, 3x3 x3), 3 max-pools, 3 FC layers, "
    "ReLU and dropout",
)
def alexnet(*, num_classes: int, in_channels: int, image_size: int | None) -> AlexNet:
    return AlexNet(num_classes, in_channels, image_size)
