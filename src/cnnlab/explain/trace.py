"""Layer trace: what every layer of a trained CNN computes for one image (computing, no drawing).

:func:`trace_image` runs one forward pass with forward hooks and keeps, for every executed layer
in execution order, the lecture's description of it (the rows of
:func:`cnnlab.models.summary.layer_table`: kind, detail, name) together with what that layer
produced for *this* image:

* spatial outputs ``(C, H, W)`` (convolution, batch norm, ReLU, pooling, concat, residual add): the
  first ``max_channels`` feature maps, plus statistics over all channels;
* vector outputs ``(L,)`` (flattening, fully connected, output): the first ``max_vector`` values;
* the first convolution's learned filters ``(K, C_in, k, k)``, the flattened vector's length, the
  logits and the output probabilities ``softmax(logits)``.

Memory stays bounded: each layer keeps at most ``max_channels x H x W`` floats (the *first*
channels, so that one filter can be followed through convolution -> ReLU -> pooling, which keep
channel order).
Statistics (mean, std, min, max, fraction of exact zeros, per-channel means) are computed on the
full output before anything is dropped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.errors import ConfigError
from cnnlab.models.summary import layer_table

log = logging.getLogger(__name__)

MAX_CHANNELS = 16  # feature maps kept per layer for display
MAX_VECTOR = 4096  # values kept per vector layer (AlexNet's/VGG's FC layers are 4096 wide)
MAX_FILTERS = 64  # first-layer filters kept (AlexNet has 64, VGG/ResNet 64, LeNet 6)


@dataclass
class LayerTrace:
    """One executed layer: the lecture's words for it and what it produced for the traced image."""

    index: int
    name: str  # module path (the block's path for "residual add" / "concat/inception")
    kind: str  # convolution, ReLU, pooling, flattening, fully connected, output, batch norm, ...
    type: str  # class name ("" for operations that are not modules)
    detail: str  # kernel/stride/filters, sizes, p, ...
    params: int
    output_shape: tuple[int, ...]  # without the batch dimension: (C, H, W) or (L,)
    stats: dict[str, float]  # mean, std, min, max, fraction_zero over the whole output
    maps: Tensor | None = None  # (min(C, max_channels), H, W) float32, CPU: spatial outputs only
    channel_means: Tensor | None = None  # (C,) mean activation of every channel: spatial only
    vector: Tensor | None = None  # (min(L, max_vector),) float32, CPU: vector outputs only

    @property
    def is_spatial(self) -> bool:
        return len(self.output_shape) == 3

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "index": self.index,
            "name": self.name,
            "kind": self.kind,
            "type": self.type,
            "detail": self.detail,
            "params": self.params,
            "output_shape": list(self.output_shape),
            "stats": dict(self.stats),
        }
        if self.vector is not None:
            d["length"] = self.output_shape[0]
        return d


