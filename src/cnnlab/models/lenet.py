"""LeNet-5 (LeCun et al., 1998), written out by hand as the lecture draws it.

    images (N, C, 32, 32)
    conv 5x5, 6 filters   -> ReLU -> max-pool 2x2   # N x 6 x 28 x 28 -> N x 6 x 14 x 14
    conv 5x5, 16 filters  -> ReLU -> max-pool 2x2   # N x 16 x 10 x 10 -> N x 16 x 5 x 5
    flatten                                         # N x 400
    fully connected 120 -> ReLU -> 84 -> ReLU       # N x 84
    output (fully connected, num_classes)           # N x num_classes

Parameters for C=1, 10 classes: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706.

Input sizes: 32 px is the paper's size. 28 px (MNIST) pads the first conv by 2, which gives the
same 28x28 map as 32 px unpadded, so the count stays 61,706. Any other size keeps the count
fixed with an adaptive average pool to 5x5 before flattening (and pads the first conv by 2
below 32 px so that small images keep enough pixels).

``lenet5_classic`` uses tanh and average pooling (the 1998 network's squashing function and
subsampling; the paper's trainable subsampling coefficients and sparse C3 table are left out).
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from ._base import ClassifierModel, make_default_cfg
from ._registry import register_model

logger = logging.getLogger(__name__)

_PAPER = "Gradient-Based Learning Applied to Document Recognition (LeCun et al., Proc. IEEE 1998)"
_URL = "http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf"
_NATIVE_SIZE = 32


class LeNet5(ClassifierModel):
    """LeNet-5 with ReLU + max pooling (``classic=False``) or tanh + average pooling."""

    classifier_path = "classifier.4"
    first_conv_path = "features.0"

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int | None, classic: bool = False
    ) -> None:
        super().__init__()
        size = _NATIVE_SIZE if image_size is None else image_size
        act: type[nn.Module] = nn.Tanh if classic else nn.ReLU
        pool: type[nn.Module] = nn.AvgPool2d if classic else nn.MaxPool2d
        # Pad by 2 below 32 px: a 28 px image then yields the 28x28 map of the paper's 32 px input.
        padding = 2 if size < _NATIVE_SIZE else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),  # N x 6 x 28 x 28
            act(),
            pool(kernel_size=2, stride=2),  # N x 6 x 14 x 14
            nn.Conv2d(6, 16, kernel_size=5),  # N x 16 x 10 x 10
            act(),
            pool(kernel_size=2, stride=2),  # N x 16 x 5 x 5
        )
        # Only sizes whose map is not already 5x5 need the adaptive pool (keeps 400 inputs).
        self.pool: nn.Module | None = None
        if size not in (28, 32):
            self.pool = nn.AdaptiveAvgPool2d(5)
        self.flatten = nn.Flatten()  # N x 400
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            act(),
            nn.Linear(120, 84),
            act(),
            nn.Linear(84, num_classes),
        )
        head = (
            ("pool", "flatten", "classifier")
            if self.pool is not None
            else ("flatten", "classifier")
        )
        self._stages = [
            ("stage1", ("features.0", "features.1", "features.2")),
            ("stage2", ("features.3", "features.4", "features.5")),
            ("head", head),
        ]
        self.feature_info = [
            {"name": "features.2", "module": "features.2", "stage": "stage1", "num_chs": 6,
             "reduction": 2},
            {"name": "features.5", "module": "features.5", "stage": "stage2", "num_chs": 16,
             "reduction": 4},
        ]  # fmt: skip
        variant = "classic (tanh, average pooling)" if classic else "ReLU, max pooling"
        if padding:
            variant += "; first conv padded by 2"
        if self.pool is not None:
            variant += "; adaptive average pool to 5x5 before flattening"
        self.default_cfg = make_default_cfg(
            in_channels=in_channels,
            image_size=size,
            num_classes=num_classes,
            small_input=size < 64,
            # No dataset statistics are implied by LeNet; (0.5, 0.5) maps [0, 1] to [-1, 1].
            mean=(0.5,),
            std=(0.5,),
            variant=variant,
        )
        logger.info("lenet5%s at %d px: %s", "_classic" if classic else "", size, variant)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # N x 16 x 5 x 5 at 28/32 px

    def forward_head(self, features: Tensor) -> Tensor:
        if self.pool is not None:
            features = self.pool(features)  # N x 16 x 5 x 5
        return self.classifier(self.flatten(features))


_COMMON = dict(
    family="lenet",
    year=1998,
    paper=_PAPER,
    paper_url=_URL,
    input_size=(1, 32, 32),
    small_input_below=None,
    pretrained=False,
)


@register_model(
    "lenet5",
    description="LeNet-5 as in the lecture: 2x (conv 5x5, ReLU, max-pool), FC 120, FC 84, output",
    **_COMMON,  # type: ignore[arg-type]
)
def lenet5(*, num_classes: int, in_channels: int, image_size: int | None) -> LeNet5:
    return LeNet5(num_classes, in_channels, image_size, classic=False)


@register_model(
    "lenet5_classic",
    description="LeNet-5 with the 1998 tanh activations and average-pool subsampling",
    **_COMMON,  # type: ignore[arg-type]
)
def lenet5_classic(*, num_classes: int, in_channels: int, image_size: int | None) -> LeNet5:
    return LeNet5(num_classes, in_channels, image_size, classic=True)
