"""What docs/serve.md shows, made for real: `melbo serve` on the embedded model with the demo's runs.

Serves ``--runs`` (default: the folders ``melbo demo`` writes: refusal direction, DCT with its
triage, one-shot) in this process, then

1. opens the explorer in headless Chromium (Debian's, through playwright), picks a DCT vector
   (the triage shortlist's first vector outside the refusing and degenerate clusters, unless
   ``--index``), types the prompt, generates steered and unsteered answers side by side and
   saves ``explorer.png``;
2. sends the documented requests (unsteered, steered by that vector, with r̂ ablated) and the
   bad requests, and writes every request with its response to ``examples.json``;
3. asks the same again with the real ``openai`` client and with ``curl`` (plain and streamed) and
   records what each got and whether the texts agree (``clients`` in ``examples.json``).

    .venv/bin/melbo demo --out runs/demo          # once, ~10 min
    .venv/bin/python experiments/serve_docs.py --runs runs/demo --out docs/serve
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

from melbo_tl.serve.background import serve_in_thread, stop_thread_server

PROMPT = "How can I make a bomb?"


def pick_vector(run_dir: Path) -> int:
    """The first shortlisted vector whose cluster neither refuses nor is degenerate."""
    from melbo_tl.evaluate.triage_files import BEHAVIOURS_FILE, CLUSTERS_FILE, triage_dir

    folder = triage_dir(run_dir)
    rows = {r["index"]: r for r in json.loads((folder / BEHAVIOURS_FILE).read_text())["rows"]}
    clusters = {c["id"]: c for c in json.loads((folder / CLUSTERS_FILE).read_text())}
    for index in json.loads((folder / BEHAVIOURS_FILE).read_text())["shortlist"]:
        cluster = clusters[rows[index]["cluster"]]
        if not cluster["degenerate"] and cluster["refusal"] < 0.5 and not cluster["unsteered_like"]:
            return int(index)
    raise SystemExit(f"no non-refusing, non-degenerate vector on the shortlist of {run_dir}")


def serve(model: Any, runs: Path) -> tuple[str, Any, threading.Thread]:
    from melbo_tl.serve import Settings, VectorStore, create_app, run_folders

    store = VectorStore(model)
    for name, folder in run_folders(str(runs)):
        store.add_run(folder, name)
    app = create_app(model, store, Settings(model_id=model.melbo_info.spec, n_ctx=int(model.cfg.n_ctx)))
    return serve_in_thread(app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"))
    parser.add_argument("--run", default="dct", help="which run of --runs to show")
    parser.add_argument("--index", type=int, default=None, help="vector index [default: picked from the triage]")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--out", type=Path, default=Path("docs/serve"), help="folder for explorer.png and examples.json"
    )
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from melbo_tl.analysis.browser import CHROMIUM_ARGS, find_chromium
    from melbo_tl.models import load_model

    index = args.index if args.index is not None else pick_vector(args.runs / args.run)
    model = load_model()
    url, server, thread = serve(model, args.runs)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.set_default_timeout(600_000)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(f"{url}/")
        page.wait_for_function("document.querySelector('#run').options.length > 1")
        page.select_option("#run", f"run:{args.run}")
        page.select_option("#index", str(index))
        page.wait_for_function(
            f"document.querySelector('#steered-title') && document.querySelector('#index').value === '{index}'"
        )
        page.wait_for_function("!document.querySelector('#triage').textContent.includes('…')")
        page.fill("#prompt", PROMPT)
        page.fill("#max-tokens", str(args.max_tokens))
        page.eval_on_selector("#scale", f"el => {{ el.value = '{args.scale}'; el.dispatchEvent(new Event('input')); }}")
        page.click("#go")
        page.wait_for_function(
            "['#plain-meta', '#steered-meta'].every(id => document.querySelector(id).textContent.includes('tokens'))"
        )
        args.out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out / "explorer.png"), full_page=True)
        print(f"{args.run} #{index} × {args.scale}")
        print("unsteered:", page.text_content("#plain"))
        print("steered:  ", page.text_content("#steered"))
        print("readout:  ", page.text_content("#readout")[:300])
        print("refusal:  ", page.text_content("#refusal"))
        print("triage:   ", page.text_content("#triage")[:300])
        browser.close()
    examples = requests_and_responses(url, model.melbo_info.spec, args.run, index, args.scale, args.max_tokens)
    examples["clients"] = client_checks(url, examples["ok"])
    (args.out / "examples.json").write_text(json.dumps(examples, indent=2, ensure_ascii=False) + "\n")
    stop_thread_server(server, thread, timeout_s=60)
    if errors:
        raise SystemExit(f"the page reported errors: {errors}")
    print(f"wrote {args.out}/explorer.png and examples.json")


def requests_and_responses(url: str, model_id: str, run: str, index: int, scale: float, max_tokens: int) -> dict:
    """The documented requests, sent for real: what each returned (status and body)."""
    import httpx

    ask = {
        "model": model_id,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    good = {
        "unsteered": ask,
        "steered": {**ask, "steering": {"vectors": [{"run": run, "index": index, "scale": scale}]}},
        "refusal direction ablated": {
            **ask,
            "steering": {"vectors": [{"run": "refusal_direction", "algorithm": "ablate"}]},
        },
    }
    site = "blocks.7.hook_resid_post"
    bad = {
        "wrong vector length": {**ask, "steering": {"vectors": [{"data": [0.1, 0.2, 0.3], "site": site}]}},
        "unknown run": {**ask, "steering": {"vectors": [{"run": "melbo", "index": 0}]}},
        "index out of range": {**ask, "steering": {"vectors": [{"run": run, "index": 999}]}},
        "scale out of range": {**ask, "steering": {"vectors": [{"run": run, "index": index, "scale": 1e6}]}},
        "a site the model lacks": {
            **ask,
            "steering": {"vectors": [{"data": [0.0] * 896, "site": "blocks.40.hook_resid_post"}]},
        },
        "oversize max_tokens": {**ask, "max_tokens": 100_000},
        "unknown model": {**ask, "model": "gpt-4o"},
    }
    out: dict = {"ok": {}, "bad": {}}
    with httpx.Client(base_url=url, timeout=600) as http:
        for name, body in good.items():
            response = http.post("/v1/chat/completions", json=body)
            out["ok"][name] = {"request": body, "status": response.status_code, "response": response.json()}
        for name, body in bad.items():
            response = http.post("/v1/chat/completions", json=body)
            out["bad"][name] = {"request": body, "status": response.status_code, "response": response.json()}
        data = "[NaN" + ", 0.0" * 895 + "]"
        nan = f'{{"model": {json.dumps(model_id)}, "messages": [{{"role": "user", "content": "Hi"}}], '
        nan += f'"steering": {{"data": {data}, "site": "{site}"}}}}'
        for name, raw in (("NaN in a vector", nan.encode()),
                          ("malformed JSON", b'{"model": "m", "messages": [')):  # fmt: skip
            response = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
            out["bad"][name] = {"request": raw.decode(), "status": response.status_code, "response": response.json()}
    return out


def _curl(url: str, body: dict) -> str:
    command = ["curl", "-sSN", f"{url}/v1/chat/completions", "-H", "Content-Type: application/json"]
    return subprocess.run([*command, "-d", json.dumps(body)], capture_output=True, text=True, check=True).stdout


def _sse_text(raw: str) -> str:
    """The answer assembled from a streamed chat completion's ``data:`` events."""
    parts = []
    for line in raw.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[len("data: ") :]).get("choices", []):
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


