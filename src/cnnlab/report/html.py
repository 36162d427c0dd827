"""The evaluation report: one self-contained HTML file (figures embedded as PNG data URIs) plus the PNGs.

It opens from disk with no network access: no scripts, fonts or styles are fetched. Figures are drawn here from
numbers computed in `cnnlab.metrics` (computing apart from drawing, as scikit-learn's Display objects).

Importing this module does not import matplotlib (about 0.6 s): the figures are drawn by
:func:`render_png`, in this process or in the worker processes of :mod:`cnnlab.report.render`
(what training uses, so the drawing overlaps the test evaluation), and only the drawing needs it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab.metrics import scores as sc
from cnnlab.report import use_file_backend
from cnnlab.report.calibration_section import calibration_html, reliability_before_after
from cnnlab.report.header import run_header_html
from cnnlab.report.style import SMALL, integer_epochs, styled

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

log = logging.getLogger(__name__)


def figures_html(figs: dict[str, str], wide: set[str]) -> str:
    """``<figure>`` elements of {caption: image URI}; those named in ``wide`` span the page."""
    return "".join(
        f'<figure{" class=wide" if name in wide else ""}><img src="{uri}" '
        f'alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, uri in figs.items()
    )


def pyplot() -> Any:
    """matplotlib.pyplot, drawing for files (a notebook keeps its inline backend)."""
    use_file_backend()  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.muted{color:#666;font-size:.85rem}.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs figure{margin:0}
figure img{max-width:520px;border:1px solid #eee}figure.wide img{max-width:1060px}
.gallery{display:flex;flex-wrap:wrap;gap:.6rem}
.gallery figure{width:120px;font-size:.75rem;text-align:center}.gallery img{width:112px;image-rendering:pixelated}
.undef{color:#a60}
"""


DPI = 110  # dots per inch of every report PNG
PAD = 0.1  # inches of margin around the figure's tight box (matplotlib's savefig.pad_inches)


