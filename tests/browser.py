"""Open a ``pipe report`` page in headless Chromium the way a person would, with no network.

The system's Chromium (Debian's ``chromium``; ``.ci/run`` installs it) is driven through Playwright,
which needs no browser download. Two fences keep the page offline: a proxy that leads nowhere and a
route that aborts every request; every attempted request is recorded, so a page that tries to load
anything (a CDN script, a font, an image by URL) fails the check rather than silently rendering
without it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium on this machine: `apt-get install chromium` (.ci/run installs it when missing)")


@dataclass
class PageFacts:
    console: list[tuple[str, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    text: str = ""

    def table(self, kind: str) -> list[list[str]]:
        return self.tables.get(kind, [])


JS_FACTS = """() => {
  const charts = [...document.querySelectorAll('figure.chart')].map(f => {
    const el = f.querySelector('svg, img');
    const r = el ? el.getBoundingClientRect() : {width: 0, height: 0};
    const marks = el && el.tagName.toLowerCase() === 'svg' ? el.querySelectorAll('path, rect, use, text').length
                  : (el && el.naturalWidth > 0 ? 1 : 0);
    return {name: f.dataset.chart, width: r.width, height: r.height, marks: marks,
            tag: el ? el.tagName.toLowerCase() : null};
  });
  const tables = {};
  for (const t of document.querySelectorAll('table.rows')) {
    const head = [...t.querySelectorAll('tr')[0].children].map(th => th.textContent.trim());
    const rows = [...t.querySelectorAll('tr.sample-row')].map(tr => [...tr.children].map(td => td.textContent.trim()));
    tables[t.dataset.stage + ' ' + t.dataset.kind] = [head].concat(rows);
  }
  return {charts: charts, tables: tables, text: document.body.innerText};
}"""


def open_page(html: Path, screenshot: Path | None = None, *, width: int = 1400) -> PageFacts:
    """Load ``html`` offline, run the page's own rendering, and return what a reader would see."""
    from playwright.sync_api import sync_playwright

    facts = PageFacts()
    url = html.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(),
                                    args=["--no-sandbox", "--proxy-server=http://127.0.0.1:9",
                                          "--proxy-bypass-list=<-loopback>"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.on("console", lambda m: facts.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: facts.console.append(("pageerror", str(e))))

            def fence(route: Any) -> None:
                facts.requests.append(route.request.url)
                if route.request.url == url:
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", fence)
            page.goto(url, wait_until="load")
            got = page.evaluate(JS_FACTS)
            facts.charts, facts.tables, facts.text = got["charts"], got["tables"], got["text"]
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return facts


def assert_renders(facts: PageFacts, *, min_charts: int = 1) -> None:
    """No console message, no request but the page itself, every chart drawn with marks in it."""
    errors = [m for m in facts.console if m[0] in ("error", "pageerror", "warning")]
    assert not errors, errors
    assert len(facts.requests) == 1, f"the page asked for more than itself: {facts.requests}"
    assert len(facts.charts) >= min_charts, facts.charts
    for c in facts.charts:
        drawn = c["marks"] > 3 if c["tag"] == "svg" else c["marks"] == 1  # an <img> counts once it decoded
        assert c["width"] > 50 and c["height"] > 30 and drawn, f"chart not drawn: {c}"


def report(path: Path, out: Path, env: dict[str, str] | None = None, *extra: str) -> Path:
    """``pipe report PATH --out OUT`` as a user runs it; fails the test with its stderr."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "lrpipe", "report", str(path), "--out", str(out), *extra],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.exists() and out.stat().st_size < 5e6, out
    return out


def screenshot_path(tmp: Path, name: str) -> Path:
    """Where a page test saves its screenshot: beside the test's output, or into the folder named by
    ``PIPE_SCREENSHOTS`` (how the README's picture is made)."""
    import os

    folder = os.environ.get("PIPE_SCREENSHOTS")
    return Path(folder) / f"{name}.png" if folder else tmp / f"{name}.png"
