"""COCOeval's box matching and average precision in NumPy, kept per image for the bootstrap.

pycocotools (what :mod:`cnnlab.metrics.detection` runs through torchmetrics) matches and
accumulates in one pass and keeps nothing a resample could reuse; this module redoes its two steps
so that test images can be resampled (:func:`cnnlab.metrics.stats.detection_intervals`):

1. :func:`match_images` -- per image and class, as ``COCOeval.evaluateImg`` (area "all", 100
   detections): the top 100 detections by score (stable sort), each, at each IoU threshold t,
   taking the unmatched true box of highest IoU >= t (ties: the later box, as COCO), non-crowd
   true boxes before crowd ones (``iscrowd`` boxes are "ignored": they may absorb any number of
   detections, which then count neither way; IoU with a crowd box is intersection / detection
   area). Matching only looks inside one image, so each image's records are independent.
2. :func:`average_precision` -- per class, as ``COCOeval.accumulate``: every image's detections
   sorted by score (stable, image order first), cumulative TP and FP, precision made monotone
   from the right, read at the 101 recall points r (the first detection reaching recall r; 0 if
   none). Weighting image i by w_i (how often a resample drew it) is the same as repeating its
   detections w_i times next to each other: equal scores keep the original image order, which is
   also COCO's order for the unweighted point estimate.

Everything is float64 from the same float32 boxes torchmetrics hands to pycocotools, so the point
estimate equals COCOeval's to rounding of the final means (tests/test_intervals.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_POINTS",
    "MatchRecords",
    "average_precision",
    "match_images",
]

# pycocotools' Params: IoU 0.50:0.05:0.95 and recall 0:0.01:1, built exactly as it builds them
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = 100  # per image and class (COCO's maxDets[-1])
AREA_RANGE = (0.0, 1e10)  # COCO's "all" area range, square pixels
_CELL_BUDGET = 2_000_000  # resample x threshold x detection cells per block (16 MB per array)


@dataclass(frozen=True)
class MatchRecords:
    """Per-detection outcome of COCO matching, detections image-major (each image's detections
    of a class sorted by score, top 100), D detections over N images and K classes.

    image (D,) int64, label (D,) int64, score (D,) float64; tp (T, D) bool: matched a non-crowd
    true box at threshold t; ignored (T, D) bool: matched a crowd box, or unmatched and outside
    the area range (neither TP nor FP); num_true (N, K) int64: non-crowd true boxes per image
    and class (the recall denominators)."""

    image: np.ndarray
    label: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    num_true: np.ndarray
    iou_thresholds: np.ndarray

    @property
    def num_images(self) -> int:
        return int(self.num_true.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.num_true.shape[1])


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _xywh(boxes: Any) -> np.ndarray:
    """xyxy -> xywh in float32, as cnnlab.metrics.detection hands boxes to torchmetrics and its
    box_convert to pycocotools, then float64."""
    b = _np(boxes).astype(np.float32).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).astype(np.float64)


def _box_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes as pycocotools' ``bbIou``: for a crowd box, intersection over the
    detection's own area."""
    w = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(
        d[:, None, 0], g[None, :, 0]
    )
    h = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(
        d[:, None, 1], g[None, :, 1]
    )
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    da, ga = d[:, 2] * d[:, 3], g[:, 2] * g[:, 3]
    union = np.where(crowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _greedy(iou: np.ndarray, ignore: np.ndarray, crowd: np.ndarray, thresholds: np.ndarray):  # noqa: ANN202
    """COCOeval's matching loop, vectorised over thresholds: (matched (T, D), matched an ignored
    box (T, D)). True boxes come in COCO's order, non-ignored first."""
    t_count, (d_count, g_count) = len(thresholds), iou.shape
    taken = np.zeros((t_count, g_count), dtype=bool)
    matched = np.zeros((t_count, d_count), dtype=bool)
    on_ignored = np.zeros((t_count, d_count), dtype=bool)
    floor = np.minimum(thresholds, 1 - 1e-10)[:, None]  # T x 1
    rows = np.arange(t_count)
    for d in range(d_count):
        ok = (~taken | crowd[None, :]) & (iou[d][None, :] >= floor)  # T x G candidates
        best = np.full(t_count, -1)
        for group in (~ignore, ignore):  # a regular box first; an ignored one only if none
            cand = ok & group[None, :] & (best[:, None] < 0)
            score = np.where(cand, iou[d][None, :], -np.inf)
            # the last box with the highest IoU (COCO replaces on ">=")
            last = g_count - 1 - np.argmax(score[:, ::-1], axis=1)
            hit = cand.any(axis=1)
            best = np.where(hit, last, best)
        hit = best >= 0
        matched[:, d] = hit
        on_ignored[hit, d] = ignore[best[hit]]
        taken[rows[hit], best[hit]] = True
    return matched, on_ignored


def match_images(
    preds: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    num_classes: int,
    *,
    iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
    max_detections: int = MAX_DETECTIONS,
) -> MatchRecords:
    """COCO matching of ``preds`` [{"boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,)}] against
    ``targets`` [{"boxes" (G, 4) xyxy, "labels" (G,), optional "iscrowd" (G,), "area" (G,)}],
    one dict per image, labels 0..K-1 (torch tensors or arrays)."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions for {len(targets)} images")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    t_count = len(thresholds)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "label", "score", "tp", "ign")}
    num_true = np.zeros((len(targets), num_classes), dtype=np.int64)
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        d_box, d_score = _xywh(p["boxes"]), _np(p["scores"]).astype(np.float32).ravel()
        d_label = _np(p["labels"]).astype(np.int64).ravel()
        g_box, g_label = _xywh(t["boxes"]), _np(t["labels"]).astype(np.int64).ravel()
        crowd = (
            _np(t["iscrowd"]).astype(bool).ravel()
            if "iscrowd" in t
            else np.zeros(len(g_label), bool)
        )
        g_area = _np(t["area"]).astype(np.float64).ravel() if "area" in t else None
        if g_area is None or not (g_area > 0).all():  # torchmetrics: w * h unless given (> 0)
            box_area = g_box[:, 2] * g_box[:, 3]
            g_area = box_area if g_area is None else np.where(g_area > 0, g_area, box_area)
        g_ignore = crowd | (g_area < AREA_RANGE[0]) | (g_area > AREA_RANGE[1])
        for c in np.union1d(np.unique(d_label), np.unique(g_label)):
            gi = np.flatnonzero(g_label == c)
            gi = gi[np.argsort(g_ignore[gi], kind="mergesort")]  # ignored true boxes last
            num_true[i, c] = int((~g_ignore[gi]).sum())
            di = np.flatnonzero(d_label == c)
            di = di[np.argsort(-d_score[di], kind="mergesort")][:max_detections]
            if not len(di):
                continue
            if len(gi):
                iou = _box_iou(d_box[di], g_box[gi], crowd[gi])
                matched, on_ignored = _greedy(iou, g_ignore[gi], crowd[gi], thresholds)
            else:
                matched = on_ignored = np.zeros((t_count, len(di)), dtype=bool)
            area = d_box[di, 2] * d_box[di, 3]
            outside = (area < AREA_RANGE[0]) | (area > AREA_RANGE[1])
            parts["image"].append(np.full(len(di), i, dtype=np.int64))
            parts["label"].append(np.full(len(di), c, dtype=np.int64))
            parts["score"].append(d_score[di].astype(np.float64))
            parts["tp"].append(matched & ~on_ignored)
            parts["ign"].append(on_ignored | (~matched & outside[None, :]))
    if parts["image"]:
        image, label, score = (np.concatenate(parts[k]) for k in ("image", "label", "score"))
        tp, ign = np.concatenate(parts["tp"], axis=1), np.concatenate(parts["ign"], axis=1)
    else:
        image = label = np.zeros(0, dtype=np.int64)
        score = np.zeros(0)
        tp = ign = np.zeros((t_count, 0), dtype=bool)
    return MatchRecords(image, label, score, tp, ign, num_true, thresholds)


def average_precision(
    records: MatchRecords,
    weights: np.ndarray | None = None,
    *,
    recall_points: np.ndarray = COCO_RECALL_POINTS,
) -> np.ndarray:
    """``(B, T, K)`` AP (mean of the 101-point interpolated precision) of each weighting of the
    images, each threshold and class; NaN where the class has no (weighted) true box, as COCO's
    -1. ``weights`` (B, N): how many times each image counts (None: once each, B = 1).

    Only the detections that are a true positive at some threshold ("events") can set an
    interpolated precision (precision rises only at a TP; a false positive shares the recall of
    the TP before it with a lower precision), so each event carries the detections since the
    previous one as a segment: its weighted FP count is one sparse ``(T * E, N) @ (N, B)``
    product, and the weighted cumulative counts, the monotone precision envelope and, for each
    recall point, the first event reaching it (a cumulated histogram) are array passes over
    ``(B, T, E)`` -- the same numbers as COCO's pass over every detection, far fewer cells."""
    from scipy.sparse import csr_matrix

    n, k = records.num_images, records.num_classes
    w = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must be (B, {n}), got {w.shape}")
    b_count, t_count, r_count = len(w), len(records.iou_thresholds), len(recall_points)
    points = np.asarray(recall_points, dtype=np.float64)
    eps = np.spacing(1)  # COCO's precision = tp / (fp + tp + eps)
    out = np.full((b_count, t_count, k), np.nan)
    true_w = w @ records.num_true.astype(np.float64)  # B x K weighted true boxes
    fp_all = ~records.tp & ~records.ignored
    for c in range(k):
        sel = np.flatnonzero(records.label == c)
        sel = sel[np.argsort(-records.score[sel], kind="mergesort")]  # image order among ties
        has_true = true_w[:, c] > 0
        tp = records.tp[:, sel]  # T x D
        event = tp.any(axis=0)
        e_count = int(event.sum())
        if not e_count:  # no TP at any threshold: precision 0 at every recall point
            out[:, :, c] = np.where(has_true[:, None], 0.0, np.nan)
            continue
        img = records.image[sel]
        segment = np.cumsum(event) - event  # events before each detection: its segment
        # (the tail after the last event changes no interpolated precision: left out)
        t_idx, d_idx = np.nonzero(fp_all[:, sel] & (segment < e_count)[None, :])
        fp_seg = csr_matrix(
            (np.ones(len(t_idx)), (t_idx * e_count + segment[d_idx], img[d_idx])),
            shape=(t_count * e_count, n),
        )  # (T * E) x N: FPs of each image in each segment, at each threshold
        tp_ev = tp[:, event].astype(np.float64)  # T x E
        img_ev = img[event]
        step = max(1, _CELL_BUDGET // (t_count * e_count))
        for start in range(0, b_count, step):
            wb = w[start : start + step]  # b x N
            bb = len(wb)
            fp_w = (fp_seg @ wb.T).reshape(t_count, e_count, bb).transpose(2, 0, 1)
            tp_sum = np.cumsum(wb[:, img_ev][:, None, :] * tp_ev[None], axis=2)  # b x T x E
            fp_sum = np.cumsum(fp_w, axis=2)
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = tp_sum / true_w[start : start + bb, c][:, None, None]
            precision = tp_sum / (fp_sum + tp_sum + eps)
            envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
            # reach: how many recall points each event's recall is at or above; the first
            # event with recall >= point j is #{events reaching at most j points}
            reach = np.searchsorted(points, np.nan_to_num(recall, nan=-1.0), side="right")
            rows = bb * t_count
            flat = reach.reshape(rows, e_count) + (r_count + 1) * np.arange(rows)[:, None]
            hist = np.bincount(flat.ravel(), minlength=rows * (r_count + 1))
            first = np.cumsum(hist.reshape(rows, r_count + 1), axis=1)[:, :r_count]
            env = envelope.reshape(rows, e_count)
            q = np.where(
                first < e_count,
                np.take_along_axis(env, np.minimum(first, e_count - 1), axis=1),
                0.0,
            )  # rows x R interpolated precision
            ap = q.mean(axis=1).reshape(bb, t_count)
            out[start : start + bb, :, c] = np.where(has_true[start : start + bb, None], ap, np.nan)
    return out
