"""``timm:NAME``: any of timm's models through :func:`cnnlab.models.create_model`.

``create_model("timm:resnet10t", num_classes=10, in_channels=1)`` builds
``timm.create_model("resnet10t", num_classes=10, in_chans=1, pretrained=False)`` and wraps it in
:class:`TimmModel`, which speaks the zoo's language (``forward_features``, ``forward_head``,
``reset_classifier``, ``feature_info``, stages, ``default_cfg``) from what timm itself records:
the model's ``feature_info`` (its stages; the CAM target is the last stage whose map is big
enough, as for every model) and ``pretrained_cfg`` (the classifier and first conv, the input size,
mean and std). A run records ``model: "timm:NAME"``, and the checkpoint loads back through the
same door. timm is imported only when a ``timm:`` name is used.

Pretrained weights (``weights=``):

* ``"imagenet"``: timm's own default weights for NAME (``NAME.TAG`` picks another tag) from the
  Hugging Face hub -- downloaded when online, read from the Hugging Face cache (``HF_HOME``,
  ``HF_HUB_CACHE``) when offline (``HF_HUB_OFFLINE=1``); missing weights are a one-line error
  naming the repository and the cache folder it looked in.
* a path to a ``.safetensors`` / ``.pt`` / ``.pth`` file in timm's layout: read by cnnlab's
  reader (safetensors, or ``torch.load(weights_only=True)``, never a pickle), then handed to
  timm's loader, which adapts the first conv to ``in_channels`` and drops a classifier of another
  class count (as ``pretrained=True`` does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.errors import CheckpointError, ConfigError, close_matches

from ._base import ClassifierModel, make_default_cfg

PREFIX = "timm:"


def is_timm(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def timm_name(name: str) -> str:
    """``"timm:resnet18"`` -> ``"resnet18"`` (``NAME.TAG`` kept), checked against
    ``timm.list_models()``: an unknown name is a one-line ConfigError with the closest names."""
    import timm

    arch = name[len(PREFIX) :]
    base = arch.split(".", 1)[0]
    known = timm.list_models()
    if not base or base not in known:
        raise ConfigError(
            f"unknown timm model {arch!r}{close_matches(base, known)}; timm has "
            f"{len(known)} models (timm.list_models('*resnet*') lists some by pattern); "
            "the zoo's own models are named without `timm:` (`cnnlab models`)"
        )
    return arch


def timm_info(name: str) -> dict[str, Any]:
    """What :func:`cnnlab.models.model_info` says about a ``timm:`` model (no model built)."""
    from timm.models import get_pretrained_cfg

    arch = timm_name(name)
    cfg = get_pretrained_cfg(arch)
    size = tuple(cfg.input_size) if cfg is not None else (3, 224, 224)
    return {
        "name": name,
        "family": "timm",
        "year": None,  # timm's configs carry no year
        "paper": (cfg.paper_name or "") if cfg is not None else "",
        "paper_url": (cfg.origin_url or "") if cfg is not None else "",
        "input_size": size,
        "small_input_below": None,
        "description": f"timm's {arch} (timm.create_model), wrapped in the zoo's interface",
        "pretrained": bool(cfg is not None and (cfg.hf_hub_id or cfg.url)),
        "group": "timm",
    }


class TimmModel(ClassifierModel):
    """A timm model (``self.net``) behind the zoo's surface."""

    def __init__(
        self, net: nn.Module, *, arch: str, num_classes: int, in_channels: int, image_size: int
    ) -> None:
        super().__init__()
        self.net = net
        cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
        classifier = cfg.get("classifier") or "fc"
        first = cfg.get("first_conv") or ""
        # distilled models name two heads ("head", "head_dist"): the first is the classifier
        self.classifier_path = "net." + (
            classifier[0] if isinstance(classifier, (list, tuple)) else classifier
        )
        self.first_conv_path = (
            "net." + (first[0] if isinstance(first, (list, tuple)) else first) if first else ""
        )
        self.feature_info = [
            {
                "name": "net." + f["module"],
                "module": "net." + f["module"],
                "stage": f["module"],
                "num_chs": int(f["num_chs"]),
                "reduction": int(f["reduction"]),
            }
            for f in getattr(net, "feature_info", [])
        ]
        self._stages = self._timm_stages()
        self.default_cfg = make_default_cfg(
            in_channels=in_channels,
            image_size=image_size,
            num_classes=num_classes,
            small_input=False,
            mean=cfg.get("mean") or (0.485, 0.456, 0.406),
            std=cfg.get("std") or (0.229, 0.224, 0.225),
            variant=f"timm {arch}",
            timm_model=arch,
        )

    def _timm_stages(self) -> list[tuple[str, tuple[str, ...]]]:
        """stem (parameters before the first stage), one group per ``feature_info`` stage that
        has parameters -- with the parameters between it and the stage before (MobileNetV4's
        ``blocks.3``, which timm's feature_info skips) -- and head (the rest: final norm, pooling,
        classifier): every parameter in exactly one group, in execution order, as
        :func:`cnnlab.models.group_parameters` needs. A parameter held by a module that contains
        the stages (a ViT's ``cls_token`` on the network itself) is listed by its own name."""
        stage_paths = [f["module"] for f in self.feature_info]
        groups: dict[str, list[str]] = {p: [] for p in stage_paths}
        stem: list[str] | None = None
        pending: list[str] = []
        for name, _ in self.named_parameters():
            owner = next((p for p in stage_paths if name.startswith(p + ".")), None)
            if owner is None:
                module = name.rpartition(".")[0]
                holds_stages = any(p.startswith(module + ".") for p in stage_paths)
                path = name if holds_stages else module
                if path not in pending:
                    pending.append(path)
                continue
            if stem is None:
                stem, pending = pending, []
            if owner not in groups[owner]:
                groups[owner].append(owner)
            groups[owner] += [p for p in pending if p not in groups[owner]]
            pending = []
        stages = [("stem", tuple(stem))] if stem else []
        stages += [(p.removeprefix("net."), tuple(groups[p])) for p in stage_paths if groups[p]]
        return [*stages, ("head", tuple(pending))]

    def stage_modules(self) -> list[tuple[str, list[nn.Module]]]:
        """As the zoo's, leaving out paths that name a parameter rather than a module."""
        modules = dict(self.named_modules())
        return [
            (label, [modules[p] for p in paths if p in modules]) for label, paths in self._stages
        ]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.net.forward_head(features)

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        """timm's own reset (its classifier may be a Linear, a 1x1 conv or a norm + Linear)."""
        from ._base import check_positive_int

        self.net.reset_classifier(check_positive_int(num_classes, "num_classes"))
        self.default_cfg["num_classes"] = num_classes
        self.default_cfg.pop("class_names", None)


