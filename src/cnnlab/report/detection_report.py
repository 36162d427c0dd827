"""The detection report: one HTML page (figures as PNG data URIs) plus the PNGs.

Summary numbers (mAP@[.5:.95], mAP@0.5, AR@100, precision/recall at IoU 0.5), a per-class table,
precision-recall curves per class at IoU 0.5 (COCO's 101-point interpolated curves), training
curves, and test images side by side: true boxes, and predicted boxes above the score threshold
(with class and score), one colour per class and a legend. Drawing only: the numbers come from
:mod:`cnnlab.metrics.detection`.
"""

from __future__ import annotations

import html
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.report.boxes import draw_boxes, enlarge
from cnnlab.report.header import run_header_html
from cnnlab.report.html import (
    CSS,
    collect_figures,
    detection_pr_figure,
    drawn_now,
    log_report_time,
)
from cnnlab.report.segmentation_report import interval_note, png_uri, with_interval
from cnnlab.report.style import class_colours

DET_CSS = """
.cases{display:flex;flex-direction:column;gap:1.2rem}.case{font-size:.8rem}
.pair{display:flex;gap:.5rem;flex-wrap:wrap}.pair figure{margin:0}.pair img{width:320px;
image-rendering:pixelated;border:1px solid #ddd}
.key{margin-right:.8rem;white-space:nowrap}.swatch{display:inline-block;width:.9rem;
height:.9rem;vertical-align:middle;border:1px solid #999;margin-right:.3rem}
"""


pr_curves_figure = detection_pr_figure  # the figure lives with the others a Renderer draws


def detection_figures(
    renderer: Any, metrics: dict[str, Any], run_dir: Path | None = None
) -> dict[str, tuple[str, Future]]:
    """Submit the detection report's figures: {"pr": ("pr_curves.png", future PNG bytes),
    "curves": ("curves.png", ...)} (curves only with a metrics.csv; `renderer` None: drawn
    here and now). Everything they need is known once the test metrics are: the evaluation
    submits them then, and they are drawn while it computes the bootstrap intervals."""
    submit = renderer.submit if renderer is not None else drawn_now
    # what the figure reads, copied: a worker's job is pickled later, in another thread, while
    # the evaluation goes on adding to ``metrics`` (its intervals)
    shown = {
        "pr_curves": dict(metrics.get("pr_curves", {})),
        "per_class": {n: {"ap_50": row.get("ap_50")} for n, row in metrics["per_class"].items()},
    }
    jobs = {"pr": ("pr_curves.png", submit("detection_pr", shown))}
    if run_dir is not None and (Path(run_dir) / "metrics.csv").is_file():
        jobs["curves"] = ("curves.png", submit("curves", Path(run_dir) / "metrics.csv"))
    return jobs


