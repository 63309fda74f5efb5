"""The explorer page in headless Chromium (Debian's, through playwright), against the live server.

Never skipped: a missing browser fails loudly, as for the report checks (tests/analysis/test_browser.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.serve.conftest import MODEL_ID

PROMPT = "Tell me about dragons."
BOTH_DONE = "['#plain-meta', '#steered-meta'].every(id => document.querySelector(id).textContent.includes('tokens'))"


def _answer(live, steering: Any = None) -> str:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 12, "temperature": 0}
    if steering is not None:
        body["steering"] = steering
    return live.client().post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]


def _set_scale(page: Any, value: float, event: str) -> None:
    page.eval_on_selector("#scale", f"el => {{ el.value = '{value}'; el.dispatchEvent(new Event('{event}')); }}")


def test_explorer_steers_live_and_shows_the_vector(live, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    from melbo_tl.analysis.browser import CHROMIUM_ARGS, find_chromium

    errors: list[str] = []
    outside: list[str] = []

    def block(route: Any) -> None:
        outside.append(route.request.url)
        route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"{e.name}: {e.message}"))
            page.route(lambda url: not url.startswith(live.url), block)
            page.goto(f"{live.url}/", wait_until="load")
            page.wait_for_function("document.querySelector('#run').options.length > 2")
            assert MODEL_ID in page.text_content("#model")

            page.select_option("#run", "run:melbo")
            page.select_option("#index", "2")
            page.wait_for_function("document.querySelector('#triage').textContent.includes('shortlist #2')")
            assert "recipe" in page.text_content("#triage")
            assert "blocks.1.hook_resid_pre" in page.text_content("#readout")
            assert "vs refusal" in page.text_content("#refusal")
            page.fill("#prompt", PROMPT)
            page.fill("#max-tokens", "12")
            _set_scale(page, 1.5, "input")
            page.click("#go")
            page.wait_for_function(BOTH_DONE)
            assert page.text_content("#plain") == _answer(live)
            assert page.text_content("#steered") == _answer(live, {"run": "melbo", "index": 2, "scale": 1.5})
            assert page.text_content("#steered") != page.text_content("#plain")

            # moving the slider regenerates by itself
            page.evaluate("document.querySelector('#steered-meta').textContent = ''")
            _set_scale(page, -2.0, "change")
            page.wait_for_function(BOTH_DONE)
            assert page.text_content("#steered") == _answer(live, {"run": "melbo", "index": 2, "scale": -2.0})
            assert "the lists swap" in page.text_content("#readout")
            page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)

            # the refusal direction, ablated
            page.select_option("#run", "run:refusal")
            page.wait_for_function("document.querySelector('#triage').textContent.includes('not triaged')")
            page.check("input[name=mode][value=ablate]")
            page.click("#go")
            page.wait_for_function(BOTH_DONE)
            assert page.text_content("#steered-title").startswith("Ablating refusal")
            assert page.text_content("#steered") == _answer(live, {"run": "refusal", "algorithm": "ablate"})
        finally:
            browser.close()
    assert errors == []
    assert outside == []
    assert (tmp_path / "explorer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_late_answer_for_an_earlier_choice_does_not_overwrite_the_current_vector(live):
    """The facts shown are the chosen vector's even when an earlier choice's answer arrives after it."""
    from playwright.sync_api import sync_playwright

    from melbo_tl.analysis.browser import CHROMIUM_ARGS, find_chromium

    held: list[Any] = []

    def hold_index_0(route: Any) -> None:
        if "index=0" in route.request.url:
            held.append(route)
        else:
            route.continue_()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{live.url}/", wait_until="load")
            page.wait_for_function("document.querySelector('#run').options.length > 2")
            page.route("**/v1/steering/inspect*", hold_index_0)
            page.select_option("#run", "run:melbo")  # asks for vector 0; its answer is held back
            page.select_option("#index", "2")
            page.wait_for_function("document.querySelector('#triage').textContent.includes('shortlist #2')")
            assert held, "the request for vector 0 was not made"
            for route in held:
                route.continue_()
            page.wait_for_timeout(1_000)
            assert "shortlist #2" in page.text_content("#triage")
            assert "text 2" in page.text_content("#triage")
        finally:
            browser.close()
