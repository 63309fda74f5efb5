"""The OpenAI-compatible routes, through the real ``openai`` client and plain HTTP."""

from __future__ import annotations

import json

import pytest
import torch

from melbo_tl.generate import generate
from melbo_tl.steering import AddVector
from melbo_tl.steering.sites import Site
from tests.serve.conftest import HOOK, MODEL_ID

PROMPT = "Tell me about dragons."


def _openai(live):
    from openai import OpenAI

    return OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def _vector(seed: int, norm: float = 20.0) -> torch.Tensor:
    v = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def test_models_lists_the_served_model(live):
    models = _openai(live).models.list()
    assert [m.id for m in models.data] == [MODEL_ID]


def test_chat_completion_matches_the_library_unsteered_and_steered(live, tiny_model):
    client = _openai(live)
    v = _vector(1)
    plain = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": PROMPT}], max_tokens=12, temperature=0
    )
    steered = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": PROMPT}], max_tokens=12, temperature=0,
        extra_body={"steering": {"vectors": [{"data": v.tolist(), "site": HOOK, "scale": 1.5}]}},
    )  # fmt: skip
    (ref_plain,) = generate(tiny_model, PROMPT, max_new_tokens=12)
    (ref_steered,) = generate(tiny_model, PROMPT, AddVector(v, HOOK, scale=1.5), max_new_tokens=12)
    assert plain.choices[0].message.content == ref_plain.text
    assert steered.choices[0].message.content == ref_steered.text
    assert ref_plain.text != ref_steered.text  # the vector matters
    assert steered.choices[0].finish_reason == ("stop" if ref_steered.finished else "length")
    assert steered.usage.completion_tokens == len(ref_steered.token_ids)
    echo = steered.model_extra["steering"]["additions"]
    assert echo == [{"site": HOOK, "norm": pytest.approx(30.0, rel=1e-5), "positions": "all"}]


def test_streamed_chat_equals_the_whole_answer(live):
    client = _openai(live)
    kwargs = dict(model=MODEL_ID, messages=[{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0,
                  extra_body={"steering": [{"run": "melbo", "index": 1}]})  # fmt: skip
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_raw_sse_stream_ends_with_done(live):
    body = {"model": MODEL_ID, "prompt": "The quick brown fox", "max_tokens": 5, "temperature": 0, "stream": True}
    with live.client().stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_text_completion_and_several_choices(live, tiny_model):
    client = _openai(live)
    out = client.completions.create(
        model=MODEL_ID, prompt=["The quick brown fox", "Once upon"], max_tokens=6, temperature=0, n=2
    )
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    refs = generate(tiny_model, ["The quick brown fox", "Once upon"], chat=False, max_new_tokens=6)
    assert [c.text for c in out.choices] == [refs[0].text, refs[0].text, refs[1].text, refs[1].text]


def test_sampling_is_reproducible_per_seed(live):
    client = _openai(live)

    def ask(seed):
        return client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": PROMPT}], max_tokens=10, temperature=1.0, seed=seed
        ).choices[0].message.content  # fmt: skip

    assert ask(3) == ask(3)
    assert len({ask(s) for s in range(4)}) > 1


def test_stop_string_cuts_the_answer(live):
    client = _openai(live)
    full = client.completions.create(model=MODEL_ID, prompt="The quick brown fox", max_tokens=12, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = client.completions.create(
        model=MODEL_ID, prompt="The quick brown fox", max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_positions_prompt_only_leaves_generated_tokens_unsteered(live, tiny_model):
    from melbo_tl.prompts import Positions

    client = _openai(live)
    v = _vector(2)
    for where, ref_positions in (("prompt", "prompt"), ("both", "all")):
        got = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": PROMPT}], max_tokens=10, temperature=0,
            extra_body={"steering": [{"data": v.tolist(), "site": HOOK, "positions": where}], "return_token_ids": True},
        )  # fmt: skip
        (ref,) = generate(tiny_model, PROMPT, AddVector(v, HOOK, Positions.parse(ref_positions)), max_new_tokens=10)
        assert got.choices[0].model_extra["token_ids"] == ref.token_ids


def test_ablation_request_matches_the_library(live, tiny_model):
    from melbo_tl.steering import AblateDirection

    client = _openai(live)
    got = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": PROMPT}], max_tokens=10, temperature=0,
        extra_body={"steering": {"vectors": [{"run": "refusal", "index": 0, "algorithm": "ablate"}]}, "return_token_ids": True},
    )  # fmt: skip
    direction = live.store.run("refusal").run.vector(0)
    (ref,) = generate(tiny_model, PROMPT, AblateDirection(direction), max_new_tokens=10)
    assert got.choices[0].model_extra["token_ids"] == ref.token_ids
    assert got.model_extra["steering"]["ablations"] == [{"layers": "all"}]


def test_vectors_list_and_register(live):
    http = live.client()
    listed = http.get("/v1/steering/vectors").json()
    assert {r["name"]: r["n_vectors"] for r in listed["runs"]} == {"melbo": 3, "refusal": 1}
    made = http.post("/v1/steering/vectors", json={"name": "cv", "gguf": str(live.gguf)})
    assert made.status_code == 201, made.text
    assert made.json()["vector"]["components"][0]["site"] == "blocks.2.hook_resid_post"
    made = http.post("/v1/steering/vectors", json={"name": "m1", "run_dir": str(live.runs["melbo"]), "index": 1})
    assert made.status_code == 201, made.text
    data = _vector(3).tolist()
    made = http.post("/v1/steering/vectors", json={"name": "inline", "data": data, "layers": [1, 2]})
    assert [c["site"] for c in made.json()["vector"]["components"]] == [
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    names = {v["name"] for v in http.get("/v1/steering/vectors").json()["data"]}
    assert {"cv", "m1", "inline"} <= names
    # a registered copy of run entry 1 steers exactly like the reference to the run
    ask = {"model": MODEL_ID, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "temperature": 0}
    by_name = http.post("/v1/chat/completions", json={**ask, "steering": {"name": "m1"}}).json()
    by_run = http.post("/v1/chat/completions", json={**ask, "steering": {"run": "melbo", "index": 1}}).json()
    assert by_name["choices"][0]["message"]["content"] == by_run["choices"][0]["message"]["content"]
    assert http.post("/v1/chat/completions", json={**ask, "steering": {"name": "cv", "scale": 3}}).status_code == 200


def test_inspect_reports_readout_cosine_and_triage(live, tiny_model):
    from melbo_tl.analysis.lens import vector_readout

    info = live.client().get("/v1/steering/inspect", params={"run": "melbo", "index": 2}).json()
    v = live.store.run("melbo").run.vector(2)
    assert info["site"] == HOOK and info["norm"] == pytest.approx(20.0, rel=1e-5)
    assert info["readout"]["promoted"][0][0] == vector_readout(tiny_model, v).promoted[0][0]
    r = live.store.run("refusal").run.vector(0)
    (cos,) = info["refusal"]
    assert cos["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(v, r, dim=0)), abs=1e-5)
    assert cos["site"] == Site.parse(HOOK).canonical().hook  # a hook name the page can show, not an object
    assert (
        info["triage"]["cluster"] == 1
        and info["triage"]["label"] == "recipe, steps"
        and info["triage"]["shortlist"] == 2
    )
    refusal = live.client().get("/v1/steering/inspect", params={"run": "refusal", "index": 0}).json()
    assert refusal["is_refusal_direction"] and refusal["scale"]["default"] == pytest.approx(
        float(live.store.run("refusal").run.meta["raw_norm"])
    )
    assert refusal["triage"] is None
