"""The explain page: one self-contained HTML file showing what a trained CNN did with one image.

Sections, in the order the lecture tells the story: the input; the output probabilities; where
the model looks (CAM and saliency overlays for the top-k classes); the learned first-layer
filters; feature maps after convolution, ReLU and pooling; the flattened vector; the fully
connected activations; and a table of every layer in the lecture's words.

Everything is drawn here from numbers computed by :mod:`cnnlab.explain.trace` and
:mod:`cnnlab.explain.cam` (computing apart from drawing). Figures are PNG files in
``out_dir/figures`` and are also embedded as data URIs, so the page opens offline with no scripts.
Feature-map grids and filters are composed with NumPy + Pillow (one tile per channel, no
interpolation: a pixel of the map is a block of the tile); charts use Matplotlib's Agg backend.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

from cnnlab.report import use_file_backend

use_file_backend()  # files only; never a window (a notebook keeps its inline backend)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402

from cnnlab.config import score_threshold_of  # noqa: E402
from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.explain.cam import CamSet, head_kind, map_similarity  # noqa: E402
from cnnlab.explain.trace import LayerTrace, Trace  # noqa: E402
from cnnlab.report.html import CSS as REPORT_CSS  # noqa: E402
from cnnlab.report.style import SMALL, styled  # noqa: E402

log = logging.getLogger(__name__)

EXTRA_CSS = """
.lead{font-size:1.05rem}
.grid img,.pixel{image-rendering:pixelated}
.layer{margin:1rem 0 1.4rem}.layer h3{font-size:1rem;margin:.2rem 0}
.layer .muted{margin:.1rem 0 .4rem}
.kind{font-weight:600}.kind-convolution{color:#1f5fbf}.kind-ReLU{color:#b54a00}.kind-pooling{color:#2b8a3e}
table.layers td{text-align:left}table.layers td.num{text-align:right}
figure{margin:0 0 .8rem}figcaption{font-size:.85rem;color:#444}figure img{max-width:100%}
"""

TILE = 72  # pixels: each feature map / filter tile is scaled up to about this size
MAX_GRID_LAYERS = 14  # feature-map grids drawn (the stem in full + the end of every stage)
MAP_KINDS = ("convolution", "ReLU", "pooling", "residual add", "concat/inception", "batch norm")


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _save_pil(im: Image.Image, path: Path) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    path.write_bytes(buf.getvalue())
    return _uri(buf.getvalue())


def _save_fig(fig: plt.Figure, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return _uri(buf.getvalue())


def _hwc(image_uint8: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W[, C]) uint8 -> (H, W, 3) uint8 for display."""
    a = np.asarray(image_uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a.astype(np.uint8)


def _upscale(a: np.ndarray, target: int = TILE) -> Image.Image:
    """Nearest-neighbour enlargement to about ``target`` px (integer factor, at least 1)."""
    im = Image.fromarray(a)
    f = max(1, round(target / max(a.shape[:2])))
    return im.resize((im.width * f, im.height * f), Image.Resampling.NEAREST)


def _colorize(maps: np.ndarray, signed: bool) -> np.ndarray:
    """(K, h, w) float -> (K, h, w, 3) uint8 with one colour scale shared by the K maps.

    Signed outputs (convolution, batch norm) use a diverging map centred on 0 (blue < 0 < red);
    non-negative outputs (ReLU, pooling of ReLU) run from black (0) to yellow.
    """
    if signed:
        lim = float(np.abs(maps).max()) or 1.0
        rgba = colormaps["RdBu_r"]((maps / lim + 1) / 2)
    else:
        hi = float(maps.max()) or 1.0
        rgba = colormaps["magma"](np.clip(maps / hi, 0, 1))
    return (rgba[..., :3] * 255).astype(np.uint8)


def _tile_grid(tiles: np.ndarray, cols: int, gap: int = 2) -> Image.Image:
    """(K, h, w, 3) uint8 tiles (already upscaled) -> one image, ``cols`` per row, white gaps."""
    k, h, w, _ = tiles.shape
    rows = (k + cols - 1) // cols
    canvas = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(k):
        r, c = divmod(i, cols)
        canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[i]
    return Image.fromarray(canvas)


def _enlarge_tiles(tiles: np.ndarray, target: int = TILE) -> np.ndarray:
    f = max(1, round(target / max(tiles.shape[1:3])))
    return tiles.repeat(f, axis=1).repeat(f, axis=2)


def feature_grid(layer: LayerTrace) -> Image.Image:
    """The kept feature maps of one spatial layer as a grid (shared colour scale)."""
    assert layer.maps is not None
    maps = layer.maps.numpy()
    tiles = _enlarge_tiles(_colorize(maps, signed=bool(maps.min() < 0)))
    return _tile_grid(tiles, cols=min(8, len(tiles)))


def filter_grid(filters: np.ndarray) -> Image.Image:
    """First-layer weights (K, C_in, k, k) as tiles: RGB when C_in == 3 (each filter min-max
    scaled, as in AlexNet's figure 3), else the channel mean on a diverging scale."""
    if filters.shape[1] == 3:
        lo = filters.min(axis=(1, 2, 3), keepdims=True)
        hi = filters.max(axis=(1, 2, 3), keepdims=True)
        scaled = (filters - lo) / np.maximum(hi - lo, 1e-12)
        tiles = (scaled.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    else:
        tiles = _colorize(filters.mean(axis=1), signed=True)
    return _tile_grid(_enlarge_tiles(tiles, 64), cols=min(16, len(tiles)))


@styled
def probability_figure(trace: Trace, max_classes: int = 20) -> plt.Figure:
    probs = trace.probs.numpy()
    order = np.argsort(-probs)[:max_classes][::-1]  # best at the top
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(order) + 1.0))
    colors = ["#1f5fbf" if i == trace.predicted else "#9db4d8" for i in order]
    ax.barh([trace.class_names[i] for i in order], probs[order], color=colors)
    for y, i in enumerate(order):
        ax.text(min(probs[i] + 0.01, 0.9), y, f"{probs[i]:.3f}", va="center", fontsize=SMALL)
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        "probability (sigmoid of each output)"
        if trace.multilabel
        else "probability (softmax of the output layer)"
    )
    shown = "" if len(order) == len(probs) else f" (top {len(order)} of {len(probs)})"
    ax.set_title("output probabilities" + shown)
    return fig


@styled
def vector_figure(layers: list[LayerTrace]) -> plt.Figure:
    """One panel per vector layer (flattening, fully connected, output): value of every unit."""
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 1.6 * len(layers) + 0.4), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        v = layer.vector.numpy() if layer.vector is not None else np.zeros(0)
        x = np.arange(len(v))
        colors = np.where(v >= 0, "#1f5fbf", "#c0392b")
        if len(v) <= 256:
            ax.bar(x, v, width=0.9, color=colors)
        else:  # thousands of units: a thin line reads better than bars
            ax.plot(x, v, lw=0.5, color="#1f5fbf")
        ax.axhline(0, color="k", lw=0.5)
        shown = "" if len(v) == layer.output_shape[0] else f" (first {len(v)})"
        ax.set_title(f"{layer.name}: {layer.kind}, {layer.output_shape[0]} values{shown}")
    axes[-1, 0].set_xlabel("unit")
    fig.tight_layout()
    return fig


