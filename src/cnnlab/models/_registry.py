"""The model registry and the one door, :func:`create_model`.

Each family file decorates a short builder with :func:`register_model`; a duplicate name raises
(torchvision's ``register_model`` does the same). Builders have the keyword-only signature
``builder(*, num_classes: int, in_channels: int, image_size: int | None) -> ClassifierModel``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from cnnlab.config import MIN_IMAGE_SIZE
from cnnlab.errors import ConfigError, close_matches

from ._base import ClassifierModel, check_positive_int
from ._timm import is_timm

logger = logging.getLogger(__name__)

Builder = Callable[..., ClassifierModel]


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo table and ``cnnlab models show NAME`` print about one model."""

    name: str
    family: str
    year: int
    paper: str
    paper_url: str
    input_size: tuple[int, int, int]  # (C, H, W) the architecture was designed for
    small_input_below: int | None  # image_size below this picks the small-input variant
    description: str
    pretrained: bool  # torchvision publishes ImageNet weights (weights="imagenet")
    group: str  # "lecture" (the lecture's families) or "modern" (modern backbones)


#: The zoo's two groups, in the order ``list_models`` and ``cnnlab models`` show them.
GROUPS = {"lecture": "the lecture's families", "modern": "modern backbones"}


_BUILDERS: dict[str, Builder] = {}
_INFO: dict[str, ModelInfo] = {}
_ORDER: dict[str, int] = {}  # registration order: a family's variants as its file lists them


