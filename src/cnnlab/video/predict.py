"""`cnnlab video predict` and `cnnlab video track`: a trained model over a video, frame by frame.

    from cnnlab.video.predict import predict_video
    summary = predict_video("runs/shapes-run", "street.mp4", "out/", smoothing="mean", window=5)

What runs depends on the checkpoint's ``task``:

- **classification** (any cnnlab classifier): each frame is classified with the run's own
  preprocessing; the class probabilities (T, C) are smoothed over time and the timeline and
  events follow the smoothed top class.
- **detection**: each frame's boxes (mapped back to frame pixels) are linked into tracks by
  ByteTrack (:mod:`cnnlab.video.tracking`), objects crossing a line are counted, and the per-frame
  "probability" of a class is its best detection score on the frame (0 when absent); events are
  then segments where a class is present (several classes may be present at once).
- **video-classification** (3D CNN clip models): delegated to
  :func:`cnnlab.video.train.predict_clips`; each frame gets the mean probabilities of the clips
  that cover it.

Frames are decoded with :func:`cnnlab.video.io.iter_frames` (the one video decoding policy: upright
frames, each with its own timestamp) and go through the model in batches, so memory holds one
batch of frames, never the whole video (except for clip models, which need the frames in order).
Only the small per-frame results are kept. With ``draw``, the video is decoded a second time to
draw the annotated copy, because the centred smoothing window needs later frames' predictions.

Files written to ``out_dir``: ``video.json`` (the video's properties and what was handled:
rotation, variable frame rate), ``timeline.csv``/``.json``, ``events.csv``/``.json``,
``annotated.mp4`` and, for detection runs, ``detections.csv``, ``tracks.csv`` (MOTChallenge rows),
``trajectories.json`` and ``counts.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cnnlab.config import Device, check_literals, make_config
from cnnlab.errors import ConfigError, close_matches
from cnnlab.run import checkpoint_metadata, claim_outputs, write_json
from cnnlab.video.io import Frame, VideoInfo, VideoWriter, iter_frames, probe
from cnnlab.video.tracking import (
    FrameTracks,
    LineCounter,
    Tracker,
    TrackerConfig,
    Trajectories,
    mot_metrics,
    parse_line,
    read_mot,
    tracks_to_mot,
    write_csv,
    write_mot,
)

log = logging.getLogger(__name__)

Smoothing = Literal["mean", "majority", "none"]
NmsMetric = Literal["iou", "ios"]
TASKS = ("classification", "detection", "video-classification")


@dataclass(frozen=True)
class VideoPredictConfig:
    """Options of :func:`predict_video` (and ``cnnlab video predict``)."""

    batch_size: int = 32  # frames per forward pass
    # mean: moving average of the probabilities; majority: vote of the per-frame top classes
    smoothing: Smoothing = "mean"
    window: int = 5  # frames in the smoothing window (odd: centred on the frame)
    min_event_frames: int = 5  # an event is a class holding for at least this many frames
    stride: int = 1  # look at every stride-th frame (windows and events count looked-at frames)
    max_frames: int | None = None  # stop after this many looked-at frames
    score_threshold: float | None = None  # detections below are dropped; None: the run's own
    line: tuple[float, ...] | None = None  # counting line x0,y0,x1,y1 in frame pixels; None: centre
    draw: bool = True  # write annotated.mp4
    device: Device = "auto"
    tracker: dict[str, Any] | None = None  # TrackerConfig options, e.g. {"lost_track_s": 2.0}
    # Detectors suppress overlaps per class only, so one object can come out as a circle *and* a
    # (partial) diamond; the tracker (class-agnostic) would make two tracks of it. A box is
    # dropped when it overlaps a higher-scored box of any class by more than `agnostic_nms`,
    # measured as IoU or as IoS (intersection over the smaller box: also catches a partial box
    # lying inside the whole one, whose IoU stays low). IoS 0.7 was chosen on validation clips
    # (moving-shapes seed 2000, not the benchmark's): MOTA 0.90 against 0.77 for IoU 0.5.
    agnostic_nms: float = 0.7  # 1.0: keep every box
    agnostic_nms_metric: NmsMetric = "ios"

    def __post_init__(self) -> None:
        check_literals(self)
        for key in ("batch_size", "window", "min_event_frames", "stride"):
            if getattr(self, key) < 1:
                raise ConfigError(f"option {key} must be >= 1, got {getattr(self, key)}")
        if self.window % 2 == 0:
            raise ConfigError(
                f"option window must be odd so that it centres on each frame, got {self.window}; "
                f"use {self.window + 1} or {self.window - 1}"
            )
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"option max_frames must be >= 1, got {self.max_frames}")
        if not 0.0 < self.agnostic_nms <= 1.0:
            raise ConfigError(
                f"option agnostic_nms must be in (0, 1] (1 keeps every box), "
                f"got {self.agnostic_nms}"
            )
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(
                f"option score_threshold must be in [0, 1], got {self.score_threshold}"
            )
        if self.line is not None:  # the CLI and config files give text; keep numbers
            object.__setattr__(self, "line", parse_line(self.line))
        if self.tracker is not None:
            if not isinstance(self.tracker, dict):
                raise ConfigError(
                    f"option tracker must be a dict of tracker options, got {self.tracker!r}"
                )
            make_config(TrackerConfig, **self.tracker)  # unknown keys: close-match error now

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- smoothing and events (pure functions) ---------------------------------------------------------
def windowed_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` frames (odd) along axis 0 of (T, ...) values.

    Centred rather than causal: a file is processed offline, and a causal window would shift every
    event ``window // 2`` frames late. At the ends the window shrinks to the frames that exist
    (the mean of fewer frames), so the first and last frames are not pulled towards zero.
    """
    from scipy.ndimage import uniform_filter1d

    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values.copy()
    # Zero padding in both sums; their ratio is the mean over the frames inside the video.
    total = uniform_filter1d(values, window, axis=0, mode="constant", cval=0.0)
    count = uniform_filter1d(np.ones(len(values)), window, mode="constant", cval=0.0)
    return total / count.reshape((-1,) + (1,) * (values.ndim - 1))


