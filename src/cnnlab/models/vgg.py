"""VGG-11/13/16/19, with and without batch norm (Simonyan & Zisserman, 2014).

Features are torchvision's (``torchvision.models.vgg.make_layers``): 3x3 convs + ReLU, five 2x2
max-pools (reductions 2, 4, 8, 16, 32). State-dict keys are torchvision's (``features.0.weight``,
``classifier.6.weight``).

ImageNet variant (image_size >= 64 or None), torchvision's head:
    adaptive average pool 7x7 -> flatten (25,088) -> FC 4096 -> ReLU -> dropout
    -> FC 4096 -> ReLU -> dropout -> output      # 138,357,544 parameters for vgg16, 1000 classes

Small-input variant (image_size < 64): five pools take 32 px to 1x1, so pooling to 7x7 would only
copy one pixel 49 times into 102M classifier weights. Instead (as CIFAR VGGs do):
    max-pools with ceil_mode=True (28 px -> 14, 7, 4, 2, 1 instead of failing at 0)
    adaptive average pool 1x1 -> flatten (512) -> FC 512 -> ReLU -> dropout
    -> FC 512 -> ReLU -> dropout -> output
``default_cfg["pool_size"]`` and ``["hidden_features"]`` record which head was built. ImageNet
weights still load into the features; the two hidden FC layers are then re-initialised.
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

_CONFIG = {11: "A", 13: "B", 16: "D", 19: "E"}  # the paper's column letters


class VGG(ClassifierModel):
    """VGG features from torchvision + a head sized for the input (see module docstring)."""

    classifier_path = "classifier.6"
    first_conv_path = "features.0"

    def __init__(
        self,
        depth: int,
        batch_norm: bool,
        num_classes: int,
        in_channels: int,
        image_size: int | None,
    ) -> None:
        super().__init__()
        # torchvision here, not at the top: importing it takes about a second (its ops load
        # torch._dynamo), which a LeNet-5 run never needs (the registry imports every family)
        import torchvision.models.vgg as tv_vgg

        small = image_size is not None and image_size < SMALL_INPUT_BELOW
        cfg = tv_vgg.cfgs[_CONFIG[depth]]
        self.features = tv_vgg.make_layers(cfg, batch_norm=batch_norm)
        if in_channels != 3:
            self.features[0] = replace_conv(self.features[0], in_channels=in_channels)
        if small:
            for m in self.features:
                if isinstance(m, nn.MaxPool2d):
                    m.ceil_mode = True
        pool_size, hidden = (1, 512) if small else (7, 4096)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(512 * pool_size * pool_size, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, num_classes),
        )
        if small:
            self.reinit_on_mismatch = ("classifier.0", "classifier.3")
        self._init_weights()

        # One stage per max-pool: the modules after the previous pool up to and including it.
        self._stages, self.feature_info = [], []
        start, channels = 0, in_channels
        for i, m in enumerate(self.features):
            if isinstance(m, nn.Conv2d):
                channels = m.out_channels
            if isinstance(m, nn.MaxPool2d):
                k = len(self.feature_info) + 1
                label = f"stage{k}"
                self._stages.append((label, tuple(f"features.{j}" for j in range(start, i + 1))))
                self.feature_info.append(
                    {"name": f"features.{i}", "module": f"features.{i}", "stage": label,
                     "num_chs": channels, "reduction": 2**k}
                )  # fmt: skip
                start = i + 1
        self._stages.append(("head", ("avgpool", "flatten", "classifier")))

        size = 224 if image_size is None else image_size
        variant = (
            "small input: ceil-mode max-pools, 1x1 average pool, 512-wide hidden FC layers"
            if small
            else "ImageNet: 7x7 average pool, 4096-wide hidden FC layers"
        )
        self.default_cfg = make_default_cfg(
            in_channels=in_channels,
            image_size=size,
            num_classes=num_classes,
            small_input=small,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            variant=variant,
            pool_size=(pool_size, pool_size),
            hidden_features=hidden,
        )
        logger.info("vgg%d%s at %d px: %s", depth, "_bn" if batch_norm else "", size, variant)

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                self._init_linear(m)

    def _init_linear(self, linear: nn.Linear) -> None:
        nn.init.normal_(linear.weight, 0, 0.01)
        nn.init.zeros_(linear.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # N x 512 x 7 x 7 at 224 px, N x 512 x 1 x 1 at 32 px

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(features)))


def _register(depth: int, batch_norm: bool) -> None:
    name = f"vgg{depth}" + ("_bn" if batch_norm else "")

    @register_model(
        name,
        family="vgg",
        year=2014,
        paper="Very Deep Convolutional Networks for Large-Scale Image Recognition "
        "(Simonyan & Zisserman, ICLR 2015)",
        paper_url="https://arxiv.org/abs/1409.1556",
        input_size=(3, 224, 224),
        small_input_below=SMALL_INPUT_BELOW,
        description=f"VGG-{depth} (configuration {_CONFIG[depth]}): stacked 3x3 convs, "
        f"five max-pools, three FC layers{', batch norm after each conv' if batch_norm else ''}",
    )
    def build(*, num_classes: int, in_channels: int, image_size: int | None) -> VGG:
        return VGG(depth, batch_norm, num_classes, in_channels, image_size)


for _depth in (11, 13, 16, 19):
    for _bn in (False, True):
        _register(_depth, _bn)
