"""Portable exports of a trained model (ONNX, TorchScript, safetensors), carrying its preprocessing.

    >>> from cnnlab.export import export_model, predict_onnx
    >>> result = export_model("runs/lenet", format="onnx")   # runs/lenet/export/model.onnx
    >>> result.max_abs_diff <= result.atol + result.rtol     # checked against PyTorch
    True
    >>> predict_onnx(result.path, ["digit.png"], top_k=3)      # no PyTorch model needed

What an exported file computes: ``logits = f(images)`` with ``images`` ``(N, C, S, S)`` float32,
already normalised as in training::

    x = (pixels / 255 - mean[c]) / std[c]   # pixels: uint8 after decoding and resizing to S x S
    probs = softmax(logits / T, axis=1)     # (N, num_classes); T: metadata "temperature" (else 1)

``T`` is the run's temperature (calibration.json, docs/calibration.md), kept out of the graph so
the exported logits stay the model's own (and the PyTorch parity check compares like with like);
metadata ``out_of_domain`` holds the threshold of the out-of-domain check on those logits
(``-log sum exp(logits) > threshold``: unlike the training images).

How a file becomes ``pixels`` (the one decoding policy, :mod:`cnnlab.data.decode`: allow-listed
formats, EXIF orientation, mode policy, pixel limit) and the class names travel *with* the file:

* ONNX: ``metadata_props`` (every value a JSON string: ``class_names``, ``preprocess``, ``input``,
  ``decoding``, ``model`` ...), read back with ``onnxruntime``'s ``get_modelmeta()``;
* TorchScript: ``_extra_files={"cnnlab.json": ...}`` inside the zip;
* safetensors: the header's ``__metadata__`` (str -> str, JSON-encoded values) -- the same layout as
  a cnnlab checkpoint, so ``cnnlab predict`` and ``load_checkpoint_model`` accept it as one;
* and, for every format, a sidecar ``<stem>.preprocess.json`` next to the file (the same
  dictionary; ``model.onnx`` and ``model.torchscript.pt`` of one run share
  ``model.preprocess.json``) for tools that cannot read the embedded metadata.

The ONNX graph is made by ``torch.onnx.export(..., dynamo=True)`` (the default exporter of torch
2.14, via ``torch.export``; needs the ``onnxscript`` package). It is the exporter that handles every
family of the zoo: the older TorchScript-based exporter (``dynamo=False``) refuses AlexNet at small
inputs ("adaptive_avg_pool2d, output size that are not factor of input size"). Its native opset is
18; converting down to 17 fails for ResNet and GoogLeNet (``ReduceMean`` axes), so 18 is the
default and a file that does not end up with the requested opset is an error, not a surprise.
The batch axis is dynamic (``dynamic_shapes``), checked by running batch sizes 1 and 3 (the graph
is traced with 2).

Right after writing, each export is compared with PyTorch on the same inputs (batch sizes 1 and 3
of random uint8 pictures, normalised): ONNX through ``onnxruntime``, TorchScript through
``torch.jit.load``, safetensors through a fresh model loaded from the file. The test is
``|exported - torch| <= atol + rtol * |torch|`` elementwise on the logits with ``rtol = 1e-3``,
``atol = 1e-5`` (the tolerances of torchvision's ``test/test_onnx.py``); a failure deletes the file
and raises :class:`ExportCheckError` with the largest difference.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cnnlab.config import PreprocessSpec
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError, close_matches

if TYPE_CHECKING:
    from cnnlab.engine.predict import Prediction

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
#: the file names that say a format: --out must not name another format's file
_FORMAT_OF_SUFFIX = {".onnx": "onnx", ".safetensors": "safetensors", ".pt": "torchscript",
                     ".pth": "torchscript"}  # fmt: skip
DEFAULT_OPSET = 18  # the dynamo exporter's native opset in torch 2.14 (see module docstring)
RTOL = 1e-3  # torchvision test/test_onnx.py
ATOL = 1e-5
CHECK_BATCH_SIZES = (1, 3)  # both differ from the traced batch size (2): proves the dynamic axis
TRACE_BATCH_SIZE = 2
INPUT_NAME = "images"  # the names cnnlab.engine.onnx.OnnxModel feeds and reads
OUTPUT_NAME = "logits"
EXPORTABLE = {  # task -> formats; video models are classifiers of clips, trackers are not models
    "classification": FORMATS,
    "segmentation": ("onnx", "torchscript"),
    "detection": ("onnx",),
}
TORCHSCRIPT_META = "cnnlab.json"  # name of the extra file inside a TorchScript zip
EXPORT_SCHEMA = 1


class ExportCheckError(CnnlabError):
    """An exported file does not compute what the PyTorch model computes (beyond the tolerance)."""

    exit_code = 1


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how well it matches PyTorch."""

    format: str
    path: Path
    sidecar: Path  # <stem>.preprocess.json next to ``path``
    metadata: dict[str, Any]  # what the file carries (class names, preprocessing, ...)
    max_abs_diff: float | None  # max |exported - torch| over the check inputs; None if unchecked
    rtol: float = RTOL
    atol: float = ATOL
    batch_sizes: tuple[int, ...] = CHECK_BATCH_SIZES
    checked_with: str = ""  # "onnxruntime 1.x", "torch.jit.load", "safetensors + PyTorch"
    opset: int | None = None  # ONNX only
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": str(self.path),
            "sidecar": str(self.sidecar),
            "max_abs_diff": self.max_abs_diff,
            "rtol": self.rtol,
            "atol": self.atol,
            "batch_sizes": list(self.batch_sizes),
            "checked_with": self.checked_with,
            "opset": self.opset,
            "size_bytes": self.size_bytes,
            "notes": list(self.notes),
        }


