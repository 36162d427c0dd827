"""The fast data path: decode every image once into a uint8 tensor at the training size, then batch whole tensors.

Why by hand: torchvision's `DataLoader` + per-sample transforms spend most of a small CNN's step in Python (one
`__getitem__`, one PIL resize and one `ToTensor` per image). Holding the decoded dataset as one (N, C, S, S) uint8
tensor and indexing it with a permutation costs one gather per batch (airbench / FFCV do the same).

The decoded tensor of a file-backed split is cached as a `.npy` file under the cache folder, keyed by the dataset's
fingerprint (relative paths, sizes, mtimes) and the preprocessing, so a second run skips decoding; any change to a file
or to the preprocessing gives a new key. The cache is plain NumPy (`allow_pickle=False`), never pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cnnlab.config import PreprocessSpec

if TYPE_CHECKING:  # torch is imported where a function needs it: decoding does not (data.prefetch
    import torch  # decodes in a child that has not imported torch)

log = logging.getLogger(__name__)


def resize_to_square(im: Image.Image, size: int, mode: str = "fit") -> Image.Image:
    """Resize a PIL image to size x size.

    fit: keep aspect ratio, scale the longer side to `size`, pad the rest with black (0), centred;
    crop: scale the shorter side to `size` and take the centre; stretch: resize both sides to `size`.
    """
    w, h = im.size
    if (w, h) == (size, size):
        return im
    if mode == "stretch":
        return im.resize((size, size), Image.Resampling.BILINEAR)
    scale = size / max(w, h) if mode == "fit" else size / min(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    if mode == "crop":
        left, top = (nw - size) // 2, (nh - size) // 2
        return im.crop((left, top, left + size, top + size))
    canvas = Image.new(im.mode, (size, size), 0)
    canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def pil_to_chw(im: Image.Image, spec: PreprocessSpec, *, channels_last: bool = False) -> np.ndarray:
    """A decoded PIL image -> (C, S, S) uint8, the model's input before normalisation.

    channels_last: return (S, S, C) instead, PIL's own layout (no transpose copy); stacked, it is an NHWC batch.
    """
    im = resize_to_square(im, spec.image_size, spec.resize)
    arr = np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr if channels_last else np.ascontiguousarray(arr.transpose(2, 0, 1))


def image_mode(in_channels: int) -> str:
    return "L" if in_channels == 1 else "RGB"


def load_file(path: str | Path, spec: PreprocessSpec, *, channels_last: bool = False) -> np.ndarray:
    """Decode one file with the single decoding policy and return (C, S, S) uint8 ((S, S, C) if channels_last)."""
    from cnnlab.data.decode import DEFAULT_MAX_PIXELS, load_image

    max_pixels = int(spec.decode.get("max_pixels", DEFAULT_MAX_PIXELS))
    # draft: big JPEGs are decoded at a reduced scale that still covers the model's input size
    im = load_image(
        path, mode=image_mode(spec.in_channels), max_pixels=max_pixels, draft=spec.image_size
    )
    return pil_to_chw(im, spec, channels_last=channels_last)


def arrays_to_chw(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """In-memory (N, H, W, C) uint8 -> (N, C, S, S) uint8, through the same PIL path as files.

    Fast path: when the size already matches and only channels differ, convert with the same luma weights Pillow
    uses for 'L' (ITU-R 601-2), without a per-image loop.
    """
    n, h, w, c = images.shape
    if (h, w) == (spec.image_size, spec.image_size):
        if c == spec.in_channels:
            return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        if c == 1 and spec.in_channels == 3:
            return np.ascontiguousarray(np.repeat(images, 3, axis=3).transpose(0, 3, 1, 2))
    from cnnlab.data.decode import normalize_mode

    mode = image_mode(spec.in_channels)
    out = np.empty((n, spec.in_channels, spec.image_size, spec.image_size), dtype=np.uint8)
    for i in range(n):
        im = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        out[i] = pil_to_chw(normalize_mode(im, mode), spec)
    return out


def fingerprint_files(paths: Sequence[str | Path], root: str | Path | None = None) -> str:
    """sha256 over (relative path, size, mtime_ns) of every file: cheap, and changes when any file does."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        rel = os.path.relpath(p, root) if root else str(p)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("CNNLAB_CACHE", Path.home() / ".cache" / "cnnlab"))


