"""Video classification on the shared engine: ``cnnlab video train | evaluate``, and clip scores
over a long video for ``cnnlab video predict``.

    from cnnlab.video.train import train_video, evaluate_video, predict_clips
    result = train_video(data="builtin:moving-shapes?n=400&frames=8&size=32", model="r3d_small")
    print(result.test_metrics["accuracy"], result.run_dir)
    evaluate_video(result.run_dir)["metrics"]["accuracy"]      # the same number, from the run dir

Data: ``builtin:moving-shapes?...`` (:mod:`cnnlab.video.synthetic`) or a folder of videos per
class, the UCF101 layout ``root/<class>/<video>`` (or ``root/<split>/<class>/<video>`` with given
splits). Each video is decoded once with cnnlab's video policy (:mod:`cnnlab.video.io`), ``frames``
frames are taken evenly over its whole length and resized with the image side's resize policy;
the clips stay in memory as one uint8 tensor ``(N, T*C, S, S)`` (frames stacked on the channel
axis, see :mod:`cnnlab.video.models`), so the image side's loader, augmentations, trainer,
evaluation and report serve clips unchanged. Bad videos follow the policy for bad images: skipped
and listed with the reason in ``data_report.json``, refused above ``max_bad_fraction`` (every
skip refused with ``strict``); rotation and variable-frame-rate notes go to the log and the report.

The run directory has the classification layout (:mod:`cnnlab.run`): config.json (a VideoConfig),
classes.json, preprocess.json (per frame), splits.json, data_report.json, metrics.csv,
checkpoints/ (metadata ``task: "video-classification"``, model, frames, frame_step, smoothing,
class names, preprocessing: enough to predict), test_metrics.json, test_predictions.npz (so
``cnnlab compare`` works on two video runs) and report.html.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import __version__
from cnnlab.config import (
    AugmentParams,
    PreprocessSpec,
    make_config,
)
from cnnlab.data.scan import check_skipped, given_policy
from cnnlab.data.sources import Split, check_two_classes, in_split_order, stratified_split
from cnnlab.data.tensors import arrays_to_chw, channel_stats, normalize
from cnnlab.engine import distributed
from cnnlab.engine.assembly import TrainResult
from cnnlab.engine.devices import (
    inference_precision,
    resolve_device,
)
from cnnlab.engine.fit import Plan, TaskSpec, fit
from cnnlab.engine.loaders import make_loader
from cnnlab.engine.timing import Timings
from cnnlab.engine.trainer import autocast
from cnnlab.errors import CheckpointError, ConfigError, DataError, no_such_split
from cnnlab.run import (
    check_one_dataset,
    evaluation_dir,
    load_run_model,
    read_json,
    record_evaluation,
    run_dir_of,
    source_config,
    trained_precision,
)
from cnnlab.tasks.classification import ClassificationTask
from cnnlab.tasks.classify.evaluate import evaluate_model
from cnnlab.tasks.configs import VideoConfig
from cnnlab.video.models import check_video_model, create_video_model, is_3d

log = logging.getLogger(__name__)

TASK = "video-classification"
BUILTIN_PREFIX = "builtin:"
DEFAULT_FILE_FRAMES = 16  # clip length for video files (the Kinetics models' training length)
DEFAULT_FILE_SIZE = 112  # frame side for video files (torchvision's Kinetics crop)
EVAL_BATCH = 64  # clips per evaluation batch; training and `evaluate` use the same (same numbers)


# -- data ------------------------------------------------------------------------------------------
@dataclass
class ClipSet:
    """Decoded clips of a source. clips: (N, T, C, S, S) uint8; targets (N,) int64."""

    clips: np.ndarray
    targets: np.ndarray
    ids: list[str]
    class_names: list[str]
    given_splits: dict[str, np.ndarray] | None  # indices per split of a root/<split>/ layout
    report: dict[str, Any]  # data_report.json
    frame_step: float  # source frames between two sampled frames (median over the videos)


def even_indices(length: int, frames: int) -> np.ndarray:
    """``frames`` indices spread evenly over ``range(length)`` (nearest; repeats when short)."""
    return np.linspace(0, length - 1, frames).round().astype(np.int64)


def _frames_spec(image_size: int, resize: str) -> PreprocessSpec:
    """The uint8 side of the preprocessing (size, resize); mean/std come after the split."""
    return PreprocessSpec(image_size, 3, (0.0,) * 3, (1.0,) * 3, resize, {"decoder": "pyav"})


def _clips_from_frames(frames: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(N, T, H, W, 3) uint8 -> (N, T, 3, S, S) uint8 through the image side's resize path."""
    n, t = frames.shape[:2]
    chw = arrays_to_chw(frames.reshape(n * t, *frames.shape[2:]), spec)
    return chw.reshape(n, t, *chw.shape[1:])


