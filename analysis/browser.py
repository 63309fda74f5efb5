"""Render checks for the HTML reports in headless Chromium.

Reports inline plotly.js and the circuitsvis bundle so that they open without a network; a page
that parses but whose scripts throw, or that quietly fetches from a CDN, still looks fine as a
file on disk. :func:`check_page` opens the page the way a reader would (file:// URL, Debian's
Chromium driven by playwright, never a downloaded browser), and records console errors, uncaught
page errors and every request leaving the file system (aborted, so checks stay offline and fast),
with an optional full-page screenshot.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Without the background-networking flags Chromium keeps trying to reach Google services and
# logs a flood of errors on an offline machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


@dataclass
class PageCheck:
    """What Chromium saw: the page title, console errors, uncaught page errors, requests that left
    the file system (blocked), the screenshot path if one was taken, h1/h2 texts and section ids."""

    title: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    headings: list[str] = field(default_factory=list)  # text of h1/h2, in document order
    element_ids: list[str] = field(default_factory=list)  # ids of <section> elements

    @property
    def ok(self) -> bool:
        """No console errors, no uncaught errors, and nothing requested outside file://."""
        return not (self.console_errors or self.page_errors or self.external_requests)


def find_chromium() -> str:
    """Path of a Chromium executable: ``$MELBO_TL_CHROMIUM``, else /usr/bin/chromium, else PATH."""
    override = os.environ.get("MELBO_TL_CHROMIUM")
    if override:
        if Path(override).is_file():
            return override
        raise RuntimeError(f"MELBO_TL_CHROMIUM={override!r} is not a file; point it at a Chromium executable")
    if DEFAULT_CHROMIUM.is_file():
        return str(DEFAULT_CHROMIUM)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "no Chromium found for the HTML render checks: install Debian's package "
        "(`apt-get install chromium`, which `make install` does as root) or set MELBO_TL_CHROMIUM "
        "to a Chromium/Chrome executable"
    )


def _sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError(
            "playwright is needed for the HTML render checks: `pip install playwright` "
            "(no `playwright install`: the system Chromium is used)"
        ) from exc
    return sync_playwright


def check_page(
    html_path: str | Path,
    *,
    screenshot: Path | None = None,
    width: int = 1280,
    full_page: bool = True,
    timeout_s: float = 180,
    wait_for: str | None = None,
) -> PageCheck:
    """Open ``html_path`` in headless Chromium and report what went wrong while it rendered.

    Waits for the load event, then for ``wait_for`` (a CSS selector) if given, then two animation
    frames so that scripts run at load have drawn. Non-file requests are recorded and aborted.
    The timeout is generous: parsing a report's inlined scripts took over a minute once on a
    2-core machine busy with a compile (it takes about 5 s when idle).
    """
    path = Path(html_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(path)
    args = (path, screenshot, width, full_page, timeout_s, wait_for)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _check(*args)
    # playwright's sync API refuses to run inside an event loop (e.g. a Jupyter kernel).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_check, *args).result()


def _check(
    path: Path, screenshot: Path | None, width: int, full_page: bool, timeout_s: float, wait_for: str | None
) -> PageCheck:
    sync_playwright = _sync_playwright()
    executable = find_chromium()
    console_errors: list[str] = []
    page_errors: list[str] = []
    external: list[str] = []

    def block(route: Any) -> None:
        external.append(route.request.url)
        route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=timeout_s * 1000
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.set_default_timeout(timeout_s * 1000)
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda err: page_errors.append(f"{err.name}: {err.message}"))
            page.on("websocket", lambda ws: external.append(ws.url))
            page.route(lambda url: not url.startswith(LOCAL_SCHEMES), block)
            page.goto(path.as_uri(), wait_until="load")
            if wait_for:
                page.wait_for_selector(wait_for)
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            if screenshot is not None:
                screenshot = Path(screenshot)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=full_page)
            return PageCheck(
                title=page.title(),
                console_errors=console_errors,
                page_errors=page_errors,
                external_requests=external,
                screenshot=screenshot,
                headings=page.eval_on_selector_all("h1, h2", "els => els.map(e => e.textContent.trim())"),
                element_ids=page.eval_on_selector_all("section[id]", "els => els.map(e => e.id)"),
            )
        finally:
            browser.close()
