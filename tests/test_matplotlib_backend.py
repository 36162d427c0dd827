"""Drawing modules draw for files (Agg) but never switch a notebook's inline backend off.

Found by notebooks/03_training.ipynb: ``cl.lr_find(plot=...)`` called ``matplotlib.use("Agg")``, and every
later ``plt.show()`` of the notebook drew nothing (the same for importing ``cnnlab.report.html``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

SCRIPT = """
import matplotlib
import cnnlab.report.html, cnnlab.report.explain_page, cnnlab.report.detection_report
from cnnlab.transfer.lr_find import plot_lr_find
result = {"lrs": [1e-3, 1e-2, 1e-1], "losses": [2.3, 2.0, 2.5], "smoothed": [2.3, 2.1, 2.2],
          "suggested_lr": 1e-2, "min_lr_div10": 1e-3}
plot_lr_find(result, PATH)
print(matplotlib.get_backend())
"""


def _backend_after_drawing(tmp_path: Path, mplbackend: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if mplbackend:
        env["MPLBACKEND"] = mplbackend
    code = SCRIPT.replace("PATH", repr(str(tmp_path / "lr.png")))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "lr.png").stat().st_size > 0
    return out.stdout.strip().splitlines()[-1]


def test_inline_backend_is_kept(tmp_path):
    pytest.importorskip("matplotlib_inline")
    inline = "module://matplotlib_inline.backend_inline"
    assert _backend_after_drawing(tmp_path, inline) == inline


@pytest.mark.slow  # the behaviour before the fix; a subprocess importing torch takes several seconds
def test_agg_otherwise(tmp_path):
    assert _backend_after_drawing(tmp_path, None).lower() == "agg"
