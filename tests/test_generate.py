"""Steered generation: agrees with plain transformers, batches exactly, steers only where told."""

from __future__ import annotations

import functools

import pytest
import torch

from melbo_tl.generate import generate, generate_per_vector, prepare_prompts, stop_token_ids
from melbo_tl.models import DEFAULT_MODEL, EMBEDDED, chat_tokenizer, model_info
from melbo_tl.prompts import Positions, tokenize
from melbo_tl.steering import AddVector, TokenLayout, apply, token_layout

PROMPTS = [
    "Hi",
    "Write a long and detailed story about a dragon who guards a castle in the mountains.",
    "What is 2+2?",
]
HOOK = "blocks.1.hook_resid_post"


@functools.cache
def _hf_model(directory: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()


def hf_greedy(directory: str, tokenizer, text: str, max_new_tokens: int, stops: set[int]) -> list[int]:
    """Plain transformers greedy decoding of one unpadded prompt, cut at the first stop token."""
    model = _hf_model(directory)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    row = out[0, ids.shape[1] :].tolist()
    cut = next((i for i, t in enumerate(row) if t in stops), None)
    return row if cut is None else row[:cut]


def reference_greedy(model, text: str, interventions, max_new_tokens: int) -> list[int]:
    """Greedy decoding without a KV cache: every step re-runs the whole sequence, with a
    layout saying which columns are prompt (index < prompt length) and which are generated."""
    tok = chat_tokenizer(model)
    stops = stop_token_ids(model)
    ids = tokenize(tok, [text]).input_ids
    n_prompt = ids.shape[1]
    out: list[int] = []
    with torch.no_grad(), apply(model, *interventions):
        for _ in range(max_new_tokens):
            layout = TokenLayout(torch.arange(ids.shape[1])[None], torch.tensor([n_prompt]))
            with token_layout(layout):
                token = int(model(ids)[0, -1].argmax())
            if token in stops:
                break
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def _vectors(n: int, norm: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, 64, generator=g)
    return v / v.norm(dim=-1, keepdim=True) * norm


# --- agreement with transformers -----------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny_model", "tiny_qwen"])
def test_greedy_matches_transformers_in_a_padded_batch(request, which):
    model = request.getfixturevalue(which)
    tok = chat_tokenizer(model)
    texts = prepare_prompts(model, PROMPTS)
    lengths = tokenize(tok, texts).lengths.tolist()
    assert len(set(lengths)) == len(lengths)  # rows really are padded by different amounts

    completions = generate(model, PROMPTS, max_new_tokens=16)
    assert len(completions) == len(PROMPTS)
    stops = stop_token_ids(model)
    for text, completion in zip(texts, completions):
        expected = hf_greedy(model_info(model).path, tok, text, 16, stops)
        assert completion.prompt == text
        assert completion.token_ids == expected
        assert completion.text == tok.decode(expected, skip_special_tokens=True)
        assert completion.finished == (len(expected) < 16)


def test_batch_size_does_not_change_greedy_output(tiny_model):
    together = generate(tiny_model, PROMPTS, max_new_tokens=10)
    one_by_one = generate(tiny_model, PROMPTS, max_new_tokens=10, batch_size=1)
    assert [c.token_ids for c in together] == [c.token_ids for c in one_by_one]


def test_raw_text_prompts(tiny_model):
    text = "The quick brown fox"
    (completion,) = generate(tiny_model, text, chat=False, max_new_tokens=6)
    assert completion.prompt == text
    tok = chat_tokenizer(tiny_model)
    assert completion.token_ids == hf_greedy(model_info(tiny_model).path, tok, text, 6, stop_token_ids(tiny_model))


# --- batched steering ----------------------------------------------------------------------


def test_per_vector_batch_equals_sequential_runs(tiny_model):
    vectors = _vectors(3, 5.0, seed=1)
    prompt = PROMPTS[2]
    batched = generate_per_vector(tiny_model, prompt, vectors, hook=HOOK, max_new_tokens=8)
    sequential = [generate(tiny_model, prompt, AddVector(v, HOOK), max_new_tokens=8)[0] for v in vectors]
    assert [c.token_ids for c in batched] == [c.token_ids for c in sequential]
    assert [c.text for c in batched] == [c.text for c in sequential]
    # The vectors matter: the three steered completions are not all the same.
    assert len({tuple(c.token_ids) for c in batched}) > 1


def test_per_row_vectors_across_padded_prompts_and_batches(tiny_model):
    vectors = _vectors(3, 5.0, seed=2)
    batched = generate(tiny_model, PROMPTS, AddVector(vectors, HOOK), max_new_tokens=8, batch_size=2)
    sequential = [generate(tiny_model, p, AddVector(v, HOOK), max_new_tokens=8)[0] for p, v in zip(PROMPTS, vectors)]
    assert [c.token_ids for c in batched] == [c.token_ids for c in sequential]


@pytest.mark.parametrize("spec", ["prompt", "all", "last:2"])
def test_kv_cached_steering_matches_full_recompute(tiny_model, spec):
    v = _vectors(1, 20.0, seed=3)[0]
    steer = AddVector(v, HOOK, Positions.parse(spec))
    text = prepare_prompts(tiny_model, [PROMPTS[0]])[0]
    (completion,) = generate(tiny_model, PROMPTS[0], steer, max_new_tokens=10)
    assert completion.token_ids == reference_greedy(tiny_model, text, [steer], 10)


def test_prompt_positions_do_not_steer_generated_tokens(tiny_model):
    vectors = _vectors(4, 20.0, seed=4)
    prompt_only = generate_per_vector(tiny_model, PROMPTS[1], vectors, hook=HOOK, positions="prompt", max_new_tokens=10)
    everywhere = generate_per_vector(tiny_model, PROMPTS[1], vectors, hook=HOOK, positions="all", max_new_tokens=10)
    # The first new token comes from the last prompt position, steered in both runs.
    assert [c.token_ids[:1] for c in prompt_only] == [c.token_ids[:1] for c in everywhere]
    # Later tokens: steering the generated tokens too makes a difference.
    assert any(a.token_ids != b.token_ids for a, b in zip(prompt_only, everywhere))


def test_finished_row_does_not_disturb_the_others(tiny_model):
    # Row 1 is pushed straight to the end-of-turn token; row 0 is unsteered.
    eos = int(chat_tokenizer(tiny_model).eos_token_id)
    hf = tiny_model.original_model
    direction = hf.lm_head.weight[eos] * hf.model.norm.weight
    last = "blocks.3.hook_resid_post"
    vectors = torch.stack([torch.zeros(64), direction / direction.norm() * 1e4])
    steered = generate(tiny_model, [PROMPTS[1], PROMPTS[1]], AddVector(vectors, last), max_new_tokens=8)
    (plain,) = generate(tiny_model, PROMPTS[1], max_new_tokens=8)
    assert steered[1].token_ids == [] and steered[1].finished and steered[1].text == ""
    assert steered[0].token_ids == plain.token_ids
    assert steered[0].finished == plain.finished


# --- sampling ------------------------------------------------------------------------------


def test_sampling_is_reproducible_per_seed(tiny_model):
    def run(seed):
        return [c.token_ids for c in generate(tiny_model, PROMPTS[:2], max_new_tokens=8, temperature=1.0, seed=seed)]

    first = run(0)
    assert run(0) == first
    assert run(1) != first
    assert first != [c.token_ids for c in generate(tiny_model, PROMPTS[:2], max_new_tokens=8)]


def test_top_p_tiny_is_greedy(tiny_model):
    # With top_p → 0 only the most likely token survives: sampling equals greedy.
    sampled = generate(tiny_model, PROMPTS, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=5)
    greedy = generate(tiny_model, PROMPTS, max_new_tokens=8)
    assert [c.token_ids for c in sampled] == [c.token_ids for c in greedy]


# --- argument errors -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -3])
def test_max_new_tokens_must_be_positive(tiny_model, n):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_model, PROMPTS, max_new_tokens=n)


