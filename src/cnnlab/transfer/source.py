"""Where task A's knowledge comes from: a cnnlab run / checkpoint, ImageNet, or a local weights
file.

``load_pretrained(model, source, ...)`` copies the source's tensors into a freshly built target
model and says what happened to every tensor:

* ``loaded``: copied unchanged;
* ``reinitialised``: the model's own fresh initialisation was kept -- the classifier (and
  GoogLeNet's auxiliary classifiers) whenever the source's classes are not the target's classes
  (another count, or the same count with other names: task A's "digit 3" output means nothing for
  task B's "digit 8"), and tensors whose shape differs only because of the zoo's small-input
  variant;
* ``adapted``: the first convolution for another number of input channels (the zoo's
  :func:`cnnlab.models.adapt_first_conv`: summed kernels for 1 channel, repeated and rescaled for
  N).

Everything else must fit exactly (the zoo's ``apply_state_dict``); a checkpoint of another
architecture raises :class:`~cnnlab.errors.CheckpointError` listing the first missing / unexpected
/ wrong-shape keys.

Sources:

* a cnnlab run directory or ``.safetensors`` checkpoint (``cnnlab.run.resolve_weights`` picks the
  best verified checkpoint; ``cnnlab.engine.checkpoint.read_weights`` checks it is complete and
  finite and returns its metadata: model, class names, in_channels, preprocess);
* ``"imagenet"`` (or a torchvision tag such as ``IMAGENET1K_V2``): torchvision's published weights;
* a ``.safetensors`` / ``.pt`` / ``.pth`` state dict in torchvision or timm layout (no cnnlab
  metadata).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass
class SourceReport:
    """What loading the source did (JSON-able through ``to_dict``)."""

    source: str  # as the user gave it
    kind: str  # "cnnlab" | "imagenet" | "file"
    weights: str  # the file actually read, or the torchvision weights' name
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    layout: str = "cnnlab"
    source_model: str | None = None
    source_class_names: list[str] | None = None
    source_in_channels: int | None = None
    head_replaced: bool = False
    preprocess: dict[str, Any] | None = None  # mean/std per *target* channel, image_size, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _head_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier and auxiliary classifiers (what depends on the classes)."""
    paths = (model.classifier_path, *getattr(model, "aux_classifier_paths", ()))
    return [k for k in model.state_dict() if any(k.startswith(p + ".") for p in paths)]


def _is_cnnlab_checkpoint(path: Path) -> bool:
    if path.is_dir():
        return True
    return path.suffix == ".safetensors" and path.is_file()


def check_source_found(source: str, *, label: str = "init_from=") -> None:
    """Refuse a weights source that is neither a torchvision tag nor an existing path, in one
    line naming it (``label`` is how the caller's user wrote it: ``init_from=`` or ``source ``)."""
    from cnnlab.models._weights import torchvision_tag

    if torchvision_tag(str(source)) is None and not Path(str(source)).expanduser().exists():
        raise CheckpointError(
            f"{label}{source!r} not found; give a cnnlab run directory, a .safetensors "
            "checkpoint, 'imagenet' (or a torchvision tag such as IMAGENET1K_V1), or a "
            ".safetensors/.pt/.pth state dict"
        )


def load_pretrained(
    model: nn.Module,
    source: str,
    *,
    model_name: str,
    class_names: list[str],
    in_channels: int,
) -> SourceReport:
    """Load ``source`` into ``model`` (built for the target's classes and channels)."""
    from cnnlab.models._registry import load_pretrained as load_weights  # timm: or torchvision
    from cnnlab.models._weights import torchvision_tag

    path = Path(str(source)).expanduser()
    if not path.exists() and torchvision_tag(str(source)) is not None:
        report = load_weights(model, model_name, str(source))
        return _from_zoo_report(model, source, "imagenet", report, class_names)
    if _is_cnnlab_checkpoint(path):
        report = _load_cnnlab(model, path, model_name=model_name, class_names=class_names,
                              in_channels=in_channels)  # fmt: skip
        if report is not None:
            return report
    check_source_found(source)
    report = load_weights(model, model_name, path)
    return _from_zoo_report(model, source, "file", report, class_names)