# -- metadata --------------------------------------------------------------------------------------
def export_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able dictionary every export carries, from a checkpoint's metadata.

    ``preprocess`` is the checkpoint's :class:`PreprocessSpec` dict unchanged (so
    ``PreprocessSpec.from_dict`` round-trips); ``input`` and ``decoding`` spell out what it implies
    for a runtime that does not have cnnlab (channel order, layout, formula, decoding policy).
    """
    from cnnlab.data.decode import ALLOWED_FORMATS, DEFAULT_BACKGROUND, DEFAULT_MAX_PIXELS

    spec = PreprocessSpec.from_dict(meta["preprocess"])
    names = [str(c) for c in meta["class_names"]]
    if len(names) != int(meta["num_classes"]):
        raise CheckpointError(
            f"checkpoint lists {len(names)} class names for {meta['num_classes']} outputs"
        )
    channel_order = "L" if spec.in_channels == 1 else "RGB"
    return {
        "cnnlab_export_schema": EXPORT_SCHEMA,
        "model": str(meta["model"]),
        "num_classes": len(names),
        "in_channels": spec.in_channels,
        "image_size": spec.image_size,
        "class_names": names,
        "preprocess": spec.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", spec.in_channels, spec.image_size, spec.image_size],
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": channel_order,
            "resize": spec.resize,  # fit: longer side to S, pad black, centred (data/tensors.py)
            "formula": "(pixels / 255 - mean[c]) / std[c]",
            "mean": list(spec.mean),
            "std": list(spec.std),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", len(names)],
            "meaning": "logits; probabilities = softmax(logits, axis=1) in class_names order",
        },
        "decoding": {
            "policy": "cnnlab.data.decode",
            "allowed_formats": list(ALLOWED_FORMATS),
            "max_pixels": int(spec.decode.get("max_pixels", DEFAULT_MAX_PIXELS)),
            "background": list(spec.decode.get("background", DEFAULT_BACKGROUND)),
            "exif_transpose": True,
            "mode": channel_order,
            "first_frame_only": True,
        },
        "cnnlab_version": str(meta.get("cnnlab_version", "")),
        "torch_version": torch.__version__,
        "trained_on": str(meta.get("data", "")),
    }


OPERATING_POINT = "operating_point"  # metadata key of a single-label run's operating point
#: the entries of RUN/operating_point.json an exported file carries (what deciding needs and
#: how the threshold was chosen; the evaluation record itself stays in the run)
OPERATING_POINT_KEYS = (
    "positive_class",
    "positive_index",
    "threshold",
    "decision",
    "target",
    "rule",
)


def export_operating_point(point: dict[str, Any]) -> dict[str, Any]:
    """What an exported file records of the run's operating point (RUN/operating_point.json)."""
    out = {k: point[k] for k in OPERATING_POINT_KEYS if k in point}
    out["weights_sha256"] = (point.get("weights") or {}).get("sha256")
    return out


