"""Static PNG images of plotly figures and HTML views, rendered offline in headless Chromium.

GitHub pages, papers and slides show images, not JavaScript. A plotly figure is drawn by the
plotly.js that ships with the installed plotly (``Plotly.toImage``, the same call plotly's own
image export makes); an HTML fragment such as a circuitsvis token view (rendered offline by
:mod:`melbo_tl.analysis.token_views`) is screenshotted once its scripts have drawn. Both run in Debian's
Chromium driven by playwright (:func:`melbo_tl.analysis.browser.find_chromium`), never a downloaded
browser; any request that would leave the machine is blocked and reported as an error, so an
image never silently misses a view that needed a CDN.

>>> save_png(fig, "figure.png")
>>> pngs = render_pngs([fig, token_view_html(view)])  # one browser for many images
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from melbo_tl.analysis.browser import CHROMIUM_ARGS, LOCAL_SCHEMES, _sync_playwright, find_chromium

DEFAULT_WIDTH = 900  # CSS pixels: about the width GitHub gives a README image
DEFAULT_HEIGHT = 500  # for figures whose layout sets no height (plotly's own default is 450)
DEFAULT_SCALE = 2.0  # device pixels per CSS pixel: sharp on high-density screens
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DRAW_PLOTLY = """async ([spec, width, height, scale]) => {
  const fig = JSON.parse(spec);
  const gd = document.getElementById("figure");
  await Plotly.newPlot(gd, fig.data || [], fig.layout || {}, {staticPlot: true});
  const url = await Plotly.toImage(gd, {format: "png", width, height, scale});
  Plotly.purge(gd);
  return url;
}"""
# A circuitsvis view is a <div id="circuits-vis-…"> filled by React once its module script runs.
_VIEWS_DRAWN = """() => [...document.querySelectorAll('[id^="circuits-vis-"]')].every(d => d.children.length > 0)"""


def _is_plotly(item: Any) -> bool:
    return hasattr(item, "to_json") or (isinstance(item, dict) and ("data" in item or "layout" in item))


def _plotly_spec(item: Any) -> tuple[str, dict[str, Any]]:
    """The figure as JSON text (what plotly.js reads) and its layout."""
    spec = item.to_json() if hasattr(item, "to_json") else json.dumps(item)
    return spec, json.loads(spec).get("layout", {})


def _html_page(fragment: str, width: int) -> str:
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><style>'
        "body{margin:0;background:#fff;font-family:'DejaVu Sans',Arial,sans-serif}"
        f"#view{{display:inline-block;padding:12px;max-width:{width - 24}px}}"
        f'</style></head><body><div id="view">{fragment}</div></body></html>'
    )


def render_pngs(
    items: Sequence[Any],
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = DEFAULT_SCALE,
    timeout_s: float = 180,
) -> list[bytes]:
    """PNG bytes for each item: a plotly ``Figure`` (or its JSON dict) or an HTML fragment (``str``).

    Figures keep their layout's width and height when set, else ``width`` × ``height`` (defaults
    900 × 500 CSS pixels); HTML is laid out ``width`` wide and cropped to what it draws. One
    Chromium serves all items. Raises ``RuntimeError`` when an item requests anything outside the
    machine (such as circuitsvis's CDN build) or a script on its page throws.
    """
    for i, item in enumerate(items):
        if not (isinstance(item, str) or _is_plotly(item)):
            raise TypeError(
                f"item {i} is a {type(item).__name__}; expected a plotly Figure, its JSON dict, or HTML str"
            )
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    args = (list(items), width, height, scale, timeout_s)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _render(*args)
    # playwright's sync API refuses to run inside an event loop (e.g. a Jupyter kernel).
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_render, *args).result()


def save_png(item: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write one item (see :func:`render_pngs`) as a PNG file; returns its path."""
    from melbo_tl.artifacts import atomic_write_bytes

    [png] = render_pngs([item], **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, png)
    return path


def _render(items: list[Any], width: int | None, height: int | None, scale: float, timeout_s: float) -> list[bytes]:
    from plotly.offline import get_plotlyjs

    sync_playwright = _sync_playwright()
    problems: list[str] = []

    def block(route: Any) -> None:
        problems.append(f"requested {route.request.url} (blocked: images render offline)")
        route.abort()

    css_width = width or DEFAULT_WIDTH
    out: list[bytes] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS, timeout=timeout_s * 1000
        )
        try:
            context = browser.new_context(viewport={"width": css_width, "height": 600}, device_scale_factor=scale)
            context.route(lambda url: not url.startswith(LOCAL_SCHEMES), block)
            plotly_page = None
            for i, item in enumerate(items):
                if isinstance(item, str):
                    png = _screenshot(context, item, css_width, timeout_s, problems)
                else:
                    if plotly_page is None:
                        plotly_page = _plotly_page(context, get_plotlyjs(), timeout_s, problems)
                    spec, layout = _plotly_spec(item)
                    size = [
                        int(layout.get("width") or css_width),
                        int(layout.get("height") or height or DEFAULT_HEIGHT),
                    ]
                    url = plotly_page.evaluate(_DRAW_PLOTLY, [spec, *size, scale])
                    png = base64.b64decode(url.split(",", 1)[1])
                if problems:
                    raise RuntimeError(f"item {i} did not render cleanly: " + "; ".join(problems))
                if not png.startswith(_PNG_MAGIC):
                    raise RuntimeError(f"item {i}: Chromium returned no PNG")
                out.append(png)
        finally:
            browser.close()
    return out


def _watch(page: Any, problems: list[str]) -> None:
    page.on("pageerror", lambda err: problems.append(f"script error {err.name}: {err.message}"))
    page.on("console", lambda msg: problems.append(f"console error: {msg.text}") if msg.type == "error" else None)


def _plotly_page(context: Any, plotly_js: str, timeout_s: float, problems: list[str]) -> Any:
    page = context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    _watch(page, problems)
    page.set_content(
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><script>{plotly_js}</script></head>'
        '<body style="margin:0"><div id="figure"></div></body></html>',
        wait_until="load",
    )
    return page


def _screenshot(context: Any, fragment: str, width: int, timeout_s: float, problems: list[str]) -> bytes:
    page = context.new_page()
    try:
        page.set_default_timeout(timeout_s * 1000)
        _watch(page, problems)
        page.set_content(_html_page(fragment, width), wait_until="load")
        if problems:  # a blocked script never draws: say why instead of waiting for it
            raise RuntimeError("HTML did not render offline: " + "; ".join(problems))
        page.wait_for_function(_VIEWS_DRAWN)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        return page.locator("#view").screenshot(type="png")
    finally:
        page.close()
