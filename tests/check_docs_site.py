"""Every page of the built documentation site in a real headless Chromium (`make test-docs`).

Not part of the test tiers (its name is not test_*.py): it needs the site that `make docs` builds
into site/ (or $CNNLAB_SITE). The site is served over HTTP on 127.0.0.1, as a reader would get it
(the search index is fetched, which file:// forbids), and each page must:

* load with no console error, no uncaught exception and no failed request;
* ask for nothing outside 127.0.0.1 (the site works offline: no web fonts, no CDN);
* show every image (each <img> decoded, naturalWidth > 0);
* render: a visible <h1> and text in the page's article.

Debian's ``chromium`` drives it through Playwright's ``executable_path`` (Playwright's own browser
download is not used), with --headless --no-sandbox --disable-gpu. Screenshots of every page go
to $CNNLAB_SCREENSHOTS when set (to look at them).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("CNNLAB_SITE", ROOT / "site"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGES = sorted(
    p.relative_to(SITE).as_posix()
    for p in SITE.rglob("*.html")
    if not p.relative_to(SITE).as_posix().startswith("assets/")
)

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
    pytest.mark.skipif(not PAGES, reason=f"no site in {SITE}: run `make docs` first"),
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            browser.close()


def test_the_site_has_every_section():
    for page in ("index.html", "reference/cli/index.html", "reference/api/index.html",
                 "reference/configuration/index.html", "notebooks/01_convolution/index.html"):  # fmt: skip
        assert page in PAGES


#: notebook pages with formulas (the site's own MathJax copy must typeset them)
MATH_PAGES = ("notebooks/01_convolution/index.html", "notebooks/06_applications/index.html")


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_errors(page: str, server: str, browser) -> None:
    problems: list[str] = []
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        tab.on(
            "console",
            lambda m: problems.append(f"{m.text} [{m.location.get('url', '')}]")
            if m.type == "error" else None,
        )  # fmt: skip
        tab.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
        tab.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        tab.on(
            "response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
        )  # fmt: skip

        def only_local(route) -> None:
            if route.request.url.startswith(server) or route.request.url.startswith("data:"):
                route.continue_()
            else:
                problems.append(f"outside request: {route.request.url}")
                route.abort()

        tab.route("**/*", only_local)
        tab.goto(server + page, wait_until="load")
        images = tab.evaluate(
            """async () => {
                const imgs = Array.from(document.images);
                imgs.forEach(i => { i.loading = "eager"; });
                await Promise.all(imgs.map(i => i.decode().catch(() => null)));
                return imgs.map(i => [i.currentSrc.slice(0, 80), i.naturalWidth]);
            }"""
        )
        tab.wait_for_load_state("networkidle")
        problems += [f"image did not load: {src}" for src, width in images if not width]
        if page in MATH_PAGES:  # MathJax (served by the site) typeset the notebook's formulas
            typeset = tab.evaluate("document.querySelectorAll('.MathJax, .MathJax_Display').length")
            assert typeset > 0, f"{page}: no formula was typeset by MathJax"
        if page != "404.html":
            assert tab.locator("article h1").first.is_visible(), f"{page}: no visible <h1>"
            assert len(tab.locator("article").first.inner_text()) > 100, f"{page}: empty article"
        shots = os.environ.get("CNNLAB_SCREENSHOTS")
        if shots:
            out = Path(shots) / (page.replace("/", "_").removesuffix(".html") + ".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(out), full_page=False)
    finally:
        tab.close()
    # MathJax 2's HTML-CSS output probes for installed fonts with an @font-face whose source is
    # about:blank; Chromium reports that as a failed request although nothing leaves the page
    problems = [p for p in problems if "about:blank" not in p]
    assert not problems, f"{page}: " + "; ".join(problems)
