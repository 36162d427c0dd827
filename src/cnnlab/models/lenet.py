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


_CAM_PAPER = "Learning Deep Features for Discriminative Localization (Zhou et al., CVPR 2016)"
_CAM_URL = "https://arxiv.org/abs/1512.04150"
CAM_CHANNELS = 128  # units of the added 3x3 conv (Zhou et al. used 1024 on ImageNet networks)


class LeNet5GAP(ClassifierModel):
    """LeNet-5's convolutions with the CAM head of Zhou et al. (2016) instead of its FC layers.

        conv 5x5 pad 2, 6  -> BN -> ReLU -> max-pool 2x2     # N x 6 x 16 x 16 at 32 px
        conv 5x5 pad 2, 16 -> BN -> ReLU -> max-pool 2x2     # N x 16 x 8 x 8
        conv 3x3 pad 1, 128 -> BN -> ReLU                     # N x 128 x 8 x 8 (the CAM layer)
        global average pool -> linear (num_classes)         # N x num_classes

    Why it exists: class activation maps assume "last conv -> global average pool -> linear"; then
    Grad-CAM on the last conv *is* the class evidence at each position (Zhou et al. removed the
    FC layers of AlexNet/VGG/GoogLeNet and added one 3x3 conv + GAP in the same way). LeNet-5's
    flatten + FC head instead learns position-specific templates, and its Grad-CAM peaks off the
    object (measured in ``cnnlab.explain.pointing``). "Same" padding keeps an 8 x 8 map at 32 px
    whose cells tile the image; batch norm makes this small GAP network train reliably (without it,
    two of three measured runs stayed below 0.4 accuracy on builtin:shapes). The 3x3 conv gives a
    24 px receptive field; a larger one (more convs) pointed worse in the same measurement.
    """

    classifier_path = "classifier"
    first_conv_path = "features.0"

    def __init__(self, num_classes: int, in_channels: int, image_size: int | None) -> None:
        super().__init__()
        size = _NATIVE_SIZE if image_size is None else image_size
        c = CAM_CHANNELS
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # N x 6 x 32 x 32
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),  # N x 6 x 16 x 16
            nn.Conv2d(6, 16, kernel_size=5, padding=2),  # N x 16 x 16 x 16
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),  # N x 16 x 8 x 8
            nn.Conv2d(16, c, kernel_size=3, padding=1),  # N x 128 x 8 x 8
            nn.BatchNorm2d(c),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # N x 128 x 1 x 1
        self.flatten = nn.Flatten()  # N x 128
        self.classifier = nn.Linear(c, num_classes)
        self._stages = [
            ("stage1", ("features.0", "features.1", "features.2", "features.3")),
            ("stage2", ("features.4", "features.5", "features.6", "features.7")),
            ("stage3", ("features.8", "features.9", "features.10")),
            ("head", ("pool", "flatten", "classifier")),
        ]
        self.feature_info = [
            {"name": "features.3", "module": "features.3", "stage": "stage1", "num_chs": 6,
             "reduction": 2},
            {"name": "features.7", "module": "features.7", "stage": "stage2", "num_chs": 16,
             "reduction": 4},
            {"name": "features.10", "module": "features.10", "stage": "stage3", "num_chs": c,
             "reduction": 4},
        ]  # fmt: skip
        self.default_cfg = make_default_cfg(
            in_channels=in_channels,
            image_size=size,
            num_classes=num_classes,
            small_input=size < 64,
            mean=(0.5,),
            std=(0.5,),
            variant="same-padded convs with batch norm; 3x3 conv + global average pool + linear",
        )

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)  # N x 128 x H/4 x W/4

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(features)))


@register_model(
    "lenet5_gap",
    family="lenet",
    year=2016,
    paper=_CAM_PAPER,
    paper_url=_CAM_URL,
    input_size=(1, 32, 32),
    small_input_below=None,
    description="LeNet-5 convs (padded, batch norm) + conv 3x3 + global average pool + linear: "
    "the CAM network for Grad-CAM",
    pretrained=False,
)
def lenet5_gap(*, num_classes: int, in_channels: int, image_size: int | None) -> LeNet5GAP:
    return LeNet5GAP(num_classes, in_channels, image_size)
