"""MobileNetV2 (Sandler et al., 2018) and MobileNetV3-Small/Large (Howard et al., 2019).

Both are stacks of inverted residual blocks: a 1x1 convolution expands the channels, a 3x3 (or
5x5) depthwise convolution filters each channel on its own, a 1x1 convolution projects back to few
channels with no activation after it (a linear bottleneck); the shortcut adds the block's input
when the block keeps the size. Depthwise + 1x1 is the depthwise-separable convolution: about
k*k + C_out multiplications per input channel and pixel instead of k*k*C_out. V3 adds
squeeze-and-excitation and hard-swish; its blocks were found by architecture search.

torchvision's modules and names (``features.N``, ``classifier.N``); small inputs: see
:mod:`cnnlab.models._modern`.
"""

from __future__ import annotations

from torch import nn

from ._base import SMALL_INPUT_BELOW
from ._modern import FeaturesNet
from ._registry import register_model

_PAPERS = {
    "mobilenet_v2": (
        2018,
        "MobileNetV2: Inverted Residuals and Linear Bottlenecks (Sandler et al., CVPR 2018)",
        "https://arxiv.org/abs/1801.04381",
        "MobileNetV2: inverted residual blocks with linear bottlenecks, depthwise 3x3 convs",
    ),
    "mobilenet_v3_large": (
        2019,
        "Searching for MobileNetV3 (Howard et al., ICCV 2019)",
        "https://arxiv.org/abs/1905.02244",
        "MobileNetV3-Large: searched inverted residuals, squeeze-excite, hard-swish",
    ),
    "mobilenet_v3_small": (
        2019,
        "Searching for MobileNetV3 (Howard et al., ICCV 2019)",
        "https://arxiv.org/abs/1905.02244",
        "MobileNetV3-Small: the low-resource MobileNetV3 (2.5 M parameters)",
    ),
}


def _register(name: str) -> None:
    year, paper, url, description = _PAPERS[name]

    @register_model(
        name,
        family=name[:12],  # mobilenet_v2 / mobilenet_v3
        year=year,
        paper=paper,
        paper_url=url,
        input_size=(3, 224, 224),
        small_input_below=SMALL_INPUT_BELOW,
        description=description,
        group="modern",
    )
    def build(*, num_classes: int, in_channels: int, image_size: int | None) -> FeaturesNet:
        net = FeaturesNet(
            name,
            family="mobilenet",
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
        )
        if name.startswith("mobilenet_v3"):
            set_batchnorm_momentum(net, BN_MOMENTUM)
        return net


# torchvision builds MobileNetV3's BatchNorm with momentum 0.01 (the paper's ImageNet recipe, some
# 600,000 steps); the other modern backbones use PyTorch's 0.1. On the short runs of small datasets
# the running statistics then stay near their initial 0 and 1: measured on builtin:mnist-sample,
# 100 images per class, 6 epochs (90 steps), validation accuracy stayed at chance (0.100) every
# epoch while training accuracy rose to 0.53. With 0.1 they follow in ~20 steps. Only the running
# statistics' update speed changes: parameters, state dict and pretrained weights are torchvision's.
BN_MOMENTUM = 0.1


def set_batchnorm_momentum(net: nn.Module, momentum: float) -> None:
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


for _name in _PAPERS:
    _register(_name)
