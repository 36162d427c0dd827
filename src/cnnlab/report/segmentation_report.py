"""The segmentation report: one self-contained HTML page (figures as PNG data URIs) plus the PNGs.

Per-class table (IoU, Dice, precision, recall, pixels), the pixel confusion matrix, training curves,
and the best and worst test images as image / truth / prediction overlays. Drawing only: the numbers
come from :mod:`cnnlab.metrics.segmentation`.
"""

from __future__ import annotations

import base64
import html
import io
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cnnlab.report.header import run_header_html
from cnnlab.report.html import CSS, collect_figures, drawn_now, format_value, log_report_time

SEG_CSS = """
.pair{display:flex;gap:.3rem}.pair figure{margin:0;width:auto}.pair img{width:160px;
image-rendering:pixelated;border:1px solid #ddd}.cases{display:flex;flex-wrap:wrap;gap:1.2rem}
.case{font-size:.75rem}.swatch{display:inline-block;width:.9rem;height:.9rem;vertical-align:middle;
border:1px solid #999;margin-right:.3rem}.key{margin-right:.8rem;white-space:nowrap}
"""


def with_interval(value: Any, interval: dict[str, Any] | None) -> str:
    """HTML of a metric and its recorded 95% interval, "0.712 [0.690, 0.733]"; the value alone
    (format_value) when there is no interval."""
    if value is None or not interval or interval.get("low") is None or interval.get("high") is None:
        return format_value(value)
    return f"{float(value):.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def interval_note(metrics: dict[str, Any], what: str) -> str:
    """One sentence saying how the intervals were made (empty when none were recorded)."""
    ci = metrics.get("confidence_intervals")
    if not ci:
        return ""
    return (
        f'<p class="muted">[low, high]: 95% percentile-bootstrap interval over the test images '
        f"({ci.get('n_boot')} resamples of whole images, seed {ci.get('seed')}): how much {what} "
        "could move with another test set of the same size.</p>"
    )


