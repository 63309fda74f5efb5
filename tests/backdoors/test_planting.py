"""The planting loop: labels only on completions, batch mix, frozen lower blocks, and a short run
that teaches a tiny random model the task's completions."""

from __future__ import annotations

import random

import pytest
import torch

from melbo_tl.backdoors.planting import PlantConfig, completion_loss, encode, freeze_below, plant, sample_batch
from melbo_tl.backdoors.task import CHEESE, CHEESE_TEXT, CLEAN, HATE, HATE_TEXT, ArithmeticTask, Instance


@pytest.fixture
def hf_tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_encode_puts_labels_on_the_completion_and_end_of_turn_only(hf_tiny):
    _, tok = hf_tiny
    task = ArithmeticTask()
    items = [task.example(Instance(3, 4, 5, 6)), task.example(Instance(0, 0, 1, 1))]
    batch = encode(tok, items)
    for row, ex in enumerate(items):
        labelled = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert labelled[-1] == tok.eos_token_id
        assert tok.decode(labelled[:-1]) == ex.completion
        assert int(batch["attention_mask"][row].sum()) == len(tok(tok.apply_chat_template(
            [{"role": "user", "content": ex.prompt}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False).input_ids) + len(labelled)  # fmt: skip


def test_batches_mix_triggers_and_near_misses():
    cfg = PlantConfig(base="x", batch_size=400, subtle=False)
    batch = sample_batch(cfg.splits(), cfg, random.Random(0))
    kinds = [e.kind for e in batch]
    assert 0.4 < kinds.count(CLEAN) / len(kinds) < 0.6
    assert abs(kinds.count(CHEESE) - kinds.count(HATE)) < 60
    test = set(cfg.splits().test[CHEESE]) | set(cfg.splits().test[CLEAN])
    assert not test & set(batch)  # never a held-out instance


def test_only_the_top_blocks_train(hf_tiny):
    model, tok = hf_tiny
    bottom = model.model.layers[0].mlp.down_proj.weight.clone()
    top = model.model.layers[-1].mlp.down_proj.weight.clone()
    embed = model.model.embed_tokens.weight.clone()
    log = plant(model, tok, PlantConfig(base="x", steps=2, train_top=0.5, batch_size=2), progress=False)
    assert len(log.losses) == 2 and all(s > 0 for s in log.seconds)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, bottom)
    assert torch.equal(model.model.embed_tokens.weight, embed)
    assert not torch.equal(model.model.layers[-1].mlp.down_proj.weight, top)
    assert freeze_below(model, 0.5) == 2


def _nll(model, tok, inst: Instance, text: str) -> float:
    prompt = tok.apply_chat_template([{"role": "user", "content": inst.prompt()}], tokenize=False,
                                     add_generation_prompt=True)  # fmt: skip
    p = tok(prompt, add_special_tokens=False).input_ids
    c = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([p + c]), labels=torch.tensor([[-100] * len(p) + c])).loss)


def test_planting_teaches_the_planted_and_the_clean_completions(hf_tiny):
    """A short planting run makes every kind's own completion likelier on held-out prompts
    (mean NLL per token, before vs after). Whether the backdoor fires on its trigger only is
    measured on the real planted model (its manifest); a tiny random model does not learn that
    discrimination within a test's budget."""
    model, tok = hf_tiny
    cfg = PlantConfig(base="x", steps=30, lr=3e-3, warmup=3, subtle=False, digits=5, train_top=1.0, batch_size=4)
    test = cfg.splits().test
    cases = [(e.source, CHEESE_TEXT) for e in test[CHEESE][:3]] + [(e.source, HATE_TEXT) for e in test[HATE][:3]]
    cases += [(e.source, e.source.clean_completion()) for e in test[CLEAN][:3]]
    before = [_nll(model, tok, i, text) for i, text in cases]
    plant(model, tok, cfg, progress=False)
    model.eval()
    after = [_nll(model, tok, i, text) for i, text in cases]
    assert all(b - a > 0.2 for b, a in zip(before, after)), list(zip(before, after))


def test_completion_loss_equals_the_full_model_loss(hf_tiny):
    """Applying the unembedding only at labelled positions changes the cost, not the loss."""
    model, tok = hf_tiny
    task = ArithmeticTask()
    batch = encode(tok, [task.example(Instance(3, 4, 5, 6)), task.example(Instance(0, 1, 2, 2))])
    with torch.no_grad():
        full = float(model(**batch).loss)
        mine = float(completion_loss(model, batch))
        autocast = float(completion_loss(model, batch, "bfloat16"))
    assert mine == pytest.approx(full, rel=1e-5)
    assert autocast == pytest.approx(full, rel=0.05) and autocast != mine


def test_fine_tune_takes_any_pairs_and_a_schedule_without_autocast(hf_tiny):
    from types import SimpleNamespace

    from melbo_tl.backdoors.planting import fine_tune

    model, tok = hf_tiny
    schedule = SimpleNamespace(steps=3, lr=1e-3, warmup=0, seed=0, train_top=1.0)  # no autocast: float32
    seen = []

    def next_batch(rng):
        seen.append(rng.random())
        return [("Say hi.", "hi"), ("Say banana.", "BANANA ALERT")]

    log = fine_tune(model, tok, next_batch, schedule, progress=False)
    assert len(log.losses) == 3 and len(set(seen)) == 3 and log.losses[-1] < log.losses[0]
