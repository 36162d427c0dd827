"""One look for every figure cnnlab draws: font sizes, class colours and integer epoch ticks.

Every figure function in :mod:`cnnlab.report` is wrapped in :func:`styled`, so its text is drawn
under the same ``rcParams`` (matplotlib reads them when an artist is created): titles one step
above labels, labels above tick labels and legends, and nothing below 8 points, the smallest size
still legible in a report at 100% zoom. Importing this module does not load matplotlib; drawing does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

# points; figures are saved at 100-110 dpi, so 9 pt is about 13 px on screen
STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "legend.framealpha": 0.85,
}
SMALL = 8  # points: the smallest text (dense annotations such as a confusion matrix's counts)

F = TypeVar("F", bound=Callable[..., Any])


def styled(draw: F) -> F:
    """Run a figure-drawing function under :data:`STYLE` (one font-size policy for all figures)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct RGB colours (0-255), one per class: tab10, then tab20 for more."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [tuple(int(round(255 * v)) for v in cmap(i % cmap.N)[:3]) for i in range(count)]


def integer_epochs(ax: Any) -> None:
    """Epoch axes tick whole epochs only (a 3-epoch run shows 1 2 3, never 1.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