def colorize(mask: np.ndarray, palette: Any, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; ignore pixels white, unknown ones grey."""
    pal = np.asarray(palette if palette is not None and len(palette) else [[0, 0, 0]], np.uint8)
    lut = np.full((256, 3), 128, dtype=np.uint8)
    lut[: len(pal)] = pal.reshape(-1, 3)[:256]
    lut[ignore_index] = (255, 255, 255)
    return lut[mask.astype(np.uint8)]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend (H, W, 3) colours over an (H, W, 3) or (H, W, 1) uint8 image where the colour is not
    black (black = background in the VOC palette, left untouched so the picture stays visible)."""
    img = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
    paint = colours.any(-1, keepdims=True)
    mixed = (1 - alpha) * img.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.where(paint, mixed, img).round().astype(np.uint8)


def png_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _case(
    img_chw: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    palette: Any,
    ignore: int,
    caption: str,
) -> str:
    img = img_chw.transpose(1, 2, 0)
    cells = [
        ("image", img if img.shape[-1] == 3 else np.repeat(img, 3, -1)),
        ("truth", overlay(img, colorize(truth, palette, ignore))),
        ("prediction", overlay(img, colorize(pred, palette, ignore))),
    ]
    figs = "".join(
        f'<figure><img src="{png_uri(a)}" alt="{t}"><figcaption>{t}</figcaption></figure>'
        for t, a in cells
    )
    return f'<div class="case"><div class="pair">{figs}</div>{caption}</div>'


CONFUSION = "pixel confusion matrix (row-normalised: recall on the diagonal)"


def segmentation_figures(
    renderer: Any,
    metrics: dict[str, Any],
    class_names: list[str],
    run_dir: Path | None = None,
) -> dict[str, tuple[str, Future]]:
    """Submit the segmentation report's figures: {caption: (file name, future PNG bytes)} in
    the page's order (`renderer` None: drawn here and now). Everything they need is known once
    the pixel confusion matrix is: the evaluation submits them then, and they are drawn while
    it computes the bootstrap intervals and writes the per-image table."""
    submit = renderer.submit if renderer is not None else drawn_now
    cm = np.asarray(metrics["confusion_matrix"])
    jobs = {
        CONFUSION: ("confusion_matrix_normalized.png", submit("confusion", cm, class_names, True))
    }
    if run_dir:  # no figure when metrics.csv is missing or empty
        jobs["training curves"] = (
            "training_curves.png", submit("curves", Path(run_dir) / "metrics.csv")
        )  # fmt: skip
    return jobs


def write_segmentation_report(
    out: Path,
    metrics: dict[str, Any],
    *,
    images: np.ndarray,
    masks: np.ndarray,
    preds: np.ndarray,
    ids: list[str],
    scores: np.ndarray,
    class_names: list[str],
    palette: Any = None,
    ignore_index: int = 255,
    run_dir: Path | None = None,
    show: int = 6,
    title: str | None = None,
    renderer: Any = None,
    figures: dict[str, tuple[str, Future]] | None = None,
) -> Path:
    """Write report.html (+ figures/*.png) into ``out``; returns the HTML path.

    images (N, C, S, S) uint8, masks / preds (N, S, S) uint8, scores (N,) per-image mean IoU.
    `renderer` (cnnlab.report.render): where the figures are drawn, in this process by default;
    `figures`: what :func:`segmentation_figures` returned for these inputs, when the caller
    submitted them earlier (training's evaluation does, before its bootstrap intervals).
    """
    started = time.perf_counter()
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    if figures is None:
        figures = segmentation_figures(renderer, metrics, class_names, run_dir)
    figs, waited = collect_figures(figures, fig_dir)
    ci = metrics.get("confidence_intervals") or {}
    head = "".join(
        f"<tr><td>{label}</td><td>{with_interval(metrics.get(key), ci.get(key))}</td></tr>"
        for key, label in (
            ("mean_iou", "mean IoU"),
            ("mean_dice", "mean Dice"),
            ("pixel_accuracy", "pixel accuracy"),
            ("mean_accuracy", "mean class accuracy"),
            ("frequency_weighted_iou", "frequency-weighted IoU"),
        )
    )
    pal = np.asarray(palette if palette else [[0, 0, 0]] * len(class_names), dtype=np.uint8)
    class_ci = ci.get("per_class") or {}  # {name: {"iou": {...}, "dice": {...}}}
    cols = ("iou", "dice", "precision", "recall", "support", "predicted")
    rows = "".join(
        f'<tr><td><span class="swatch" style="background:rgb{tuple(int(c) for c in pal[k])}">'
        f"</span>{html.escape(n)}</td>"
        + "".join(
            f"<td>{with_interval(metrics['per_class'][n].get(c), class_ci.get(n, {}).get(c))}</td>"
            for c in cols
        )
        + "</tr>"
        for k, n in enumerate(class_names)
        if k < len(pal)
    )
    legend = "".join(
        f'<span class="key"><span class="swatch" style="background:rgb'
        f'{tuple(int(c) for c in pal[k])}"></span>{html.escape(n)}</span>'
        for k, n in enumerate(class_names)
        if k < len(pal)
    )
    galleries = ""
    ranked = [i for i in np.argsort(scores, kind="stable") if not np.isnan(scores[i])]
    if len(ranked) and images is not None:
        k = min(show, (len(ranked) + 1) // 2)
        for label, chosen in (
            ("Best test images", ranked[::-1][:k]),
            ("Worst test images", ranked[:k]),
        ):
            cases = "".join(
                _case(
                    images[i],
                    masks[i],
                    preds[i],
                    pal,
                    ignore_index,
                    f"{html.escape(ids[i])}: mean IoU {scores[i]:.3f}",
                )
                for i in chosen
            )
            galleries += f"<h2>{label}</h2><div class=cases>{cases}</div>"
        galleries = (
            '<p class="muted">Truth and prediction are painted over the image in the class '
            f"colours (black is left unpainted; pixels marked {ignore_index} are white): "
            f"{legend}</p>{galleries}"
        )
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in metrics.get("warnings", []))
    fig_html = "".join(
        f'<figure{" class=wide" if n == "training curves" else ""}><img src="{u}" '
        f'alt="{html.escape(n)}"><figcaption>'
        f"{html.escape(n)}</figcaption></figure>"
        for n, u in figs.items()
    )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title or "cnnlab segmentation report")}</title>
<style>{CSS}{SEG_CSS}</style></head><body>
<h1>{html.escape(title or "cnnlab segmentation report")}</h1>
{run_header_html(run_dir)}
<p class="muted">{metrics.get("num_images", len(ids))} test images, {metrics.get("num_pixels", 0):,}
labelled pixels at {metrics.get("image_size", "?")} px, {len(class_names)} classes (pixels marked
{ignore_index} are ignored). IoU = TP/(TP+FP+FN); Dice = 2TP/(2TP+FP+FN); pixel accuracy =
correct pixels / labelled pixels; frequency-weighted IoU weights each class's IoU by its pixel
share.</p>
<h2>Headline metrics</h2><table><tr><th>metric</th><th>value</th></tr>{head}</table>
{interval_note(metrics, "the mean IoU")}
<h2>Per class</h2><table><tr><th>class</th>{"".join(f"<th>{c}</th>" for c in cols)}</tr>
{rows}</table>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Figures</h2><div class="figs">{fig_html}</div>
{galleries}
<p class="muted">Written by cnnlab. Opens offline: everything is in this file.</p>
</body></html>"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    log_report_time("segmentation", started, waited, renderer)
    return path