def png_bytes(fig: plt.Figure) -> bytes:
    """A figure as PNG bytes (110 dpi, tight box); the figure is closed.

    What ``savefig(bbox_inches="tight")`` shows, drawn once: savefig finds the tight box with a
    first, unrendered draw and then draws again (35-45% of a figure's time, profiled with
    benchmarks/profile_report_figures.py). Here the box is measured without drawing (matplotlib
    lays out what it measures: ticks, aspect, colorbar), the figure is drawn once on its own
    canvas and the pixels inside the box are cut out, with :data:`PAD` of the figure's face
    colour around them. Where something lies outside the canvas (long slanted class names), so
    that cutting would lose it, savefig draws the box it is given, once."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.image import imsave

    fig.set_dpi(DPI)
    canvas = FigureCanvasAgg(fig)  # Agg, whatever the session's backend (a notebook's too)
    renderer = canvas.get_renderer()
    engine = fig.get_layout_engine()
    if engine is not None:  # constrained layout: placed once, here, as savefig does
        engine.execute(fig)
        fig.set_layout_engine("none")
    box = fig.get_tightbbox(renderer)  # inches, origin at the bottom left
    width, height = canvas.get_width_height()  # pixels
    buf = io.BytesIO()
    # the box in pixels, rows from the top (the buffer's order); half a pixel of slack for
    # antialiased edges that touch the canvas's border
    if (
        box.x0 * DPI < -0.5
        or box.y0 * DPI < -0.5
        or box.x1 * DPI > width + 0.5
        or box.y1 * DPI > height + 0.5
    ):
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches=box.padded(PAD))
    else:
        canvas.draw()
        padded = box.padded(PAD)
        # savefig's size: the padded box's pixels, truncated; its corner rounded to a pixel
        out_w, out_h = int(padded.width * DPI), int(padded.height * DPI)
        left, top = round(padded.x0 * DPI), round(height - padded.y1 * DPI)
        framed = np.empty((out_h, out_w, 4), np.uint8)  # (H, W, RGBA)
        framed[...] = np.round(np.asarray(fig.get_facecolor()) * 255).astype(np.uint8)
        src = np.asarray(canvas.buffer_rgba())  # (height, width, 4)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + out_w, width), min(top + out_h, height)
        framed[y0 - top : y1 - top, x0 - left : x1 - left] = src[y0:y1, x0:x1]
        imsave(buf, framed, format="png", dpi=DPI)  # what savefig writes: pHYs and Software
    pyplot().close(fig)
    return buf.getvalue()


def png_uri(data: bytes, path: Path) -> str:
    """Write PNG bytes next to the report and return them as a data URI for embedding."""
    path.write_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def png_figure(fig: plt.Figure, path: Path) -> str:
    """Save a figure as PNG next to the report and return it as a data URI for embedding."""
    return png_uri(png_bytes(fig), path)


def tick_names(names: list[str], width: int = 14) -> list[str]:
    """Class names as tick labels: long ones shortened to ``width`` characters with an ellipsis
    (the full names are in the report's tables)."""
    return [n if len(n) <= width else n[: width - 1] + "…" for n in map(str, names)]


@styled
def confusion_figure(cm: np.ndarray, names: list[str], normalize: bool) -> plt.Figure:
    k = len(names)
    values = cm.astype(float)
    if normalize:
        rows = values.sum(1, keepdims=True)
        values = np.divide(values, rows, out=np.zeros_like(values), where=rows > 0)
    labels = tick_names(names)
    longest = max((len(n) for n in labels), default=1)
    # Upright column names only when they fit their cell (about 6 characters at 0.6 inch);
    # otherwise slanted, so "background" and "circle" never run into each other.
    upright = longest * k <= 6 * k and k <= 6
    size = min(1.4 + 0.6 * k, 11)
    fig, ax = pyplot().subplots(figsize=(size + 1.2, size))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(
        range(k),
        labels,
        rotation=0 if upright else 45,
        ha="center" if upright else "right",
        rotation_mode="anchor",
    )
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        "confusion matrix"
        + (" (row-normalised: recall on the diagonal)" if normalize else " (counts)")
    )
    if k <= 20:
        hi = values.max() if values.size else 0
        for i in range(k):
            for j in range(k):
                txt = f"{values[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=SMALL if k > 10 else SMALL + 1,
                    color="white" if values[i, j] > 0.6 * hi else "black",
                    # centred in its cell, inside the axes (the tick labels and the colorbar
                    # lie beyond them): never what bounds the figure, so the tight box need not
                    # lay out 100 texts of a 10-class matrix (the PNGs are the same, byte for byte)
                    in_layout=False,
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


@styled
def roc_figure(
    targets: np.ndarray, probs: np.ndarray, names: list[str], aucs: dict[str, Any]
) -> plt.Figure:
    fig, ax = pyplot().subplots(figsize=(6, 5))
    for c, name in enumerate(names):
        y = targets == c
        if y.all() or not y.any():
            continue  # ROC undefined for a class absent from (or alone in) the targets; the table says so
        fpr, tpr, _ = sc.roc_curve(y, probs[:, c])
        auc = aucs.get(name)
        ax.plot(fpr, tpr, lw=1.4, label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set_xlabel("false positive rate (FPR)")
    ax.set_ylabel("true positive rate (TPR)")
    ax.set_title("ROC, one class vs the rest")
    ax.legend(loc="lower right")
    return fig


@styled
def pr_figure(
    targets: np.ndarray, probs: np.ndarray, names: list[str], aps: dict[str, Any]
) -> plt.Figure:
    fig, ax = pyplot().subplots(figsize=(6, 5))
    for c, name in enumerate(names):
        y = targets == c
        if not y.any():
            continue
        precision, recall, _ = sc.precision_recall_curve(y, probs[:, c])
        ap = aps.get(name)
        ax.step(
            recall,
            precision,
            where="post",
            lw=1.4,
            label=f"{name} (AP {ap:.3f})" if ap is not None else name,
        )
    ax.set_xlabel("recall (TPR)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall, one class vs the rest")
    ax.legend(loc="lower left")
    return fig


@styled
def reliability_figure(targets: np.ndarray, probs: np.ndarray, bins: int = 15) -> plt.Figure:
    conf = probs.max(1)
    correct = probs.argmax(1) == targets
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=correct, minlength=bins) / np.maximum(count, 1)
    fig, ax = pyplot().subplots(figsize=(5, 5))
    centers = (edges[:-1] + edges[1:]) / 2
    ax.bar(
        centers[count > 0],
        acc[count > 0],
        width=1 / bins,
        edgecolor="k",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"reliability diagram ({bins} equal-width bins)")
    ax.legend()
    return fig