def multilabel_export_metadata(meta: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """The entries a multi-label export adds: ``multilabel``, each label's decision threshold
    (RUN/thresholds.json; an exported checkpoint's own; else 0.5) and the sigmoid output."""
    from cnnlab.tasks.classify.multilabel import model_thresholds

    names = [str(c) for c in meta["class_names"]]
    thresholds = model_thresholds(run_dir, meta, names)
    return {
        "multilabel": True,
        "thresholds": dict(zip(names, thresholds.tolist(), strict=True)),
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", len(names)],
            "meaning": "logits; probabilities = sigmoid(logits) per label (class_names order); "
            "a label is predicted when its probability >= thresholds[label]",
        },
    }


def task_export_metadata(task: str, meta: dict[str, Any]) -> dict[str, Any]:
    """:func:`export_metadata` of a segmentation or detection checkpoint: the same input contract,
    the task's output, and the post-processing parameters the run predicts with."""
    out = export_metadata(meta) | {"task": task}
    k, s = out["num_classes"], out["image_size"]
    if task == "segmentation":
        out["output"] = {
            "name": OUTPUT_NAME,
            "shape": ["N", k, s, s],
            "meaning": "per-pixel logits; the mask is argmax over axis 1 (class_names order), "
            "mapped back to the image's own size as cnnlab.data.masks.logits_to_image_mask does",
        }
        out["ignore_index"] = int(meta.get("ignore_index", 255))
        out["palette"] = meta.get("palette")
    else:
        out["input"]["shape"] = [1, out["in_channels"], s, s]
        out["output"] = {
            "names": ["boxes", "labels", "scores"],
            "shape": [["M", 4], ["M"], ["M"]],
            "meaning": "one image per call; boxes (x1, y1, x2, y2) in model-input pixels after "
            "NMS; labels index class_names; keep scores >= score_threshold",
        }
        out["score_threshold"] = float(meta.get("score_threshold", 0.5))
        out["category_ids"] = meta.get("category_ids")
    return out


