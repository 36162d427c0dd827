"""The command line shows cnnlab.metrics' undefined-metric warnings as `note:` lines (as
classification's report does), not in Python's format with cnnlab's source path and code line."""

from __future__ import annotations

import warnings

import numpy as np

from cnnlab.cli import install_warning_notes
from cnnlab.metrics.segmentation import segmentation_metrics


def test_undefined_metric_warnings_are_notes(capsys) -> None:
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 'c': no pixel, never predicted
    passed_on: list[str] = []
    with warnings.catch_warnings():  # restores Python's showwarning afterwards
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest, **kw: passed_on.append(str(message))
        install_warning_notes()
        metrics = segmentation_metrics(cm, ["a", "b", "c"])
        warnings.warn("something else", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if ln.startswith("note: ")]
    assert "note: IoU is undefined for class 'c': the class is absent from both the targets" in err
    assert len(notes) == len(metrics["warnings"]) >= 2
    assert "UndefinedMetricWarning" not in err and "segmentation.py" not in err
    assert passed_on == ["something else"]  # other warnings go to the handler before it