# metrics.csv columns that are not a score to plot next to the losses
_NOT_SCORES = ("epoch", "lr", "epoch_time_s", "train_images_per_s", "train_loss", "val_loss")


@styled
def curves_figure(metrics_csv: Path) -> plt.Figure | None:
    """Loss (left) and the recorded scores (right: accuracy, mean IoU, mAP, ...) per epoch;
    whole epochs on the x axes."""
    if not metrics_csv.is_file():
        return None
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epoch = [float(r["epoch"]) for r in rows]
    scores = [c for c in rows[0] if c not in _NOT_SCORES and not c.endswith("_loss")]
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 4))
    # a fixed layout, not layout="constrained" (40% of this figure's time, profiled): the
    # outer margins are cut to the tight box anyway, and 1 inch between the panels holds the
    # right one's tick labels (up to 7 characters) and y label
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.9, wspace=0.25)
    for ax, columns, label in (
        (a, ["train_loss", "val_loss"], "loss"),
        (b, scores, "score (higher is better)"),
    ):
        for col in columns:
            values = [float(r[col]) if r.get(col) not in (None, "") else np.nan for r in rows]
            if col in rows[0] and not np.all(np.isnan(values)):
                name = col.replace("_", " ") if ax is b else col.split("_")[0]
                ax.plot(epoch, values, marker="o", ms=4, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        integer_epochs(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("training curves")
    return fig


@styled
def detection_pr_figure(metrics: dict[str, Any]) -> plt.Figure:
    """The detection report's precision-recall curves per class at IoU 0.5 (COCO's 101-point
    interpolated curves, ``metrics["pr_curves"]``), AP50 in the legend."""
    fig, ax = pyplot().subplots(figsize=(6, 5))
    for name, curve in metrics.get("pr_curves", {}).items():
        ap = metrics["per_class"][name]["ap_50"]
        ax.plot(curve["recall"], curve["precision"], lw=1.4,
                label=f"{name} (AP50 {ap:.3f})" if ap is not None else name)  # fmt: skip
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall per class, IoU 0.5")
    if ax.get_legend_handles_labels()[0]:  # no curve without a scored class
        ax.legend(loc="lower left")
    return fig


# what a Renderer job's ``kind`` names (cnnlab.report.render): figure functions of plain data
FIGURES = {
    "confusion": confusion_figure,
    "roc": roc_figure,
    "pr": pr_figure,
    "reliability": reliability_figure,
    "curves": curves_figure,
    "calibration": reliability_before_after,
    "detection_pr": detection_pr_figure,
}


def render_png(kind: str, *args: Any) -> bytes | None:
    """PNG bytes of the figure ``FIGURES[kind](*args)`` (None when it draws none: no curves)."""
    fig = FIGURES[kind](*args)
    return None if fig is None else png_bytes(fig)


def drawn_now(kind: str, *args: Any) -> Future:
    """A figure job drawn in this process at once, as a finished future (an error raises here)."""
    future: Future = Future()
    future.set_result(render_png(kind, *args))
    return future


def collect_figures(
    jobs: dict[str, tuple[str, Future]], folder: Path
) -> tuple[dict[str, str], float]:
    """Wait for figure jobs {caption: (file name, future PNG bytes)}, write each PNG into
    `folder` and return ({caption: data URI}, in the jobs' order, without the figures that
    draw none) and the seconds spent waiting for them."""
    figs, waited = {}, 0.0
    for name, (file, job) in jobs.items():
        start = time.perf_counter()
        data = job.result()
        waited += time.perf_counter() - start
        if data is not None:
            figs[name] = png_uri(data, folder / file)
    return figs, waited


def log_report_time(kind: str, started: float, waited: float, renderer: Any) -> None:
    """One INFO line (`cnnlab -v`): where a report's seconds went, figures against the page."""
    workers = getattr(renderer, "workers", 0)
    how = f"by {workers} worker processes" if workers else "in place"
    log.info(
        "%s report: %.2f s waiting for the figures (drawn %s), %.2f s writing the page",
        kind, waited, how, time.perf_counter() - started - waited,
    )  # fmt: skip


def _thumb(img: np.ndarray) -> str:
    """(C, H, W) uint8 -> PNG data URI."""
    from PIL import Image

    arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ci(interval: dict | None) -> str:
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return ""
    return f"[{interval['low']:.4f}, {interval['high']:.4f}]"


def format_value(v: Any) -> str:
    if v is None:
        return '<span class="undef" title="undefined: see notes">n/a</span>'
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return f"{float(v):.4f}"


def imbalance_section(
    metrics: dict[str, Any],
    targets: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    balance: dict[str, Any],
) -> str:
    """The opening section of an imbalanced run's report: balanced accuracy and every class's
    recall (with bootstrap intervals), rarest training class first, and what the run did about
    the imbalance."""
    from cnnlab.metrics.stats import recall_intervals

    counts = balance.get("train_class_counts") or {}
    ratio = balance.get("imbalance_ratio")
    weights = balance.get("class_weights") or {}
    done = [f"class weights: {weights.get('mode', 'none')}", f"sampler: {balance.get('sampler')}"]
    loss = balance.get("loss") or "ce"
    done.append(
        f"loss: {loss}" + (f" (gamma {balance.get('focal_gamma')})" if loss == "focal" else "")
    )
    intervals = recall_intervals(targets, probs.argmax(1), len(class_names), seed=0)
    per = metrics["per_class"]
    order = sorted(range(len(class_names)), key=lambda k: (counts.get(class_names[k], 0), k))
    w = weights.get("weights") or {}
    rows = []
    for k in order:
        name = class_names[k]
        low, high = intervals[k]
        iv = _ci({"low": low, "high": high})
        rows.append(
            f"<tr><td>{html.escape(str(name))}</td><td>{format_value(counts.get(name))}</td>"
            f"<td>{format_value(w.get(name)) if w else ''}</td>"
            f"<td>{format_value(per[name].get('support'))}</td>"
            f"<td>{format_value(per[name].get('recall'))}</td><td>{iv}</td>"
            f"<td>{format_value(per[name].get('precision'))}</td>"
            f"<td>{format_value(per[name].get('f1'))}</td></tr>"
        )
    ba = metrics.get("balanced_accuracy")
    ba_ci = _ci((metrics.get("confidence_intervals") or {}).get("balanced_accuracy"))
    ratio_text = "a class with no training image" if ratio is None else f"{ratio:.1f}:1"
    return (
        f"<h2>Imbalanced training set ({ratio_text}): balanced accuracy and recall per class</h2>"
        f"<p>balanced accuracy (mean recall over classes) <b>{format_value(ba)}</b> {ba_ci}; "
        f"accuracy {format_value(metrics.get('accuracy'))}. The run used "
        f"{html.escape('; '.join(done))}.</p>"
        "<table><tr><th>class (rarest in training first)</th><th>training images</th>"
        "<th>class weight</th><th>test images</th><th>recall</th><th>95% CI</th>"
        f"<th>precision</th><th>F1</th></tr>{''.join(rows)}</table>"
    )


CALIBRATION = "reliability before and after calibration"  # its own section, not "Figures"


def classification_figures(
    renderer: Any,
    metrics: dict[str, Any],
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: list[str],
    *,
    run_dir: Path | None = None,
    calibration: dict[str, Any] | None = None,
) -> dict[str, tuple[str, Future]]:
    """Submit the classification report's figures: {caption: (file name, future PNG bytes)}
    in the page's order (:data:`CALIBRATION` for the calibration section's figure).

    Everything they need is known once the test split's metrics are: the evaluation submits
    them then, and they are drawn while it computes the bootstrap intervals and writes the
    predictions (`renderer` None: drawn here and now)."""
    submit = renderer.submit if renderer is not None else drawn_now
    cm = np.asarray(metrics["confusion_matrix"])
    per = metrics["per_class"]
    jobs = {
        "confusion matrix (counts)": (
            "confusion_matrix.png", submit("confusion", cm, class_names, False)
        ),
        "confusion matrix (normalised)": (
            "confusion_matrix_normalized.png", submit("confusion", cm, class_names, True)
        ),
        "ROC curves": (
            "roc.png",
            submit(
                "roc", targets, probs, class_names, {n: per[n].get("roc_auc") for n in per}
            ),
        ),
        "precision-recall curves": (
            "pr.png",
            submit(
                "pr", targets, probs, class_names,
                {n: per[n].get("average_precision") for n in per},
            ),
        ),
        "reliability diagram": ("reliability.png", submit("reliability", targets, probs)),
    }  # fmt: skip
    if run_dir:  # no figure when metrics.csv is missing or empty
        jobs["training curves"] = (
            "training_curves.png", submit("curves", Path(run_dir) / "metrics.csv")
        )  # fmt: skip
    if calibration:
        jobs[CALIBRATION] = (
            "reliability_calibration.png", submit("calibration", calibration)
        )  # fmt: skip
    return jobs


def write_classification_report(
    out: Path,
    metrics: dict[str, Any],
    probs: np.ndarray,
    targets: np.ndarray,
    class_names: list[str],
    *,
    images: Any = None,
    ids: list[str] | None = None,
    run_dir: Path | None = None,
    top_losses: int = 16,
    title: str | None = None,
    balance: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    renderer: Any = None,
    figures: dict[str, tuple[str, Future]] | None = None,
) -> Path:
    """Write report.html + PNGs into `out`; returns the HTML path.

    `calibration`: the run's calibration.json (report.calibration_section draws it).

    `renderer` (cnnlab.report.render): where the figures are drawn; in this process by default.
    Every figure is submitted first and the page is written while they are drawn.
    `figures`: what :func:`classification_figures` returned for these inputs, when the caller
    submitted them earlier (the evaluation does, before its bootstrap intervals).

    `balance`: the run's class_balance.json (training class counts, weights, sampler, loss); when
    the training set is imbalanced (largest / smallest class above 10) the report opens with
    balanced accuracy and every class's recall, rarest training class first, and balanced accuracy
    heads the headline table: plain accuracy mostly measures the majority classes there."""
    started = time.perf_counter()
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    per = metrics["per_class"]
    if figures is None:
        figures = classification_figures(
            renderer, metrics, probs, targets, class_names, run_dir=run_dir,
            calibration=calibration,
        )  # fmt: skip

    ci = metrics.get("confidence_intervals", {})
    imbalanced = bool(balance and balance.get("imbalanced"))
    first = imbalance_section(metrics, targets, probs, class_names, balance) if imbalanced else ""
    head_rows = []
    headline = (
        ("accuracy", "accuracy"),
        ("balanced_accuracy", "balanced accuracy"),
        ("cohen_kappa", "Cohen's kappa"),
        ("mcc", "Matthews correlation"),
        ("log_loss", "log loss"),
        ("ece", "expected calibration error"),
    )
    if imbalanced:  # balanced accuracy first
        headline = (headline[1], headline[0], *headline[2:])
    for key, label in headline:
        if key in metrics:
            head_rows.append(
                f"<tr><td>{label}</td><td>{format_value(metrics[key])}</td><td>{_ci(ci.get(key))}</td></tr>"
            )
    for m in ("precision", "recall", "f1", "tnr", "fpr", "roc_auc", "average_precision"):
        for avg in ("macro", "weighted"):
            if m in metrics.get(avg, {}):
                head_rows.append(
                    f"<tr><td>{m} ({avg})</td><td>{format_value(metrics[avg][m])}</td>"
                    f"<td>{_ci(ci.get(f'{avg}_{m}'))}</td></tr>"
                )
    cols = [
        "support",
        "tp",
        "fp",
        "tn",
        "fn",
        "precision",
        "recall",
        "f1",
        "tpr",
        "tnr",
        "fpr",
        "fnr",
        "roc_auc",
        "average_precision",
    ]
    class_rows = "".join(
        f"<tr><td>{html.escape(str(n))}</td>"
        + "".join(f"<td>{format_value(v.get(c))}</td>" for c in cols)
        + "</tr>"
        for n, v in per.items()
    )
    gallery = ""
    if images is not None and len(targets):
        p_true = probs[np.arange(len(targets)), targets]
        wrong = np.nonzero(probs.argmax(1) != targets)[0]
        order = wrong[np.argsort(p_true[wrong])][
            :top_losses
        ]  # most confidently wrong first (fastai's top losses)
        cells = []
        for i in order:
            pred = int(probs[i].argmax())
            img = images[int(i)]  # one item: a memory-mapped or streamed split is never read whole
            img = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
            cells.append(
                f'<figure><img src="{_thumb(img)}" alt="test image {i}"><figcaption>true '
                f"<b>{html.escape(class_names[targets[i]])}</b><br>predicted <b>{html.escape(class_names[pred])}"
                f"</b> ({probs[i, pred]:.2f})<br><span class=muted>{html.escape(ids[i] if ids else str(i))}"
                "</span></figcaption></figure>"
            )
        gallery = (
            "<h2>Most confidently wrong test images</h2><div class=gallery>"
            + "".join(cells)
            + "</div>"
            if cells
            else "<h2>Most confidently wrong test images</h2><p>None: every test image is right.</p>"
        )
    notes = "".join(f"<li>{html.escape(w)}</li>" for w in metrics.get("warnings", []))
    figs, waited = collect_figures(figures, fig_dir)
    calibration_uri = figs.pop(CALIBRATION, None)
    calibrated = calibration_html(calibration, calibration_uri) if calibration_uri else ""
    fig_html = figures_html(figs, wide={"training curves"})
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title or "cnnlab report")}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title or "cnnlab evaluation report")}</h1>
{run_header_html(run_dir)}
<p class="muted">{metrics.get("num_samples", len(targets))} test images, {len(class_names)} classes.
Formulas as in the lecture: accuracy = (TP+TN)/(TP+FP+TN+FN); precision = TP/(TP+FP); recall = TPR = TP/(TP+FN);
F1 = 2PR/(P+R); TNR = TN/(TN+FP); FPR = FP/(FP+TN). Intervals: seeded bootstrap, 95%.</p>
{first}
<h2>Headline metrics</h2><table><tr><th>metric</th><th>value</th><th>95% CI</th></tr>{"".join(head_rows)}</table>
<h2>Per class (one class vs the rest)</h2><table><tr><th>class</th>{"".join(f"<th>{c}</th>" for c in cols)}</tr>
{class_rows}</table>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
{calibrated}
<h2>Figures</h2><div class="figs">{fig_html}</div>
{gallery}
<p class="muted">Written by cnnlab. Opens offline: everything is in this file.</p>
</body></html>"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    log_report_time("classification", started, waited, renderer)
    return path
