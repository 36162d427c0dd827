"""Penultimate-layer embeddings: what the classifier sees, for every image of a dataset.

The feature of an image is the input of the model's final classifier (``get_classifier()``),
captured with a forward hook: the pooled and flattened features for ResNet / GoogLeNet, the last
hidden FC layer's output for LeNet-5 / AlexNet / VGG (``forward_head`` up to the classifier). Use
them for nearest-neighbour search, t-SNE/UMAP plots, or a scikit-learn classifier on a frozen
backbone.

The ``.npz`` file (``np.load(path, allow_pickle=False)``) holds:

* ``features``: (N, D) float32;
* ``labels``: (N,) int64, indices into ``class_names`` (the *dataset's* classes, which need not be
  the model's: embedding task B's images with task A's network is the point of a transfer check);
* ``ids``: (N,) str, the sample ids (relative file paths or ``builtin`` indices);
* ``class_names``: (K,) str; ``model_class_names``: the model's outputs; ``split``: the split names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import ConfigError, close_matches, no_such_split

log = logging.getLogger(__name__)

SPLITS = ("all", "train", "val", "test")


def _choose_split(bundle, split: str):  # -> (Split, per-sample split names)
    from cnnlab.data.sources import concat_splits

    if split == "all":
        names = list(bundle.splits)
        parts = [bundle.splits[k] for k in names]
        tags = np.concatenate([np.full(len(p), k) for k, p in zip(names, parts, strict=True)])
        return concat_splits(parts), tags
    if split not in bundle.splits:
        raise ConfigError(
            f"the data has no {split!r} split; it has {sorted(bundle.splits)} (or all)"
        )
    chosen = bundle.splits[split]
    return chosen, np.full(len(chosen), split)


@torch.inference_mode()
def penultimate_features(
    model: torch.nn.Module, loader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32, targets (N,)) from the input of ``model.get_classifier()``."""
    captured: list[torch.Tensor] = []
    hook = model.get_classifier().register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0].detach().float().flatten(1).cpu())
    )
    targets = []
    try:
        model.eval()
        for images, y, _ in loader.batches(0):
            model(images.to(device))
            targets.append(y.cpu())
    finally:
        hook.remove()
    return torch.cat(captured).numpy(), torch.cat(targets).numpy()


def _npz_path(out: str | Path, split: str) -> Path:
    """The file written for ``out``: a folder gets ``embeddings-<split>.npz`` inside it (it wrote
    FOLDER.npz beside it), a name without ``.npz`` gets it (NumPy adds it itself: the name it
    writes is said, not the one given)."""
    out = Path(out)
    if out.is_dir():
        return out / f"embeddings-{split}.npz"
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


def embed(
    run_or_checkpoint: str | Path,
    data: str | None = None,
    split: str = "all",
    out: str | Path | None = None,
    *,
    device: str = "auto",
    batch_size: int = 256,
    relocated_data: str | Path | None = None,
    **policy: Any,
) -> Path:
    """Write the penultimate features of ``data`` under ``run_or_checkpoint``'s model to ``.npz``.

    ``data=None`` embeds the run's own dataset with its recorded splits (``splits.json``); another
    dataset is split as ``cnnlab train --data DATA`` would split it by default (seed 0, 10 % val,
    10 % test) unless it has its own train/val/test folders. ``split`` is all | train | val | test.
    ``out`` defaults to ``<run>/embeddings-<split>.npz`` (next to the checkpoint outside a run);
    an existing folder gets that name inside it, and a name not ending in ``.npz`` gets ``.npz``
    added; an ``out`` already there that cnnlab did not write is refused
    (cnnlab.run.claim_output_file). Returns the path written.

    ``policy``: ``max_bad_fraction`` / ``strict`` for unreadable images (the run's own for its
    data, TrainConfig's for ``data``), as evaluate takes them.
    """
    from cnnlab.config import PreprocessSpec, TrainConfig, make_config
    from cnnlab.data.sources import RUN_PIXEL_HINT, concat_splits, load_source, split_by_ids
    from cnnlab.engine.devices import resolve_device
    from cnnlab.engine.loaders import make_loader, split_to_uint8
    from cnnlab.engine.weights import load_checkpoint_model
    from cnnlab.run import (
        check_one_dataset,
        claim_output_file,
        read_json,
        run_dir_of,
        source_config,
    )

    check_one_dataset(data, relocated_data)
    if split not in SPLITS:
        raise ConfigError(
            f"--split {split!r} is not a split{close_matches(split, SPLITS)}; choose from "
            f"{', '.join(SPLITS)}"
        )
    if out is not None:  # the file it will write, checked before the model runs
        out = _npz_path(out, split)
        claim_output_file(out, command="embed", record=False)
    dev = resolve_device(device)
    model, meta, weights = load_checkpoint_model(run_or_checkpoint, dev)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    run_dir = run_dir_of(weights)
    if data is None:
        if run_dir is None:
            raise ConfigError(f"{weights} is not inside a run directory: pass data= to embed")
        bundle = load_source(
            make_config(TrainConfig, **source_config(run_dir, relocated_data) | policy),
            pixel_hint=RUN_PIXEL_HINT,
        )
        recorded = read_json(run_dir / "splits.json")["splits"]
        names = list(recorded) if split == "all" else [split]
        if split != "all" and split not in recorded:
            raise no_such_split(split, recorded)
        parts = [split_by_ids(bundle, recorded[k], k) for k in names]
        from cnnlab.data.sources import concat_splits

        chosen = concat_splits(parts)
        tags = np.concatenate([np.full(len(p), k) for k, p in zip(names, parts, strict=True)])
    else:
        # scanned under the limit the run decodes with (its preprocessing's)
        limit = (
            {"max_image_pixels": spec.decode["max_pixels"]} if "max_pixels" in spec.decode else {}
        )
        cfg = make_config(TrainConfig, data=data, **limit | policy)
        bundle = load_source(cfg, pixel_hint=RUN_PIXEL_HINT)
        chosen, tags = _choose_split(bundle, split)
    images = split_to_uint8(chosen, spec)
    loader = make_loader(images, chosen.targets, spec, dev, batch_size)
    features, labels = penultimate_features(model, loader, dev)
    default_out = out is None
    if out is None:
        folder = run_dir if run_dir is not None else Path(weights).parent
        out = folder / f"embeddings-{split}.npz"
    # a --out of the user's is claimed; the default is a file of the run folder, cnnlab's own
    out = _npz_path(out, split)
    if not default_out:
        claim_output_file(out, command="embed")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        features=features.astype(np.float32),
        labels=labels.astype(np.int64),
        ids=np.asarray(chosen.ids, dtype=str),
        split=np.asarray(tags, dtype=str),
        class_names=np.asarray(bundle.class_names, dtype=str),
        model_class_names=np.asarray(meta["class_names"], dtype=str),
    )
    log.info("wrote %d x %d features to %s", *features.shape, out)
    return out