def create_timm_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    weights: str | os.PathLike | None,
    image_size: int | None,
) -> TimmModel:
    """``timm.create_model(NAME, num_classes=, in_chans=, pretrained=)`` wrapped in
    :class:`TimmModel` (see the module docstring for ``weights``)."""
    import timm
    from timm.models import get_pretrained_cfg

    arch = timm_name(name)
    cfg = get_pretrained_cfg(arch)
    size = image_size or (int(cfg.input_size[-1]) if cfg is not None else 224)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_channels}
    if cfg is not None and cfg.fixed_input_size and image_size:
        kwargs["img_size"] = image_size  # ViT-like models build their position table for it
    source = None
    if weights is None:
        net = timm.create_model(arch, pretrained=False, **kwargs)
    elif str(weights).lower() == "imagenet":
        net, source = _from_hub(arch, cfg, kwargs, name)
    else:
        net, source = _from_file(arch, Path(weights).expanduser(), kwargs, name)
    model = TimmModel(
        net, arch=arch, num_classes=num_classes, in_channels=in_channels, image_size=size
    )
    model.default_cfg.update(name=name, family="timm", weights=source)
    return model


def _from_hub(
    arch: str, cfg: Any, kwargs: dict[str, Any], name: str, flag: str = "--weights"
) -> tuple[nn.Module, str]:
    """timm's published weights for ``arch``; ``flag``: the option that asked for them (a
    classification run's --weights, a segmentation or detection run's --init-from), named by
    the errors."""
    import timm
    from huggingface_hub import constants

    where = (cfg.hf_hub_id or cfg.url) if cfg is not None else None
    if not where:
        raise ConfigError(
            f"{name} has no published weights in timm; leave {flag} out (train from scratch) "
            f"or give {flag} PATH to a .safetensors file"
        )
    try:
        net = timm.create_model(arch, pretrained=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:  # LocalEntryNotFoundError is an OSError
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        looked = (
            f"the Hugging Face cache {constants.HF_HUB_CACHE}"
            if cfg.hf_hub_id
            else f"the torch hub cache {torch.hub.get_dir()}/checkpoints"
        )
        raise CheckpointError(
            f"{name} {flag} imagenet: the weights {where} are missing: not in {looked}"
            f"{offline} and not downloadable ({type(err).__name__}); download them once online, "
            f"or give {flag} PATH to a .safetensors file"
        ) from err
    return net, (f"hf-hub:{cfg.hf_hub_id}" if cfg.hf_hub_id else str(cfg.url))


def _check_keys(net: nn.Module, state: dict[str, Tensor], path: Path, name: str) -> None:
    """A file in timm's layout has every tensor of the model, the classifier aside (timm drops or
    keeps it by the class count); timm itself only logs missing and unexpected keys."""
    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)

    def head(key: str) -> bool:
        return any(key.startswith(h + ".") for h in heads)

    own = net.state_dict()
    missing = [k for k in own if k not in state and not head(k)]
    unexpected = [k for k in state if k not in own and not head(k)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {name}: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}; give a state dict saved from "
            f"timm's {name.removeprefix(PREFIX)} (timm layout)"
        )


