"""Pretrained weights: torchvision's published ImageNet weights or a local state-dict file.

``load_weights(model, name, weights)`` puts a state dict into a freshly built model and records
in ``model.load_report`` what happened to each tensor:

* ``loaded``: copied unchanged.
* ``adapted``: the first conv's kernel for another channel count. RGB -> 1 channel sums the three
  kernels (a grey image g then gives exactly the response of the RGB net to (g, g, g));
  S -> N channels repeats the kernels ceil(N/S) times, keeps N and scales by S/N (timm's
  ``adapt_input_conv``), so an input whose channels are all equal keeps its response.
* ``reinitialised``: left at the model's own initialisation -- the classifier when the class count
  differs, tensors whose shape only differs because of the small-input variant (ResNet's 3x3 stem,
  VGG's 512-wide hidden layers) and GoogLeNet auxiliary heads missing from the file.

Anything else that does not fit (other shapes, missing or unexpected keys) raises
:class:`~cnnlab.errors.CheckpointError` listing the keys.

Files: ``.safetensors`` (``safetensors.torch.load_file``) or ``.pt``/``.pth``/``.bin``/``.ckpt``
(``torch.load(path, map_location="cpu", weights_only=True)``; never full unpickling, never a retry
without ``weights_only``). Either a bare state dict or a dict holding one under ``state_dict`` /
``model`` / ``model_state_dict``; ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile)
prefixes are stripped.

Layouts: torchvision's key names, which cnnlab models share. timm ResNets use the same names as
torchvision, so they load as they are. timm VGGs keep the two hidden FC layers as convolutions
(``pre_logits.fc1`` 512x7x7 kernel, ``pre_logits.fc2`` 1x1) and the output as ``head.fc``: they are
renamed to ``classifier.0/3/6`` and reshaped to (out, in). timm has no AlexNet, GoogLeNet or LeNet.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path

import torch
from torch import Tensor

from cnnlab.errors import CheckpointError, ConfigError, close_matches

from ._base import ClassifierModel, channel_stats

logger = logging.getLogger(__name__)

FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state")
_SHOW = 8  # keys listed per category in error messages


def load_weights(model: ClassifierModel, name: str, weights: str | os.PathLike) -> dict:
    """Load ``weights`` ("imagenet", a torchvision tag or a file path) into ``model``.

    Returns the load report (also stored as ``model.load_report``) and updates
    ``model.default_cfg`` (``weights``; with torchvision weights also mean/std, crop/resize size,
    interpolation and -- when the classifier was kept -- ``class_names``).
    """
    tag = torchvision_tag(weights)
    if tag is not None:
        enum_member = _torchvision_weights(name, tag)
        state_dict = _download(name, enum_member)
        source = f"torchvision:{type(enum_member).__name__}.{enum_member.name}"
    else:
        path = Path(weights).expanduser()
        state_dict = read_state_dict(path)
        source = str(path)
    report = apply_state_dict(model, state_dict, source=source)
    model.default_cfg["weights"] = source
    if tag is not None:
        _apply_weights_meta(model, name, enum_member, report)
    return report


# --- where the tensors come from -------------------------------------------------------------
def torchvision_tag(weights: str | os.PathLike) -> str | None:
    """The torchvision tag ("imagenet" -> "DEFAULT", "IMAGENET1K_V2", ...); a path -> None."""
    if not isinstance(weights, str):
        return None
    if weights.lower() == "imagenet":
        return "DEFAULT"
    looks_like_tag = weights.replace("_", "").isalnum() and weights.isupper()
    if looks_like_tag and not Path(weights).exists():
        return weights
    return None


def _torchvision_weights(name: str, tag: str):  # -> torchvision.models.WeightsEnum member
    import torchvision

    try:
        enum_cls = torchvision.models.get_model_weights(name)
    except ValueError:
        raise ConfigError(
            f"{name} has no published ImageNet weights; leave weights out (train from scratch) "
            "or set option weights to the PATH of a .safetensors/.pt/.pth state dict"
        ) from None
    if tag not in enum_cls.__members__:
        raise ConfigError(
            f"unknown weights {tag!r} for {name}{close_matches(tag, enum_cls.__members__)}; "
            f"available: imagenet, {', '.join(enum_cls.__members__)}"
        )
    return enum_cls[tag]


def _download(name: str, enum_member) -> dict[str, Tensor]:
    """torchvision's state dict (downloaded once, then read from the torch hub cache)."""
    try:
        return enum_member.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash a RuntimeError
        raise CheckpointError(
            f"could not download the ImageNet weights for {name} from {enum_member.url} ({err}). "
            "Without network access, download that file on another machine (or copy it into "
            f"{torch.hub.get_dir()}/checkpoints, where the next run finds it), or give the "
            "local file itself: `cnnlab train --weights PATH`, `cnnlab finetune --from PATH` "
            "(Python: weights= / init_from=)"
        ) from err


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a local ``.safetensors`` / ``.pt`` / ``.pth`` file, without unpickling objects."""
    if not path.is_file():
        raise CheckpointError(
            f"weights file not found: {path} (option weights takes 'imagenet', a torchvision "
            f"tag such as 'IMAGENET1K_V1', or a path to a {'/'.join(FILE_SUFFIXES)} state dict; "
            "leave weights out to train from scratch)"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if suffix not in FILE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported weights file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(FILE_SUFFIXES)}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and "
            "plain containers (cnnlab only loads with weights_only=True). Save just the state "
            "dict (torch.save(model.state_dict(), path)) or use .safetensors"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: checkpoint incomplete or corrupt ({err})") from err
    return _find_state_dict(obj, path)


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _find_state_dict(obj: object, path: Path) -> dict[str, Tensor]:
    if _is_tensor_dict(obj):
        return obj  # type: ignore[return-value]
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return obj[key]
        found = ", ".join(map(repr, list(obj)[:10]))
        raise CheckpointError(
            f"{path}: no state dict found (top-level keys: {found}); expected a dict of tensors "
            f"or one under {' / '.join(_WRAPPER_KEYS)}"
        )
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")


# --- fitting the tensors to the model ---------------------------------------------------------
def _strip_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


_TIMM_VGG = {"pre_logits.fc1.": "classifier.0.", "pre_logits.fc2.": "classifier.3.",
             "head.fc.": "classifier.6."}  # fmt: skip


def from_timm_layout(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Rename timm-only keys to torchvision's; returns (state dict, "timm" | "torchvision")."""
    if not any(k.startswith(tuple(_TIMM_VGG)) for k in state_dict):
        return state_dict, "torchvision"  # includes timm ResNets: same names as torchvision
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for old, new in _TIMM_VGG.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                if key.endswith("weight") and value.ndim == 4:
                    # a conv over the whole 7x7 map == a Linear on the (C, H, W)-flattened map
                    value = value.reshape(value.shape[0], -1)
                break
        out[key] = value
    return out, "timm"


