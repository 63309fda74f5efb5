"""PNG export of plotly figures and circuitsvis views, offline in the system Chromium."""

from __future__ import annotations

import struct

import plotly.graph_objects as go
import pytest

from melbo_tl.analysis.images import render_pngs, save_png
from melbo_tl.analysis.token_views import TokenView, token_view_html


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def view() -> TokenView:
    return TokenView(
        tokens=["<|im_start|>", "How", " can", " <b>I</b>"],
        n_prompt_tokens=2,
        delta_norm=[9.0, 1.0, 2.0, 3.0],
        projection=[0.0, 1.0, -1.0, 2.0],
        completion=" can <b>I</b>",
        hook="blocks.8.hook_resid_pre",
    )


def test_figures_views_and_figure_json_become_pngs_of_the_requested_size(tmp_path):
    fig = go.Figure(go.Scatter(y=[1, 3, 2]), layout={"title": {"text": "a line"}})
    tall = go.Figure(go.Bar(y=[1, 2]), layout={"height": 700})
    pngs = render_pngs([fig, token_view_html(view()), fig.to_dict(), tall], width=800, scale=1)
    assert png_size(pngs[0]) == (800, 500)  # the default height for a layout without one
    assert pngs[2] == pngs[0]  # a figure and its JSON dict draw the same image
    assert png_size(pngs[3]) == (800, 700)
    w, h = png_size(pngs[1])  # the view is cropped to what it draws: one line of tokens
    assert 50 < w < 800 and 20 < h < 200
    path = save_png(fig, tmp_path / "sub" / "fig.png", scale=2)
    assert png_size(path.read_bytes()) == (1800, 1000)  # default width 900 CSS px at scale 2


def test_a_view_that_needs_the_network_is_an_error_not_a_blank_image():
    cdn = '<div id="circuits-vis-x"></div><script src="https://unpkg.com/circuitsvis/dist/cdn/esm.js"></script>'
    with pytest.raises(RuntimeError, match="unpkg.com"):
        render_pngs([cdn], timeout_s=20)


def test_bad_items_are_rejected_before_a_browser_starts():
    with pytest.raises(TypeError, match="item 1 is a int"):
        render_pngs(["<p>x</p>", 3])
    with pytest.raises(ValueError, match="scale must be > 0"):
        render_pngs(["<p>x</p>"], scale=0)