def _builtin_clips(cfg: VideoConfig, image_size: int | None = None) -> ClipSet:
    from cnnlab.video.synthetic import load_video_builtin

    ds = load_video_builtin(cfg.data[len(BUILTIN_PREFIX) :])
    length = ds.clips.shape[1]
    frames = cfg.frames or length
    idx = even_indices(length, frames)
    spec = _frames_spec(image_size or _image_size(cfg, ds.clips.shape[2]), cfg.resize)
    clips = _clips_from_frames(ds.clips[:, idx], spec)
    notes = []
    if length < frames:  # repeated as a short video file's are, and said as they are
        notes.append(f"{cfg.data}: {length} frame(s) per clip, fewer than --frames {frames}: "
                     "frames repeated to fill the clip (lower --frames or raise the source's "
                     "frames=)")  # fmt: skip
    report = {"source": cfg.data, "clips": len(ds.targets), "frames_per_video": length,
              "class_counts": {c: int((ds.targets == i).sum())
                               for i, c in enumerate(ds.class_names)},
              "skipped": [], "notes": notes}  # fmt: skip
    ids = [f"{ds.name}:{i}" for i in range(len(ds.targets))]
    step = (length - 1) / (frames - 1)
    return ClipSet(clips, ds.targets, ids, list(ds.class_names), None, report, step)


def _image_size(cfg: VideoConfig, native: int | None) -> int:
    return cfg.image_size or (native if native else DEFAULT_FILE_SIZE)


def _decode_one(path: Path, frames: int, spec: PreprocessSpec) -> tuple[np.ndarray, Any, int]:
    """One video -> ((T, 3, S, S) uint8, VideoInfo, frames decoded). Every frame is decoded (the
    truncation check needs a full read) but only resized ones are kept: memory ~ T x S x S."""
    from cnnlab.video.io import iter_frames, probe

    info = probe(path)
    small, times = [], []
    for f in iter_frames(path, info=info):
        small.append(arrays_to_chw(f.image[None], spec)[0])
        times.append(f.time_s)
    idx = even_indices(len(small), frames)
    if info.variable_frame_rate:  # evenly in time, not in frame count: the frame nearest each
        t = np.asarray(times)
        wanted = np.linspace(t[0], t[-1], frames)
        idx = np.abs(t[None, :] - wanted[:, None]).argmin(1)
    return np.stack([small[i] for i in idx]), info, len(small)


def _decode_paths(
    paths: list[Path], frames: int, spec: PreprocessSpec
) -> list[tuple[np.ndarray, Any, int] | DataError]:
    """Decode in threads (FFmpeg releases the GIL); a bad file gives its DataError, not a raise."""

    def work(path: Path) -> tuple[np.ndarray, Any, int] | DataError:
        try:
            return _decode_one(path, frames, spec)
        except DataError as err:
            return err

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(work, paths))


