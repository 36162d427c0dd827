"""Detection metrics: COCO mAP through torchmetrics' ``MeanAveragePrecision`` (pycocotools backend).

For each class and IoU threshold t, detections are sorted by score and greedily matched to unmatched
ground-truth boxes with IoU >= t (COCOeval); AP is the area under the 101-point interpolated
precision-recall curve, precision(r) = max precision at recall >= r. Reported:

* ``map`` -- mean over classes and t in {0.50, 0.55, ..., 0.95}; ``map_50``, ``map_75``;
* ``mar_1/10/100`` -- recall with at most 1/10/100 detections per image, mean over t and classes;
* ``per_class`` {name: {ap, ap_50, ar_100, precision, recall, tp, fp, fn}}, where precision/recall
  are at IoU 0.5 over detections scoring >= ``score_threshold`` (greedy by score, one match per
  true box: precision = TP / (TP + FP), recall = TP / (TP + FN));
* ``pr_curves`` {name: {recall, precision}} at IoU 0.5 (101 recall points, COCO's array).

Classes without true boxes have ``None`` AP (COCO's -1), with a warning naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cnnlab.metrics.coco_match import COCO_IOU_THRESHOLDS, COCO_RECALL_POINTS

log = logging.getLogger(__name__)


def _none(v: float) -> float | None:
    return None if v is None or v < 0 or not np.isfinite(v) else float(v)


def match_at_iou(
    preds: Sequence[dict[str, torch.Tensor]],
    targets: Sequence[dict[str, torch.Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """(K, 3) int counts [TP, FP, FN] per class: per image and class, detections with score >=
    ``score_threshold`` in descending score order each take the unmatched true box of highest
    IoU if that IoU >= ``iou_threshold`` (TP), else count as FP; unmatched true boxes are FN."""
    from torchvision.ops import box_iou

    counts = np.zeros((num_classes, 3), dtype=np.int64)
    for p, t in zip(preds, targets, strict=True):
        keep = p["scores"] >= score_threshold
        pb, pl, ps = p["boxes"][keep], p["labels"][keep], p["scores"][keep]
        for k in range(num_classes):
            d = pb[pl == k][ps[pl == k].argsort(descending=True)]
            g = t["boxes"][t["labels"] == k]
            taken = torch.zeros(len(g), dtype=torch.bool)
            iou = box_iou(d.float(), g.float()) if len(d) and len(g) else None
            tp = 0
            for i in range(len(d)):
                if iou is None:
                    break
                row = iou[i].masked_fill(taken, -1.0)
                j = int(row.argmax())
                if row[j] >= iou_threshold:
                    taken[j] = True
                    tp += 1
            counts[k] += [tp, len(d) - tp, len(g) - tp]
    return counts


def detection_metrics(
    preds: Sequence[dict[str, torch.Tensor]],
    targets: Sequence[dict[str, torch.Tensor]],
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.5,
) -> dict[str, Any]:
    """COCO metrics of ``preds`` [{"boxes" (D, 4) xyxy, "scores" (D,), "labels" (D,)}] against
    ``targets`` [{"boxes" (G, 4), "labels" (G,)}], labels 0..K-1 (see the module docstring)."""
    from torchmetrics.detection import MeanAveragePrecision

    k = len(class_names)
    meter = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        class_metrics=True,
        extended_summary=True,
        # the caller passes every image: no gather over DDP ranks (it would count each image once
        # per rank, and hang when rank 0 alone scores the test split)
        sync_on_compute=False,
        backend="pycocotools",
        # pycocotools' own thresholds: torchmetrics' defaults are float32 linspaces (recall point
        # 0.2 is 0.2000000030), which COCOeval would read differently when a recall lands
        # exactly on a point (1 of 5 true boxes); the bootstrap (coco_match) uses the same ones
        iou_thresholds=COCO_IOU_THRESHOLDS.tolist(),
        rec_thresholds=COCO_RECALL_POINTS.tolist(),
    )
    # COCO's evaluation counts an image's 100 highest-scoring detections (maxDets): that is the
    # standard mAP, not a fault to warn about in the middle of training output (torchvision's
    # ssdlite keeps up to 300 per image); torchmetrics' documented switch
    meter.warn_on_many_detections = False
    cpu_p = [{n: v.detach().cpu() for n, v in p.items()} for p in preds]
    cpu_t = [{n: v.detach().cpu() for n, v in t.items()} for t in targets]
    cpu_p = [p | {"boxes": p["boxes"].float(), "scores": p["scores"].float()} for p in cpu_p]
    cpu_t = [t | {"boxes": t["boxes"].float()} for t in cpu_t]
    meter.update(cpu_p, cpu_t)
    r = meter.compute()
    classes = [int(c) for c in torch.atleast_1d(r["classes"]).tolist()]
    ap = dict(zip(classes, torch.atleast_1d(r["map_per_class"]).tolist(), strict=True))
    ar = dict(zip(classes, torch.atleast_1d(r["mar_100_per_class"]).tolist(), strict=True))
    # precision array: (T iou, R=101 recall, K classes, A areas, M maxdets); area "all", 100 dets
    prec = r["precision"].numpy() if r["precision"].ndim == 5 else None
    counts = match_at_iou(cpu_p, cpu_t, k, 0.5, score_threshold)
    per_class: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    undefined = []
    recall_points = np.linspace(0, 1, 101)
    for c, name in enumerate(class_names):
        tp, fp, fn = (int(v) for v in counts[c])
        ap50 = None
        if prec is not None and c in classes:
            col = classes.index(c)
            curve = prec[0, :, col, 0, -1]
            valid = curve[curve > -1]
            ap50 = _none(float(valid.mean())) if len(valid) == len(curve) else None
            if ap50 is not None:
                curves[name] = {"recall": recall_points.tolist(), "precision": curve.tolist()}
        per_class[name] = {
            "ap": _none(ap.get(c, -1.0)),
            "ap_50": ap50,
            "ar_100": _none(ar.get(c, -1.0)),
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
        if per_class[name]["ap"] is None:
            undefined.append(name)
    if undefined:
        log.warning("AP undefined (no true boxes) for class(es): %s", ", ".join(undefined))
    tp, fp, fn = (int(v) for v in counts.sum(0))
    return {
        "map": _none(float(r["map"])),
        "map_50": _none(float(r["map_50"])),
        "map_75": _none(float(r["map_75"])),
        "mar_1": _none(float(r["mar_1"])),
        "mar_10": _none(float(r["mar_10"])),
        "mar_100": _none(float(r["mar_100"])),
        "precision_50": tp / (tp + fp) if tp + fp else None,
        "recall_50": tp / (tp + fn) if tp + fn else None,
        "score_threshold": score_threshold,
        "per_class": per_class,
        "pr_curves": curves,
        "class_names": list(class_names),
        "num_images": len(targets),
        "num_objects": int(sum(len(t["labels"]) for t in cpu_t)),
    }
