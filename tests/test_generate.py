"""Steered generation: agrees with plain transformers, batches exactly, steers only where told."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.generate import generate, generate_per_vector, stop_token_ids
from melbo_tl.models import chat_tokenizer, model_info
from melbo_tl.prompts import Positions, prepare_prompts, tokenize
from melbo_tl.steering import AddVector, TokenLayout, apply, token_layout
from tests.helpers import hf_greedy

PROMPTS = [
    "Hi",
    "Write a long and detailed story about a dragon who guards a castle in the mountains.",
    "What is 2+2?",
]


HOOK = "blocks.1.hook_resid_post"


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
