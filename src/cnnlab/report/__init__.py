"""Reports and figures: HTML pages with embedded PNGs (classification, segmentation, detection, explain).

Figures are drawn for files. :func:`use_file_backend` is what every drawing module calls before it imports
``matplotlib.pyplot``.
"""

from __future__ import annotations


def use_file_backend() -> None:
    """Draw figures for files (matplotlib's Agg backend), never in a window, but keep a notebook's backend.

    ``matplotlib.use("Agg")`` inside a Jupyter kernel would replace its inline backend, and every later
    ``plt.show()`` of the notebook would silently draw nothing. A backend set as ``module://...``
    (matplotlib-inline, ipympl) draws into the notebook, never a window, so it is kept.
    """
    import matplotlib

    try:  # matplotlib >= 3.10: None while no backend has been chosen (and this chooses none)
        backend = matplotlib.get_backend(auto_select=False)
    except TypeError:  # older matplotlib: the same answer
        backend = matplotlib.rcParams._get_backend_or_none()
    if not str(backend or "").startswith("module://"):
        matplotlib.use("Agg")
