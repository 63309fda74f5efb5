"""Headless-Chromium render checks. Never skipped: a missing browser must fail loudly (CI installs
Debian's chromium through `make install`)."""

from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from melbo_tl.analysis import browser
from melbo_tl.analysis.browser import check_page, find_chromium

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _page(tmp_path: Path, body: str, name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(f"<!DOCTYPE html><html><head><title>t</title></head><body>{body}</body></html>")
    return path


def test_plotly_report_renders(tmp_path: Path) -> None:
    fig = go.Figure(go.Scatter(y=[1, 3, 2], mode="lines+markers", name="objective"))
    plot = pio.to_html(fig, include_plotlyjs=True, full_html=True)
    html = plot.replace("<body>", '<body><h1>Run report</h1><section id="losses"><h2>Losses</h2>', 1)
    html = html.replace("</body>", "</section></body>", 1).replace("<head>", "<head><title>Report</title>", 1)
    path = tmp_path / "report.html"
    path.write_text(html)
    shot = tmp_path / "shots" / "report.png"

    check = check_page(path, screenshot=shot, wait_for=".plotly .main-svg")

    assert check.ok, check
    assert check.title == "Report"
    assert check.headings == ["Run report", "Losses"]
    assert check.element_ids == ["losses"]
    assert check.screenshot == shot
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


def test_uncaught_error_is_reported(tmp_path: Path) -> None:
    check = check_page(_page(tmp_path, '<h1>x</h1><script>throw new Error("boom")</script>'))
    assert not check.ok
    assert any("boom" in err for err in check.page_errors)
    assert check.screenshot is None


def test_console_error_is_reported(tmp_path: Path) -> None:
    check = check_page(_page(tmp_path, '<script>console.error("bad")</script>'))
    assert not check.ok
    assert check.console_errors == ["bad"]
    assert check.page_errors == []


def test_external_request_is_reported(tmp_path: Path) -> None:
    check = check_page(_page(tmp_path, '<img src="https://example.com/x.png">'))
    assert not check.ok
    assert check.external_requests == ["https://example.com/x.png"]


def test_missing_chromium_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MELBO_TL_CHROMIUM", raising=False)
    monkeypatch.setattr(browser, "DEFAULT_CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install chromium"):
        find_chromium()
    monkeypatch.setenv("MELBO_TL_CHROMIUM", str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="MELBO_TL_CHROMIUM"):
        find_chromium()


def test_missing_playwright_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)
    with pytest.raises(RuntimeError, match="pip install playwright"):
        check_page(_page(tmp_path, "<p>x</p>"))