def smooth_probs(probs: np.ndarray, method: str = "mean", window: int = 5) -> np.ndarray:
    """Temporal smoothing of per-frame class probabilities (T, C) -> (T, C).

    - ``mean``: the centred moving average of each class's probability;
    - ``majority``: each frame gets the vote shares of the window's per-frame top classes, so
      its top class is the window's most frequent one (ties: the lower class index, as
      ``scipy.stats.mode``);
    - ``none``: a copy.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if method == "none" or window <= 1:
        return probs.copy()
    if method == "mean":
        return windowed_mean(probs, window)
    if method == "majority":
        votes = np.zeros_like(probs)
        if len(probs):
            votes[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
        return windowed_mean(votes, window)
    raise ConfigError(
        f"unknown smoothing {method!r}{close_matches(method, ('mean', 'majority', 'none'))}"
    )


def find_events(labels: np.ndarray, min_frames: int) -> list[tuple[int, int, int]]:
    """Run-length segments of equal labels (T,) int that last >= ``min_frames`` frames.

    Returns (label, first, last) with positions into ``labels`` (``last`` inclusive); label -1
    means "nothing" and never forms an event.
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return []
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [labels.size]]) - 1
    return [
        (int(labels[s]), int(s), int(e))
        for s, e in zip(starts, ends, strict=True)
        if labels[s] >= 0 and e - s + 1 >= min_frames
    ]


# -- models ----------------------------------------------------------------------------------------
def run_task(run: str | Path) -> str:
    """The checkpoint's ``task`` ("classification" when absent, as in older runs)."""
    meta = checkpoint_metadata(run)
    task = meta.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(
            f"{meta['weights']} is a {task} checkpoint; video prediction takes "
            f"{', '.join(TASKS)} runs"
        )
    return str(task)


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _normalised(images: list[np.ndarray], spec: Any, dev: Any):
    """Frames (H, W, 3) uint8 RGB -> (N, C, S, S) float tensor, through the same resize and mode
    conversion as image files (``arrays_to_chw``) and the run's mean/std."""
    import torch

    from cnnlab.data.tensors import arrays_to_chw

    x = torch.from_numpy(arrays_to_chw(np.stack(images), spec)).to(dev)
    mean = torch.tensor(spec.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=dev).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