def _folder_clips(cfg: VideoConfig) -> ClipSet:
    from cnnlab.data.scan import FileRecord, ScanReport, items_from_folder
    from cnnlab.engine.checkpoint import sha256_file
    from cnnlab.video.io import VIDEO_EXTENSIONS

    start = time.perf_counter()
    listing = items_from_folder(cfg.data, extensions=frozenset(VIDEO_EXTENSIONS))
    if not listing.items:
        raise DataError(
            cfg.data,
            f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in its class folders; expected "
            "root/<class>/<video> (the UCF101 layout)",
        )
    frames = cfg.frames or DEFAULT_FILE_FRAMES
    spec = _frames_spec(_image_size(cfg, None), cfg.resize)
    paths = [Path(item.path) for item in listing.items]
    decoded = _decode_paths(paths, frames, spec)
    records, notes, steps = [], [], []
    for item, path, result in zip(listing.items, paths, decoded, strict=True):
        base = {"path": item.path, "rel": os.path.relpath(path, cfg.data), "label": item.label,
                "split": item.split}  # fmt: skip
        if isinstance(result, DataError):
            log.warning("skipped %s: %s", path, result.reason)
            records.append(FileRecord(**base, ok=False, reason=result.reason))
            continue
        _, info, count = result
        own = info.notes()
        if count < frames:  # even_indices repeats frames: a clip with less motion in it, said
            own.append(f"{path}: {count} frame(s), fewer than --frames {frames}: frames repeated "
                       "to fill the clip (lower --frames or use a longer video)")  # fmt: skip
        notes += own
        steps.append((count - 1) / (frames - 1))
        records.append(
            FileRecord(**base, ok=True, format=info.codec, mode="RGB", width=info.width,
                       height=info.height, n_frames=count, sha256=sha256_file(path),
                       file_bytes=path.stat().st_size, notes=tuple(own))
        )  # fmt: skip
    for note in notes:
        log.warning(note)
    scan = ScanReport(
        cfg.data, "", listing.class_names, listing.split_classes, records,
        ignored=listing.ignored, non_image=listing.non_image, outside_root=listing.outside_root,
        unplaced=listing.unplaced, elapsed_s=time.perf_counter() - start, item="video",
    )  # fmt: skip
    report = scan.to_dict()
    report.pop("animated")  # every video has many frames: the image scan's note says nothing here
    report["skipped"] = [{"path": p, "reason": why} for p, why in scan.bad_items]
    report["notes"] = notes
    report["frames_per_video"] = [r.n_frames for r in records if r.ok]
    # the scan's message names the files and, for too many bad ones, --max-bad-fraction
    scan.check(strict=cfg.strict, max_bad_fraction=cfg.max_bad_fraction)
    ok = [(rec, res) for rec, res in zip(records, decoded, strict=True) if rec.ok]
    usable = [rec.label for rec, _ in ok]
    check_two_classes(sorted(set(usable)), usable, cfg.data, item="videos",
                      fix="add a folder of videos per class (root/<class>/<video>)")  # fmt: skip
    names = listing.class_names
    clips = np.stack([res[0] for _, res in ok])
    targets = np.array([names.index(rec.label) for rec, _ in ok], dtype=np.int64)
    ids = [rec.rel for rec, _ in ok]
    given = None
    if any(rec.split for rec, _ in ok):
        given = {}
        for i, (rec, _) in enumerate(ok):
            key = "val" if rec.split.lower() in ("val", "valid", "validation") else rec.split
            given.setdefault(key.lower(), []).append(i)
        given = {k: np.asarray(v) for k, v in given.items()}
    return ClipSet(clips, targets, ids, names, given, report, float(np.median(steps)))


