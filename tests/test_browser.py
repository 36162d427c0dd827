"""Open the HTML pages in a real headless Chromium: no console errors, every figure decodes.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; the CI script installs it) and the
``playwright`` Python package driving it through ``executable_path`` (Playwright's own browser
download is not used). Without Chromium the tests skip; without playwright they fall back to the
Chromium command line (screenshot + console log from ``--enable-logging=stderr``).

Screenshots go to ``$CNNLAB_SCREENSHOTS`` when set (to look at them), else to the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _shot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("CNNLAB_SCREENSHOTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def render(page: Path, screenshot: Path) -> dict:
    """Load ``page``; return console errors and, per <img>, (alt, naturalWidth)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return _render_cli(page, screenshot)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS[1:])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 2000})
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            tab.goto(page.resolve().as_uri(), wait_until="load")
            images = tab.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete ? i.naturalWidth : 0])"
            )
            tab.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "images": [tuple(x) for x in images]}


def _render_cli(page: Path, screenshot: Path) -> dict:
    """Fallback: Chromium's own flags. Images are checked through the DOM (data URIs present)."""
    profile = screenshot.parent / f".profile-{screenshot.stem}"
    run = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={screenshot}",
            "--window-size=1280,2000",
            "--enable-logging=stderr",
            "--v=0",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [ln for ln in run.stderr.splitlines() if "Uncaught" in ln or ":CONSOLE" in ln]
    html = page.read_text()
    # data URIs decode or not regardless of the network; present means loaded here
    found = re.findall(r'<img[^>]*src="data:image/png;base64,[^"]+"[^>]*alt="([^"]*)"', html)
    images = [(alt, 1) for alt in found]
    return {"errors": errors, "images": images}


def _not_blank(png: Path) -> None:
    a = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert a.shape[0] >= 1000 and a.shape[1] >= 1000
    assert a.std() > 10  # figures and text, not an empty white page


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    import cnnlab.api as api

    out = tmp_path_factory.mktemp("runs")
    result = api.train(
        data="builtin:digits", model="lenet5", epochs=1, out=str(out), name="digits", batch_size=64
    )
    assert result.report is not None
    return result.run_dir, Path(result.report)


def test_explain_page_renders(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    from cnnlab.report.explain_page import explain_image

    img = np.round(load_digits().images[3] * 255 / 16).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "three.png")
    result = explain_image(trained[0], tmp_path / "three.png", out_dir=tmp_path / "explain")
    shot = _shot_dir(tmp_path) / "explain_page.png"
    seen = render(Path(result["html"]), shot)
    assert seen["errors"] == []
    widths = dict(seen["images"])
    for alt in (
        "input image",
        "output probabilities",
        "class activation maps",
        "first-layer filters",
        "fully connected activations",
    ):
        assert widths.get(alt, 0) > 0, alt
    assert sum(alt.startswith("feature maps of") and w > 0 for alt, w in seen["images"]) >= 6
    assert all(w > 0 for _, w in seen["images"])
    _not_blank(shot)


def test_evaluation_report_renders(trained: tuple[Path, Path], tmp_path: Path) -> None:
    shot = _shot_dir(tmp_path) / "evaluation_report.png"
    seen = render(trained[1], shot)
    assert seen["errors"] == []
    widths = dict(seen["images"])
    for alt in ("confusion matrix (counts)", "confusion matrix (normalised)", "ROC curves"):
        assert widths.get(alt, 0) > 0, alt
    assert all(w > 0 for _, w in seen["images"])
    _not_blank(shot)