def _load_task_model(task: str, run_or_checkpoint: str | Path):
    if task == "segmentation":
        from cnnlab.segment import load_segmentation_model

        return load_segmentation_model(run_or_checkpoint, "cpu")
    from cnnlab.detect import load_detection_model

    return load_detection_model(run_or_checkpoint, "cpu")


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an exported file carries (any of the three formats), JSON values decoded."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"exported model not found: {p}")
    name = p.name.lower()
    if name.endswith(".onnx"):
        raw = _onnx_session(p).get_modelmeta().custom_metadata_map
    elif name.endswith(".safetensors"):
        from cnnlab.engine.checkpoint import read_weights

        return read_weights(p)[1]
    elif name.endswith(".pt") or name.endswith(".torchscript"):
        extra = {TORCHSCRIPT_META: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
            torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
        if not extra[TORCHSCRIPT_META]:
            raise CheckpointError(f"{p} has no {TORCHSCRIPT_META}; it was not exported by cnnlab")
        return json.loads(extra[TORCHSCRIPT_META])
    else:
        raise ConfigError(
            f"{p}: unknown export type; expected .onnx, .torchscript.pt or .safetensors"
        )
    return _decode_props(raw, p)


def _decode_props(raw: dict[str, str], path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    if "preprocess" not in meta or "class_names" not in meta:
        sidecar = sidecar_path(path)
        if sidecar.is_file():  # metadata stripped by another tool: the sidecar still has it
            log.warning("%s has no cnnlab metadata; using %s", path.name, sidecar.name)
            return json.loads(sidecar.read_text())
        raise CheckpointError(
            f"{path} carries no cnnlab preprocessing/class names (and no {sidecar.name} beside "
            "it); export it with `cnnlab export RUN --format onnx`"
        )
    return meta


def sidecar_path(path: Path) -> Path:
    """``model.onnx`` and ``model.torchscript.pt`` -> ``model.preprocess.json``."""
    stem = path.name
    for suffix in sorted(SUFFIXES.values(), key=len, reverse=True):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = path.stem
    return path.with_name(f"{stem}.preprocess.json")


# -- export ----------------------------------------------------------------------------------------
def export_model(
    run_or_checkpoint: str | Path,
    *,
    format: str = "onnx",  # noqa: A002 -- the CLI's word (--format)
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    rtol: float = RTOL,
    atol: float = ATOL,
    operating_point: bool = True,
) -> ExportResult:
    """Export a run's best checkpoint (or a ``.safetensors`` checkpoint) to ``format``.

    ``out`` defaults to ``<run>/export/model.<ext>`` (``<checkpoint folder>/export/<stem>.<ext>``
    for a checkpoint outside a run). The model is exported on CPU in ``eval()`` mode. ``check``:
    compare with PyTorch, elementwise ``|exported - torch| <= atol + rtol * |torch|`` on the
    logits (float32 rounding grows with depth: ResNet-101/152 may need ``rtol=1e-2, atol=1e-4``).
    ``operating_point``: record the run's operating point (RUN/operating_point.json, checked
    against the weights as predict does) in the metadata; a multi-label run records
    ``multilabel``, its labels and their thresholds instead.
    """
    from cnnlab.engine.checkpoint import read_weights
    from cnnlab.engine.weights import load_checkpoint_model
    from cnnlab.run import resolve_weights, run_dir_of

    fmt = _check_format(format)
    _check_options(fmt, None if out is None else Path(out).expanduser(), rtol, atol)
    recorded = read_weights(resolve_weights(run_or_checkpoint))[1]
    task = recorded.get("task", "classification")
    if fmt not in EXPORTABLE.get(task, ()):
        can = EXPORTABLE.get(task)
        raise ConfigError(
            f"--format {fmt} is not available for a {task} run"
            + (f"; choose from {', '.join(can)}" if can else
               "; export covers classification, segmentation and detection runs")
        )  # fmt: skip
    if task == "classification":
        from cnnlab.engine.calibration import from_metadata, load_calibration
        from cnnlab.tasks.classify.operating_point import for_weights

        model, meta, weights = load_checkpoint_model(run_or_checkpoint, "cpu")
        metadata = export_metadata(meta)
        run_dir = run_dir_of(Path(weights))
        if meta.get("multilabel"):  # sigmoid per label, each at its run threshold
            metadata |= multilabel_export_metadata(meta, run_dir)
        else:
            # the run's calibration.json (or what an exported checkpoint already carries): the
            # temperature and the out-of-domain threshold travel with the file
            calibration = load_calibration(run_dir, Path(weights)) or from_metadata(meta)
            if calibration is not None:
                metadata |= calibration.export_metadata()
            # the run's active operating point, checked against these weights as predict does
            point = None
            if operating_point:
                point = for_weights(
                    run_dir, Path(weights), metadata["class_names"], command="export"
                )
                point = export_operating_point(point) if point else meta.get(OPERATING_POINT)
            if point:
                metadata[OPERATING_POINT] = point
    else:
        model, meta, weights = _load_task_model(task, run_or_checkpoint)
        metadata = task_export_metadata(task, meta)
    default_out = out is None
    if out is None:
        run_dir = run_dir_of(Path(weights))
        folder = (run_dir if run_dir is not None else Path(weights).parent) / "export"
        stem = "model" if run_dir is not None else Path(weights).stem
        out = folder / f"{stem}{SUFFIXES[fmt]}"
    return export_module(
        model,
        metadata,
        format=fmt,
        out=Path(out),
        opset=opset,
        check=check,
        rtol=rtol,
        atol=atol,
        default_out=default_out,
    )


def export_module(
    model: nn.Module,
    metadata: dict[str, Any],
    *,
    format: str,  # noqa: A002
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    rtol: float = RTOL,
    atol: float = ATOL,
    default_out: bool = False,
) -> ExportResult:
    """Export an ``nn.Module`` with the given :func:`export_metadata`; see :func:`export_model`.

    The module is moved to CPU for the export and its training mode is restored afterwards.
    ``out`` (or its ``.preprocess.json`` sidecar) already there and not written by cnnlab is
    refused (:func:`cnnlab.run.claim_output_file`; ``default_out``: a name cnnlab chose).
    """
    from cnnlab.run import claim_output_file

    fmt = _check_format(format)
    out = Path(out).expanduser()
    _check_options(fmt, out, rtol, atol)
    # RUN/export/ from before its record was kept: an export with its sidecar is cnnlab's own
    adopt = default_out and out.is_file() and sidecar_path(out).is_file()
    claim_output_file(out, command="export", also=(sidecar_path(out).name,), default=default_out,
                      adopt=adopt)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec.from_dict(metadata["preprocess"])
    tolerance = (float(rtol), float(atol)) if check else None
    was_training = model.training
    model.eval()  # dropout off, batch norm on running statistics: what inference computes
    try:
        with torch.no_grad():
            if metadata.get("task") == "detection":
                result = _export_detection_onnx(model, metadata, spec, out, tolerance)
            elif fmt == "onnx":
                result = _export_onnx(model, metadata, spec, out, opset, tolerance)
            elif fmt == "torchscript":
                result = _export_torchscript(model, metadata, spec, out, tolerance)
            else:
                result = _export_safetensors(model, metadata, spec, out, tolerance)
    finally:
        model.train(was_training)
    result.size_bytes = out.stat().st_size
    result.rtol, result.atol = float(rtol), float(atol)
    # one sidecar per model stem, shared by its .onnx / .torchscript.pt / .safetensors
    _atomic_text(result.sidecar, json.dumps(metadata, indent=2))
    for path in (out, result.sidecar):
        _readable(path)
    log.info(
        "exported %s (%d bytes); max |diff| vs PyTorch %s",
        out,
        result.size_bytes,
        result.max_abs_diff,
    )
    return result


def _check_options(fmt: str, out: Path | None, rtol: float, atol: float) -> None:
    """The output name and the check's tolerances, refused in one line before anything loads."""
    for option, value, default in (("rtol", rtol, RTOL), ("atol", atol, ATOL)):
        # a negative tolerance failed every check, removed the file and said "please report this"
        if not math.isfinite(float(value)) or float(value) < 0:
            raise ConfigError(
                f"--{option} {value} must be a number >= 0 (the check passes when "
                f"|exported - torch| <= atol + rtol * |torch|; default {default})"
            )
    if out is None:
        return
    suffix = SUFFIXES[fmt]
    if out.is_dir():
        raise ConfigError(
            f"--out {out} is a folder; give a file name such as {out / ('model' + suffix)}"
        )
    # cnnlab (predict, serve, segment/detect predict) and other tools know an ONNX file and a
    # safetensors checkpoint by their suffix (ONNX in any case): `--format safetensors --out
    # m.onnx` wrote a file that `predict m.onnx` then failed to parse as ONNX
    name = out.name.lower() if fmt == "onnx" else out.name
    meant = _FORMAT_OF_SUFFIX.get(out.suffix.lower())
    other = f", or give --format {meant}" if meant not in (None, fmt) else ""
    if fmt in ("onnx", "safetensors") and not name.endswith(suffix):
        raise ConfigError(
            f"--out {out}: a {fmt} export is named *{suffix} (cnnlab and other tools recognise "
            f"it by that); give e.g. {out.with_name(out.stem + suffix)}{other}"
        )
    if fmt == "torchscript" and out.suffix.lower() in (".onnx", ".safetensors"):
        raise ConfigError(
            f"--out {out}: a torchscript export is not named *{out.suffix}; give e.g. "
            f"{out.with_name(out.stem + suffix)}{other}"
        )


def _check_format(fmt: str) -> str:
    key = str(fmt).lower()
    if key not in FORMATS:
        raise ConfigError(
            f"unknown export format {fmt!r}{close_matches(key, FORMATS)}; choose from "
            f"{', '.join(FORMATS)}"
        )
    return key


def check_inputs(spec: PreprocessSpec, batch_sizes: Sequence[int] = CHECK_BATCH_SIZES):
    """Normalised random pictures ``(b, C, S, S)`` float32, one tensor per batch size (seeded).

    Pixels are uniform uint8 pushed through the training normalisation, so the inputs have the
    range a real image has (N(0, 1) noise would exercise the graph outside it).
    """
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    return [
        (torch.randint(0, 256, (b, *shape), generator=gen).float() / 255 - mean) / std
        for b in batch_sizes
    ]


def compare_outputs(
    name: str, got: np.ndarray, ref: np.ndarray, rtol: float = RTOL, atol: float = ATOL
) -> float:
    """max |got - ref|; raises :class:`ExportCheckError` unless |got - ref| <= atol + rtol |ref|."""
    if got.shape != ref.shape:
        raise ExportCheckError(
            f"{name}: output shape {got.shape} differs from PyTorch's {ref.shape}"
        )
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    worst = float(diff.max()) if diff.size else 0.0
    bound = atol + rtol * np.abs(ref.astype(np.float64))
    if not np.all(diff <= bound) or not np.isfinite(got).all():
        i = np.unravel_index(int(np.argmax(diff - bound)), diff.shape)
        raise ExportCheckError(
            f"{name}: exported model differs from PyTorch beyond rtol={rtol}, atol={atol}: "
            f"max |diff| {worst:.3g}; at {tuple(int(v) for v in i)} got {float(got[i]):.6g}, "
            f"PyTorch {float(ref[i]):.6g}. The file was removed; please report this "
            "(deep networks accumulate float32 rounding: if the difference is small next to the "
            "logits, loosen rtol/atol; check=False / --no-check skips the comparison)"
        )
    return worst


def _export_onnx(
    model: nn.Module,
    metadata: dict[str, Any],
    spec: PreprocessSpec,
    out: Path,
    opset: int,
    check: tuple[float, float] | None,
) -> ExportResult:
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs: pip install onnx onnxscript onnxruntime") from None
    example = check_inputs(spec, (TRACE_BATCH_SIZE,))[0]
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = _temp_beside(out)
    try:
        with (
            warnings.catch_warnings(),
            _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx", "torch.export"),
        ):
            warnings.simplefilter("ignore", (FutureWarning, UserWarning, DeprecationWarning))
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,  # one self-contained file (the zoo stays far below 2 GB)
                verbose=False,
            )
        proto = onnx.load(str(tmp))
        got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        if got_opset != opset:
            raise ConfigError(
                f"the ONNX exporter could not produce opset {opset} for {metadata['model']} "
                f"(it wrote opset {got_opset}); use --opset {DEFAULT_OPSET}"
            )
        onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
        proto.doc_string = (
            f"cnnlab {metadata['model']}: logits = f((pixels/255 - mean)/std); see metadata_props"
        )
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        result = ExportResult("onnx", out, sidecar_path(out), metadata, None, opset=got_opset)
        if check:
            import onnxruntime

            session = _onnx_session(tmp)
            diffs = []
            for x in check_inputs(spec):
                ref = model(x).numpy()
                got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
                diffs.append(compare_outputs(f"{out} (batch {x.shape[0]})", got, ref, *check))
            result.max_abs_diff = max(diffs)
            result.checked_with = f"onnxruntime {onnxruntime.__version__}"
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return result


def _export_detection_onnx(
    model: nn.Module,
    metadata: dict[str, Any],
    spec: PreprocessSpec,
    out: Path,
    check: tuple[float, float] | None,
) -> ExportResult:
    """torchvision's detectors through the TorchScript-based exporter (opset 17), traced for one
    image: the dynamo exporter stops at the data-dependent shapes of their box post-processing
    (GuardOnDataDependentSymNode), while this exporter is the one torchvision's own test_onnx.py
    covers. The check runs single images through onnxruntime and PyTorch: the same number of
    boxes, the same labels, boxes and scores within the tolerance."""
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs: pip install onnx onnxscript onnxruntime") from None
    from cnnlab.engine.onnx import DETECTION_OUTPUTS, OnnxModel

    opset = 17
    example = check_inputs(spec, (1,))[0]
    tmp = _temp_beside(out)
    try:
        with (
            warnings.catch_warnings(),
            _quiet_loggers("torch.onnx", "torch.export"),
        ):
            warnings.simplefilter("ignore")  # tracer warnings on the box arithmetic's Python ints
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                output_names=list(DETECTION_OUTPUTS), opset_version=opset, verbose=False,
            )  # fmt: skip
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items()})
        proto.doc_string = (
            f"cnnlab {metadata['model']} detector: boxes, labels, scores of one image"
        )
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        result = ExportResult("onnx", out, sidecar_path(out), metadata, None, opset=opset)
        result.batch_sizes = (1,)
        if check:
            import onnxruntime

            exported = OnnxModel(tmp)
            diffs = [0.0]
            for i, x in enumerate(check_inputs(spec, (1, 1, 1))):  # three different pictures
                (got,), (ref,) = exported(x), model(x)
                name = f"{out} (image {i})"
                if len(got["boxes"]) != len(ref["boxes"]) or not torch.equal(
                    got["labels"], ref["labels"]
                ):
                    raise ExportCheckError(
                        f"{name}: {len(got['boxes'])} boxes {got['labels'].tolist()[:10]} "
                        f"against PyTorch's {len(ref['boxes'])} {ref['labels'].tolist()[:10]}"
                    )
                for key in ("boxes", "scores"):
                    diffs.append(
                        compare_outputs(f"{name} {key}", got[key].numpy(), ref[key].numpy(), *check)
                    )
            result.max_abs_diff = max(diffs)
            result.checked_with = f"onnxruntime {onnxruntime.__version__}"
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return result