def _from_file(arch: str, path: Path, kwargs: dict[str, Any], name: str) -> tuple[nn.Module, str]:
    import timm

    from ._weights import read_state_dict

    state = read_state_dict(path)  # safetensors or weights_only=True: never a pickle
    # checked against the whole network: timm loads the file before it cuts a features_only
    # extractor out of it, and that extractor has neither the classifier nor its pretrained_cfg
    whole = {k: v for k, v in kwargs.items() if k != "features_only"}
    _check_keys(timm.create_model(arch, pretrained=False, **whole), state, path, name)
    try:  # timm's loader: first conv adapted to in_chans, a classifier of another size dropped
        net = timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs
        )
    except RuntimeError as err:  # load_state_dict's missing / unexpected keys or shapes
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"{path} does not fit {name}: {' '.join(x.strip() for x in first[:3])[:300]}"
        ) from err
    return net, str(path)


class TimmEncoder(nn.Module):
    """A ``timm:`` segmentation encoder: ``timm.create_model(NAME, features_only=True)``, timm's
    own multi-scale feature extractor (its classifier and final pooling are never built), with the
    zoo Encoder's surface (cnnlab.models.segmentation): ``forward(x) -> [maps]`` shallow first,
    ``channels``, ``reductions``, ``info`` from timm's ``feature_info``. timm's default
    ``out_indices`` (every stage, e.g. reductions 2, 4, 8, 16, 32 for a ResNet) feed the decoder.
    ``backbone.net`` holds the network, so its tensors are named as a ``timm:NAME``
    classification run names them (``net.conv1.weight``): ``--init-from`` such a run works."""

    def __init__(self, net: nn.Module, arch: str) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({"net": net})
        self.arch = arch
        self.info = [
            {"module": "net." + f["module"], "num_chs": int(f["num_chs"]),
             "reduction": int(f["reduction"])}
            for f in net.feature_info.get_dicts()
        ]  # fmt: skip
        # The zoo's stage list (explain finds a backbone by it: CAM target stages, the trace),
        # with module paths that exist in the extractor: timm's FeatureListNet flattens nested
        # stages into children named with "_" (convnext's "stages.0" is its child "stages_0").
        modules = dict(net.named_modules())
        self.feature_info = [
            {"name": f"backbone.net.{path}", "module": f"backbone.net.{path}",
             "stage": f["module"], "num_chs": int(f["num_chs"]),
             "reduction": int(f["reduction"])}
            for f in net.feature_info.get_dicts()
            for path in [next((m for m in (f["module"], f["module"].replace(".", "_"))
                               if m in modules), None)]
            if path is not None
        ]  # fmt: skip
        if len(self.feature_info) != len(self.info):  # a stage timm names but does not hold
            self.feature_info = []
        cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
        self.default_cfg = {
            "name": PREFIX + arch,
            "mean": list(cfg.get("mean") or (0.485, 0.456, 0.406)),
            "std": list(cfg.get("std") or (0.229, 0.224, 0.225)),
            "variant": f"timm {arch}",
        }

    @property
    def channels(self) -> list[int]:
        return [i["num_chs"] for i in self.info]

    @property
    def reductions(self) -> list[int]:
        return [i["reduction"] for i in self.info]

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.backbone["net"](x))  # one map per stage: N x C_i x H / r_i x W / r_i