def _from_zoo_report(
    model: nn.Module, source: str, kind: str, report: dict, class_names: list[str]
) -> SourceReport:
    cfg = getattr(model, "default_cfg", {})
    out = SourceReport(
        source=str(source),
        kind=kind,
        weights=str(report["source"]),
        loaded=list(report["loaded"]),
        reinitialised=list(report["reinitialised"]),
        adapted=list(report["adapted"]),
        layout=str(report.get("layout", "torchvision")),
        source_model=cfg.get("name"),
        head_replaced=bool(set(_head_keys(model)) & set(report["reinitialised"])),
        # ImageNet weights bring their own statistics (load_weights put them, per target channel, in
        # default_cfg); a bare file has none, so the family's defaults (ImageNet's for AlexNet ...
        # ResNet).
        preprocess={"mean": list(cfg.get("mean", ())), "std": list(cfg.get("std", ()))}
        if cfg.get("mean")
        else None,
    )
    if kind == "imagenet" and not out.head_replaced and len(class_names) == 1000:
        log.warning(
            "the target has 1000 classes, so ImageNet's classifier was kept; its outputs are "
            "ImageNet's classes, not necessarily yours in the same order"
        )
    return out


def _load_cnnlab(
    model: nn.Module, path: Path, *, model_name: str, class_names: list[str], in_channels: int
) -> SourceReport | None:
    """A cnnlab checkpoint; None for a plain safetensors file without cnnlab metadata."""
    from cnnlab.engine.checkpoint import read_weights
    from cnnlab.models._base import channel_stats
    from cnnlab.models._weights import apply_state_dict
    from cnnlab.run import resolve_weights

    weights = resolve_weights(path)
    state, meta = read_weights(weights)
    if "model" not in meta:
        return None  # a bare state dict: the zoo's loader handles torchvision / timm layouts
    src_model = str(meta["model"])
    src_classes = [str(c) for c in meta.get("class_names") or []]
    src_channels = int(meta.get("in_channels", 0)) or None
    # Task A's outputs are meaningless for task B unless the classes are the same, in the same
    # order: the head keeps the target model's fresh initialisation (never loaded, even at the same
    # shape).
    head = _head_keys(model)
    replace_head = src_classes != list(class_names)
    if replace_head:
        own = model.state_dict()
        state = dict(state)
        for key in head:
            if key in state:
                state[key] = own[key]
    try:
        report = apply_state_dict(model, state, source=str(weights))
    except CheckpointError as err:
        hint = (
            f" The source is a {src_model} checkpoint; fine-tune it with model={src_model}."
            if src_model != model_name
            else ""
        )
        raise CheckpointError(f"{err}.{hint}") from None
    if src_model != model_name:
        log.warning(
            "%s was trained as %s, the target model is %s; their tensors fit, so they were loaded",
            weights,
            src_model,
            model_name,
        )
    loaded = [k for k in report["loaded"] if not (replace_head and k in head)]
    reinit = list(dict.fromkeys([*(k for k in head if replace_head), *report["reinitialised"]]))
    preprocess = dict(meta.get("preprocess") or {})
    if preprocess.get("mean") and len(preprocess["mean"]) != in_channels:
        # The adapted first conv expects every channel normalised like the source's (average)
        # channel.
        preprocess["mean"] = list(channel_stats(preprocess["mean"], in_channels))
        preprocess["std"] = list(channel_stats(preprocess["std"], in_channels))
        preprocess["in_channels"] = in_channels
    size = model.default_cfg.get("input_size", (0, 0, 0))[-1]
    if preprocess.get("image_size") and int(preprocess["image_size"]) != int(size):
        log.warning(
            "the source was trained on %s px images, the target uses %s px; features learnt at one "
            "scale transfer less well to another (set image_size=%s to match)",
            preprocess["image_size"],
            size,
            preprocess["image_size"],
        )
    out = SourceReport(
        source=str(path),
        kind="cnnlab",
        weights=str(weights),
        loaded=loaded,
        reinitialised=reinit,
        adapted=list(report["adapted"]),
        layout="cnnlab",
        source_model=src_model,
        source_class_names=src_classes or None,
        source_in_channels=src_channels,
        head_replaced=replace_head,
        preprocess=preprocess or None,
    )
    log.info(
        "init from %s (%s): %d tensors loaded; re-initialised: %s; adapted: %s",
        weights,
        src_model,
        len(out.loaded),
        ", ".join(out.reinitialised) or "none",
        ", ".join(out.adapted) or "none",
    )
    return out