@dataclass
class _Pass:
    """What the prediction pass keeps per looked-at frame (small arrays only)."""

    indices: list[int]
    times: list[float]
    probs: np.ndarray  # (T, C) per-frame class probabilities (detection: best score per class)
    class_names: list[str]
    multilabel: bool
    size: tuple[int, int] = (0, 0)  # (H, W) of the upright frames
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None  # >= threshold
    tracks: list[FrameTracks] | None = None
    counts: list[tuple[int, int]] | None = None  # cumulative (in, out) after each frame
    counter: LineCounter | None = None
    trajectories: Trajectories | None = None
    threshold: float = 0.5
    seconds: float = 0.0  # wall time of decoding + model + tracking


def _classify_pass(run, video, info, cfg, dev) -> _Pass:
    import torch

    from cnnlab.config import PreprocessSpec
    from cnnlab.engine.devices import inference_precision
    from cnnlab.engine.trainer import autocast
    from cnnlab.engine.weights import load_checkpoint_model
    from cnnlab.run import run_dir_of, trained_precision

    model, meta, weights = load_checkpoint_model(run, dev)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    precision = inference_precision(None, dev, trained_precision(run_dir_of(weights)))
    indices, times, probs = [], [], []
    t0 = time.perf_counter()
    size = (info.height, info.width)
    frames = iter_frames(video, stride=cfg.stride, max_frames=cfg.max_frames, info=info)
    for batch in _batches(frames, cfg.batch_size):
        size = batch[0].image.shape[:2]
        x = _normalised([f.image for f in batch], spec, dev)
        with torch.inference_mode(), autocast(dev, precision):
            probs.append(model(x).float().softmax(1).cpu().numpy())
        indices += [f.index for f in batch]
        times += [f.time_s for f in batch]
    return _Pass(indices, times, np.concatenate(probs).astype(np.float64),
                 list(meta["class_names"]), False, size,
                 seconds=time.perf_counter() - t0)  # fmt: skip


