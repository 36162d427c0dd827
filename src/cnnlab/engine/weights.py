"""Models from the model registry and from cnnlab checkpoints (a run directory or a .safetensors file)."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.config import PreprocessSpec
from cnnlab.engine.checkpoint import read_weights
from cnnlab.errors import CheckpointError
from cnnlab.run import resolve_weights


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: int, weights: str | None = None
):
    from cnnlab.models import create_model

    return create_model(
        name,
        num_classes=num_classes,
        in_channels=in_channels,
        weights=weights,
        image_size=image_size,
    )


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu"):
    """(model in eval mode, metadata, weights path) from a run directory or a .safetensors checkpoint."""
    weights = resolve_weights(path)
    state, meta = read_weights(weights)
    for key in ("model", "num_classes", "in_channels", "preprocess", "class_names"):
        if key not in meta:
            raise CheckpointError(
                f"{weights} lacks metadata {key!r}; it was not written by cnnlab train"
            )
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    model = build_model(
        meta["model"], int(meta["num_classes"]), int(meta["in_channels"]), spec.image_size
    )
    missing, unexpected = load_strict(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit {meta['model']}: missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}"
        )
    model.to(device).eval()
    return model, meta, weights


def load_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    if state and all(k.startswith("_orig_mod.") for k in state):
        # earlier --compile runs saved torch.compile's wrapper prefix (now always plain keys)
        state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = sorted(k for k in state if k not in own)  # files store keys in any order
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        raise CheckpointError(f"checkpoint shapes do not fit the model: {shapes[:10]}")
    if not missing and not unexpected:
        model.load_state_dict(state, strict=True)
    return missing, unexpected