def _export_torchscript(
    model: nn.Module,
    metadata: dict[str, Any],
    spec: PreprocessSpec,
    out: Path,
    check: tuple[float, float] | None,
) -> ExportResult:
    example = check_inputs(spec, (TRACE_BATCH_SIZE,))[0]
    tmp = _temp_beside(out)
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export but still the format LibTorch loads
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_META: json.dumps(metadata)})
            result = ExportResult("torchscript", out, sidecar_path(out), metadata, None)
            if check:
                extra = {TORCHSCRIPT_META: ""}
                loaded = torch.jit.load(str(tmp), map_location="cpu", _extra_files=extra)
                if json.loads(extra[TORCHSCRIPT_META]) != json.loads(json.dumps(metadata)):
                    raise ExportCheckError(f"{out}: metadata did not survive the TorchScript save")
                diffs = [
                    compare_outputs(
                        f"{out} (batch {x.shape[0]})", loaded(x).numpy(), model(x).numpy(), *check
                    )
                    for x in check_inputs(spec)
                ]
                result.max_abs_diff = max(diffs)
                result.checked_with = "torch.jit.load"
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return result


def _export_safetensors(
    model: nn.Module,
    metadata: dict[str, Any],
    spec: PreprocessSpec,
    out: Path,
    check: tuple[float, float] | None,
) -> ExportResult:
    from cnnlab.engine.checkpoint import read_weights, save_weights

    save_weights(out, model.state_dict(), metadata)  # atomic; the layout of a cnnlab checkpoint
    result = ExportResult("safetensors", out, sidecar_path(out), metadata, None)
    if check:
        try:
            state, meta = read_weights(out)
            fresh = _rebuild(metadata)
            fresh.load_state_dict(state, strict=True)
            fresh.eval()
            diffs = [
                compare_outputs(
                    f"{out} (batch {x.shape[0]})", fresh(x).numpy(), model(x).numpy(), *check
                )
                for x in check_inputs(spec)
            ]
            if meta.get("class_names") != metadata["class_names"]:
                raise ExportCheckError(f"{out}: class names did not survive the safetensors save")
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        result.max_abs_diff = max(diffs)
        result.checked_with = "safetensors + PyTorch (fresh model)"
    return result


