"""Fill docs/serve.md's example sections from what experiments/serve_docs.py and benchmarks/serve.py measured.

Each section sits between ``<!-- NAME -->`` and ``<!-- /NAME -->`` and is rewritten in place, so
the page always shows the requests and numbers that were really sent and measured:

    .venv/bin/python experiments/serve_docs_render.py [--examples docs/serve/examples.json]
        [--bench benchmarks/results/serve_float32.json] [--doc docs/serve.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve import table

URL = "http://127.0.0.1:8000"


def curl_block(body: dict, response: dict, *, stream_head: list[str] | None = None) -> str:
    shown = {"model": body["model"]} | {k: v for k, v in body.items() if k != "model"}
    command = (
        f"curl -sS{'N' if stream_head else ''} {URL}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"  -d '{json.dumps(shown, ensure_ascii=False)}'"
    )
    if stream_head:
        shown_events = [e if len(e) < 200 else e[:200] + " …" for e in stream_head]
        return "```bash\n" + command + "\n```\n\n```text\n" + "\n".join(shown_events) + "\n```"
    return "```bash\n" + command + "\n```\n\n```json\n" + json.dumps(response, indent=2, ensure_ascii=False) + "\n```"


def sections(examples: dict, bench: dict | None) -> dict[str, str]:
    ok, bad, clients = examples["ok"], examples["bad"], examples.get("clients", {})
    steered = ok["steered"]
    out = {
        "examples:unsteered": curl_block(ok["unsteered"]["request"], ok["unsteered"]["response"]),
        "examples:steered": curl_block(steered["request"], steered["response"]),
    }
    if "steered" in clients:
        body = {**steered["request"], "stream": True}
        out["examples:stream"] = (
            f'Streamed (`"stream": true`), the same answer arrives as {clients["steered"]["curl_stream_events"]} '
            "server-sent events, one per token, then `[DONE]`:\n\n"
            + curl_block(body, {}, stream_head=clients["steered"]["curl_stream_head"])
        )
    ablated = ok.get("refusal direction ablated")
    if ablated:
        out["examples:ablate"] = (
            "Ablating the refusal direction instead "
            '(`"steering": {"vectors": [{"run": "refusal_direction", "algorithm": "ablate"}]}`) answers: '
            f"“{ablated['response']['choices'][0]['message']['content']}”"
        )
    rows = ["| request | status | response `error.message` (`error.param`) |", "|---|---:|---|"]
    for name, case in bad.items():
        err = case["response"]["error"]
        message = err["message"].replace("|", "\\|")
        rows.append(f"| {name} | {case['status']} | {message} (`{err['param']}`) |")
    out["bad"] = "\n".join(rows)
    if bench is not None:
        out["concurrency"] = table(bench)
    return out


def fill(doc: str, parts: dict[str, str]) -> str:
    for name, text in parts.items():
        opening, closing = f"<!-- {name} -->", f"<!-- /{name} -->"
        if opening not in doc:
            raise SystemExit(f"no {opening} marker in the page")
        head, rest = doc.split(opening, 1)
        tail = rest.split(closing, 1)[1] if closing in rest else rest
        doc = f"{head}{opening}\n{text}\n{closing}{tail}"
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path, default=Path("docs/serve/examples.json"))
    parser.add_argument("--bench", type=Path, default=Path("benchmarks/results/serve_float32.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/serve.md"))
    args = parser.parse_args()
    examples = json.loads(args.examples.read_text())
    bench = json.loads(args.bench.read_text()) if args.bench.is_file() else None
    args.doc.write_text(fill(args.doc.read_text(), sections(examples, bench)))
    print(f"filled {args.doc}")


if __name__ == "__main__":
    main()
