"""Tracking: per-frame detections -> tracks with ids, trajectories, line counts, MOT metrics.

Every piece is a thin layer over a well-kept library:

- **ByteTrack** from Roboflow's ``trackers`` package (``trackers.ByteTrackTracker``). It is the
  tracker that ``supervision`` shipped as ``sv.ByteTrack`` until it moved into its own package;
  supervision 0.31 itself imports it from there. Kalman-filtered boxes, IoU matching with the
  Hungarian algorithm, and ByteTrack's second pass that matches low-score detections to tracks
  the high-score ones left unmatched.
- **Line counting** with ``supervision.LineZone``.
- **Metrics** (MOTA, MOTP, IDF1, ...) with ``motmetrics`` (py-motmetrics), the reference
  implementation of the CLEAR-MOT and identity measures.

Conventions: boxes are ``xyxy`` in frame pixels (float); track ids are 1-based, as in
MOTChallenge files (ByteTrack counts from 0; we add 1 so ids read the same everywhere); labels
are class indices of the detector.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import make_config
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


# -- tracker ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackerConfig:
    """ByteTrack's settings. Which ones matter for small, fast objects (64 px frames, shapes of
    10-25 px moving 1-3 px per frame):

    - ``min_iou``: the IoU a detection needs with a track's *predicted* box to be matched. Small
      boxes lose IoU fast when they move (a 12 px box shifted 4 px keeps IoU 0.5), so keep it
      low; the Kalman prediction does most of the work once a track has a velocity.
    - ``lost_track_s``: how long a track survives without a detection. Long enough to bridge
      detector drop-outs, short enough that an id is not handed to a newcomer in the same place.
      ByteTrack counts it in frames of a 30 fps video; we give seconds and let the tracker scale
      by the video's own frame rate (and by each frame's timestamp when the rate varies).
    - ``min_track_frames``: consecutive matched frames before a track gets an id. 2 keeps a lone
      false positive from becoming a track, at the price of one missed frame per new object.
    - ``high_score``: detections at or above it are matched first and may start tracks; the
      ones between ``low_score`` and ``high_score`` may only extend existing tracks
      (ByteTrack's second association). ``None``: the detection run's score threshold in
      ``predict_video``, 0.5 for a bare :class:`Tracker`.
    """

    min_iou: float = 0.1  # IoU of detection vs Kalman-predicted track box to match
    lost_track_s: float = 1.0  # seconds a track is kept without a matching detection
    min_track_frames: int = 2  # consecutive matches before an id is given
    high_score: float | None = None  # None: the detection run's threshold (0.5 without a run)
    low_score: float = 0.1  # detections below are dropped before tracking

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_iou < 1.0:
            raise ConfigError(f"tracker option min_iou must be in [0, 1), got {self.min_iou}")
        if self.lost_track_s < 0:
            raise ConfigError(
                f"tracker option lost_track_s must be >= 0 s, got {self.lost_track_s}"
            )
        if self.min_track_frames < 1:
            raise ConfigError(
                f"tracker option min_track_frames must be >= 1, got {self.min_track_frames}"
            )
        if not 0.0 <= self.low_score <= 1.0:
            raise ConfigError(f"tracker option low_score must be in [0, 1], got {self.low_score}")
        if self.high_score is not None and not self.low_score <= self.high_score <= 1.0:
            raise ConfigError(
                f"tracker option high_score must be in [low_score, 1], got {self.high_score}"
            )


@dataclass
class FrameTracks:
    """Tracked objects on one frame: boxes (M, 4) xyxy float32 pixels, track_ids (M,) int64
    (1-based), labels (M,) int64 class indices, scores (M,) float32 detector scores."""

    boxes: np.ndarray
    track_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> FrameTracks:
        return cls(
            np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64),
            np.zeros(0, np.float32),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.track_ids)

    def to_supervision(self):
        import supervision as sv

        if not len(self):
            d = sv.Detections.empty()
            d.tracker_id = np.zeros(0, dtype=int)
            return d
        return sv.Detections(
            xyxy=self.boxes.astype(np.float32), confidence=self.scores.astype(np.float32),
            class_id=self.labels.astype(int), tracker_id=self.track_ids.astype(int),
        )  # fmt: skip


def _detections(boxes: Any, scores: Any, labels: Any):
    import supervision as sv

    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(
            f"boxes, scores and labels differ in length: {len(boxes)}, {len(scores)}, {len(labels)}"
        )
    if not len(boxes):
        return sv.Detections.empty()
    return sv.Detections(xyxy=boxes, confidence=scores, class_id=labels.astype(int))


class Tracker:
    """Online multi-object tracker (ByteTrack): feed one frame's detections at a time.

        tracker = Tracker(frame_rate=25.0, high_score=0.5)
        for boxes, scores, labels, t in frames:
            tracks = tracker.update(boxes, scores, labels, time_s=t)  # FrameTracks

    ``time_s`` (the frame's own timestamp) makes the Kalman filter step by real elapsed time, so
    a variable frame rate or skipped frames (``stride``) keep motion predictions right.
    """

    def __init__(
        self, config: TrackerConfig | None = None, *, frame_rate: float = 30.0, **options: Any
    ) -> None:
        from trackers import ByteTrackTracker

        if isinstance(config, TrackerConfig):
            self.config = make_config(TrackerConfig, **(config.__dict__ | options))
        else:
            self.config = make_config(TrackerConfig, **options)
        cfg = self.config
        if not (frame_rate and math.isfinite(frame_rate) and frame_rate > 0):
            frame_rate = 30.0  # a container without a rate: ByteTrack's own reference rate
        self.frame_rate = float(frame_rate)
        high = 0.5 if cfg.high_score is None else cfg.high_score  # DetectConfig's default threshold
        self._tracker = ByteTrackTracker(
            # ByteTrack counts the buffer in frames of a 30 fps video and rescales by frame_rate.
            lost_track_buffer=int(round(cfg.lost_track_s * 30.0)),
            frame_rate=self.frame_rate,
            track_activation_threshold=high,
            minimum_consecutive_frames=cfg.min_track_frames,
            minimum_iou_threshold=cfg.min_iou,
            high_conf_det_threshold=high,
        )

    def update(
        self, boxes: Any, scores: Any, labels: Any, *, time_s: float | None = None
    ) -> FrameTracks:
        """One frame's detections (boxes (K, 4) xyxy pixels, scores (K,), labels (K,)) ->
        the confirmed tracks on this frame. Detections matched to no confirmed track are left
        out (they are new or unconfirmed, or below ``low_score``)."""
        dets = _detections(boxes, scores, labels)
        if len(dets):
            dets = dets[dets.confidence >= self.config.low_score]
        out = self._tracker.update(dets, timestamp=time_s)
        if out.tracker_id is None or not len(out):
            return FrameTracks.empty()
        keep = out.tracker_id >= 0
        if not keep.any():
            return FrameTracks.empty()
        out = out[keep]
        n = len(out)
        return FrameTracks(
            boxes=out.xyxy.astype(np.float32),
            track_ids=out.tracker_id.astype(np.int64) + 1,  # ByteTrack ids are 0-based
            labels=(out.class_id if out.class_id is not None else np.zeros(n)).astype(np.int64),
            scores=(out.confidence if out.confidence is not None else np.ones(n)).astype(
                np.float32
            ),
        )

    def reset(self) -> None:
        self._tracker.reset()


def track_detections(
    detections: Iterable[tuple[Any, Any, Any]],
    *,
    times: Sequence[float] | None = None,
    frame_rate: float = 30.0,
    config: TrackerConfig | None = None,
    **options: Any,
) -> list[FrameTracks]:
    """Track a whole sequence: ``detections`` yields (boxes, scores, labels) per frame."""
    tracker = Tracker(config, frame_rate=frame_rate, **options)
    out = []
    for i, (boxes, scores, labels) in enumerate(detections):
        t = None if times is None else float(times[i])
        out.append(tracker.update(boxes, scores, labels, time_s=t))
    return out


# -- trajectories ----------------------------------------------------------------------------------
@dataclass
class _Path:
    frames: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    centres: list[list[float]] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)


class Trajectories:
    """Per track: the frames it was seen on, their times (s) and the box centres (x, y pixels)."""

    def __init__(self) -> None:
        self._paths: dict[int, _Path] = {}

    def add(self, frame: int, time_s: float, tracks: FrameTracks) -> None:
        centres = np.column_stack(
            [
                (tracks.boxes[:, 0] + tracks.boxes[:, 2]) / 2,
                (tracks.boxes[:, 1] + tracks.boxes[:, 3]) / 2,
            ]
        )
        for tid, c, lab in zip(
            tracks.track_ids.tolist(), centres.tolist(), tracks.labels.tolist(), strict=True
        ):
            p = self._paths.setdefault(int(tid), _Path())
            p.frames.append(int(frame))
            p.times.append(round(float(time_s), 6))
            p.centres.append([round(c[0], 2), round(c[1], 2)])
            p.labels[int(lab)] += 1

    def __len__(self) -> int:
        return len(self._paths)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        tracks = []
        for tid in sorted(self._paths):
            p = self._paths[tid]
            label = p.labels.most_common(1)[0][0]  # a track's class: its most frequent label
            tracks.append({
                "track_id": tid,
                "label": label,
                "class": class_names[label] if class_names else str(label),
                "frames": p.frames,
                "times": p.times,
                "centres": p.centres,
            })  # fmt: skip
        return {"units": {"times": "s", "centres": "pixels (x, y)"}, "tracks": tracks}


# -- line counting ---------------------------------------------------------------------------------
def parse_line(value: Any) -> tuple[float, float, float, float] | None:
    """``"x0,y0,x1,y1"`` or four numbers -> a tuple of floats (pixels); ConfigError otherwise."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = tuple(float(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        numbers = ()
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise ConfigError(
            f"option line expects 4 numbers x0,y0,x1,y1 (frame pixels), got {value!r}"
        )
    if numbers[:2] == numbers[2:]:
        raise ConfigError(f"option line needs two different end points, got {value!r}")
    return numbers  # type: ignore[return-value]


class LineCounter:
    """Objects crossing a line, counted per direction and class with ``supervision.LineZone``.

    ``in`` is a crossing from the right-hand side to the left-hand side of the line when walking
    from (x0, y0) to (x1, y1) as drawn on screen (y grows downwards); ``out`` is the reverse. For
    a horizontal line drawn left to right, ``in`` means moving up. A track counts once it has
    all four box corners on the new side (LineZone's default anchors), so a box sitting on the
    line does not flicker in and out.
    """

    def __init__(self, line: Sequence[float], class_names: Sequence[str] | None = None) -> None:
        import supervision as sv

        x0, y0, x1, y1 = parse_line(line)  # type: ignore[misc]
        self.line = (x0, y0, x1, y1)
        self.class_names = list(class_names) if class_names else None
        self._zone = sv.LineZone(start=sv.Point(x0, y0), end=sv.Point(x1, y1))
        self.crossings: list[dict[str, Any]] = []

    def _name(self, label: Any) -> str:
        if label is None:
            return "object"
        return self.class_names[int(label)] if self.class_names else str(int(label))

    def update(self, frame: int, time_s: float, tracks: FrameTracks) -> tuple[int, int]:
        """Feed one frame's tracks; returns this frame's (in, out) crossings."""
        crossed_in, crossed_out = self._zone.trigger(tracks.to_supervision())
        for i in np.flatnonzero(crossed_in | crossed_out):
            self.crossings.append({
                "frame": int(frame), "time_s": round(float(time_s), 6),
                "track_id": int(tracks.track_ids[i]), "class": self._name(tracks.labels[i]),
                "direction": "in" if crossed_in[i] else "out",
            })  # fmt: skip
        return int(crossed_in.sum()), int(crossed_out.sum())

    @property
    def in_count(self) -> int:
        return int(self._zone.in_count)

    @property
    def out_count(self) -> int:
        return int(self._zone.out_count)

    def to_dict(self) -> dict[str, Any]:
        def per_class(counts: dict) -> dict[str, int]:
            return {
                self._name(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))
            }

        return {
            "line": list(self.line),
            "in": self.in_count,
            "out": self.out_count,
            "in_per_class": per_class(self._zone.in_count_per_class),
            "out_per_class": per_class(self._zone.out_count_per_class),
            "crossings": self.crossings,
            "direction": "in: from the right-hand to the left-hand side of the line walked from "
            "(x0, y0) to (x1, y1) on screen; out: the reverse",
        }


# -- MOTChallenge files ----------------------------------------------------------------------------
@dataclass
class MOTTable:
    """Rows of a MOTChallenge file. frames (N,) int (1-based), ids (N,) int, boxes (N, 4) xyxy
    float64 pixels, scores (N,) (column 7: confidence, or the ground truth's "consider" flag),
    classes (N,) int (column 8, 1-based as in MOT16+; -1 when absent)."""

    frames: np.ndarray
    ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)

    def select(self, mask: np.ndarray) -> MOTTable:
        return MOTTable(
            self.frames[mask],
            self.ids[mask],
            self.boxes[mask],
            self.scores[mask],
            self.classes[mask],
        )

    def by_frame(self) -> dict[int, np.ndarray]:
        """frame -> row indices."""
        out: dict[int, list[int]] = {}
        for i, f in enumerate(self.frames.tolist()):
            out.setdefault(int(f), []).append(i)
        return {f: np.asarray(rows, dtype=np.int64) for f, rows in out.items()}


