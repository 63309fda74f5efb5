"""analysis.lens: logit readout of vectors and logit-lens trajectories of steered runs."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.analysis.lens import lens_figure, lens_trajectory, vector_readout
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.prompts import prepare_prompts, tokenize
from melbo_tl.steering.interventions import AddVector


def test_readout_is_the_unembedding_of_the_normed_vector(tiny_model):
    v = torch.randn(64)
    r = vector_readout(tiny_model, v, top_k=5)
    with torch.no_grad():
        logits = tiny_model.unembed(tiny_model.ln_final(v[None, None]))[0, 0]
    tok = chat_tokenizer(tiny_model)
    assert [t for t, _ in r.promoted] == [tok.decode([int(i)]) for i in torch.topk(logits, 5).indices]
    assert [t for t, _ in r.suppressed] == [tok.decode([int(i)]) for i in torch.topk(-logits, 5).indices]
    assert r.promoted[0][1] == pytest.approx(float(logits.max()), rel=1e-4)
    assert r.suppressed[0][1] == pytest.approx(float(logits.min()), rel=1e-4)
    # the final norm removes scale: 10·v reads the same
    assert [t for t, _ in vector_readout(tiny_model, 10 * v, top_k=5).promoted] == [t for t, _ in r.promoted]


def test_readout_errors(tiny_model):
    with pytest.raises(ValueError, match="d_model = 64"):
        vector_readout(tiny_model, torch.randn(32))
    with pytest.raises(ValueError, match="top_k"):
        vector_readout(tiny_model, torch.randn(64), top_k=0)


def test_lens_final_layer_is_the_model_and_no_steer_changes_nothing(tiny_model):
    text = prepare_prompts(tiny_model, ["hello there"])[0]
    groups = {"a": ["I", "As"], "b": ["Sure"]}
    traj = lens_trajectory(tiny_model, text, None, tokens=groups, chat=False)
    assert traj.prob["steered"] == traj.prob["unsteered"]
    assert len(traj.labels) == tiny_model.cfg.n_layers + 1
    tok = chat_tokenizer(tiny_model)
    batch = tokenize(tok, [text])
    with torch.no_grad():
        probs = torch.softmax(tiny_model(batch.input_ids)[0, -1].float(), -1)
    ids = [tok("I", add_special_tokens=False)["input_ids"][0], tok("As", add_special_tokens=False)["input_ids"][0]]
    assert traj.prob["unsteered"]["a"][-1] == pytest.approx(float(probs[ids].sum()), rel=1e-3)
    rank = int((probs > probs[tok("Sure", add_special_tokens=False)["input_ids"][0]]).sum())
    assert traj.rank["unsteered"]["b"][-1] == rank


def test_lens_sees_the_steer_after_its_layer_only(tiny_model):
    text = prepare_prompts(tiny_model, ["hello there"])[0]
    traj = lens_trajectory(tiny_model, text, AddVector(20 * torch.randn(64), "blocks.2.hook_resid_pre"), chat=False)
    un, st = traj.prob["unsteered"]["refusal"], traj.prob["steered"]["refusal"]
    assert un[:2] == pytest.approx(st[:2], rel=1e-5)  # entries before block 2 are untouched
    assert un[2] != pytest.approx(st[2], rel=1e-3)
    fig = lens_figure(traj)
    assert len(fig.data) == 2 * 2 * len(traj.groups)  # prob + rank, steered + unsteered, per group
    with pytest.raises(ValueError, match="non-empty prompt"):
        lens_trajectory(tiny_model, "", None)
