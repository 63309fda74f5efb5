"""Token and attention views: exact ‖Δ‖ and projections, JSON round trips, offline circuitsvis HTML."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import torch

from melbo_tl.analysis.token_views import (
    AttentionView,
    TokenView,
    _bundle_js,
    attention_view,
    attention_view_html,
    circuitsvis_bundle_script,
    delta_token_view,
    standalone_page,
    token_view_html,
)
from melbo_tl.generate import generate
from melbo_tl.models import chat_tokenizer
from melbo_tl.prompts import Positions, prepare_prompts, tokenize
from melbo_tl.steering import AddVector, ClampVector

D = 64
HOOK = "blocks.1.hook_resid_pre"
PROMPT = "Tell me a story about a dragon."
NEW = 6
FIXED_ID = "circuits-vis-12345678-1234"


@pytest.fixture
def fixed_uuid(monkeypatch):
    from circuitsvis.utils import render

    monkeypatch.setattr(render, "uuid4", lambda: uuid.UUID("12345678-1234-5678-1234-567812345678"))


def _ids(model, steer) -> tuple[list[int], int]:
    """Prompt + steered greedy completion ids, recomputed independently of the module."""
    [text] = prepare_prompts(model, [PROMPT])
    prompt = tokenize(chat_tokenizer(model), [text]).input_ids[0].tolist()
    [done] = generate(model, [PROMPT], steer, max_new_tokens=NEW)
    return prompt + done.token_ids, len(prompt)


# --- delta_token_view ----------------------------------------------------------------------


def test_zero_vector_moves_nothing(tiny_model):
    view = delta_token_view(
        tiny_model,
        PROMPT,
        AddVector(torch.zeros(D), HOOK),
        at="blocks.3.hook_resid_post",
        direction=torch.randn(D),
        max_new_tokens=NEW,
    )
    assert view.delta_norm == [0.0] * len(view.tokens)


def test_add_vector_shifts_every_token_by_v(tiny_model):
    v = 3 * torch.randn(D)
    steer = AddVector(v, HOOK)
    view = delta_token_view(tiny_model, PROMPT, steer, at=HOOK, max_new_tokens=NEW)
    ids, n_prompt = _ids(tiny_model, steer)
    assert view.n_prompt_tokens == n_prompt and len(view.tokens) == len(ids) > n_prompt
    assert len(view.delta_norm) == len(view.projection) == len(ids)
    assert view.tokens == [chat_tokenizer(tiny_model).decode([i]) for i in ids]
    assert torch.allclose(torch.tensor(view.delta_norm), v.norm().expand(len(ids)), rtol=1e-5)
    _, cache = tiny_model.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n == HOOK)
    base = cache[HOOK][0] @ (v / v.norm())
    assert torch.allclose(torch.tensor(view.projection) - base, v.norm().expand(len(ids)), rtol=1e-4, atol=1e-4)
    assert view.hook == HOOK and isinstance(view.completion, str)


def test_prompt_only_steer_leaves_generated_tokens(tiny_model):
    v = 3 * torch.randn(D)
    view = delta_token_view(
        tiny_model, PROMPT, AddVector(v, HOOK, Positions.parse("prompt")), at=HOOK, max_new_tokens=NEW
    )
    n = view.n_prompt_tokens
    assert len(view.tokens) > n, "the tiny model stopped at once; the generated part would be untested"
    assert torch.allclose(torch.tensor(view.delta_norm[:n]), v.norm().expand(n), rtol=1e-5)
    assert view.delta_norm[n:] == [0.0] * (len(view.tokens) - n)


def test_token_view_round_trips_through_json(tiny_model):
    view = delta_token_view(tiny_model, PROMPT, AddVector(torch.randn(D), HOOK), at=HOOK, max_new_tokens=3)
    assert TokenView.from_dict(json.loads(json.dumps(view.to_dict()))) == view


def test_token_view_errors_name_the_bad_value(tiny_model):
    steer = AddVector(torch.randn(D), HOOK)
    with pytest.raises(ValueError, match="blocks.1.hook_nonsense"):
        delta_token_view(tiny_model, PROMPT, steer, at="blocks.1.hook_nonsense")
    with pytest.raises(ValueError, match="blocks.9.hook_resid_pre.*valid 0…3"):
        delta_token_view(tiny_model, PROMPT, steer, at="blocks.9.hook_resid_pre")
    with pytest.raises(ValueError, match="prompt '  ' is empty"):
        delta_token_view(tiny_model, "  ", steer, at=HOOK)
    with pytest.raises(ValueError, match="direction is required for a ClampVector"):
        delta_token_view(tiny_model, PROMPT, ClampVector(torch.randn(D), HOOK, 1.0), at=HOOK)
    with pytest.raises(ValueError, match="zero vector"):
        delta_token_view(tiny_model, PROMPT, AddVector(torch.zeros(D), HOOK), at=HOOK)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        delta_token_view(tiny_model, PROMPT, steer, at=HOOK, direction=torch.ones(3))


# --- attention_view ------------------------------------------------------------------------


def test_attention_rows_sum_to_one_and_zero_steer_changes_nothing(tiny_model):
    view = attention_view(tiny_model, PROMPT, AddVector(torch.zeros(D), HOOK), layer=2)
    heads, q, k = view.unsteered.shape
    assert q == k == len(view.tokens) and heads == tiny_model.cfg.n_heads
    assert torch.allclose(view.unsteered.sum(-1), torch.ones(heads, q), atol=1e-5)
    assert torch.equal(view.steered, view.unsteered)
    moved = attention_view(tiny_model, PROMPT, AddVector(10 * torch.randn(D), HOOK), layer=2)
    assert torch.allclose(moved.steered.sum(-1), torch.ones(heads, q), atol=1e-5)
    assert not torch.allclose(moved.steered, moved.unsteered)
    again = AttentionView.from_dict(json.loads(json.dumps(moved.to_dict())))
    assert again.tokens == moved.tokens and again.layer == 2 and torch.equal(again.steered, moved.steered)


def test_attention_view_errors_name_the_bad_value(tiny_model):
    steer = AddVector(torch.randn(D), HOOK)
    with pytest.raises(ValueError, match="layer 7 is out of range.*0…3"):
        attention_view(tiny_model, PROMPT, steer, layer=7)
    with pytest.raises(ValueError, match="prompt '' is empty"):
        attention_view(tiny_model, "", steer, layer=0)


# --- HTML ----------------------------------------------------------------------------------

VIEW = TokenView(["Hello", " dragon", "</script>"], 2, [0.0, 1.5, 2.0], [0.3, -0.2, 0.1], "x", HOOK)


def test_token_view_html_is_offline_and_self_contained(fixed_uuid):
    page = token_view_html(VIEW, values="projection")
    for needle in (FIXED_ID, "ColoredTokens", '"Hello"', '" dragon"', "-0.2", _bundle_js()):
        assert needle in page
    assert "unpkg.com" not in page
    assert f'<div id="{FIXED_ID}" style="margin: 15px 0;"></div>' in page  # a real closing tag
    assert page.count("</script>") == 1 and "&lt;/script&gt;" in page  # the token is text, not a tag


def test_bundle_false_relies_on_the_global_bundle(fixed_uuid):
    light = token_view_html(VIEW, bundle=False)
    bundle = circuitsvis_bundle_script()
    assert FIXED_ID in light and "CircuitsVis.ColoredTokens" in light and "1.5" in light
    assert _bundle_js() not in light and len(light) < 2000
    assert _bundle_js() in bundle and bundle.startswith("<script>") and "unpkg.com" not in bundle
    assert bundle.count("</script>") == 1 and "type=" not in bundle.split(">", 1)[0]
    with pytest.raises(ValueError, match="'logits' is not one of"):
        token_view_html(VIEW, values="logits")


def test_attention_view_html(fixed_uuid):
    pattern = torch.softmax(torch.randn(2, 3, 3), -1)
    view = AttentionView(["Hello", " dragon", "!"], 1, pattern, pattern.flip(0))
    page = attention_view_html(view)
    assert page.count(_bundle_js()) == 1 and "AttentionPatterns" in page and '" dragon"' in page
    assert "Layer 1 attention, unsteered" in page and "Layer 1 attention, steered" in page
    assert FIXED_ID in page and "unpkg.com" not in page
    light = attention_view_html(view, bundle=False)
    assert _bundle_js() not in light and light.count("AttentionPatterns") == 2


def test_standalone_page_escapes_title():
    page = standalone_page("Δ <steer>", "<p>body</p>")
    assert page.startswith("<!DOCTYPE html>") and "<title>Δ &lt;steer&gt;</title>" in page
    assert "<p>body</p>" in page and page.rstrip().endswith("</html>")


def test_page_with_one_bundle_renders_every_view(tmp_path):
    """Module scripts (bundle=False) see the classic script's global; both views render."""
    from melbo_tl.analysis.browser import find_chromium

    second = TokenView(["Second", " view"], 1, [1.0, 2.0], [0.0, 0.0], "y", HOOK)
    body = circuitsvis_bundle_script() + token_view_html(VIEW, bundle=False) + token_view_html(second, bundle=False)
    path = tmp_path / "page.html"
    path.write_text(standalone_page("views", body + "<p id='end'>end</p>"), encoding="utf-8")
    dom = subprocess.run(
        [
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            path.as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count('class="colored-tokens"') == 2 and 'id="end"' in dom
    assert "&nbsp;dragon" in dom and "&nbsp;view" in dom and "&lt;/script&gt;</span>" in dom
