"""The detection report: one HTML page (figures as PNG data URIs) plus the PNGs.

Summary numbers (mAP@[.5:.95], mAP@0.5, AR@100, precision/recall at IoU 0.5), a per-class table,
precision-recall curves per class at IoU 0.5 (COCO's 101-point interpolated curves), training
curves, and test images with true boxes (green) and predicted boxes above the score threshold
(red, with label and score). Drawing only: the numbers come from :mod:`cnnlab.metrics.detection`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from cnnlab.report import use_file_backend

use_file_backend()  # files only; never a window (a notebook keeps its inline backend)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnnlab.report.html import CSS, curves_figure, format_value, png_figure  # noqa: E402
from cnnlab.report.segmentation_report import png_uri  # noqa: E402


def pr_curves_figure(metrics: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, curve in metrics.get("pr_curves", {}).items():
        ap = metrics["per_class"][name]["ap_50"]
        ax.plot(curve["recall"], curve["precision"], lw=1.4,
                label=f"{name} (AP50 {ap:.3f})" if ap is not None else name)  # fmt: skip
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall per class, IoU 0.5")
    ax.legend(fontsize=7, loc="lower left")
    return fig


def draw_case(
    image: np.ndarray,
    truth: dict[str, torch.Tensor],
    pred: dict[str, torch.Tensor],
    class_names: list[str],
    score_threshold: float,
) -> np.ndarray:
    """(C, S, S) uint8 -> (S', S', 3) uint8 with true (green) and predicted (red) boxes, upscaled
    to at least 192 px so that labels stay legible."""
    from torchvision.utils import draw_bounding_boxes

    x = torch.as_tensor(image)
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    scale = max(1, 192 // x.shape[-1])
    x = x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    # Only non-empty box sets: torchvision warns on every call with none (background images,
    # an untrained model), and the warning reached the CLI's output.
    if len(truth["boxes"]):
        x = draw_bounding_boxes(x, truth["boxes"].float() * scale, colors="lime", width=1)
    keep = pred["scores"] >= score_threshold
    labels = [f"{class_names[int(k)]} {float(s):.2f}"
              for k, s in zip(pred["labels"][keep], pred["scores"][keep], strict=True)]  # fmt: skip
    if labels:
        x = draw_bounding_boxes(x, pred["boxes"][keep].float() * scale, labels=labels,
                                colors="red", width=2)  # fmt: skip
    return x.permute(1, 2, 0).numpy()


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
) -> Path:
    """Write ``report.html`` (+ pr_curves.png, curves.png, cases.png) into ``out_dir``."""
    out_dir = Path(out_dir)
    parts = [f"<html><head><meta charset='utf-8'><style>{CSS}</style></head><body>",
             "<h1>Detection report</h1><table>"]  # fmt: skip
    for key in ("map", "map_50", "map_75", "mar_100", "precision_50", "recall_50", "num_images",
                "num_objects"):  # fmt: skip
        parts.append(f"<tr><th>{key}</th><td>{format_value(metrics.get(key))}</td></tr>")
    parts.append("</table><h2>Per class</h2><table><tr><th>class</th><th>AP</th><th>AP50</th>"
                 "<th>AR100</th><th>precision</th><th>recall</th><th>TP</th><th>FP</th>"
                 "<th>FN</th></tr>")  # fmt: skip
    for name, row in metrics["per_class"].items():
        cells = "".join(
            f"<td>{format_value(row[k])}</td>"
            for k in ("ap", "ap_50", "ar_100", "precision", "recall", "tp", "fp", "fn")
        )
        parts.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    parts.append("</table><div class='figs'>")
    parts.append(f"<figure><img src='{png_figure(pr_curves_figure(metrics), out_dir / 'pr_curves.png')}'>"
                 "</figure>")  # fmt: skip
    if run_dir is not None and (Path(run_dir) / "metrics.csv").is_file():
        fig = curves_figure(Path(run_dir) / "metrics.csv")
        if fig is not None:
            parts.append(f"<figure><img src='{png_figure(fig, out_dir / 'curves.png')}'></figure>")
    parts.append("</div><h2>Test images</h2><p class='muted'>green: true boxes; red: predicted "
                 f"boxes with score &ge; {score_threshold}</p><div class='cases'>")  # fmt: skip
    for i in range(min(show, len(ids))):
        rgb = draw_case(images[i], targets[i], preds[i], class_names, score_threshold)
        parts.append(f"<figure class='case'><img src='{png_uri(rgb)}'><figcaption>"
                     f"{html.escape(str(ids[i]))}</figcaption></figure>")  # fmt: skip
    parts.append("</div></body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts))
    return path
