"""The multi-label report: the page carries the report's numbers, each label's 2 x 2 matrix and
PR curve are drawn, and it opens offline (no external resources)."""

from __future__ import annotations

import re
import warnings

import numpy as np
from PIL import Image

from cnnlab.metrics.multilabel import multilabel_metrics
from cnnlab.report.multilabel_report import write_multilabel_report


def test_report_page_and_figures(tmp_path) -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (40, 3))
    targets[:, 2] = 0  # a label no image carries: its PR curve is left out, the table says None
    probs = np.clip(targets * 0.6 + rng.random((40, 3)) * 0.5, 0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = multilabel_metrics(targets, probs, thresholds=0.5, label_names=["a", "b", "c"])
    path = write_multilabel_report(tmp_path, metrics, probs, targets)
    page = path.read_text()
    assert not re.search(r"(src|href)=\"https?:", page)  # opens offline
    for name, v in metrics["per_label"].items():  # each label's counts are in its table row
        row = re.search(rf"<tr><td>{name}</td>(.*?)</tr>", page).group(1)
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells[1:5] == [str(v[k]) for k in ("tp", "fp", "tn", "fn")]
    for figure in ("label_matrices.png", "label_pr.png"):
        with Image.open(tmp_path / "figures" / figure) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    assert page.count("data:image/png;base64,") == 2
