"""Splits to uint8 tensors and batch loaders on a device: the data path every task trains and evaluates on."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import numpy as np
import torch

from cnnlab.config import PreprocessSpec, TrainConfig
from cnnlab.data.loader import FileImages, StreamLoader, TensorLoader
from cnnlab.data.sources import DataBundle, Split, data_image_size
from cnnlab.data.tensors import arrays_to_chw, channel_stats, decode_files, default_cache_dir

log = logging.getLogger(__name__)


def split_to_uint8(split: Split, spec: PreprocessSpec, *, stream: bool = False) -> torch.Tensor:
    """(N, C, S, S) uint8 tensor of a split, decoding files once (cached) or converting in-memory arrays.

    stream: a file-backed split becomes a FileImages instead, decoded batch by batch (see use_streaming)."""
    if split.images is not None:
        return torch.from_numpy(arrays_to_chw(split.images, spec))
    if stream:
        return FileImages([str(p) for p in split.paths or ()], spec)  # type: ignore[return-value]
    return torch.from_numpy(decode_files(split.paths, spec))


def use_streaming(cfg: TrainConfig, bundle: DataBundle, spec: PreprocessSpec) -> bool:
    """--loader auto: the memory-mapped cache unless the decoded file-backed splits would not fit in the cache
    folder's free disk space (with 10 % to spare); then files are decoded every epoch, with a message."""
    if cfg.loader != "auto":
        return cfg.loader == "stream"
    files = sum(len(s) for s in bundle.splits.values() if s.images is None)
    need = files * spec.in_channels * spec.image_size**2
    folder = default_cache_dir()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need <= 0.9 * free:
        return False
    log.warning(
        "the decoded images would take %.1f GB but the cache folder %s has %.1f GB free: decoding the files "
        "every epoch in %d worker processes instead (slower; free disk space, point CNNLAB_CACHE at a bigger "
        "disk, or lower --image-size to cache them)",
        need / 1e9, default_cache_dir(), free / 1e9, stream_workers(),
    )  # fmt: skip
    return True


def stream_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def split_channel_stats(
    images: torch.Tensor, seed: int = 0, sample: int = 2000
) -> tuple[tuple, tuple]:
    """channel_stats of a split; a streamed split is estimated from `sample` images (seeded), as decoding them
    all would cost a whole epoch."""
    if not isinstance(images, FileImages):
        return channel_stats(images)
    pick = np.arange(len(images))
    if len(images) > sample:
        pick = np.sort(np.random.default_rng(seed).choice(len(images), sample, replace=False))
    return channel_stats(images.index_select(0, torch.from_numpy(pick)))


def resolve_image_size(cfg: TrainConfig, bundle: DataBundle) -> int:
    from cnnlab.models import model_info

    size = data_image_size(cfg, bundle)  # --image-size, or small images as they are
    if size is not None:
        return size
    default = int(model_info(cfg.model).get("input_size", (3, 224, 224))[-1])
    if bundle.native_size:
        log.info(
            "images are %d px; resizing to %s's %d px input", bundle.native_size, cfg.model, default
        )
    return default


def make_loader(
    images: torch.Tensor,
    targets: np.ndarray,
    spec: PreprocessSpec,
    device: torch.device,
    batch_size: int,
    **kw: Any,
) -> TensorLoader:
    if isinstance(images, FileImages):  # decoded per batch in worker processes (use_streaming)
        return StreamLoader(
            images,  # type: ignore[arg-type]
            torch.as_tensor(targets, dtype=torch.int64),
            torch.tensor(spec.mean, device=device),
            torch.tensor(spec.std, device=device),
            batch_size,
            device=device,
            workers=stream_workers(),
            **kw,
        )
    resident = fits_on_device(images, device)
    home = device if resident else images.device
    return TensorLoader(
        images.to(home),
        torch.as_tensor(targets, dtype=torch.int64).to(home),
        torch.tensor(spec.mean, device=device),
        torch.tensor(spec.std, device=device),
        batch_size,
        device=device,
        **kw,
    )


def fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    """Whether a uint8 split should live on `device` (whole-split gathers there) or stay in host memory.

    On CUDA it must leave at least half of the free memory to the model and activations; otherwise batches
    are gathered in host memory and copied per step, with a message. The CPU is the host: always true (a split
    larger than RAM is a memory map already, see decode_files).
    """
    if device.type != "cuda" or images.device == device:
        return True
    free, _ = torch.cuda.mem_get_info(device)
    if images.nbytes <= free // 2:
        return True
    log.warning(
        "the decoded images (%.1f GB) would take more than half of the GPU's %.1f GB of free memory: they stay "
        "in host memory and each batch is copied over (slower; a smaller --image-size keeps them on the GPU)",
        images.nbytes / 1e9, free / 1e9,
    )  # fmt: skip
    return False
