"""Bad requests get a 4xx JSON error naming the field, and the server keeps serving."""

from __future__ import annotations

import time

import pytest

from tests.serve.conftest import HOOK, MODEL_ID

OK = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
GOOD = [0.1] * 64


def _with(**fields):
    return {**OK, **fields}


# (case, body, status, param, words the message must contain)
CASES = [
    (
        "wrong vector length",
        _with(steering={"vectors": [{"data": [1.0, 2.0], "site": HOOK}]}),
        400,
        "steering.vectors[0].data",
        "d_model = 64",
    ),
    ("unknown run", _with(steering=[{"run": "nope", "index": 0}]), 400, "steering[0].run", "loaded runs"),
    ("index out of range", _with(steering={"run": "melbo", "index": 7}), 400, "steering.index", "0…2"),
    ("unknown registered name", _with(steering={"name": "ghost"}), 400, "steering.name", "registered"),
    (
        "scale out of range",
        _with(steering={"data": GOOD, "site": HOOK, "scale": 1e6}),
        400,
        "steering.scale",
        "--max-scale",
    ),
    (
        "site the model lacks",
        _with(steering={"data": GOOD, "site": "blocks.9.hook_resid_post"}),
        400,
        "steering.site",
        "valid 0…3",
    ),
    (
        "misspelt hook",
        _with(steering={"data": GOOD, "site": "blocks.1.hook_resid_middle"}),
        400,
        "steering.site",
        "Unknown hook",
    ),
    ("layer out of range", _with(steering={"data": GOOD, "layers": [1, 12]}), 400, "steering.layers", "out of range"),
    ("unknown vector field", _with(steering={"run": "melbo", "scal": 2}), 400, "steering.scal", "unknown field"),
    ("two sources", _with(steering={"run": "melbo", "data": GOOD}), 400, "steering", "exactly one"),
    ("bad positions", _with(steering={"run": "melbo", "positions": "middle"}), 400, "steering.positions", "generation"),
    (
        "ablation with a scale",
        _with(steering={"run": "refusal", "algorithm": "ablate", "scale": 2}),
        400,
        "steering.scale",
        "ablation",
    ),
    ("steering in extra_body", _with(extra_body={"steering": {"data": GOOD}}), 400, "extra_body.steering.site", "site"),
    ("oversize max_tokens", _with(max_tokens=100_000), 400, "max_tokens", "limit of 64"),
    ("zero max_tokens", _with(max_tokens=0), 400, "max_tokens", "greater than or equal to 1"),
    ("negative temperature", _with(temperature=-1), 400, "temperature", "greater than or equal to 0"),
    ("too many rows", _with(n=9), 400, "n", "batch limit of 8"),
    (
        "prompt longer than the context",
        _with(messages=[{"role": "user", "content": "word " * 600}]),
        400,
        "messages",
        "context of 512",
    ),
    ("empty messages", _with(messages=[]), 400, "messages", "at least 1"),
    ("bad role", _with(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages[0].role", "user"),
    ("unsupported field", _with(logprobs=True), 400, "logprobs", "not supported"),
    ("unknown model", _with(model="gpt-4"), 404, "model", MODEL_ID),
]


@pytest.mark.parametrize("case, body, status, param, words", CASES, ids=[c[0] for c in CASES])
def test_bad_request_names_the_field(live, case, body, status, param, words):
    response = live.client().post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


def _raw(live, text: bytes):
    return live.client().post("/v1/chat/completions", content=text, headers={"content-type": "application/json"})


def test_nan_and_infinity_in_a_vector(live):
    for literal in (b"NaN", b"Infinity"):
        data = b"[" + b", ".join([literal] + [b"0.5"] * 63) + b"]"
        body = b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "steering": {"data": ' + data
        response = _raw(live, body + b', "site": "' + HOOK.encode() + b'"}}')
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "steering.data"
        assert "NaN or infinite" in response.json()["error"]["message"]


def test_nan_scale(live):
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "steering": {"run": "melbo", "scale": NaN}}'
    response = _raw(live, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "steering.scale"


def test_malformed_json(live):
    response = _raw(live, b'{"model": "tiny", "messages": [')
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body" and "malformed JSON" in response.json()["error"]["message"]


def test_unknown_route_is_a_json_404(live):
    response = live.client().get("/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()


@pytest.mark.parametrize(
    "body, param",
    [
        ({"name": "x"}, "body"),
        ({"name": "x", "data": [1.0], "site": HOOK}, "data"),
        ({"name": "x", "gguf": "/no/such.gguf"}, "gguf"),
        ({"name": "x", "run_dir": "/no/such/run"}, "run_dir"),
        ({"name": "melbo", "run_dir": "/anywhere"}, "name"),
        ({"name": "x", "data": [0.0] * 64, "site": "blocks.7.hook_resid_pre"}, "site"),
        ({"name": "x", "data": [0.0] * 64, "layers": [9]}, "layers"),
        ({"name": "x", "run_dir": "RUN", "index": 5}, "index"),
    ],
)
def test_bad_registration_names_the_field(live, body, param):
    if body.get("run_dir") == "RUN":
        body = {**body, "run_dir": str(live.runs["melbo"])}
    response = live.client().post("/v1/steering/vectors", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_inspect_unknown_run(live):
    response = live.client().get("/v1/steering/inspect", params={"run": "nope"})
    assert response.status_code == 404 and response.json()["error"]["param"] == "run"


def test_still_serving_after_all_of_that(live):
    response = live.client().post("/v1/chat/completions", json=OK)
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while live.engine.load() != {"active_rows": 0, "queued_requests": 0} and time.monotonic() < deadline:
        time.sleep(0.01)  # the engine drops a finished row right after handing out its last token
    assert live.engine.load() == {"active_rows": 0, "queued_requests": 0}