def decode_spec(cfg: Any, bundle: Any, image_size: int) -> PreprocessSpec:
    """The spec a classification run decodes its files with (``cfg`` a TrainConfig, ``bundle`` its
    DataBundle): the size, the channels, the resize mode and the decoding policy that key the cache,
    with mean 0 and std 1 (the statistics come from the decoded training split afterwards)."""
    channels = cfg.in_channels or bundle.channels
    return PreprocessSpec(
        image_size, channels, (0.0,) * channels, (1.0,) * channels, cfg.resize,
        {"max_pixels": cfg.max_image_pixels},
    )  # fmt: skip


def decode_files(
    paths: Sequence[str | Path],
    spec: PreprocessSpec,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Decode files into one (N, C, S, S) uint8 array, memory-mapped from the on-disk cache.

    Decoding writes straight into the cache file (never the whole split in RAM at once), and the array returned
    is a copy-on-write map of it: pages load on first use and stay in the OS page cache, so a split larger than
    memory still trains, its batches paging in from disk. Without a writable cache folder it decodes into memory.
    """
    key_src = json.dumps(
        {"files": fingerprint_files(paths), "spec": spec.to_dict()}, sort_keys=True
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / f"images-{key}.npy"
    shape = (len(paths), spec.in_channels, spec.image_size, spec.image_size)
    if not len(paths):
        return np.empty(
            shape, np.uint8
        )  # nothing to cache (and an empty array cannot be memory-mapped)
    if target.is_file():
        log.info("decoded-image cache hit: %s", target)
        return open_cache(target)
    tmp: Path | None = target.with_suffix(f".{os.getpid()}.tmp")
    out: np.ndarray
    try:
        cache.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    except (
        OSError
    ) as err:  # a read-only home must not stop training; the cache is only an optimisation
        log.warning("could not write the decoded-image cache %s: %s", target, err)
        out, tmp = np.empty(shape, np.uint8), None

    def work(i: int) -> None:
        out[i] = load_file(paths[i], spec)

    try:
        # Pillow releases the GIL while decoding and resizing, so threads use both cores without pickling arrays.
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(work, range(len(paths))))
        if tmp is None:
            return out
        out.flush()  # then rename (POSIX renames an open file): the map is released when this function returns
        os.replace(
            tmp, target
        )  # whole or absent: a run killed mid-decode leaves no half-written cache
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return open_cache(target)


def open_cache(path: Path) -> np.ndarray:
    """The cached (N, C, S, S) uint8 array, mapped copy-on-write ("c"): writable for torch.from_numpy, and
    nothing written to it ever reaches the file."""
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    free = available_memory()
    if free is not None and array.nbytes > free // 2:
        log.warning(
            "the decoded images take %.1f GB, more than half of the %.1f GB of memory available: they stay in "
            "the memory-mapped cache %s and batches page in from disk (fast on a local SSD, slow on network "
            "storage; a smaller --image-size keeps them in memory)",
            array.nbytes / 1e9, free / 1e9, path,
        )  # fmt: skip
    return array


def available_memory() -> int | None:
    """Bytes of RAM available to new allocations (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of (N, C, ...) uint8 images, in [0, 1] units.

    Two float64 passes over chunks of `chunk` images, so a memory-mapped split larger than RAM is read, not
    copied (a whole-split ``images.double()`` needs 8 bytes per pixel).
    """
    import torch

    n = images.shape[0]
    dims = [0] + list(range(2, images.dim()))
    count = images[:1].numel() // images.shape[1] * n  # values per channel
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    for i in range(0, n, chunk):
        total += images[i : i + chunk].double().div_(255.0).sum(dim=dims)
    mean = total / count
    view = [1, -1] + [1] * (images.dim() - 2)
    squares = torch.zeros_like(total)
    for i in range(0, n, chunk):
        x = images[i : i + chunk].double().div_(255.0).sub_(mean.view(view))
        squares += x.square_().sum(dim=dims)
    std = (squares / max(count - 1, 1)).sqrt().clamp_min(1e-3)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def normalize(images_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float32 standardised; mean/std are (C,) in [0, 1] units."""
    x = images_u8.float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
