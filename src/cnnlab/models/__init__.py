"""The model zoo: ``create_model`` is the only door.

    >>> from cnnlab.models import create_model, list_models
    >>> model = create_model("resnet18", num_classes=10, in_channels=1, image_size=28)
    >>> model.default_cfg["small_input"]
    True

Families (one file each): the lecture's -- LeNet-5 (by hand), AlexNet, VGG, GoogLeNet and ResNet
(on torchvision's modules) -- and the modern backbones on torchvision's modules: MobileNetV2/V3,
ShuffleNetV2, EfficientNet (B0-B7, V2-S/M/L), RegNetX/Y and ConvNeXt (T/S/B/L); their shared
machinery is in ``_modern.py``. Every model has the same surface -- see :mod:`cnnlab.models._base`.
"""

from __future__ import annotations

# Importing the family files registers their models (oldest first).
# ... then the modern backbones (the registry lists them after the lecture's families).
from . import (  # noqa: F401  # noqa: F401
    alexnet,
    convnext,
    efficientnet,
    googlenet,
    lenet,
    mobilenet,
    regnet,
    resnet,
    shufflenet,
    vgg,
)
from ._base import SMALL_INPUT_BELOW, ClassifierModel, count_parameters, group_parameters
from ._registry import (
    GROUPS,
    MIN_IMAGE_SIZE,
    TASK_MODELS,
    TASKS,
    create_model,
    list_models,
    model_info,
    register_model,
)
from ._weights import adapt_first_conv, read_state_dict
from .summary import count_flops, layer_table, model_summary, zoo_table

__all__ = [
    "GROUPS",
    "MIN_IMAGE_SIZE",
    "SMALL_INPUT_BELOW",
    "TASKS",
    "TASK_MODELS",
    "ClassifierModel",
    "adapt_first_conv",
    "count_flops",
    "count_parameters",
    "create_model",
    "group_parameters",
    "layer_table",
    "list_models",
    "model_info",
    "model_summary",
    "read_state_dict",
    "register_model",
    "zoo_table",
]
