"""``builtin:moving-shapes``: seeded short videos of shapes moving in known directions.

Two uses, one generator:

- **Motion classes** (``classes=direction``, the default): every clip shows one shape (any of the
  five kinds, any colour) moving ``left``/``right`` (``directions=2``) or also ``up``/``down``
  (``directions=4``). Each clip's *middle* position is uniform over the frame and the motion is
  symmetric about it, so the set of positions a shape takes over a clip has the same distribution
  for every direction: a single frame says nothing about the class. A per-frame 2D classifier
  therefore stays at chance whatever it is shown, while a 3D CNN, which sees frames in order,
  can read the direction.
- **Tracking** (``objects=K``): K shapes per clip, each with a constant random velocity that bounces
  off the frame edges, with ground-truth boxes and track ids on every frame (MOTChallenge style).
  Shapes are drawn with the image generator's renderer, so a detector trained on
  ``builtin:shapes`` finds them.

Options: ``builtin:moving-shapes?n=400&frames=16&size=32&seed=0&directions=2&objects=1&speed=1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnnlab.data.builtin import BUILTINS, SHAPE_CLASSES, builtin_options, shape_mask
from cnnlab.errors import ConfigError, close_matches

DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


@dataclass
class VideoDataset:
    """Clips held in memory. clips: (N, T, H, W, C) uint8; targets: (N,) int64.

    Per clip and frame: ``boxes[i][t]`` (K, 4) xyxy pixels, ``track_ids[i][t]`` (K,) int,
    ``box_labels[i][t]`` (K,) shape class index. ``fps`` is the nominal frame rate.
    """

    clips: np.ndarray
    targets: np.ndarray
    class_names: list[str]
    name: str
    fps: float = 10.0
    boxes: list[list[np.ndarray]] = field(default_factory=list)
    track_ids: list[list[np.ndarray]] = field(default_factory=list)
    box_labels: list[list[np.ndarray]] = field(default_factory=list)
    shape_names: tuple[str, ...] = SHAPE_CLASSES


def make_moving_shapes(
    n: int = 400,
    frames: int = 16,
    size: int = 32,
    *,
    seed: int = 0,
    directions: int = 2,
    objects: int = 1,
    speed: float = 1.0,
) -> VideoDataset:
    """Seeded moving-shapes clips; see the module docstring. ``speed`` is pixels per frame."""
    if n < 1 or frames < 2 or size < 16:
        raise ConfigError(
            f"builtin:moving-shapes needs n >= 1, frames >= 2 and size >= 16; "
            f"got n={n}, frames={frames}, size={size}"
        )
    if directions not in (2, 4):
        raise ConfigError(
            f"builtin:moving-shapes option directions must be 2 or 4, got {directions}"
        )
    if objects < 1:
        raise ConfigError(f"builtin:moving-shapes option objects must be >= 1, got {objects}")
    if objects == 1 and speed * (frames - 1) / 2 + 0.2 * size >= size / 2:
        raise ConfigError(
            f"builtin:moving-shapes: a shape moving {speed:g} px/frame for {frames} frames leaves a "
            f"{size} px frame; lower speed or frames, or raise size"
        )
    names = list(DIRECTIONS)[:directions]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    clips = np.zeros((n, frames, size, size, 3), dtype=np.uint8)
    targets = rng.integers(directions, size=n).astype(np.int64)
    all_boxes, all_ids, all_labels = [], [], []
    half = (frames - 1) / 2.0
    for i in range(n):
        background = rng.integers(0, 60, size=3)
        r = rng.uniform(0.12, 0.2, size=objects) * size
        kinds = rng.integers(len(SHAPE_CLASSES), size=objects)
        colours = rng.integers(120, 256, size=(objects, 3))
        # Positions (T, K, 2) as (x, y) centres.
        pos = np.zeros((frames, objects, 2))
        for k in range(objects):
            if k == 0 and objects == 1:
                # Centre of the clip uniform over where the whole path fits: symmetric in time,
                # so each frame's position has the same distribution for every direction.
                v = np.asarray(DIRECTIONS[names[targets[i]]]) * speed
                reach = np.abs(v) * half + r[k]
                centre = rng.uniform(reach, size - reach)
                pos[:, k] = centre + v * (np.arange(frames)[:, None] - half)
            else:
                angle = rng.uniform(0, 2 * np.pi)
                v = np.array([np.cos(angle), np.sin(angle)]) * speed
                p = rng.uniform(r[k], size - r[k], size=2)
                for t in range(frames):
                    pos[t, k] = p
                    p = p + v
                    for d in range(2):  # bounce off the edges
                        if p[d] < r[k] or p[d] > size - r[k]:
                            v[d] = -v[d]
                            p[d] = np.clip(p[d], r[k], size - r[k])
        clip_boxes, clip_ids, clip_labels = [], [], []
        for t in range(frames):
            img = background + rng.normal(0, 8, size=(size, size, 3))
            boxes, ids, labels = [], [], []
            for k in range(objects):
                cx, cy = pos[t, k]
                mask = shape_mask(SHAPE_CLASSES[kinds[k]], yy, xx, cy, cx, r[k])
                if not mask.any():
                    continue
                img[mask] = colours[k]
                ys, xs = np.nonzero(mask)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                ids.append(k + 1)  # MOTChallenge ids start at 1
                labels.append(int(kinds[k]))
            clips[i, t] = np.clip(img, 0, 255).astype(np.uint8)
            clip_boxes.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
            clip_ids.append(np.asarray(ids, dtype=np.int64))
            clip_labels.append(np.asarray(labels, dtype=np.int64))
        all_boxes.append(clip_boxes)
        all_ids.append(clip_ids)
        all_labels.append(clip_labels)
    return VideoDataset(
        clips, targets, names, "moving-shapes", 10.0, all_boxes, all_ids, all_labels
    )


_OPTIONS = {"n": int, "frames": int, "size": int, "seed": int, "directions": int,
            "objects": int, "speed": float}  # fmt: skip


def load_video_builtin(spec: str) -> VideoDataset:
    """``spec`` is what follows ``builtin:``, e.g. ``moving-shapes?n=200&frames=8``."""
    name, _, query = spec.partition("?")
    if name in BUILTINS:  # an image dataset: name the command that takes it
        raise ConfigError(
            f"builtin:{spec} is an image dataset, not clips: the image commands take it "
            f"(`cnnlab train --data builtin:{spec}`, `cnnlab evaluate RUN --data builtin:{spec}`); "
            "the video builtin is builtin:moving-shapes"
        )
    if name != "moving-shapes":
        raise ConfigError(
            f"unknown builtin video dataset {name!r}{close_matches(name, ['moving-shapes'])}; "
            "the video builtin is builtin:moving-shapes"
        )
    return make_moving_shapes(**builtin_options("moving-shapes", query, _OPTIONS))


def write_video_folder(dataset: VideoDataset, root, *, ext: str = ".mp4", fps: float | None = None):
    """Write clips as video files in the UCF101 layout ``root/<class>/<name>_<i>.mp4`` plus, per
    clip, MOTChallenge ground truth ``root/<class>/<name>_<i>.gt.txt`` (frame, id, x, y, w, h,
    1, class+1, 1; frames from 1). Returns the list of written video paths."""
    from pathlib import Path

    from cnnlab.video.io import write_video

    root = Path(root)
    paths = []
    for i, clip in enumerate(dataset.clips):
        folder = root / dataset.class_names[dataset.targets[i]]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{dataset.name}_{i:05d}{ext}"
        write_video(path, clip, fps=fps or dataset.fps)
        if dataset.boxes:
            lines = []
            for t, (boxes, ids, labels) in enumerate(
                zip(dataset.boxes[i], dataset.track_ids[i], dataset.box_labels[i], strict=False)
            ):
                for (x0, y0, x1, y1), tid, lab in zip(boxes, ids, labels, strict=False):
                    lines.append(
                        f"{t + 1},{tid},{x0:g},{y0:g},{x1 - x0:g},{y1 - y0:g},1,{lab + 1},1"
                    )
            path.with_suffix(".gt.txt").write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths
