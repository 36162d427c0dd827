"""ResNet-18/34/50/101/152 (He et al., 2015) on torchvision's blocks.

ImageNet variant (image_size >= 64 or None): torchvision's network unchanged
    conv 7x7/2 -> BN -> ReLU -> max-pool 3x3/2   # N x 64 x 56 x 56 at 224 px
    layer1 .. layer4 (residual blocks)           # reductions 4, 8, 16, 32
    global average pool -> flatten -> fc

Small-input variant (image_size < 64), the CIFAR stem of the paper's section 4.2:
    conv 3x3/1 -> BN -> ReLU (no max-pool)       # N x 64 x 32 x 32 at 32 px
    layer1 .. layer4                             # reductions 1, 2, 4, 8 -> 4x4 at 32 px

State-dict keys are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``, ``fc.weight``),
so torchvision and timm ResNet checkpoints load without renaming.
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


class ResNet(ClassifierModel):
    """torchvision's ResNet modules behind the cnnlab surface."""

    classifier_path = "fc"
    first_conv_path = "conv1"

    def __init__(
        self, depth: int, num_classes: int, in_channels: int, image_size: int | None
    ) -> None:
        super().__init__()
        # torchvision here, not at the top: importing it takes about a second (its ops load
        # torch._dynamo), which a LeNet-5 run never needs (the registry imports every family)
        import torchvision

        tv = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
        small = image_size is not None and image_size < SMALL_INPUT_BELOW
        self.conv1: nn.Conv2d = tv.conv1
        if small:
            self.conv1 = replace_conv(
                tv.conv1, in_channels=in_channels, kernel_size=3, stride=1, padding=1
            )
        elif in_channels != 3:
            self.conv1 = replace_conv(tv.conv1, in_channels=in_channels)
        if self.conv1 is not tv.conv1:  # same init as torchvision gives its convs
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small:  # a 7x7 ImageNet stem kernel does not fit the 3x3 stem: re-initialise it
            self.reinit_on_mismatch = ("conv1",)
        self.bn1 = tv.bn1
        self.relu = tv.relu
        self.maxpool: nn.Module = nn.Identity() if small else tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            tv.layer1,
            tv.layer2,
            tv.layer3,
            tv.layer4,
        )
        self.avgpool = tv.avgpool
        self.flatten = nn.Flatten()
        self.fc = tv.fc

        width = 1 if depth < 50 else 4  # Bottleneck blocks expand channels 4x
        stem_reduction = 1 if small else 2
        first = 1 if small else 4
        self._stages = [
            ("stem", ("conv1", "bn1", "relu", "maxpool")),
            ("layer1", ("layer1",)),
            ("layer2", ("layer2",)),
            ("layer3", ("layer3",)),
            ("layer4", ("layer4",)),
            ("head", ("avgpool", "flatten", "fc")),
        ]
        self.feature_info = [
            {"name": "relu", "module": "relu", "stage": "stem", "num_chs": 64,
             "reduction": stem_reduction},
        ] + [
            {"name": f"layer{i + 1}", "module": f"layer{i + 1}", "stage": f"layer{i + 1}",
             "num_chs": 64 * 2**i * width, "reduction": first * 2**i}
            for i in range(4)
        ]  # fmt: skip
        size = 224 if image_size is None else image_size
        variant = (
            "small input: 3x3 stride-1 stem conv, no max-pool (CIFAR ResNet stem)"
            if small
            else "ImageNet: 7x7 stride-2 stem conv + 3x3 stride-2 max-pool"
        )
        self.default_cfg = make_default_cfg(
            in_channels=in_channels,
            image_size=size,
            num_classes=num_classes,
            small_input=small,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            variant=variant,
        )
        logger.info("resnet%d at %d px: %s", depth, size, variant)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x 56 x 56 at 224 px
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # N x 512*width x 7 x 7 at 224 px

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(features)))  # N x num_classes


def _register(depth: int, block: str) -> None:
    @register_model(
        f"resnet{depth}",
        family="resnet",
        year=2015,
        paper="Deep Residual Learning for Image Recognition (He et al., CVPR 2016)",
        paper_url="https://arxiv.org/abs/1512.03385",
        input_size=(3, 224, 224),
        small_input_below=SMALL_INPUT_BELOW,
        description=f"ResNet-{depth}: {block} residual blocks, identity shortcuts",
    )
    def build(*, num_classes: int, in_channels: int, image_size: int | None) -> ResNet:
        return ResNet(depth, num_classes, in_channels, image_size)


for _depth, _block in ((18, "basic"), (34, "basic"), (50, "bottleneck"), (101, "bottleneck"),
                       (152, "bottleneck")):  # fmt: skip
    _register(_depth, _block)