def _detect_pass(run, video, info, cfg, dev) -> _Pass:
    import supervision as sv
    import torch

    from cnnlab.config import PreprocessSpec
    from cnnlab.data.boxes import unmap_boxes
    from cnnlab.detect import load_detection_model

    model, meta, _ = load_detection_model(run, dev)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    names = list(meta["class_names"])
    threshold = float(
        meta.get("score_threshold", 0.5) if cfg.score_threshold is None else cfg.score_threshold
    )
    tcfg = make_config(TrackerConfig, **(cfg.tracker or {}))
    if tcfg.high_score is None:  # ByteTrack's first pass: the detections the user trusts
        tcfg = dataclasses.replace(
            tcfg, high_score=threshold, low_score=min(tcfg.low_score, threshold)
        )
    low = tcfg.low_score
    metric = sv.OverlapMetric.IOS if cfg.agnostic_nms_metric == "ios" else sv.OverlapMetric.IOU
    tracker = Tracker(tcfg, frame_rate=info.fps / cfg.stride if info.fps else 30.0)
    line = cfg.line or (info.width / 2, 0.0, info.width / 2, float(info.height))
    counter = LineCounter(line, names)
    trajectories = Trajectories()
    p = _Pass([], [], np.zeros((0, len(names))), names, True, (info.height, info.width),
              detections=[], tracks=[], counts=[], counter=counter, trajectories=trajectories,
              threshold=threshold)  # fmt: skip
    scores_rows = []
    t0 = time.perf_counter()
    frames = iter_frames(video, stride=cfg.stride, max_frames=cfg.max_frames, info=info)
    for batch in _batches(frames, cfg.batch_size):
        h, w = batch[0].image.shape[:2]
        p.size = (h, w)
        x = _normalised([f.image for f in batch], spec, dev)
        with torch.inference_mode():
            preds = model(x)
        for f, pred in zip(batch, preds, strict=True):
            keep = pred["scores"] >= low
            if cfg.agnostic_nms < 1.0 and keep.any():
                idx = torch.nonzero(keep).flatten().cpu().numpy()
                rows = torch.cat([pred["boxes"][keep], pred["scores"][keep, None]], 1)
                kept = sv.box_non_max_suppression(  # (N, 5) rows: no class column, agnostic
                    rows.cpu().numpy(), cfg.agnostic_nms, overlap_metric=metric
                )
                keep = torch.zeros_like(keep)
                keep[torch.from_numpy(idx[kept]).to(keep.device)] = True
            boxes = unmap_boxes(pred["boxes"][keep].cpu().numpy(), w, h, spec.image_size,
                                spec.resize)  # fmt: skip
            scores = pred["scores"][keep].cpu().numpy().astype(np.float32)
            labels = pred["labels"][keep].cpu().numpy().astype(np.int64)
            row = np.zeros(len(names))
            np.maximum.at(row, labels, scores)  # a class's frame score: its best detection
            scores_rows.append(row)
            sure = scores >= threshold
            p.detections.append((boxes[sure], scores[sure], labels[sure]))  # type: ignore[union-attr]
            tracks = tracker.update(boxes, scores, labels, time_s=f.time_s)
            p.tracks.append(tracks)  # type: ignore[union-attr]
            counter.update(f.index, f.time_s, tracks)
            p.counts.append((counter.in_count, counter.out_count))  # type: ignore[union-attr]
            trajectories.add(f.index, f.time_s, tracks)
            p.indices.append(f.index)
            p.times.append(f.time_s)
    p.seconds = time.perf_counter() - t0
    p.probs = np.asarray(scores_rows, dtype=np.float64).reshape(-1, len(names))
    return p