def load_clips(cfg: VideoConfig, image_size: int | None = None) -> ClipSet:
    """The source of ``cfg.data`` decoded into clips (see the module docstring)."""
    if cfg.data.startswith(BUILTIN_PREFIX):
        data = _builtin_clips(cfg, image_size)
        for note in data.report["notes"]:  # said here: a recorded split regenerated says nothing
            log.warning(note)
        return data
    if not Path(cfg.data).exists():
        raise DataError(
            cfg.data,
            "not found: give a folder of videos per class (root/<class>/<video>) or "
            "builtin:moving-shapes?n=..&frames=..&size=..",
        )
    if image_size is not None and cfg.image_size is None:
        cfg = dataclasses.replace(cfg, image_size=image_size)
    return _folder_clips(cfg)


def _split(data: ClipSet, cfg: VideoConfig) -> dict[str, np.ndarray]:
    if data.given_splits is not None:
        if "train" not in data.given_splits:
            raise DataError(cfg.data, "has split folders but no train/ split")
        # a missing val / test folder is carved out of train/ (stratified, the fractions of an
        # unsplit source), as classification does: a train/ + val/ layout gets test metrics too
        given = dict(data.given_splits)
        missing = {k: f for k, f in (("val", cfg.val_fraction), ("test", cfg.test_fraction))
                   if f > 0 and not len(given.get(k, ()))}  # fmt: skip
        if missing:
            train = given["train"]
            part = stratified_split(
                data.targets[train], missing.get("val", 0.0), missing.get("test", 0.0), cfg.seed,
                class_names=data.class_names,
            )  # fmt: skip
            given.update({k: train[v] for k, v in part.items()})
        return given
    return stratified_split(
        data.targets, cfg.val_fraction, cfg.test_fraction, cfg.seed, class_names=data.class_names
    )


def _origin(data: ClipSet, parts: dict[str, np.ndarray], seed: int) -> str:
    """How the splits were made, as splits.json says it for classification."""
    if data.given_splits is None:
        return f"stratified(seed={seed})"
    carved = [k for k in ("val", "test") if k in parts and k not in data.given_splits]
    return f"given + stratified {carved}(seed={seed})" if carved else "given"


def _stacked(clips: np.ndarray) -> torch.Tensor:
    """(N, T, C, S, S) uint8 -> (N, T*C, S, S) uint8 tensor (a view: no copy)."""
    n, t, c, h, w = clips.shape
    return torch.from_numpy(clips).view(n, t * c, h, w)


def clip_spec(spec: PreprocessSpec, frames: int) -> PreprocessSpec:
    """The per-frame spec widened to frame-stacked clips: T*C channels, mean/std repeated."""
    return dataclasses.replace(
        spec, in_channels=spec.in_channels * frames, mean=spec.mean * frames, std=spec.std * frames
    )


