"""The report's calibration section: temperature scaling (ECE before / after, reliability diagram
before / after on the validation split) and the out-of-domain check (score, threshold, false-alarm
rates), drawn from a run's calibration.json (cnnlab.engine.calibration computes it)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.metrics.calibration import FEW_SAMPLES_FIX
from cnnlab.report import use_file_backend


def reliability_before_after(record: dict[str, Any]) -> Any:
    """Two reliability diagrams side by side from the stored bins (validation split): a
    matplotlib Figure (pyplot is imported here, when a figure is drawn, not with the module)."""
    use_file_backend()  # files only; never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, key, label in zip(axes, ("before", "after"), ("T = 1", "T = {t:.3g}"), strict=True):
        rel = record["bins"][key]
        edges = np.asarray(rel["bin_edges"], dtype=float)
        acc = np.asarray([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
        count = np.asarray(rel["count"])
        centers = (edges[:-1] + edges[1:]) / 2
        shown = count > 0
        ax.bar(centers[shown], acc[shown], width=np.diff(edges)[shown], edgecolor="k", alpha=0.7,
               label="accuracy in bin")  # fmt: skip
        for c, a, n in zip(centers[shown], acc[shown], count[shown], strict=True):
            ax.text(c, a + 0.01, str(n), ha="center", va="bottom", fontsize=6)  # images in bin
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        ax.set_ylim(0, 1.08)
        ece = record[f"ece_{key}"]
        ax.set_title(f"{label.format(t=record['temperature'])}: ECE {ece:.4f}")
        ax.set_xlabel("confidence (max probability)")
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("accuracy in bin")
    fig.suptitle(
        f"validation split, {record.get('ece_bins', len(count))} equal-width bins "
        "(number above a bar: its images)"
    )
    return fig


def calibration_section(record: dict[str, Any] | None, fig_dir: Path, png_figure: Any) -> str:
    """HTML for the calibration section ("" for a run without calibration.json).

    ``png_figure(fig, path) -> data URI`` is the report's own figure writer."""
    if not record:
        return ""
    uri = png_figure(reliability_before_after(record), fig_dir / "reliability_calibration.png")
    return calibration_html(record, uri)


def calibration_html(record: dict[str, Any] | None, uri: str) -> str:
    """The section's HTML with its figure (:func:`reliability_before_after`, drawn by the
    caller) given as a data URI; "" for a run without calibration.json."""
    if not record:
        return ""
    t = float(record["temperature"])
    rows = [
        ("temperature T (probabilities = softmax(logits / T))", f"{t:.4f}"),
        (
            "validation ECE before / after",
            f"{record['ece_before']:.4f} / {record['ece_after']:.4f}",
        ),
        (
            "validation NLL before / after",
            f"{record['nll_before']:.4f} / {record['nll_after']:.4f}",
        ),
    ]
    test = record.get("test")
    if test:
        rows.append(
            ("test ECE before / after", f"{test['ece_before']:.4f} / {test['ece_after']:.4f}")
        )
    ood = record.get("out_of_domain")
    if ood:
        rows.append(("out-of-domain score", html.escape(str(ood.get("description", ood["score"])))))
        rows.append(
            ("out-of-domain threshold", f"{ood['threshold']:.4g} ({html.escape(ood['rule'])})")
        )
        rows.append(("false-alarm rate, validation", f"{100 * ood['false_alarm_rate_val']:.2f}%"))
        if ood.get("false_alarm_rate_test") is not None:
            rows.append((
                "false-alarm rate, in-domain test images",
                f"{100 * ood['false_alarm_rate_test']:.2f}% ({ood['test_flagged']} of "
                f"{ood['test_num_samples']} flagged)",
            ))  # fmt: skip
    table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return (
        "<h2>Calibration and out-of-domain check</h2>"
        f"{few_samples_caution(record)}"
        "<p class=muted>Temperature scaling: one scalar T fitted on the validation split to "
        "minimise its negative log-likelihood; the argmax (accuracy, ROC-AUC) is unchanged. ECE: "
        "expected calibration error, equal-width confidence bins. The test metrics above use the "
        "calibrated probabilities. See docs/calibration.md.</p>"
        f"<table><tr><th>quantity</th><th>value</th></tr>{table}</table>"
        f'<div class="figs"><figure class=wide><img src="{uri}" alt="reliability before and '
        'after temperature scaling"><figcaption>reliability diagram before and after temperature '
        "scaling (validation split)</figcaption></figure></div>"
    )


def few_samples_caution(record: dict[str, Any]) -> str:
    """A caution, in the warning colour, when T was fitted on fewer validation images than
    ``fitted_on.reliable_from`` (calibration.json's ``few_samples``; training warned on the
    console, and a reader of the report never sees that); "" otherwise, and for a record written
    before ``few_samples`` existed (nothing is known of it, so nothing is claimed)."""
    fitted = record.get("fitted_on") or {}
    if not fitted.get("few_samples"):
        return ""
    n = fitted.get("num_samples")
    reliable = fitted.get("reliable_from")
    return (
        '<p class="lead" style="color:#b00020"><b>Caution: the temperature was fitted on only '
        f"{n} validation image{'' if n == 1 else 's'}</b>. Below {reliable} images T, the ECE "
        "and NLL figures below and the out-of-domain threshold are not reliable (a few images "
        "can move T far off, and nothing averages it out). To trust them, train again and "
        f"{html.escape(FEW_SAMPLES_FIX)}.</p>"
    )


def explain_notice(checked: dict[str, Any]) -> str:
    """The explain page's lines on one image: out of domain or not (and how that was decided),
    and the calibrated probabilities ("" for a run without calibration)."""
    if not checked:
        return ""
    esc = html.escape
    parts = []
    ood = checked.get("out_of_domain")
    if ood:
        rate = ood.get("false_alarm_rate_test")
        alarms = (
            f" It flags {100 * rate:.1f}% of the in-domain test images." if rate is not None else ""
        )
        how = (
            f"{esc(ood['score'])} score {ood['value']:.4g} "
            f"{'&gt;' if ood['out_of_domain'] else '&le;'} threshold {ood['threshold']:.4g}, "
            "calibrated on the validation split"
        )
        if ood["out_of_domain"]:
            parts.append(
                '<p class="lead" style="color:#b00020"><b>Warning: this image looks out of '
                f"domain</b> ({how}): it is unlike the images the model was trained on, and its "
                f"prediction should not be trusted.{alarms}</p>"
            )
        else:
            parts.append(f'<p class="muted">In domain ({how}).{alarms}</p>')
    top = checked.get("calibrated_top") or []
    if top:
        listed = ", ".join(f"{esc(str(r['class']))} {r['probability']:.3f}" for r in top)
        parts.append(
            f'<p class="muted">Calibrated probabilities (temperature T = '
            f"{checked['temperature']:.3g}, softmax(logits / T); the figures show T = 1): "
            f"{listed}.</p>"
        )
    return "".join(parts)
