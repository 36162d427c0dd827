"""ShuffleNetV2 x0.5 / x1.0 / x1.5 / x2.0 (Ma et al., 2018).

A 3x3 stride-2 conv and a 3x3 stride-2 max-pool (the ResNet stem), three stages of ShuffleNetV2
units, a 1x1 conv to 1024 (2048 for x2.0) channels. A unit splits the channels in two: one half
passes unchanged, the other goes through 1x1 conv -> 3x3 depthwise conv -> 1x1 conv; the halves
are concatenated and the channels shuffled, so the next unit mixes them (a down-sampling unit
sends the whole input through two such branches).

torchvision's modules and names (``conv1``, ``stage2`` .. ``stage4``, ``conv5``, ``fc``); small
inputs (< 64 px): a stride-1 stem conv and no max-pool, as the CIFAR ResNet stem.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._base import SMALL_INPUT_BELOW, ClassifierModel, replace_conv
from ._modern import default_cfg, init_conv, is_small
from ._registry import register_model

_WIDTHS = ("0_5", "1_0", "1_5", "2_0")


class ShuffleNetV2(ClassifierModel):
    """torchvision's ShuffleNetV2 behind the cnnlab surface."""

    classifier_path = "fc"
    first_conv_path = "conv1.0"

    def __init__(
        self, name: str, num_classes: int, in_channels: int, image_size: int | None
    ) -> None:
        super().__init__()
        import torchvision  # here, not at the top: see resnet.py

        tv = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        small = is_small(image_size)
        self.conv1: nn.Sequential = tv.conv1
        if small or in_channels != 3:
            new = replace_conv(self.conv1[0], in_channels=in_channels, stride=1 if small else None)
            init_conv(new, "shufflenet")
            self.conv1[0] = new
        self.maxpool: nn.Module = nn.Identity() if small else tv.maxpool
        self.stage2, self.stage3, self.stage4 = tv.stage2, tv.stage3, tv.stage4
        self.conv5 = tv.conv5
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # torchvision: x.mean([2, 3]), the same
        self.flatten = nn.Flatten()
        self.fc = tv.fc

        channels = tv._stage_out_channels  # stem, stage2, stage3, stage4, conv5
        stem_r, first = (1, 2) if small else (2, 8)
        self._stages = [
            ("stem", ("conv1", "maxpool")),
            ("stage2", ("stage2",)),
            ("stage3", ("stage3",)),
            ("stage4", ("stage4", "conv5")),
            ("head", ("avgpool", "flatten", "fc")),
        ]
        self.feature_info = [
            {"name": "conv1", "module": "conv1", "stage": "stem", "num_chs": channels[0],
             "reduction": stem_r},
            {"name": "stage2", "module": "stage2", "stage": "stage2", "num_chs": channels[1],
             "reduction": first},
            {"name": "stage3", "module": "stage3", "stage": "stage3", "num_chs": channels[2],
             "reduction": first * 2},
            {"name": "conv5", "module": "conv5", "stage": "stage4", "num_chs": channels[4],
             "reduction": first * 4},
        ]  # fmt: skip
        self.default_cfg = default_cfg(
            name, small=small, in_channels=in_channels, image_size=image_size,
            num_classes=num_classes,
        )  # fmt: skip

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))  # N x 24 x 56 x 56 at 224 px
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.conv5(x)  # N x 1024 x 7 x 7 at 224 px

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(features)))  # N x num_classes


def _register(width: str) -> None:
    name = f"shufflenet_v2_x{width}"

    @register_model(
        name,
        family="shufflenet_v2",
        year=2018,
        paper="ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design "
        "(Ma et al., ECCV 2018)",
        paper_url="https://arxiv.org/abs/1807.11164",
        input_size=(3, 224, 224),
        small_input_below=SMALL_INPUT_BELOW,
        description=f"ShuffleNetV2 {width.replace('_', '.')}x: channel split, depthwise 3x3, "
        "channel shuffle",
        group="modern",
    )
    def build(*, num_classes: int, in_channels: int, image_size: int | None) -> ShuffleNetV2:
        return ShuffleNetV2(name, num_classes, in_channels, image_size)


for _width in _WIDTHS:
    _register(_width)