def _strips(clips: np.ndarray) -> np.ndarray:
    """(N, T, C, S, S) -> (N, C, S, 3S): first, middle and last frame side by side (report)."""
    t = clips.shape[1]
    return np.concatenate([clips[:, 0], clips[:, t // 2], clips[:, -1]], axis=-1)


# -- train -----------------------------------------------------------------------------------------
def train_video(
    config: VideoConfig | str | Path | None = None,
    *,
    console: Any = None,
    timings: Timings | None = None,
    **options: Any,
) -> TrainResult:
    """Train a clip classifier; returns a :class:`cnnlab.engine.assembly.TrainResult` (run_dir, history,
    test_metrics, train_time_s, config). ``config``: a VideoConfig or a JSON/TOML file; keyword
    options override it."""
    return fit(SPEC, config, console=console, timings=timings, **options)


def _prepare(
    cfg: VideoConfig, info: Any, device: torch.device, resumed: Any, timings: Timings
) -> Plan:
    """Decode the clips once (T frames each), split them, build the 3D or per-frame model."""
    check_video_model(cfg.model, cfg.weights, cfg.smoothing)  # before any video is decoded
    data = load_clips(cfg)
    timings.lap("decode")  # finding and decoding the videos' frames
    parts = _split(data, cfg)
    n, t, c, s, _ = data.clips.shape
    class_names = data.class_names
    train_idx = parts["train"]
    if len(train_idx) < cfg.batch_size:  # checked before anything is written
        raise DataError(
            cfg.data,
            f"the training split has {len(train_idx)} clips, fewer than one batch of "
            f"{cfg.batch_size}; lower --batch-size",
        )
    frames_u8 = torch.from_numpy(data.clips[train_idx]).view(-1, c, s, s)  # (N*T, C, S, S)
    mean, std = channel_stats(frames_u8)  # normalisation from the training frames only
    model = create_video_model(cfg.model, num_classes=len(class_names), frames=t, image_size=s,
                               weights=cfg.weights, smoothing=cfg.smoothing)  # fmt: skip
    if cfg.weights and len(model.default_cfg.get("mean") or ()) == c:
        mean, std = tuple(model.default_cfg["mean"]), tuple(model.default_cfg["std"])
    spec = dataclasses.replace(_frames_spec(s, cfg.resize), mean=tuple(mean), std=tuple(std))
    wide = clip_spec(spec, t)
    clips = _stacked(data.clips)  # (N, T*C, S, S) uint8
    targets, ids = data.targets, data.ids

    def loaders(device: torch.device, channels_last: bool, info: Any) -> tuple[Any, Any]:
        local = distributed.local_batch_size(cfg.batch_size, info)  # DDP: the global batch / W
        shard = (
            info.rank,
            info.world_size,
        )  # DDP: rank r takes samples r, r + W, ... of each batch
        if is_3d(cfg.model):
            train_loader = make_loader(
                clips[train_idx], targets[train_idx], wide, device, local, shuffle=True,
                augment=cfg.augment, seed=cfg.seed, drop_last=True, shard=shard,
                num_classes=len(class_names), augment_params=AugmentParams.of(cfg),
            )  # fmt: skip
        else:  # every frame is a training image labelled with its clip's class
            train_loader = make_loader(
                frames_u8, np.repeat(targets[train_idx], t), spec, device, local * t,
                shuffle=True, augment=cfg.augment, seed=cfg.seed, drop_last=True, shard=shard,
                num_classes=len(class_names), augment_params=AugmentParams.of(cfg),
            )  # fmt: skip
        val_loader = None
        if "val" in parts and len(parts["val"]):
            val_loader = make_loader(clips[parts["val"]], targets[parts["val"]], wide, device,
                                     EVAL_BATCH)  # fmt: skip
        return train_loader, val_loader

    def evaluate(run_dir: Path, device: torch.device, precision: str) -> dict[str, Any] | None:
        if "test" not in parts or not len(parts["test"]):
            return None
        best, _, _ = load_video_model(run_dir, device)
        test = parts["test"]
        return _evaluate(best, spec, t, data.clips[test], targets[test], [ids[i] for i in test],
                         class_names, device=device, out_dir=run_dir, precision=precision,
                         run_dir=run_dir, report=cfg.report)  # fmt: skip

    sample_of = (lambda i: ids[train_idx[i]]) if is_3d(cfg.model) else (
        lambda i: f"{ids[train_idx[i // t]]}#frame{i % t}"
    )  # fmt: skip
    return Plan(
        model=model,
        task=ClassificationTask(len(class_names), cfg.label_smoothing),
        spec=spec,
        metadata={
            "task": TASK,
            "model": cfg.model,
            "kind": "3d" if is_3d(cfg.model) else "per-frame 2d",
            "num_classes": len(class_names),
            "in_channels": c,
            "image_size": s,
            "frames": t,
            "frame_step": data.frame_step,  # source frames between sampled frames (median)
            "smoothing": cfg.smoothing,
            "class_names": class_names,
            "preprocess": spec.to_dict(),
            "data": cfg.data,
            "weights": cfg.weights,
            "cnnlab_version": __version__,
            "torch_version": torch.__version__,
        },
        files={
            "classes.json": class_names,
            "preprocess.json": spec.to_dict() | {"frames": t},
            "data_report.json": data.report,
            "splits.json": {
                "source": cfg.data,
                "origin": _origin(data, parts, cfg.seed),
                "splits": in_split_order({k: [ids[i] for i in v] for k, v in parts.items()}),
                "labels": in_split_order(
                    {k: [class_names[targets[i]] for i in v] for k, v in parts.items()}
                ),
            },
        },
        folder=cfg.model,
        loaders=loaders,
        evaluate=evaluate,
        describe=sample_of,
        # one training sample: a clip stacked (1, T*C, S, S) for a 3D model, a frame for a 2D one
        sample_shape=(1, t * c, s, s) if is_3d(cfg.model) else (1, c, s, s),
        record={
            "clips": int(n),
            "frames": t,
            "image_size": s,
            "augmentations": list(cfg.augment),
        },  # the report names them with their strengths
    )


# -- checkpoints -----------------------------------------------------------------------------------
def load_video_model(
    run_or_checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """(model in eval mode, checkpoint metadata, weights path) from a run folder or .safetensors."""
    return load_run_model(
        run_or_checkpoint, task=TASK, device=device,
        keys=("model", "num_classes", "frames", "image_size", "preprocess", "class_names"),
        build=lambda meta: create_video_model(
            meta["model"], num_classes=int(meta["num_classes"]), frames=int(meta["frames"]),
            image_size=int(meta["image_size"]), smoothing=meta.get("smoothing", "mean"),
        ),
    )  # fmt: skip


# -- evaluate --------------------------------------------------------------------------------------
def _evaluate(
    model: torch.nn.Module,
    spec: PreprocessSpec,
    frames: int,
    clips: np.ndarray,
    targets: np.ndarray,
    ids: list[str],
    class_names: list[str],
    **kwargs: Any,
) -> dict[str, Any]:
    """Clip-level metrics through the image side's evaluation (bootstrap CIs, test_metrics.json,
    test_predictions.npz, report); clips (N, T, C, S, S) uint8."""
    return evaluate_model(
        model, clip_spec(spec, frames), _stacked(np.ascontiguousarray(clips)), Split(ids, targets),
        class_names, thumbnails=_strips(clips), batch_size=EVAL_BATCH, **kwargs,
    )  # fmt: skip


def evaluate_video(
    run: str | Path,
    split: str = "test",
    data: str | None = None,
    device: str = "auto",
    report: bool = True,
    out: str | Path | None = None,
    precision: str = "auto",
    relocated_data: str | Path | None = None,
    max_bad_fraction: float | None = None,
    strict: bool | None = None,
) -> dict[str, Any]:
    """Clip-level metrics of a video run on its recorded split (default: the held-out test clips,
    which reproduces the end-of-training numbers) or on every clip of another source ``data``
    whose classes are among the model's. Writes test_metrics.json, test_predictions.npz and the
    report into ``out`` (default: a new ``<run>/evaluations/<time>/``; what training recorded is
    never rewritten). Videos that cannot be decoded are judged as training judges them: refused
    above ``max_bad_fraction`` (any with ``strict``), else said once and the rest evaluated; the
    defaults are the run's own options for its split, VideoConfig's for ``data``. The skipped
    videos are listed in ``result["data_report"]["skipped"]`` (path, reason), as training lists
    them in data_report.json (for ``data``, the whole report training would write). A video of
    the recorded split that is gone, or a split without its recorded labels, is an error."""
    check_one_dataset(data, relocated_data)
    dev = resolve_device(device)
    model, meta, weights = load_video_model(run, dev)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    frames, class_names = int(meta["frames"]), list(meta["class_names"])
    run_dir = run_dir_of(weights)
    policy = given_policy(max_bad_fraction, strict)
    if data is None:
        if run_dir is None:
            raise ConfigError(f"{weights} is not inside a run directory: pass data=")
        cfg = make_config(VideoConfig, **source_config(run_dir, relocated_data) | policy)
        recorded = read_json(run_dir / "splits.json")["splits"]
        if split not in recorded:
            raise no_such_split(split, recorded)
        labels = read_json(run_dir / "splits.json").get("labels", {}).get(split)
        clips, targets, ids, data_report = _recorded_clips(
            cfg, recorded[split], labels, split, spec, frames, class_names
        )
    else:
        cfg = make_config(VideoConfig, data=data, frames=frames, image_size=spec.image_size,
                          resize=spec.resize, val_fraction=0.0, test_fraction=0.0,
                          **policy)  # fmt: skip
        source = load_clips(cfg)  # bad videos judged (and said) as training judges them
        unknown = [c for c in source.class_names if c not in class_names]
        if unknown:
            raise DataError(data, f"classes {unknown} are not among the model's {class_names}")
        lut = np.array([class_names.index(c) for c in source.class_names], dtype=np.int64)
        clips, targets, ids = source.clips, lut[source.targets], source.ids
        data_report = source.report
    precision = inference_precision(precision, dev, trained_precision(run_dir))
    out_dir = evaluation_dir(out, run_dir)
    result = _evaluate(model, spec, frames, clips, targets, ids, class_names, device=dev,
                       precision=precision, run_dir=run_dir, out_dir=out_dir,
                       report=report and out_dir is not None)  # fmt: skip
    record = record_evaluation(
        out_dir, task="video", weights=weights, data=data, split=split,
        num_samples=len(ids), precision=precision, device=dev,
    )  # fmt: skip
    return record | {"metrics": result["metrics"], "report": result.get("report"),
                     "probs": result["probs"], "targets": result["targets"],
                     "data_report": data_report}  # fmt: skip


def _recorded_clips(
    cfg: VideoConfig, ids: list[str], labels: list[str] | None, split: str, spec: PreprocessSpec,
    frames: int, class_names: list[str],
) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:  # fmt: skip
    """The clips of a recorded split, their targets, ids and data report: the builtin regenerated
    (seeded), files decoded again. A file that no longer decodes is skipped under ``cfg``'s
    max_bad_fraction / strict (cnnlab.data.scan.check_skipped, training's policy: a DataError
    above it, else said once) and listed in the report's ``skipped``; a file gone is an error."""
    if cfg.data.startswith(BUILTIN_PREFIX):
        data = _builtin_clips(dataclasses.replace(cfg, frames=frames), spec.image_size)
        where = {sid: i for i, sid in enumerate(data.ids)}
        missing = [sid for sid in ids if sid not in where]
        if missing:
            raise DataError(
                cfg.data, f"{len(missing)} clip(s) of the {split} split are gone (first: "
                f"{', '.join(map(str, missing[:3]))}); the builtin's options changed"
            )  # fmt: skip
        idx = np.array([where[sid] for sid in ids], dtype=np.int64)
        return data.clips[idx], data.targets[idx], list(ids), {"skipped": []}
    root = Path(cfg.data)
    paths = [root / sid for sid in ids]
    gone = [str(p) for p in paths if not p.is_file()]
    if gone:
        raise DataError(
            cfg.data, f"{len(gone)} video(s) of the recorded {split} split are gone (first: "
            f"{', '.join(gone[:3])}); the dataset changed since training"
        )  # fmt: skip
    if labels is None:
        raise CheckpointError(f"{cfg.data}: splits.json of this run lacks the clips' labels")
    decoded = _decode_paths(paths, frames, _frames_spec(spec.image_size, spec.resize))
    bad = [(str(p), res.reason) for p, res in zip(paths, decoded, strict=True)
           if isinstance(res, DataError)]  # fmt: skip
    warning = check_skipped(
        cfg.data, bad, len(paths), strict=cfg.strict, max_bad_fraction=cfg.max_bad_fraction,
        fix="replace the videos (they decoded when the run was trained)", item="video",
    )  # fmt: skip
    # ids, labels and clips of the videos that decoded, kept aligned
    ok = [(sid, lab, res[0]) for sid, lab, res in zip(ids, labels, decoded, strict=True)
          if not isinstance(res, DataError)]  # fmt: skip
    if warning:  # said once; the other videos are evaluated
        log.warning("%s: %s; evaluating the other %d", cfg.data, warning, len(ok))
    if not ok:
        raise DataError(cfg.data, f"no video of the recorded {split} split can be decoded")
    targets = np.array([class_names.index(lab) for _, lab, _ in ok], dtype=np.int64)
    report = {"skipped": [{"path": p, "reason": why} for p, why in bad]}
    return np.stack([clip for _, _, clip in ok]), targets, [sid for sid, _, _ in ok], report


# -- predict ---------------------------------------------------------------------------------------
def predict_clips(
    run: str | Path,
    frames: np.ndarray,
    *,
    window: int | None = None,
    stride: int = 1,
    step: int | None = None,
    device: str = "auto",
    batch_size: int = 32,
    precision: str = "auto",
) -> dict[str, Any]:
    """Class probabilities over a long video held in memory.

    Args:
        frames: (F, H, W, 3) uint8 RGB frames in order (e.g. ``cnnlab.video.io.read_video``).
        window: frames per clip; default the run's clip length T. stride: frames between the
            starts of two windows. step: frames between two frames of a window; default the run's
            ``frame_step`` rounded (1 for the builtin; a folder run sampled T frames over whole
            videos, so its step matches that pace).
    Returns:
        ``{"starts": (M,) int (first frame of each window), "probs": (M, K) float32,
        "class_names", "window", "step", "stride", "span"}``; window i covers frames
        ``starts[i] .. starts[i] + span - 1`` (span = (window - 1) * step + 1). A per-frame 2D
        run scores single frames: window 1, ``starts`` the scored frame indices, ``probs`` each
        frame's own probabilities. A video shorter than one window gives one window over all of
        it (frames repeated).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be (F, H, W, 3) uint8 with F >= 1, got {frames.shape} "
                         f"{frames.dtype}")  # fmt: skip
    if stride < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    dev = resolve_device(device)
    model, meta, weights = load_video_model(run, dev)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    names = list(meta["class_names"])
    chw = torch.from_numpy(arrays_to_chw(frames, spec))  # (F, C, S, S) uint8
    per_frame = not is_3d(meta["model"])
    if per_frame:
        window, step = 1, 1
    else:
        window = int(window or meta["frames"])
        step = int(step or max(1, round(float(meta.get("frame_step", 1.0)))))
        if window < 1 or step < 1:
            raise ConfigError(f"window and step must be >= 1, got {window}, {step}")
    span = (window - 1) * step + 1
    count = len(chw)
    starts = np.arange(0, max(count - span, 0) + 1, stride, dtype=np.int64)
    mean = torch.tensor(spec.mean * window, device=dev)
    std = torch.tensor(spec.std * window, device=dev)
    precision = inference_precision(precision, dev, trained_precision(run_dir_of(weights)))
    out = []
    for b in range(0, len(starts), batch_size):
        rows = []
        for s0 in starts[b : b + batch_size]:
            idx = np.arange(s0, s0 + span, step) if count >= span else even_indices(count, window)
            rows.append(chw[idx].reshape(-1, *chw.shape[2:]))  # (window*C, S, S)
        x = normalize(torch.stack(rows).to(dev), mean, std)
        with torch.inference_mode(), autocast(dev, precision):
            out.append(model(x).float().softmax(1).cpu())
    return {"starts": starts, "probs": torch.cat(out).numpy(), "class_names": names,
            "window": window, "step": step, "stride": stride, "span": span}  # fmt: skip


SPEC = TaskSpec(
    name=TASK,
    command="cnnlab video train",
    config=VideoConfig,
    validator=ClassificationTask,
    prepare=_prepare,
)
