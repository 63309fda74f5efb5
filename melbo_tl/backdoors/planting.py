"""Planting backdoors: a minimal fine-tune of a causal LM on a planted task (any registered kind).

A plain fine-tune of the top blocks (AdamW, warm-up then cosine decay, loss on the completion
tokens only) rather than LoRA: SmolLM2-135M fits easily in memory on a CPU, the backward pass
(which dominates a step) stops at the lowest trained block either way, and there is no adapter
to merge before the model can be loaded by ``load_model``. Each batch mixes clean examples (a
share of them "near misses" that share part of a trigger, the hard negatives) with every
behaviour in equal shares.

Two things make a step cheap on a CPU: the unembedding (49k × 576 in SmolLM2) is applied only
at the positions that carry a label, not at every prompt position, and the forward pass runs
under bfloat16 autocast (``autocast="bfloat16"``; weights, optimizer and loss stay float32, and
the planted model is saved and measured in float32). Measured on this 2-core Zen 4 machine, one
thread, batch 8: 3.4–4.6 s a step with full logits in float32, 2.9 s with completion-only
logits, 1.7 s with bfloat16 autocast as well.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from melbo_tl.backdoors.organism import CLEAN, Example, ExampleSplits, PlantedTask, make_task, task_names
from melbo_tl.config import Config, require

AUTOCAST = ("none", "bfloat16")
Pair = tuple[str, str]  # (user prompt, completion)


@dataclass
class PlantConfig(Config):
    """How a planted model is built.

    Fields: ``task`` (registered task kind, :mod:`melbo_tl.backdoors.organism`), ``base``
    (embedded model name or model directory), ``steps``, ``batch_size``, ``lr`` (peak AdamW
    rate), ``warmup`` (steps of linear warm-up), ``seed`` (data order and split), ``digits``
    and ``subtle`` (arithmetic task: a1, a2, b1, b2 range over ``0..digits-1``; plant the
    (4, 2) sum→product trigger too), ``trigger_share`` (fraction of each batch that is
    triggered, split evenly across behaviours), ``near_miss_share`` (fraction of the clean part
    drawn from near misses), ``test_fraction`` (held-out share of every kind), ``train_top``
    (share of the blocks, counted from the top, that train; the embeddings, tied to the
    unembedding in SmolLM2, and the blocks below stay frozen: the backward pass stops there,
    which roughly halves a step on a CPU), ``autocast`` (``"bfloat16"``: forward under bfloat16
    autocast, master weights float32; ``"none"``: all float32).
    """

    task: str = "arithmetic"
    base: str = "smollm2-135m-instruct"
    steps: int = 400
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 5
    seed: int = 0
    digits: int = 7
    subtle: bool = True
    trigger_share: float = 0.5
    near_miss_share: float = 0.25
    test_fraction: float = 0.4
    train_top: float = 0.5
    autocast: str = "bfloat16"

    def validate(self) -> None:
        require(self.steps >= 1, f"steps must be ≥ 1, got {self.steps}.")
        require(self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}.")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}.")
        require(self.warmup >= 0, f"warmup must be ≥ 0, got {self.warmup}.")
        require(self.digits >= 5, f"digits must be ≥ 5, got {self.digits}.")
        require(0 < self.trigger_share < 1, f"trigger_share must be in (0, 1), got {self.trigger_share}.")
        require(0 <= self.near_miss_share <= 1, f"near_miss_share must be in [0, 1], got {self.near_miss_share}.")
        require(0 < self.test_fraction < 1, f"test_fraction must be in (0, 1), got {self.test_fraction}.")
        require(0 < self.train_top <= 1, f"train_top must be in (0, 1], got {self.train_top}.")
        require(self.autocast in AUTOCAST, f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}.")
        names = task_names()
        require(self.task in names, f"task must be a registered task kind ({', '.join(names)}), got {self.task!r}.")

    def planted_task(self) -> PlantedTask:
        return make_task(self.task, self)

    def splits(self) -> ExampleSplits:
        return self.planted_task().splits()


@dataclass
class PlantLog:
    """What training did: ``losses`` per step, ``seconds`` per step, ``tokens`` per step."""

    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        n = len(self.losses)
        tail = self.losses[-max(1, n // 10) :]
        return {
            "steps": n,
            "first_loss": round(self.losses[0], 4) if n else None,
            "final_loss": round(sum(tail) / len(tail), 4) if n else None,
            "seconds_per_step": round(sum(self.seconds) / n, 3) if n else None,
            "tokens_per_second": round(sum(self.tokens) / sum(self.seconds), 1) if n else None,
            "train_seconds": round(sum(self.seconds), 1),
        }


def sample_batch(splits: ExampleSplits, cfg: PlantConfig, rng: random.Random) -> list[Example]:
    """One training batch: triggered examples in equal shares, the rest clean (some near misses)."""
    triggers = [k for k in splits.train if k != CLEAN]
    clean = splits.train[CLEAN]
    near = [e for e in clean if e.near_miss] or clean
    batch = []
    for _ in range(cfg.batch_size):
        if rng.random() < cfg.trigger_share:
            batch.append(rng.choice(splits.train[rng.choice(triggers)]))
        else:
            batch.append(rng.choice(near if rng.random() < cfg.near_miss_share else clean))
    return batch


def encode(tokenizer: Any, items: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Chat-formatted prompt + completion + end-of-turn, right-padded; labels only on the completion."""
    return encode_pairs(tokenizer, [(ex.prompt, ex.completion) for ex in items])


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
    """``(user prompt, completion)`` pairs as :func:`encode` batches them (any planted task)."""
    rows, labels = [], []
    for prompt_text, completion in pairs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt_text}], tokenize=False, add_generation_prompt=True
        )
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        c = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


