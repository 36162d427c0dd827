"""The multi-label evaluation report: one self-contained HTML page (figures as PNG data URIs) plus
the PNGs: headline numbers, the averages, a table per label, each label's 2 x 2 confusion matrix
and its precision-recall curve with the operating point its threshold picks. Drawing only: the
numbers come from :mod:`cnnlab.metrics.multilabel` and :mod:`cnnlab.metrics.scores`."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab.metrics import scores as sc
from cnnlab.report.header import run_header_html
from cnnlab.report.html import CSS, curves_figure, figures_html, format_value, png_figure, pyplot
from cnnlab.report.style import styled

if TYPE_CHECKING:  # importing this module does not import matplotlib; drawing does
    import matplotlib.pyplot as plt

PER_LABEL = ("support", "tp", "fp", "tn", "fn", "precision", "recall", "f1", "tnr", "fpr",
             "roc_auc", "average_precision", "threshold")  # fmt: skip


def _grid(count: int) -> tuple[int, int]:
    cols = min(count, 4)
    return math.ceil(count / cols), cols


@styled
def label_matrices_figure(per_label: dict[str, dict[str, Any]]) -> plt.Figure:
    """One 2 x 2 matrix per label: rows = truth (absent, present), columns = prediction (absent,
    present), i.e. [[TN, FP], [FN, TP]] (scikit-learn's ``multilabel_confusion_matrix``)."""
    names = list(per_label)
    rows, cols = _grid(len(names))
    fig, axes = pyplot().subplots(rows, cols, figsize=(2.8 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        v = per_label[name]
        cm = np.array([[v["tn"], v["fp"]], [v["fn"], v["tp"]]], dtype=float)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # colour: share of the row
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
        ax.set_xticks([0, 1], ["no", "yes"])
        ax.set_yticks([0, 1], ["no", "yes"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name if len(name) <= 18 else name[:17] + "…")
    fig.suptitle("each label's 2 x 2 confusion matrix at its threshold")
    fig.tight_layout()
    return fig


@styled
def label_pr_figure(
    targets: np.ndarray, probs: np.ndarray, per_label: dict[str, dict[str, Any]]
) -> plt.Figure:
    """Each label's precision-recall curve, with a dot where its threshold operates."""
    fig, ax = pyplot().subplots(figsize=(6, 5))
    for j, name in enumerate(per_label):
        y = targets[:, j] == 1
        if not y.any():
            continue  # no positive: the curve is undefined (the table says so)
        precision, recall, _ = sc.precision_recall_curve(y, probs[:, j])
        ap = per_label[name].get("average_precision")
        (line,) = ax.step(recall, precision, where="post", lw=1.4,
                          label=f"{name} (AP {ap:.3f})" if ap is not None else name)  # fmt: skip
        at = per_label[name]
        if at.get("precision") is not None and at.get("recall") is not None:
            ax.plot(at["recall"], at["precision"], "o", color=line.get_color(), ms=6)
    ax.set_xlabel("recall (TPR)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall per label (dot: the label's threshold)")
    ax.legend(loc="lower left")
    return fig


def write_multilabel_report(
    out: Path,
    metrics: dict[str, Any],
    probs: np.ndarray,
    targets: np.ndarray,
    *,
    run_dir: Path | None = None,
    title: str | None = None,
) -> Path:
    """Write report.html + figures/ into ``out`` for a multilabel_metrics report of (N, L)
    ``probs`` and 0/1 ``targets``; returns the HTML path."""
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    per = metrics["per_label"]
    figs = {
        "2 x 2 matrix per label": png_figure(
            label_matrices_figure(per), fig_dir / "label_matrices.png"
        ),
        "precision-recall per label": png_figure(
            label_pr_figure(targets, probs, per), fig_dir / "label_pr.png"
        ),
    }
    curves = curves_figure(run_dir / "metrics.csv") if run_dir else None
    if curves is not None:
        figs["training curves"] = png_figure(curves, fig_dir / "training_curves.png")
    headline = (
        ("subset_accuracy", "subset accuracy (every label right)"),
        ("hamming_loss", "Hamming loss (wrong image-label answers)"),
        ("map", "mAP (macro average precision)"),
        ("label_ranking_average_precision", "label-ranking average precision"),
    )
    head_rows = "".join(
        f"<tr><td>{label}</td><td>{format_value(metrics.get(key))}</td></tr>"
        for key, label in headline
    )
    averages = ("precision", "recall", "f1", "roc_auc", "average_precision")
    avg_rows = "".join(
        f"<tr><td>{kind}</td>"
        + "".join(f"<td>{format_value(metrics.get(kind, {}).get(m))}</td>" for m in averages)
        + "</tr>"
        for kind in ("micro", "macro", "weighted", "samples")
    )
    label_rows = "".join(
        f"<tr><td>{html.escape(str(n))}</td>"
        + "".join(f"<td>{format_value(v.get(c))}</td>" for c in PER_LABEL)
        + "</tr>"
        for n, v in per.items()
    )
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in metrics.get("warnings", []))
    fig_html = figures_html(figs, wide=set(figs) - {"precision-recall per label"})
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title or "cnnlab report")}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title or "cnnlab evaluation report (multi-label)")}</h1>
{run_header_html(run_dir)}
<p class="muted">{metrics.get("num_samples", len(targets))} test images, {len(per)} labels; a label
is predicted when its probability is at least its threshold (tuned on validation for maximum F1).
Each label is its own yes/no problem: precision = TP/(TP+FP); recall = TPR = TP/(TP+FN);
F1 = 2TP/(2TP+FP+FN); TNR = TN/(TN+FP); FPR = FP/(FP+TN).</p>
<h2>Headline metrics</h2><table><tr><th>metric</th><th>value</th></tr>{head_rows}</table>
<h2>Averages</h2><table><tr><th>average</th>{"".join(f"<th>{m}</th>" for m in averages)}</tr>
{avg_rows}</table>
<h2>Per label</h2><table><tr><th>label</th>{"".join(f"<th>{c}</th>" for c in PER_LABEL)}</tr>
{label_rows}</table>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Figures</h2><div class="figs">{fig_html}</div>
<p class="muted">Written by cnnlab. Opens offline: everything is in this file.</p>
</body></html>"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