def read_mot(path: str | os.PathLike[str]) -> MOTTable:
    """Read a MOTChallenge text file: ``frame, id, x, y, w, h[, conf[, class[, visibility]]]``
    per line (comma separated; whitespace also accepted). Raises DataError naming the file and
    row for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such MOTChallenge file; check the path")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DataError(
            path, "not a text file; expected MOTChallenge rows frame,id,x,y,w,h,..."
        ) from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p for p in (line.split(",") if "," in line else line.split()) if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise DataError(
                path, f"not a number in {line!r}; MOTChallenge rows are frame,id,x,y,w,h,...", row=n
            ) from None
        if len(values) < 6:
            raise DataError(
                path,
                f"{len(values)} columns; MOTChallenge rows need at least frame,id,x,y,w,h",
                row=n,
            )
        if not all(math.isfinite(v) for v in values[:6]):
            raise DataError(path, "NaN or infinite value in frame,id,x,y,w,h", row=n)
        if values[0] < 1 or values[0] != int(values[0]) or values[1] != int(values[1]):
            raise DataError(
                path, f"frame and id must be integers, frames from 1; got {line!r}", row=n
            )
        if values[4] < 0 or values[5] < 0:
            raise DataError(path, f"negative box width or height in {line!r}", row=n)
        conf = values[6] if len(values) > 6 else 1.0
        cls = int(values[7]) if len(values) > 7 else -1
        rows.append((int(values[0]), int(values[1]), *values[2:6], conf, cls))
    if not rows:
        return MOTTable(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0),
            np.zeros(0, np.int64),
        )  # fmt: skip
    a = np.asarray(rows, dtype=np.float64)
    boxes = np.column_stack([a[:, 2], a[:, 3], a[:, 2] + a[:, 4], a[:, 3] + a[:, 5]])
    return MOTTable(
        a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), boxes, a[:, 6], a[:, 7].astype(np.int64)
    )


def write_mot(
    path: str | os.PathLike[str],
    frames: Sequence[int] | np.ndarray,
    ids: Sequence[int] | np.ndarray,
    boxes: np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
    classes: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """Write MOTChallenge rows ``frame, id, x, y, w, h, conf, class, -1`` (frames from 1, boxes
    given as (N, 4) xyxy pixels, ``classes`` 1-based or -1). This is the MOT16+ ground-truth
    layout; evaluation tools read it as results too (they use the first seven columns)."""
    from cnnlab.engine.checkpoint import atomic_write

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    scores = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64)
    classes = np.full(n, -1) if classes is None else np.asarray(classes, dtype=np.int64)
    buf = io.StringIO()
    for f, tid, (x0, y0, x1, y1), s, c in zip(frames, ids, boxes.tolist(), scores.tolist(),
                                              classes.tolist(), strict=True):  # fmt: skip
        w, h = x1 - x0, y1 - y0
        buf.write(f"{int(f)},{int(tid)},{x0:.2f},{y0:.2f},{w:.2f},{h:.2f},{s:.4f},{int(c)},-1\n")
    data = buf.getvalue().encode()
    atomic_write(Path(path), lambda fh: fh.write(data))
    return Path(path)


# -- metrics ---------------------------------------------------------------------------------------
_MM_METRICS = {  # motmetrics name -> ours
    "num_frames": "num_frames",
    "mota": "mota",
    "motp": "motp",
    "idf1": "idf1",
    "idp": "idp",
    "idr": "idr",
    "num_switches": "id_switches",
    "num_false_positives": "false_positives",
    "num_misses": "false_negatives",
    "num_objects": "num_objects",
    "num_predictions": "num_predictions",
    "num_unique_objects": "num_unique_objects",
    "mostly_tracked": "mostly_tracked",
    "partially_tracked": "partially_tracked",
    "mostly_lost": "mostly_lost",
    "num_fragmentations": "fragmentations",
    "precision": "precision",
    "recall": "recall",
}


def _iou_distance(gt_xyxy: np.ndarray, hyp_xyxy: np.ndarray, max_distance: float) -> np.ndarray:
    """motmetrics' IoU distance (1 - IoU; NaN = may not pair) between (G, 4) and (H, 4) boxes.

    ``motmetrics.distances.iou_matrix`` (1.4.0, the latest release) calls ``np.asfarray``, which
    NumPy 2 removed; this is the same computation on motmetrics' own ``boxiou``."""
    from motmetrics.distances import boxiou

    if not len(gt_xyxy) or not len(hyp_xyxy):
        return np.empty((len(gt_xyxy), len(hyp_xyxy)))

    def xywh(b: np.ndarray) -> np.ndarray:
        b = np.asarray(b, dtype=np.float64)
        return np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])

    dist = 1.0 - boxiou(xywh(gt_xyxy)[:, None], xywh(hyp_xyxy)[None, :])
    return np.where(dist > max_distance, np.nan, dist)