def _rebuild(metadata: dict[str, Any]) -> nn.Module:
    from cnnlab.models import create_model

    return create_model(
        metadata["model"],
        num_classes=int(metadata["num_classes"]),
        in_channels=int(metadata["in_channels"]),
        image_size=int(metadata["image_size"]),
    )


# -- prediction with an exported ONNX file ---------------------------------------------------------
def predict_onnx(
    onnx_path: str | Path,
    inputs: list[str | Path],
    top_k: int = 5,
    *,
    batch_size: int = 64,
    min_confidence: float | None = None,
    tta: tuple[str, ...] = (),
    operating_point: bool = True,
) -> list[Prediction]:
    """:func:`cnnlab.tasks.classify.predict.predict` for an exported ``.onnx`` file, without the PyTorch model.

    Preprocessing and class names come from the file's metadata; files are decoded with the same
    policy as training (:func:`cnnlab.data.tensors.load_file`). Unreadable files get an ``error``
    entry (the short reason), not an exception. ``probs = softmax(logits / T)`` in float64, with
    the run's temperature T from the metadata (``temperature``; 1 for files without it), and the
    run's out-of-domain check (metadata ``out_of_domain``: the energy score's threshold).
    ``min_confidence``: below it a prediction is ``unknown``. ``tta`` (cnnlab.engine.tta): the
    mean of the views' calibrated probabilities (the views are cut with torchvision on the CPU).
    ``operating_point``: apply the run's operating point the file carries (metadata
    ``operating_point``), each prediction's ``decision``, as predicting the run does.
    A multi-label file (metadata ``multilabel``) answers every label: ``sigmoid(logits)`` and the
    run's threshold of each (metadata ``thresholds``), as predicting the run does.
    """
    from cnnlab.engine.calibration import SCORE, Calibration, from_metadata
    from cnnlab.engine.predict import predict_files
    from cnnlab.engine.tta import average_probs

    path = Path(onnx_path)
    session = _onnx_session(path)
    meta = _decode_props(session.get_modelmeta().custom_metadata_map, path)

    spec = PreprocessSpec.from_dict(meta["preprocess"])
    names = [str(c) for c in meta["class_names"]]
    if meta.get("multilabel"):
        return _predict_onnx_multilabel(
            session, meta, path, spec, names, inputs, batch_size=batch_size,
            min_confidence=min_confidence, tta=tta,
        )  # fmt: skip
    calibration = from_metadata(meta)  # None: exported before calibration existed
    temperature = calibration.temperature if calibration else 1.0
    threshold = calibration.threshold if calibration else None

    def logits_of(x: np.ndarray) -> np.ndarray:
        feed = {INPUT_NAME: np.ascontiguousarray(x)}  # predict_files passes an NHWC-strided view
        return session.run([OUTPUT_NAME], feed)[0].astype(np.float64)

    def probs_fn(x: np.ndarray) -> Any:
        if tta:  # the views cut in torch, each view's logits from onnxruntime
            mean, first = average_probs(
                lambda v: torch.from_numpy(logits_of(v.numpy().astype(np.float32))),
                torch.from_numpy(np.ascontiguousarray(x)), tta, temperature,
            )  # fmt: skip
            probs, logits = mean.numpy().astype(np.float64), first.numpy().astype(np.float64)
        else:
            logits = logits_of(x)
            probs = softmax(logits / temperature)
        return probs if threshold is None else (probs, Calibration.ood_scores(logits))

    point = meta.get(OPERATING_POINT) if operating_point else None
    decide = None
    if point:
        pos = point.get("positive_index")
        if not isinstance(pos, int) or not 0 <= pos < len(names):
            raise CheckpointError(
                f"{path}: its operating point names class index {pos!r}, which the model does "
                "not have; export the run again"
            )
        decide = (pos, float(point["threshold"]))
    return predict_files(
        inputs, spec, names, probs_fn, top_k=top_k, batch_size=batch_size, decide=decide,
        min_confidence=min_confidence, domain=None if threshold is None else (SCORE, threshold),
    )  # fmt: skip


