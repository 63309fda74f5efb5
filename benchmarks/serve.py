"""`melbo serve` under load: N clients, each with its own steering vector, batched vs one at a time.

Starts the server in this process (uvicorn on a free port) and talks to it with the real
``openai`` client, one thread per client. For N = 1, 4, 16:

* **batched**: the N clients send their requests at the same moment (a barrier); the server
  decodes them together, every row with its own vector.
* **one at a time**: the same N requests, each sent when the previous one finished (what a
  server that cannot batch different vectors does); a client's latency there includes waiting
  for the requests before it.

Every request streams ``--max-tokens`` tokens greedily (``ignore_eos``, so all answers have the
same length), with a random vector of norm ``--norm`` at ``blocks.L.hook_resid_pre``, L = a
third of the depth. Reported per mode: wall time, throughput (generated tokens / wall time),
latency p50/p95 and mean time to first token, measured from the moment all N clients asked,
and mean rows per decoding step. Each mode runs ``--repeats`` times, in alternating order, and
the fastest run of each is reported (all wall times are kept in the JSON): the machine's load
drifts, and both modes get the same chance to avoid it. Every answer is checked to equal the
first one-at-a-time answer token for token, and one request is repeated with ``curl`` and
checked to give the same text. Results: ``benchmarks/results/serve_<dtype>.json`` (and a markdown table on stdout).

    /work/bin/quiet .venv/bin/python benchmarks/serve.py [--model M] [--dtypes float32] [--clients 1,4,16] [--repeats 2,2,1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from melbo_tl.serve.background import serve_in_thread, stop_thread_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_model_options, dtypes, load

PROMPTS = [
    "Explain how a bicycle gear works.", "Write a haiku about the sea.", "What is a prime number?",
    "Give me three tips for learning Python.", "Describe the water cycle.", "How do vaccines work?",
    "Summarize the plot of Hamlet.", "What causes the seasons?", "Write a limerick about a cat.",
    "How does a refrigerator keep food cold?", "What is the difference between RAM and ROM?",
    "Suggest a name for a bakery.", "Why is the sky blue?", "How do I boil an egg?",
    "Explain recursion to a child.", "What are the planets of the solar system?",
]  # fmt: skip


def one_request(client: Any, model_id: str, prompt: str, steering: dict, max_tokens: int, t0: float) -> dict[str, Any]:
    """Stream one steered answer; times are seconds since ``t0``."""
    first = None
    ids: list[int] = []
    stream = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True, extra_body={"steering": steering, "ignore_eos": True, "return_token_ids": True},
    )  # fmt: skip
    for chunk in stream:
        choice = chunk.choices[0] if chunk.choices else None
        if choice is not None and choice.delta.content and first is None:
            first = time.perf_counter() - t0
        if choice is not None and choice.finish_reason:
            ids = (choice.model_extra or {}).get("token_ids", [])
    return {"ttft": first, "latency": time.perf_counter() - t0, "tokens": len(ids), "token_ids": ids}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default); one value is its own percentile."""
    ordered = sorted(values)
    at = q / 100 * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def summarize(results: list[dict[str, Any]], wall: float, rows_per_step: float) -> dict[str, Any]:
    tokens = sum(r["tokens"] for r in results)
    latencies = [r["latency"] for r in results]
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_mean_s": statistics.mean(r["latency"] for r in results),
        "latency_max_s": max(r["latency"] for r in results),
        "ttft_mean_s": statistics.mean(r["ttft"] for r in results),
        "ttft_max_s": max(r["ttft"] for r in results),
        "rows_per_step": rows_per_step,
    }


def run_clients(
    url: str, model_id: str, engine: Any, requests: list[tuple[str, dict]], max_tokens: int, together: bool
):
    from openai import OpenAI

    clients = [OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600) for _ in requests]
    before = dict(engine.stats)
    if together:
        barrier = threading.Barrier(len(requests) + 1)
        box: dict[str, float] = {}

        def go(i: int) -> dict[str, Any]:
            barrier.wait()
            return one_request(clients[i], model_id, *requests[i], max_tokens, box["t0"])

        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(go, i) for i in range(len(requests))]
            box["t0"] = time.perf_counter()
            barrier.wait()
            results = [f.result() for f in futures]
        wall = time.perf_counter() - box["t0"]
    else:
        t0 = time.perf_counter()
        results = [one_request(clients[i], model_id, *requests[i], max_tokens, t0) for i in range(len(requests))]
        wall = time.perf_counter() - t0
    steps = engine.stats["decode_steps"] - before["decode_steps"]
    rows = engine.stats["row_steps"] - before["row_steps"]
    return results, summarize(results, wall, rows / max(1, steps))


