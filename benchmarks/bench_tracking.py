"""Tracking benchmark: ByteTrack on generated moving-shapes videos, scored with motmetrics.

Videos: ``make_moving_shapes(clips, frames=50, size=64, objects=3, speed=1.5, seed=1000)``,
written as MP4 (H.264) with MOTChallenge ground truth, so the detector row goes through the real
decoding path (``cnnlab video track``'s code: ``track_video``).

Rows, side by side in one run:

(a) detector + ByteTrack: a Faster R-CNN (ResNet-18 small-input stem, FPN 128) trained with
    ``cnnlab.detect.train_detection`` on frames of *other* moving-shapes clips (seed 0, written as
    a COCO dataset: the same renderer and object sizes as the test videos), or an existing
    detection run given with ``--run``. Detections go through ``predict_video``'s defaults:
    the run's score threshold and class-agnostic NMS at IoS 0.7 (predict_video's default, chosen
    on other clips, seed 2000); rows (a') repeat it with IoU 0.5 and without the class-agnostic
    NMS (``--nms``). Target: MOTA >= 0.8 for (a).
(b) oracle detections + ByteTrack: the ground-truth boxes with 1 px jitter, 10 % of detections
    dropped and a weak false positive on 10 % of frames. This separates the tracker's quality
    from the detector's.

MOTA, IDF1, ID switches, FP and FN are computed over all clips at once (clips concatenated with
disjoint frame numbers and ids, the same as motmetrics' "OVERALL" row); the per-clip MOTA median
is printed beside it. Frames/s: (a) decoding + detector + tracking, (b) tracking alone; medians
over clips. Writes benchmarks/results/tracking.md and .json.

    PYTHONPATH=src python benchmarks/bench_tracking.py [--clips 6] [--epochs 3] [--run RUN]

The trained detector is kept in runs/bench-tracking/ (``--keep``) so that later runs can pass
``--run`` and skip the training (about 25 minutes on a busy 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import save_results

from cnnlab.data.builtin import SHAPE_CLASSES
from cnnlab.video.synthetic import make_moving_shapes, write_video_folder
from cnnlab.video.tracking import MOTTable, mot_metrics, read_mot, track_detections, tracks_to_mot

FRAMES, SIZE, OBJECTS, SPEED = 50, 64, 3, 1.5


def write_coco_frames(root: Path, clips: int, every: int, seed: int) -> Path:
    """Frames of moving-shapes clips as a COCO instances dataset (PNG files + JSON)."""
    from PIL import Image

    ds = make_moving_shapes(
        clips, frames=FRAMES, size=SIZE, objects=OBJECTS, speed=SPEED, seed=seed
    )
    images, annotations = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for c in range(clips):
        for t in range(0, FRAMES, every):
            image_id = len(images) + 1
            name = f"c{c:04d}_f{t:03d}.png"
            Image.fromarray(ds.clips[c, t]).save(root / "images" / name)
            images.append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE})
            boxes, labels = ds.boxes[c][t].tolist(), ds.box_labels[c][t].tolist()
            for (x0, y0, x1, y1), lab in zip(boxes, labels, strict=True):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": int(lab) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                })  # fmt: skip
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(SHAPE_CLASSES)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return path


def train_detector(out: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    from cnnlab.detect import train_detection

    coco = write_coco_frames(out / "train-frames", args.train_clips, args.every, seed=0)
    result = train_detection(
        data=str(coco), data_root=str(out / "train-frames" / "images"), image_size=SIZE,
        model="fasterrcnn",
        backbone="resnet18", backbone_variant="small-input", epochs=args.epochs,
        batch_size=16, lr=2e-3, device=args.device, out=args.keep, report=False,
        augment=("flip",),
    )  # fmt: skip
    m = result.test_metrics or {}
    return result.run_dir, {
        "run": str(result.run_dir),
        "train_images": len(json.loads(coco.read_text())["images"]),
        "epochs": args.epochs,
        "train_time_s": round(result.train_time_s, 1),
        "test_map_50": m.get("map_50"),
    }


def concat(tables: list[MOTTable]) -> MOTTable:
    """Clips as one sequence: frame numbers and ids made disjoint (offsets of 10,000)."""
    return MOTTable(
        np.concatenate([t.frames + 10_000 * i for i, t in enumerate(tables)]),
        np.concatenate([t.ids + 10_000 * i for i, t in enumerate(tables)]),
        np.concatenate([t.boxes for t in tables]),
        np.concatenate([t.scores for t in tables]),
        np.concatenate([t.classes for t in tables]),
    )


def row(name: str, gts: list[MOTTable], hyps: list[MOTTable], fps: list[float]) -> dict:
    overall = mot_metrics(concat(gts), concat(hyps))
    per_clip = [mot_metrics(g, h)["mota"] for g, h in zip(gts, hyps, strict=True)]
    return {
        "row": name,
        "mota": round(overall["mota"], 4),
        "idf1": round(overall["idf1"], 4),
        "id_switches": overall["id_switches"],
        "false_positives": overall["false_positives"],
        "false_negatives": overall["false_negatives"],
        "gt_boxes": overall["num_objects"],
        "mota_per_clip_median": round(float(np.median(per_clip)), 4),
        "mota_per_clip_min": round(float(np.min(per_clip)), 4),
        "frames_per_s_median": round(float(np.median(fps)), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=6, help="test videos of 50 frames")
    ap.add_argument("--run", default=None, help="an existing detection run (skips training)")
    ap.add_argument("--train-clips", type=int, default=60)
    ap.add_argument("--every", type=int, default=5, help="training images: every N-th frame")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", default="runs/bench-tracking",
                    help="where the trained detector is kept (reuse it with --run)")  # fmt: skip
    ap.add_argument(
        "--nms",
        default="ios:0.7,iou:0.5,iou:1.0",
        help="class-agnostic NMS settings METRIC:VALUE; the first (the default) is row (a)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    from cnnlab.video.predict import track_video

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        test = make_moving_shapes(args.clips, frames=FRAMES, size=SIZE, objects=OBJECTS,
                                  speed=SPEED, seed=1000)  # fmt: skip
        videos = write_video_folder(test, tmp / "videos")
        gts = [read_mot(v.with_suffix(".gt.txt")) for v in videos]

        # (b) oracle detections: ground truth with jitter, drop-outs and weak false positives.
        rng = np.random.default_rng(0)
        hyps_b, fps_b = [], []
        for c in range(args.clips):
            dets = []
            for t in range(FRAMES):
                boxes = test.boxes[c][t] + rng.normal(0, 1.0, test.boxes[c][t].shape)
                keep = rng.random(len(boxes)) > 0.10
                scores = rng.uniform(0.6, 1.0, len(boxes))[keep]
                boxes, labels = boxes[keep], test.box_labels[c][t][keep]
                if rng.random() < 0.10:
                    x, y = rng.uniform(0, SIZE - 14, 2)
                    boxes = np.vstack([boxes, [x, y, x + 12, y + 12]])
                    scores = np.append(scores, rng.uniform(0.3, 0.6))
                    labels = np.append(labels, 0)
                dets.append((boxes, scores, labels))
            t0 = time.perf_counter()
            tracks = track_detections(dets, times=np.arange(FRAMES) / test.fps,
                                      frame_rate=test.fps, high_score=0.5)  # fmt: skip
            fps_b.append(FRAMES / (time.perf_counter() - t0))
            hyps_b.append(tracks_to_mot(range(FRAMES), tracks))

        # (a) detector + ByteTrack through the video files.
        detector: dict = {}
        if args.run:
            run = Path(args.run)
            detector = {"run": str(run)}
            for file, keys in (("config.json", ("data", "epochs")), ("run.json", ("train_time_s",)),
                               ("test_metrics.json", ("map_50",))):  # fmt: skip
                if (run / file).is_file():
                    saved = json.loads((run / file).read_text())
                    detector |= {k: saved.get(k) for k in keys}
        else:
            run, detector = train_detector(tmp, args)
        torch.set_num_threads(min(2, torch.get_num_threads()))
        rows = []
        for i, nms in enumerate(args.nms.split(",")):
            metric, _, value = nms.strip().partition(":")  # "ios:0.7"; 1.0: no agnostic NMS
            hyps_a, fps_a = [], []
            for c, video in enumerate(videos):
                s = track_video(run, video, video.with_suffix(".gt.txt"), tmp / f"track-{i}-{c}",
                                device=args.device, draw=False, agnostic_nms=float(value),
                                agnostic_nms_metric=metric)  # fmt: skip
                fps_a.append(s["frames_per_s"])
                hyps_a.append(read_mot(s["paths"]["tracks_csv"]))
            label = "(a) detector + ByteTrack" if i == 0 else "(a') the same"
            nms_text = "no class-agnostic NMS" if float(value) >= 1 else f"agnostic NMS {nms}"
            rows.append(row(f"{label}, {nms_text}", gts, hyps_a, fps_a))

    rows.append(row("(b) oracle boxes (jitter 1 px, 10% dropped, FP on 10% of frames) + ByteTrack",
                    gts, hyps_b, fps_b))  # fmt: skip
    summary = {
        "videos": f"moving-shapes: {args.clips} clips x {FRAMES} frames, {SIZE} px, {OBJECTS} "
        f"objects, {SPEED} px/frame, 10 fps, seed 1000",
        "detector": detector,
        "rows": rows,
        "target_met": rows[0]["mota"] >= 0.8,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    cols = ["mota", "idf1", "id_switches", "false_positives", "false_negatives", "gt_boxes",
            "mota_per_clip_median", "frames_per_s_median"]  # fmt: skip
    lines = [
        "# Tracking benchmark (ByteTrack, motmetrics)", "",
        f"Videos: {summary['videos']}. Detector: {json.dumps(detector)}.", "",
        "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['row']} | " + " | ".join(str(r[k]) for k in cols) + " |")
    lines += ["", f"Target MOTA >= 0.8 for (a): {'met' if summary['target_met'] else 'NOT met'}. "
              f"Frames/s: (a) decoding + detector + tracking, (b) tracking alone; CPU, "
              f"{summary['torch_threads']} torch threads, load average before "
              f"{summary['load_average_before']}, after {summary['load_average_after']}.",
              "", f"Command: `PYTHONPATH=src python {' '.join(sys.argv)}`"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(json.dumps(summary, indent=2))
    if args.no_write:
        print(text)
    else:
        save_results("tracking", text, summary)


if __name__ == "__main__":
    main()
