"""The one forward path: what it returns equals plain forward passes; it stops, records, publishes
the token layout and keeps row order."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.forward import as_batch, next_token_logprobs, run_forward
from melbo_tl.prompts import Positions, prepare_prompts
from melbo_tl.steering import AddVector

PROMPTS = ["Hi", "Write a long story about a dragon who guards a castle.", "What is 2+2?"]


@pytest.fixture(scope="module")
def texts(tiny_model):
    return prepare_prompts(tiny_model, PROMPTS)


def plain_logits(model, texts):
    batch = as_batch(model, texts)
    with torch.no_grad():
        return model(batch.input_ids, attention_mask=batch.attention_mask)


def test_logits_all_and_last_equal_a_plain_forward(tiny_model, texts):
    full = plain_logits(tiny_model, texts)
    with torch.no_grad():
        everything = run_forward(tiny_model, texts).logits
        last = run_forward(tiny_model, texts, logits="last").logits
    torch.testing.assert_close(everything, full)
    torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=1e-5)


def test_record_equals_run_with_cache_and_stops_early(tiny_model, texts):
    batch = as_batch(tiny_model, texts)
    name = "blocks.1.hook_resid_post"
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
        fwd = run_forward(tiny_model, texts, record=[name], logits="none")
    torch.testing.assert_close(fwd.activations[name], cache[name])
    assert fwd.logits is None


def test_stop_at_returns_the_residual_entering_the_block_and_runs_nothing_after(tiny_model, texts):
    batch = as_batch(tiny_model, texts)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    fired = []
    late = ("blocks.2.hook_resid_pre", lambda acts, hook: fired.append(hook.name) or acts)
    with torch.no_grad():
        fwd = run_forward(tiny_model, texts, hooks=[late], stop_at=2, keep_block_kwargs=True)
    torch.testing.assert_close(fwd.residual, cache["blocks.2.hook_resid_pre"])
    assert fired == [] and fwd.logits is None
    assert "past_key_values" not in fwd.block_kwargs and "cache" not in fwd.block_kwargs


def test_layout_is_published_so_positions_never_steer_padding(tiny_model, texts):
    """last:1 on a left-padded batch changes only each row's last real token."""
    name = "blocks.1.hook_resid_pre"
    v = torch.randn(64) * 5
    with torch.no_grad():
        base = run_forward(tiny_model, texts, record=[name], logits="none").activations[name]
        steer = AddVector(v, name, Positions.parse("last:1"))
        steered = run_forward(tiny_model, texts, [steer], record=[name], logits="none").activations[name]
    changed = (steered - base).norm(dim=-1) > 1e-4
    assert changed[:, -1].all() and changed.sum() == len(texts)


def test_prompt_lengths_mark_completion_tokens(tiny_model, texts):
    """With prompt lengths given, a 'prompt' position spec leaves the completion tokens alone."""
    name = "blocks.1.hook_resid_pre"
    batch = as_batch(tiny_model, texts)
    lengths = batch.lengths - 2  # the last two tokens of each row count as completion
    steer = AddVector(torch.randn(64) * 5, name, Positions.parse("prompt"))
    with torch.no_grad():
        base = run_forward(tiny_model, batch, record=[name], logits="none").activations[name]
        steered = run_forward(tiny_model, batch, [steer], record=[name], prompt_lengths=lengths, logits="none")
    changed = (steered.activations[name] - base).norm(dim=-1) > 1e-4
    assert not changed[:, -2:].any()
    assert changed.sum() == int(lengths.sum())


def test_next_token_logprobs_keep_the_order_given(tiny_model, texts):
    reordered = [texts[2], texts[0], texts[1]]
    lp = next_token_logprobs(tiny_model, reordered, batch_size=2, sort_by_length=True)
    full = torch.log_softmax(plain_logits(tiny_model, reordered)[:, -1].float(), -1)
    torch.testing.assert_close(lp, full, atol=1e-4, rtol=1e-4)
    assert lp.device.type == "cpu" and lp.dtype == torch.float32


def test_bad_arguments(tiny_model, texts):
    with pytest.raises(ValueError, match="logits must be"):
        run_forward(tiny_model, texts, logits="first")
    with pytest.raises(ValueError, match="Unknown hook"):
        run_forward(tiny_model, texts, record=["blocks.1.hook_typo"])
    with pytest.raises(ValueError, match="stop_at"):
        run_forward(tiny_model, texts, stop_at=9)
    with pytest.raises(ValueError, match="No texts"):
        run_forward(tiny_model, [])