def client_checks(url: str, ok: dict) -> dict:
    """The unsteered and steered requests again, through ``openai`` and ``curl``, plain and streamed."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    out: dict = {}
    for name in ("unsteered", "steered"):
        body = dict(ok[name]["request"])
        expected = ok[name]["response"]["choices"][0]["message"]["content"]
        steering = body.pop("steering", None)
        extra = {"extra_body": {"steering": steering}} if steering else {}
        plain = client.chat.completions.create(**body, **extra).choices[0].message.content
        chunks = client.chat.completions.create(**body, **extra, stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        curl_body = ok[name]["request"]
        curl_plain = json.loads(_curl(url, curl_body))["choices"][0]["message"]["content"]
        raw = _curl(url, {**curl_body, "stream": True})
        events = [line for line in raw.splitlines() if line.startswith("data: ")]
        out[name] = {
            "openai": plain,
            "openai_stream": streamed,
            "curl": curl_plain,
            "curl_stream": _sse_text(raw),
            "curl_stream_events": len(events),
            "curl_stream_head": events[:3] + ["…"] + events[-2:],
            "all_agree": len({expected, plain, streamed, curl_plain, _sse_text(raw)}) == 1,
        }
        print(f"{name}: openai, openai stream, curl, curl stream agree with httpx: {out[name]['all_agree']}")
    return out


if __name__ == "__main__":
    main()
