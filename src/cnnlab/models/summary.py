"""Seeing the architecture: a layer table in the lecture's words, FLOPs, and the zoo table.

* :func:`layer_table` runs one real forward pass (batch 1, eval mode, no grad) with forward hooks
  and returns one row per executed leaf layer, in execution order. Rows for operations that are
  not modules are added where they happen: "residual add" inside each ResNet block (before the
  block's last ReLU), "concat/inception" after each inception block, and GoogLeNet's functional
  ReLU after each conv + BN unit.
* :func:`count_flops` counts floating-point operations with ``torch.utils.flop_counter``
  (a multiply-add counts as 2 FLOPs; convolutions and matrix products only -- bias adds,
  activations, pooling and BN are not counted, as in most published FLOP tables).
* :func:`zoo_table` builds every registered model on the ``meta`` device (no memory, no compute)
  to list parameters and FLOPs at one input size.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from ._base import count_parameters, zero_input
from ._registry import create_model, list_models, model_info

# The lecture's six layer kinds, plus the ones the deeper families add.
KINDS = (
    "convolution",
    "ReLU",
    "activation",
    "pooling",
    "flattening",
    "fully connected",
    "output",
    "batch norm",
    "dropout",
    "concat/inception",
    "residual add",
    "layer norm",
    "channel scale",
    "concat/shuffle",
)

# One sentence per block type of the modern backbones, printed under ``cnnlab models show``'s
# layer table, in the table's words; a block's last row names its type under the key "block".
BLOCK_NOTES = {
    "inverted residual": "inverted residual block (MobileNetV2/V3, EfficientNet's MBConv): a 1x1 "
    "convolution expands the channels, a depthwise convolution (groups = channels: one 3x3 or "
    "5x5 filter per channel, no mixing between channels) filters each channel on its own, and a "
    "1x1 convolution mixes the channels back down with no ReLU after it (a linear bottleneck); "
    "depthwise + 1x1 is a depthwise-separable convolution, about k*k + C_out multiplications "
    "per input value instead of k*k*C_out; the residual add joins the block's input when the "
    "block keeps its size",
    "fused inverted residual": "fused inverted residual block (EfficientNetV2's Fused-MBConv): "
    "one full 3x3 convolution replaces the 1x1 expansion + depthwise pair (faster on GPUs at "
    "early, wide-map stages), then a 1x1 convolution back down and the residual add",
    "ConvNeXt block": "ConvNeXt block: a 7x7 depthwise convolution (one filter per channel), "
    "layer norm, a fully connected layer applied at every pixel (a 1x1 convolution) expanding "
    "the channels 4x, GELU, a fully connected layer back, each channel scaled by a learnt factor "
    "(layer scale, counted in the residual add's row), then the residual add",
    "RegNet block": "RegNet block: a ResNet bottleneck (1x1 convolution, 3x3 grouped "
    "convolution, 1x1 convolution; RegNetY with squeeze-and-excitation) and the residual add "
    "before the last ReLU",
    "ShuffleNetV2 unit": "ShuffleNetV2 unit: the channels are split in two; one half passes "
    "unchanged, the other goes through 1x1 convolution, 3x3 depthwise convolution, 1x1 "
    "convolution; the halves are concatenated and the channels shuffled, so the next unit "
    "mixes them",
    "squeeze-and-excitation": "squeeze-and-excitation: global average pooling, two 1x1 "
    "convolutions and a sigmoid (MobileNetV3: a hard sigmoid) give one gate in (0, 1) per "
    "channel, and each channel of the block is multiplied by its gate (the channel scale row)",
}

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _pair(v: object) -> str:
    a, b = v if isinstance(v, tuple) else (v, v)  # type: ignore[misc]
    return f"{a}x{b}"


def _describe(module: nn.Module) -> tuple[str, str]:
    """(kind, detail) of a leaf module in the lecture's words."""
    if isinstance(module, nn.Conv2d):
        groups = ""
        if module.groups > 1 and module.groups == module.in_channels:
            groups = "depthwise (one filter per channel), "
        elif module.groups > 1:
            groups = f"grouped ({module.groups} groups), "
        return "convolution", (
            f"{groups}{_pair(module.kernel_size)}, {module.out_channels} filters, "
            f"stride {module.stride[0]}, padding {module.padding[0]}"  # type: ignore[index]
        )
    if isinstance(module, nn.ReLU):
        return "ReLU", "max(0, z)"
    if isinstance(module, nn.ReLU6):
        return "ReLU", "min(max(0, z), 6)"
    if isinstance(module, (nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid)):
        return "activation", type(module).__name__.lower()
    if isinstance(module, nn.LayerNorm):
        return "layer norm", f"{module.normalized_shape[0]} channels"
    if isinstance(module, nn.MaxPool2d):
        return "pooling", f"max {_pair(module.kernel_size)}, stride {_pair(module.stride)}"
    if isinstance(module, nn.AvgPool2d):
        return "pooling", f"average {_pair(module.kernel_size)}, stride {_pair(module.stride)}"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        how = "average" if isinstance(module, nn.AdaptiveAvgPool2d) else "max"
        return "pooling", f"adaptive {how} to {_pair(module.output_size)}"
    if isinstance(module, nn.Flatten):
        return "flattening", "feature maps -> one vector"
    if isinstance(module, nn.Linear):
        return "fully connected", f"{module.in_features} -> {module.out_features}"
    if isinstance(module, nn.BatchNorm2d):
        return "batch norm", f"{module.num_features} channels"
    if isinstance(module, nn.Dropout):
        return "dropout", f"p={module.p}"
    if type(module).__name__ == "StochasticDepth":  # torchvision.ops: drops the whole branch
        return "dropout", f"stochastic depth, p={module.p} per sample"  # type: ignore[attr-defined]
    return type(module).__name__.lower(), ""