def draw_case(
    image: np.ndarray,
    truth: dict[str, torch.Tensor],
    pred: dict[str, torch.Tensor],
    class_names: list[str],
    score_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(C, S, S) uint8 -> (truth, prediction) pictures, (S', S', 3) uint8 each, enlarged to at
    least 320 px so that labels stay legible: true boxes labelled with their class, predicted
    boxes above ``score_threshold`` with class and score; one colour per class
    (:func:`cnnlab.report.style.class_colours`), the same in both pictures and the legend."""
    rgb = np.asarray(image).transpose(1, 2, 0)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    big, scale = enlarge(rgb, 320)
    palette = class_colours(len(class_names))
    true_labels = [int(k) for k in truth["labels"]]
    truth_rgb = draw_boxes(
        big,
        truth["boxes"].float().numpy().reshape(-1, 4) * scale,
        [class_names[k] for k in true_labels],
        [palette[k] for k in true_labels],
    )
    keep = (pred["scores"] >= score_threshold).numpy()
    kinds = [int(k) for k in pred["labels"][keep]]
    scores = [float(v) for v in pred["scores"][keep]]
    pred_rgb = draw_boxes(
        big,
        pred["boxes"][keep].float().numpy().reshape(-1, 4) * scale,
        [f"{class_names[k]} {v:.2f}" for k, v in zip(kinds, scores, strict=True)],
        [palette[k] for k in kinds],
    )
    return truth_rgb, pred_rgb


def legend_html(class_names: list[str]) -> str:
    """One swatch per class, in the colours of the pictures."""
    return "".join(
        f'<span class="key"><span class="swatch" style="background:rgb{tuple(c)}"></span>'
        f"{html.escape(n)}</span>"
        for n, c in zip(class_names, class_colours(len(class_names)), strict=True)
    )


def write_detection_report(
    out_dir: Path,
    metrics: dict[str, Any],
    *,
    images: np.ndarray,
    targets: list[dict[str, torch.Tensor]],
    preds: list[dict[str, torch.Tensor]],
    ids: list[str],
    class_names: list[str],
    score_threshold: float = 0.5,
    run_dir: Path | None = None,
    show: int = 6,
    renderer: Any = None,
    figures: dict[str, tuple[str, Future]] | None = None,
) -> Path:
    """Write ``report.html`` (+ pr_curves.png, curves.png, cases.png) into ``out_dir``.

    `renderer` (cnnlab.report.render): where the figures are drawn, in this process by default;
    `figures`: what :func:`detection_figures` returned for these inputs, when the caller
    submitted them earlier (training's evaluation does, before its bootstrap intervals)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if figures is None:
        figures = detection_figures(renderer, metrics, run_dir)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cnnlab "
             f"detection report</title><style>{CSS}{DET_CSS}</style></head><body>",
             "<h1>Detection report</h1>", run_header_html(run_dir), "<table>"]  # fmt: skip
    ci = metrics.get("confidence_intervals") or {}
    class_ci = ci.get("per_class") or {}
    for key in ("map", "map_50", "map_75", "mar_100", "precision_50", "recall_50", "num_images",
                "num_objects"):  # fmt: skip
        parts.append(
            f"<tr><th>{key}</th><td>{with_interval(metrics.get(key), ci.get(key))}</td></tr>"
        )
    parts.append("</table>" + interval_note(metrics, "mAP"))
    parts.append("<h2>Per class</h2><table><tr><th>class</th><th>AP</th><th>AP50</th>"
                 "<th>AR100</th><th>precision</th><th>recall</th><th>TP</th><th>FP</th>"
                 "<th>FN</th></tr>")  # fmt: skip
    for name, row in metrics["per_class"].items():
        cells = "".join(
            f"<td>{with_interval(row[k], class_ci.get(name, {}).get(k))}</td>"
            for k in ("ap", "ap_50", "ar_100", "precision", "recall", "tp", "fp", "fn")
        )
        parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    parts.append("</table><div class='figs'>")
    figs, waited = collect_figures(figures, out_dir)
    parts.append(f"<figure><img src='{figs['pr']}'></figure>")
    if "curves" in figs:
        parts.append(f"<figure class='wide'><img src='{figs['curves']}' alt='training curves'>"
                     "</figure>")  # fmt: skip
    parts.append(
        "</div><h2>Test images</h2><p class='muted'>Left: the true boxes; right: the predicted "
        f"boxes with score &ge; {score_threshold} (class and score). One colour per class: "
        f"{legend_html(class_names)}</p><div class='cases'>"
    )
    for i in range(min(show, len(ids))):
        truth_rgb, pred_rgb = draw_case(images[i], targets[i], preds[i], class_names,
                                        score_threshold)  # fmt: skip
        kept = int((preds[i]["scores"] >= score_threshold).sum())
        parts.append(
            f"<div class='case'><div class='pair'><figure><img src='{png_uri(truth_rgb)}' "
            f"alt='true boxes'><figcaption>truth: {len(targets[i]['boxes'])} boxes"
            f"</figcaption></figure><figure><img src='{png_uri(pred_rgb)}' alt='predicted "
            f"boxes'><figcaption>prediction: {kept} boxes</figcaption></figure></div>"
            f"{html.escape(str(ids[i]))}</div>"
        )
    parts.append("</div><p class='muted'>Written by cnnlab. Opens offline: everything is in "
                 "this file.</p></body></html>")  # fmt: skip
    path = out_dir / "report.html"
    path.write_text("\n".join(parts))
    log_report_time("detection", started, waited, renderer)
    return path