def _predict_onnx_multilabel(
    session: Any,
    meta: dict[str, Any],
    path: Path,
    spec: PreprocessSpec,
    names: list[str],
    inputs: list[str | Path],
    *,
    batch_size: int,
    min_confidence: float | None,
    tta: tuple[str, ...],
) -> list[Prediction]:
    """Every label of a multi-label export: ``sigmoid(logits)`` and its recorded threshold."""
    from cnnlab.engine.predict import predict_files
    from cnnlab.tasks.classify.multilabel import check_predict_options, label_answers

    check_predict_options(tta, min_confidence)
    saved = meta.get("thresholds") or {}
    missing = [n for n in names if n not in saved]
    if missing:
        raise CheckpointError(f"{path} is multi-label but has no threshold for {missing}")
    thresholds = np.array([float(saved[n]) for n in names])

    def probs_fn(x: np.ndarray) -> np.ndarray:
        feed = {INPUT_NAME: np.ascontiguousarray(x)}  # predict_files passes an NHWC-strided view
        logits = session.run([OUTPUT_NAME], feed)[0].astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logits))  # sigmoid (N, L)

    preds = predict_files(inputs, spec, names, probs_fn, top_k=len(names), batch_size=batch_size)
    label_answers(preds, names, thresholds)
    return preds


def softmax(logits: np.ndarray) -> np.ndarray:
    """``exp(z - max z) / sum exp(z - max z)`` along axis 1 (shifted for overflow safety)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# -- helpers ---------------------------------------------------------------------------------------
def _onnx_session(path: Path):
    from cnnlab.engine.onnx import onnx_session

    return onnx_session(path)


def _temp_beside(out: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _atomic_text(path: Path, text: str) -> None:
    from cnnlab.engine.checkpoint import atomic_write

    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


def _readable(path: Path) -> None:
    """Temporary files are created 0600; an export is meant to be shared: 0666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """The exporter logs its progress (and down-conversion tracebacks) at INFO/WARNING."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