@dataclass
class Trace:
    """Everything :func:`trace_image` found; ``to_dict()`` is the JSON view (no full tensors)."""

    input_shape: tuple[int, ...]  # (C, H, W)
    layers: list[LayerTrace]
    logits: Tensor  # (num_classes,) float32
    probs: Tensor  # (num_classes,) softmax(logits)
    class_names: list[str]
    first_conv: str  # module path of the first convolution
    first_filters: Tensor  # (min(K, MAX_FILTERS), C_in, k, k) float32 weights
    first_filters_shape: tuple[int, ...]  # full (K, C_in, k, k)
    flatten_length: int | None  # length of the vector entering the fully connected layers
    stages: list[dict[str, Any]] = field(default_factory=list)  # feature_info + output shapes
    # a multi-label model: ``probs`` are sigmoid(logits), each label's own probability
    multilabel: bool = False

    @property
    def predicted(self) -> int:
        return int(self.probs.argmax())

    def top_k(self, k: int) -> list[tuple[int, str, float]]:
        """``[(class index, class name, probability), ...]`` best first."""
        k = max(1, min(int(k), self.probs.numel()))
        values, indices = self.probs.topk(k)
        return [
            (int(i), self.class_names[int(i)], float(p))
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    def of_kind(self, *kinds: str) -> list[LayerTrace]:
        return [layer for layer in self.layers if layer.kind in kinds]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers: shapes, kinds, statistics, probabilities (no feature maps)."""
        if not self.probs.numel():  # a backbone or dense network: the layers only
            return {
                "input_shape": list(self.input_shape),
                "first_conv": {
                    "name": self.first_conv,
                    "weight_shape": list(self.first_filters_shape),
                },
                "stages": [dict(s) for s in self.stages],
                "layers": [layer.to_dict() for layer in self.layers],
            }
        return {
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "predicted": self.class_names[self.predicted],
            "probabilities": {
                name: float(p)
                for name, p in zip(self.class_names, self.probs.tolist(), strict=True)
            },
            "top": [{"class": n, "index": i, "probability": p} for i, n, p in self.top_k(5)],
            "logits": [float(v) for v in self.logits.tolist()],
            "first_conv": {"name": self.first_conv, "weight_shape": list(self.first_filters_shape)},
            "flatten_length": self.flatten_length,
            "stages": [dict(s) for s in self.stages],
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _stats(out: Tensor) -> dict[str, float]:
    v = out.detach().float()
    return {
        "mean": float(v.mean()),
        "std": float(v.std(unbiased=False)),
        "min": float(v.min()),
        "max": float(v.max()),
        # after a ReLU: the share of units that are "off" (exactly zero)
        "fraction_zero": float((v == 0).float().mean()),
    }


def _reduce(out: Tensor, max_channels: int, max_vector: int) -> dict[str, Any]:
    """What one hook keeps of a (1, ...) output; cloned now, as a later in-place ReLU changes it."""
    o = out.detach()[0]
    rec: dict[str, Any] = {"shape": tuple(o.shape), "stats": _stats(o)}
    if o.dim() == 3:  # C x H x W
        rec["maps"] = o[:max_channels].float().cpu().clone()
        rec["channel_means"] = o.float().mean(dim=(1, 2)).cpu()
    elif o.dim() == 1:  # L
        rec["vector"] = o[:max_vector].float().cpu().clone()
    return rec


def _module_of_row(model: nn.Module, name: str) -> str:
    """The module whose output a layer_table row shows.

    Rows name a module path, except operations that are not modules (GoogLeNet's functional ReLU,
    ``"conv1.relu"``), whose output is the output of the enclosing module (``"conv1"``).
    """
    path = name
    while path:
        try:
            model.get_submodule(path)
            return path
        except AttributeError:
            path = path.rpartition(".")[0]
    raise AssertionError(f"layer_table row {name!r} names no module of {type(model).__name__}")


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    path = getattr(model, "first_conv_path", "")
    if path:
        module = model.get_submodule(path)
        if isinstance(module, nn.Conv2d):
            return path, module
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ConfigError(f"{type(model).__name__} has no convolution layer to trace")


def trace_image(
    model: nn.Module,
    image: Tensor,
    *,
    class_names: Sequence[str] | None = None,
    max_channels: int = MAX_CHANNELS,
    max_vector: int = MAX_VECTOR,
    stages_of: str = "",
    classifier: bool = True,
) -> Trace:
    """Trace one normalised image ``(1, C, H, W)`` through ``model`` (eval mode, no gradients).

    The layers, their order, names and kinds are those of
    :func:`cnnlab.models.summary.layer_table` (one row per executed leaf layer, plus "residual add"
    and "concat/inception" rows); this function adds what each produced for ``image``.
    ``probs = softmax(model(image))`` over ``class_names`` (default ``"0".."K-1"``).

    ``classifier=False`` traces a network whose output is not one score per class (a
    segmentation network's ``(1, K, H, W)`` logits, a detector's backbone): ``logits`` and
    ``probs`` are then empty. ``stages_of``: path of the submodule whose ``feature_info`` names the
    stages (a segmentation model's ``"encoder.backbone"``); stage names get that prefix.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ConfigError(
            f"trace_image takes one image shaped (1, C, H, W), got {tuple(image.shape)}"
        )
    _, in_channels, height, width = image.shape
    p = next(model.parameters())
    image = image.to(device=p.device, dtype=p.dtype)

    rows = layer_table(model, int(height), int(in_channels))
    # row i shows the k-th call of module m: count calls per module in the same order
    wanted: dict[str, int] = defaultdict(int)
    row_sources: list[tuple[str, int]] = []
    for row in rows:
        path = _module_of_row(model, row["name"])
        row_sources.append((path, wanted[path]))
        wanted[path] += 1
    prefix = stages_of + "." if stages_of else ""
    info = [
        {**f, "name": prefix + f["name"], "module": prefix + f["module"]}
        for f in getattr(model.get_submodule(stages_of), "feature_info", [])
    ]
    stage_paths = [f["module"] for f in info]

    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stage_shapes: dict[str, tuple[int, ...]] = {}

    def hook(path: str):
        def fn(module: nn.Module, inputs: object, output: object) -> None:
            if not isinstance(output, Tensor):
                return
            if path in wanted:
                records[path].append(_reduce(output, max_channels, max_vector))
            if path in stage_paths:
                stage_shapes[path] = tuple(output.shape[1:])

        return fn

    handles = [
        model.get_submodule(path).register_forward_hook(hook(path))
        for path in {*wanted, *stage_paths}
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            logits = model(image)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    layers: list[LayerTrace] = []
    for row, (path, call) in zip(rows, row_sources, strict=True):
        rec = records[path][call]
        layers.append(
            LayerTrace(
                index=row["index"],
                name=row["name"],
                kind=row["kind"],
                type=row["type"],
                detail=row["detail"],
                params=row["params"],
                output_shape=rec["shape"],
                stats=rec["stats"],
                maps=rec.get("maps"),
                channel_means=rec.get("channel_means"),
                vector=rec.get("vector"),
            )
        )

    if classifier:
        logits = logits.detach().float().cpu()[0]
    else:  # not one score per class: no probabilities to show
        logits = torch.zeros(0)
    probs = logits.softmax(0)
    names = [str(c) for c in class_names] if class_names is not None else None
    if not classifier:
        names = names or []
    elif names is None:
        names = [str(i) for i in range(logits.numel())]
    elif len(names) != logits.numel():
        raise ConfigError(
            f"{len(names)} class names given for a model with {logits.numel()} outputs"
        )
    conv_name, conv = _first_conv(model)
    flatten = [layer for layer in layers if layer.kind == "flattening"]
    if flatten:
        flatten_length: int | None = flatten[0].output_shape[0]
    else:  # no Flatten module: the vector entering the first fully connected layer
        fc = [layer for layer in layers if layer.kind in ("fully connected", "output")]
        flatten_length = None
        if fc:
            linear = model.get_submodule(fc[0].name)
            flatten_length = int(getattr(linear, "in_features", 0)) or None
    stages = [
        {
            "name": f["name"],
            "stage": f.get("stage", f["name"]),
            "num_chs": f["num_chs"],
            "reduction": f["reduction"],
            "output_shape": list(stage_shapes.get(f["module"], ())),
        }
        for f in info
    ]
    return Trace(
        input_shape=(int(in_channels), int(height), int(width)),
        layers=layers,
        logits=logits,
        probs=probs,
        class_names=names,
        first_conv=conv_name,
        first_filters=conv.weight.detach()[:MAX_FILTERS].float().cpu().clone(),
        first_filters_shape=tuple(conv.weight.shape),
        flatten_length=flatten_length,
        stages=stages,
    )