def _shape(output: object) -> tuple[int, ...] | None:
    return tuple(output.shape[1:]) if isinstance(output, Tensor) else None


def layer_table(model: nn.Module, image_size: int, in_channels: int) -> list[dict]:
    """One row per executed layer of ``model`` on a (1, in_channels, image_size, image_size) input.

    Row keys: ``index``, ``name`` (module path; the block's path for "residual add" and
    "concat/inception" rows, so a module's output is the last row under its path), ``kind`` (see
    :data:`KINDS`; the last fully connected layer is "output"), ``type`` (class name),
    ``detail`` (kernel/stride, sizes, p),
    ``output_shape`` (C, H, W) or (features,) without the batch dimension, ``params`` (counted at
    the module's first call, so the column sums to the parameters used in eval mode), ``block``
    (the :data:`BLOCK_NOTES` key of a modern backbone's block row, else absent).
    """
    # the blocks of the torchvision-built families (imported here: see cnnlab.models.resnet)
    from torchvision.models.convnext import CNBlock
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.googlenet import BasicConv2d, Inception
    from torchvision.models.mobilenetv2 import InvertedResidual as V2Block
    from torchvision.models.mobilenetv3 import InvertedResidual as V3Block
    from torchvision.models.regnet import ResBottleneckBlock
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.shufflenetv2 import InvertedResidual as ShuffleUnit
    from torchvision.ops import SqueezeExcitation

    blocks: dict[type, str] = {
        V2Block: "inverted residual", V3Block: "inverted residual", MBConv: "inverted residual",
        FusedMBConv: "fused inverted residual", CNBlock: "ConvNeXt block",
    }  # fmt: skip

    rows: list[dict] = []
    counted: set[int] = set()

    def add(name: str, module: nn.Module | None, kind: str, detail: str, output: object) -> dict:
        params = 0
        if module is not None and id(module) not in counted:
            counted.add(id(module))
            params = sum(p.numel() for p in module.parameters(recurse=False))
        row = {
            "name": name,
            "kind": kind,
            "type": type(module).__name__ if module is not None else "",
            "detail": detail,
            "output_shape": _shape(output),
            "params": params,
        }
        rows.append(row)
        return row

    def leaf_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            kind, detail = _describe(module)
            add(name, module, kind, detail, output)

        return hook

    def residual_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            # torchvision blocks compute relu(out + identity): the add precedes the last ReLU row
            last = rows.pop() if rows and rows[-1]["name"] == f"{name}.relu" else None
            add(name, None, "residual add", "block output + shortcut", output)
            if last is not None:
                rows.append(last)

        return hook

    def block_hook(name: str, block: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            # torchvision: x + block(x) when the block keeps its size (ConvNeXt: always, after
            # layer scale -- the block's own parameter, counted here)
            if getattr(module, "use_res_connect", True):
                add(name, module, "residual add", f"{block} output + shortcut", output)
                rows[-1]["block"] = block
            elif rows:
                rows[-1]["block"] = block

        return hook

    def regnet_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            # activation(proj(x) + f(x)): the add precedes the last ReLU row
            last = rows.pop() if rows and rows[-1]["name"] == f"{name}.activation" else None
            add(name, None, "residual add", "RegNet block output + shortcut", output)
            rows[-1]["block"] = "RegNet block"
            if last is not None:
                rows.append(last)

        return hook

    def shuffle_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            add(name, None, "concat/shuffle", "2 halves joined, channels shuffled", output)
            rows[-1]["block"] = "ShuffleNetV2 unit"

        return hook

    def excite_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            add(name, None, "channel scale", "each channel x its gate", output)
            rows[-1]["block"] = "squeeze-and-excitation"

        return hook

    def concat_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            add(name, None, "concat/inception", "4 branches joined along channels", output)

        return hook

    def functional_relu_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            add(f"{name}.relu", None, "ReLU", "max(0, z)", output)

        return hook

    handles = []
    for name, module in model.named_modules():
        if not name or isinstance(module, nn.Identity):
            continue
        if isinstance(module, (BasicBlock, Bottleneck)):
            handles.append(module.register_forward_hook(residual_hook(name)))
        elif isinstance(module, Inception):
            handles.append(module.register_forward_hook(concat_hook(name)))
        elif isinstance(module, BasicConv2d):  # conv -> BN -> F.relu (not a module)
            handles.append(module.register_forward_hook(functional_relu_hook(name)))
        elif type(module) in blocks:
            handles.append(module.register_forward_hook(block_hook(name, blocks[type(module)])))
        elif isinstance(module, ResBottleneckBlock):
            handles.append(module.register_forward_hook(regnet_hook(name)))
        elif isinstance(module, ShuffleUnit):
            handles.append(module.register_forward_hook(shuffle_hook(name)))
        elif isinstance(module, SqueezeExcitation):
            handles.append(module.register_forward_hook(excite_hook(name)))
        elif next(module.children(), None) is None:
            handles.append(module.register_forward_hook(leaf_hook(name)))

    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(zero_input(model, in_channels, image_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    fully_connected = [r for r in rows if r["kind"] == "fully connected"]
    if fully_connected:
        fully_connected[-1]["kind"] = "output"
    for i, row in enumerate(rows):
        row["index"] = i
    return rows


def flops_of(model: nn.Module, x: Tensor) -> int:
    """FLOPs of one eval-mode forward pass of ``model`` on ``x`` (multiply-add = 2 FLOPs), counted by
    torch's FlopCounterMode. The one FLOP counter: models show, the precision policy, reports."""
    with _without_triton_import():  # imported here, and without triton: only counting needs it
        from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), _without_dynamo_import(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def _without_triton_import() -> Iterator[None]:
    """torch.utils.flop_counter imported without importing triton's runtime.

    Why: the module imports ``triton.runtime.jit`` at import time (0.09 s on a 2-core CPU, on the
    critical path of every ``cnnlab train``) only to recognise hand-written triton kernels, which
    an eager forward pass of a zoo model never launches; when triton is missing it counts
    everything else as usual. So, unless triton is already loaded, the import is answered "not
    installed" (a ``None`` entry in ``sys.modules``) for this one import and torch's warning about
    it is silenced; the entry is taken out after, so a later ``import triton`` (torch.compile)
    loads it normally."""
    name = "triton.runtime.jit"
    if name in sys.modules or "torch.utils.flop_counter" in sys.modules:
        yield
        return
    torch_log = logging.getLogger("torch.utils.flop_counter")
    was_disabled, torch_log.disabled = torch_log.disabled, True
    sys.modules[name] = None  # type: ignore[assignment]  # `import` raises ImportError
    try:
        yield
    finally:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]
        torch_log.disabled = was_disabled


@contextlib.contextmanager
def _without_dynamo_import() -> Iterator[None]:
    """FlopCounterMode's dispatch run plain while torch._dynamo is not imported.

    Why: torch wraps every TorchDispatchMode's ``__torch_dispatch__`` in ``torch._disable_dynamo``,
    whose first call imports torch._dynamo (1.0-1.3 s on a 2-core CPU) to build the disabled
    function, then caches it on the function as ``__dynamo_disable``. Counting here is an eager
    forward, and nothing can be tracing while torch._dynamo is not imported, so the disabled
    function is the function itself: it is put in that slot for the count and taken out after,
    so a later torch.compile finds torch's own. Without the slot (another torch), torch's path runs.
    """
    from torch.utils.flop_counter import _FlopCounterMode

    dispatch = getattr(_FlopCounterMode.__torch_dispatch__, "__wrapped__", None)
    if dispatch is None or "torch._dynamo" in sys.modules or hasattr(dispatch, "__dynamo_disable"):
        yield
        return
    setattr(dispatch, "__dynamo_disable", dispatch)
    try:
        yield
    finally:
        delattr(dispatch, "__dynamo_disable")


def count_flops(model: nn.Module, image_size: int, in_channels: int) -> int:
    """FLOPs of one eval-mode forward pass on a single (in_channels, image_size, image_size) image."""
    return flops_of(model, zero_input(model, in_channels, image_size))


def _main_params(model: nn.Module) -> int:
    """Parameters used at inference (GoogLeNet's auxiliary heads left out)."""
    aux = getattr(model, "default_cfg", {}).get("aux_classifiers", ())
    return count_parameters(model, exclude=aux)


def model_summary(
    name: str, *, num_classes: int = 1000, in_channels: int = 3, image_size: int | None = None
) -> dict:
    """Everything ``cnnlab models show NAME`` prints, computed on the meta device (instant).

    Keys: ``info`` (:func:`model_info`), ``default_cfg``, ``params`` (inference parameters),
    ``params_total`` (incl. auxiliary heads), ``flops``, ``feature_info``, ``stages`` (group
    labels), ``layers`` (:func:`layer_table`), ``blocks`` (block type -> its sentence from
    :data:`BLOCK_NOTES`, for the modern backbones' blocks in the table).
    """
    with torch.device("meta"):
        model = create_model(
            name, num_classes=num_classes, in_channels=in_channels, image_size=image_size
        )
    size = model.default_cfg["input_size"][1]
    layers = layer_table(model, size, in_channels)
    present = {r["block"] for r in layers if "block" in r}
    return {
        "info": model_info(name),
        "default_cfg": dict(model.default_cfg),
        "params": _main_params(model),
        "params_total": count_parameters(model),
        "flops": count_flops(model, size, in_channels),
        "feature_info": [dict(f) for f in model.feature_info],
        "stages": model.stage_names(),
        "layers": layers,
        # what each kind of block in the table does, one sentence each
        "blocks": {b: note for b, note in BLOCK_NOTES.items() if b in present},
    }


def zoo_table(
    image_size: int = 224,
    in_channels: int = 3,
    num_classes: int = 1000,
    names: Sequence[str] | None = None,
) -> list[dict]:
    """One row per registered model: name, family, year, params, flops, small_input, paper,
    group (``"lecture"`` or ``"modern"``, see :data:`cnnlab.models._registry.GROUPS`).

    Models are built on the meta device, so the table costs no memory or arithmetic; ``params``
    leaves out training-only auxiliary heads (GoogLeNet), ``flops`` is one image at
    ``image_size`` with the variant that size selects. ``names``: these models only (default:
    every registered one, :func:`list_models` order: seconds with the modern backbones).
    """
    rows = []
    for name in list_models() if names is None else names:
        info = model_info(name)
        with torch.device("meta"):
            model = create_model(
                name, num_classes=num_classes, in_channels=in_channels, image_size=image_size
            )
        rows.append(
            {
                "name": name,
                "family": info["family"],
                "year": info["year"],
                "params": _main_params(model),
                "flops": count_flops(model, image_size, in_channels),
                "small_input": model.default_cfg["small_input"],
                "paper": info["paper"],
                "group": info["group"],
            }
        )
    return rows


#: the sizes `cnnlab models` lists the zoo at by default: the published parameter and FLOP counts
ZOO_DEFAULTS = {"image_size": 224, "in_channels": 3, "num_classes": 1000}


def zoo_record() -> dict:
    """What `cnnlab models` lists at :data:`ZOO_DEFAULTS`, computed from the registry: the zoo
    table, the groups' titles and the task architectures. The CLI reads it from the file
    ``cnnlab/cli/zoo.json`` instead (listing then needs no torch: about 2 s to import, and
    10 s to build 54 models on the meta device); tests/test_models.py checks the file equals
    this. Regenerate it after adding a model: ``python -m cnnlab.models``."""
    from ._registry import GROUPS, TASK_MODELS

    return {
        "note": "generated by `python -m cnnlab.models` from the registry; do not edit",
        **ZOO_DEFAULTS,
        "groups": dict(GROUPS),
        "rows": zoo_table(**ZOO_DEFAULTS),
        "task_models": {task: dict(names) for task, names in TASK_MODELS.items()},
    }