def create_timm_encoder(
    name: str,
    *,
    in_channels: int,
    weights: str | os.PathLike | None,
    image_size: int | None,
    role: str = "encoder",
    flag: str = "--init-from",
) -> TimmEncoder:
    """:class:`TimmEncoder` for ``timm:NAME``; ``weights`` as :func:`create_timm_model` takes
    them (None, "imagenet" from the Hugging Face hub or cache, or a timm-layout file). ``role``
    ("encoder" of a segmentation network, "backbone" of a detector) and ``flag`` (the option
    that gave ``weights``) word the errors."""
    import timm
    from timm.models import get_pretrained_cfg

    arch = timm_name(name)
    cfg = get_pretrained_cfg(arch)
    kwargs: dict[str, Any] = {"features_only": True, "in_chans": in_channels}
    if cfg is not None and cfg.fixed_input_size and image_size:
        kwargs["img_size"] = image_size  # ViT-like models build their position table for it
    source = None
    try:
        if weights is None:
            net = timm.create_model(arch, pretrained=False, **kwargs)
        elif str(weights).lower() == "imagenet":
            net, source = _from_hub(arch, cfg, kwargs, name, flag)
        else:
            net, source = _from_file(arch, Path(weights).expanduser(), kwargs, name)
    except (RuntimeError, TypeError) as err:  # timm: "features_only not implemented for ..."
        raise ConfigError(
            f"{role} {name}: timm cannot build it as a feature extractor (features_only=True: "
            f"{str(err).strip().splitlines()[0][:160]}); choose a convolutional timm model, e.g. "
            "timm:resnet18, timm:convnext_atto, timm:efficientnet_b0"
        ) from None
    encoder = TimmEncoder(net, arch)
    encoder.default_cfg["weights"] = source
    return encoder


def load_timm_weights(model: ClassifierModel, name: str, weights: str | os.PathLike) -> dict:
    """A ``timm:`` model's "imagenet" or file weights into an already built ``model`` (transfer's
    ``--init-from``): timm builds the source at its own class count and 3 channels, then the
    usual report: the first conv adapted, a classifier of another size re-initialised."""
    from timm.models import get_pretrained_cfg

    from ._weights import apply_state_dict

    cfg = get_pretrained_cfg(timm_name(name))
    source_model = create_timm_model(
        name, num_classes=int(getattr(cfg, "num_classes", 0) or 1000), in_channels=3,
        weights=weights, image_size=int(model.default_cfg["input_size"][-1]),
    )  # fmt: skip
    source = str(source_model.default_cfg["weights"])
    report = apply_state_dict(model, source_model.state_dict(), source=source)
    model.default_cfg["weights"] = source
    return report
