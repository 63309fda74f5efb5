"""The KV cache melbo_tl owns: it fills, and a cache that stays empty is a loud error."""

from __future__ import annotations

import pytest

from melbo_tl.generate import generate

PROMPTS = [
    "Hi",
    "Write a long and detailed story about a dragon who guards a castle in the mountains.",
    "What is 2+2?",
]


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
