"""Frozen and modifiable layers (the lecture's two kinds), chosen from the model's stages.

Every cnnlab model puts each parameter in exactly one group -- the stem (when it has one), a stage,
or ``"head"`` (:func:`cnnlab.models.group_parameters`) -- so freezing needs no per-architecture
index slices:

=====================  ==========================================================================
``none``               nothing is frozen
``backbone``           every group but the head
``stages:N``           the stem and the first N stages (``stages:0`` = the stem only)
``up-to:LAYER``        every group up to and including the one holding LAYER (a module path such as
                       ``layer2.0.conv1`` or ``features.3``, or a group label such as ``layer2``)
``GLOB[,GLOB]``        parameters whose names match any of the fnmatch patterns (``layer1.*,bn1.*``)
=====================  ==========================================================================

A frozen parameter has ``requires_grad=False``: it gets no gradient, so the optimizer keeps no
state for it and never moves it (weight decay included: PyTorch's SGD/AdamW skip parameters without
a gradient). BatchNorm layers whose parameters are all frozen are put back in eval mode after every
``model.train()`` (:func:`train_mode`), so their running mean/variance and ``num_batches_tracked``
stay those of the source -- the frozen-BatchNorm mistake behind keras #9214 and ultralytics PR
#8753 (a "frozen" BN in train mode still normalises with batch statistics and overwrites its
running statistics).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from cnnlab.errors import ConfigError, close_matches

log = logging.getLogger(__name__)

HEAD = "head"
FREEZE_FORMS = "none | backbone | stages:N | up-to:LAYER | GLOB[,GLOB] (fnmatch on parameter names)"


@dataclass(frozen=True)
class Group:
    """One parameter group of a model: the stem, a stage or the head, in execution order."""

    label: str
    modules: tuple[str, ...]  # module paths (prefixes of the parameter names)
    params: tuple[str, ...]  # parameter names, in model.named_parameters() order

    @property
    def is_head(self) -> bool:
        return self.label == HEAD


def model_groups(model: nn.Module) -> list[Group]:
    """The model's groups ``[stem,] stage..., head`` with their module paths and parameter names.

    Module paths come from ``model.stage_modules()`` (matched to ``named_modules`` by identity),
    parameter names from :func:`cnnlab.models.group_parameters`.
    """
    from cnnlab.models import group_parameters

    if not hasattr(model, "stage_modules"):
        raise ConfigError(
            f"{type(model).__name__} does not describe its stages (stage_modules()); transfer "
            "learning needs a model built by cnnlab.models.create_model"
        )
    path_of = {id(m): name for name, m in model.named_modules()}
    params = dict(group_parameters(model))
    groups = []
    for label, modules in model.stage_modules():
        groups.append(Group(label, tuple(path_of[id(m)] for m in modules), tuple(params[label])))
    return groups


def backbone_groups(groups: list[Group]) -> list[Group]:
    return [g for g in groups if not g.is_head]


def _describe(groups: list[Group]) -> str:
    return ", ".join(g.label for g in groups)


def _error(spec: str, groups: list[Group], why: str) -> ConfigError:
    return ConfigError(
        f"freeze={spec!r}: {why}. Allowed forms: {FREEZE_FORMS}. This model's groups: "
        f"{_describe(groups)}"
    )


def _group_of_layer(layer: str, model: nn.Module, groups: list[Group], spec: str) -> int:
    """Index of the group holding module path (or group label) ``layer``; the last one it spans."""
    labels = [g.label for g in groups]
    if layer in labels:
        return labels.index(layer)
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        raise _error(
            spec,
            groups,
            f"no layer named {layer!r}{close_matches(layer, list(dict.fromkeys(labels + names)))}",
        )
    hit = None
    for i, g in enumerate(groups):
        for path in g.modules:
            # LAYER inside this group's module, or LAYER a parent of it (e.g. "features" in VGG)
            if layer == path or layer.startswith(path + ".") or path.startswith(layer + "."):
                hit = i
    if hit is None:  # a parameter-free module outside every group (cannot happen for zoo models)
        raise _error(spec, groups, f"layer {layer!r} belongs to no group")
    return hit


def resolve_freeze(model: nn.Module, spec: str, groups: list[Group] | None = None) -> set[str]:
    """Parameter names that ``spec`` freezes (see the module docstring for the forms).

    Raises ConfigError naming the allowed forms and the model's group labels for an unknown form, a
    stage count out of range, an unknown layer, or a glob that matches no parameter (almost always
    a typo).
    """
    groups = groups if groups is not None else model_groups(model)
    spec = (spec or "none").strip()
    backbone = backbone_groups(groups)
    has_stem = bool(backbone) and backbone[0].label == "stem"
    stages = backbone[1:] if has_stem else backbone
    if spec == "none":
        return set()
    if spec == "backbone":
        chosen = backbone
    elif spec.startswith("stages:"):
        text = spec.split(":", 1)[1].strip()
        if not text.isdigit() or int(text) > len(stages):
            raise _error(
                spec,
                groups,
                f"N must be a whole number from 0 to {len(stages)} (stages: {_describe(stages)})",
            )
        chosen = ([backbone[0]] if has_stem else []) + stages[: int(text)]
    elif spec.startswith("up-to:"):
        layer = spec.split(":", 1)[1].strip()
        chosen = groups[: _group_of_layer(layer, model, groups, spec) + 1]
    else:
        if ":" in spec:  # "stage:2", "upto:layer2" -- a misspelt keyword, not a glob
            key = spec.split(":", 1)[0] + ":"
            raise _error(
                spec, groups, f"unknown form {key!r}{close_matches(key, ['stages:', 'up-to:'])}"
            )
        patterns = [p.strip() for p in spec.split(",") if p.strip()]
        names = [n for n, _ in model.named_parameters()]
        frozen: set[str] = set()
        for pattern in patterns:
            hits = fnmatch.filter(names, pattern)
            if not hits:
                hint = close_matches(pattern, ["none", "backbone", *names[:200]])
                raise _error(spec, groups, f"pattern {pattern!r} matches no parameter{hint}")
            frozen.update(hits)
        return frozen
    return {name for g in chosen for name in g.params}


def set_trainable(model: nn.Module, trainable: Iterable[str]) -> None:
    """requires_grad=True exactly for the parameter names in ``trainable``, False for the rest."""
    keep = set(trainable)
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)


_BN = nn.modules.batchnorm._BatchNorm


def frozen_batchnorms(model: nn.Module) -> list[str]:
    """Names of BatchNorm layers to keep in eval mode: all of their parameters are frozen.

    A BN without affine parameters follows its parent module (frozen when all of the parent's
    parameters are), since it has nothing of its own to freeze.
    """
    modules = dict(model.named_modules())
    out = []
    for name, m in modules.items():
        if not isinstance(m, _BN):
            continue
        params = list(m.parameters())
        if not params:
            parent = modules.get(name.rpartition(".")[0], model)
            params = list(parent.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
    return out


def train_mode(model: nn.Module) -> None:
    """``model.train()``, then frozen BatchNorm layers back to eval mode (running stats stay put).

    Works on a ``torch.compile`` wrapper too (its modules include the original ones).
    """
    model.train()
    modules = dict(model.named_modules())
    for name in frozen_batchnorms(model):
        modules[name].eval()
