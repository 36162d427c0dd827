"""The surface every cnnlab model speaks (timm style), and the helpers the families share.

Every model built by :func:`cnnlab.models.create_model` is a :class:`ClassifierModel`:

* ``forward(images (N, C, H, W)) -> logits (N, num_classes)``, always one tensor;
  ``forward(x) == forward_head(forward_features(x))``.
* ``forward_features(x)`` returns the last feature map ``(N, C', H', W')`` before pooling.
* ``forward_head(features)`` pools, flattens and classifies.
* ``feature_info``: one dict per stage, in execution order: ``name`` (module path whose output is
  the stage's feature map), ``module`` (the same path), ``stage`` (label), ``num_chs`` (C) and
  ``reduction`` (product of the strides up to that module, ~ H_image / H_stage).
* ``stage_modules()`` / :func:`group_parameters` put every parameter in exactly one group:
  the stem (when the architecture has one), a stage, or ``"head"`` -- so transfer learning can
  freeze "the stem and the first N stages" without code per architecture.
* ``get_classifier()``, ``reset_classifier(num_classes)``, ``default_cfg``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnnlab.errors import ConfigError

# ImageNet statistics of RGB pixels in [0, 1] (the torchvision / timm convention).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Images smaller than this (pixels, shorter side) get the small-input variant of the ImageNet
# families: at 63 px AlexNet's ImageNet stem (11x11 stride 4 + three 3x3/2 max-pools) is already
# down to a 1x1 map, and ResNet/GoogLeNet's 32x reduction leaves <= 2x2 -- too little to learn from.
SMALL_INPUT_BELOW = 64

HEAD = "head"

# PyTorch's messages when an input is too small or the wrong size for the layers built
SIZE_ERRORS = (
    "Output size is too small",
    "Kernel size can't be greater than actual input size",
    "mat1 and mat2 shapes cannot be multiplied",
)


def channel_stats(stats: Sequence[float], in_channels: int) -> tuple[float, ...]:
    """Per-channel mean/std for ``in_channels`` inputs from RGB statistics.

    3 channels keep the RGB values; any other count uses the average of the RGB values for every
    channel (what timm does for grey-scale), which is also what a first conv whose RGB kernels were
    summed (1 channel) or repeated (N channels) expects.
    """
    stats = tuple(float(s) for s in stats)
    if len(stats) == in_channels:
        return stats
    avg = sum(stats) / len(stats)
    return (avg,) * in_channels


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the sub-module at dotted ``path`` (``"classifier.6"``, ``"conv1"``)."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def replace_conv(
    conv: nn.Conv2d,
    *,
    in_channels: int | None = None,
    kernel_size: int | None = None,
    stride: int | None = None,
    padding: int | None = None,
) -> nn.Conv2d:
    """A fresh ``Conv2d`` like ``conv`` with some hyper-parameters changed (weights re-created)."""
    k = conv.kernel_size if kernel_size is None else (kernel_size, kernel_size)
    s = conv.stride if stride is None else (stride, stride)
    p = conv.padding if padding is None else (padding, padding)
    return nn.Conv2d(
        conv.in_channels if in_channels is None else in_channels,
        conv.out_channels,
        kernel_size=k,  # type: ignore[arg-type]
        stride=s,  # type: ignore[arg-type]
        padding=p,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


def check_positive_int(value: object, option: str) -> int:
    """``value`` as an int >= 1, else :class:`ConfigError` naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} must be a whole number >= 1, got {value!r}")
    return value