def adapt_first_conv(weight: Tensor, in_channels: int) -> Tensor:
    """(O, S, k, k) kernel -> (O, in_channels, k, k); see the module docstring for the rule."""
    source = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = math.ceil(in_channels / source)
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (source / in_channels)


def _keys_of(paths: tuple[str, ...], target: dict[str, Tensor]) -> set[str]:
    return {k for k in target if any(k.startswith(p + ".") for p in paths)}


def apply_state_dict(model: ClassifierModel, state_dict: dict[str, Tensor], *, source: str) -> dict:
    """Copy ``state_dict`` into ``model`` (see the module docstring); returns the load report."""
    state_dict, layout = from_timm_layout(_strip_prefixes(dict(state_dict)))
    target = model.state_dict()
    first_conv = model.first_conv_path + ".weight"
    classifier_keys = _keys_of((model.classifier_path, *model.aux_classifier_paths), target)
    variant_keys = _keys_of(model.reinit_on_mismatch, target)
    aux_modules = tuple(p.rsplit(".", 1)[0] for p in model.aux_classifier_paths)
    aux_keys = _keys_of(aux_modules, target)

    loaded: list[str] = []
    adapted: list[str] = []
    reinitialised: list[str] = []
    mismatched: list[str] = []
    new_state: dict[str, Tensor] = {}
    for key, want in target.items():
        if key not in state_dict:
            continue
        have = state_dict[key]
        if have.is_floating_point() and not bool(torch.isfinite(have).all()):
            raise CheckpointError(f"{source}: tensor {key} contains NaN or Inf values")
        if have.shape == want.shape:
            new_state[key] = have
            loaded.append(key)
        elif (
            key == first_conv
            and have.ndim == 4
            and have.shape[0] == want.shape[0]
            and have.shape[2:] == want.shape[2:]
        ):
            new_state[key] = adapt_first_conv(have.to(want.dtype), want.shape[1])
            adapted.append(key)
        elif key in classifier_keys:
            reinitialised.append(key)
        elif key in variant_keys:
            reinitialised.append(key)
            logger.warning(
                "%s: %s has shape %s in %s but %s in the small-input variant: re-initialised",
                model.default_cfg.get("name", type(model).__name__),
                key,
                tuple(have.shape),
                source,
                tuple(want.shape),
            )
        else:
            mismatched.append(f"{key}: file {tuple(have.shape)} vs model {tuple(want.shape)}")
    missing = [k for k in target if k not in state_dict]
    # BN step counters are absent from old checkpoints; aux heads are not part of every file.
    tolerated = [k for k in missing if k.endswith("num_batches_tracked") or k in aux_keys]
    missing = [k for k in missing if k not in tolerated]
    unexpected = sorted(k for k in state_dict if k not in target)  # files store keys in any order
    if mismatched or missing or unexpected:
        raise CheckpointError(_mismatch_message(model, source, mismatched, missing, unexpected))
    reinitialised += [k for k in tolerated if k in aux_keys]

    full = model.state_dict()
    full.update(new_state)
    model.load_state_dict(full, strict=True)
    report = {
        "source": source,
        "layout": layout,
        "loaded": loaded,
        "reinitialised": reinitialised,
        "adapted": adapted,
    }
    model.load_report = report
    logger.info(
        "loaded %d tensors from %s (%s layout); re-initialised: %s; adapted: %s",
        len(loaded),
        source,
        layout,
        ", ".join(reinitialised) or "none",
        ", ".join(adapted) or "none",
    )
    return report