def overlay(image_hwc: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map (jet colour map) over the image: (H, W, 3) uint8."""
    colored = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    return ((1 - alpha) * image_hwc / 255.0 + alpha * colored).clip(0, 1)


METHOD_TITLES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "eigencam": "Eigen-CAM",
    "scorecam": "Score-CAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiResCAM",
    "saliency": "gradient saliency",
}


@styled
def cam_figure(image_hwc: np.ndarray, cams: CamSet, trace: Trace) -> plt.Figure:
    methods = list(cams.maps)
    rows, cols = len(cams.classes), 1 + len(methods)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.2 * rows), squeeze=False)
    for r, c in enumerate(cams.classes):
        axes[r, 0].imshow(image_hwc, interpolation="nearest")
        axes[r, 0].set_ylabel(f"{trace.class_names[c]}\np={float(trace.probs[c]):.3f}")
        for j, method in enumerate(methods, start=1):
            axes[r, j].imshow(overlay(image_hwc, cams.maps[method][c]), interpolation="nearest")
            if r == 0:
                axes[r, j].set_title(METHOD_TITLES.get(method, method))
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input")
    fig.tight_layout()
    return fig


def why_cams_look_so(trace: Trace, cams: CamSet, model_name: str | None = None) -> str:
    """A paragraph on why this model's CAMs look as they do: how coarse the target map is, how
    it is enlarged, and what the head does with positions (pointing to ``lenet5_gap`` when a
    fully connected head mixes them)."""
    esc = html.escape
    c, h, w = (tuple(cams.target_shape) + (1, 1, 1))[:3]
    big_h, big_w = trace.input_shape[-2:]
    head = head_kind(trace)
    lines = [
        f"<b>Why the maps look like this.</b> They are computed on <code>{esc(cams.target_layer)}"
        f"</code>, whose {c} feature maps are only {h} x {w} cells for the {big_h} x {big_w} "
        f"input: each cell stands for about {big_h / max(h, 1):.0f} x {big_w / max(w, 1):.0f} "
        "input pixels, and the map is enlarged bilinearly to the input, so a CAM can only be a "
        "few smooth blobs, never the outline of an object."
    ]
    if head.kind == "fully connected" and head.last_map is not None:
        lc, lh, lw = head.last_map
        lines.append(
            f"This model's head flattens its last maps ({lc} x {lh} x {lw} = "
            f"{head.flatten_length:,} numbers) into {head.fc_layers} fully connected layers. "
            "Every unit of a fully connected layer is connected to every position, so the "
            "gradient of one class score is spread over the whole map and the head learns "
            "<i>where</i> things are as well as <i>what</i> they are: the maps of different "
            "classes tend to look alike and often mark the evidence around the object."
        )
        if model_name != "lenet5_gap":
            lines.append(
                "A head with global average pooling keeps positions apart: each class score is "
                "a weighted sum of per-map averages, which is exactly what a CAM reads. Train "
                "<code>lenet5_gap</code> (LeNet-5's convolutions + global average pool + one "
                "linear layer: <code>cnnlab train --model lenet5_gap</code>) to compare."
            )
    elif head.kind == "gap":
        lines.append(
            "This model averages each of its last maps over all positions (global average "
            "pooling) before one linear layer, so Grad-CAM is the CAM of Zhou et al. (2016): a "
            "class's map is its own weighted sum of the feature maps, and different classes can "
            "point at different places."
        )
    similarity = map_similarity(cams.maps.get("gradcam", {}))
    if similarity is not None:
        alike = (
            "nearly the same" if similarity > 0.8 else "alike" if similarity > 0.5 else "different"
        )
        lines.append(
            f"Here the Grad-CAM maps of the top {len(cams.classes)} classes correlate at "
            f"{similarity:.2f} on average (1 = identical): they are {alike}."
        )
    return '<p class="lead" id="why-cams">' + " ".join(lines) + "</p>"


def _grid_layers(trace: Trace, limit: int = MAX_GRID_LAYERS) -> list[LayerTrace]:
    """Which spatial layers get a feature-map grid: all when few; else the stem (everything up to
    and including the first pooling) plus the output of every ``feature_info`` stage."""
    spatial = [layer for layer in trace.layers if layer.is_spatial and layer.maps is not None]
    story = [layer for layer in spatial if layer.kind in MAP_KINDS and layer.kind != "batch norm"]
    if len(story) <= limit:
        return story
    chosen: list[LayerTrace] = []
    for layer in story:
        chosen.append(layer)
        if layer.kind == "pooling":
            break
    for stage in trace.stages:
        name = stage["name"]
        under = [lay for lay in spatial if lay.name == name or lay.name.startswith(name + ".")]
        if under and under[-1] not in chosen:
            chosen.append(under[-1])  # a module's output is the last row under its path
    chosen.sort(key=lambda lay: lay.index)
    return chosen[:limit]


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in shape)


def _filters_section(trace: Trace, fig_dir: Path) -> str:
    """The learned first-layer filters."""
    esc = html.escape
    filters = trace.first_filters.numpy()
    filt_uri = _save_pil(filter_grid(filters), fig_dir / "first_layer_filters.png")
    k_total = trace.first_filters_shape[0]
    return (
        '<h2 id="filters">Learned first-layer filters</h2>'
        f'<p class="muted"><code>{esc(trace.first_conv)}</code>: {k_total} filters of '
        f"{_shape(trace.first_filters_shape[1:])} (input channels x height x width)"
        f"{'' if len(filters) == k_total else f', first {len(filters)} shown'}. "
        + (
            "Shown as colour patches, each scaled to its own range."
            if filters.shape[1] == 3
            else "Shown averaged over input channels: red positive, blue negative weights."
        )
        + "</p>"
        f'<figure class="grid"><img src="{filt_uri}" alt="first-layer filters"></figure>'
    )


def _feature_maps_section(
    trace: Trace, fig_dir: Path, extra: list[LayerTrace] | None = None
) -> str:
    """Feature-map grids of the story layers (plus ``extra`` ones, e.g. a decoder's)."""
    esc = html.escape
    grids = []
    chosen = {layer.index: layer for layer in [*_grid_layers(trace), *(extra or [])]}
    for layer in sorted(chosen.values(), key=lambda lay: lay.index):
        uri = _save_pil(feature_grid(layer), fig_dir / f"maps_{layer.index:03d}.png")
        c = layer.output_shape[0]
        kept = layer.maps.shape[0] if layer.maps is not None else 0
        s = layer.stats
        grids.append(
            f'<div class="layer" id="layer-{layer.index}"><h3>#{layer.index} '
            f'<span class="kind kind-{esc(layer.kind)}">after {esc(layer.kind)}</span> '
            f"<code>{esc(layer.name)}</code> -> {_shape(layer.output_shape)}</h3>"
            f'<p class="muted">{esc(layer.detail)}; {"all" if kept == c else f"first {kept} of"} '
            f"{c} maps; mean {s['mean']:.3f}, min {s['min']:.3f}, max {s['max']:.3f}, "
            f"{100 * s['fraction_zero']:.0f}% exactly zero</p>"
            f'<img class="pixel" src="{uri}" alt="feature maps of {esc(layer.name)}"></div>'
        )
    return (
        '<h2 id="feature-maps">Feature maps: after convolution, ReLU and pooling</h2>'
        '<p class="muted">One tile per channel, one colour scale per layer. Before the ReLU, '
        "blue is negative and red positive; after the ReLU every negative value is 0 (black), "
        "and pooling keeps the largest value of each window, so the maps shrink.</p>"
        + "".join(grids)
    )


def _layers_section(trace: Trace) -> str:
    """The table of every layer."""
    esc = html.escape
    rows = "".join(
        f"<tr><td class=num>{layer.index}</td><td><code>{esc(layer.name)}</code></td>"
        f'<td class="kind kind-{esc(layer.kind)}">{esc(layer.kind)}</td>'
        f"<td>{esc(layer.detail)}</td>"
        f"<td>{_shape(layer.output_shape)}</td><td class=num>{layer.params:,}</td>"
        f"<td class=num>{layer.stats['mean']:.3f}</td>"
        f"<td class=num>{100 * layer.stats['fraction_zero']:.0f}%</td></tr>"
        for layer in trace.layers
    )
    return (
        f'<h2 id="layers">Every layer, in order ({len(trace.layers)})</h2>'
        '<table class="layers"><tr><th>#</th><th>layer</th><th>kind</th><th>what it does</th>'
        "<th>output shape</th><th>parameters</th><th>mean</th><th>zeros</th></tr>"
        f"{rows}</table>"
    )


def write_explain_page(
    trace: Trace,
    cams: CamSet | None,
    out_dir: str | Path,
    image_uint8: np.ndarray,
    *,
    title: str | None = None,
    source: str | None = None,
    model_name: str | None = None,
    notice: str = "",
) -> Path:
    """Write ``explain.html`` and its PNGs (``figures/``) into ``out_dir``; return the HTML path.

    ``image_uint8``: the model's input before normalisation, (C, H, W) or (H, W, C) uint8.
    ``notice``: HTML shown under the prediction (the out-of-domain check and calibrated
    probabilities, report.calibration_section.explain_notice).
    """
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    img = _hwc(image_uint8)
    esc = html.escape
    parts: list[str] = []

    # --- input and prediction ---------------------------------------------------------------
    input_uri = _save_pil(_upscale(img, 224), fig_dir / "input.png")
    prob_uri = _save_fig(probability_figure(trace), fig_dir / "probabilities.png")
    top = trace.top_k(3)
    parts.append(
        f'<h2 id="input">Input and prediction</h2><div class="figs">'
        f'<figure><img class="pixel" src="{input_uri}" alt="input image" width="224">'
        f"<figcaption>input, {_shape(trace.input_shape)} (channels x height x width)"
        f"{' from ' + esc(source) if source else ''}</figcaption></figure>"
        f'<figure id="probabilities"><img src="{prob_uri}" alt="output probabilities">'
        + (
            "<figcaption>output layer -> one sigmoid per label: each label's own probability"
            if trace.multilabel
            else "<figcaption>output layer -> softmax: one probability per class, summing to 1"
        )
        + "</figcaption></figure></div>"
        f'<p class="lead">Predicted <b>{esc(top[0][1])}</b> with probability {top[0][2]:.3f}. '
        + ", ".join(f"{esc(n)} {p:.3f}" for _, n, p in top[1:])
        + "</p>"
        + notice
    )

    # --- CAMs --------------------------------------------------------------------------------
    if cams is not None and cams.maps:
        cam_uri = _save_fig(cam_figure(img, cams, trace), fig_dir / "cams.png")
        parts.append(
            '<h2 id="cams">Where the model looks</h2>'
            f'<p class="muted">Class activation maps on <code>{esc(cams.target_layer)}</code> '
            f"(feature maps {_shape(cams.target_shape)}), upsampled to the input and laid over it "
            "(red = most important, blue = least). Grad-CAM weighs each feature map A<sub>k</sub> "
            "by the average gradient of the class score: ReLU(&Sigma;<sub>k</sub> "
            "mean(&part;y<sub>c</sub>/&part;A<sub>k</sub>) A<sub>k</sub>). "
            "The gradient saliency is "
            "|&part;y<sub>c</sub>/&part;x| per input pixel. One row per top class; each map is "
            "scaled to [0, 1] on its own.</p>"
            f'<figure><img src="{cam_uri}" alt="class activation maps"></figure>'
            + why_cams_look_so(trace, cams, model_name)
        )

    # --- first-layer filters -----------------------------------------------------------------
    parts.append(_filters_section(trace, fig_dir))
    parts.append(_feature_maps_section(trace, fig_dir))

    # --- flattening and fully connected ------------------------------------------------------
    vectors = [layer for layer in trace.layers if layer.vector is not None]
    if trace.flatten_length is not None:
        last_map = [layer for layer in trace.layers if layer.is_spatial]
        frm = f" from {_shape(last_map[-1].output_shape)} maps" if last_map else ""
        parts.append(
            '<h2 id="flatten">Flattening</h2>'
            f'<p class="lead">The feature maps{frm} become one vector of '
            f"<b>{trace.flatten_length:,}</b> numbers, the input of the fully connected layers.</p>"
        )
    if vectors:
        vec_uri = _save_fig(vector_figure(vectors), fig_dir / "fully_connected.png")
        parts.append(
            '<h2 id="fully-connected">Fully connected activations</h2>'
            '<p class="muted">Every value of each vector layer (blue >= 0, red < 0); the last '
            "panel is the output layer's scores (logits) before the softmax.</p>"
            f'<figure><img src="{vec_uri}" alt="fully connected activations"></figure>'
        )

    # --- all layers --------------------------------------------------------------------------
    parts.append(_layers_section(trace))

    heading = title or "What the network sees"
    sub = ", ".join(x for x in (model_name, source) if x)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(heading)}</title>
<style>{REPORT_CSS}{EXTRA_CSS}</style></head><body>
<h1>{esc(heading)}</h1>
<p class="muted">{esc(sub) + ". " if sub else ""}{len(trace.layers)} layers traced on one image.
Sections: <a href="#input">input</a> &middot; <a href="#cams">where it looks</a> &middot;
<a href="#filters">filters</a> &middot; <a href="#feature-maps">feature maps</a> &middot;
<a href="#flatten">flattening</a> &middot; <a href="#fully-connected">fully connected</a> &middot;
<a href="#layers">all layers</a></p>
{"".join(parts)}
<p class="muted">Written by cnnlab. Opens offline: everything is in this file.</p>
</body></html>"""
    path = out / "explain.html"
    path.write_text(page, encoding="utf-8")
    return path


def page_numbers(trace: Trace, cams: CamSet | None) -> dict[str, Any]:
    """The ``--json`` view: the trace's numbers plus where each CAM peaks."""
    d: dict[str, Any] = {"trace": trace.to_dict()}
    if cams is not None:
        d["cams"] = cams.to_dict()
    return d


def explain_image(
    run_or_checkpoint: str | Path,
    image_path: str | Path,
    *,
    out_dir: str | Path | None = None,
    top_k: int = 3,
    methods: tuple[str, ...] | list[str] = ("gradcam", "gradcam++"),
    saliency: bool = True,
    target_layer: str | None = None,
    device: str = "cpu",
    label_thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Trace one image through a trained model, compute CAMs for its top-k classes, write the page.

    A multi-label run (its checkpoint says ``multilabel``): the probabilities are each label's
    sigmoid, and the CAMs are those of every label at or above its threshold
    (``label_thresholds`` {label: threshold}, the run's thresholds.json; 0.5 where not given),
    or of the most probable label when none is; the result's ``labels`` lists them.

    The image is decoded with the checkpoint's own preprocessing (the one decoding policy) and
    normalised ``(x / 255 - mean) / std``. ``out_dir`` defaults to ``<run dir>/explain/<image
    stem>`` (next to the checkpoint file when a ``.safetensors`` file is given). Writes
    ``explain.html``, ``explain.json`` and ``figures/*.png``. Returns ``{"html", "json",
    "figures", "prediction", "top", "trace", "cams"}`` (paths as strings, numbers JSON-able).
    """
    import torch

    from cnnlab.config import PreprocessSpec
    from cnnlab.data.tensors import load_file
    from cnnlab.engine.devices import resolve_device
    from cnnlab.engine.weights import load_checkpoint_model
    from cnnlab.explain.cam import check_methods, explain_classes
    from cnnlab.explain.trace import trace_image
    from cnnlab.models._base import check_positive_int
    from cnnlab.report.calibration_section import explain_notice
    from cnnlab.run import run_dir_of, write_json

    methods = check_methods(methods)
    top_k = check_positive_int(top_k, "--top-k")
    dev = resolve_device(device)
    model, meta, weights = load_checkpoint_model(run_or_checkpoint, dev)
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    image_path = Path(image_path)
    pixels = load_file(image_path, spec)  # (C, S, S) uint8; DataError names the file
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    x = ((torch.from_numpy(pixels.copy())[None].float() / 255 - mean) / std).to(dev)
    names = [str(c) for c in meta["class_names"]]

    trace = trace_image(model, x, class_names=names)
    checked = check_domain(model, x, run_dir_of(Path(weights)), Path(weights), names, top_k)
    classes = [i for i, _, _ in trace.top_k(top_k)]
    labels_html = ""
    if meta.get("multilabel"):  # a CAM for every label at or above its threshold
        trace, classes, predicted = as_multilabel(trace, label_thresholds)
        checked = checked | {"labels": predicted}
        labels_html = (
            "<p>Labels predicted (probability &ge; the label's threshold): "
            + (
                ", ".join(
                    f"<b>{html.escape(p['label'])}</b> {p['probability']:.3f} (&ge; "
                    f"{p['threshold']:.3g})"
                    for p in predicted
                )
                or "none; the map shows the most probable label"
            )
            + "</p>"
        )
    cams = explain_classes(
        model,
        x,
        classes,
        methods=methods,
        saliency=saliency,
        target_layer=target_layer,
        class_names=names,
    )
    out_dir = explain_dir(out_dir, run_or_checkpoint, Path(weights), image_path)
    html_path = write_explain_page(
        trace,
        cams,
        out_dir,
        pixels,
        title=f"What {meta['model']} sees in {image_path.name}",
        source=str(image_path),
        model_name=str(meta["model"]),
        notice=labels_html + explain_notice(checked),
    )
    numbers = page_numbers(trace, cams) | checked
    json_path = Path(out_dir) / "explain.json"
    write_json(json_path, numbers | {"image": recorded_image(image_path), "model": meta["model"]})
    top = trace.top_k(top_k)
    log.info("explain page for %s written to %s", image_path, html_path)
    return {
        "html": str(html_path),
        "json": str(json_path),
        "figures": sorted(str(p) for p in (Path(out_dir) / "figures").glob("*.png")),
        "prediction": top[0][1],
        "top": [{"class": n, "index": i, "probability": p} for i, n, p in top],
        "trace": numbers["trace"],
        "cams": numbers.get("cams"),
        **checked,  # "out_of_domain", "calibrated_top", "temperature" for a calibrated run
    }


def recorded_image(image_path: str | Path) -> str:
    """The image as explain.json records it: its absolute path, links resolved. A path as given
    (``x.png``) named another file once explain ran from another folder, so the same image got a
    second page ``<stem>-2`` (:func:`default_explain_dir` compares these). The page and the log
    show the path as given."""
    return str(Path(image_path).resolve())


#: what explain writes into its folder: the page, its numbers, and figures/ (cnnlab's as a whole)
EXPLAIN_OUTPUTS = ["explain.html", "explain.json", "figures/"]


def explain_dir(
    out_dir: str | Path | None, run_or_checkpoint: str | Path, weights: Path, image_path: Path
) -> Path:
    """The folder explain writes into, claimed (:func:`cnnlab.run.claim_outputs`: a page or
    figures/ already there that cnnlab did not write is refused before anything is written):
    ``out_dir``, else :func:`default_explain_dir` beside the run or checkpoint."""
    from cnnlab.run import claim_outputs

    default = out_dir is None
    if out_dir is None:
        base = Path(run_or_checkpoint)
        base = base if base.is_dir() else weights.parent
        out_dir = default_explain_dir(base, image_path)
    # a page of this image from before the folder's record was kept: cnnlab's own, replaced
    adopt = default and (Path(out_dir) / "explain.json").is_file()
    return claim_outputs(out_dir, EXPLAIN_OUTPUTS, command="explain", default=default, adopt=adopt)


def default_explain_dir(base: Path, image_path: Path) -> Path:
    """``base/explain/<image stem>``, or ``<stem>-2``, ``-3``, ... when that folder explains
    another image (its ``explain.json`` records the image's path): `cat/001.png` and then
    `dog/001.png` once shared `explain/001/`, the second page replacing the first. The same
    image explained again reuses its folder, from whatever working directory. A record from
    before the path was absolute holds it as given: resolved from the working directory now,
    the only guess left."""
    image = Path(recorded_image(image_path))
    folder, n = base / "explain" / image_path.stem, 1
    while True:
        record = folder / "explain.json"
        try:
            explained = json.loads(record.read_text()).get("image") if record.is_file() else None
        except (OSError, ValueError, AttributeError):  # unreadable: a folder someone else made
            explained = ""
        if explained is None or (explained and Path(explained).resolve() == image):
            return folder
        n += 1
        folder = base / "explain" / f"{image_path.stem}-{n}"


def as_multilabel(
    trace: Trace, thresholds: dict[str, float] | None
) -> tuple[Trace, list[int], list[dict[str, Any]]]:
    """(the trace with sigmoid probabilities, the label indices to explain, the predicted labels
    as {"label", "probability", "threshold"}, most probable first)."""
    probs = trace.logits.sigmoid()
    names = trace.class_names
    thr = [float((thresholds or {}).get(n, 0.5)) for n in names]
    order = [int(i) for i in probs.argsort(descending=True)]
    above = [i for i in order if float(probs[i]) >= thr[i]]
    predicted = [
        {"label": names[i], "probability": float(probs[i]), "threshold": thr[i]} for i in above
    ]
    return dataclasses.replace(trace, probs=probs, multilabel=True), above or order[:1], predicted


def check_domain(
    model: Any, x: Any, run_dir: Path | None, weights: Path, names: list[str], top_k: int
) -> dict[str, Any]:
    """The run's out-of-domain verdict and calibrated top-k for one normalised image ``x``
    (1, C, S, S); {} for a run without calibration.json (cnnlab.engine.calibration)."""
    import torch

    from cnnlab.engine.calibration import load_calibration

    calibration = load_calibration(run_dir, weights)
    if calibration is None:
        return {}
    with torch.no_grad():
        logits = model(x).float().cpu().numpy().astype(np.float64)
    probs = calibration.probs(logits)[0]
    order = np.argsort(-probs, kind="stable")[:top_k]
    checked: dict[str, Any] = {
        "temperature": calibration.temperature,
        "calibrated_top": [
            {"class": names[i], "index": int(i), "probability": float(probs[i])} for i in order
        ],
    }
    if calibration.threshold is not None:
        score = float(calibration.ood_scores(logits)[0])
        checked["out_of_domain"] = calibration.verdict(score) | {
            "false_alarm_rate_test": calibration.describe()["false_alarm_rate_test"]
        }
    return checked


# -- segmentation and detection ------------------------------------------------------------------
EXPLAINED_TASKS = ("classification", "segmentation", "detection")
MAX_LISTED_BOXES = 10  # boxes named in the page's lead sentence


def _html_page(heading: str, sub: str, traced: str, nav: list[tuple[str, str]], body: str) -> str:
    esc = html.escape
    links = " &middot; ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(heading)}</title>
<style>{REPORT_CSS}{EXTRA_CSS}</style></head><body>
<h1>{esc(heading)}</h1>
<p class="muted">{esc(sub) + ". " if sub else ""}{traced}.
Sections: {links}</p>
{body}
<p class="muted">Written by cnnlab. Opens offline: everything is in this file.</p>
</body></html>"""


MAX_HEAD_GRIDS = 8  # decoder/head feature-map grids on a segmentation page


def _head_layers(trace: Trace, backbone: str) -> list[LayerTrace]:
    """A segmentation network's layers after its encoder (``backbone``: the encoder's module path)
    that get a grid: every ReLU output (the end of each conv-BN-ReLU) and the last layer (one
    score map per class), the last few only."""
    after = [
        layer
        for layer in trace.layers
        if layer.is_spatial and layer.maps is not None and not layer.name.startswith(backbone + ".")
    ]
    if not after:
        return []
    chosen = [layer for layer in after[:-1] if layer.kind == "ReLU"]
    return [*chosen[-(MAX_HEAD_GRIDS - 1) :], after[-1]]


def _swatch(rgb: Any) -> str:
    r, g, b = (int(v) for v in rgb)
    return (
        f'<span style="display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;'
        f'border:1px solid #888;background:rgb({r},{g},{b})"></span>'
    )


def _outline(region: np.ndarray) -> np.ndarray:
    """(H, W) bool -> its boundary pixels (a pixel of the region with a 4-neighbour outside it)."""
    r = np.pad(region, 1)
    inner = r[1:-1, 1:-1] & r[:-2, 1:-1] & r[2:, 1:-1] & r[1:-1, :-2] & r[1:-1, 2:]
    return region & ~inner


def _draw_box(ax: Any, box: Any, color: str = "white") -> None:
    x0, y0, x1, y1 = (float(v) - 0.5 for v in box)  # imshow puts pixel i's centre at i
    ax.add_patch(
        matplotlib.patches.Rectangle(
            (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5
        )
    )


@styled
def dense_cam_figure(image_hwc: np.ndarray, cams: Any, regions: list[np.ndarray] | None) -> Any:
    """One row per target (class of the mask, or detected box): the input with the target marked
    (the class's predicted region outlined, or the box), then one overlay per CAM method."""
    methods = list(cams.methods)
    rows, cols = len(cams.targets), 1 + len(methods)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.2 * rows), squeeze=False)
    for r, target in enumerate(cams.targets):
        marked = image_hwc.copy()
        if regions is not None:
            marked[_outline(regions[r])] = (255, 255, 255)
        axes[r, 0].imshow(marked, interpolation="nearest")
        label = (
            f"{target['class']}\n{100 * target['area']:.1f}% of pixels"
            if "area" in target
            else f"{target['class']}\nscore {target['score']:.3f}"
        )
        axes[r, 0].set_ylabel(label)
        for j, method in enumerate(methods, start=1):
            heat = cams.maps[method][r]
            axes[r, j].imshow(overlay(image_hwc, heat), interpolation="nearest")
            if not heat.any():  # ReLU of a gradient-weighted sum with no positive evidence
                axes[r, j].text(
                    0.5, 0.5, "all zero", transform=axes[r, j].transAxes, ha="center",
                    va="center", color="white", fontsize=SMALL + 1,
                )  # fmt: skip
            if r == 0:
                axes[r, j].set_title(METHOD_TITLES.get(method, method))
        for ax in axes[r]:
            if "box" in target:
                _draw_box(ax, target["box"])
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input and target")
    fig.tight_layout()
    return fig


def write_dense_page(
    trace: Trace,
    cams: Any,
    out_dir: str | Path,
    image_uint8: np.ndarray,
    prediction_rgb: np.ndarray,
    *,
    task: str,
    lead: str,
    regions: list[np.ndarray] | None = None,
    backbone: str = "",
    title: str | None = None,
    source: str | None = None,
    model_name: str | None = None,
) -> Path:
    """``explain.html`` for a segmentation or detection run: input and prediction (mask overlay or
    boxes, ``prediction_rgb (H, W, 3)``), one CAM row per class or box (``cams``: a
    :class:`cnnlab.explain.dense.DenseCams`), filters, feature maps, every layer. ``lead``: HTML."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    img = _hwc(image_uint8)
    esc = html.escape
    input_uri = _save_pil(_upscale(img, 224), fig_dir / "input.png")
    name = "mask_overlay.png" if task == "segmentation" else "boxes.png"
    pred_uri = _save_pil(Image.fromarray(prediction_rgb), fig_dir / name)
    what = "predicted mask over the input (the run's palette)" if task == "segmentation" else (
        "predicted boxes with class and score"
    )  # fmt: skip
    parts = [
        '<h2 id="input">Input and prediction</h2><div class="figs">'
        f'<figure><img class="pixel" src="{input_uri}" alt="input image" width="224">'
        f"<figcaption>input, {_shape(trace.input_shape)} (channels x height x width)"
        f"{' from ' + esc(source) if source else ''}</figcaption></figure>"
        f'<figure><img class="pixel" src="{pred_uri}" alt="prediction" width="224">'
        f"<figcaption>{what}</figcaption></figure></div>"
        f'<p class="lead">{lead}</p>'
    ]
    if cams is not None and cams.targets:
        cam_uri = _save_fig(dense_cam_figure(img, cams, regions), fig_dir / "cams.png")
        target = (
            "the class's logits summed over the pixels predicted as that class (pytorch-grad-cam's "
            "SemanticSegmentationTarget); one row per predicted class, largest area first, its "
            "region outlined in white"
            if task == "segmentation"
            else "the score of the box (pytorch-grad-cam's FasterRCNNBoxScoreTarget: the output "
            "box of the same class overlapping it most, score + IoU); one row per detected box, "
            "best first. Eigen-CAM, if shown, is the same map for every box"
        )
        parts.append(
            '<h2 id="cams">Where the model looks</h2>'
            f'<p class="muted">Class activation maps on the backbone stage '
            f"<code>{esc(cams.target_layer)}</code> (feature maps {_shape(cams.target_shape)}), "
            "upsampled to the input and laid over it (red = most important, blue = least). The "
            f"target is {target}. Each map is scaled to [0, 1] on its own.</p>"
            f'<figure><img src="{cam_uri}" alt="class activation maps"></figure>'
        )
    else:
        parts.append(
            '<h2 id="cams">Where the model looks</h2><p class="muted">Nothing was predicted, '
            "so there is no class or box to explain.</p>"
        )
    parts += [
        _filters_section(trace, fig_dir),
        _feature_maps_section(
            trace, fig_dir, _head_layers(trace, backbone) if task == "segmentation" else None
        ),
        _layers_section(trace),
    ]
    nav = [
        ("input", "input"),
        ("cams", "where it looks"),
        ("filters", "filters"),
        ("feature-maps", "feature maps"),
        ("layers", "all layers"),
    ]
    heading = title or "What the network sees"
    sub = ", ".join(x for x in (model_name, source) if x)
    path = out / "explain.html"
    traced = (
        f"{len(trace.layers)} layers of the whole network traced on one image"
        if task == "segmentation"
        else f"{len(trace.layers)} layers of the detector's backbone "
        f"(<code>{esc(backbone)}</code>) traced on one image"
    )
    path.write_text(_html_page(heading, sub, traced, nav, "".join(parts)), "utf-8")
    return path


def _load_input(
    image_path: Path, meta: dict[str, Any], dev: Any
) -> tuple[np.ndarray, Any, tuple[int, int]]:
    """(pixels (C, S, S) uint8 by the checkpoint's preprocessing, normalised (1, C, S, S), the
    image's own (width, height)), decoded as the tasks' predict decodes it (no draft: the size is
    the image's, for mapping a mask back to it)."""
    import torch

    from cnnlab.config import PreprocessSpec
    from cnnlab.data.decode import DEFAULT_MAX_PIXELS, load_image
    from cnnlab.data.tensors import image_mode, pil_to_chw

    spec = PreprocessSpec.from_dict(meta["preprocess"])
    max_pixels = int(spec.decode.get("max_pixels", DEFAULT_MAX_PIXELS))
    # DataError names the file
    im = load_image(image_path, mode=image_mode(spec.in_channels), max_pixels=max_pixels)
    pixels = pil_to_chw(im, spec)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    x = ((torch.from_numpy(pixels.copy())[None].float() / 255 - mean) / std).to(dev)
    return pixels, x, (im.width, im.height)


def explain_dense_image(
    task: str,
    loaded: tuple[Any, dict[str, Any], Path],
    run_or_checkpoint: str | Path,
    image_path: str | Path,
    *,
    out_dir: str | Path | None = None,
    top_k: int = 3,
    methods: tuple[str, ...] | list[str] = ("gradcam", "gradcam++"),
    score_threshold: float | None = None,
    target_layer: str | None = None,
) -> dict[str, Any]:
    """The explain page of a segmentation or detection run (``loaded``: the task's ``(model in
    eval mode on its device, checkpoint metadata, weights path)``).

    Segmentation: the trace of the whole network (encoder stages, decoder, head), the predicted
    mask, and CAMs for the ``top_k`` predicted classes by area; mask and areas cover the image's
    own pixels, as ``segment predict`` writes them (the fit mode's padding is no part of it).
    Detection: the trace of the zoo backbone, the boxes scoring at least ``score_threshold``
    (default: the run's), and CAMs for the ``top_k`` best boxes. Writes ``explain.html``,
    ``explain.json`` (trace rows, prediction, CAM entries with their ``map`` (H x W) and
    ``layer_map`` (h x w) in [0, 1]) and figures.
    """
    import torch

    from cnnlab.data.masks import image_region, logits_to_image_mask
    from cnnlab.explain.cam import check_methods
    from cnnlab.explain.dense import backbone_path, detection_cams, segmentation_cams
    from cnnlab.explain.trace import trace_image
    from cnnlab.models._base import check_positive_int
    from cnnlab.report.segmentation_report import colorize
    from cnnlab.report.segmentation_report import overlay as mask_overlay
    from cnnlab.run import write_json

    if task not in ("segmentation", "detection"):
        raise ConfigError(
            f"explain covers {', '.join(EXPLAINED_TASKS)} runs; {run_or_checkpoint} is a {task} run"
        )
    methods = check_methods(methods)
    top_k = check_positive_int(top_k, "--top-k")
    model, meta, weights = loaded
    dev = next(model.parameters()).device
    image_path = Path(image_path)
    pixels, x, (width, height) = _load_input(image_path, meta, dev)
    img = _hwc(pixels)
    names = [str(c) for c in meta["class_names"]]
    esc = html.escape
    backbone = backbone_path(model)
    regions: list[np.ndarray] | None = None
    if task == "segmentation":
        trace = trace_image(model, x, classifier=False, stages_of=backbone)
        ignore = int(meta.get("ignore_index", 255))
        resize = str(meta["preprocess"].get("resize", "fit"))
        with torch.inference_mode():
            logits = model(x)[0].float()  # K x S x S
        # the image's own pixels only, as `segment predict` writes its mask: the fit padding is
        # no part of the image (it took the areas from 71.7% to 77.7% on a 40 x 30 image)
        image_mask = logits_to_image_mask(logits, width, height, resize, ignore)  # H x W
        inside = image_region(width, height, logits.shape[-1], resize)  # S x S
        mask = logits.argmax(0).to(torch.uint8).cpu().numpy()  # S x S, the CAM targets' space
        mask[~inside] = ignore  # padding: no class's target, left unpainted
        palette = np.asarray(meta.get("palette") or [], dtype=np.uint8).reshape(-1, 3)
        seen = image_mask[image_mask != ignore]  # crop: the margins the model never saw are out
        areas = np.bincount(seen.ravel(), minlength=len(names))[: len(names)]
        total = max(int(seen.size), 1)
        present = [int(c) for c in np.argsort(-areas, kind="stable") if areas[c] > 0]
        chosen = present[:top_k]
        cams = segmentation_cams(
            model, x, mask, chosen, methods=methods, stage=target_layer, class_names=names,
            ignore_index=ignore,
        )  # fmt: skip
        for target in cams.targets:  # the image's areas, as the lead and predict say them
            target["area"] = round(float(areas[target["index"]] / total), 6)
        regions = [mask == c for c in chosen]
        colours = colorize(mask, palette, ignore)
        colours[~inside] = 0  # black: overlay leaves the padding as it is
        prediction_rgb = np.asarray(_upscale(mask_overlay(img, colours), 224))
        prediction: dict[str, Any] = {
            "mask": image_mask.tolist(),
            "mask_size": [width, height],  # the image's (width, height), as predict's mask PNG
            "classes": [
                {"class": names[c], "index": c, "area": round(float(areas[c] / total), 6)}
                for c in present
            ],
        }
        lut = np.full((len(names), 3), 128, np.uint8)  # colorize's grey for classes off it
        lut[: min(len(palette), len(names))] = palette[: len(names)]
        lead = "Predicted classes by share of the pixels: " + ", ".join(
            f"{_swatch(lut[c])} <b>{esc(names[c])}</b> {100 * areas[c] / total:.1f}%"
            for c in present
        )
        if len(palette) and not palette[0].any():
            lead += " (black in the palette is left unpainted)"
    else:
        trace = trace_image(model.get_submodule(backbone), x, classifier=False)
        threshold = score_threshold_of(meta.get("score_threshold"), score_threshold)
        with torch.inference_mode():
            pred = model(x)[0]
        keep = pred["scores"] >= threshold
        boxes = pred["boxes"][keep].float().cpu().numpy()
        labels = pred["labels"][keep].cpu().tolist()
        scores = pred["scores"][keep].float().cpu().tolist()
        cams = detection_cams(
            model,
            x,
            boxes[:top_k],
            labels[:top_k],
            scores[:top_k],
            methods=methods,
            stage=target_layer,
            class_names=names,
        )
        # labels on the explained boxes only: dozens of captions would hide the picture
        captions = [
            f"{names[k]} {s:.2f}" if i < top_k else ""
            for i, (k, s) in enumerate(zip(labels, scores, strict=True))
        ]
        prediction_rgb = _boxes_image(img, boxes, captions)
        prediction = {
            "score_threshold": threshold,
            # boxes as the model saw the image: after the run's resize to S x S
            "coordinates": f"x0, y0, x1, y1 in pixels of the {_shape(trace.input_shape[1:])} input",
            "boxes": [
                {
                    "class": names[k],
                    "index": k,
                    "box": [round(float(v), 2) for v in b],
                    "score": round(float(s), 5),
                }
                for b, k, s in zip(boxes, labels, scores, strict=True)
            ],  # fmt: skip
        }
        found = ", ".join(
            f"<b>{esc(names[k])}</b> {s:.3f}"
            for k, s in list(zip(labels, scores, strict=True))[:MAX_LISTED_BOXES]
        ) + (f" and {len(boxes) - MAX_LISTED_BOXES} more" if len(boxes) > MAX_LISTED_BOXES else "")
        plural = "es" if len(boxes) != 1 else ""
        lead = f"{len(boxes)} box{plural} scoring at least {threshold:g}" + (
            f": {found}" if found else "."
        )
    out_dir = explain_dir(out_dir, run_or_checkpoint, Path(weights), image_path)
    html_path = write_dense_page(
        trace,
        cams,
        out_dir,
        pixels,
        prediction_rgb,
        task=task,
        lead=lead,
        regions=regions,
        backbone=backbone,
        title=f"What {meta['model']} sees in {image_path.name}",
        source=str(image_path),
        model_name=f"{task}: {meta['model']}",
    )
    numbers = {"trace": trace.to_dict(), "prediction": prediction, "cams": cams.to_dict()}
    json_path = Path(out_dir) / "explain.json"
    write_json(
        json_path,
        numbers | {"task": task, "image": recorded_image(image_path), "model": meta["model"]},
    )
    log.info("explain page for %s written to %s", image_path, html_path)
    return {
        "html": str(html_path),
        "json": str(json_path),
        "figures": sorted(str(p) for p in (Path(out_dir) / "figures").glob("*.png")),
        "task": task,
        "prediction": prediction,
        "trace": numbers["trace"],
        "cams": numbers["cams"],
    }


def _boxes_image(
    img: np.ndarray, boxes: np.ndarray, labels: list[str], size: int = 320
) -> np.ndarray:
    """The input enlarged to about ``size`` px with the boxes (input pixels) drawn on it."""
    import torch
    from torchvision.utils import draw_bounding_boxes

    big = _upscale(img, size)
    f = big.width / img.shape[1]
    rgb = torch.from_numpy(np.asarray(big).copy()).permute(2, 0, 1)
    if len(boxes):
        rgb = draw_bounding_boxes(
            rgb,
            torch.as_tensor(boxes * f).reshape(-1, 4),
            labels=labels,
            # the explained (labelled) boxes in red, the others pale
            colors=["red" if label else "#f4a6a6" for label in labels],
            width=2,
        )
    return rgb.permute(1, 2, 0).numpy()