class ClassifierModel(nn.Module):
    """Base class: the shared surface. Subclasses set the paths and implement the two halves.

    Subclasses set in ``__init__``: ``feature_info``, ``default_cfg``, ``_stages`` (``[(label,
    (module paths...)), ...]`` ending with ``("head", ...)``), ``classifier_path`` (the final
    ``nn.Linear``), ``first_conv_path`` (the first ``nn.Conv2d``) and optionally
    ``aux_classifier_paths`` (extra training-only outputs that also depend on ``num_classes``)
    and ``reinit_on_mismatch``.
    """

    classifier_path: str = ""
    first_conv_path: str = ""
    aux_classifier_paths: tuple[str, ...] = ()
    # Module paths whose shapes differ from the ImageNet layout only because of the small-input
    # variant; pretrained tensors that do not fit them are re-initialised (and reported).
    reinit_on_mismatch: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.feature_info: list[dict] = []
        self.default_cfg: dict = {}
        # Training-only auxiliary logits (GoogLeNet); the classification task adds
        # aux_weight * loss(aux, targets) for each. Empty for every other model.
        self.aux_logits: list[Tensor] = []
        self.aux_weight: float = 0.0
        # What pretrained-weight loading did (see cnnlab.models._weights); None when untouched.
        self.load_report: dict | None = None
        self._stages: list[tuple[str, tuple[str, ...]]] = []

    # --- the two halves -------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """images (N, C, H, W) -> logits (N, num_classes)."""
        try:
            return self.forward_head(self.forward_features(x))
        except RuntimeError as err:
            if not any(m in str(err) for m in SIZE_ERRORS) or x.dim() != 4:
                raise
            raise ConfigError(self._size_message(tuple(x.shape[-2:]))) from err

    def _size_message(self, hw: tuple[int, int]) -> str:
        """PyTorch's "Output size is too small" in the model's terms: what it was built for."""
        cfg = self.default_cfg
        name = cfg.get("name") or type(self).__name__.lower()
        built = tuple(cfg.get("input_size", ()))[-2:]
        built_text = "x".join(map(str, built)) if built else "another size"
        variant = f" ({cfg['variant']})" if cfg.get("variant") else ""
        return (
            f"{name} was built for {built_text} px inputs{variant} and cannot take "
            f"{hw[0]}x{hw[1]} images: build it for them with "
            f"create_model({name!r}, ..., image_size={hw[0]}), which picks the variant for "
            "that size"
        )

    # --- classifier -----------------------------------------------------------------------
    def get_classifier(self) -> nn.Linear:
        """The final fully connected layer (the "output" layer of the lecture)."""
        return self.get_submodule(self.classifier_path)  # type: ignore[return-value]

    def _init_linear(self, linear: nn.Linear) -> None:
        """Initialise a new classifier like the family does (PyTorch default unless overridden)."""
        linear.reset_parameters()

    def reset_classifier(self, num_classes: int) -> None:
        """New final Linear (and auxiliary classifiers) for ``num_classes`` outputs."""
        num_classes = check_positive_int(num_classes, "num_classes")
        for path in (self.classifier_path, *self.aux_classifier_paths):
            old = self.get_submodule(path)
            assert isinstance(old, nn.Linear), path
            new = nn.Linear(
                old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype
            )
            self._init_linear(new)
            set_submodule(self, path, new)
        self.default_cfg["num_classes"] = num_classes
        # Class names of pretrained weights no longer describe the outputs.
        self.default_cfg.pop("class_names", None)

    # --- stages ---------------------------------------------------------------------------
    def stage_names(self) -> list[str]:
        """Group labels in order: [stem,] stage..., "head"."""
        return [label for label, _ in self._stages]

    def stage_modules(self) -> list[tuple[str, list[nn.Module]]]:
        """``[(label, [modules...]), ...]`` in execution order, ending with ``("head", ...)``."""
        return [(label, [self.get_submodule(p) for p in paths]) for label, paths in self._stages]


def group_parameters(model: ClassifierModel) -> list[tuple[str, list[str]]]:
    """Assign every parameter name to the stem, a stage or the head, in execution order.

    Returns ``[(label, [parameter names]), ...]`` with the labels of ``model.stage_names()``
    (e.g. ``stem, layer1..layer4, head`` for ResNet; ``stage1..stage5, head`` for VGG). Freezing
    "stages:N" is then: freeze every group before index N (+1 with a stem), train the rest.
    """
    groups: list[tuple[str, list[str]]] = [(label, []) for label, _ in model._stages]
    prefixes = [(i, path) for i, (_, paths) in enumerate(model._stages) for path in paths]
    for name, _ in model.named_parameters():
        for i, path in prefixes:
            if name == path or name.startswith(path + "."):
                groups[i][1].append(name)
                break
        else:  # an internal invariant: each family lists all of its modules
            raise AssertionError(f"parameter {name} of {type(model).__name__} is in no stage")
    return groups


def conv_output_size(size: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> int:
    """Spatial size after a conv/pool: floor_or_ceil((size + 2p - k) / s) + 1."""
    steps = (size + 2 * padding - kernel) / stride
    return (math.ceil(steps) if ceil else math.floor(steps)) + 1


def count_parameters(model: nn.Module, *, exclude: Sequence[str] = ()) -> int:
    """Number of parameters, leaving out those under the module paths in ``exclude``."""
    total = 0
    for name, p in model.named_parameters():
        if any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        total += p.numel()
    return total


def zero_input(model: nn.Module, in_channels: int, image_size: int, batch: int = 1) -> Tensor:
    """A (batch, C, H, W) zero tensor on the model's device/dtype."""
    p = next(model.parameters())
    return torch.zeros(batch, in_channels, image_size, image_size, device=p.device, dtype=p.dtype)


def make_default_cfg(
    *,
    in_channels: int,
    image_size: int,
    num_classes: int,
    small_input: bool,
    mean: Sequence[float],
    std: Sequence[float],
    variant: str,
    **extra: object,
) -> dict:
    """The ``default_cfg`` every model carries (name/family are added by ``create_model``).

    ``mean``/``std`` are per input channel, for pixels scaled to [0, 1]:
    ``x = (pixel / 255 - mean) / std``.
    """
    return {
        "input_size": (in_channels, image_size, image_size),
        "mean": channel_stats(mean, in_channels),
        "std": channel_stats(std, in_channels),
        "num_classes": num_classes,
        "small_input": small_input,
        "interpolation": "bilinear",
        "variant": variant,
        **extra,
    }