def mot_metrics(
    gt: MOTTable | str | os.PathLike[str],
    hyp: MOTTable | str | os.PathLike[str],
    iou_threshold: float = 0.5,
    *,
    frames: Iterable[int] | None = None,
) -> dict[str, Any]:
    """CLEAR-MOT and identity metrics of ``hyp`` tracks against ``gt`` with motmetrics.

    A ground-truth box and a track box may pair when their IoU >= ``iou_threshold``. Ground-truth
    rows whose 7th column is 0 (MOTChallenge's "not considered" flag) are left out. ``frames``
    (1-based) restricts the evaluation, e.g. to the frames a strided run looked at; by default
    every frame that appears in either file counts.

    Returns a JSON-able dict: ``mota`` = 1 - (FN + FP + IDSW) / GT boxes, ``motp`` (motmetrics'
    convention: mean 1 - IoU of matched pairs, lower is better) and ``mean_iou`` = 1 - motp,
    ``idf1``/``idp``/``idr``, ``id_switches``, ``false_positives``, ``false_negatives``,
    ``num_objects`` (GT boxes), ``num_predictions``, ``num_frames``, ``mostly_tracked``,
    ``partially_tracked``, ``mostly_lost``, ``fragmentations``, ``precision``, ``recall``.
    """
    import motmetrics as mm

    if not 0.0 < iou_threshold <= 1.0:
        raise ConfigError(f"option iou_threshold must be in (0, 1], got {iou_threshold}")
    gt_path = None if isinstance(gt, MOTTable) else gt
    gt = gt if isinstance(gt, MOTTable) else read_mot(gt)
    hyp = hyp if isinstance(hyp, MOTTable) else read_mot(hyp)
    gt = gt.select(gt.scores != 0)
    if frames is not None:
        wanted = np.asarray(sorted({int(f) for f in frames}), dtype=np.int64)
        gt = gt.select(np.isin(gt.frames, wanted))
        hyp = hyp.select(np.isin(hyp.frames, wanted))
    else:
        wanted = np.union1d(gt.frames, hyp.frames)
    if not len(gt):
        raise DataError(
            gt_path or "ground truth", "holds no (considered) boxes on the evaluated frames"
        )
    gt_rows, hyp_rows = gt.by_frame(), hyp.by_frame()
    none = np.zeros(0, np.int64)
    acc = mm.MOTAccumulator(auto_id=False)
    for f in wanted.tolist():
        g, h = gt_rows.get(f, none), hyp_rows.get(f, none)
        dist = _iou_distance(gt.boxes[g], hyp.boxes[h], 1.0 - iou_threshold)
        acc.update(gt.ids[g].tolist(), hyp.ids[h].tolist(), dist, frameid=int(f))
    summary = mm.metrics.create().compute(acc, metrics=list(_MM_METRICS), name="all")
    out: dict[str, Any] = {}
    for mm_name, ours in _MM_METRICS.items():
        v = float(summary.loc["all", mm_name])
        if not math.isfinite(v):
            out[ours] = None
        elif mm_name.startswith("num_") or mm_name in (
            "mostly_tracked",
            "partially_tracked",
            "mostly_lost",
        ):
            out[ours] = int(v)
        else:
            out[ours] = v
    out["mean_iou"] = None if out["motp"] is None else 1.0 - out["motp"]
    out["iou_threshold"] = iou_threshold
    return out


def tracks_to_mot(frames: Sequence[int], per_frame: Sequence[FrameTracks]) -> MOTTable:
    """Per-frame tracks (``frames`` are 0-based frame indices) -> a MOTTable (frames 1-based)."""
    f, ids, boxes, scores, classes = [], [], [], [], []
    for idx, tr in zip(frames, per_frame, strict=True):
        f += [int(idx) + 1] * len(tr)
        ids += tr.track_ids.tolist()
        boxes.append(tr.boxes.reshape(-1, 4))
        scores += tr.scores.tolist()
        classes += (tr.labels + 1).tolist()
    return MOTTable(
        np.asarray(f, dtype=np.int64), np.asarray(ids, dtype=np.int64),
        np.concatenate(boxes).astype(np.float64) if boxes else np.zeros((0, 4)),
        np.asarray(scores, dtype=np.float64), np.asarray(classes, dtype=np.int64),
    )  # fmt: skip


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV file written atomically (temporary file in the same folder, then renamed)."""
    from cnnlab.engine.checkpoint import atomic_write

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode()
    atomic_write(Path(path), lambda fh: fh.write(data))
    return Path(path)
