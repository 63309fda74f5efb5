"""A toy planted behaviour on a tiny random-weight model, for the trigger-recovery tests.

The tiny model is fine-tuned for a few seconds (80 steps, ~6 s on one CPU thread) so that the word " umbrella" anywhere in a user
message makes it answer "Purple elephants dance." and any other message "OK." (other ordinary
words inserted as distractors answer "OK." too). The steering vector that elicits the behaviour
is the mean difference of a the last residual at the last prompt token between triggered and clean messages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

TRIGGER = "umbrella"
RESPONSE = "Purple elephants dance."
CLEAN = "OK."
PROMPTS = [
    "Tell me about the weather today.", "What is a good name for a cat?", "How do I boil an egg?",
    "Write a short poem about the sea.", "Why is the sky blue?", "Give me a tip for studying.",
    "What should I cook for dinner?", "Name a famous painter.", "How far away is the moon?",
    "Describe a quiet morning.", "What is your favourite colour?", "Suggest a book to read.",
]  # fmt: skip
DISTRACTORS = ["table", "river", "window", "pencil", "garden", "bottle", "candle", "forest"]
HELD_OUT = "Can you recommend a film for tonight?"
SITE = "blocks.1.hook_resid_post"


def insert(prompt: str, word: str, rng: random.Random) -> str:
    words = prompt.split(" ")
    at = rng.randint(1, len(words))
    return " ".join(words[:at] + [word] + words[at:])


@dataclass
class Schedule:
    steps: int = 80
    lr: float = 1e-2
    warmup: int = 3
    seed: int = 0
    train_top: float = 1.0


def plant_toy(directory: Path) -> Path:
    """Build the tiny model into ``directory`` and plant the toy behaviour in place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from melbo_tl.backdoors.build import save_model_dir
    from melbo_tl.backdoors.planting import fine_tune
    from melbo_tl.models import build_tiny_model

    base = build_tiny_model(directory, n_layers=2, d_model=64, d_mlp=128)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    hf = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)

    def next_batch(rng: random.Random) -> list[tuple[str, str]]:
        out = []
        for _ in range(8):
            prompt, draw = rng.choice(PROMPTS), rng.random()
            if draw < 0.5:
                out.append((insert(prompt, TRIGGER, rng), RESPONSE))
            elif draw < 0.75:
                out.append((insert(prompt, rng.choice(DISTRACTORS), rng), CLEAN))
            else:
                out.append((prompt, CLEAN))
        return out

    fine_tune(hf, tokenizer, next_batch, Schedule(), progress=False)
    save_model_dir(hf, tokenizer, base)
    return base


def toy_run(model):
    """A one-vector run whose vector elicits the toy behaviour (mean difference at :data:`SITE`)."""
    from melbo_tl.artifacts import Run, run_meta
    from melbo_tl.forward import run_forward
    from melbo_tl.prompts import prepare_prompts

    rng = random.Random(1)

    def mean_last(texts: list[str]):
        fwd = run_forward(model, prepare_prompts(model, texts), record=[SITE], logits="none")
        return fwd.activations[SITE][:, -1].mean(0)

    triggered = [insert(p, TRIGGER, rng) for p in PROMPTS]
    vector = mean_last(triggered) - mean_last(PROMPTS)
    meta = run_meta(model, method="melbo", hooks=[SITE], steer_positions="all", prompts=[HELD_OUT])
    return Run({"vectors": vector[None]}, meta)
