"""The conv lab's picture: the input, the kernel and the feature map side by side.

Drawing only; the numbers come from :func:`cnnlab.explain.conv.run_lab`. The explained output
positions are numbered on the feature map, and the input window each one reads is outlined on
the input, so the printed patch x filter table can be found in the picture. Needs no torch
(``cnnlab conv`` must start without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import ConfigError
from cnnlab.report import use_file_backend
from cnnlab.report.style import SMALL, styled

__all__ = ["conv_figure", "write_conv_figure"]


def _window(step: Any) -> tuple[float, float, float, float]:
    """(row0, col0, rows, cols) of the input cells one explained position reads (padding too)."""
    rows = [t.input_index[0] for t in step.terms]
    cols = [t.input_index[1] for t in step.terms]
    return min(rows), min(cols), max(rows) - min(rows) + 1, max(cols) - min(cols) + 1


@styled
def conv_figure(result: Any) -> Any:
    """A matplotlib Figure of a 2-D :class:`~cnnlab.explain.conv.LabResult`."""
    use_file_backend()
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    x, w, y = result.x, result.w, result.output
    if x.ndim != 2:
        raise ConfigError(
            f"the conv picture needs a 2-D input (rows like '1 0; 0 1' or an "
            f"image file), got shape {x.shape}"
        )
    aspect = x.shape[1] / x.shape[0]
    panel = 4.2  # inches: the height of the input and feature-map panels
    fig, axes = plt.subplots(
        1,
        3,
        figsize=(2 * panel * min(aspect, 2) + 3.6, panel + 0.9),
        gridspec_kw={"width_ratios": [min(aspect, 2), 0.55, min(aspect, 2)]},
        layout="constrained",
    )
    ax_x, ax_w, ax_y = axes
    ax_x.imshow(x, cmap="gray", interpolation="nearest")
    ax_x.set_title(f"input x: {x.shape[0]} x {x.shape[1]}")
    lim = float(np.abs(w).max()) or 1.0
    ax_w.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax_w.set_title(f"kernel w: {w.shape[0]} x {w.shape[1]}")
    if w.size <= 49:  # 7 x 7: the weights stay legible as numbers
        for (r, c), v in np.ndenumerate(w):
            text = f"{v:g}" if float(v).is_integer() else f"{v:.2f}"
            dark = abs(v) > 0.6 * lim
            ax_w.text(c, r, text, ha="center", va="center", fontsize=SMALL,
                      color="white" if dark else "black")  # fmt: skip
    signed = bool(y.min() < 0 < y.max())
    # A large map's few extreme values would wash the rest out: its colour scale stops at the
    # 99th percentile of |y| (brighter values saturate); a small map shows its full range.
    clip = y.size > 10_000
    top = float(np.percentile(np.abs(y), 99) if clip else np.abs(y).max()) or 1.0
    if signed:  # diverging: blue < 0 < red, centred on 0 as the kernel
        im = ax_y.imshow(y, cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
    else:
        low = float(y.min())
        im = ax_y.imshow(y, cmap="magma", vmin=low, vmax=max(top, low + 1e-12),
                         interpolation="nearest")  # fmt: skip
    ax_y.set_title(f"feature map y = {result.op}: {y.shape[0]} x {y.shape[1]}")
    if clip:
        ax_y.set_xlabel("colour scale clipped at the 99th percentile of |y|")
    fig.colorbar(im, ax=ax_y, fraction=0.046, pad=0.02)
    for ax in (ax_x, ax_w, ax_y):
        ax.set_xticks([])
        ax.set_yticks([])
    halo = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for ax, values in ((ax_x, x), (ax_y, y)):
        if values.size <= 144:  # up to 12 x 12: every value written in its cell, as in the lecture
            for (r, c), v in np.ndenumerate(values):
                text = f"{v:g}" if float(v).is_integer() else f"{v:.2f}"
                ax.text(c, r, text, ha="center", va="center", fontsize=SMALL + 1,
                        color="white", path_effects=halo)  # fmt: skip
    for number, step in enumerate(result.steps or [], start=1):
        r0, c0, h, wd = _window(step)
        ax_x.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), wd, h, fill=False, ec="yellow", lw=1.2))
        r, c = step.output_index
        ax_y.plot(c, r, marker="s", ms=5, mfc="none", mec="black", mew=1.2)
        for ax, (ar, ac) in ((ax_x, (r0, c0)), (ax_y, (r, c))):
            ax.annotate(str(number), (ac, ar), xytext=(4, -4), textcoords="offset points",
                        va="top", color="yellow", fontsize=SMALL + 1, fontweight="bold",
                        path_effects=halo)  # fmt: skip
    fig.suptitle(result.options())
    return fig


def conv_figure_path(result: Any, path: str | Path) -> Path:
    """The file :func:`write_conv_figure` writes for ``path``: a folder gets ``<image name>_conv.png``
    (``conv.png`` for typed arrays) inside it, a name without a suffix gets ``.png``."""
    path = Path(path).expanduser()
    if path.is_dir():  # it wrote FOLDER.png beside the folder and said FOLDER
        stem = Path(result.source).stem + "_conv" if result.source else "conv"
        return path / f"{stem}.png"
    return path if path.suffix else path.with_name(path.name + ".png")


def write_conv_figure(result: Any, path: str | Path) -> Path:
    """Draw :func:`conv_figure` into a PNG file at ``path``; returns the path written.

    A folder gets ``<image name>_conv.png`` (``conv.png`` for typed arrays) inside it, a name
    without a suffix gets ``.png`` (matplotlib's own default, now said), a missing folder is
    made; a suffix matplotlib cannot write is a one-line ConfigError (it was a traceback)."""
    use_file_backend()
    import matplotlib.pyplot as plt

    path = conv_figure_path(result, path)
    fig = conv_figure(result)
    try:
        kinds = fig.canvas.get_supported_filetypes()
        if path.suffix.lower().lstrip(".") not in kinds:
            raise ConfigError(
                f"--out {path}: cannot draw a {path.suffix} picture; give a name ending in "
                f".png (or {', '.join('.' + k for k in sorted(kinds) if k != 'png')})"
            )
        path.parent.mkdir(parents=True, exist_ok=True)  # "FOLDER/x.png: not found" before
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