def register_model(
    name: str,
    *,
    family: str,
    year: int,
    paper: str,
    paper_url: str,
    input_size: tuple[int, int, int],
    small_input_below: int | None,
    description: str,
    pretrained: bool = True,
    group: str = "lecture",
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name``; raises ``ValueError`` on a duplicate.

    ``group``: ``"lecture"`` (LeNet ... ResNet) or ``"modern"`` (MobileNet, EfficientNet, ...).
    """

    def decorate(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"a model named {name!r} is already registered")
        if group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
        _BUILDERS[name] = builder
        _INFO[name] = ModelInfo(
            name=name,
            family=family,
            year=year,
            paper=paper,
            paper_url=paper_url,
            input_size=input_size,
            small_input_below=small_input_below,
            description=description,
            pretrained=pretrained,
            group=group,
        )
        _ORDER[name] = len(_ORDER)
        return builder

    return decorate


#: The architectures each task's builder makes (``create_segmentation_model``,
#: ``create_detection_model``, ``cnnlab.video.models.create_video_model``), with one line each.
#: Their encoder / backbone is any classification model above (``--encoder``, ``--backbone``); a
#: per-frame video model is any classification model too. Names only: listing needs no torchvision.
TASK_MODELS: dict[str, dict[str, str]] = {
    "segmentation": {
        "unet": "U-Net decoder with skip connections over a zoo encoder (Ronneberger 2015)",
        "fcn": "fully convolutional head on the encoder's last stage, upsampled (Long 2015)",
        "deeplabv3": "atrous spatial pyramid pooling head (Chen 2017)",
        "lraspp": "lite reduced ASPP head, MobileNetV3's (Howard 2019)",
    },
    "detection": {
        "fasterrcnn": "two-stage: region proposals, then RoI classification + boxes (Ren 2015)",
        "retinanet": "one-stage, focal loss over anchors on an FPN (Lin 2017)",
        "fcos": "one-stage, anchor-free: a box per FPN location (Tian 2019)",
        "ssdlite": "one-stage SSD with MobileNetV3 features, its own backbone (Sandler 2018)",
    },
    "video-classification": {
        "r3d_18": "3D ResNet-18: 3x3x3 convolutions over time and space (Tran 2018)",
        "mc3_18": "mixed convolutions: 3D early, 2D late (Tran 2018)",
        "r2plus1d_18": "(2+1)D: each 3D conv split into spatial 2D + temporal 1D (Tran 2018)",
        "r3d_small": "a small 3D CNN for CPU training on short low-resolution clips",
    },
}
TASKS = ("classification", *TASK_MODELS)


def list_models(task: str = "classification") -> list[str]:
    """Model names for ``task`` (like torchvision's ``list_models``): the classification zoo --
    the lecture's families first, oldest first (LeNet ... ResNet), then the modern backbones
    (MobileNet ... ConvNeXt) -- or the architectures of :data:`TASK_MODELS`."""
    if task == "classification":
        return sorted(_BUILDERS, key=_zoo_order)
    if task not in TASK_MODELS:
        raise ConfigError(
            f"unknown task {task!r}{close_matches(task, TASKS)}; choose from {', '.join(TASKS)}"
        )
    return list(TASK_MODELS[task])


def _zoo_order(name: str) -> tuple:
    info = _INFO[name]
    # modern variants keep their file's order (tiny < small < base; regnet_y_400mf < _1_6gf)
    within = _natural(name) if info.group == "lecture" else (_ORDER[name], name)
    return (list(GROUPS).index(info.group), info.year, info.family, within)


def _natural(name: str) -> tuple:
    # "resnet18" < "resnet101", "vgg11" < "vgg11_bn" < "vgg13"
    digits = "".join(c if c.isdigit() else " " for c in name).split()
    return (int(digits[0]) if digits else 0, name)


def _lookup(name: object) -> str:
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ConfigError(
            f"unknown model {name!r}{close_matches(str(name), _BUILDERS)}; "
            f"available: {', '.join(list_models())}{_in_timm(name)}"
        )
    return name


def _in_timm(name: object) -> str:
    """' -- timm has it: timm:NAME' when timm knows the name (timm imported on this error only)."""
    import timm

    if isinstance(name, str) and name.split(".", 1)[0] in timm.list_models():
        return f"; timm has it: timm:{name}"
    return "; or any of timm's models as timm:NAME"


def load_pretrained(model: nn.Module, name: str, weights: str | os.PathLike) -> dict:
    """Pretrained ``weights`` into a built ``model`` named ``name`` (creation's ``weights=``,
    transfer's ``--init-from``): timm's for a ``timm:`` name, else torchvision's or a file
    (:func:`cnnlab.models._weights.load_weights`); returns the load report."""
    if is_timm(name):
        from ._timm import load_timm_weights

        return load_timm_weights(model, name, weights)
    from ._weights import load_weights  # torchvision weight enums load lazily

    return load_weights(model, name, weights)


def model_info(name: str) -> dict:
    """Family, year, paper, default input size (C, H, W), small-input threshold, description
    (``timm:NAME``: from timm's pretrained config, family "timm")."""
    if is_timm(name):
        from ._timm import timm_info

        return timm_info(name)
    return asdict(_INFO[_lookup(name)])


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """Build a registered model: the only way cnnlab makes a network.

    Args:
        name: a name from :func:`list_models` (``"lenet5"``, ``"resnet18"``, ...), or
            ``"timm:NAME"`` for any of timm's models (``timm.create_model(NAME, num_classes=,
            in_chans=)`` behind the same interface: :mod:`cnnlab.models._timm`).
        num_classes: number of output logits.
        in_channels: image channels (1 grey, 3 RGB, any N); the first conv is built for it.
        weights: ``None`` (random init), ``"imagenet"`` (torchvision's published weights, downloaded
            and cached; a tag such as ``"IMAGENET1K_V2"`` picks one), or a path to a local
            ``.safetensors`` / ``.pt`` / ``.pth`` state dict in torchvision or timm layout
            (``timm:`` models: ``"imagenet"`` is timm's weights from the Hugging Face hub or its
            cache; a path: a file in timm's layout).
        image_size: the side of the (square) training images. Below ``small_input_below`` (see
            :func:`model_info`) a small-input variant is chosen; ``None`` means the family's
            default size.

    Returns:
        A :class:`~cnnlab.models._base.ClassifierModel`: ``model(images (N, C, H, W))`` returns
        logits ``(N, num_classes)``. ``model.default_cfg`` says what was built.
    """
    name = name if is_timm(name) else _lookup(name)
    num_classes = check_positive_int(num_classes, "num_classes")
    in_channels = check_positive_int(in_channels, "in_channels")
    if image_size is not None:
        image_size = check_positive_int(image_size, "image_size")
        if image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image_size {image_size} is too small for {name}: the models need at least "
                f"{MIN_IMAGE_SIZE} px; resize the images (e.g. image_size={MIN_IMAGE_SIZE * 2})"
            )
    if is_timm(name):  # timm is imported only now
        from ._timm import create_timm_model

        return create_timm_model(
            name, num_classes=num_classes, in_channels=in_channels, weights=weights,
            image_size=image_size,
        )  # fmt: skip
    model = _BUILDERS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    info = _INFO[name]
    model.default_cfg.update(name=name, family=info.family, weights=None)
    if weights is not None:
        load_pretrained(model, name, weights)
    return model
