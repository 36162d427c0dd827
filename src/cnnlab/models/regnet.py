"""RegNetX and RegNetY (Radosavovic et al., 2020): networks from a designed design space.

A 3x3 stride-2 stem, four stages of ResNet bottleneck blocks (1x1, 3x3 grouped, 1x1) whose
widths and depths follow one quantised linear rule; RegNetY adds squeeze-and-excitation to each
block. The name gives the compute: regnet_y_400mf ~ 0.4 GFLOPs (multiply-adds) at 224 px.

torchvision's modules and names (``stem``, ``trunk_output.block1`` .. ``block4``, ``fc``); small
inputs: the stem and the first block of ``block1`` run at stride 1 (see
:mod:`cnnlab.models._modern`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from ._base import SMALL_INPUT_BELOW, ClassifierModel, replace_conv
from ._modern import default_cfg, init_conv, is_small, out_channels_of, stride_of, unstride
from ._registry import register_model

# The design rule's parameters of each torchvision builder (regnet.py there): depth, initial
# width w_0, slope w_a, quantisation w_m, group width (RegNetY: squeeze-excite ratio 0.25).
# Copied because torchvision computes the widths with tensor ops and .tolist(), which fails while
# the zoo table builds models on the meta device; the parameter-count test checks them.
_RULES = {
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16),
    "regnet_x_800mf": (16, 56, 35.73, 2.28, 16),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24),
    "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120),
    "regnet_x_16gf": (22, 216, 55.59, 2.1, 128),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168),
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8),
    "regnet_y_800mf": (14, 56, 38.84, 2.4, 16),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24),
    "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56),
    "regnet_y_16gf": (18, 200, 106.23, 2.48, 112),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232),
}


def _torchvision_regnet(name: str, num_classes: int) -> nn.Module:
    """torchvision's ``regnet_*`` builder with ``weights=None``, on the default device."""
    from torchvision.models.regnet import BlockParams
    from torchvision.models.regnet import RegNet as TvRegNet

    depth, w_0, w_a, w_m, group_width = _RULES[name]
    with torch.device("cpu"):  # plain Python numbers, whatever device the layers go to
        params = BlockParams.from_init_params(
            depth=depth, w_0=w_0, w_a=w_a, w_m=w_m, group_width=group_width,
            se_ratio=0.25 if name.startswith("regnet_y") else None,
        )  # fmt: skip
    norm_layer = partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1)  # torchvision's _regnet
    return TvRegNet(params, num_classes=num_classes, norm_layer=norm_layer)


class RegNet(ClassifierModel):
    """torchvision's RegNet behind the cnnlab surface."""

    classifier_path = "fc"
    first_conv_path = "stem.0"

    def __init__(
        self, name: str, num_classes: int, in_channels: int, image_size: int | None
    ) -> None:
        super().__init__()
        # torchvision imported inside: see resnet.py
        tv = _torchvision_regnet(name, num_classes)
        self.stem: nn.Sequential = tv.stem
        self.trunk_output: nn.Sequential = tv.trunk_output
        self.avgpool = tv.avgpool
        self.flatten = nn.Flatten()
        self.fc = tv.fc

        small = is_small(image_size)
        stem: nn.Conv2d = self.stem[0]
        if small or in_channels != 3:
            new = replace_conv(stem, in_channels=in_channels, stride=1 if small else None)
            init_conv(new, "regnet")
            self.stem[0] = new
        if small:  # the first block of block1 down-samples: at stride 1 (shortcut conv too)
            unstride(self.trunk_output.block1[0])

        stage_paths = ["stem"] + [f"trunk_output.block{i}" for i in range(1, 5)]
        self._stages = [(p.rsplit(".", 1)[-1], (p,)) for p in stage_paths]
        self._stages.append(("head", ("avgpool", "flatten", "fc")))
        self.feature_info, reduction = [], 1
        for path in stage_paths:
            module = self.get_submodule(path)
            reduction *= stride_of(module)
            self.feature_info.append(
                {"name": path, "module": path, "stage": path.rsplit(".", 1)[-1],
                 "num_chs": out_channels_of(module), "reduction": reduction}
            )  # fmt: skip
        self.default_cfg = default_cfg(
            name, small=small, in_channels=in_channels, image_size=image_size,
            num_classes=num_classes,
        )  # fmt: skip

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # N x 32 x 112 x 112 at 224 px
        return self.trunk_output(x)  # N x C x 7 x 7 at 224 px

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(features)))  # N x num_classes


def _register(name: str) -> None:
    kind, flops = name.split("_", 2)[1:]

    @register_model(
        name,
        family="regnet",
        year=2020,
        paper="Designing Network Design Spaces (Radosavovic et al., CVPR 2020)",
        paper_url="https://arxiv.org/abs/2003.13678",
        input_size=(3, 224, 224),
        small_input_below=SMALL_INPUT_BELOW,
        description=f"RegNet{kind.upper()}-{flops.replace('_', '.').upper()}: bottleneck blocks "
        f"with grouped 3x3 convs{', squeeze-excite' if kind == 'y' else ''}",
        group="modern",
    )
    def build(*, num_classes: int, in_channels: int, image_size: int | None) -> RegNet:
        return RegNet(name, num_classes, in_channels, image_size)


for _name in _RULES:
    _register(_name)
