"""`cnnlab video ACTION`: the parser and dispatch for the video commands.

Each action's options and printing live beside its code: ``train``/``evaluate`` in
:mod:`cnnlab.video.train`, ``predict``/``track`` in :mod:`cnnlab.video.predict`. Both modules expose
``add_cli(actions)`` (adds their sub-parsers) and ``run_cli(args, out) -> int``.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "video: train | evaluate (3D CNN clips) | predict | track (frames, events, tracks)"
_OWNERS = {"train": "train", "evaluate": "train", "predict": "predict", "track": "predict"}


def add_parser(sub: Any) -> None:
    from cnnlab.video import predict, train

    p = sub.add_parser("video", help=HELP)
    actions = p.add_subparsers(dest="video_action", metavar="ACTION", required=True)
    train.add_cli(actions)
    predict.add_cli(actions)


def run(args: argparse.Namespace, out: Any) -> int:
    import importlib

    module = importlib.import_module(f"cnnlab.video.{_OWNERS[args.video_action]}")
    return int(module.run_cli(args, out) or 0)