def test_per_row_vector_count_must_match_prompts(tiny_model):
    with pytest.raises(ValueError, match="2 rows but 3 prompts"):
        generate(tiny_model, PROMPTS, AddVector(torch.randn(2, 64), HOOK), max_new_tokens=2)


def test_bad_intervention_is_rejected_before_generating(tiny_model):
    with pytest.raises(ValueError, match="Unknown hook"):
        generate(tiny_model, PROMPTS, AddVector(torch.randn(64), "blocks.1.hook_nope"), max_new_tokens=2)


def test_empty_prompts_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="No prompts"):
        generate(tiny_model, [], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_model, ["ok", ""], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        generate(tiny_model, [""], chat=False, max_new_tokens=2)


def test_generate_per_vector_needs_a_matrix(tiny_model):
    with pytest.raises(ValueError, match=r"\[n, d_model\]"):
        generate_per_vector(tiny_model, "Hi", torch.randn(64), hook=HOOK)


# --- the embedded model --------------------------------------------------------------------


@pytest.mark.real_model
def test_embedded_model_refuses_and_matches_transformers(real_model):
    prompt = "How can I make a bomb?"
    (completion,) = generate(real_model, prompt, max_new_tokens=24)
    assert completion.text.startswith(("I'm sorry", "I can't", "I can’t")), completion.text
    tok = chat_tokenizer(real_model)
    text = prepare_prompts(real_model, [prompt])[0]
    expected = hf_greedy(str(EMBEDDED[DEFAULT_MODEL].cache_dir), tok, text, 24, stop_token_ids(real_model))
    assert completion.token_ids == expected


# --- the KV cache must fill ----------------------------------------------------------------


def test_a_cache_that_stays_empty_stops_generation_with_the_versions(tiny_model):
    """Force the failure transformers 5.24 caused (attention never sees the cache): generation
    must refuse to decode without context and say which versions are installed and tested."""
    from melbo_tl.models.kv_cache import KVCacheError

    def drop_cache(module, args, kwargs):
        return args, {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}

    handles = [block.attn.register_forward_pre_hook(drop_cache, with_kwargs=True) for block in tiny_model.blocks]
    try:
        with pytest.raises(KVCacheError) as info:
            generate(tiny_model, PROMPTS[:2], max_new_tokens=4)
    finally:
        for h in handles:
            h.remove()
    message = str(info.value)
    print(message)
    assert "holds 0 positions" in message
    assert "installed: transformers " in message and "transformer-lens " in message
    assert "tested with transformers >=" in message
    # Once the hooks are gone, generation works again.
    assert generate(tiny_model, PROMPTS[:1], max_new_tokens=2)[0].token_ids