def _clip_pass(run, video, info, cfg, dev) -> _Pass:
    """A clip model (3D CNN, or a per-frame 2D model trained on clips): predict_clips
    (cnnlab.video.train) scores windows of frames; each frame gets the mean probabilities of the
    windows that cover it (the nearest window when none does)."""
    from cnnlab.video import train as video_train

    t0 = time.perf_counter()
    indices, times, images = [], [], []
    for f in iter_frames(video, stride=cfg.stride, max_frames=cfg.max_frames, info=info):
        indices.append(f.index)
        times.append(f.time_s)
        images.append(f.image)
    frames = np.stack(images)  # (T, H, W, 3): clip models need the frames in order
    clip_len = int(checkpoint_metadata(run).get("frames") or 1)
    # A window starting every quarter clip: each frame is seen by ~4 windows, at a quarter of
    # the cost of one window per frame.
    result = video_train.predict_clips(
        run, frames, stride=max(1, clip_len // 4), device=cfg.device, batch_size=cfg.batch_size
    )
    starts = np.asarray(result["starts"], dtype=np.int64)
    clip_probs = np.asarray(result["probs"], dtype=np.float64)
    span = (int(result.get("window", 1)) - 1) * int(result.get("step", 1)) + 1  # frames covered
    total = np.zeros((len(frames), clip_probs.shape[1]))
    count = np.zeros(len(frames))
    for s, pr in zip(starts.tolist(), clip_probs, strict=True):
        total[s : s + span] += pr
        count[s : s + span] += 1
    centres = starts + (span - 1) / 2
    for t in np.flatnonzero(count == 0):  # frames no window covers: the nearest window
        total[t], count[t] = clip_probs[int(np.argmin(np.abs(centres - t)))], 1
    return _Pass(indices, times, total / count[:, None], list(result["class_names"]), False,
                 frames.shape[1:3], seconds=time.perf_counter() - t0)  # fmt: skip


# -- drawing ---------------------------------------------------------------------------------------
# Pixels: smaller videos are enlarged (nearest neighbour) so that labels are legible.
_MIN_DRAW_SIDE = 256


def _draw_scale(h: int, w: int) -> int:
    return max(1, math.ceil(_MIN_DRAW_SIDE / max(1, min(h, w))))


class _Painter:
    """Draws one frame's results with supervision's annotators (boxes, labels, trails, line)."""

    def __init__(self, p: _Pass, smoothed: np.ndarray, scale: int) -> None:
        import supervision as sv

        self.p, self.smoothed, self.scale = p, smoothed, scale
        text_scale = 0.35 + 0.15 * scale / 2
        self.box = sv.BoxAnnotator(color_lookup=sv.ColorLookup.TRACK, thickness=max(1, scale // 2))
        self.label = sv.LabelAnnotator(
            color_lookup=sv.ColorLookup.TRACK, text_scale=text_scale, text_padding=2,
            text_position=sv.Position.TOP_LEFT,
        )  # fmt: skip
        self.trace = sv.TraceAnnotator(
            color_lookup=sv.ColorLookup.TRACK, trace_length=20, thickness=max(1, scale // 2)
        )
        self.text_scale = text_scale

    def __call__(self, row: int, image: np.ndarray) -> np.ndarray:
        import cv2

        s = self.scale
        if s > 1:
            image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
        canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # supervision and OpenCV draw in BGR
        p = self.p
        if p.tracks is not None:
            tracks = p.tracks[row]
            det = FrameTracks(tracks.boxes * s, tracks.track_ids, tracks.labels, tracks.scores)
            d = det.to_supervision()
            ids, labs, scores = det.track_ids.tolist(), det.labels.tolist(), det.scores.tolist()
            labels = [
                f"#{t} {p.class_names[c]} {sc:.2f}"
                for t, c, sc in zip(ids, labs, scores, strict=True)
            ]
            canvas = self.trace.annotate(canvas, d)
            canvas = self.box.annotate(canvas, d)
            canvas = self.label.annotate(canvas, d, labels=labels)
            x0, y0, x1, y1 = (int(round(v * s)) for v in p.counter.line)  # type: ignore[union-attr]
            cv2.line(canvas, (x0, y0), (x1, y1), (255, 255, 255), max(1, s // 2))
            n_in, n_out = p.counts[row]  # type: ignore[index]
            self._text(canvas, f"in {n_in}  out {n_out}", 1)
        else:
            c = int(self.smoothed[row].argmax())
            self._text(canvas, f"{p.class_names[c]} {self.smoothed[row, c]:.2f}", 0)
        self._text(canvas, f"{p.times[row]:.2f} s", 2 if p.tracks is not None else 1)
        return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)

    def _text(self, canvas: np.ndarray, text: str, line: int) -> None:
        import cv2

        h = int(22 * self.text_scale / 0.5)
        org = (4, h * (line + 1))
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, self.text_scale, (0, 0, 0), 3,
                    cv2.LINE_AA)  # fmt: skip
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, self.text_scale,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip


def _write_annotated(path: Path, video: Path, info: VideoInfo, cfg: VideoPredictConfig, p: _Pass,
                     smoothed: np.ndarray) -> Path:  # fmt: skip
    h, w = p.size
    painter = _Painter(p, smoothed, _draw_scale(h, w))
    fps = (info.fps or 25.0) / cfg.stride
    with VideoWriter(path, fps=fps) as writer:
        row = 0
        for f in iter_frames(video, stride=cfg.stride, max_frames=cfg.max_frames, info=info):
            if row >= len(p.indices):
                break
            assert f.index == p.indices[row], "the second decoding pass disagrees with the first"
            writer.write(painter(row, f.image), time_s=f.time_s - p.times[0])
            row += 1
    return path


# -- results -> files ------------------------------------------------------------------------------
def _smooth(p: _Pass, cfg: VideoPredictConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(smoothed (T, C), top class per frame (T,) with -1 for none, present (T, C) bool).

    Detection scores are per class and independent (several objects at once), so for them
    "majority" votes on each class's presence (score >= threshold), not on one top class."""
    t = len(p.indices)
    if p.multilabel:
        if cfg.smoothing == "majority":
            smoothed = windowed_mean((p.probs >= p.threshold).astype(np.float64), cfg.window)
            present = smoothed > 0.5
        else:
            smoothed = smooth_probs(p.probs, cfg.smoothing, cfg.window)
            present = smoothed >= p.threshold
        best = smoothed.argmax(axis=1)
        return smoothed, np.where(present[np.arange(t), best], best, -1), present
    smoothed = smooth_probs(p.probs, cfg.smoothing, cfg.window)
    top = smoothed.argmax(axis=1)
    return smoothed, top, np.eye(len(p.class_names), dtype=bool)[top]


def _write_timeline(
    out: Path, task: str, p: _Pass, cfg: VideoPredictConfig, smoothed: np.ndarray, top: np.ndarray
) -> dict[str, str]:
    names = p.class_names

    def name(c: int) -> str:
        return names[c] if c >= 0 else ""

    raw_top = p.probs.argmax(axis=1)
    header = ["frame", "time_s", "top_class", "top_probability", "raw_top_class"]
    header += [f"raw_{n}" for n in names] + [f"smoothed_{n}" for n in names]
    rows, frames_json = [], []
    for r in range(len(p.indices)):
        c = int(top[r])
        top_p = float(smoothed[r, c]) if c >= 0 else 0.0
        rows.append(
            [p.indices[r], f"{p.times[r]:.6f}", name(c), f"{top_p:.6f}", name(int(raw_top[r]))]
            + [f"{v:.6f}" for v in p.probs[r]]
            + [f"{v:.6f}" for v in smoothed[r]]
        )
        frames_json.append({
            "frame": p.indices[r], "time_s": round(p.times[r], 6), "top_class": name(c),
            "top_probability": round(top_p, 6), "raw": np.round(p.probs[r], 6).tolist(),
            "smoothed": np.round(smoothed[r], 6).tolist(),
        })  # fmt: skip
    scores = "best detection score per class (0: absent)" if p.multilabel else "softmax"
    write_csv(out / "timeline.csv", header, rows)
    write_json(out / "timeline.json", {
        "task": task, "class_names": names, "scores": scores, "smoothing": cfg.smoothing,
        "window": cfg.window, "stride": cfg.stride, "frames": frames_json,
    })  # fmt: skip
    return {"timeline_csv": str(out / "timeline.csv"), "timeline_json": str(out / "timeline.json")}


def _events(p: _Pass, cfg: VideoPredictConfig, smoothed: np.ndarray, top: np.ndarray,
            present: np.ndarray) -> list[dict[str, Any]]:  # fmt: skip
    """Segments of the top class (single-label) or of each class's presence (detection)."""
    if p.multilabel:
        segments = []
        for c in range(len(p.class_names)):
            segments += find_events(np.where(present[:, c], c, -1), cfg.min_event_frames)
        segments.sort(key=lambda seg: (seg[1], seg[0]))
    else:
        segments = find_events(top, cfg.min_event_frames)
    return [{
        "class": p.class_names[c], "start_frame": p.indices[a], "end_frame": p.indices[b],
        "start_time_s": round(p.times[a], 6), "end_time_s": round(p.times[b], 6),
        "frames": b - a + 1, "mean_probability": round(float(smoothed[a : b + 1, c].mean()), 6),
    } for c, a, b in segments]  # fmt: skip


def _write_events(out: Path, cfg: VideoPredictConfig, events: list[dict]) -> dict[str, str]:
    header = ["class", "start_frame", "end_frame", "start_time_s", "end_time_s", "frames",
              "mean_probability"]  # fmt: skip
    write_csv(out / "events.csv", header, ([e[k] for k in header] for e in events))
    write_json(out / "events.json", {"min_event_frames": cfg.min_event_frames, "events": events})
    return {"events_csv": str(out / "events.csv"), "events_json": str(out / "events.json")}


def _write_tracking(out: Path, p: _Pass, cfg: VideoPredictConfig) -> dict[str, Any]:
    """detections.csv, tracks.csv (MOTChallenge), trajectories.json, counts.json."""
    assert p.detections is not None and p.tracks is not None and p.counter is not None
    assert p.trajectories is not None
    names = p.class_names
    det_rows = [
        [p.indices[r], f"{p.times[r]:.6f}", *(f"{v:.2f}" for v in b), f"{s:.4f}", names[lab]]
        for r, (boxes, scores, labels) in enumerate(p.detections)
        for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True)
    ]
    header = ["frame", "time_s", "x0", "y0", "x1", "y1", "score", "class"]
    write_csv(out / "detections.csv", header, det_rows)
    mot = tracks_to_mot(p.indices, p.tracks)
    write_mot(out / "tracks.csv", mot.frames, mot.ids, mot.boxes, mot.scores, mot.classes)
    write_json(out / "trajectories.json", p.trajectories.to_dict(names))
    counts = p.counter.to_dict()
    counts["line_source"] = "given" if cfg.line else "default: vertical line through the centre"
    write_json(out / "counts.json", counts)
    return {
        "paths": {name: str(out / file) for name, file in (
            ("detections_csv", "detections.csv"), ("tracks_csv", "tracks.csv"),
            ("trajectories_json", "trajectories.json"), ("counts_json", "counts.json"))},
        "tracks": len(p.trajectories),
        "counts": {k: counts[k] for k in ("line", "in", "out", "in_per_class", "out_per_class")},
        "score_threshold": p.threshold,
    }  # fmt: skip


# -- the door --------------------------------------------------------------------------------------
#: Options only a detection run's pass reads (its tracker, line counter and NMS): given for a
#: classifier or clip model they changed nothing, yet video.json recorded them as used.
DETECTION_ONLY = ("score_threshold", "line", "agnostic_nms", "agnostic_nms_metric", "tracker")


def _check_detection_only(
    cfg: VideoPredictConfig, given: dict[str, Any], run: str | Path, task: str
) -> None:
    """Refuse detection-only options (given, or set away from their defaults) for a run of
    another task, naming them."""
    if task == "detection":
        return
    defaults = VideoPredictConfig()
    named = [
        k
        for k in DETECTION_ONLY
        if given.get(k) is not None or getattr(cfg, k) != getattr(defaults, k)
    ]
    if named:
        raise ConfigError(
            f"{' and '.join(f'option {k}' for k in named)} only apply to a detection run's "
            f"tracking and line counting; {run} is a {task} run: "
            f"{' and '.join(f'leave {k} out' for k in named)}"
        )


def predict_video(
    run: str | Path,
    video: str | Path,
    out_dir: str | Path,
    config: VideoPredictConfig | None = None,
    *,
    command: str = "video predict",
    default_out: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Run a cnnlab classifier, detector or clip model over ``video`` and write the timeline,
    events, tracks (detectors) and an annotated video to ``out_dir``.

    ``options`` are :class:`VideoPredictConfig` fields (batch_size, smoothing, window,
    min_event_frames, stride, max_frames, score_threshold, line, draw, device, tracker).
    Returns a JSON-able summary: ``task``, ``frames`` (looked at), ``class_names``, ``events``,
    ``notes`` (rotation / variable frame rate handled), ``paths`` (every file written),
    ``frames_per_s`` (decoding + model + tracking), and for detectors ``tracks``, ``counts`` and
    ``score_threshold``. A missing, corrupt or truncated video raises DataError naming it.
    A file of these already in ``out_dir`` that cnnlab did not write is refused
    (:func:`cnnlab.run.claim_outputs`; ``default_out``: a folder cnnlab chose, ``command``: the
    one the folder's record names).
    """
    from cnnlab.engine.devices import resolve_device

    base = config.to_dict() if isinstance(config, VideoPredictConfig) else {}
    cfg = make_config(VideoPredictConfig, **(base | options))
    video = Path(video)
    info = probe(video)  # DataError for missing / empty / not a video, before the model loads
    notes = info.notes()
    for note in notes:
        log.warning(note)
    task = run_task(run)
    _check_detection_only(cfg, base | options, run, task)
    names_out = video_outputs(task, cfg.draw, command)
    out = claim_outputs(out_dir, names_out, command=command, default=default_out, record=False)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(cfg.device)
    passes = {"classification": _classify_pass, "detection": _detect_pass,
              "video-classification": _clip_pass}  # fmt: skip
    p = passes[task](run, video, info, cfg, dev)
    t_count = len(p.indices)
    if info.frames and cfg.stride == 1 and cfg.max_frames is None and t_count != info.frames:
        notes.append(f"{video}: the container lists {info.frames} frames; {t_count} were decoded")
        log.warning(notes[-1])
    smoothed, top, present = _smooth(p, cfg)
    events = _events(p, cfg, smoothed, top, present)
    claim_outputs(out, names_out, command=command, default=default_out)  # recorded, then written
    paths = _write_timeline(out, task, p, cfg, smoothed, top) | _write_events(out, cfg, events)
    summary: dict[str, Any] = {
        "task": task, "run": str(run), "video": str(video), "out_dir": str(out),
        "frames": t_count, "class_names": p.class_names, "events": events, "notes": notes,
        "frames_per_s": round(t_count / p.seconds, 2) if p.seconds > 0 else None,
    }  # fmt: skip
    if p.tracks is not None:
        tracking = _write_tracking(out, p, cfg)
        paths |= tracking.pop("paths")
        summary |= tracking
    if cfg.draw:
        paths["annotated"] = str(
            _write_annotated(out / "annotated.mp4", video, info, cfg, p, smoothed)
        )
    write_json(out / "video.json", {
        "info": info.to_dict(), "notes": notes, "frames_looked_at": t_count,
        "stride": cfg.stride, "max_frames": cfg.max_frames, "options": cfg.to_dict(),
    })  # fmt: skip
    paths["video_json"] = str(out / "video.json")
    summary["paths"] = paths
    return summary


def video_outputs(task: str, draw: bool, command: str = "video predict") -> list[str]:
    """The files :func:`predict_video` (``command`` video track: and :func:`track_video`) writes."""
    names = ["video.json", "timeline.csv", "timeline.json", "events.csv", "events.json"]
    if task == "detection":
        names += ["detections.csv", "tracks.csv", "trajectories.json", "counts.json"]
    if command == "video track":
        names.append("mot_metrics.json")
    return names + (["annotated.mp4"] if draw else [])


def track_video(
    run: str | Path,
    video: str | Path,
    gt: str | Path,
    out_dir: str | Path,
    *,
    iou_threshold: float = 0.5,
    default_out: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Detect and track objects in ``video`` (as :func:`predict_video`) and score the tracks
    against MOTChallenge ground truth ``gt`` with :func:`cnnlab.video.tracking.mot_metrics`.
    Writes ``mot_metrics.json``; returns the predict summary plus ``metrics``."""
    truth = read_mot(gt)  # a bad ground-truth file fails before the model runs
    if run_task(run) != "detection":
        raise ConfigError(
            f"cnnlab video track needs a detection run; {run} is a {run_task(run)} run"
        )
    summary = predict_video(
        run, video, out_dir, command="video track", default_out=default_out, **options
    )
    hyp = read_mot(summary["paths"]["tracks_csv"])
    timeline = json.loads(Path(summary["paths"]["timeline_json"]).read_text())
    frames = [row["frame"] + 1 for row in timeline["frames"]]  # MOT frames count from 1
    metrics = mot_metrics(truth, hyp, iou_threshold, frames=frames)
    metrics["gt"] = str(gt)
    write_json(Path(out_dir) / "mot_metrics.json", metrics)
    summary["metrics"] = metrics
    summary["paths"]["mot_metrics_json"] = str(Path(out_dir) / "mot_metrics.json")
    return summary