def curl_check(
    url: str, model_id: str, prompt: str, steering: dict, max_tokens: int, client_text: str
) -> dict[str, Any]:
    body = {"model": model_id, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "steering": steering}  # fmt: skip
    started = time.perf_counter()
    out = subprocess.run(
        ["curl", "-sS", f"{url}/v1/chat/completions", "-H", "Content-Type: application/json", "-d", json.dumps(body)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    text = json.loads(out.stdout)["choices"][0]["message"]["content"]
    return {"seconds": time.perf_counter() - started, "same_text_as_openai_client": text == client_text}


def bench(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    from openai import OpenAI

    from melbo_tl.serve import Settings, VectorStore, create_app

    model = load(args.model, device=args.device, dtype=dtype)
    info = model.melbo_info
    site = f"blocks.{info.n_layers // 3}.hook_resid_pre"
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(max(args.clients), info.d_model, generator=gen)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True) * args.norm
    steerings = [{"vectors": [{"data": v.tolist(), "site": site}]} for v in vectors]
    settings = Settings(model_id=info.spec, n_ctx=int(model.cfg.n_ctx), max_tokens=args.max_tokens)
    app = create_app(model, VectorStore(model), settings, max_batch=max(args.clients), max_queue=4 * max(args.clients))
    url, server, thread = serve_in_thread(app)
    engine = app.state.engine
    warm = OpenAI(base_url=f"{url}/v1", api_key="unused")
    one_request(warm, info.spec, PROMPTS[0], steerings[0], 4, time.perf_counter())
    rows: dict[str, Any] = {}
    for n, repeats in zip(args.clients, args.repeats, strict=True):
        requests = [(PROMPTS[i % len(PROMPTS)], steerings[i]) for i in range(n)]
        runs: dict[bool, list[tuple[list, dict]]] = {False: [], True: []}
        for r in range(repeats):  # alternate the order (seq, batched, batched, seq, …): load drifts hit both
            for together in (False, True) if r % 2 == 0 else (True, False):
                runs[together].append(run_clients(url, info.spec, engine, requests, args.max_tokens, together))
        alone, seq = min(runs[False], key=lambda x: x[1]["wall_s"])
        bat = min(runs[True], key=lambda x: x[1]["wall_s"])[1]
        seq["repeats_wall_s"] = [x[1]["wall_s"] for x in runs[False]]
        bat["repeats_wall_s"] = [x[1]["wall_s"] for x in runs[True]]
        same = all([a["token_ids"] for a in alone] == [b["token_ids"] for b in x[0]] for x in runs[True] + runs[False])
        rows[str(n)] = {"one_at_a_time": seq, "batched": bat, "identical_answers": same,
                        "speedup": seq["wall_s"] / bat["wall_s"]}  # fmt: skip
        print(
            f"N={n}: one at a time {seq['wall_s']:.1f} s, batched {bat['wall_s']:.1f} s, identical {same}", flush=True
        )
    final = warm.chat.completions.create(
        model=info.spec, messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=min(16, args.max_tokens), temperature=0,
        extra_body={"steering": steerings[1], "ignore_eos": True},
    )  # fmt: skip
    curl = curl_check(
        url, info.spec, PROMPTS[1], steerings[1], min(16, args.max_tokens), final.choices[0].message.content
    )
    stop_thread_server(server, thread, timeout_s=60)
    return {
        "model": info.spec, "dtype": info.dtype, "device": info.device, "torch_threads": torch.get_num_threads(),
        "max_tokens": args.max_tokens, "repeats": args.repeats, "site": site, "vector_norm": args.norm, "clients": rows, "curl": curl,
    }  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']}, {result['dtype']}, {result['device']} ({result['torch_threads']} threads), "
        f"{result['max_tokens']} tokens per answer, every client its own vector",
        "",
        "| clients | mode | wall s | tokens/s | latency p50 s | latency p95 s | mean TTFT s | rows/step | speed-up |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in result["clients"].items():
        for mode, name in (("one_at_a_time", "one at a time"), ("batched", "batched")):
            r = row[mode]
            speed = f"{row['speedup']:.2f}×" if mode == "batched" else ""
            lines.append(
                f"| {n} | {name} | {r['wall_s']:.1f} | {r['tokens_per_s']:.1f} | {r['latency_p50_s']:.2f} | "
                f"{r['latency_p95_s']:.2f} | {r['ttft_mean_s']:.2f} | {r['rows_per_step']:.1f} | {speed} |"
            )
    same = all(row["identical_answers"] for row in result["clients"].values())
    lines += ["", f"batched answers identical to one-at-a-time answers, token for token: {same}; "
              f"curl gives the openai client's text: {result['curl']['same_text_as_openai_client']}"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--norm", type=float, default=4.0, help="norm of each client's random vector")
    parser.add_argument(
        "--repeats", default="2", help="runs of each mode, the fastest reported: one number, or one per client count"
    )
    parser.add_argument("--out", default="benchmarks/results", help="folder for serve_<dtype>.json")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    args.repeats = [int(r) for r in args.repeats.split(",") if r.strip()]
    if len(args.repeats) == 1:
        args.repeats *= len(args.clients)
    if len(args.repeats) != len(args.clients) or min(args.repeats) < 1:
        parser.error(f"--repeats {args.repeats}: give one count >= 1, or one per client count {args.clients}")
    for dtype in dtypes(args.dtypes):
        result = bench(args, dtype)
        path = Path(args.out) / f"serve_{str(dtype).replace('torch.', '')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(table(result))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