def _listing(title: str, keys: list[str]) -> str:
    shown = "; ".join(keys[:_SHOW]) + (
        f"; ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    )
    return f"{len(keys)} {title} ({shown})"


def _mismatch_message(
    model: ClassifierModel,
    source: str,
    mismatched: list[str],
    missing: list[str],
    unexpected: list[str],
) -> str:
    cfg = model.default_cfg
    parts = []
    if mismatched:
        parts.append(_listing("tensors with other shapes", mismatched))
    if missing:
        parts.append(_listing("missing keys", missing))
    if unexpected:
        parts.append(_listing("unexpected keys", unexpected))
    return (
        f"{source} does not fit {cfg.get('name', type(model).__name__)} "
        f"(in_channels={cfg['input_size'][0]}, image_size={cfg['input_size'][1]}): "
        + ", ".join(parts)
        + ". Was it saved from another architecture? Check the model name and options"
    )


# --- provenance -------------------------------------------------------------------------------
def _apply_weights_meta(model: ClassifierModel, name: str, enum_member, report: dict) -> None:
    """Preprocessing and class names of torchvision weights into ``model.default_cfg``."""
    transforms = enum_member.transforms()
    mean, std = list(transforms.mean), list(transforms.std)
    if name == "googlenet":
        # Ported weights expect (x - 0.5) / 0.5; torchvision reaches that from ImageNet-normalised
        # input with transform_input=True, which cnnlab turns off.
        mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    in_channels = model.default_cfg["input_size"][0]
    crop, resize = int(transforms.crop_size[0]), int(transforms.resize_size[0])
    meta = enum_member.meta
    model.default_cfg.update(
        mean=channel_stats(mean, in_channels),
        std=channel_stats(std, in_channels),
        pretrained_input_size=(in_channels, crop, crop),
        resize_size=resize,
        crop_pct=crop / resize,
        interpolation=transforms.interpolation.value,
        weights_recipe=meta.get("recipe"),
        weights_metrics=meta.get("_metrics"),
    )
    classifier = {model.classifier_path + ".weight", model.classifier_path + ".bias"}
    if not classifier & set(report["reinitialised"]):
        model.default_cfg["class_names"] = list(meta["categories"])
