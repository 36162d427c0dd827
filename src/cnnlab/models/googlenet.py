"""GoogLeNet / Inception v1 (Szegedy et al., 2014) on torchvision's Inception blocks.

ImageNet variant (image_size >= 64 or None), torchvision's network with ``transform_input=False``:
    conv 7x7/2 -> max-pool 3x3/2 -> conv 1x1 -> conv 3x3 -> max-pool 3x3/2   # N x 192 x 28 x 28
    inception 3a, 3b                          # N x 480 x 28 x 28
    max-pool, inception 4a..4e                # N x 832 x 14 x 14  (aux1 after 4a, aux2 after 4d)
    max-pool, inception 5a, 5b                # N x 1024 x 7 x 7
    global average pool -> flatten -> dropout 0.2 -> fc

Small-input variant (image_size < 64): the first conv keeps its 7x7 kernel but uses stride 1 and
the first max-pool is dropped, so 32 px reaches the inception blocks at 16x16 and ends at 4x4
(total reduction 8 instead of 32); every weight keeps its ImageNet shape.

Auxiliary classifiers (the paper's two side heads, loss weight 0.3 each): during a training-mode
forward their logits are left in ``model.aux_logits`` (``[aux1, aux2]``), with weight
``model.aux_weight``; in eval mode, or with ``model.use_aux = False``, the list is empty.
``forward`` always returns the main logits only. Their parameters belong to the "head" group
and are not part of the 6,624,904 parameters torchvision quotes for the 1000-class network.

The 5x5 branch of each inception block is a 3x3 conv in torchvision (pytorch/vision#906, kept so
that the published weights fit). ``transform_input`` is off: torchvision's ImageNet weights were
ported from a network fed ``(x - 0.5) / 0.5``, so their ``default_cfg`` mean/std are 0.5 (see
``_weights.py``).
"""

from __future__ import annotations

import logging

import torch
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

AUX_WEIGHT = 0.3  # the paper: "their loss is added to the total loss with a discount weight 0.3"


class GoogLeNet(ClassifierModel):
    """torchvision's GoogLeNet modules behind the cnnlab surface, aux heads as side outputs."""

    classifier_path = "fc"
    first_conv_path = "conv1.conv"
    aux_classifier_paths = ("aux1.fc2", "aux2.fc2")

    def __init__(self, num_classes: int, in_channels: int, image_size: int | None) -> None:
        super().__init__()
        # torchvision here, not at the top: importing it takes about a second (its ops load
        # torch._dynamo), which a LeNet-5 run never needs (the registry imports every family)
        import torchvision

        tv = torchvision.models.googlenet(
            weights=None,
            num_classes=num_classes,
            aux_logits=True,
            transform_input=False,
            init_weights=True,
        )
        small = image_size is not None and image_size < SMALL_INPUT_BELOW
        self.conv1 = tv.conv1  # BasicConv2d: conv (no bias) -> BN -> ReLU
        if small or in_channels != 3:
            self.conv1.conv = replace_conv(
                tv.conv1.conv, in_channels=in_channels, stride=1 if small else None
            )
            self._init_trunc_normal(self.conv1.conv.weight)
        self.maxpool1: nn.Module = nn.Identity() if small else tv.maxpool1
        self.conv2, self.conv3, self.maxpool2 = tv.conv2, tv.conv3, tv.maxpool2
        self.inception3a, self.inception3b, self.maxpool3 = (
            tv.inception3a,
            tv.inception3b,
            tv.maxpool3,
        )
        self.inception4a, self.inception4b, self.inception4c = (
            tv.inception4a,
            tv.inception4b,
            tv.inception4c,
        )
        self.inception4d, self.inception4e, self.maxpool4 = (
            tv.inception4d,
            tv.inception4e,
            tv.maxpool4,
        )
        self.inception5a, self.inception5b = tv.inception5a, tv.inception5b
        self.aux1, self.aux2 = tv.aux1, tv.aux2
        self.avgpool = tv.avgpool
        self.flatten = nn.Flatten()
        self.dropout = tv.dropout
        self.fc = tv.fc
        self.use_aux = True
        self.aux_weight = AUX_WEIGHT

        r = 1 if small else 4  # reduction of conv1 + maxpool1
        self._stages = [
            ("stem", ("conv1", "maxpool1", "conv2", "conv3", "maxpool2")),
            ("inception3", ("inception3a", "inception3b")),
            ("inception4", ("maxpool3", "inception4a", "inception4b", "inception4c",
                            "inception4d", "inception4e")),
            ("inception5", ("maxpool4", "inception5a", "inception5b")),
            ("head", ("aux1", "aux2", "avgpool", "flatten", "dropout", "fc")),
        ]  # fmt: skip
        self.feature_info = [
            {"name": "maxpool2", "module": "maxpool2", "stage": "stem", "num_chs": 192,
             "reduction": 2 * r},
            {"name": "inception3b", "module": "inception3b", "stage": "inception3",
             "num_chs": 480, "reduction": 2 * r},
            {"name": "inception4e", "module": "inception4e", "stage": "inception4",
             "num_chs": 832, "reduction": 4 * r},
            {"name": "inception5b", "module": "inception5b", "stage": "inception5",
             "num_chs": 1024, "reduction": 8 * r},
        ]  # fmt: skip
        size = 224 if image_size is None else image_size
        variant = (
            "small input: first conv 7x7 stride 1, no first max-pool"
            if small
            else "ImageNet: first conv 7x7 stride 2 + 3x3 stride-2 max-pool"
        )
        self.default_cfg = make_default_cfg(
            in_channels=in_channels,
            image_size=size,
            num_classes=num_classes,
            small_input=small,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            variant=variant,
            aux_classifiers=("aux1", "aux2"),
            aux_weight=AUX_WEIGHT,
        )
        logger.info("googlenet at %d px: %s", size, variant)

    @staticmethod
    def _init_trunc_normal(weight: Tensor) -> None:
        # torchvision's GoogLeNet initialisation for conv and linear weights
        torch.nn.init.trunc_normal_(weight, mean=0.0, std=0.01, a=-2, b=2)

    def _init_linear(self, linear: nn.Linear) -> None:
        linear.reset_parameters()  # default bias init, as torchvision leaves it
        self._init_trunc_normal(linear.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        aux: list[Tensor] = []
        run_aux = self.training and self.use_aux
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56 at 224 px
        x = self.maxpool2(self.conv3(self.conv2(x)))  # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))  # N x 480 x 28 x 28
        x = self.inception4a(self.maxpool3(x))  # N x 512 x 14 x 14
        if run_aux:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        if run_aux:
            aux.append(self.aux2(x))
        x = self.inception4e(x)  # N x 832 x 14 x 14
        x = self.inception5b(self.inception5a(self.maxpool4(x)))  # N x 1024 x 7 x 7
        self.aux_logits = aux
        return x

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(self.flatten(self.avgpool(features))))


@register_model(
    "googlenet",
    family="googlenet",
    year=2014,
    paper="Going Deeper with Convolutions (Szegedy et al., CVPR 2015)",
    paper_url="https://arxiv.org/abs/1409.4842",
    input_size=(3, 224, 224),
    small_input_below=SMALL_INPUT_BELOW,
    description="GoogLeNet (Inception v1): 9 inception modules (parallel 1x1, 3x3, 5x5, pool "
    "branches concatenated), global average pooling, two auxiliary classifiers in training",
)
def googlenet(*, num_classes: int, in_channels: int, image_size: int | None) -> GoogLeNet:
    return GoogLeNet(num_classes, in_channels, image_size)