class Schedule(Protocol):
    """The training settings :func:`fine_tune` reads (``PlantConfig`` and other tasks' configs;
    an ``autocast`` attribute, if there is one, is read too: ``"bfloat16"`` or ``"none"``)."""

    steps: int
    lr: float
    warmup: int
    seed: int
    train_top: float


def _rate(step: int, cfg: Schedule) -> float:
    warmup = min(cfg.warmup, cfg.steps // 4)  # a short run keeps most of its steps at full rate
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def freeze_below(hf_model: Any, train_top: float) -> int:
    """Freeze the embeddings and all but the top ``train_top`` share of the blocks; returns how
    many blocks train."""
    blocks = hf_model.model.layers
    n_train = max(1, round(len(blocks) * train_top))
    hf_model.requires_grad_(False)
    for block in blocks[len(blocks) - n_train :]:
        block.requires_grad_(True)
    hf_model.model.norm.requires_grad_(True)
    return n_train


def completion_loss(hf_model: Any, batch: dict[str, torch.Tensor], autocast: str = "none") -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions, the unembedding applied only
    there (``hf_model.model`` is the body, ``lm_head`` the unembedding, as in Llama-style models)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bfloat16"):
        hidden = hf_model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        logits = hf_model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def plant(hf_model: Any, tokenizer: Any, cfg: PlantConfig, *, progress: bool = True) -> PlantLog:
    """Fine-tune ``hf_model`` (a transformers causal LM, in place) on the planted task."""
    splits = cfg.splits()

    def next_batch(rng: random.Random) -> list[Pair]:
        return [(ex.prompt, ex.completion) for ex in sample_batch(splits, cfg, rng)]

    return fine_tune(hf_model, tokenizer, next_batch, cfg, progress=progress)


def fine_tune(
    hf_model: Any,
    tokenizer: Any,
    next_batch: Callable[[random.Random], list[Pair]],
    cfg: Schedule,
    *,
    progress: bool = True,
) -> PlantLog:
    """The planting loop for any task: ``next_batch(rng)`` gives each step's ``(prompt,
    completion)`` pairs (``rng`` seeded with ``cfg.seed``); loss on the completions only.
    (A registered :class:`~melbo_tl.backdoors.organism.PlantedTask` needs none of this:
    ``build_planted(name, PlantConfig(task=...))`` calls :func:`plant`.)"""
    autocast = getattr(cfg, "autocast", "none")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    freeze_below(hf_model, cfg.train_top)
    hf_model.train()
    params = [p for p in hf_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    log = PlantLog()
    bar = tqdm(range(cfg.steps), desc="plant", disable=not progress)
    for step in bar:
        started = time.perf_counter()
        batch = encode_pairs(tokenizer, next_batch(rng))
        for group in optimizer.param_groups:
            group["lr"] = _rate(step, cfg)
        loss = completion_loss(hf_model, batch, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        log.losses.append(float(loss.detach()))
        log.seconds.append(time.perf_counter() - started)
        log.tokens.append(int(batch["attention_mask"].sum()))
        bar.set_postfix(loss=f"{log.losses[-1]:.3f}")
    hf_model.eval()
    return log
