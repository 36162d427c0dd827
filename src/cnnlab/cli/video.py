"""`cnnlab video ACTION`: the parser and dispatch for the video commands.

``train``/``evaluate`` run :mod:`cnnlab.video.train` through the API, ``predict``/``track``
:mod:`cnnlab.video.predict`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from cnnlab.cli import (
    BAD_DATA_OPTIONS,
    EVALUATE_DEFAULT,
    add_max_restarts,
    add_task_evaluate,
    add_train_options,
    evaluation_note,
    load_api,
    print_metrics,
    train_task,
)
from cnnlab.tasks.configs import VideoConfig

# The parser is built on every command, so nothing above imports torch: cnnlab.api and the video
# modules are imported by the handlers below (as in cnnlab.cli).


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "video",
        help="video: train | evaluate (3D CNN clips) | predict | track (frames, events, tracks)",
    )
    actions = p.add_subparsers(dest="video_action", metavar="ACTION", required=True)
    _add_train_cli(actions)
    _add_predict_cli(actions)


def run(args: argparse.Namespace, out: Any) -> int:
    if args.video_action in ("train", "evaluate"):
        return int(_run_train_cli(args, out) or 0)
    return int(_run_predict_cli(args, out) or 0)


# -- train / evaluate ----------------------------------------------------------------------------------
def _add_train_cli(actions: Any) -> None:
    """``cnnlab video train`` (one --option per VideoConfig field) and ``cnnlab video evaluate``."""
    p = actions.add_parser("train", help="train a clip classifier (3D CNN, or 2D per frame)")
    add_train_options(p, cls=VideoConfig)
    add_max_restarts(p)
    q = actions.add_parser("evaluate", help="clip accuracy, per-class metrics and the report")
    add_task_evaluate(q)
    # undecodable videos (of --data or of the run's split): the policy of `video train`, with its
    # options
    add_train_options(q, cls=VideoConfig, config_file=False, only=BAD_DATA_OPTIONS,
                      default=EVALUATE_DEFAULT)  # fmt: skip


def _run_train_cli(args: argparse.Namespace, out: Any) -> int:
    api = load_api()

    if args.video_action == "train":
        return train_task(
            VideoConfig, api.video_train, args, lambda m: print_metrics(m, "test metrics (clips)")
        )
    result = api.video_evaluate(
        args.run, split=args.split, data=args.data, device=args.device, report=args.report,
        out=args.out, precision=args.precision, relocated_data=args.relocated_data,
        max_bad_fraction=args.max_bad_fraction, strict=args.strict,
    )  # fmt: skip
    evaluation_note(result)  # on stderr, as every task's evaluate says it
    if args.json:
        print(json.dumps(result["metrics"], indent=2, default=str))
        return 0
    print_metrics(result["metrics"], f"{args.split} metrics ({result['num_samples']} clips)")
    if result.get("report"):
        out.print(f"report: {result['report']}")
    return 0


# -- predict / track -------------------------------------------------------------------------------------------
def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument("run", help="a cnnlab run directory or .safetensors checkpoint")
    q.add_argument("video", help="a video file (mp4, mkv, avi, mov, webm, ...)")
    q.add_argument("--out", default=None, help="output folder (default: runs/video/VIDEO-NAME)")
    q.add_argument("--batch-size", type=int, default=None, help="frames per forward pass (32)")
    q.add_argument("--stride", type=int, default=None, help="look at every N-th frame (1)")
    q.add_argument("--max-frames", type=int, default=None, help="stop after N looked-at frames")
    q.add_argument("--score-threshold", type=float, default=None,
                   help="detections below are dropped (default: the run's)")  # fmt: skip
    q.add_argument(
        "--line", default=None, metavar="x0,y0,x1,y1",
        help="counting line in frame pixels (default: vertical through the centre)",
    )  # fmt: skip
    q.add_argument("--no-draw", dest="draw", action="store_false", default=None,
                   help="do not write annotated.mp4")  # fmt: skip
    q.add_argument(
        "--agnostic-nms",
        type=float,
        default=None,
        help="drop boxes overlapping a better box of any class by more (0.7; 1: off)",
    )
    q.add_argument("--agnostic-nms-metric", default=None, help="ios | iou (ios)")  # fmt: skip
    q.add_argument("--device", default=None, help="auto | cpu | cuda | mps")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_predict_cli(actions: Any) -> None:
    q = actions.add_parser(
        "predict", help="frame-by-frame prediction: timeline, events, tracks, annotated video"
    )
    _common(q)
    q.add_argument("--smoothing", default=None, help="mean | majority | none (mean)")
    q.add_argument("--window", type=int, default=None, help="smoothing window in frames, odd (5)")
    q.add_argument("--min-event-frames", type=int, default=None,
                   help="frames a class must hold to be an event (5)")  # fmt: skip
    q = actions.add_parser(
        "track", help="track objects with a detection run and score them against MOT ground truth"
    )
    _common(q)
    q.add_argument("--gt", required=True, help="MOTChallenge ground truth (frame,id,x,y,w,h,...)")
    q.add_argument("--iou", type=float, default=0.5, help="IoU a track box needs to match (0.5)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    from cnnlab.video.predict import VideoPredictConfig

    names = [f.name for f in dataclasses.fields(VideoPredictConfig)]
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _run_predict_cli(args: argparse.Namespace, out: Any) -> int:
    api = load_api()

    out_dir = args.out or str(Path("runs") / "video" / Path(args.video).stem)
    if args.video_action == "track":
        summary = api.video_track(args.run, args.video, args.gt, out_dir, iou_threshold=args.iou,
                                  default_out=args.out is None, **_options(args))  # fmt: skip
    else:
        summary = api.video_predict(args.run, args.video, out_dir, default_out=args.out is None,
                                    **_options(args))  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    for note in summary["notes"]:
        out.print(f"[yellow]note:[/] {escape(str(note))}")
    out.print(f"{summary['task']} run over {summary['frames']} frames "
              f"({summary['frames_per_s']} frames/s)")  # fmt: skip
    if summary["events"]:
        t = Table(title="events")
        for col in ("class", "start s", "end s", "frames", "mean prob."):
            t.add_column(col, justify="left" if col == "class" else "right")
        for e in summary["events"][:50]:
            t.add_row(e["class"], f"{e['start_time_s']:.2f}", f"{e['end_time_s']:.2f}",
                      str(e["frames"]), f"{e['mean_probability']:.3f}")  # fmt: skip
        out.print(t)
        if len(summary["events"]) > 50:
            out.print(f"... {len(summary['events']) - 50} more in {summary['paths']['events_csv']}")
    else:
        out.print("no event (no class held for --min-event-frames frames)")
    if "counts" in summary:
        c = summary["counts"]
        out.print(f"{summary['tracks']} tracks; line {c['line']}: in {c['in']}, out {c['out']}")
    if "metrics" in summary:
        m = summary["metrics"]
        t = Table(title=f"tracking vs {m['gt']} (IoU >= {m['iou_threshold']})")
        for col in ("MOTA", "IDF1", "MOTP (1-IoU)", "ID sw.", "FP", "FN", "GT boxes", "frames"):
            t.add_column(col, justify="right")

        def f3(v: Any) -> str:
            return "-" if v is None else f"{v:.3f}"

        t.add_row(f3(m["mota"]), f3(m["idf1"]), f3(m["motp"]), str(m["id_switches"]),
                  str(m["false_positives"]), str(m["false_negatives"]), str(m["num_objects"]),
                  str(m["num_frames"]))  # fmt: skip
        out.print(t)
    out.print(f"written to {summary['out_dir']}")
    return 0
